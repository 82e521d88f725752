//! The initial copy, as pgcopydb does it: tables split into key-range chunks, copied in parallel
//! by `COPY ... TO STDOUT` on the source (every worker inside the same exported snapshot) streamed
//! into `COPY ... FROM STDIN` on the target, with an optional rate limit.
//!
//! Progress lives on the target in schema `cutover_copy`: the chunk plan, and one row per copied
//! chunk written in the same transaction as the chunk's rows. A chunk is therefore either
//! entirely copied and recorded or not at all, and a resumed copy never copies one twice.
//!
//! The same workers apply the post-data plan ([`super::postdata`]) as tables complete, and the
//! target's tables have autovacuum paused until their finish (see [`autovacuum_pausable`]).
//!
//! Owns chunk planning, the copy workers and the progress tables; must not create slots,
//! publications or subscriptions.

use super::catalog::{key_ranges, KeyRange, Table, STATE_SCHEMA};
use super::postdata::{Item, Stage};
use super::schedule::{Next, Schedule, Task};
use super::snapshot::{import, ExportedSlot};
use super::Server;
use super::{literal, pg};
use crate::providers::ProviderError;
use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;

/// One planned chunk of a table.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// The table as SQL names it (`format('%I.%I')`: `public.orders`, quoted only where needed).
    pub table: String,
    /// 0-based chunk number within the table.
    pub index: i32,
    /// Number of chunks of the table.
    pub of: i32,
    /// The rows it covers.
    pub range: KeyRange,
    /// Estimated size, bytes (the table's size divided by its chunks).
    pub est_bytes: i64,
}

/// One chunk copied and committed.
#[derive(Debug, Clone)]
pub struct ChunkDone {
    /// The chunk.
    pub chunk: Chunk,
    /// Rows written, as `COPY` reported them.
    pub rows: u64,
    /// Bytes of COPY data streamed (text or binary, as [`format_for`] chose).
    pub bytes: u64,
}

/// The copy's progress record on the target (`cutover_copy.run`).
#[derive(Debug, Clone)]
pub struct State {
    /// The run that started the copy.
    pub run_id: String,
    /// The slot and snapshot the copy reads under.
    pub slot: ExportedSlot,
    /// `copying` until the post-data section is applied, then `post-data`.
    pub phase: String,
    /// True when the copy created the target's schema and must apply post-data after the rows.
    pub post_data: bool,
}

