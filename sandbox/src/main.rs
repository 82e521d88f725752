//! `cutover-sandbox`: the local sandbox that `cutover` rehearses against. Real stand-ins on
//! 127.0.0.1 only: a moto server (AWS API), two PostgreSQL 15 clusters (legacy source and the
//! target standing in for RDS), a Kubernetes API emulator per EKS cluster, and the application's
//! legacy and AWS-side health endpoints. `cutover` reaches them only through standard environment
//! variables printed by `cutover-sandbox env`.

mod bench;
mod eso;
mod kube;
mod kubelet;
mod listen;
mod pooler;
mod procs;
mod rights;
mod seed;
mod serve;
mod spaces;
mod state;
mod template;
mod tls;
mod traffic;
mod uploads;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use state::{State, ENVIRONMENTS};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cutover-sandbox",
    about = "Local stand-ins for AWS, PostgreSQL and Kubernetes that cutover rehearses against"
)]
struct Cli {
    /// Sandbox directory (state, data, logs); default `.sandbox` in the current directory.
    #[arg(
        long,
        global = true,
        env = "CUTOVER_SANDBOX_DIR",
        default_value = ".sandbox"
    )]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start everything (idempotent: a running sandbox is left as it is).
    Up {
        /// The legacy server as a self-hosted one is: its admin may create subscriptions and the
        /// target accepts its connections, so both directions can replicate natively. Default:
        /// as managed databases are (the legacy admin may not subscribe; no route from the legacy
        /// host to the target), so the fallback runs through `cutover relay`.
        #[arg(long)]
        native: bool,
    },
    /// Stop everything and remove the sandbox's data (the virtualenv is kept).
    Down,
    /// Say what is running; exit 1 if anything is not.
    Status,
    /// Print `export NAME=value` lines for a shell to eval.
    Env,
    /// (internal) Run the Kubernetes API emulator and the applications in the foreground.
    #[command(hide = true)]
    Serve,
    /// Measure the database cutover on this sandbox beside the tools a user would otherwise run
    /// (docs/BENCHMARKS.md): write outage, initial copy, verification. Needs the sandbox up and
    /// its variables (`eval "$(cutover-sandbox env)"`).
    Bench(bench::args::BenchArgs),
    /// (internal) Make the seeded clusters' template at $CUTOVER_SANDBOX_TEMPLATE_DIR if it is
    /// missing, starting nothing else (`--dir` is a scratch directory, removed afterwards).
    #[command(hide = true)]
    Template,
}

