//! `postgres.verify`: proves the target holds exactly the source's rows, in two passes placed so
//! that the write outage never pays for the size of the database (ghostferry's verifier: verify
//! before the cutover, and during it only what changed since).
//!
//! - **Before the freeze** (`method: checksum`, the default, or `count`), while replication
//!   runs: first a change-tracking slot (`<run name>_track`, pgoutput) is created on the source,
//!   so every row changed from then on is known by key; then every table is cut into key-ordered
//!   chunks whose row count and hash sum are computed on both sides at once, and a differing
//!   chunk is bisected to the differing keys. A difference can be a change still in flight: each
//!   differing row is read again once the target confirmed the source's LSN of that read, up to
//!   three times; a row that still differs fails the run before the freeze, by key.
//! - **Inside the window** (`method: changed-since-prepass`), after the drain: only the rows
//!   the change-tracking slot names (inserted, updated or deleted since the pre-freeze pass
//!   began) are read on both sides, by key through the key's index; a table that was truncated
//!   or has no key is compared whole. The cost is proportional to the rows changed, not stored.
//!
//! The step fails naming tables and keys only, never row values. Its rollback drops the
//! change-tracking slot; `postgres.fallback` drops it when the forward replication retires.

use super::postgres_replicate::{names, run_name};
use super::{
    Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError, WindowRole,
};
use crate::config::Side;
use crate::providers::postgres::catalog::Table;
use crate::providers::postgres::database::Database;
use crate::providers::postgres::{changes, checksum};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The `postgres.verify` kind.
pub struct Verify;

/// What the step compares.
#[derive(
    Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Row counts and hash sums of every chunk (before the freeze).
    #[default]
    Checksum,
    /// Row counts only (before the freeze).
    Count,
    /// Only the rows changed since the pre-freeze pass began, by key (inside the window).
    ChangedSincePrepass,
}

/// `with:` of `postgres.verify`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Checksum (row count and hash sum per key-range chunk, default) or count (row counts only), both before the freeze; changed-since-prepass inside the window (only rows changed since the pre-freeze pass, by key).
    #[serde(default)]
    method: Method,
    /// Parallel connection pairs (default 2).
    #[serde(default = "default_jobs")]
    jobs: usize,
    /// Rows per compared chunk (default: about 32 MB of each table, from its size and row estimate, between 10000 and 1000000 rows).
    #[serde(default)]
    chunk_rows: Option<i64>,
    /// Differing keys named per table at most (default 20).
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    /// The forward publication, as postgres.replicate names it (default cutover_<database>_<run>).
    #[serde(default)]
    publication: Option<String>,
    /// The forward subscription / slot, as postgres.replicate names it (default cutover_<database>_<run>).
    #[serde(default)]
    subscription: Option<String>,
}

fn default_jobs() -> usize {
    2
}
fn default_max_keys() -> usize {
    20
}

/// Rows that differ after a pass: per table, the keys.
type Differing = Vec<(usize, Vec<Vec<String>>)>;

/// The change-tracking slot of this run.
pub(super) fn tracking_slot(cx: &StepContext) -> String {
    format!("{}_track", run_name(cx))
}

/// Waits until the forward slot confirmed `goal` (probing so an idle source confirms at once).
async fn caught_up(
    cx: &StepContext<'_>,
    source: &dyn Database,
    target: &dyn Database,
    slot: &str,
    goal: &str,
) -> Result<(), StepError> {
    super::postgres_wait_lag::wait_confirmed(cx, source, Some(target), slot, goal, cx.remaining())
        .await
        .map(|_| ())
}

/// Reads `keys` of `t` on the source, waits until the target applied the source's LSN of that
/// read, reads them on the target; returns those that differ and the rows read on the source.
async fn recheck(
    cx: &StepContext<'_>,
    source: &dyn Database,
    target: &dyn Database,
    slot: Option<&str>,
    t: &Table,
    keys: &[Vec<String>],
) -> Result<(Vec<Vec<String>>, usize), StepError> {
    let a = source.hashes_by_key(t, keys).await?;
    if let Some(slot) = slot {
        let lsn = source.current_lsn().await?;
        caught_up(cx, source, target, slot, &lsn).await?;
    }
    let b = target.hashes_by_key(t, keys).await?;
    Ok((checksum::differing_keys(keys, &a, &b), a.len()))
}