/// Reads the progress record, `None` when no copy is under way on this target.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn load_state(target: &Client) -> Result<Option<State>, ProviderError> {
    let exists = target
        .query_opt(
            "SELECT 1 FROM pg_namespace WHERE nspname = $1",
            &[&STATE_SCHEMA],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let row = target
        .query_opt(
            "SELECT run_id, slot, consistent_lsn, snapshot, phase, post_data FROM cutover_copy.run",
            &[],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?;
    Ok(row.map(|r| State {
        run_id: r.get(0),
        slot: ExportedSlot {
            slot: r.get(1),
            consistent_lsn: r.get(2),
            snapshot: r.get(3),
        },
        phase: r.get(4),
        post_data: r.get(5),
    }))
}

/// SQL that creates the progress schema with the run record, the chunk plan and the post-data
/// plan (pg_dump's `preamble` and the `items`); meant to run in the same transaction as the
/// pre-data section, so schema and plans appear together.
pub fn state_sql(
    run_id: &str,
    slot: &ExportedSlot,
    chunks: &[Chunk],
    post_data: bool,
    preamble: &str,
    items: &[Item],
    paused: &[String],
) -> String {
    let arr = |v: &Option<Vec<String>>| match v {
        None => "NULL".to_string(),
        Some(v) => format!(
            "ARRAY[{}]::text[]",
            v.iter().map(|s| literal(s)).collect::<Vec<_>>().join(", ")
        ),
    };
    let mut sql = format!(
        "CREATE SCHEMA {STATE_SCHEMA};
         CREATE TABLE cutover_copy.run (run_id text NOT NULL, slot text NOT NULL, consistent_lsn text NOT NULL, snapshot text NOT NULL, phase text NOT NULL, post_data boolean NOT NULL);
         CREATE TABLE cutover_copy.chunks (table_name text NOT NULL, chunk int NOT NULL, chunks int NOT NULL, lower_key text[], upper_key text[], est_bytes bigint NOT NULL, PRIMARY KEY (table_name, chunk));
         CREATE TABLE cutover_copy.copied (table_name text NOT NULL, chunk int NOT NULL, rows bigint NOT NULL, bytes bigint NOT NULL, attempt text NOT NULL, copied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (table_name, chunk));
         CREATE TABLE cutover_copy.post (id int PRIMARY KEY, stage text NOT NULL, table_name text, label text NOT NULL, sql text NOT NULL);
         CREATE TABLE cutover_copy.post_done (id int PRIMARY KEY, done_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE cutover_copy.preamble (sql text NOT NULL);
         CREATE TABLE cutover_copy.autovacuum_paused (table_name text PRIMARY KEY);
         INSERT INTO cutover_copy.run VALUES ({}, {}, {}, {}, 'copying', {post_data});
         INSERT INTO cutover_copy.preamble VALUES ({});\n",
        literal(run_id),
        literal(&slot.slot),
        literal(&slot.consistent_lsn),
        literal(&slot.snapshot),
        literal(preamble)
    );
    for t in paused {
        sql.push_str(&format!(
            "ALTER TABLE {t} SET (autovacuum_enabled = false);\nINSERT INTO cutover_copy.autovacuum_paused VALUES ({});\n",
            literal(t)
        ));
    }
    for i in items {
        sql.push_str(&format!(
            "INSERT INTO cutover_copy.post VALUES ({}, {}, {}, {}, {});\n",
            i.id,
            literal(i.stage.as_str()),
            i.table.as_deref().map_or("NULL".to_string(), literal),
            literal(&i.label),
            literal(&i.sql)
        ));
    }
    for c in chunks {
        sql.push_str(&format!(
            "INSERT INTO cutover_copy.chunks VALUES ({}, {}, {}, {}, {}, {});\n",
            literal(&c.table),
            c.index,
            c.of,
            arr(&c.range.lower),
            arr(&c.range.upper),
            c.est_bytes
        ));
    }
    sql
}

/// The chunk in a row whose first six columns are `cutover_copy.chunks`' table_name, chunk,
/// chunks, lower_key, upper_key and est_bytes.
pub(super) fn chunk_of(r: &tokio_postgres::Row) -> Chunk {
    Chunk {
        table: r.get(0),
        index: r.get(1),
        of: r.get(2),
        range: KeyRange {
            lower: r.get(3),
            upper: r.get(4),
        },
        est_bytes: r.get(5),
    }
}

/// The planned chunks and which of them are already copied (with their rows and bytes).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn progress(target: &Client) -> Result<(Vec<Chunk>, Vec<ChunkDone>), ProviderError> {
    let rows = target
        .query(
            "SELECT c.table_name, c.chunk, c.chunks, c.lower_key, c.upper_key, c.est_bytes, d.rows, d.bytes \
             FROM cutover_copy.chunks c LEFT JOIN cutover_copy.copied d USING (table_name, chunk) ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?;
    let mut all = Vec::new();
    let mut done = Vec::new();
    for r in rows {
        let chunk = chunk_of(&r);
        if let (Some(rows), Some(bytes)) = (r.get::<_, Option<i64>>(6), r.get::<_, Option<i64>>(7))
        {
            done.push(ChunkDone {
                chunk: chunk.clone(),
                rows: rows as u64,
                bytes: bytes as u64,
            });
        }
        all.push(chunk);
    }
    Ok((all, done))
}

/// Of `tables`, those whose autovacuum the copy pauses on the target: every one whose source
/// sets no `autovacuum_enabled` of its own (one it sets comes along with the schema and is
/// kept). Each chunk commits, so without the pause autovacuum's insert threshold starts vacuums
/// of a table while its chunks still stream in (measured: one ran for 20 s beside the copy of
/// a 2 GB table, and holds the lock its index builds wait for). The finish transaction resets
/// them ([`super::postdata::resume_autovacuum`]).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn autovacuum_pausable(
    source: &Client,
    tables: &[String],
) -> Result<Vec<String>, ProviderError> {
    let rows = source
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(c.reloptions, '{}')) o WHERE o LIKE 'autovacuum\\_enabled=%')",
            &[],
        )
        .await
        .map_err(|e| pg(Server::Source, e))?;
    Ok(rows
        .iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|t| tables.contains(t))
        .collect())
}

