//! The initial copy, as pgcopydb does it: tables split into key-range chunks, copied in parallel
//! by `COPY ... TO STDOUT` on the source (every worker inside the same exported snapshot) streamed
//! into `COPY ... FROM STDIN` on the target, with an optional rate limit.
//!
//! Progress lives on the target in schema `cutover_copy`: the chunk plan, and one row per copied
//! chunk written in the same transaction as the chunk's rows. A chunk is therefore either
//! entirely copied and recorded or not at all, and a resumed copy never copies one twice.
//!
//! Owns chunk planning, the copy workers and the progress tables; must not create slots,
//! publications or subscriptions.

use super::catalog::{KeyRange, Table, STATE_SCHEMA};
use super::snapshot::{import, ExportedSlot};
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
    /// Bytes of COPY text streamed.
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
        .map_err(|e| pg("target", e))?
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
        .map_err(|e| pg("target", e))?;
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

/// SQL that creates the progress schema with the run record and the chunk plan; meant to run
/// in the same transaction as the pre-data section, so schema and plan appear together.
pub fn state_sql(run_id: &str, slot: &ExportedSlot, chunks: &[Chunk], post_data: bool) -> String {
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
         INSERT INTO cutover_copy.run VALUES ({}, {}, {}, {}, 'copying', {post_data});\n",
        literal(run_id),
        literal(&slot.slot),
        literal(&slot.consistent_lsn),
        literal(&slot.snapshot)
    );
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
        .map_err(|e| pg("target", e))?;
    let mut all = Vec::new();
    let mut done = Vec::new();
    for r in rows {
        let chunk = Chunk {
            table: r.get(0),
            index: r.get(1),
            of: r.get(2),
            range: KeyRange {
                lower: r.get(3),
                upper: r.get(4),
            },
            est_bytes: r.get(5),
        };
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

/// Rows a key sample aims at: enough for even cuts (256 per chunk), and at least 10,000.
fn sample_rows(chunks: i64) -> i64 {
    (chunks * 256).max(10_000)
}

/// Splits each table into chunks of about `chunk_rows` rows (by the planner's estimate) over
/// its key range, read through `source` (already inside the snapshot).
///
/// - A single integer key is cut arithmetically between its min and max, as pgcopydb's
///   `--split-tables-larger-than` does.
/// - Any other key (composite, UUID, text, dates; a partition is a table here) is cut at keys
///   drawn from a block sample (`TABLESAMPLE SYSTEM`, about [`sample_rows`] rows, fixed seed)
///   sorted in key order, as PeerDB and pgcopydb cut non-integer keys. The ranges are half-open
///   and the first and last unbounded, so every row falls in exactly one chunk whatever the
///   sample drew; a poor sample only makes chunks uneven.
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
        let wanted = chunks_wanted(t, chunk_rows);
        let ranges = if wanted <= 1 {
            vec![KeyRange::default()]
        } else if t.integer_key() {
            let k = &t.key[0].0;
            let r = source
                .query_one(
                    &format!("SELECT min({k})::bigint, max({k})::bigint FROM {}", t.name),
                    &[],
                )
                .await
                .map_err(|e| pg("source", e))?;
            match (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)) {
                (Some(lo), Some(hi)) => split(lo, hi, wanted.clamp(1, (hi - lo + 1).max(1))),
                _ => vec![KeyRange::default()],
            }
        } else {
            let pct =
                (100.0 * sample_rows(wanted) as f64 / t.est_rows.max(1) as f64).clamp(0.01, 100.0);
            let sql = format!(
                "SELECT {} FROM {} TABLESAMPLE SYSTEM ({pct}) REPEATABLE (42) ORDER BY {}",
                t.key_text_array(),
                t.name,
                t.key_order()
            );
            let sample: Vec<Vec<String>> = source
                .query(&sql, &[])
                .await
                .map_err(|e| pg("source", e))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            KeyRange::between(&cuts(&sample, wanted))
        };
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