fn labels(t: &Table, keys: &[Vec<String>], max: usize) -> String {
    let mut l: Vec<String> = keys.iter().take(max).map(|k| t.key_label(k)).collect();
    if keys.len() > max {
        l.push(format!("and {} more", keys.len() - max));
    }
    l.join(", ")
}

/// Unquotes a `quote_ident` name.
fn unquoted(q: &str) -> String {
    if q.len() >= 2 && q.starts_with('"') && q.ends_with('"') {
        q[1..q.len() - 1].replace("\"\"", "\"")
    } else {
        q.to_string()
    }
}

/// The changed keys of `tc` in `t`'s key order; `None` when they do not name `t`'s key (a
/// replica identity other than the key we compare by): the table is then compared whole.
fn keys_in_table_order(t: &Table, tc: &changes::TableChanges) -> Option<Vec<Vec<String>>> {
    if tc.whole_table || t.key.is_empty() || tc.key_columns.len() != t.key.len() {
        return None;
    }
    let at: Option<Vec<usize>> = t
        .key
        .iter()
        .map(|(q, _)| tc.key_columns.iter().position(|c| *c == unquoted(q)))
        .collect();
    let at = at?;
    Some(
        tc.keys
            .iter()
            .map(|k| at.iter().map(|&i| k[i].clone()).collect())
            .collect(),
    )
}

/// One table's comparison in [`Outputs`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TableOutcome {
    /// Rows compared in a pass over every row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rows: Option<i64>,
    /// Chunks compared in that pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    chunks: Option<usize>,
    /// Changed keys looked up inside the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keys: Option<usize>,
    /// Rows compared inside the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rows_compared: Option<i64>,
    /// True when the table was compared whole inside the window (no usable key).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    whole_table: bool,
    /// Whether both sides were equal.
    equal: bool,
}

/// What `postgres.verify` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// `checksum`, `count` or `changed-since-prepass`.
    method: Method,
    /// Per table (`schema.table`): rows and chunks compared, and whether they were equal.
    tables: BTreeMap<String, TableOutcome>,
    /// The change-tracking slot whose changes the window's check reads.
    tracking_slot: String,
    /// The figures of a pass over every row (`checksum`, `count`).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pass: Option<Pass>,
    /// The figures of the check inside the window (`changed-since-prepass`).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    window: Option<Window>,
}

/// [`Outputs`] of a pass over every row.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pass {
    /// Rows compared.
    rows: i64,
    /// Chunks compared.
    chunks: usize,
    /// Rows compared per second.
    rows_per_second: f64,
    /// The source position from which changes are tracked.
    tracking_from_lsn: String,
    /// Rows read again, by key, after the target caught up.
    rechecked_rows: usize,
}

/// [`Outputs`] of the check inside the window.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Window {
    /// Changes decoded since the pass.
    changes: u64,
    /// Rows compared by key.
    rows_compared: usize,
    /// Tables compared whole (no usable key for their changes).
    tables_compared_whole: Vec<String>,
}

#[async_trait]
impl Kind for Verify {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "postgres.verify";
    const PURPOSE: &'static str = "Prove the target holds exactly the source's rows: every chunk before the freeze while replication runs, only the rows changed since inside the window; differing rows named by key";
    const UNDO: &'static str = "Drop the change-tracking slot the pre-freeze pass created; the comparison itself is read-only";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
    const ACTS_ON_DATABASE: bool = true;

