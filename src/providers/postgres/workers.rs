//! The copy's chunk plan as a work queue for workers outside the run's process (`cutover
//! copy-worker`, as local processes): a worker claims one chunk of `cutover_copy.chunks` (`FOR
//! UPDATE SKIP LOCKED`, so two claimers never wait on each other), holds a lease on it that it
//! renews while it copies, and commits the chunk's rows together with its `cutover_copy.copied`
//! row as the run's own workers do ([`super::copy`]). A chunk whose lease ran out (its worker
//! was killed or stalled) is claimed again by the next worker that asks.
//!
//! Exactly once does not rest on the lease: `copied` has one row per chunk (its primary key), in
//! the transaction of the chunk's rows. A worker that outlived its lease and copies a chunk that
//! another has committed fails on that key, or first on the table's own, and its transaction
//! rolls back with its rows; the worker then sees the chunk copied and goes on.
//!
//! Every worker reads under the run's exported snapshot ([`super::snapshot::import`]), which the
//! run's snapshot holder keeps importable while the copy lasts.
//!
//! Owns the claim, the lease and one worker's loop; must not plan chunks, apply post-data, or
//! create slots, publications or subscriptions.

use super::catalog;
use super::copy::{self, Chunk, ChunkDone, Pacer};
use super::snapshot::import;
use super::{pg, Server};
use crate::providers::ProviderError;
use std::time::Duration;
use tokio_postgres::Client;

/// Adds the lease columns to the plan (idempotent: a plan made before them gains them).
pub const LEASE_COLUMNS: &str = "ALTER TABLE cutover_copy.chunks \
     ADD COLUMN IF NOT EXISTS worker text, \
     ADD COLUMN IF NOT EXISTS lease_until timestamptz, \
     ADD COLUMN IF NOT EXISTS claims int NOT NULL DEFAULT 0";

/// The environment variable a worker reads the source's URL from (a Secret's key in a pod).
pub const SOURCE_URL_ENV: &str = "CUTOVER_COPY_SOURCE_URL";
/// The environment variable a worker reads the target's URL from.
pub const TARGET_URL_ENV: &str = "CUTOVER_COPY_TARGET_URL";

/// One chunk a worker claimed.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The chunk.
    pub chunk: Chunk,
    /// How many times it has been claimed, this claim included (2 or more: a worker before
    /// this one let its lease run out).
    pub claims: i32,
}

/// The queue as the plan shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Queue {
    /// Chunks in the plan.
    pub chunks: i64,
    /// Of them, not yet copied.
    pub left: i64,
    /// Of those, under a lease that has not run out (being copied).
    pub leased: i64,
    /// Chunks copied, by the name of the worker that claimed each last (`index-0`, `pid-812`),
    /// sorted by name; chunks the run's own workers copied are not claimed and not counted.
    pub by_worker: Vec<(String, i64)>,
}

/// Makes the plan on `target` claimable ([`LEASE_COLUMNS`]).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn prepare(target: &Client) -> Result<(), ProviderError> {
    target
        .batch_execute(LEASE_COLUMNS)
        .await
        .map_err(|e| pg(Server::Target, e))
}

