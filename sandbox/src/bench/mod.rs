//! `cutover-sandbox bench`: measurements of the database cutover on the local sandbox, each side by side
//! with what a user would otherwise run, in the same invocation.
//!
//! - downtime: N rehearsed cutover windows under a heartbeat writer; p50 and max write outage,
//!   acknowledged writes missing; beside it, the outage of a stop-dump-restore cutover of the
//!   same database (`pg_dump | pg_restore` while writes are stopped).
//! - copy: the initial copy of a generated database by `postgres.replicate`, by `pg_dump -Fd -j`
//!   + `pg_restore -j`, and by a native subscription with `copy_data = true`.
//! - verify: rows per second of `postgres.verify`'s comparison over generated tables, and the time
//!   to locate one corrupted row; beside it, a whole-table `md5(string_agg(...))` per side.
//!
//! Runs go through the real binary (`cutover rehearse` on a generated environment and runbook in
//! a scratch project) or the same provider functions the steps use. Databases named
//! `cutover_bench*` are created and dropped on the environment's source and target servers, so
//! a production-tier environment is refused.
//!
//! Owns the benchmark scenarios and their report; must not be used by runs.

pub mod args;
mod copy;
mod downtime;
mod objects;
mod replication;
mod verify;
mod workers;

use anyhow::{bail, Context, Result};
use cutover::config::{Environment, SecretRef, StoreKind, Tier};
use cutover::engine::event::{Entry, Event};
use cutover::engine::log::Record;
use cutover::providers::postgres::{connect, ident, ConnParts, Server};
use cutover::secret::urlencode;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What to run and how big.
#[derive(Debug, Clone)]
pub struct Options {
    /// Environment whose servers, account and cluster the bench uses (not production tier).
    pub env: String,
    /// Parts to run: any of `downtime`, `copy`, `verify`, `replication`.
    pub parts: Vec<String>,
    /// Cutover windows measured in the downtime part.
    pub runs: usize,
    /// Heartbeat writes attempted per second during each window.
    pub rate: f64,
    /// Rows of the database moved in each downtime run.
    pub downtime_rows: Vec<i64>,
    /// Size of the generated database in the copy part, MB (10^6 bytes).
    pub size_mb: u64,
    /// Parallel jobs of every copy method.
    pub jobs: usize,
    /// Worker process counts of the copy part's worker series (empty: the in-process series).
    pub workers: Vec<usize>,
    /// Concurrent claimers of the claim contention series.
    pub claimers: Vec<usize>,
    /// Chunks of the claim contention series' plan.
    pub claim_chunks: usize,
    /// Rows of the generated table in the verify part.
    pub verify_rows: i64,
    /// The application reload modes the downtime part measures, one series each.
    pub reload: Vec<cutover::config::Reload>,
    /// `heartbeat.volume_delay` of the `volume` series.
    pub volume_delay: std::time::Duration,
    /// Seconds of pgbench load in the replication part.
    pub repl_seconds: u64,
    /// pgbench clients in the replication part.
    pub repl_clients: usize,
    /// pgbench scale of the replication part's databases (100,000 accounts per unit).
    pub repl_scale: u64,
    /// Small objects of the objects part (4–132 KiB each).
    pub objects: u64,
    /// Multipart objects of the objects part (3 parts of 8 MiB each).
    pub multipart: u64,
    /// Objects copied at once by every method of the objects part.
    pub object_jobs: usize,
    /// Rounds of the objects part (each method's median is reported).
    pub object_rounds: usize,
    /// The `cutover` binary the downtime part rehearses with.
    pub cutover: PathBuf,
    /// The sandbox's directory (`--dir`): the `pooler` series lets the bench's role log in to
    /// the environment's PgBouncer there.
    pub sandbox_dir: PathBuf,
}

/// The project, environment and admin URLs a bench works with.
pub struct Bench {
    /// The environment as loaded.
    pub env: Environment,
    /// Source server admin URL (any database).
    pub source_url: String,
    /// Target server admin URL.
    pub target_url: String,
    /// The application role's password for this bench process (random; a secret).
    pub app_password: String,
    /// The `cutover` binary runs go through.
    pub cutover: PathBuf,
}