    fn window_role(&self, p: Option<&Literal<Params>>) -> WindowRole {
        WindowRole::Verify {
            // A templated method counts as its default (checksum: a full pass).
            full: !p
                .filter(|l| l.known("method"))
                .is_some_and(|l| l.params.method == Method::ChangedSincePrepass),
        }
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), ()>, StepError> {
        let source = cx.providers.database(Side::Source).await?;
        let tables = source.tables().await?;
        let rows: i64 = tables.iter().map(|t| t.est_rows).sum();
        let track = tracking_slot(cx);
        let db = cx.env.database.name.clone();
        if p.method == Method::ChangedSincePrepass {
            let (publ, _) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
            let detail = if source.slot_exists(&track).await? {
                let set = source.peek(&track, &publ).await?;
                format!(
                    "compare by key the {} row(s) of {} table(s) changed since the pre-freeze pass (change-tracking slot {track}); the other ~{} rows are not read",
                    set.keys(),
                    set.tables.len(),
                    (rows - set.keys() as i64).max(0)
                )
            } else {
                format!("compare by key the rows changed since the pre-freeze pass, from change-tracking slot {track} (created by the pre-freeze postgres.verify)")
            };
            return Ok(Plan::check(format!("database {db}"), detail));
        }
        let mut changes_ = vec![Change::new(
            Action::Create,
            format!("replication slot {track} on source"),
            "change tracking (pgoutput): keys of every row changed from the start of this pass, for the check inside the window",
        )];
        changes_.push(Change::new(Action::Check, format!("database {db}"), format!(
            "compare {} of {} tables (~{rows} rows) on source and target in chunks of {} with {} job(s), while replication runs; re-read differing rows once the target caught up; name up to {} differing keys per table",
            if p.method == Method::Count { "row counts" } else { "row counts and hash sums" },
            tables.len(),
            p.chunk_rows.map_or("about 32 MB of each table".to_string(), |n| format!("{n} rows")),
            p.jobs, p.max_keys
        )));
        Ok(Plan::of(changes_))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        match p.method {
            Method::ChangedSincePrepass => changed_since_prepass(cx, p).await,
            Method::Checksum | Method::Count => full_pass(cx, p).await,
        }
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        _p: &Params,
        _before: &(),
        _outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let track = tracking_slot(cx);
        let source = cx.providers.database(Side::Source).await?;
        if source.drop_slot(&track).await? {
            let object = format!("replication slot {track} (source)");
            return Ok(vec![Restored::new(
                object.clone(),
                Some(&object),
                None,
                "dropped",
            )]);
        }
        Ok(vec![])
    }
}