/// Claims the next chunk not yet copied and not under a live lease, for `lease`, largest first;
/// `None` when there is none to claim now (all copied, or the rest leased by other workers).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn claim(
    target: &Client,
    worker: &str,
    lease: Duration,
) -> Result<Option<Claim>, ProviderError> {
    let row = target
        .query_opt(
            "UPDATE cutover_copy.chunks k \
                SET worker = $1, lease_until = clock_timestamp() + make_interval(secs => $2), claims = k.claims + 1 \
              WHERE (k.table_name, k.chunk) = ( \
                    SELECT c.table_name, c.chunk FROM cutover_copy.chunks c \
                     WHERE NOT EXISTS (SELECT 1 FROM cutover_copy.copied d WHERE d.table_name = c.table_name AND d.chunk = c.chunk) \
                       AND (c.lease_until IS NULL OR c.lease_until < clock_timestamp()) \
                     ORDER BY c.est_bytes DESC, c.table_name, c.chunk \
                     LIMIT 1 FOR UPDATE SKIP LOCKED) \
          RETURNING k.table_name, k.chunk, k.chunks, k.lower_key, k.upper_key, k.est_bytes, k.claims",
            &[&worker, &lease.as_secs_f64()],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?;
    Ok(row.map(|r| Claim {
        chunk: copy::chunk_of(&r),
        claims: r.get(6),
    }))
}

/// Extends `worker`'s lease on `chunk` by `lease` from now; false when the chunk is no longer
/// this worker's (its lease ran out and another claimed it).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn renew(
    target: &Client,
    chunk: &Chunk,
    worker: &str,
    lease: Duration,
) -> Result<bool, ProviderError> {
    let n = target
        .execute(
            "UPDATE cutover_copy.chunks SET lease_until = clock_timestamp() + make_interval(secs => $3) \
              WHERE table_name = $1 AND chunk = $2 AND worker = $4",
            &[&chunk.table, &chunk.index, &lease.as_secs_f64(), &worker],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?;
    Ok(n == 1)
}

/// The queue's counts ([`Queue`]).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn queue(target: &Client) -> Result<Queue, ProviderError> {
    let r = target
        .query_one(
            "SELECT count(*), \
                    count(*) FILTER (WHERE d.chunk IS NULL), \
                    count(*) FILTER (WHERE d.chunk IS NULL AND c.lease_until >= clock_timestamp()) \
               FROM cutover_copy.chunks c LEFT JOIN cutover_copy.copied d USING (table_name, chunk)",
            &[],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?;
    let by_worker = target
        .query(
            "SELECT c.worker, count(*) FROM cutover_copy.chunks c \
               JOIN cutover_copy.copied d USING (table_name, chunk) \
              WHERE c.worker IS NOT NULL GROUP BY c.worker ORDER BY c.worker",
            &[],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    Ok(Queue {
        chunks: r.get(0),
        left: r.get(1),
        leased: r.get(2),
        by_worker,
    })
}

/// Whether `chunk` has its `copied` row.
async fn is_copied(target: &Client, chunk: &Chunk) -> Result<bool, ProviderError> {
    Ok(target
        .query_opt(
            "SELECT 1 FROM cutover_copy.copied WHERE table_name = $1 AND chunk = $2",
            &[&chunk.table, &chunk.index],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?
        .is_some())
}

/// One worker's settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The worker's name, recorded with its claims and in each chunk's `attempt`.
    pub worker: String,
    /// How long a claim holds without renewal; renewed every third of it.
    pub lease: Duration,
    /// This worker's limit, bytes per second of COPY data; `None` for none.
    pub rate_limit: Option<f64>,
    /// How long to wait before asking again when every chunk left is leased by another worker.
    pub idle_poll: Duration,
}

/// What a worker did, as it happens.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// A chunk claimed.
    Claimed(Claim),
    /// A chunk's rows and `copied` row committed by this worker.
    Copied(ChunkDone),
    /// A chunk this worker was copying was committed by another one first; this worker's
    /// transaction rolled back.
    CopiedElsewhere(Chunk),
    /// This worker's lease on a chunk was taken over by another worker while it copied.
    LeaseLost(Chunk),
}

/// What a worker's run came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkerSummary {
    /// Chunks this worker committed.
    pub copied: u64,
    /// Rows in them.
    pub rows: u64,
    /// COPY bytes in them.
    pub bytes: u64,
}

/// Claims and copies chunks until none is left to copy (every chunk has its `copied` row),
/// calling `on_event` as it goes. Returns at once with nothing done when no copy is under way
/// on the target (no plan, or its rows are all in).
///
/// # Errors
/// [`ProviderError::Postgres`] from a chunk that failed for another reason than being copied
/// elsewhere, or when the run's snapshot can no longer be imported; chunks committed before
/// stay recorded, and this worker's lease runs out so another takes its chunk.
pub async fn work(
    source_url: &str,
    target_url: &str,
    opts: &WorkerOptions,
    mut on_event: impl FnMut(WorkerEvent),
) -> Result<WorkerSummary, ProviderError> {
    let mut out = WorkerSummary::default();
    let tgt = super::checksum::open(target_url, Server::Target).await?;
    let Some(state) = copy::load_state(&tgt).await? else {
        return Ok(out);
    };
    if state.phase != "copying" {
        return Ok(out);
    }
    prepare(&tgt).await?;
    // The lease is renewed on a connection of its own: the other one carries the COPY.
    let keeper = super::checksum::open(target_url, Server::Target).await?;
    let src = super::checksum::open(source_url, Server::Source).await?;
    src.batch_execute(copy::SERIAL_PLANS)
        .await
        .map_err(|e| pg(Server::Source, e))?;
    import(&src, &state.slot.snapshot).await?;
    let tables = catalog::tables(&src, Server::Source).await?;
    let same_major = catalog::major_version(&src, Server::Source).await?
        == catalog::major_version(&tgt, Server::Target).await?;
    let pacer = Pacer::new(opts.rate_limit);
    let attempt = format!(
        "{}@{}",
        opts.worker,
        chrono::Utc::now().format("%H:%M:%S%.3f")
    );
    loop {
        let Some(c) = claim(&tgt, &opts.worker, opts.lease).await? else {
            if queue(&tgt).await?.left == 0 {
                return Ok(out);
            }
            tokio::time::sleep(opts.idle_poll).await;
            continue;
        };
        on_event(WorkerEvent::Claimed(c.clone()));
        let Some(table) = tables.iter().find(|t| t.name == c.chunk.table) else {
            return Err(ProviderError::Postgres {
                side: Server::Source,
                message: format!("table {} of the copy plan no longer exists", c.chunk.table),
            });
        };
        let copying = copy::copy_chunk(
            &src,
            &tgt,
            table,
            c.chunk.clone(),
            &attempt,
            same_major,
            &pacer,
        );
        let mut lost = false;
        let renewing = async {
            loop {
                tokio::time::sleep(opts.lease / 3).await;
                match renew(&keeper, &c.chunk, &opts.worker, opts.lease).await {
                    Ok(true) => {}
                    Ok(false) => lost = true,
                    // Without its lease keeper the worker cannot hold the chunk: it stops, and
                    // the chunk goes to another once the lease runs out.
                    Err(e) => return e,
                }
            }
        };
        let result = tokio::select! {
            r = copying => r,
            e = renewing => Err(e),
        };
        if lost {
            on_event(WorkerEvent::LeaseLost(c.chunk.clone()));
        }
        match result {
            Ok(done) => {
                out.copied += 1;
                out.rows += done.rows;
                out.bytes += done.bytes;
                on_event(WorkerEvent::Copied(done));
            }
            Err(e) => {
                if is_copied(&keeper, &c.chunk).await? {
                    on_event(WorkerEvent::CopiedElsewhere(c.chunk));
                } else {
                    return Err(e);
                }
            }
        }
    }
}

