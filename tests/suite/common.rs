//! Test harness: each test gets its own sandbox (`cutover-sandbox up --dir <tmp>`: moto, two
//! PostgreSQL clusters, the Kubernetes API emulator, the apps) and its own copy of the project
//! files, so runs, locks and state never leak between tests. Every external command runs under a
//! deadline.
//!
//! Sandboxes run several at once, as many as [`slots`] grants; each one, when dropped, appends
//! where its test's time went to `target/test-timings.jsonl` ([`Timings`]).
#![allow(dead_code)]

use base64::Engine as _;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The step ids of runbooks/shop-cutover.yaml, in order.
pub const SHOP_STEP_IDS: [&str; 22] = [
    "ttl",
    "infra",
    "identity",
    "snapshot",
    "replicate",
    "uploads",
    "uploads_fallback",
    "storage",
    "uploads_sync",
    "synced",
    "waf",
    "dns",
    "prepass",
    "approve",
    "pause",
    "freeze",
    "drained",
    "sequences",
    "verify",
    "fallback",
    "flip",
    "health",
];

/// The text of runbooks/shop-cutover.yaml.
pub fn shop_runbook() -> String {
    std::fs::read_to_string(repo().join("runbooks/shop-cutover.yaml")).unwrap()
}

/// `shop`, the text of runbooks/shop-cutover.yaml, reordered as runbooks used to be: the data
/// window (freeze ... flip) first, then DNS (without `wait_old_answers`), so the DNS stages run
/// after the flip and users still sent to the legacy host meet its frozen database while they do.
pub fn flip_first(shop: &str) -> String {
    let a = shop.find("      - id: dns\n").expect("dns step");
    let b = shop
        .find("      # Every row compared")
        .expect("prepass comment");
    let dns = shop[a..b].replace("          wait_old_answers: true\n", "");
    let rest = format!("{}{}", &shop[..a], &shop[b..]);
    let h = rest.find("      - { id: health").expect("health step");
    format!("{}{dns}{}", &rest[..h], &rest[h..])
}

/// [`flip_first`] of the shop runbook, named `shop-cutover-flip-first`. Its legacy users' outage
/// lasts the whole DNS move by construction; the tests that use it measure that outage (or roll
/// back for other reasons), so its budget is 10 minutes rather than 30 s.
pub fn flip_first_runbook() -> String {
    flip_first(&shop_runbook())
        .replace("name: shop-cutover\n", "name: shop-cutover-flip-first\n")
        .replace("  max_write_outage: 30s\n", "  max_write_outage: 10m\n")
}

/// Polls until `cond` holds (at most `secs`).
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The records of `event` in `records`.
pub fn events<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == event).collect()
}

/// The last `heartbeat` record's data, after asserting that no acknowledged write is missing on
/// any path and that the legacy path was measured too.
pub fn heartbeat_without_loss(records: &[Value]) -> Value {
    let hb = events(records, "heartbeat")
        .last()
        .map(|r| r["data"].clone())
        .expect("a heartbeat record");
    assert_eq!(hb["missing"], 0, "acknowledged writes missing: {hb}");
    let paths = hb["paths"].as_array().expect("heartbeat paths");
    let names: Vec<&str> = paths.iter().filter_map(|p| p["path"].as_str()).collect();
    assert_eq!(names, ["aws", "legacy"], "{hb}");
    for p in paths {
        assert_eq!(p["missing"], 0, "{p}");
        assert!(p["acknowledged"].as_u64().unwrap() > 0, "{p}");
    }
    hb
}

/// One path's heartbeat figures.
pub fn heartbeat_path<'a>(hb: &'a Value, path: &str) -> &'a Value {
    hb["paths"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == path)
        .unwrap_or_else(|| panic!("no {path} path in {hb}"))
}

/// Writes an ed25519 key pair with OpenSSL into `dir`: `<name>.pem` (PKCS#8 private key) and
/// `<name>.pub.pem` (SubjectPublicKeyInfo); returns both paths.
pub fn ed25519_keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    for args in [
        vec![
            "genpkey",
            "-algorithm",
            "ed25519",
            "-out",
            key.to_str().unwrap(),
        ],
        vec![
            "pkey",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ],
    ] {
        let o = Command::new("openssl").args(&args).output().unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    }
    (key, public)
}