/// The pre-freeze pass.
async fn full_pass(cx: &StepContext<'_>, p: &Params) -> Result<Applied<Outputs>, StepError> {
    let (_, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
    let source = cx.providers.database(Side::Source).await?;
    let target = cx.providers.database(Side::Target).await?;
    let checksums = cx.providers.checksums()?;
    // Where the pass runs (no role frozen: before the freeze), for its summary.
    let frozen = source.frozen().await?;
    let track = tracking_slot(cx);
    // The slot first: every change from here on is known by key inside the window.
    (cx.progress)(&format!("creating change-tracking slot {track}"));
    let from = source.create_slot(&track).await?;
    let mut tables = source.tables().await?;
    if p.method == Method::Count {
        for t in &mut tables {
            t.key.clear();
        }
    }
    let forward = source
        .behind(&sub, &from)
        .await?
        .is_some()
        .then_some(sub.as_str());
    let started = Instant::now();
    let mut last = Instant::now();
    // A read-only pass: the panic flag and the write budget stop it between two safe points.
    let mut on_chunk = |done, total| {
        if last.elapsed() >= Duration::from_secs(2) {
            last = Instant::now();
            (cx.progress)(&format!("verified {done} of {total} chunks"));
        }
    };
    let comparing = checksums.compare(
        &tables,
        p.jobs,
        if p.method == Method::Count {
            Some(0)
        } else {
            p.chunk_rows
        },
        // Differences in flight are common while replication runs: find them all.
        10_000,
        &mut on_chunk,
    );
    let results = cx
        .watched(comparing, "the comparison of every chunk")
        .await??;
    let secs = started.elapsed().as_secs_f64();
    let settled: usize = results.iter().map(|r| r.settled_chunks).sum();
    // Differing rows: read again once the target caught up, up to three times.
    let mut differing: Differing = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.differs)
        .map(|(i, r)| (i, r.differing.clone()))
        .collect();
    let mut rechecked = 0usize;
    for attempt in 1..=3 {
        if differing.is_empty() {
            break;
        }
        (cx.progress)(&format!(
            "{} table(s) differ while replication runs; reading them again once the target caught up (attempt {attempt} of 3)",
            differing.len()
        ));
        let mut still = Vec::new();
        for (i, keys) in differing {
            let t = &tables[i];
            if keys.is_empty() {
                // Nothing to look up by key (count method, keyless table): the table again.
                let lsn = source.current_lsn().await?;
                if let Some(slot) = forward {
                    caught_up(cx, &*source, &*target, slot, &lsn).await?;
                }
                let again = checksums
                    .compare(
                        std::slice::from_ref(t),
                        1,
                        if p.method == Method::Count {
                            Some(0)
                        } else {
                            p.chunk_rows
                        },
                        10_000,
                        &mut |_, _| {},
                    )
                    .await?;
                rechecked += again[0].rows.max(0) as usize;
                if again[0].differs {
                    still.push((i, again[0].differing.clone()));
                }
                continue;
            }
            let (d, read) = recheck(cx, &*source, &*target, forward, t, &keys).await?;
            rechecked += read;
            if !d.is_empty() {
                still.push((i, d));
            }
        }
        differing = still;
    }
    if !differing.is_empty() {
        let parts: Vec<String> = differing
            .iter()
            .map(|(i, keys)| {
                let t = &tables[*i];
                if keys.is_empty() {
                    let r = &results[*i];
                    format!(
                        "{}: {} rows on the source, {} on the target",
                        t.display, r.rows, r.target_rows
                    )
                } else {
                    format!(
                        "{}: rows differ or are missing at {}",
                        t.display,
                        labels(t, keys, p.max_keys)
                    )
                }
            })
            .collect();
        return Err(StepError::Check(format!(
            "target differs from source before the freeze (read again after the target caught up): {}",
            parts.join("; ")
        )));
    }
    // Catch up: the rows changed while the pass ran are read again now, by key, once the
    // target applied them; then the change-tracking slot moves past them, so the check inside
    // the window decodes and reads only what changes from here on.
    let (caught_up_rows, tracked_from) =
        catch_up(cx, &*source, &*target, forward, &tables, p, &track, &from).await?;
    rechecked += caught_up_rows;
    let from = tracked_from;
    let (mut rows, mut chunks) = (0i64, 0usize);
    let mut out_tables = BTreeMap::new();
    for r in &results {
        rows += r.rows;
        chunks += r.chunks;
        out_tables.insert(
            r.table.clone(),
            TableOutcome {
                rows: Some(r.rows),
                chunks: Some(r.chunks),
                equal: true,
                ..Default::default()
            },
        );
    }
    let rate = if secs > 0.0 {
        (rows as f64 / secs).round()
    } else {
        0.0
    };
    let summary = format!(
        "{}: {} tables, {rows} rows in {chunks} chunks equal on both sides ({secs:.2} s, {rechecked} row(s) read again after the target caught up, {settled} chunk(s) equal on a second read); rows changed from {from} are tracked by {track}",
        if frozen.is_empty() {
            "before the freeze".to_string()
        } else {
            format!(
                "inside the window (role(s) {} frozen on the source), every row read",
                frozen.join(", ")
            )
        },
        results.len()
    );
    Ok(Applied::new(Outputs {
        method: p.method,
        tables: out_tables,
        tracking_slot: track.clone(),
        pass: Some(Pass {
            rows,
            chunks,
            rows_per_second: rate,
            tracking_from_lsn: from.clone(),
            rechecked_rows: rechecked,
        }),
        window: None,
    })
    .summary(summary))
}