/// Resets `autovacuum_enabled` on the target tables whose autovacuum the copy paused and whose
/// finish has not reset it yet (a rollback before the copy ended); their names.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn resume_autovacuum(target: &Client) -> Result<Vec<String>, ProviderError> {
    let paused: Vec<String> = match target
        .query("SELECT table_name FROM cutover_copy.autovacuum_paused", &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        // A progress schema of an earlier version has no such table: nothing was paused.
        Err(_) => return Ok(Vec::new()),
    };
    let mut reset = Vec::new();
    for t in paused {
        let sql = format!("ALTER TABLE {t} RESET (autovacuum_enabled)");
        match target.batch_execute(&sql).await {
            Ok(()) => reset.push(t),
            // Dropped since (reset_target): nothing to reset.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
            Err(e) => return Err(pg(Server::Target, e)),
        }
    }
    Ok(reset)
}

/// pg_dump's session settings and the post-data items not yet applied, in plan order.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn pending_items(target: &Client) -> Result<(String, Vec<Item>), ProviderError> {
    let preamble: String = target
        .query_one("SELECT sql FROM cutover_copy.preamble", &[])
        .await
        .map_err(|e| pg(Server::Target, e))?
        .get(0);
    let rows = target
        .query(
            "SELECT p.id, p.stage, p.table_name, p.label, p.sql FROM cutover_copy.post p \
             WHERE NOT EXISTS (SELECT 1 FROM cutover_copy.post_done d WHERE d.id = p.id) ORDER BY p.id",
            &[],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?;
    let mut items = Vec::new();
    for r in rows {
        let stage: String = r.get(1);
        let Some(stage) = Stage::parse(&stage) else {
            return Err(ProviderError::Postgres {
                side: Server::Target,
                message: format!("cutover_copy.post holds an unknown stage {stage:?}"),
            });
        };
        items.push(Item {
            id: r.get(0),
            stage,
            table: r.get(2),
            label: r.get(3),
            sql: r.get(4),
        });
    }
    Ok((preamble, items))
}

/// How many chunks `plan` aims to cut `t` into: one per `chunk_rows` rows of the planner's
/// estimate for every table with a key (the preflight refuses tables without one), else 1 (the
/// plan may cut fewer when the key span or the sample is smaller).
pub fn chunks_wanted(t: &Table, chunk_rows: i64) -> i64 {
    if !t.key.is_empty() && chunk_rows > 0 && t.est_rows > chunk_rows {
        (t.est_rows + chunk_rows - 1) / chunk_rows
    } else {
        1
    }
}

/// Splits each table into chunks of about `chunk_rows` rows (by the planner's estimate) over
/// its key range ([`super::catalog::key_ranges`]), read through `source` (already inside the
/// snapshot).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn plan(
    source: &Client,
    tables: &[Table],
    chunk_rows: i64,
) -> Result<Vec<Chunk>, ProviderError> {
    let mut out = Vec::new();
    for t in tables {
        let ranges = key_ranges(source, Server::Source, t, chunks_wanted(t, chunk_rows)).await?;
        let n = ranges.len() as i64;
        for (i, range) in ranges.into_iter().enumerate() {
            out.push(Chunk {
                table: t.name.clone(),
                index: i as i32,
                of: n as i32,
                range,
                est_bytes: t.bytes / n,
            });
        }
    }
    Ok(out)
}

/// Spreads writes over time so they average at most `rate` bytes per second across all workers.
pub(super) struct Pacer {
    rate: Option<f64>,
    next: Mutex<Instant>,
}

impl Pacer {
    /// A pacer of `rate` bytes per second (`None`: no limit).
    pub(super) fn new(rate: Option<f64>) -> Pacer {
        Pacer {
            rate,
            next: Mutex::new(Instant::now()),
        }
    }

    /// Reserves `bytes` and returns when they may be sent.
    fn reserve(&self, bytes: usize, now: Instant) -> Instant {
        let Some(rate) = self.rate else { return now };
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(bytes as f64 / rate);
        start
    }

    async fn take(&self, bytes: usize) {
        tokio::time::sleep_until(self.reserve(bytes, Instant::now())).await;
    }
}

/// Session settings of a copy worker's source connection: no parallel query and no JIT for its
/// `COPY (SELECT ...)` statements.
pub(super) const SERIAL_PLANS: &str = "SET max_parallel_workers_per_gather = 0; SET jit = off";

