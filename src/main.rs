//! The `cutover` binary: parse the command line, run it on a tokio runtime, print errors, choose
//! the exit code (see `cutover --help` and the README's exit-code table).

use clap::Parser;

fn main() {
    cutover::secret::install_panic_hook();
    let args = cutover::cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(cutover::cli::run(args));
    std::process::exit(code);
}