/// Reads by key every row the change-tracking slot names (up to now) on both sides once the
/// target caught up, then advances the slot to the LSN taken before those reads: a row changed
/// before it and not since was found equal after its last change. Returns the rows read and
/// the LSN the slot now tracks from.
#[allow(clippy::too_many_arguments)]
async fn catch_up(
    cx: &StepContext<'_>,
    source: &dyn Database,
    target: &dyn Database,
    forward: Option<&str>,
    tables: &[Table],
    p: &Params,
    track: &str,
    from: &str,
) -> Result<(usize, String), StepError> {
    let (publ, _) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
    let Some(_) = forward else {
        return Ok((0, from.to_string()));
    };
    let mark = source.current_lsn().await?;
    let set = source.peek(track, &publ).await?;
    let mut read = 0usize;
    for (name, tc) in &set.tables {
        let Some(t) = tables.iter().find(|t| &t.display == name) else {
            continue;
        };
        let Some(mut keys) = keys_in_table_order(t, tc) else {
            // Whole-table changes stay in the slot for the window to compare.
            return Ok((read, from.to_string()));
        };
        for attempt in 1..=3 {
            let (d, n) = recheck(cx, source, target, forward, t, &keys).await?;
            read += n;
            if d.is_empty() {
                break;
            }
            if attempt == 3 {
                return Err(StepError::Check(format!(
                    "target differs from source before the freeze (read again after the target caught up): {name}: rows differ or are missing at {}",
                    labels(t, &d, p.max_keys)
                )));
            }
            keys = d;
        }
    }
    source.advance_slot(track, &mark).await?;
    Ok((read, mark))
}

/// The check inside the window.
async fn changed_since_prepass(
    cx: &StepContext<'_>,
    p: &Params,
) -> Result<Applied<Outputs>, StepError> {
    let (publ, _) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
    let source = cx.providers.database(Side::Source).await?;
    let target = cx.providers.database(Side::Target).await?;
    let track = tracking_slot(cx);
    if !source.slot_exists(&track).await? {
        return Err(StepError::Check(format!(
            "change-tracking slot {track} does not exist on the source: a postgres.verify with method checksum or count must run before the freeze (while replication runs) for this check to know what changed"
        )));
    }
    // The application roles frozen on the source now: where the check runs (none: before the
    // freeze; some: inside the window), so the summary never claims a phase it did not run in.
    let frozen = source.frozen().await?;
    let started = Instant::now();
    let set = source.peek(&track, &publ).await?;
    let tables = source.tables().await?;
    let mut compared = 0usize;
    let mut whole = Vec::new();
    let mut diffs = Vec::new();
    let mut out_tables = BTreeMap::new();
    for (name, tc) in &set.tables {
        let Some(t) = tables.iter().find(|t| &t.display == name) else {
            continue;
        };
        match keys_in_table_order(t, tc) {
            Some(keys) => {
                let (d, read) = recheck(cx, &*source, &*target, None, t, &keys).await?;
                compared += read;
                out_tables.insert(
                    name.clone(),
                    TableOutcome {
                        keys: Some(keys.len()),
                        rows_compared: Some(read as i64),
                        equal: d.is_empty(),
                        ..Default::default()
                    },
                );
                if !d.is_empty() {
                    diffs.push(format!(
                        "{name}: rows differ or are missing at {}",
                        labels(t, &d, p.max_keys)
                    ));
                }
            }
            None => {
                whole.push(name.clone());
                let r = cx
                    .providers
                    .checksums()?
                    .compare(
                        std::slice::from_ref(t),
                        p.jobs,
                        p.chunk_rows,
                        p.max_keys,
                        &mut |_, _| {},
                    )
                    .await?;
                compared += r[0].rows.max(0) as usize;
                out_tables.insert(
                    name.clone(),
                    TableOutcome {
                        whole_table: true,
                        rows_compared: Some(r[0].rows),
                        equal: !r[0].differs,
                        ..Default::default()
                    },
                );
                if r[0].differs {
                    diffs.push(format!(
                        "{name}: {} rows on the source, {} on the target{}",
                        r[0].rows,
                        r[0].target_rows,
                        if r[0].differing_keys.is_empty() {
                            String::new()
                        } else {
                            format!(", differing at {}", r[0].differing_keys.join(", "))
                        }
                    ));
                }
            }
        }
    }
    if !diffs.is_empty() {
        return Err(StepError::Check(format!(
            "target differs from source in rows changed since the pre-freeze pass: {}",
            diffs.join("; ")
        )));
    }
    let secs = started.elapsed().as_secs_f64();
    let summary = format!(
        "{}: {compared} row(s) changed since the pre-freeze pass ({} change(s) in {} table(s)) equal on both sides by key ({secs:.3} s); rows not changed since were not read",
        if frozen.is_empty() {
            "before the freeze (no role frozen on the source yet)"
        } else {
            "inside the window"
        },
        set.changes,
        set.tables.len()
    );
    Ok(Applied::new(Outputs {
        method: Method::ChangedSincePrepass,
        tables: out_tables,
        tracking_slot: track.clone(),
        pass: None,
        window: Some(Window {
            changes: set.changes,
            rows_compared: compared,
            tables_compared_whole: whole,
        }),
    })
    .summary(summary))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::postgres::catalog;

    #[test]
    fn changed_keys_are_put_in_the_tables_key_order() {
        let t = Table {
            name: "public.t".into(),
            display: "public.t".into(),
            columns: vec![],
            column_defs: vec![],
            key: vec![
                ("\"Id\"".into(), "bigint".into()),
                ("tenant".into(), "text".into()),
            ],
            identity: catalog::Identity::PrimaryKey,
            bytes: 0,
            est_rows: 0,
            column_types: vec![],
        };
        let mut tc = changes::TableChanges {
            key_columns: vec!["tenant".into(), "Id".into()],
            ..Default::default()
        };
        tc.keys.insert(vec!["a".into(), "7".into()]);
        assert_eq!(
            keys_in_table_order(&t, &tc),
            Some(vec![vec!["7".to_string(), "a".to_string()]])
        );
        tc.key_columns = vec!["tenant".into(), "other".into()];
        assert_eq!(keys_in_table_order(&t, &tc), None);
        tc.key_columns = vec!["tenant".into(), "Id".into()];
        tc.whole_table = true;
        assert_eq!(keys_in_table_order(&t, &tc), None);
    }
}