/// check-jsonschema in the sandbox's virtualenv (`$CUTOVER_SANDBOX_VENV`, else `.sandbox/venv`),
/// installed by scripts/install-deps.
pub fn check_jsonschema() -> PathBuf {
    let venv = std::env::var("CUTOVER_SANDBOX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join(".sandbox/venv"));
    let bin = venv.join("bin/check-jsonschema");
    assert!(
        bin.exists(),
        "{} missing: run scripts/install-deps",
        bin.display()
    );
    bin
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `cutover` binary under test.
///
/// A private copy of the binary cargo built (`target/suite-bin/cutover-<pid>`), made once per
/// suite process: the clean-clone test's `cargo install` builds into the same target directory
/// and replaces `target/debug/cutover` while the other tests run theirs.
pub fn cutover_bin() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let dir = repo().join("target/suite-bin");
        std::fs::create_dir_all(&dir).unwrap();
        // Copies left by suite processes that have ended.
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("cutover-")
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let copy = dir.join(format!("cutover-{}", std::process::id()));
        let tmp = copy.with_extension("tmp");
        // `cp` writes the copy, not this process: a file this process held open for writing
        // would be inherited by a child another test thread forks meanwhile, and executing the
        // copy would fail with ETXTBSY ("Text file busy") until that child had exec'd.
        let cp = Command::new("cp")
            .arg(built_cutover_bin())
            .arg(&tmp)
            .status()
            .expect("cp");
        assert!(cp.success(), "copying the cutover binary failed");
        std::fs::rename(&tmp, &copy).unwrap();
        copy
    })
    .clone()
}

/// The `cutover` binary cargo built for this test run.
pub fn built_cutover_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cutover"))
}

/// The `cutover-sandbox` binary (built by `cargo build --workspace`, as the README's test command does).
pub fn sandbox_bin() -> PathBuf {
    let p = built_cutover_bin().with_file_name("cutover-sandbox");
    assert!(p.exists(), "{} is missing: run `cargo build --workspace` before the tests (the README's test command does)", p.display());
    p
}

/// Runs `cmd` to completion within `secs`, killing it past the deadline.
pub fn run_with_timeout(mut cmd: Command, secs: u64) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            let said = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
            let tail: String = said
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            // The program and its arguments, never its environment: that holds the sandbox's
            // passwords and keys.
            panic!(
                "{} {:?} did not finish within {secs}s; the end of its stderr:\n{tail}",
                cmd.get_program().to_string_lossy(),
                cmd.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// One record set of `shop.<domain>`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShopSet {
    /// Set identifier of a weighted member (`aws`, `legacy`); `None` for a simple record.
    pub set_identifier: Option<String>,
    /// Weight of a weighted member.
    pub weight: Option<i64>,
    /// TTL in seconds.
    pub ttl: Option<i64>,
    /// Values joined by commas.
    pub value: String,
}