/// Local worker processes of the copy ([`run_processes`]).
#[derive(Debug, Clone)]
pub struct Processes {
    /// The `cutover` executable to start as `cutover copy-worker`.
    pub exe: std::path::PathBuf,
    /// Workers at once.
    pub count: usize,
    /// Each worker's lease.
    pub lease: Duration,
    /// Each worker's limit, MB (10^6 bytes) of COPY data per second; `None` for none.
    pub rate_limit_mb: Option<f64>,
    /// Failed workers started again in all, before the copy fails (as a Kubernetes Job's
    /// `backoffLimit`).
    pub backoff_limit: u32,
}

/// Runs `p.count` local `cutover copy-worker` processes against the plan on the target until
/// each exits 0 (which it does once every chunk is copied), starting a failed one again up to
/// `p.backoff_limit` times in all, and passes every line the workers print to `on_line`. The
/// servers' URLs go to each worker in its environment ([`crate::cli`]'s
/// `CUTOVER_COPY_SOURCE_URL`, `CUTOVER_COPY_TARGET_URL`), never on its command line. Each
/// worker dies with the process that started it (`PR_SET_PDEATHSIG`).
///
/// # Errors
/// [`ProviderError::Worker`] when a worker cannot be started, or failures passed the backoff
/// limit (with the last line the failed worker printed).
pub async fn run_processes(
    source_url: &str,
    target_url: &str,
    p: &Processes,
    on_line: &mut (dyn FnMut(String) + Send),
) -> Result<(), ProviderError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::AsyncBufReadExt;
    let failures = std::sync::Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..p.count.max(1) {
        let (tx, failures, p) = (tx.clone(), failures.clone(), p.clone());
        let (source_url, target_url) = (source_url.to_string(), target_url.to_string());
        tasks.spawn(async move {
            let mut attempt = 0u32;
            loop {
                attempt += 1;
                let name = format!("process-{i}.{attempt}");
                let mut cmd = tokio::process::Command::new(&p.exe);
                cmd.arg("copy-worker")
                    .args(["--name", &name, "--lease", &p.lease.as_secs().to_string()])
                    .env(SOURCE_URL_ENV, &source_url)
                    .env(TARGET_URL_ENV, &target_url)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                if let Some(r) = p.rate_limit_mb {
                    cmd.args(["--rate-limit-mb", &r.to_string()]);
                }
                // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                let mut child = cmd.spawn().map_err(|e| {
                    ProviderError::Worker(format!("cannot start {}: {e}", p.exe.display()))
                })?;
                let mut last = String::new();
                if let Some(err) = child.stderr.take() {
                    let mut lines = tokio::io::BufReader::new(err).lines();
                    while let Ok(Some(l)) = lines.next_line().await {
                        last = l.clone();
                        let _ = tx.send(l);
                    }
                }
                let status = child
                    .wait()
                    .await
                    .map_err(|e| ProviderError::Worker(format!("{name}: {e}")))?;
                if status.success() {
                    return Ok(());
                }
                let failed = failures.fetch_add(1, Ordering::SeqCst) + 1;
                if failed > p.backoff_limit {
                    return Err(ProviderError::Worker(format!(
                        "{name} failed ({status}), {failed} failure(s) in all past the backoff limit of {}: {last}",
                        p.backoff_limit
                    )));
                }
                let _ = tx.send(format!(
                    "copy-worker {name} failed ({status}); starting it again ({failed} of {} restarts)",
                    p.backoff_limit
                ));
            }
        });
    }
    drop(tx);
    // Lines until every worker's task has ended (each holds a sender); the first failure past
    // the backoff limit stops the others (their processes are killed as their tasks drop).
    let mut result = Ok(());
    let mut open = true;
    while open || !tasks.is_empty() {
        tokio::select! {
            line = rx.recv(), if open => match line {
                Some(l) => on_line(l),
                None => open = false,
            },
            done = tasks.join_next(), if !tasks.is_empty() => match done {
                Some(Ok(Err(e))) => {
                    if result.is_ok() {
                        result = Err(e);
                    }
                    tasks.abort_all();
                }
                Some(Err(e)) if !e.is_cancelled() => {
                    if result.is_ok() {
                        result = Err(ProviderError::Worker(format!("a worker's task ended: {e}")));
                    }
                    tasks.abort_all();
                }
                _ => {}
            },
        }
    }
    result
}