#[cfg(test)]
mod against_fakes {
    use super::*;
    use crate::providers::postgres::database::Subscription;
    use crate::steps::testing::postgres::FakePostgres;
    use crate::steps::testing::Harness;

    /// Forward replication of this run running, `public.orders` (keyed) and `public.log`
    /// (keyless) with the same rows on both sides.
    async fn replicating() -> (Harness, FakePostgres) {
        let pg = FakePostgres::new("shop_staging", "shop_staging");
        for side in [Side::Source, Side::Target] {
            pg.server(side, |s| {
                s.tables = vec!["public.orders".into(), "public.log".into()];
                s.keyless.insert("public.log".into());
            });
            pg.set_rows(side, "public.orders", &[(1, "a"), (2, "b"), (7, "c")]);
            pg.set_rows(side, "public.log", &[(1, "x")]);
        }
        let fake = pg.clone();
        let h = Harness::new(|p| fake.install(p));
        let forward = run_name(&h.cx());
        let (source, target) = (pg.database(Side::Source), pg.database(Side::Target));
        source.create_publication(&forward, &[]).await.unwrap();
        source.create_slot(&forward).await.unwrap();
        target
            .subscribe(
                &Subscription {
                    publication: forward.clone(),
                    name: forward,
                    origin_none: true,
                },
                &*source,
            )
            .await
            .unwrap();
        (h, pg)
    }

    fn params(method: Method) -> Params {
        Params {
            method,
            jobs: 2,
            chunk_rows: None,
            max_keys: 20,
            publication: None,
            subscription: None,
        }
    }

