//! Comparing two databases table by table as data-diff does: each table cut into key-ordered
//! chunks (cut from the key's bounds or a sample, never a pass over every key), each chunk
//! summarised on both sides at once by its row count and the sum of a 64-bit hash of every row,
//! and a differing chunk bisected by key until the differing rows are found. The row hash is
//! `hash_record_extended` over the columns (the extended hash functions hash partitioning relies
//! on, so the same on every server), rendering as text only the types whose hash treats unequal
//! values alike ([`RowHash`]). Rows are reported by key only, never by value.
//!
//! Owns the comparison; must not change either database.

use super::catalog::{key_ranges, major_version, KeyRange, Table};
use super::Server;
use super::{connect, pg};
use crate::providers::ProviderError;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use tokio_postgres::Client;

/// Session settings that make a row's text form the same on both servers whatever their
/// defaults (time zone, date and float formats).
pub const STABLE_TEXT: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'";

/// Table alias in generated SQL; unlikely to collide with a column name.
const ALIAS: &str = "cutover_row";

/// How a row is hashed, the same way on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowHash {
    /// `hash_record_extended` over the columns, most of them unrendered
    /// ([`Table::row_hash`]): both servers run PostgreSQL 14 or later. About 3.5× the rows per
    /// second of the text form on PostgreSQL 15 (docs/BENCHMARKS.md).
    Record,
    /// `hashtextextended` of the row's text form: either server is older than 14.
    Text,
}

impl RowHash {
    /// [`RowHash::Record`] when both major versions are 14 or later.
    pub fn for_versions(source_major: i32, target_major: i32) -> RowHash {
        if source_major >= 14 && target_major >= 14 {
            RowHash::Record
        } else {
            RowHash::Text
        }
    }

    fn expr(self, t: &Table) -> String {
        match self {
            RowHash::Record => t.row_hash(ALIAS),
            RowHash::Text => format!("hashtextextended({ALIAS}::text, 0)"),
        }
    }
}

/// Bytes of a table a compared chunk covers when the runbook sets no row count (by the table's
/// size over its row estimate): large enough that a round trip is small beside the scan.
pub const CHUNK_BYTES: i64 = 32 << 20;

/// Rows per chunk of `t`: `chunk_rows` when given, else about [`CHUNK_BYTES`] of the table,
/// between 10,000 and 1,000,000 rows.
pub fn chunk_rows_for(t: &Table, chunk_rows: Option<i64>) -> i64 {
    chunk_rows.unwrap_or_else(|| {
        let width = (t.bytes / t.est_rows.max(1)).max(1);
        (CHUNK_BYTES / width).clamp(10_000, 1_000_000)
    })
}

/// Row count and hash sum of some rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Rows.
    pub rows: i64,
    /// Sum of each row's 64-bit hash (`hashtextextended`), as decimal text.
    pub sum: String,
}

/// One table's comparison.
#[derive(Debug, Clone)]
pub struct TableResult {
    /// `schema.table`.
    pub table: String,
    /// Rows on the source.
    pub rows: i64,
    /// Chunks compared.
    pub chunks: usize,
    /// Rows on the target.
    pub target_rows: i64,
    /// Keys of rows that differ, are missing or are extra on the target (labels such as `id=42`),
    /// at most the limit given.
    pub differing_keys: Vec<String>,
    /// The same keys as text values in key order, for a second look by key.
    pub differing: Vec<Vec<String>>,
    /// True when the table differs (even if no key could be named). A chunk that differed in
    /// the pass but whose every row compares equal when bisected moments later (a change was
    /// in flight while replication ran) no longer counts: the second read is the comparison.
    pub differs: bool,
    /// Chunks that differed in the pass and compared equal when read again by the bisection.
    pub settled_chunks: usize,
}

async fn stable(c: Client, side: Server) -> Result<Client, ProviderError> {
    c.batch_execute(STABLE_TEXT)
        .await
        .map_err(|e| pg(side, e))?;
    Ok(c)
}

/// Opens a connection with [`STABLE_TEXT`] applied.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn open(url: &str, side: Server) -> Result<Client, ProviderError> {
    stable(connect(url, side).await?, side).await
}

