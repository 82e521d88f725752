//! `cutover-sandbox bench`: arguments, and the exit code of a benchmark run.

use std::path::PathBuf;

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Write outage of N cutover windows under a heartbeat writer, beside stop-dump-restore.
    Downtime,
    /// Initial copy: cutover vs pg_dump/pg_restore vs a native subscription.
    Copy,
    /// Verification rows/s and the time to locate one corrupted row, beside a whole-table md5.
    Verify,
    /// Rows/s applied by `cutover relay` beside a native subscription, under one pgbench load.
    Replication,
    /// The object copy (`s3.replicate` + `s3.sync`) beside `rclone copy --checksum` and a bare
    /// GET-to-PUT pipe, from the legacy Space to S3.
    Objects,
}

/// `cutover-sandbox bench [PART...]` options; sizes default to the figures in
/// docs/BENCHMARKS.md.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// The project whose environments the bench reads (where `environments/` is).
    #[arg(short = 'C', long = "project", default_value = ".")]
    pub project: PathBuf,
    /// The `cutover` binary to measure (default: the one beside this executable, as cargo
    /// builds them, else `cutover` on PATH).
    #[arg(long, env = "CUTOVER_BIN")]
    pub cutover: Option<PathBuf>,
    /// Parts to run (default: downtime, copy and verify).
    #[arg(value_enum)]
    pub parts: Vec<Part>,
    /// Environment whose database servers, account and cluster are used (not production).
    #[arg(long, default_value = "staging")]
    pub env: String,
    /// Cutover windows measured.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Heartbeat writes attempted per second during each window.
    #[arg(long, default_value_t = 250.0)]
    pub rate: f64,
    /// Rows of the database moved in each window; several sizes (`100000,5000000`) are
    /// measured in turn and compared (the outage must not grow with the size).
    #[arg(long, value_delimiter = ',', default_value = "20000")]
    pub downtime_rows: Vec<i64>,
    /// Size of the generated database for the copy part, MB.
    #[arg(long, default_value_t = 2048)]
    pub size_mb: u64,
    /// Parallel jobs of every copy and verify method.
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    /// Worker process counts of the copy part (`1,2,4`): with it, the copy part copies the
    /// generated `events` database by `cutover copy-worker` processes, once per count, beside a
    /// native subscription, then measures claim contention (`--claimers`) instead of comparing
    /// cutover's in-process copy with pg_dump/pg_restore.
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Concurrent claimers of the claim contention series (with `--workers`).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub claimers: Vec<usize>,
    /// Chunks of the plan the claimers share (with `--workers`).
    #[arg(long, default_value_t = 1000)]
    pub claim_chunks: usize,
    /// Rows of the generated table for the verify part.
    #[arg(long, default_value_t = 5_000_000)]
    pub verify_rows: i64,
    /// Seconds of pgbench load in the replication part.
    #[arg(long, default_value_t = 20)]
    pub repl_seconds: u64,
    /// pgbench clients in the replication part.
    #[arg(long, default_value_t = 4)]
    pub repl_clients: usize,
    /// pgbench scale of the replication part (100,000 accounts per unit).
    #[arg(long, default_value_t = 10)]
    pub repl_scale: u64,
    /// Small objects (4–132 KiB) of the objects part.
    #[arg(long, default_value_t = 2000)]
    pub objects: u64,
    /// Multipart objects (3 parts of 8 MiB) of the objects part.
    #[arg(long, default_value_t = 8)]
    pub multipart: u64,
    /// Objects copied at once by every method of the objects part.
    #[arg(long, default_value_t = 8)]
    pub object_jobs: usize,
    /// Rounds of the objects part: each runs every method once, in a rotated order; each
    /// method's figure is its median round.
    #[arg(long, default_value_t = 3)]
    pub object_rounds: usize,
    /// How the application picks up the flipped Secret in the downtime part, one series of
    /// windows each: `restart` (a Deployment reading it as environment variables, rolled out
    /// by the flip), `volume` (a mounted Secret, used `--volume-delay` after the change),
    /// `pooler` (the application reaches the database through PgBouncer, which the window
    /// pauses, repoints and resumes).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "restart,volume,pooler"
    )]
    pub reload: Vec<ReloadArg>,
    /// With `--reload volume`: how long after the flip the pods see the new value (the
    /// kubelet's sync period and cache; 60s by default on a real cluster, less here so a run
    /// stays short).
    #[arg(long, default_value = "10s", value_parser = cutover::config::duration::parse_duration)]
    pub volume_delay: std::time::Duration,
}

/// `--reload` values ([`cutover::config::Reload`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReloadArg {
    /// Environment variables: a rollout.
    Restart,
    /// A mounted Secret: the kubelet's delay.
    Volume,
    /// A connection pooler: never.
    Pooler,
}

impl From<ReloadArg> for cutover::config::Reload {
    fn from(r: ReloadArg) -> Self {
        match r {
            ReloadArg::Restart => cutover::config::Reload::Restart,
            ReloadArg::Volume => cutover::config::Reload::Volume,
            ReloadArg::Pooler => cutover::config::Reload::Pooler,
        }
    }
}

/// Runs the benchmark; 0 when every part ran (and no acknowledged write went missing), 1
/// otherwise.
pub async fn run(a: BenchArgs, sandbox_dir: &std::path::Path) -> i32 {
    let parts = if a.parts.is_empty() {
        vec![Part::Downtime, Part::Copy, Part::Verify]
    } else {
        a.parts
    };
    let opts = super::Options {
        env: a.env,
        parts: parts
            .iter()
            .map(|p| format!("{p:?}").to_lowercase())
            .collect(),
        runs: a.runs.max(1),
        rate: a.rate,
        downtime_rows: a.downtime_rows.clone(),
        size_mb: a.size_mb,
        jobs: a.jobs.max(1),
        workers: a.workers.iter().map(|w| (*w).clamp(1, 64)).collect(),
        claimers: a.claimers.iter().map(|c| (*c).clamp(1, 90)).collect(),
        claim_chunks: a.claim_chunks.max(1),
        verify_rows: a.verify_rows,
        repl_seconds: a.repl_seconds.max(1),
        repl_clients: a.repl_clients.max(1),
        repl_scale: a.repl_scale.max(1),
        objects: a.objects,
        multipart: a.multipart,
        object_jobs: a.object_jobs.max(1),
        object_rounds: a.object_rounds.max(1),
        reload: a.reload.iter().map(|r| (*r).into()).collect(),
        volume_delay: a.volume_delay,
        cutover: a.cutover.clone().unwrap_or_else(beside_this_executable),
        sandbox_dir: sandbox_dir.to_path_buf(),
    };
    match super::run(&a.project, &opts).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

/// `cutover` in this executable's directory when it is there (cargo puts both binaries of the
/// workspace in one), else `cutover` (looked up on PATH).
fn beside_this_executable() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("cutover")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("cutover"))
}