    #[tokio::test]
    async fn a_pass_over_equal_rows_tracks_changes_from_its_start_and_rollback_drops_the_slot() {
        let (h, pg) = replicating().await;
        let cx = h.cx();
        let p = params(Method::Checksum);
        let track = tracking_slot(&cx);
        let plan = Verify.plan(&cx, &p).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Create);
        assert_eq!(
            plan.changes[0].target,
            format!("replication slot {track} on source")
        );

        let first = Verify.apply(&cx, &p, &()).await.unwrap();
        let pass = first.outputs.pass.as_ref().unwrap();
        assert_eq!((pass.rows, pass.chunks, pass.rechecked_rows), (4, 2, 0));
        assert!(first
            .summary
            .as_deref()
            .unwrap()
            .starts_with("before the freeze"));
        // A re-run after a crash reuses the slot and compares again.
        let again = Verify.apply(&cx, &p, &()).await.unwrap();
        assert_eq!(again.outputs.pass.as_ref().unwrap().rows, 4);
        assert!(pg.server(Side::Source, |s| s.slots.contains_key(&track)));

        let restored = Verify
            .rollback(&cx, &p, &(), Some(&again.outputs))
            .await
            .unwrap();
        assert_eq!(
            restored[0].object,
            format!("replication slot {track} (source)")
        );
        assert!(!pg.server(Side::Source, |s| s.slots.contains_key(&track)));
        assert!(Verify
            .rollback(&cx, &p, &(), None)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn rows_in_flight_are_read_again_once_the_target_caught_up() {
        let (h, pg) = replicating().await;
        let cx = h.cx();
        // Replication lags: the pass sees two rows the target has not applied yet.
        pg.lag(3);
        pg.write_row(Side::Source, "public.orders", 2, Some("b2"));
        pg.write_row(Side::Source, "public.orders", 9, Some("new"));
        let applied = Verify
            .apply(&cx, &params(Method::Checksum), &())
            .await
            .unwrap();
        let pass = applied.outputs.pass.as_ref().unwrap();
        assert_eq!(pass.rechecked_rows, 2, "both rows read again by key");
        assert!(h
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("attempt 1 of 3")));
    }

    #[tokio::test]
    async fn a_row_that_stays_different_is_named_by_its_key() {
        let (h, pg) = replicating().await;
        pg.set_rows(
            Side::Target,
            "public.orders",
            &[(1, "a"), (2, "b"), (7, "corrupt")],
        );
        let err = Verify
            .apply(&h.cx(), &params(Method::Checksum), &())
            .await
            .err()
            .expect("id 7 differs");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("public.orders: rows differ or are missing at id=7")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn inside_the_window_only_rows_changed_since_the_pass_are_compared() {
        let (h, pg) = replicating().await;
        let cx = h.cx();
        let window = params(Method::ChangedSincePrepass);
        let err = Verify
            .apply(&cx, &window, &())
            .await
            .err()
            .expect("no pass yet");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("must run before the freeze")),
            "{err:?}"
        );

        Verify
            .apply(&cx, &params(Method::Checksum), &())
            .await
            .unwrap();
        pg.write_row(Side::Source, "public.orders", 1, Some("a2"));
        pg.write_row(Side::Source, "public.orders", 11, Some("k"));
        pg.server(Side::Source, |s| s.frozen.insert("app".into()));
        let plan = Verify.plan(&cx, &window).await.unwrap();
        assert!(
            plan.changes[0]
                .detail
                .contains("the 2 row(s) of 1 table(s)"),
            "{}",
            plan.changes[0].detail
        );
        let applied = Verify.apply(&cx, &window, &()).await.unwrap();
        let w = applied.outputs.window.as_ref().unwrap();
        assert_eq!((w.changes, w.rows_compared), (2, 2));
        assert!(w.tables_compared_whole.is_empty());
        assert!(applied
            .summary
            .as_deref()
            .unwrap()
            .starts_with("inside the window"));

        // A change the target lost is found by its key.
        pg.stall(true);
        pg.write_row(Side::Source, "public.orders", 12, Some("lost"));
        let err = Verify
            .apply(&cx, &window, &())
            .await
            .err()
            .expect("id 12 missing");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("id=12")),
            "{err:?}"
        );
    }
}
