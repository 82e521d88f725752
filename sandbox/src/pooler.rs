//! The shop application's pooler in each environment's cluster: a real PgBouncer (Debian's
//! `pgbouncer` package), one per environment, as teams run it on EKS (a Deployment behind a
//! Service, its `[databases]` section from a Secret), and the sidecar that puts that Secret on
//! its disk.
//!
//! - PgBouncer listens on its own port with TLS for clients (the sandbox CA's server
//!   certificate) and verifies the servers' (`server_tls_sslmode = verify-full`), authenticates
//!   clients by SCRAM against its `userlist.txt` (the application role `shop` and the admin
//!   `cutover_pooler`), runs `pool_mode = transaction`, and `%include`s `databases.ini`, whose
//!   one entry, `shop_<env>`, starts on the legacy database.
//! - The Secret `shop/pgbouncer-databases` (key `databases.ini`) in the environment's cluster
//!   holds that file; [`sidecar`] stands in for the sidecar container a PgBouncer pod runs
//!   beside it (kiwigrid's k8s-sidecar, as Grafana's chart uses it): it watches the Secret
//!   through the cluster's API and writes the file whenever its content changes, at once,
//!   without the kubelet's volume sync. It never reloads PgBouncer; `cutover`'s
//!   `pgbouncer.repoint` does, and checks `SHOW DATABASES`.
//!
//! Owns the poolers' files and processes; must not decide anything a runbook decides.

use crate::kube::Cluster;
use crate::procs;
use crate::state::State;
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The admin console's role (`admin_users`).
pub const ADMIN_USER: &str = "cutover_pooler";
/// Namespace of the Secret holding the `[databases]` file.
pub const SECRET_NAMESPACE: &str = "shop";
/// The Secret holding the `[databases]` file.
pub const SECRET: &str = "pgbouncer-databases";
/// Its key.
pub const KEY: &str = "databases.ini";

/// The environment's pooler directory: `<sandbox>/pgbouncer/<env>`.
pub fn dir(sandbox: &Path, env: &str) -> PathBuf {
    sandbox.join("pgbouncer").join(env)
}

/// The `[databases]` file the sandbox starts with: `shop_<env>` on the legacy database, as
/// the application role.
pub fn databases_ini(s: &State, env: &str) -> String {
    let db = State::database(env);
    format!(
        "[databases]\n{db} = host=127.0.0.1 port={} dbname={db} user=shop password={}\n",
        s.source_port, s.app_password
    )
}

fn config(s: &State, env: &str, port: u16) -> String {
    let d = dir(&s.dir, env);
    let tls = crate::tls::dir(&s.dir);
    format!(
        "# Written by cutover-sandbox up: the shop application's pooler in the {env} cluster.
[databases]
%include {databases}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {userlist}
admin_users = {ADMIN_USER}
pool_mode = transaction
max_client_conn = 400
default_pool_size = 10
ignore_startup_parameters = extra_float_digits
client_tls_sslmode = require
client_tls_key_file = {key}
client_tls_cert_file = {cert}
server_tls_sslmode = verify-full
server_tls_ca_file = {ca}
logfile = {log}
",
        databases = d.join(KEY).display(),
        userlist = d.join("userlist.txt").display(),
        key = d.join("server.key").display(),
        cert = d.join("server.crt").display(),
        ca = tls.join("ca.crt").display(),
        log = d.join("pgbouncer.log").display(),
    )
}

/// Writes `content` to `path` as one step (a temporary file renamed over it), so PgBouncer never
/// reads half a file.
fn write_atomically(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// Starts the environment's PgBouncer (its files written afresh) and waits until it accepts
/// connections; records its port and pid in `s`.
///
/// # Errors
/// PgBouncer is not installed, or does not start on any of several free ports.
pub fn start(s: &mut State, env: &str) -> Result<()> {
    let bin = Path::new("/usr/sbin/pgbouncer");
    if !bin.exists() {
        bail!("PgBouncer not found at /usr/sbin/pgbouncer; install Debian's pgbouncer (scripts/install-deps)");
    }
    let d = dir(&s.dir, env);
    std::fs::create_dir_all(&d)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(
        d.parent().context("pooler directory")?,
        std::fs::Permissions::from_mode(0o755),
    )?;
    write_atomically(&d.join(KEY), databases_ini(s, env).as_bytes())?;
    std::fs::write(
        d.join("userlist.txt"),
        format!(
            "\"shop\" \"{}\"\n\"{ADMIN_USER}\" \"{}\"\n",
            s.app_password, s.pooler_admin_password
        ),
    )?;
    let tls = crate::tls::dir(&s.dir);
    for f in ["server.key", "server.crt"] {
        std::fs::copy(tls.join(f), d.join(f))?;
    }
    std::fs::set_permissions(d.join("server.key"), std::fs::Permissions::from_mode(0o600))?;
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = procs::free_port_except(&s.assigned_ports())?;
        std::fs::write(d.join("pgbouncer.ini"), config(s, env, port))?;
        procs::chown_tree(&d)?;
        // The sidecar (root, in `serve`) rewrites databases.ini; PgBouncer only reads it.
        let mut cmd = std::process::Command::new(bin);
        cmd.arg(d.join("pgbouncer.ini"));
        procs::as_pg_user(&mut cmd)?;
        let pid = procs::spawn_detached(cmd, &d.join("stdout.log"))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && procs::alive(pid) {
                s.pooler_ports.insert(env.to_string(), port);
                s.pooler_pids.insert(env.to_string(), pid);
                return Ok(());
            }
            if !procs::alive(pid) || std::time::Instant::now() > deadline {
                procs::stop(pid);
                let log = std::fs::read_to_string(d.join("pgbouncer.log")).unwrap_or_default();
                failures.push(format!(
                    "port {port}: {}",
                    log.lines().last().unwrap_or("exited")
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    bail!("PgBouncer ({env}) did not start: {}", failures.join("; "))
}

/// The `[databases]` file the Secret holds now, if it holds one.
fn file_in(cluster: &Cluster) -> Option<Vec<u8>> {
    let s = cluster.lock().unwrap_or_else(|p| p.into_inner());
    let encoded = s
        .get("secrets", SECRET_NAMESPACE, SECRET)?
        .get("data")?
        .get(KEY)?
        .as_str()?
        .to_string();
    base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()
}

/// The sidecar of the environment's PgBouncer pod: writes the Secret's `[databases]` file to
/// `path` whenever the cluster changes it (and once at start). Runs forever.
pub async fn sidecar(cluster: Cluster, path: PathBuf) {
    let mut changes = {
        let s = cluster.lock().unwrap_or_else(|p| p.into_inner());
        s.changes()
    };
    let mut written: Option<Vec<u8>> = None;
    loop {
        if let Some(content) = file_in(&cluster) {
            if written.as_ref() != Some(&content) {
                match write_atomically(&path, &content) {
                    Ok(()) => written = Some(content),
                    Err(e) => eprintln!("serve: pooler sidecar: writing {}: {e}", path.display()),
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