/// Up to `n - 1` distinct cut keys spread evenly over `sample` (sorted in key order).
fn cuts(sample: &[Vec<String>], n: i64) -> Vec<Vec<String>> {
    let len = sample.len() as i64;
    let mut out: Vec<Vec<String>> = Vec::new();
    for j in 1..n {
        let at = (j * len / n) as usize;
        if let Some(k) = sample.get(at) {
            if out.last() != Some(k) && at > 0 {
                out.push(k.clone());
            }
        }
    }
    out
}

/// `n` ranges covering every key: the first unbounded below, the last unbounded above, the cuts
/// evenly spaced between `lo` and `hi`.
fn split(lo: i64, hi: i64, n: i64) -> Vec<KeyRange> {
    let step = ((hi - lo) / n + 1).max(1);
    let at = |j: i64| vec![(lo + j * step).to_string()];
    (0..n)
        .map(|i| KeyRange {
            lower: (i > 0).then(|| at(i)),
            upper: (i + 1 < n).then(|| at(i + 1)),
        })
        .collect()
}

/// Spreads writes over time so they average at most `rate` bytes per second across all workers.
struct Pacer {
    rate: Option<f64>,
    next: Mutex<Instant>,
}

impl Pacer {
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

/// Copy settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Parallel workers, each with one source and one target connection.
    pub jobs: usize,
    /// Limit over all workers, bytes per second of COPY text; `None` for no limit.
    pub rate_limit: Option<f64>,
    /// Written into each chunk's progress row, to tell attempts apart.
    pub attempt: String,
}

/// Copies `chunks` (largest first) with `opts.jobs` workers under `snapshot`, calling `on_done`
/// after each chunk commits. Each chunk is one target transaction holding its rows and its
/// progress row.
///
/// # Errors
/// [`ProviderError::Postgres`] from the first failing chunk; chunks committed before it stay
/// copied and recorded.
pub async fn run(
    source_url: &str,
    target_url: &str,
    snapshot: &str,
    tables: &[Table],
    mut chunks: Vec<Chunk>,
    opts: &Options,
    mut on_done: impl FnMut(&ChunkDone),
) -> Result<Vec<ChunkDone>, ProviderError> {
    chunks.sort_by_key(|c| std::cmp::Reverse(c.est_bytes));
    let queue = Mutex::new(VecDeque::from(chunks));
    let pacer = Pacer {
        rate: opts.rate_limit,
        next: Mutex::new(Instant::now()),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ChunkDone>();
    let worker = |tx: tokio::sync::mpsc::UnboundedSender<ChunkDone>| {
        let (queue, pacer) = (&queue, &pacer);
        async move {
            let src = super::checksum::open(source_url, "source").await?;
            import(&src, snapshot).await?;
            let tgt = super::checksum::open(target_url, "target").await?;
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some(chunk) = next else { break };
                let Some(table) = tables.iter().find(|t| t.name == chunk.table) else {
                    return Err(ProviderError::Postgres {
                        side: "source".into(),
                        message: format!("table {} of the copy plan no longer exists", chunk.table),
                    });
                };
                let done = copy_chunk(&src, &tgt, table, chunk, &opts.attempt, pacer).await?;
                let _ = tx.send(done);
            }
            Ok::<(), ProviderError>(())
        }
    };
    let workers: Vec<_> = (0..opts.jobs.max(1)).map(|_| worker(tx.clone())).collect();
    drop(tx);
    let mut done = Vec::new();
    super::drive(workers, rx, |d| {
        on_done(&d);
        done.push(d);
    })
    .await?;
    Ok(done)
}