/// Summarises the rows of `t` in `range`, rows hashed by `hash`.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn summarise(
    c: &Client,
    side: Server,
    t: &Table,
    range: &KeyRange,
    hash: RowHash,
) -> Result<Summary, ProviderError> {
    let sql = format!(
        "SELECT count(*), coalesce(sum({}), 0)::text FROM {} {ALIAS} WHERE {}",
        hash.expr(t),
        t.name,
        t.range_predicate(range)
    );
    let r = c.query_one(&sql, &[]).await.map_err(|e| pg(side, e))?;
    Ok(Summary {
        rows: r.get(0),
        sum: r.get(1),
    })
}

/// Cuts `t` into ranges of about `chunk_rows` rows (by the planner's row estimate) with
/// [`key_ranges`]: arithmetic for an integer key, a block sample otherwise, never a pass over
/// every key. `chunk_rows` < 1 or a table without a key is one range.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn ranges(
    c: &Client,
    side: Server,
    t: &Table,
    chunk_rows: i64,
) -> Result<Vec<KeyRange>, ProviderError> {
    if t.key.is_empty() || chunk_rows < 1 {
        return Ok(vec![KeyRange::default()]);
    }
    let wanted = (t.est_rows + chunk_rows - 1) / chunk_rows;
    key_ranges(c, side, t, wanted).await
}

/// Rows of a range small enough to compare one by one.
const LEAF_ROWS: i64 = 64;

async fn row_hashes(
    c: &Client,
    side: Server,
    t: &Table,
    range: &KeyRange,
) -> Result<BTreeMap<Vec<String>, String>, ProviderError> {
    let sql = format!(
        "SELECT {}, md5({ALIAS}::text) FROM {} {ALIAS} WHERE {}",
        t.key_text_array(),
        t.name,
        t.range_predicate(range)
    );
    Ok(c.query(&sql, &[])
        .await
        .map_err(|e| pg(side, e))?
        .iter()
        .map(|r| (r.get::<_, Vec<String>>(0), r.get::<_, String>(1)))
        .collect())
}

async fn middle_key(
    c: &Client,
    side: Server,
    t: &Table,
    range: &KeyRange,
    rows: i64,
) -> Result<Option<Vec<String>>, ProviderError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {} OFFSET {} LIMIT 1",
        t.key_text_array(),
        t.name,
        t.range_predicate(range),
        t.key_order(),
        rows / 2
    );
    Ok(c.query_opt(&sql, &[])
        .await
        .map_err(|e| pg(side, e))?
        .map(|r| r.get(0)))
}

/// Bisects a differing `range` of `t` down to the keys that differ: halves at the middle key
/// of the side with more rows, summarises both halves on both sides, and compares row hashes
/// once a range holds at most 64 rows. Stops after `limit` keys.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn locate(
    src: &Client,
    tgt: &Client,
    t: &Table,
    range: KeyRange,
    limit: usize,
    hash: RowHash,
) -> Result<Vec<Vec<String>>, ProviderError> {
    let mut keys = Vec::new();
    if t.key.is_empty() {
        return Ok(keys);
    }
    let mut todo = vec![range];
    while let Some(r) = todo.pop() {
        if keys.len() >= limit {
            break;
        }
        let (a, b) = tokio::try_join!(
            summarise(src, Server::Source, t, &r, hash),
            summarise(tgt, Server::Target, t, &r, hash)
        )?;
        if a == b {
            continue;
        }
        let most = a.rows.max(b.rows);
        let mid = if most > LEAF_ROWS {
            let c = if a.rows >= b.rows {
                (src, Server::Source)
            } else {
                (tgt, Server::Target)
            };
            middle_key(c.0, c.1, t, &r, most).await?
        } else {
            None
        };
        // A middle key equal to the lower bound cannot split the range: compare rows instead.
        match mid.filter(|m| Some(m) != r.lower.as_ref()) {
            Some(m) => {
                todo.push(KeyRange {
                    lower: Some(m.clone()),
                    upper: r.upper.clone(),
                });
                todo.push(KeyRange {
                    lower: r.lower.clone(),
                    upper: Some(m),
                });
            }
            None => {
                let (ra, rb) = tokio::try_join!(
                    row_hashes(src, Server::Source, t, &r),
                    row_hashes(tgt, Server::Target, t, &r)
                )?;
                let mut all: Vec<&Vec<String>> = ra.keys().chain(rb.keys()).collect();
                all.sort();
                all.dedup();
                for k in all {
                    if ra.get(k) != rb.get(k) && keys.len() < limit {
                        keys.push(k.clone());
                    }
                }
            }
        }
    }
    Ok(keys)
}