/// `DROP DATABASE db WITH (FORCE)` through `c`, tried again for up to 5 s: FORCE refuses when a
/// backend it may not terminate is connected, and an autovacuum worker (a superuser's process,
/// which the admin of a managed database may not signal) visits a freshly filled database.
async fn drop_database(c: &tokio_postgres::Client, db: &str) -> Result<()> {
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(db));
    let mut tries = 0;
    loop {
        match c.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(_) if tries < 25 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The role the bench's application (the heartbeat) writes as, on both servers.
pub const APP_ROLE: &str = "cutover_bench_app";

/// What a session runs before it creates the bench's tables: the application's role owns them,
/// as an application's migrations make it (an admin that is not a superuser then reaches them
/// as a member of that role, and a table the admin owned would name a role the target lacks).
pub fn as_app() -> String {
    format!("SET ROLE {APP_ROLE}")
}

impl Bench {
    /// Loads the environment and its database URLs; refuses production.
    ///
    /// # Errors
    /// The environment does not load, is production tier, or a database URL cannot be read.
    pub async fn new(root: &Path, env_name: &str, cutover: &Path) -> Result<Bench> {
        let env = cutover::config::load_environment(root, env_name)
            .map_err(|p| anyhow::anyhow!("{p}"))?;
        if env.tier == Tier::Production {
            bail!("`cutover-sandbox bench` creates and drops databases; it refuses the production environment {env_name}");
        }
        // The bench makes its own databases on the servers of the environment's first one.
        let first = env.database_names().into_iter().next();
        let (_, env) = env
            .for_database(first.as_deref())
            .map_err(|m| anyhow::anyhow!(m))?;
        let providers =
            cutover::providers::Providers::new(env.clone(), "bench", Default::default());
        providers.read_database_urls().await?;
        let url = |r: Result<String, cutover::providers::ProviderError>| {
            r.context("the environment's database URL (eval \"$(cutover-sandbox env)\")")
        };
        Ok(Bench {
            source_url: url(providers.source_url())?,
            target_url: url(providers.target_url())?,
            app_password: uuid::Uuid::new_v4().simple().to_string(),
            cutover: cutover.to_path_buf(),
            env,
        })
    }

    /// The source server's URL for database `db`.
    pub fn source_db(&self, db: &str) -> Result<String> {
        with_db(&self.source_url, db, Server::Source)
    }

    /// The target server's URL for database `db`.
    pub fn target_db(&self, db: &str) -> Result<String> {
        with_db(&self.target_url, db, Server::Target)
    }

    /// The server URL of `side`.
    pub fn server_url(&self, side: Server) -> &str {
        match side {
            Server::Target => &self.target_url,
            _ => &self.source_url,
        }
    }

    /// The application's URL for database `db` on `side`'s server: the bench's application
    /// role [`APP_ROLE`], which the cutover freezes (the admin role is never frozen).
    pub fn app_db(&self, side: Server, db: &str) -> Result<String> {
        let p = ConnParts::parse(self.server_url(side), side)?;
        Ok(format!(
            "postgres://{APP_ROLE}:{}@{}:{}/{db}{}",
            self.app_password,
            p.host,
            p.port,
            p.tls.url_query()
        ))
    }

    /// Drops and creates database `db` on both servers, owned by the application role (so it
    /// may create the heartbeat table, and owns the tables the bench creates: [`as_app`]).
    ///
    /// # Errors
    /// A statement fails.
    pub async fn fresh_databases(&self, db: &str) -> Result<()> {
        self.drop_replication(db).await;
        for side in [Server::Source, Server::Target] {
            let c = admin(self.server_url(side), side).await?;
            drop_database(&c, db).await?;
            let exists = c
                .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&APP_ROLE])
                .await?
                .is_some();
            let verb = if exists { "ALTER" } else { "CREATE" };
            c.batch_execute(&format!(
                "{verb} ROLE {APP_ROLE} LOGIN PASSWORD {}",
                cutover::providers::postgres::literal(&self.app_password)
            ))
            .await?;
            // A managed database's admin is not a superuser: it acts on the application role's
            // database as a member of that role (its CREATEROLE lets it grant that to itself).
            c.batch_execute(&format!("GRANT {APP_ROLE} TO CURRENT_USER"))
                .await?;
            c.batch_execute(&format!("CREATE DATABASE {} OWNER {APP_ROLE}", ident(db)))
                .await?;
        }
        Ok(())
    }

    /// Drops database `db` on both servers (dropping first any subscription left in it).
    ///
    /// (See [`drop_database`] for why a first refusal is tried again.)
    pub async fn drop_databases(&self, db: &str) {
        self.drop_replication(db).await;
        for side in [Server::Source, Server::Target] {
            if let Ok(c) = admin(self.server_url(side), side).await {
                let _ = c
                    .batch_execute(&format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        ident(db)
                    ))
                    .await;
            }
        }
    }

    /// Drops the subscriptions, the slots and the publications of database `db` on both servers
    /// (forward replication, change tracking and the fallback alike).
    pub async fn drop_replication(&self, db: &str) {
        self.stop_relays(db).await;
        for (side, url) in [
            (Server::Target, self.target_db(db)),
            (Server::Source, self.source_db(db)),
        ] {
            if let Ok(url) = url {
                self.drop_subscriptions(&url, side).await;
            }
        }
        for side in [Server::Source, Server::Target] {
            self.drop_slots_and_publications(side, db).await;
        }
    }

    /// Deletes the fallback relays of database `db`'s runs (Deployments and Secrets named
    /// `relay-cutover-<db>-...` in namespace `cutover` of the environment's cluster), as
    /// `postgres.decommission` would: their processes stop holding the slots.
    async fn stop_relays(&self, db: &str) {
        use k8s_openapi::api::apps::v1::Deployment;
        use k8s_openapi::api::core::v1::Secret;
        let providers =
            cutover::providers::Providers::new(self.env.clone(), "bench", Default::default());
        let Ok(client) = providers.kube().await else {
            return;
        };
        let prefix = format!("relay-cutover-{}-", db.replace('_', "-"));
        let deployments: kube::Api<Deployment> = kube::Api::namespaced(client.clone(), "cutover");
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client, "cutover");
        let Ok(list) = deployments.list(&Default::default()).await else {
            return;
        };
        for d in list.items {
            let Some(name) = d.metadata.name else {
                continue;
            };
            if name.starts_with(&prefix) {
                let _ = deployments.delete(&name, &Default::default()).await;
                let _ = secrets.delete(&name, &Default::default()).await;
            }
        }
    }

    async fn drop_subscriptions(&self, url: &str, side: Server) {
        {
            if let Ok(c) = connect(url, side).await {
                for r in c.query("SELECT subname FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())", &[]).await.unwrap_or_default() {
                    let name: String = r.get(0);
                    // DROP SUBSCRIPTION drops its slot on the source too; detach it if that fails.
                    if c.batch_execute(&format!("DROP SUBSCRIPTION {}", ident(&name))).await.is_err() {
                        let _ = c.batch_execute(&format!("ALTER SUBSCRIPTION {0} DISABLE; ALTER SUBSCRIPTION {0} SET (slot_name = NONE); DROP SUBSCRIPTION {0}", ident(&name))).await;
                    }
                }
            }
        }
    }

    async fn drop_slots_and_publications(&self, side: Server, db: &str) {
        let server = self.server_url(side);
        if let Ok(c) = admin(server, side).await {
            for r in c
                .query(
                    "SELECT slot_name FROM pg_replication_slots WHERE database = $1",
                    &[&db],
                )
                .await
                .unwrap_or_default()
            {
                let name: String = r.get(0);
                for _ in 0..50 {
                    // A consumer still attached (a relay going away) is ended first.
                    let _ = c
                        .query(
                            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                            &[&name],
                        )
                        .await;
                    if c.query("SELECT pg_drop_replication_slot($1)", &[&name])
                        .await
                        .is_ok()
                    {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
        if let Ok(url) = with_db(server, db, side) {
            if let Ok(c) = connect(&url, side).await {
                for r in c
                    .query("SELECT pubname FROM pg_publication", &[])
                    .await
                    .unwrap_or_default()
                {
                    let name: String = r.get(0);
                    let _ = c
                        .batch_execute(&format!("DROP PUBLICATION {}", ident(&name)))
                        .await;
                }
            }
        }
    }

    /// Writes a scratch project under `dir` with environment `bench` (this environment moved to
    /// database `db`, local store, the URLs in `CUTOVER_BENCH_*` variables) and `runbooks/bench.yaml`.
    ///
    /// # Errors
    /// The files cannot be written.
    pub fn scratch_project(&self, dir: &Path, db: &str, runbook: &str) -> Result<()> {
        let mut env = self.env.clone();
        env.name = "bench".into();
        env.tier = Tier::Staging;
        env.aws.organization = None;
        env.database.name = db.into();
        env.database.source_url_env = "CUTOVER_BENCH_SOURCE_URL".into();
        env.database.target_url_env = "CUTOVER_BENCH_TARGET_URL".into();
        env.database.source_url = None;
        env.database.target_url = None;
        // The pooler series' steps reach the environment's PgBouncer as the shop runbook does.
        let pooler = env.secrets.get("pooler_admin_url").cloned();
        env.secrets.clear();
        if let Some(p) = pooler {
            env.secrets.insert("pooler_admin_url".into(), p);
        }
        env.secrets.insert(
            "target_app_database_url".into(),
            SecretRef::env("CUTOVER_BENCH_TARGET_APP_URL"),
        );
        env.store.kind = StoreKind::Local;
        std::fs::create_dir_all(dir.join("environments"))?;
        std::fs::create_dir_all(dir.join("runbooks"))?;
        // JSON is YAML: the environment as the loader reads it back.
        std::fs::write(
            dir.join("environments/bench.yaml"),
            serde_json::to_string_pretty(&env)?,
        )?;
        std::fs::write(dir.join("runbooks/bench.yaml"), runbook)?;
        Ok(())
    }

    /// Runs `cutover rehearse bench` in the scratch project `dir` against database `db`; returns
    /// the run's records, the child's peak resident memory (bytes) and the CPU time it used
    /// (user + system, seconds, the `pg_dump` runs it waited for included).
    ///
    /// # Errors
    /// The binary cannot run, or the run did not succeed.
    pub fn rehearse(&self, dir: &Path, db: &str) -> Result<(Vec<Entry>, u64, f64)> {
        let cpu_before = children_cpu_seconds();
        let out = std::process::Command::new(&self.cutover)
            .arg("-C")
            .arg(dir)
            .args([
                "rehearse",
                "bench",
                "--runbook",
                "bench",
                "--output",
                "json",
            ])
            .env("CUTOVER_BENCH_SOURCE_URL", self.source_db(db)?)
            .env("CUTOVER_BENCH_TARGET_URL", self.target_db(db)?)
            .env(
                "CUTOVER_BENCH_TARGET_APP_URL",
                self.app_db(Server::Target, db)?,
            )
            .stdin(std::process::Stdio::null())
            .output()?;
        let rss = children_max_rss();
        let cpu = children_cpu_seconds() - cpu_before;
        // The event log's records as `--output json` prints them (progress lines are not
        // records), typed.
        let records: Vec<Entry> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<Record>(l).ok())
            .filter_map(|r| Entry::from_record(&r).ok())
            .collect();
        if !out.status.success() {
            let failed = records
                .iter()
                .filter_map(|e| match &e.event {
                    Event::StepFailed(f) => Some(format!(
                        "step {}: {}",
                        e.step.as_deref().unwrap_or("?"),
                        f.error
                    )),
                    Event::RunRefused(r) => Some(r.reason.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("; ");
            bail!(
                "bench rehearsal failed ({}): {failed} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok((records, rss, cpu))
    }
}

/// User + system CPU time of every child waited for so far, seconds (`getrusage`).
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes only into the zeroed struct it is given.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) == 0 {
            let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            secs(ru.ru_utime) + secs(ru.ru_stime)
        } else {
            0.0
        }
    }
}

/// A session on the server of `url` in its `postgres` database, writable even when the
/// environment's database was frozen by a cutover.
///
/// # Errors
/// The connection fails.
pub async fn admin(url: &str, side: Server) -> Result<tokio_postgres::Client> {
    let c = connect(&with_db(url, "postgres", side)?, side).await?;
    c.batch_execute("SET default_transaction_read_only = off")
        .await?;
    Ok(c)
}

/// `url` with its database replaced by `db`.
pub fn with_db(url: &str, db: &str, side: Server) -> Result<String> {
    let p = ConnParts::parse(url, side)?;
    Ok(format!(
        "postgres://{}{}@{}:{}/{}{}",
        urlencode(&p.user),
        p.password
            .as_deref()
            .map(|pw| format!(":{}", urlencode(pw)))
            .unwrap_or_default(),
        p.host,
        p.port,
        db,
        p.tls.url_query()
    ))
}

/// Peak resident set size of the largest child waited for so far, bytes (`getrusage`).
fn children_max_rss() -> u64 {
    // SAFETY: getrusage writes only into the zeroed struct it is given.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) == 0 {
            ru.ru_maxrss.max(0) as u64 * 1024
        } else {
            0
        }
    }
}

/// Peak resident set size of this process, bytes (`VmHWM` in /proc/self/status).
pub fn own_max_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

/// Seconds since `t`, rounded to milliseconds.
pub fn secs(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// Runs a tool against the server of `url`, the connection in the `PG*` variables; fails with its
/// stderr.
pub(super) async fn run_tool(bin: &str, args: &[&str], url: &str, side: Server) -> Result<()> {
    let p = ConnParts::parse(url, side)?;
    let mut cmd = tokio::process::Command::new(bin);
    // The tool's own `-d` names the database; the rest (password and TLS included) goes in
    // the `PG*` variables.
    cmd.args(args)
        .envs(
            p.libpq_env()
                .into_iter()
                .filter(|(k, _)| *k != "PGDATABASE"),
        )
        .kill_on_drop(true);
    let out = cmd
        .output()
        .await
        .with_context(|| format!("cannot run {bin}"))?;
    if !out.status.success() {
        bail!(
            "{bin} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Bench {
    /// Copies database `db` from the source server into the (empty) same-named target database
    /// the way a user would without cutover: `pg_dump -Fd -j JOBS` then `pg_restore -j JOBS`.
    /// Returns the seconds both took.
    ///
    /// # Errors
    /// Either tool fails.
    pub async fn dump_restore(&self, db: &str, jobs: usize) -> Result<f64> {
        let dir = tempfile::tempdir()?;
        let dump = dir.path().join("dump").display().to_string();
        let j = jobs.to_string();
        let t = Instant::now();
        run_tool(
            "pg_dump",
            &["-Fd", "-j", &j, "-f", &dump, "-d", db],
            &self.source_url,
            Server::Source,
        )
        .await?;
        run_tool(
            "pg_restore",
            &["-j", &j, "-d", db, &dump],
            &self.target_url,
            Server::Target,
        )
        .await?;
        Ok(secs(t))
    }
}

/// Runs the chosen parts and prints their figures.
///
/// # Errors
/// Any part fails (its databases are dropped first).
pub async fn run(root: &Path, opts: &Options) -> Result<()> {
    let bench = Bench::new(root, &opts.env, &opts.cutover).await?;
    let host = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "cutover-sandbox bench on environment {} — {cpus} CPU(s) {host}; cutover {}",
        opts.env,
        cutover::VERSION
    );
    for part in &opts.parts {
        match part.as_str() {
            "downtime" => downtime::run(&bench, opts).await?,
            "copy" if !opts.workers.is_empty() => workers::run(&bench, opts).await?,
            "copy" => copy::run(&bench, opts).await?,
            "verify" => verify::run(&bench, opts).await?,
            "replication" => replication::run(&bench, opts).await?,
            "objects" => objects::run(&bench, opts).await?,
            other => {
                bail!("unknown bench part {other} (downtime, copy, verify, replication, objects)")
            }
        }
    }
    Ok(())
}