/// The `COPY` format a table is streamed in.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `FORMAT binary`: no text rendering on the source nor parsing on the target (about 1.7×
    /// faster for integer and timestamp columns on PostgreSQL 15, measured in docs/BENCHMARKS.md).
    Binary,
    /// `FORMAT text`, under the session settings of [`super::checksum::STABLE_TEXT`].
    Text,
}

/// The format `t` is copied in and, for text, why: binary needs servers of one major version
/// (`same_major`; PostgreSQL documents binary `COPY` as portable only within a version) and
/// every copied column of a type whose binary form names no server-specific OID
/// ([`Table::binary_blockers`]).
pub fn format_for(t: &Table, same_major: bool) -> (Format, Option<String>) {
    if !same_major {
        return (
            Format::Text,
            Some("source and target differ in major version".into()),
        );
    }
    let blockers = t.binary_blockers();
    if blockers.is_empty() {
        (Format::Binary, None)
    } else {
        (
            Format::Text,
            Some(format!("no portable binary form: {}", blockers.join(", "))),
        )
    }
}

/// Copy settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Source and target run the same major version, so tables may be copied in binary.
    pub same_major: bool,
    /// Parallel workers, each with one source and one target connection.
    pub jobs: usize,
    /// Limit over all workers, bytes per second of COPY text; `None` for no limit.
    pub rate_limit: Option<f64>,
    /// Written into each chunk's progress row, to tell attempts apart.
    pub attempt: String,
}

/// What a worker finished.
#[derive(Debug, Clone)]
pub enum Done {
    /// A chunk's rows and progress row committed.
    Chunk(ChunkDone),
    /// A post-data item (or the finish transaction's items) committed, with its wall time in
    /// seconds.
    Items(Vec<Item>, f64),
}

/// The copy's work: `chunks` still to copy and post-data `items` still to apply (build,
/// analyze and finish stages; validate items are for [`validate`]).
pub struct Work {
    /// Chunks not yet copied.
    pub chunks: Vec<Chunk>,
    /// Post-data items not yet applied.
    pub items: Vec<Item>,
    /// pg_dump's session settings, run before every post-data statement.
    pub preamble: String,
}

/// Copies `work.chunks` and applies its post-data items with `opts.jobs` workers, chunks
/// inside `snapshot`, calling `on_done` after each commit. Each chunk is one target
/// transaction holding its rows and its progress row; each post-data item likewise with its
/// `cutover_copy.post_done` row, so a resumed copy neither copies a chunk nor builds an index
/// twice.
///
/// # Errors
/// [`ProviderError::Postgres`] from the first failing chunk or statement; work committed
/// before it stays recorded.
pub async fn run(
    source_url: &str,
    target_url: &str,
    snapshot: &str,
    tables: &[Table],
    work: Work,
    opts: &Options,
    on_done: impl FnMut(Done),
) -> Result<(), ProviderError> {
    let needs_source = !work.chunks.is_empty();
    let schedule = Mutex::new(Schedule::new(work.chunks, tables, work.items));
    let changed = tokio::sync::Notify::new();
    let pacer = Pacer {
        rate: opts.rate_limit,
        next: Mutex::new(Instant::now()),
    };
    let preamble = work.preamble.as_str();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let worker = |tx: tokio::sync::mpsc::UnboundedSender<Done>| {
        let (schedule, changed, pacer) = (&schedule, &changed, &pacer);
        async move {
            let src = if needs_source {
                let src = super::checksum::open(source_url, Server::Source).await?;
                // The copy's parallelism is its workers: a parallel plan per chunk would put
                // three server processes behind every stream and pass each row through a
                // shared-memory queue (measured: the source became the bottleneck).
                src.batch_execute(SERIAL_PLANS)
                    .await
                    .map_err(|e| pg(Server::Source, e))?;
                import(&src, snapshot).await?;
                Some(src)
            } else {
                None
            };
            let tgt = super::checksum::open(target_url, Server::Target).await?;
            loop {
                let wake = changed.notified();
                let next = schedule.lock().unwrap_or_else(|p| p.into_inner()).next();
                let task = match next {
                    Next::Done => break,
                    Next::Wait => {
                        wake.await;
                        continue;
                    }
                    Next::Run(t) => t,
                };
                let started = Instant::now();
                let result = match &task {
                    Task::Chunk(chunk) => {
                        match (tables.iter().find(|t| t.name == chunk.table), &src) {
                            (Some(table), Some(src)) => copy_chunk(
                                src,
                                &tgt,
                                table,
                                chunk.clone(),
                                &opts.attempt,
                                opts.same_major,
                                pacer,
                            )
                            .await
                            .map(Done::Chunk),
                            _ => Err(ProviderError::Postgres {
                                side: Server::Source,
                                message: format!(
                                    "table {} of the copy plan no longer exists",
                                    chunk.table
                                ),
                            }),
                        }
                    }
                    Task::Item(item) => apply(&tgt, preamble, std::slice::from_ref(item))
                        .await
                        .map(|_| Done::Items(vec![item.clone()], started.elapsed().as_secs_f64())),
                    Task::Finish(items) => apply(&tgt, preamble, items)
                        .await
                        .map(|_| Done::Items(items.clone(), started.elapsed().as_secs_f64())),
                };
                {
                    let mut s = schedule.lock().unwrap_or_else(|p| p.into_inner());
                    s.ended(&task);
                    if result.is_err() {
                        s.failed = true;
                    }
                }
                changed.notify_waiters();
                let _ = tx.send(result?);
            }
            Ok::<(), ProviderError>(())
        }
    };
    let workers: Vec<_> = (0..opts.jobs.max(1)).map(|_| worker(tx.clone())).collect();
    drop(tx);
    super::drive(workers, rx, on_done).await
}