fn main() {
    let cli = Cli::parse();
    let dir = if cli.dir.is_absolute() {
        cli.dir.clone()
    } else {
        std::env::current_dir()
            .map(|d| d.join(&cli.dir))
            .unwrap_or(cli.dir.clone())
    };
    let result = match cli.command {
        Cmd::Up { native } => up(&dir, native),
        Cmd::Down => down(&dir),
        Cmd::Status => status(&dir),
        Cmd::Env => env(&dir),
        Cmd::Serve => serve(&dir),
        Cmd::Template => make_template(&dir),
        Cmd::Bench(args) => runtime().map(|rt| rt.block_on(bench::args::run(args, &dir))),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn all_running(s: &State) -> bool {
    s.pooler_pids.len() == ENVIRONMENTS.len()
        && s.pooler_pids.values().all(|p| procs::alive(*p))
        && procs::alive(s.moto_pid)
        && procs::alive(s.spaces_pid)
        && procs::alive(s.serve_pid)
        && procs::cluster_running(&s.dir.join("pg/source"))
        && procs::cluster_running(&s.dir.join("pg/target"))
}

/// The state of a sandbox about to be made in `dir`: new passwords, nothing started yet.
fn fresh_state(dir: &std::path::Path) -> State {
    State {
        dir: dir.to_path_buf(),
        source_password: password(),
        target_password: password(),
        source_admin_password: password(),
        target_admin_password: password(),
        app_password: password(),
        pooler_admin_password: password(),
        ..Default::default()
    }
}

fn password() -> String {
    let mut bytes = [0u8; 18];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    bytes
        .iter()
        .map(|b| {
            b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789"[*b as usize % 57] as char
        })
        .collect()
}

fn spawn_moto(s: &mut State, venv: &std::path::Path) -> Result<()> {
    eprintln!("sandbox: starting moto server on 127.0.0.1:{}", s.moto_port);
    let mut moto = std::process::Command::new(venv.join("bin/moto_server"));
    moto.args(["-H", "127.0.0.1", "-p", &s.moto_port.to_string()]);
    s.moto_pid = procs::spawn_detached(moto, &s.dir.join("moto.log"))?;
    s.save()
}

/// Waits for moto to answer; when it exited instead (its port was taken between the choice and
/// its bind), starts it again on another free port.
fn ensure_moto(s: &mut State, venv: &std::path::Path) -> Result<()> {
    let log = s.dir.join("moto.log");
    let mut failures = Vec::new();
    for _ in 0..procs::START_ATTEMPTS {
        match procs::wait_http(
            s.moto_pid,
            s.moto_port,
            "moto server",
            &log,
            Duration::from_secs(60),
        ) {
            Ok(()) => return Ok(()),
            Err(e) if !procs::alive(s.moto_pid) => {
                failures.push(e.to_string());
                s.moto_port = procs::free_port_except(&s.assigned_ports())?;
                spawn_moto(s, venv)?;
            }
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!("moto server did not start: {}", failures.join("; "))
}

/// The legacy source's settings beyond the sandbox's common ones.
const SOURCE_CONF: &str = "wal_level = logical";
/// The target's (the RDS stand-in's) settings beyond the common ones.
const TARGET_CONF: &str = "wal_level = logical\nwal_receiver_status_interval = 1s";

fn up(dir: &std::path::Path, native: bool) -> Result<i32> {
    if let Some(s) = State::load(dir) {
        if all_running(&s) && s.native == native {
            eprintln!("sandbox: already up in {}", dir.display());
            return Ok(0);
        }
        eprintln!("sandbox: partly running; restarting it from scratch");
        down(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    // PostgreSQL runs as another user when we are root: it must be able to reach its data.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let venv = procs::ensure_venv(dir)?;
    let mut s = fresh_state(dir);
    s.native = native;
    let mut ports = procs::free_ports(3 + spaces::PORTS)?.into_iter();
    let mut next = || ports.next().expect("enough ports were allocated");
    s.moto_port = next();
    s.source_port = next();
    s.target_port = next();
    s.spaces_ports = (0..spaces::PORTS).map(|_| next()).collect();
    s.spaces_access_key = format!("DO00{}", password()[..16].to_uppercase());
    s.spaces_secret_key = password();
    s.save()?;

    spawn_moto(&mut s, &venv)?;
    spaces::start(&mut s, &venv)?;
    // The serve process's sockets are bound here and inherited, so no other process (another
    // sandbox, an outgoing connection's ephemeral port) can take a port between its choice and
    // its bind: the ports exist only as listening sockets. Bound this early, Prometheus can be
    // started on them now and find its targets while the databases are seeded.
    let listeners = listen::Listeners::bind(&ENVIRONMENTS)?;
    s.legacy_app_port = listeners.legacy_port()?;
    for env in ENVIRONMENTS {
        s.kube_ports
            .insert(env.to_string(), listeners.kube_port(env)?);
        s.app_ports
            .insert(env.to_string(), listeners.app_port(env)?);
    }
    s.save()?;
    start_prometheus(&mut s)?;

    eprintln!(
        "sandbox: starting PostgreSQL 15 source (wal_level=logical) on {} and target on {}",
        s.source_port, s.target_port
    );
    std::fs::create_dir_all(dir.join("pg"))?;
    std::fs::set_permissions(dir.join("pg"), std::fs::Permissions::from_mode(0o755))?;
    let tls_dir = tls::dir(dir);
    tls::make(&tls_dir, "cutover sandbox CA")?;
    let rt = runtime()?;
    let template = template::location()?;
    let (source, target) = (dir.join("pg/source"), dir.join("pg/target"));
    if let Some(t) = template
        .as_ref()
        .filter(|t| template::restore(t, &dir.join("pg")).unwrap_or(false))
    {
        eprintln!("sandbox: the seeded clusters copied from {}", t.display());
        load_rights_module(dir, &source, &target, native)?;
        s.source_port = procs::start_existing_cluster(&source, s.source_port, &tls_dir, true)?;
        s.target_port = procs::start_existing_cluster(&target, s.target_port, &tls_dir, false)?;
        s.save()?;
        let app = s.app_password.clone();
        rt.block_on(async {
            template::set_passwords(
                &source,
                s.source_port,
                &[
                    ("postgres", &s.source_password),
                    (rights::SOURCE_ADMIN, &s.source_admin_password),
                    ("shop", &app),
                    ("letters", &app),
                ],
            )
            .await?;
            template::set_passwords(
                &target,
                s.target_port,
                &[
                    ("postgres", &s.target_password),
                    (rights::TARGET_ADMIN, &s.target_admin_password),
                    ("shop", &app),
                    ("letters", &app),
                ],
            )
            .await
        })?;
    } else {
        seeded_clusters(&mut s, &rt, template.as_deref())?;
        if template.is_some() {
            load_rights_module(dir, &source, &target, native)?;
            s.source_port = procs::start_existing_cluster(&source, s.source_port, &tls_dir, true)?;
            s.target_port = procs::start_existing_cluster(&target, s.target_port, &tls_dir, false)?;
            s.save()?;
        }
    }
    // The legacy admin's right to subscribe, at every up (a template holds neither).
    rt.block_on(template::run_sql(
        &source,
        s.source_port,
        &rights::source_subscribe_sql(native),
    ))?;
    if !native {
        eprintln!("sandbox: as managed databases are: the legacy admin may not subscribe, the legacy host cannot reach the target (up --native opens both)");
    }
    for env in ENVIRONMENTS {
        pooler::start(&mut s, env)?;
    }
    eprintln!(
        "sandbox: PgBouncer for the shop application on {}",
        ENVIRONMENTS
            .iter()
            .map(|e| format!("{e} {}", s.pooler_ports[*e]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s.save()?;
    ensure_moto(&mut s, &venv)?;
    eprintln!("sandbox: seeding moto: Organization, 3 member accounts, zones, RDS, EKS, WAF, state buckets");
    rt.block_on(seed::aws(&mut s))?;
    eprintln!("sandbox: seeding the legacy Spaces (shop's uploads) of every environment");
    rt.block_on(spaces::seed(&s))?;
    write_kubeconfig(&s)?;
    // The serve process reads the accounts seeded just now from the state file: saved before it
    // starts, never after.
    s.save()?;

    let mut serve = std::process::Command::new(std::env::current_exe()?);
    serve.arg("--dir").arg(dir).arg("serve");
    listeners.pass_to(&mut serve);
    s.serve_pid = procs::spawn_detached(serve, &dir.join("serve.log"))?;
    drop(listeners);
    s.save()?;
    let serve_log = dir.join("serve.log");
    for env in ENVIRONMENTS {
        procs::wait_http(
            s.serve_pid,
            s.kube_ports[env],
            "Kubernetes API emulator",
            &serve_log,
            Duration::from_secs(60),
        )?;
    }
    procs::wait_http(
        s.serve_pid,
        s.legacy_app_port,
        "legacy app",
        &serve_log,
        Duration::from_secs(60),
    )?;
    wait_scraped(s.prometheus_port, ENVIRONMENTS.len() + 1)?;
    for env in ENVIRONMENTS {
        wait_operator_synced(s.kube_ports[env], env)?;
    }
    eprintln!(
        "sandbox: up in {} (accounts: {})",
        dir.display(),
        ENVIRONMENTS
            .iter()
            .map(|e| format!("{e} {}", s.accounts[*e]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("sandbox: eval \"$(cutover-sandbox env)\" to point cutover at it");
    Ok(0)
}

/// Creates and seeds both clusters in `<dir>/pg` (initdb, TLS, the shop and letters
/// databases); with a `template` location, stops them and saves them there (they are left
/// stopped), else leaves them running.
fn seeded_clusters(
    s: &mut State,
    rt: &tokio::runtime::Runtime,
    template: Option<&std::path::Path>,
) -> Result<()> {
    let dir = s.dir.clone();
    let tls_dir = tls::dir(&dir);
    let (source, target) = (dir.join("pg/source"), dir.join("pg/target"));
    procs::init_cluster(&source, &s.source_password, SOURCE_CONF)?;
    procs::init_cluster(&target, &s.target_password, TARGET_CONF)?;
    load_rights_module(&dir, &source, &target, s.native)?;
    s.source_port = procs::start_existing_cluster(&source, s.source_port, &tls_dir, true)?;
    s.target_port = procs::start_existing_cluster(&target, s.target_port, &tls_dir, false)?;
    s.save()?;
    eprintln!(
        "sandbox: seeding the shop database ({} orders)",
        seed::ORDERS
    );
    if template.is_some() {
        rt.block_on(async {
            template::keep_wal_small(&source, s.source_port).await?;
            template::keep_wal_small(&target, s.target_port).await
        })?;
    }
    rt.block_on(seed::databases(s))?;
    if let Some(t) = template {
        rt.block_on(async {
            template::default_wal_sizes(&source, s.source_port).await?;
            template::default_wal_sizes(&target, s.target_port).await
        })?;
        procs::stop_cluster(&source);
        procs::stop_cluster(&target);
        template::save(&dir.join("pg"), t)?;
    }
    Ok(())
}

/// Compiles the subscription-rights module for this sandbox and has both clusters load it,
/// each for its own admin's role ([`rights`]).
fn load_rights_module(
    dir: &std::path::Path,
    source: &std::path::Path,
    target: &std::path::Path,
    native: bool,
) -> Result<()> {
    let module = rights::module(dir)?;
    procs::append_conf(source, &rights::conf(&module, rights::SOURCE_SUBSCRIBERS))?;
    procs::append_conf(target, &rights::conf(&module, rights::TARGET_SUBSCRIBERS))?;
    let ca = tls::ca_file(dir);
    let ca = std::fs::canonicalize(&ca).unwrap_or(ca);
    procs::append_conf(target, &rights::route_conf(&ca, native))
}

/// `cutover-sandbox template`: makes the seeded clusters' template at
/// `$CUTOVER_SANDBOX_TEMPLATE_DIR` when it is missing, in `dir` (removed afterwards), starting
/// nothing else: what a test harness runs once before it starts sandboxes side by side, so they
/// do not each seed their own.
fn make_template(dir: &std::path::Path) -> Result<i32> {
    let Some(t) = template::location()? else {
        anyhow::bail!("CUTOVER_SANDBOX_TEMPLATE_DIR is not set: there is no template to make");
    };
    if template::exists(&t) {
        return Ok(0);
    }
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("pg"))?;
    for d in [dir.to_path_buf(), dir.join("pg")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut s = fresh_state(dir);
    let mut ports = procs::free_ports(2)?.into_iter();
    s.source_port = ports.next().expect("two ports");
    s.target_port = ports.next().expect("two ports");
    tls::make(&tls::dir(dir), "cutover sandbox template CA")?;
    let rt = runtime()?;
    let made = seeded_clusters(&mut s, &rt, Some(&t));
    if made.is_err() {
        procs::stop_cluster(&dir.join("pg/source"));
        procs::stop_cluster(&dir.join("pg/target"));
    }
    made?;
    let _ = std::fs::remove_dir_all(dir);
    eprintln!("sandbox: template made at {}", t.display());
    Ok(0)
}

/// Starts Prometheus (Debian's `prometheus` package) scraping every side's `/metrics` each
/// 500 ms, so an analysis window of a few seconds sees the traffic of its stage; on another port
/// when the chosen one was taken.
fn start_prometheus(s: &mut State) -> Result<()> {
    let bin = procs::prometheus_bin()?;
    let mut targets: Vec<String> = ENVIRONMENTS
        .iter()
        .map(|e| format!("\"127.0.0.1:{}\"", s.app_ports[*e]))
        .collect();
    targets.push(format!("\"127.0.0.1:{}\"", s.legacy_app_port));
    let config = format!(
        "# Written by cutover-sandbox up.\nglobal:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: shop\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    let dir = s.dir.join("prometheus");
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::write(dir.join("prometheus.yml"), config)?;
    let log = s.dir.join("prometheus.log");
    let mut failures = Vec::new();
    for _ in 0..procs::START_ATTEMPTS {
        s.prometheus_port = procs::free_port_except(&s.assigned_ports())?;
        eprintln!(
            "sandbox: starting Prometheus on 127.0.0.1:{}",
            s.prometheus_port
        );
        let mut cmd = std::process::Command::new(&bin);
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!(
            "--web.listen-address=127.0.0.1:{}",
            s.prometheus_port
        ))
        .arg("--storage.tsdb.retention.time=1d");
        s.prometheus_pid = procs::spawn_detached(cmd, &log)?;
        s.save()?;
        match procs::wait_http(
            s.prometheus_pid,
            s.prometheus_port,
            "Prometheus",
            &log,
            Duration::from_secs(60),
        ) {
            Ok(()) => return Ok(()),
            Err(e) if !procs::alive(s.prometheus_pid) => failures.push(e.to_string()),
            Err(e) => return Err(e),
        }
    }
    anyhow::bail!("Prometheus did not start: {}", failures.join("; "))
}

/// Waits until Prometheus has scraped each of its `n` targets at least once (its discovery
/// hands them to the scrape manager a few seconds after it is ready), so analysis windows find
/// series from the start. "At least once in the last minute" (`max_over_time(up[1m])`), not
/// "all up in the same instant": on a loaded machine one scrape of the four may time out, and
/// waiting for all four to succeed together failed a CI run's sandbox start after 60 s.
fn wait_scraped(port: u16, n: usize) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(body) = procs::http_get(
            port,
            "/api/v1/query?query=count(max_over_time(up%5B1m%5D)%3D%3D1)",
        ) {
            if body.contains(&format!("\"{n}\"]")) {
                return Ok(());
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("Prometheus did not scrape its {n} targets within 60 s");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits until the sandbox's External Secrets operator of `env` (which acts with the account's
/// assumed role, so only once the accounts are seeded and read) has synced ExternalSecret
/// `letters/letters-db`: its status carries a `Ready` condition that is `True`.
fn wait_operator_synced(port: u16, env: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        let path = "/apis/external-secrets.io/v1/namespaces/letters/externalsecrets/letters-db";
        if let Ok(body) = procs::http_get(port, path) {
            let es: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let ready = es
                .pointer("/status/conditions")
                .and_then(|c| c.as_array())
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready");
            match ready {
                Some(c) if c["status"] == "True" => return Ok(()),
                Some(c) => last = c["message"].as_str().unwrap_or_default().to_string(),
                None => last = "no status yet".into(),
            }
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "{env}: the External Secrets operator did not sync letters/letters-db within 60 s ({last}); see serve.log"
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn write_kubeconfig(s: &State) -> Result<()> {
    let mut clusters = Vec::new();
    let mut contexts = Vec::new();
    for env in ENVIRONMENTS {
        let arn = &s.cluster_arns[env];
        clusters.push(serde_json::json!({"name": arn, "cluster": {"server": format!("http://127.0.0.1:{}", s.kube_ports[env])}}));
        contexts.push(serde_json::json!({"name": arn, "context": {"cluster": arn, "user": "sandbox", "namespace": "shop"}}));
    }
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "clusters": clusters, "contexts": contexts,
        "users": [{"name": "sandbox", "user": {"token": "sandbox"}}],
        "current-context": s.cluster_arns["staging"],
    });
    std::fs::write(
        s.dir.join("kubeconfig"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    Ok(())
}

fn down(dir: &std::path::Path) -> Result<i32> {
    let Some(s) = State::load(dir) else {
        eprintln!("sandbox: nothing running in {}", dir.display());
        return Ok(0);
    };
    procs::stop(s.serve_pid);
    // The pods serve ran as processes (crate::kubelet) are in its process group.
    unsafe { libc::kill(-(s.serve_pid as i32), libc::SIGKILL) };
    procs::stop(s.moto_pid);
    procs::stop(s.spaces_pid);
    procs::stop(s.prometheus_pid);
    for pid in s.pooler_pids.values() {
        procs::stop(*pid);
    }
    procs::stop_cluster(&dir.join("pg/source"));
    procs::stop_cluster(&dir.join("pg/target"));
    for sub in [
        "pg",
        "state.json",
        "kubeconfig",
        "moto.log",
        "spaces",
        "spaces.log",
        "serve.log",
        "prometheus",
        "prometheus.log",
        "pgbouncer",
        "pods",
    ] {
        let p = dir.join(sub);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        } else if p.exists() {
            std::fs::remove_file(&p)?;
        }
    }
    eprintln!("sandbox: down");
    Ok(0)
}

fn status(dir: &std::path::Path) -> Result<i32> {
    let Some(s) = State::load(dir) else {
        println!("sandbox: not up ({})", dir.display());
        return Ok(1);
    };
    let mut ok = true;
    let mut line = |what: String, up: bool| {
        ok &= up;
        println!("{:<44} {}", what, if up { "up" } else { "DOWN" });
    };
    line(
        format!("moto server 127.0.0.1:{}", s.moto_port),
        procs::alive(s.moto_pid),
    );
    if let Some(port) = s.spaces_ports.first() {
        line(
            format!("SeaweedFS (legacy Spaces) S3 127.0.0.1:{port}"),
            procs::alive(s.spaces_pid),
        );
    }
    line(
        format!("PostgreSQL source 127.0.0.1:{}", s.source_port),
        procs::cluster_running(&dir.join("pg/source")),
    );
    line(
        format!("PostgreSQL target 127.0.0.1:{}", s.target_port),
        procs::cluster_running(&dir.join("pg/target")),
    );
    line(
        "Kubernetes API emulator and apps".to_string(),
        procs::alive(s.serve_pid),
    );
    line(
        format!("Prometheus 127.0.0.1:{}", s.prometheus_port),
        procs::alive(s.prometheus_pid),
    );
    for (env, port) in &s.pooler_ports {
        line(
            format!("PgBouncer ({env}) 127.0.0.1:{port}"),
            s.pooler_pids.get(env).is_some_and(|p| procs::alive(*p)),
        );
    }
    Ok(if ok { 0 } else { 1 })
}

fn env(dir: &std::path::Path) -> Result<i32> {
    let s = State::load(dir).with_context(|| {
        format!(
            "no sandbox in {}; run `cutover-sandbox up` first",
            dir.display()
        )
    })?;
    for (k, v) in s.exports() {
        println!("export {k}='{}'", v.replace('\'', "'\\''"));
    }
    Ok(0)
}

fn serve(dir: &std::path::Path) -> Result<i32> {
    let s = State::load(dir).context("no sandbox state")?;
    runtime()?.block_on(serve::run(s))?;
    Ok(0)
}