/// Compares every table of `tables` between the two databases with `jobs` connection pairs,
/// chunks of about `chunk_rows` rows (else [`chunk_rows_for`] each table's width; 0 for one
/// chunk per table), and at most `limit` keys named per table. `on_chunk` is called after each
/// chunk with (chunks done, chunks in all).
///
/// # Errors
/// [`ProviderError::Postgres`] when a query fails (a difference is a result, not an error).
pub async fn compare(
    source_url: &str,
    target_url: &str,
    tables: &[Table],
    jobs: usize,
    chunk_rows: Option<i64>,
    limit: usize,
    mut on_chunk: impl FnMut(usize, usize),
) -> Result<Vec<TableResult>, ProviderError> {
    let jobs = jobs.max(1);
    let (planner, tgt) = tokio::try_join!(
        open(source_url, Server::Source),
        open(target_url, Server::Target)
    )?;
    let hash = RowHash::for_versions(
        major_version(&planner, Server::Source).await?,
        major_version(&tgt, Server::Target).await?,
    );
    drop(tgt);
    // Ranges come from the source's keys (a sample at most); the target is compared over the
    // same ranges.
    let mut planned: Vec<(usize, Vec<KeyRange>)> = Vec::with_capacity(tables.len());
    for (i, t) in tables.iter().enumerate() {
        let rows = chunk_rows_for(t, chunk_rows);
        planned.push((i, ranges(&planner, Server::Source, t, rows).await?));
    }
    drop(planner);
    let total: usize = planned.iter().map(|(_, r)| r.len()).sum();
    let queue: Mutex<VecDeque<(usize, KeyRange)>> = Mutex::new(
        planned
            .iter()
            .flat_map(|(i, rs)| rs.iter().map(move |r| (*i, r.clone())))
            .collect(),
    );
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, KeyRange, Summary, Summary)>();
    let worker = |tx: tokio::sync::mpsc::UnboundedSender<(usize, KeyRange, Summary, Summary)>| {
        let queue = &queue;
        async move {
            let (src, tgt) = tokio::try_join!(
                open(source_url, Server::Source),
                open(target_url, Server::Target)
            )?;
            loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                let Some((i, r)) = next else { break };
                let t = &tables[i];
                let (a, b) = tokio::try_join!(
                    summarise(&src, Server::Source, t, &r, hash),
                    summarise(&tgt, Server::Target, t, &r, hash)
                )?;
                let _ = tx.send((i, r, a, b));
            }
            Ok::<(), ProviderError>(())
        }
    };
    let workers: Vec<_> = (0..jobs).map(|_| worker(tx.clone())).collect();
    drop(tx);
    let mut results: Vec<TableResult> = tables
        .iter()
        .map(|t| TableResult {
            table: t.display.clone(),
            rows: 0,
            chunks: 0,
            target_rows: 0,
            differing_keys: Vec::new(),
            differing: Vec::new(),
            differs: false,
            settled_chunks: 0,
        })
        .collect();
    let mut differing: Vec<(usize, KeyRange)> = Vec::new();
    let mut seen = 0;
    super::drive(workers, rx, |(i, r, a, b)| {
        seen += 1;
        let res = &mut results[i];
        res.rows += a.rows;
        res.target_rows += b.rows;
        res.chunks += 1;
        if a != b {
            res.differs = true;
            differing.push((i, r));
        }
        on_chunk(seen, total);
    })
    .await?;
    if !differing.is_empty() {
        let (src, tgt) = tokio::try_join!(
            open(source_url, Server::Source),
            open(target_url, Server::Target)
        )?;
        // Chunks per table that still differ after their bisection.
        let mut still = vec![0usize; tables.len()];
        for (i, r) in differing {
            let left = limit.saturating_sub(results[i].differing_keys.len());
            if left == 0 || tables[i].key.is_empty() {
                still[i] += 1;
                continue;
            }
            let keys = locate(&src, &tgt, &tables[i], r, left, hash).await?;
            if keys.is_empty() {
                // Equal on the second read: the difference was a change in flight.
                results[i].settled_chunks += 1;
                continue;
            }
            still[i] += 1;
            results[i]
                .differing_keys
                .extend(keys.iter().map(|k| tables[i].key_label(k)));
            results[i].differing.extend(keys);
        }
        for (res, still) in results.iter_mut().zip(still) {
            res.differs = still > 0;
        }
    }
    Ok(results)
}