/// Applies `items` on `tgt` in one transaction with their `post_done` rows, after pg_dump's
/// session settings.
async fn apply(tgt: &Client, preamble: &str, items: &[Item]) -> Result<(), ProviderError> {
    let mut sql = format!("BEGIN;\nSET LOCAL maintenance_work_mem = '256MB';\n{preamble}\n");
    for i in items {
        sql.push_str(&i.sql);
        sql.push_str(&format!(
            "\nINSERT INTO cutover_copy.post_done (id) VALUES ({});\n",
            i.id
        ));
    }
    sql.push_str("COMMIT;");
    if let Err(e) = tgt.batch_execute(&sql).await {
        let _ = tgt.batch_execute("ROLLBACK").await;
        let what = items
            .iter()
            .map(|i| i.label.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut err = pg(Server::Target, e);
        if let ProviderError::Postgres { message, .. } = &mut err {
            *message = format!("{message} (post-data: {what})");
        }
        return Err(err);
    }
    Ok(())
}

/// Applies the validate items with `jobs` target connections in parallel, each in its own
/// transaction with its `post_done` row, calling `on_done` after each.
///
/// # Errors
/// [`ProviderError::Postgres`] from the first failing statement (a row that breaks a foreign
/// key names the constraint).
pub async fn validate(
    target_url: &str,
    preamble: &str,
    items: Vec<Item>,
    jobs: usize,
    on_done: impl FnMut(Done),
) -> Result<(), ProviderError> {
    let queue = Mutex::new(VecDeque::from(items));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Done>();
    let worker = |tx: tokio::sync::mpsc::UnboundedSender<Done>| {
        let queue = &queue;
        async move {
            let tgt = super::connect(target_url, Server::Target).await?;
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(item) = next else { break };
                let started = Instant::now();
                apply(&tgt, preamble, std::slice::from_ref(&item)).await?;
                let _ = tx.send(Done::Items(vec![item], started.elapsed().as_secs_f64()));
            }
            Ok::<(), ProviderError>(())
        }
    };
    let workers: Vec<_> = (0..jobs.max(1)).map(|_| worker(tx.clone())).collect();
    drop(tx);
    super::drive(workers, rx, on_done).await
}

