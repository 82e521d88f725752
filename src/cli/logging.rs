//! The process's log: `tracing` events of cutover and of the libraries it drives (the AWS SDK,
//! kube, reqwest, hyper) written to stderr or `--log-file`, each line through the secret
//! redactor.
//!
//! Levels: none by default (a run's own lines are its output), errors only with `-q`, `-v` info,
//! `-vv` debug, `-vvv` trace; `RUST_LOG` (tracing-subscriber's `EnvFilter` syntax) overrides
//! both. It owns only where log lines go; what is logged is each module's.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Where log lines go: stderr or an appended file.
#[derive(Clone)]
enum Sink {
    Stderr,
    File(Arc<Mutex<std::fs::File>>),
}

/// One event's bytes, redacted and written as a whole when dropped (tracing-subscriber's fmt
/// layer writes one event per writer it makes).
struct RedactingWriter {
    sink: Sink,
    buf: Vec<u8>,
}

impl Write for RedactingWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for RedactingWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let line = crate::secret::redact_process(&String::from_utf8_lossy(&self.buf));
        let _ = match &self.sink {
            Sink::Stderr => std::io::stderr().write_all(line.as_bytes()),
            Sink::File(f) => f
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(line.as_bytes()),
        };
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = RedactingWriter;
    fn make_writer(&'a self) -> Self::Writer {
        RedactingWriter {
            sink: self.clone(),
            buf: Vec::new(),
        }
    }
}

/// The level `-v` counted `verbose` times (or `-q`) asks for.
fn level(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "off",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    }
}

/// `RUST_LOG`'s filter when set, else [`level`]'s.
fn filter(verbose: u8, quiet: bool) -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level(verbose, quiet)))
}

/// Installs the process's subscriber.
///
/// # Errors
/// The log file cannot be opened for appending (its path and the OS error).
pub(crate) fn init(verbose: u8, quiet: bool, log_file: Option<&Path>) -> Result<(), String> {
    let sink = match log_file {
        Some(p) => {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open log file {}: {e}", p.display()))?;
            Sink::File(Arc::new(Mutex::new(f)))
        }
        None => Sink::Stderr,
    };
    let colour = matches!(sink, Sink::Stderr)
        && std::env::var_os("NO_COLOR").is_none()
        && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A second install (tests calling `run` twice in one process) keeps the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter(verbose, quiet))
        .with_writer(sink)
        .with_ansi(colour)
        .try_init();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_secret_is_redacted_from_a_log_line() {
        let r = crate::secret::Redactor::default();
        r.add("s3cr3t-log-value");
        let path = tempfile::NamedTempFile::new().unwrap();
        let sink = Sink::File(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(path.path())
                .unwrap(),
        )));
        {
            let mut w = sink.make_writer();
            w.write_all(b"GET https://x/?token=s3cr3t-log-value done\n")
                .unwrap();
        }
        let text = std::fs::read_to_string(path.path()).unwrap();
        assert!(!text.contains("s3cr3t-log-value"), "{text}");
        assert!(text.contains("sha256:"), "{text}");
    }

    #[test]
    fn verbosity_maps_to_levels() {
        assert_eq!(level(0, false), "off");
        assert_eq!(level(1, false), "info");
        assert_eq!(level(2, false), "debug");
        assert_eq!(level(7, false), "trace");
        assert_eq!(level(0, true), "error");
    }
}