/// One sandbox and one project copy.
pub struct Sandbox {
    /// Sandbox directory.
    pub dir: tempfile::TempDir,
    /// Project root (environments/, runbooks/, terraform/sandbox, .cutover/).
    pub project: tempfile::TempDir,
    /// `cutover-sandbox env` exports.
    pub env: Vec<(String, String)>,
    /// The sandbox's state.json.
    pub state: Value,
    /// Every stdout and stderr the tests collected, for the secret scan.
    pub outputs: std::sync::Mutex<Vec<String>>,
    /// Where this sandbox's time went so far (written out when it is dropped).
    timings: Timings,
    /// The SDK configuration acting in each environment's account, made once (one STS call)
    /// so that tests polling moto cost it one request per look.
    aws_configs: std::sync::Mutex<BTreeMap<String, aws_config::SdkConfig>>,
    /// Its place among the sandboxes running at once; released after `down`.
    _slot: slots::Permit,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name == ".terraform" {
            continue;
        }
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(&name));
        } else {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

/// Copies the files a team commits (environments/, runbooks/, terraform/) into `to`.
pub fn copy_project(to: &Path) {
    for sub in ["environments", "runbooks", "terraform"] {
        copy_dir(&repo().join(sub), &to.join(sub));
    }
}

impl Sandbox {
    /// Sets (or replaces) a variable every later command gets.
    pub fn set_var(&mut self, name: &str, value: &str) {
        self.env.retain(|(k, _)| k != name);
        self.env.push((name.to_string(), value.to_string()));
    }

    /// A `cutover` command in another project directory (a second clone) with the sandbox's
    /// environment.
    pub fn command_in(&self, project: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(cutover_bin());
        c.arg("-C")
            .arg(project)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c
    }

    /// Keys of every object in `bucket` of `env`'s account.
    pub fn s3_keys(&self, env: &str, bucket: &str) -> Vec<String> {
        let cfg = self.aws(env);
        block_on(async {
            let s3 = aws_sdk_s3::Client::new(&cfg);
            let out = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
            let mut keys: Vec<String> = out
                .contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_string))
                .collect();
            keys.sort();
            keys
        })
    }

    /// Waits for a slot ([`slots`]), then starts a sandbox (≈10 s) and copies the project files.
    pub fn start() -> Sandbox {
        let asked = Instant::now();
        let slot = slots::acquire(1, slots::Priority::Normal);
        Self::start_in(slot, asked, false)
    }

    /// As [`Sandbox::start`], with `up --native`: the legacy admin may subscribe and the
    /// target accepts the legacy server's connections, so both directions replicate natively
    /// (a self-hosted legacy server; the default sandbox is as managed databases are).
    pub fn start_native() -> Sandbox {
        let asked = Instant::now();
        let slot = slots::acquire(1, slots::Priority::Normal);
        Self::start_in(slot, asked, true)
    }

    /// As [`Sandbox::start`], for one of the suite's longest tests (minutes of TTL waits or of
    /// runs one after another): it gets its slot before the other waiting tests, so it does not
    /// start last and finish last.
    pub fn start_first() -> Sandbox {
        let asked = Instant::now();
        let slot = slots::acquire(1, slots::Priority::First);
        Self::start_in(slot, asked, false)
    }

    /// As [`Sandbox::start_first`], for a test that keeps about `n` cores busy (a copy of
    /// 10,000 objects: moto, SeaweedFS and cutover at once): it holds `n` slots, so that fewer
    /// sandboxes share the machine with it.
    pub fn start_first_holding(n: usize) -> Sandbox {
        let asked = Instant::now();
        let slot = slots::acquire(n, slots::Priority::First);
        Self::start_in(slot, asked, false)
    }

    /// As [`Sandbox::start`], for a test of one and a half to two and a half minutes
    /// ([`slots::Priority::Long`]).
    pub fn start_long() -> Sandbox {
        let asked = Instant::now();
        let slot = slots::acquire(1, slots::Priority::Long);
        Self::start_in(slot, asked, false)
    }

    /// As [`Sandbox::start_long`], with `up --native` ([`Sandbox::start_native`]).
    pub fn start_long_native() -> Sandbox {
        let asked = Instant::now();
        let slot = slots::acquire(1, slots::Priority::Long);
        Self::start_in(slot, asked, true)
    }

    /// `n` sandboxes started at once, on `n` slots taken together before any other waiting
    /// test's (the tests that need several are the longest of the suite).
    pub fn start_many(n: usize) -> Vec<Sandbox> {
        let asked = Instant::now();
        let mut permit = slots::acquire(n, slots::Priority::First);
        let slots: Vec<slots::Permit> = (0..n).map(|_| permit.take_one()).collect();
        std::thread::scope(|s| {
            let started: Vec<_> = slots
                .into_iter()
                .map(|slot| s.spawn(move || Self::start_in(slot, asked, false)))
                .collect();
            started.into_iter().map(|h| h.join().unwrap()).collect()
        })
    }

    fn start_in(slot: slots::Permit, asked: Instant, native: bool) -> Sandbox {
        let granted = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("cutover-sandbox-")
            .tempdir_in(scratch_root())
            .unwrap();
        let project = tempfile::Builder::new()
            .prefix("cutover-project-")
            .tempdir_in(scratch_root())
            .unwrap();
        copy_project(project.path());
        let venv = std::env::var("CUTOVER_SANDBOX_VENV")
            .unwrap_or_else(|_| repo().join(".sandbox/venv").display().to_string());
        // Stops whatever a failed `up` left running (its processes would outlive the test).
        struct DownOnFailure(Option<PathBuf>);
        impl Drop for DownOnFailure {
            fn drop(&mut self) {
                if let Some(dir) = &self.0 {
                    let mut down = Command::new(sandbox_bin());
                    down.arg("--dir").arg(dir).arg("down");
                    let _ = run_with_timeout(down, 120);
                }
            }
        }
        let mut guard = DownOnFailure(Some(dir.path().to_path_buf()));
        let mut up = Command::new(sandbox_bin());
        up.arg("--dir").arg(dir.path()).arg("up");
        if native {
            up.arg("--native");
        }
        up.env("CUTOVER_SANDBOX_VENV", &venv)
            // Every sandbox starts from copies of the seeded clusters `sandbox_template` made.
            .env("CUTOVER_SANDBOX_TEMPLATE_DIR", template_dir());
        let out = run_with_timeout(up, 600);
        assert!(
            out.status.success(),
            "sandbox up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut envc = Command::new(sandbox_bin());
        envc.arg("--dir").arg(dir.path()).arg("env");
        let out = run_with_timeout(envc, 30);
        let text = String::from_utf8(out.stdout).unwrap();
        let env = text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        let state: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("state.json")).unwrap())
                .unwrap();
        guard.0 = None;
        Sandbox {
            dir,
            project,
            env,
            state,
            outputs: Default::default(),
            aws_configs: Default::default(),
            timings: Timings {
                asked,
                granted,
                up: Instant::now(),
            },
            _slot: slot,
        }
    }

    /// An exported variable.
    pub fn var(&self, name: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    /// A `cutover` command in the project with the sandbox's environment.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(cutover_bin());
        c.arg("-C")
            .arg(self.project.path())
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        c.env_remove("NO_COLOR");
        c
    }

    /// Runs `cutover args...` (deadline 300 s); records its output for the secret scan.
    pub fn cutover(&self, args: &[&str]) -> Output {
        self.cutover_within(300, args)
    }

    /// [`Sandbox::cutover`] under a deadline of `secs` seconds, for runs whose work grows with
    /// a test's data.
    pub fn cutover_within(&self, secs: u64, args: &[&str]) -> Output {
        self.record(run_with_timeout(self.command(args), secs))
    }

    /// Keeps a command's output for the secret scan ([`Sandbox::assert_no_secrets`]).
    pub fn record(&self, out: Output) -> Output {
        self.outputs.lock().unwrap().push(format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
        out
    }

    /// Starts `cutover args...` without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Starts `cutover ARGS` with stdout and stderr going to files in the project (so a long run
    /// never blocks on a full pipe); returns the child and the two file paths.
    pub fn spawn_logged(&self, args: &[&str]) -> (Child, PathBuf, PathBuf) {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let out = self.project.path().join(format!("spawn-{n}.out"));
        let err = self.project.path().join(format!("spawn-{n}.err"));
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        (child, out, err)
    }

    /// Polls moto every 100 ms while `run` executes and returns the distinct weights `(aws,
    /// legacy)` of the weighted `shop.<domain>` pair in the order they appeared.
    pub fn watch_weights<T>(&self, env: &str, run: impl FnOnce() -> T) -> (T, Vec<(i64, i64)>) {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut seen: Vec<(i64, i64)> = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Some(w) = self.shop_weights(env) {
                        if seen.last() != Some(&w) {
                            seen.push(w);
                        }
                    }
                    // Each stage is held through its analysis (the test runbooks' 6 samples 500 ms
                    // apart), so a look every 100 ms sees every stage many times.
                    std::thread::sleep(Duration::from_millis(100));
                }
                seen
            });
            // Stops the watcher however `run` ends, a failed assertion included (the scope
            // would otherwise wait for it forever).
            struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let guard = Stop(&stop);
            let result = run();
            drop(guard);
            (result, watcher.join().unwrap())
        })
    }

    /// The ids of the runs on record, oldest first.
    pub fn run_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.project.path().join(".cutover/runs"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A run's event log path.
    pub fn log_path(&self, run: &str) -> PathBuf {
        self.project
            .path()
            .join(".cutover/runs")
            .join(run)
            .join("events.jsonl")
    }

    /// A run's records.
    pub fn records(&self, run: &str) -> Vec<Value> {
        std::fs::read_to_string(self.log_path(run))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A number from state.json.
    pub fn port(&self, path: &str) -> u64 {
        self.state
            .pointer(path)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("state has no {path}"))
    }

    /// The passwords the sandbox generated (must never appear in outputs).
    pub fn passwords(&self) -> Vec<String> {
        ["source_password", "target_password", "app_password"]
            .iter()
            .map(|k| self.state[*k].as_str().unwrap().to_string())
            .collect()
    }

    /// GET from the Kubernetes API emulator of `env`.
    pub fn kube_get(&self, env: &str, path: &str) -> Value {
        let port = self.port(&format!("/kube_ports/{env}"));
        block_on(async {
            let r = reqwest::Client::new()
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await
                .unwrap();
            r.json::<Value>().await.unwrap()
        })
    }

    /// A Secret key's decoded value, or None when the Secret is absent.
    pub fn secret_value(&self, env: &str, name: &str, key: &str) -> Option<String> {
        let s = self.kube_get(env, &format!("/api/v1/namespaces/shop/secrets/{name}"));
        let b = s.pointer(&format!("/data/{key}"))?.as_str()?;
        Some(
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap())
                .unwrap(),
        )
    }

    /// Which server the shop application's pooler in `env` sends it to now (`source` or
    /// `target`, by the port `SHOW DATABASES` shows for the shop database's entry: `shop_<env>`,
    /// `shop` in production), and whether that entry is paused. The application's Secret names
    /// the pooler throughout.
    pub fn shop_database(&self, env: &str) -> (String, bool) {
        let url = self.var(&format!("CUTOVER_{}_POOLER_ADMIN_URL", env.to_uppercase()));
        let name = if env == "production" {
            "shop".to_string()
        } else {
            format!("shop_{env}")
        };
        let state = block_on(async {
            let c = cutover::providers::pgbouncer::Console::connect(&url)
                .await
                .unwrap();
            c.database(&name).await.unwrap()
        });
        let side = if u64::from(state.port) == self.state["source_port"].as_u64().unwrap() {
            "source"
        } else if u64::from(state.port) == self.state["target_port"].as_u64().unwrap() {
            "target"
        } else {
            panic!(
                "the pooler sends shop_{env} to port {}, neither server's",
                state.port
            )
        };
        (side.to_string(), state.paused)
    }

    /// The `[databases]` file the shop application's pooler in `env` had before run `run`
    /// moved it (`pgbouncer.repoint`'s backup Secret), if that run made one.
    pub fn pooler_backup(&self, env: &str, run: &str) -> Option<String> {
        self.secret_value(
            env,
            &format!("pgbouncer-databases-backup-{run}"),
            "databases.ini",
        )
    }

    /// Runs SQL through `url`, returning each row's columns as text.
    pub fn sql(&self, url: &str, query: &str) -> Vec<Vec<Option<String>>> {
        self.try_sql(url, query)
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    /// Runs SQL through `url`; the server's error as text.
    pub fn try_sql(&self, url: &str, query: &str) -> Result<Vec<Vec<Option<String>>>, String> {
        block_on(async {
            // TLS as the URL says (the sandbox's servers refuse plaintext), with the tool's
            // own client code.
            // Either server: the error's message without the side it would name.
            let c = cutover::providers::postgres::connect(
                url,
                cutover::providers::postgres::Server::Source,
            )
            .await
            .map_err(|e| match e {
                cutover::providers::ProviderError::Postgres { message, .. } => message,
                other => other.to_string(),
            })?;
            let msgs = tokio::time::timeout(Duration::from_secs(60), c.simple_query(query))
                .await
                .expect("query deadline")
                .map_err(|e| {
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string())
                })?;
            Ok(msgs
                .into_iter()
                .filter_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                    }
                    _ => None,
                })
                .collect())
        })
    }

    /// An SDK configuration acting in `env`'s account in moto (assumed role, made once per
    /// environment).
    pub fn aws(&self, env: &str) -> aws_config::SdkConfig {
        let mut configs = self.aws_configs.lock().unwrap();
        configs
            .entry(env.to_string())
            .or_insert_with(|| self.assume_role(env))
            .clone()
    }

    fn assume_role(&self, env: &str) -> aws_config::SdkConfig {
        let account = self.var(&format!("CUTOVER_{}_ACCOUNT_ID", env.to_uppercase()));
        let endpoint = self.var("AWS_ENDPOINT_URL");
        block_on(async {
            let base = aws_config::SdkConfig::builder()
                .behavior_version(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(&endpoint)
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(
                        aws_credential_types::Credentials::new(
                            "sandbox", "sandbox", None, None, "t",
                        ),
                    ),
                )
                .build();
            let out = aws_sdk_sts::Client::new(&base)
                .assume_role()
                .role_arn(format!(
                    "arn:aws:iam::{account}:role/OrganizationAccountAccessRole"
                ))
                .role_session_name("test")
                .send()
                .await
                .unwrap();
            let c = out.credentials().unwrap();
            base.to_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(
                        aws_credential_types::Credentials::new(
                            c.access_key_id(),
                            c.secret_access_key(),
                            Some(c.session_token().to_string()),
                            None,
                            "t",
                        ),
                    ),
                )
                .build()
        })
    }

    /// Every record set in every hosted zone of `env`'s account, as moto lists them.
    fn record_sets(&self, env: &str) -> Vec<aws_sdk_route53::types::ResourceRecordSet> {
        let cfg = self.aws(env);
        block_on(async {
            let r53 = aws_sdk_route53::Client::new(&cfg);
            let mut out = Vec::new();
            for z in r53.list_hosted_zones().send().await.unwrap().hosted_zones() {
                let sets = r53
                    .list_resource_record_sets()
                    .hosted_zone_id(z.id())
                    .send()
                    .await
                    .unwrap();
                out.extend(sets.resource_record_sets().iter().cloned());
            }
            out
        })
    }

    /// Every record set in every hosted zone of `env`'s account, as `name type ttl values`.
    pub fn dns_records(&self, env: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .record_sets(env)
            .iter()
            .map(|r| {
                let values: Vec<&str> = r.resource_records().iter().map(|v| v.value()).collect();
                format!(
                    "{} {} {:?} {:?} {:?} {}",
                    r.name(),
                    r.r#type().as_str(),
                    r.set_identifier(),
                    r.weight(),
                    r.ttl(),
                    values.join(",")
                )
            })
            .collect();
        out.sort();
        out
    }

    /// The `shop.<domain>` CNAME record sets of `env`'s account, as read from moto: one simple
    /// set, or the members of a weighted group.
    pub fn shop_sets(&self, env: &str) -> Vec<ShopSet> {
        let mut out: Vec<ShopSet> = self
            .record_sets(env)
            .iter()
            .filter(|r| r.name().starts_with("shop.") && r.r#type().as_str() == "CNAME")
            .map(|r| ShopSet {
                set_identifier: r.set_identifier().map(str::to_owned),
                weight: r.weight(),
                ttl: r.ttl(),
                value: r
                    .resource_records()
                    .iter()
                    .map(|v| v.value().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            })
            .collect();
        out.sort_by(|a, b| a.set_identifier.cmp(&b.set_identifier));
        out
    }

    /// Where `shop.<domain>` sends all its traffic: the simple record's value, or the value of
    /// the weighted member with the highest weight.
    pub fn shop_record(&self, env: &str) -> String {
        let sets = self.shop_sets(env);
        sets.iter()
            .max_by_key(|s| s.weight.unwrap_or(i64::MAX))
            .map(|s| s.value.clone())
            .expect("shop record")
    }

    /// The weights `(aws, legacy)` of the weighted `shop.<domain>` pair, or `None` while the
    /// record is a simple one.
    pub fn shop_weights(&self, env: &str) -> Option<(i64, i64)> {
        let sets = self.shop_sets(env);
        let w = |id: &str| {
            sets.iter()
                .find(|s| {
                    s.set_identifier
                        .as_deref()
                        .is_some_and(|i| i.starts_with(id) && i.ends_with("example-shop.com"))
                })
                .and_then(|s| s.weight)
        };
        Some((w("aws-shop.")?, w("legacy-shop.")?))
    }

    /// Waits for `child` (at most `secs`), returning its exit code and output (kept for the
    /// secret check).
    pub fn finish(&self, child: Child, secs: u64) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut child = child;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("cutover did not finish within {secs} s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let out = child.wait_with_output().unwrap();
        let t = text(&out);
        self.outputs.lock().unwrap().push(t.clone());
        (out.status.code(), t)
    }

    /// Creates `env`'s postpone flag and starts `cutover <args>`; returns the flag and the child.
    pub fn start_held(&self, env: &str, args: &[&str]) -> (PathBuf, Child) {
        let flag = self.project.path().join(format!(".cutover/postpone-{env}"));
        std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
        std::fs::write(&flag, "").unwrap();
        (flag, self.spawn(args))
    }

    /// The newest run's id, once a record of `event` for `step` is in its log (at most `secs`).
    ///
    /// Fails at once when the run finishes without that record, and either way names what the
    /// run recorded last and why its steps failed (the event log holds no secret).
    pub fn wait_for_step(&self, step: &str, event: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let newest = self.run_ids().pop();
            let records = newest
                .as_deref()
                .map(|r| self.records(r))
                .unwrap_or_default();
            if let Some(run) = &newest {
                if records
                    .iter()
                    .any(|r| r["type"] == event && r["step"] == step)
                {
                    return run.clone();
                }
            }
            let finished = records.iter().any(|r| r["type"] == "run_finished");
            if finished || Instant::now() >= deadline {
                let failures: Vec<String> = records
                    .iter()
                    .filter(|r| r["type"] == "step_failed" || r["type"] == "run_finished")
                    .map(|r| r.to_string().chars().take(1500).collect())
                    .collect();
                let last: Vec<String> = records
                    .iter()
                    .rev()
                    .take(3)
                    .map(|r| format!("{} {}", r["type"], r["step"]))
                    .collect();
                panic!(
                    "no {event} of step {step} {}; last records (newest first): {last:?}; failures: {failures:#?}",
                    if finished { "before the run finished".to_string() } else { format!("within {secs} s") }
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes `text` as a runbook file outside runbooks/ and returns its path (for `--runbook`).
    pub fn extra_runbook(&self, name: &str, text: &str) -> String {
        let dir = self.project.path().join("extra-runbooks");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Every RDS snapshot id in `env`'s account.
    pub fn rds_snapshots(&self, env: &str) -> Vec<String> {
        let cfg = self.aws(env);
        block_on(async {
            let out = aws_sdk_rds::Client::new(&cfg)
                .describe_db_snapshots()
                .send()
                .await
                .unwrap();
            let mut v: Vec<String> = out
                .db_snapshots()
                .iter()
                .map(|s| s.db_snapshot_identifier().unwrap_or("").to_string())
                .collect();
            v.sort();
            v
        })
    }

    /// Row count and MD5 of every shop table through `url`.
    pub fn table_fingerprints(&self, url: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for t in ["customers", "orders", "order_items"] {
            let rows = self.try_sql(url, &format!("SELECT count(*)::text || ' ' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY id)), '') FROM {t} t"));
            let v = match rows {
                Ok(rows) => rows.first().and_then(|r| r[0].clone()).unwrap_or_default(),
                Err(e) if e.contains("does not exist") => "absent".into(),
                Err(e) => panic!("{t}: {e}"),
            };
            out.insert(t.to_string(), v);
        }
        out
    }

    /// Fails if any sandbox password appears, in any encoding, in the collected outputs, the
    /// event logs, the audits or `extra`.
    pub fn assert_no_secrets(&self, extra: &[String]) {
        let mut texts: Vec<String> = self.outputs.lock().unwrap().clone();
        texts.extend_from_slice(extra);
        for run in self.run_ids() {
            texts.push(std::fs::read_to_string(self.log_path(&run)).unwrap_or_default());
            let md = run_with_timeout(self.command(&["audit", "show", &run]), 60);
            texts.push(String::from_utf8_lossy(&md.stdout).into_owned());
            for format in ["json", "html", "junit"] {
                let out = run_with_timeout(
                    self.command(&["audit", "show", &run, "--format", format]),
                    60,
                );
                texts.push(String::from_utf8_lossy(&out.stdout).into_owned());
            }
        }
        for pw in self.passwords() {
            let forms = [
                pw.clone(),
                base64::engine::general_purpose::STANDARD.encode(&pw),
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(&pw),
                serde_json::to_string(&pw)
                    .unwrap()
                    .trim_matches('"')
                    .to_string(),
            ];
            for t in &texts {
                for f in &forms {
                    assert!(
                        !t.contains(f.as_str()),
                        "a database password leaked into output:\n{}",
                        t.replace(f.as_str(), "<<PASSWORD>>")
                    );
                }
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let runs: Vec<Vec<Value>> = self.run_ids().iter().map(|r| self.records(r)).collect();
        let mut down = Command::new(sandbox_bin());
        down.arg("--dir").arg(self.dir.path()).arg("down");
        let _ = run_with_timeout(down, 120);
        self.timings.write(&runs);
    }
}

/// When a sandbox was asked for, granted a slot and up; written out with the time its runs'
/// steps took, by step kind, when the sandbox is dropped.
struct Timings {
    asked: Instant,
    granted: Instant,
    up: Instant,
}

impl Timings {
    /// Appends one JSON line to `target/test-timings.jsonl`: the test (libtest names its thread
    /// after it), whether it passed so far, seconds waiting for a slot, starting the sandbox,
    /// in all, and the seconds of its runs' steps by kind (`step_started` to the step's last
    /// record).
    fn write(&self, runs: &[Vec<Value>]) {
        let now = Instant::now();
        let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
        for records in runs {
            let kinds: BTreeMap<String, String> = records
                .iter()
                .filter(|r| r["type"] == "run_started")
                .flat_map(|r| r["data"]["steps"].as_array().cloned().unwrap_or_default())
                .filter_map(|s| {
                    Some((
                        s["id"].as_str()?.to_string(),
                        s["kind"].as_str()?.to_string(),
                    ))
                })
                .collect();
            let mut open: BTreeMap<String, f64> = BTreeMap::new();
            for r in records {
                let (Some(step), Some(ts)) = (
                    r["step"].as_str(),
                    r["ts"]
                        .as_str()
                        .and_then(log_time)
                        .map(|ms| ms as f64 / 1000.0),
                ) else {
                    continue;
                };
                if r["type"] == "step_started" || r["type"] == "rollback_step_started" {
                    open.insert(step.to_string(), ts);
                } else if let Some(start) = open.get(step) {
                    let kind = kinds.get(step).cloned().unwrap_or_else(|| step.to_string());
                    let prefix = if r["type"]
                        .as_str()
                        .is_some_and(|t| t.starts_with("rollback_"))
                    {
                        "rollback "
                    } else {
                        ""
                    };
                    let e = by_kind.entry(format!("{prefix}{kind}")).or_default();
                    *e += (ts - *start).max(0.0);
                    open.insert(step.to_string(), ts);
                }
            }
        }
        let line = serde_json::json!({
            "test": std::thread::current().name().unwrap_or("?"),
            "panicking": std::thread::panicking(),
            "slot_wait_s": round(self.granted - self.asked),
            "sandbox_up_s": round(self.up - self.granted),
            "total_s": round(now - self.asked),
            "runs": runs.len(),
            "steps_s": by_kind.into_iter().map(|(k, v)| (k, (v * 10.0).round() / 10.0)).collect::<BTreeMap<_, _>>(),
        });
        let path = repo().join("target/test-timings.jsonl");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            use std::io::Write as _;
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
}

fn round(d: Duration) -> f64 {
    (d.as_secs_f64() * 10.0).round() / 10.0
}

/// Milliseconds since the epoch of an event log record's `ts` (RFC 3339).
pub fn log_time(ts: &str) -> Option<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(ts).ok()?;
    Some(t.timestamp_millis())
}

/// Where the sandboxes and projects of this suite live: `$CUTOVER_TEST_SCRATCH` when set, else
/// `/dev/shm` when it is a memory file system with room for the sandboxes running at once
/// (8 GiB free: up to `CUTOVER_TEST_SANDBOXES` sandboxes of up to 1 GiB each, their clusters
/// grown by the copy), else the system's temporary directory. Measured on a 2-core CI machine's
/// ext4 disk: copying the seeded clusters' template (313 MB) into a new sandbox cost 4.4-5.7 s
/// of kernel CPU there and 0.5-0.6 s on tmpfs, and the suite starts 43 sandboxes on 2 cores.
pub fn scratch_root() -> PathBuf {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CUTOVER_TEST_SCRATCH") {
            return PathBuf::from(dir);
        }
        let shm = PathBuf::from("/dev/shm");
        let roomy = std::ffi::CString::new("/dev/shm")
            .ok()
            .and_then(|path| {
                // SAFETY: `path` is a valid C string and `st` a zeroed out-parameter statvfs fills.
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
                (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
            })
            .is_some_and(|free| free >= 8 << 30);
        let writable = roomy
            && tempfile::Builder::new()
                .prefix("cutover-probe-")
                .tempdir_in(&shm)
                .is_ok();
        if writable {
            shm
        } else {
            std::env::temp_dir()
        }
    })
    .clone()
}

/// Where the sandboxes of this suite keep their seeded clusters' template.
fn template_dir() -> PathBuf {
    repo().join("target/sandbox-templates")
}

/// Makes the seeded clusters' template once per suite process (`cutover-sandbox template`, a
/// no-op when it exists); callers wait for it.
fn sandbox_template() {
    static MADE: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    MADE.get_or_init(|| {
        let scratch = tempfile::Builder::new()
            .prefix("cutover-template-")
            .tempdir()
            .unwrap();
        let mut cmd = Command::new(sandbox_bin());
        cmd.arg("--dir")
            .arg(scratch.path().join("sandbox"))
            .arg("template")
            .env("CUTOVER_SANDBOX_TEMPLATE_DIR", template_dir());
        let out = run_with_timeout(cmd, 600);
        assert!(
            out.status.success(),
            "cutover-sandbox template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// How many sandboxes run at once: `CUTOVER_TEST_SANDBOXES` (default 6: with 7, a loaded 2-core
/// machine once held an analysis window's first health probe past its 2 s timeout). A test waits here for
/// its slot; waiters are served by priority, then in the order they asked, and the first in line
/// is never passed over (a test that needs two slots gets them together).
pub mod slots {
    use std::sync::{Condvar, Mutex};

    /// Who goes first among waiting tests.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub enum Priority {
        /// Most tests (under a minute and a half on a loaded machine).
        Normal,
        /// Tests of one and a half to two and a half minutes: after the longest, before the
        /// rest, so the short ones fill the end of the suite (longest first packs the slots).
        Long,
        /// The longest tests (minutes of TTL waits, of runs one after another, of kills): started
        /// before the others so they do not finish last.
        First,
    }

    struct State {
        free: usize,
        capacity: usize,
        next_ticket: u64,
        waiting: Vec<(Priority, u64)>,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);
    static CHANGED: Condvar = Condvar::new();

    fn capacity() -> usize {
        std::env::var("CUTOVER_TEST_SANDBOXES")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n: &usize| *n > 0)
            .unwrap_or(6)
    }

    /// Slots held by one test; given back when dropped (a failed test's too).
    pub struct Permit(usize);

    impl Permit {
        /// One of this permit's slots, as a permit of its own (a permit of none when this one
        /// is used up, or when `n` was capped at the capacity).
        pub fn take_one(&mut self) -> Permit {
            let one = self.0.min(1);
            self.0 -= one;
            Permit(one)
        }
    }

    impl Drop for Permit {
        fn drop(&mut self) {
            if self.0 == 0 {
                return;
            }
            let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = g.as_mut() {
                s.free += self.0;
            }
            CHANGED.notify_all();
        }
    }

    /// Waits until `n` slots are free and this test is first in line, then takes them.
    pub fn acquire(n: usize, priority: Priority) -> Permit {
        let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
        let s = g.get_or_insert_with(|| {
            let capacity = capacity();
            State {
                free: capacity,
                capacity,
                next_ticket: 0,
                waiting: Vec::new(),
            }
        });
        let n = n.min(s.capacity);
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push((priority, ticket));
        // In line first, then the template: every test that starts with the suite is waiting
        // by the time the one seeded template exists, so the first slots go by priority, not to
        // whichever tests libtest started first, and no two sandboxes seed at once.
        drop(g);
        if let Err(panic) = std::panic::catch_unwind(super::sandbox_template) {
            // Out of line, or the tests behind this one would wait for it for ever.
            let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = g.as_mut() {
                s.waiting.retain(|(_, t)| *t != ticket);
            }
            CHANGED.notify_all();
            std::panic::resume_unwind(panic);
        }
        let mut g = STATE.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let s = g.as_mut().expect("initialised above");
            let first = s
                .waiting
                .iter()
                .min_by_key(|(p, t)| (std::cmp::Reverse(*p), *t))
                .map(|(_, t)| *t);
            if first == Some(ticket) && s.free >= n {
                s.free -= n;
                s.waiting.retain(|(_, t)| *t != ticket);
                CHANGED.notify_all();
                return Permit(n);
            }
            g = CHANGED.wait(g).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Runs a future to completion on a fresh current-thread runtime, under a 300 s deadline (a
/// hang's, not a speed's: six sandboxes share two cores).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    block_on_within(300, f)
}

/// [`block_on`] under a deadline of `secs` seconds, for work that grows with a test's data
/// (10,000 objects written on a loaded machine).
pub fn block_on_within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(secs), f)
            .await
            .unwrap_or_else(|_| panic!("deadline of {secs} s passed"))
    })
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