/// Copies `chunk` of `table` from `src` (inside its imported snapshot) into `tgt` in one
/// transaction with its `cutover_copy.copied` row.
pub(super) async fn copy_chunk(
    src: &Client,
    tgt: &Client,
    table: &Table,
    chunk: Chunk,
    attempt: &str,
    same_major: bool,
    pacer: &Pacer,
) -> Result<ChunkDone, ProviderError> {
    let cols = table.columns.join(", ");
    let with = match format_for(table, same_major).0 {
        Format::Binary => " (FORMAT binary)",
        Format::Text => "",
    };
    let out_sql = if chunk.range == KeyRange::default() {
        format!("COPY {} ({cols}) TO STDOUT{with}", table.name)
    } else {
        format!(
            "COPY (SELECT {cols} FROM {} WHERE {}) TO STDOUT{with}",
            table.name,
            table.range_predicate(&chunk.range)
        )
    };
    // Committing without waiting for the WAL flush is safe here: a lost commit loses the rows
    // and their progress row together, and the chunk is copied again.
    tgt.batch_execute("BEGIN; SET LOCAL synchronous_commit = off")
        .await
        .map_err(|e| pg(Server::Target, e))?;
    let result: Result<(u64, u64), ProviderError> = async {
        let stream = src.copy_out(out_sql.as_str()).await.map_err(|e| pg(Server::Source, e))?;
        let sink = tgt
            .copy_in(format!("COPY {} ({cols}) FROM STDIN{with}", table.name).as_str())
            .await
            .map_err(|e| pg(Server::Target, e))?;
        tokio::pin!(stream);
        tokio::pin!(sink);
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let mut bytes = 0u64;
        while let Some(part) = stream.next().await {
            let part = part.map_err(|e| pg(Server::Source, e))?;
            bytes += part.len() as u64;
            buf.put(part);
            if buf.len() >= 128 * 1024 {
                pacer.take(buf.len()).await;
                sink.send(buf.split().freeze()).await.map_err(|e| pg(Server::Target, e))?;
            }
        }
        if !buf.is_empty() {
            pacer.take(buf.len()).await;
            sink.send(buf.split().freeze()).await.map_err(|e| pg(Server::Target, e))?;
        }
        let rows = sink.as_mut().finish().await.map_err(|e| pg(Server::Target, e))?;
        tgt.execute(
            "INSERT INTO cutover_copy.copied (table_name, chunk, rows, bytes, attempt) VALUES ($1, $2, $3, $4, $5)",
            &[&chunk.table, &chunk.index, &(rows as i64), &(bytes as i64), &attempt],
        )
        .await
        .map_err(|e| pg(Server::Target, e))?;
        Ok((rows, bytes))
    }
    .await;
    match result {
        Ok((rows, bytes)) => {
            tgt.batch_execute("COMMIT")
                .await
                .map_err(|e| pg(Server::Target, e))?;
            Ok(ChunkDone { chunk, rows, bytes })
        }
        Err(e) => {
            let _ = tgt.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_spreads_bytes_at_the_rate() {
        let t0 = Instant::now();
        let p = Pacer {
            rate: Some(1000.0),
            next: Mutex::new(t0),
        };
        let starts: Vec<u128> = (0..5)
            .map(|_| (p.reserve(500, t0) - t0).as_millis())
            .collect();
        // Five sends of 500 bytes at 1000 B/s, all asked for at once: half a second apart.
        assert_eq!(starts, vec![0, 500, 1000, 1500, 2000]);
        let unlimited = Pacer {
            rate: None,
            next: Mutex::new(t0),
        };
        assert_eq!(unlimited.reserve(1 << 30, t0), t0);
    }

    #[test]
    fn state_sql_records_ranges() {
        let slot = ExportedSlot {
            slot: "s".into(),
            consistent_lsn: "0/1".into(),
            snapshot: "00000003-1".into(),
        };
        let sql = state_sql(
            "r1",
            &slot,
            &[Chunk {
                table: "\"public\".\"t\"".into(),
                index: 1,
                of: 2,
                range: KeyRange {
                    lower: Some(vec!["5".into()]),
                    upper: None,
                },
                est_bytes: 10,
            }],
            true,
            "SET x = 1;",
            &[Item {
                id: 0,
                stage: Stage::Build,
                table: Some("public.t".into()),
                label: "index public.t_i".into(),
                sql: "CREATE INDEX t_i ON public.t (note) WHERE note <> 'it''s';".into(),
            }],
            &["public.t".to_string()],
        );
        assert!(sql.contains("ALTER TABLE public.t SET (autovacuum_enabled = false);"));
        assert!(sql.contains("VALUES ('\"public\".\"t\"', 1, 2, ARRAY['5']::text[], NULL, 10)"));
        assert!(sql.contains("INSERT INTO cutover_copy.preamble VALUES ('SET x = 1;')"));
        assert!(sql.contains(
            "VALUES (0, 'build', 'public.t', 'index public.t_i', 'CREATE INDEX t_i ON public.t (note) WHERE note <> ''it''''s'';')"
        ));
    }
}