/// The row hash (`md5` of the row's text form) of each row of `t` whose key is one of `keys`
/// (text values in key order), by key; keys absent on `c` are absent from the map. Looks rows
/// up through the key's index, 10,000 keys per statement.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn hashes_by_key(
    c: &Client,
    side: Server,
    t: &Table,
    keys: &[Vec<String>],
) -> Result<BTreeMap<Vec<String>, String>, ProviderError> {
    let mut out = BTreeMap::new();
    if t.key.is_empty() {
        return Ok(out);
    }
    let n = t.key.len();
    let params: Vec<String> = (1..=n).map(|i| format!("${i}::text[]")).collect();
    let names: Vec<String> = (1..=n).map(|i| format!("cutover_k{i}")).collect();
    let on: Vec<String> = t
        .key
        .iter()
        .zip(&names)
        .map(|((c, ty), k)| format!("{ALIAS}.{c} = u.{k}::{ty}"))
        .collect();
    let cols: Vec<String> = t
        .key
        .iter()
        .map(|(c, _)| format!("{ALIAS}.{c}::text"))
        .collect();
    let sql = format!(
        "SELECT ARRAY[{}], md5({ALIAS}::text) FROM {} {ALIAS} JOIN unnest({}) AS u({}) ON {}",
        cols.join(", "),
        t.name,
        params.join(", "),
        names.join(", "),
        on.join(" AND ")
    );
    let stmt = c.prepare(&sql).await.map_err(|e| pg(side, e))?;
    for batch in keys.chunks(10_000) {
        let columns: Vec<Vec<&str>> = (0..n)
            .map(|i| {
                batch
                    .iter()
                    .map(|k| k.get(i).map(String::as_str).unwrap_or(""))
                    .collect()
            })
            .collect();
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = columns
            .iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        for r in c.query(&stmt, &refs).await.map_err(|e| pg(side, e))? {
            out.insert(r.get::<_, Vec<String>>(0), r.get::<_, String>(1));
        }
    }
    Ok(out)
}

/// The keys of `wanted` whose rows differ between two [`hashes_by_key`] results (changed,
/// missing on one side or the other), in key order.
pub fn differing_keys(
    wanted: &[Vec<String>],
    source: &BTreeMap<Vec<String>, String>,
    target: &BTreeMap<Vec<String>, String>,
) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = wanted
        .iter()
        .filter(|k| source.get(*k) != target.get(*k))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_when_changed_missing_or_extra() {
        let k = |s: &str| vec![s.to_string()];
        let src: BTreeMap<Vec<String>, String> = [
            (k("1"), "a".into()),
            (k("2"), "b".into()),
            (k("3"), "c".into()),
        ]
        .into();
        let tgt: BTreeMap<Vec<String>, String> = [
            (k("1"), "a".into()),
            (k("2"), "X".into()),
            (k("4"), "d".into()),
        ]
        .into();
        let wanted = vec![k("4"), k("3"), k("2"), k("1"), k("5"), k("2")];
        assert_eq!(
            differing_keys(&wanted, &src, &tgt),
            vec![k("2"), k("3"), k("4")]
        );
    }
}