async fn copy_chunk(
    src: &Client,
    tgt: &Client,
    table: &Table,
    chunk: Chunk,
    attempt: &str,
    pacer: &Pacer,
) -> Result<ChunkDone, ProviderError> {
    let cols = table.columns.join(", ");
    let out_sql = if chunk.range == KeyRange::default() {
        format!("COPY {} ({cols}) TO STDOUT", table.name)
    } else {
        format!(
            "COPY (SELECT {cols} FROM {} WHERE {}) TO STDOUT",
            table.name,
            table.range_predicate(&chunk.range)
        )
    };
    // Committing without waiting for the WAL flush is safe here: a lost commit loses the rows
    // and their progress row together, and the chunk is copied again.
    tgt.batch_execute("BEGIN; SET LOCAL synchronous_commit = off")
        .await
        .map_err(|e| pg("target", e))?;
    let result: Result<(u64, u64), ProviderError> = async {
        let stream = src.copy_out(out_sql.as_str()).await.map_err(|e| pg("source", e))?;
        let sink = tgt
            .copy_in(format!("COPY {} ({cols}) FROM STDIN", table.name).as_str())
            .await
            .map_err(|e| pg("target", e))?;
        tokio::pin!(stream);
        tokio::pin!(sink);
        let mut buf = BytesMut::with_capacity(256 * 1024);
        let mut bytes = 0u64;
        while let Some(part) = stream.next().await {
            let part = part.map_err(|e| pg("source", e))?;
            bytes += part.len() as u64;
            buf.put(part);
            if buf.len() >= 128 * 1024 {
                pacer.take(buf.len()).await;
                sink.send(buf.split().freeze()).await.map_err(|e| pg("target", e))?;
            }
        }
        if !buf.is_empty() {
            pacer.take(buf.len()).await;
            sink.send(buf.split().freeze()).await.map_err(|e| pg("target", e))?;
        }
        let rows = sink.as_mut().finish().await.map_err(|e| pg("target", e))?;
        tgt.execute(
            "INSERT INTO cutover_copy.copied (table_name, chunk, rows, bytes, attempt) VALUES ($1, $2, $3, $4, $5)",
            &[&chunk.table, &chunk.index, &(rows as i64), &(bytes as i64), &attempt],
        )
        .await
        .map_err(|e| pg("target", e))?;
        Ok((rows, bytes))
    }
    .await;
    match result {
        Ok((rows, bytes)) => {
            tgt.batch_execute("COMMIT")
                .await
                .map_err(|e| pg("target", e))?;
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
        );
        assert!(sql.contains("VALUES ('\"public\".\"t\"', 1, 2, ARRAY['5']::text[], NULL, 10)"));
    }

    #[test]
    fn sampled_cuts_are_distinct_increasing_and_ranges_cover_everything() {
        let key = |a: &str, b: i32| vec![a.to_string(), b.to_string()];
        let sample: Vec<Vec<String>> = (0..100).map(|i| key("k", i / 10)).collect();
        let c = cuts(&sample, 4);
        assert_eq!(c, vec![key("k", 2), key("k", 5), key("k", 7)]);
        let r = KeyRange::between(&c);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].lower, None);
        assert_eq!(r[3].upper, None);
        for w in r.windows(2) {
            assert_eq!(w[0].upper, w[1].lower, "adjacent ranges share their bound");
        }
        // A sample of one key cuts nothing: one chunk, the whole table.
        assert_eq!(
            KeyRange::between(&cuts(&[key("k", 1)], 8)),
            vec![KeyRange::default()]
        );
        assert_eq!(KeyRange::between(&cuts(&[], 8)), vec![KeyRange::default()]);
    }

    #[test]
    fn split_covers_every_key_once() {
        let r = split(1, 100, 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].lower, None);
        assert_eq!(r[3].upper, None);
        for w in r.windows(2) {
            assert_eq!(w[0].upper, w[1].lower);
        }
        assert_eq!(r[1].lower, Some(vec!["26".to_string()]));
        assert_eq!(split(5, 5, 1), vec![KeyRange::default()]);
    }
}
