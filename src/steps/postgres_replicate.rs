//! `postgres.replicate`: the initial copy and the start of logical replication, as pgcopydb does
//! it.
//!
//! 1. Preflight (every problem at once, before anything is created).
//! 2. A publication for every table on the source, then a replication slot created with an
//!    exported snapshot, held by a process that survives this one.
//! 3. The schema's pre-data section (tables, sequences, types) under that snapshot, together
//!    with the chunk plan, in one target transaction.
//! 4. Every chunk copied by parallel `COPY` inside the snapshot; each chunk commits with its
//!    progress row, so a killed copy resumes at the next chunk and never copies one twice.
//! 5. The post-data section (indexes, constraints), then a subscription that starts from the
//!    slot's consistent point without copying again (`create_slot = false, copy_data = false`).
//!
//! Rollback drops the subscription, the slot, the publication and the progress schema and
//! releases the snapshot. The target's copied rows stay: the target is not live before the flip,
//! and after it they may hold acknowledged writes.

use super::{
    Action, Applied, Change, Evidence, Kind, Literal, Plan, Restored, StepContext, StepError,
    WindowRole,
};
use crate::providers::postgres::catalog::{self, Table, STATE_SCHEMA};
use crate::providers::postgres::postdata::{self, Item, Stage};
use crate::providers::postgres::preflight::{self, Needs};
use crate::providers::postgres::snapshot;
use crate::providers::postgres::{
    copy, ident, literal, ownership, pg, replication, roles, ConnParts,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The `postgres.replicate` kind.
pub struct Replicate;

/// `with:` of `postgres.replicate`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Publication name on the source (default cutover_<database>_<run>, the run id's suffix).
    #[serde(default)]
    publication: Option<String>,
    /// Subscription and replication slot name (default cutover_<database>_<run>, the run id's suffix).
    #[serde(default)]
    subscription: Option<String>,
    /// Parallel COPY workers (default 4).
    #[serde(default = "default_jobs")]
    jobs: usize,
    /// Tables with a key and more rows than this (planner estimate) are copied in key-range chunks of about this many rows, each committed on its own (default 1000000: fewer, larger chunks measured faster than 250000 on a composite key, docs/BENCHMARKS.md; smaller chunks redo less after a kill).
    #[serde(default = "default_chunk_rows")]
    chunk_rows: i64,
    /// Limit of the whole copy in MB/s (10^6 bytes of COPY text per second; default none).
    #[serde(default)]
    rate_limit_mb: Option<f64>,
    /// A source transaction open longer than this many seconds fails the preflight (default 300).
    #[serde(default = "default_max_transaction_age")]
    max_transaction_age: i64,
    /// Non-production only: when the target's tables hold an earlier rehearsal's copy (and no fallback subscription of a run is live on the source), drop those tables (their owned sequences with them) and copy schema and rows again (default false); e.g. "{{ env.tier != 'production' }}".
    #[serde(default, deserialize_with = "super::rendered::flag")]
    reset_target: bool,
    /// The runbook keeps a fallback replication (postgres.fallback): the target must have wal_level = logical (default true).
    #[serde(default = "yes")]
    fallback: bool,
    /// Validate every foreign key after replication has started (a scan that blocks no writes, never inside the write outage); false leaves them NOT VALID on the target, recorded with the reason (default true).
    #[serde(default = "yes")]
    validate_foreign_keys: bool,
}

fn yes() -> bool {
    true
}

fn default_jobs() -> usize {
    4
}
fn default_chunk_rows() -> i64 {
    1_000_000
}
fn default_max_transaction_age() -> i64 {
    300
}

/// The name this run gives its replication objects when the runbook names none:
/// `cutover_<database>_<run>`, where `<run>` is the run id's random suffix, so that a run only
/// ever creates, adopts or drops objects of its own (slot names allow lower-case letters, digits
/// and `_`; at most 63 bytes with room for the `_track` and `_fb` suffixes).
pub(super) fn run_name(cx: &StepContext) -> String {
    let db = db_token(cx);
    let run: String = cx
        .run_id
        .rsplit('-')
        .next()
        .unwrap_or(cx.run_id)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let mut base = format!("cutover_{db}");
    base.truncate(63 - 7 - 1 - run.len());
    format!("{base}_{run}")
}

/// The database name as replication object names may hold it (lower-case letters, digits, `_`).
pub(super) fn db_token(cx: &StepContext) -> String {
    cx.env
        .database
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Publication and subscription (= slot) names for these parameters (default [`run_name`]).
pub(super) fn names(
    cx: &StepContext,
    publication: Option<&str>,
    subscription: Option<&str>,
) -> (String, String) {
    let default = run_name(cx);
    (
        publication.unwrap_or(&default).to_string(),
        subscription.unwrap_or(&default).to_string(),
    )
}

async fn exists(
    c: &tokio_postgres::Client,
    side: &str,
    sql: &str,
    name: &str,
) -> Result<bool, StepError> {
    Ok(c.query_opt(sql, &[&name])
        .await
        .map_err(|e| pg(side, e))?
        .is_some())
}

const PUB_SQL: &str = "SELECT 1 FROM pg_publication WHERE pubname = $1";
const SUB_SQL: &str = "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())";
const SLOT_SQL: &str = "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1";

fn hold_file(cx: &StepContext) -> PathBuf {
    cx.run_dir.join(format!("{}.snapshot.hold", cx.step_id))
}

fn fmt_mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// Runs the preflight and turns its problems into one error listing them all.
async fn preflight_check(
    cx: &StepContext<'_>,
    p: &Params,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    resuming: bool,
    reset: bool,
) -> Result<preflight::Report, StepError> {
    let bin = std::env::var("PG_DUMP").unwrap_or_else(|_| "pg_dump".into());
    let sp = ConnParts::parse(&cx.providers.source_url()?, "source")?;
    let tp = ConnParts::parse(&cx.providers.target_url()?, "target")?;
    let (publication, _) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
    let routes = preflight::Routes {
        source_conninfo: sp.conninfo(),
        source_display: sp.display(),
        target_conninfo: tp.conninfo(),
        target_display: tp.display(),
        publication,
        fallback_publication: super::postgres_fallback::fallback_name(cx),
    };
    let needs = Needs {
        routes: Some(routes),
        reset,
        target_logical: p.fallback,
        // The forward slot and the change-tracking slot of postgres.verify.
        slots: 2,
        senders: 2,
        max_transaction_age_secs: p.max_transaction_age,
        resuming,
        pg_dump_major: preflight::pg_dump_major(&bin).await,
    };
    Ok(preflight::check(source, target, &needs).await?)
}

/// The target tables an earlier rehearsal filled, when `reset_target` may empty them: `None`
/// when there is nothing to reset; an error when resetting is not allowed here (production, or
/// an earlier run's fallback subscription is live on the source: the application uses the
/// target).
async fn tables_to_reset(
    cx: &StepContext<'_>,
    p: &Params,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
) -> Result<Option<Vec<String>>, StepError> {
    if !p.reset_target {
        return Ok(None);
    }
    let source_tables: Vec<String> = crate::providers::postgres::catalog::tables(source, "source")
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut filled = Vec::new();
    for t in crate::providers::postgres::catalog::tables(target, "target").await? {
        if !source_tables.contains(&t.name) {
            continue;
        }
        let any = target
            .query_opt(&format!("SELECT 1 FROM {} LIMIT 1", t.name), &[])
            .await
            .map_err(|e| pg("target", e))?;
        if any.is_some() {
            filled.push(t.name);
        }
    }
    if filled.is_empty() {
        return Ok(None);
    }
    if cx.env.tier == crate::config::Tier::Production {
        return Err(StepError::Gate(format!(
            "reset_target would empty {} table(s) of the production target; it is refused in production",
            filled.len()
        )));
    }
    let live: Vec<String> = source
        .query(
            "SELECT subname::text FROM pg_subscription WHERE subname LIKE 'cutover\\_%\\_fb'",
            &[],
        )
        .await
        .map_err(|e| pg("source", e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !live.is_empty() {
        return Err(StepError::Gate(format!(
            "the target holds the copy of an earlier run whose fallback is live (subscription {} on the legacy database): the application uses the target. Return it to the legacy database first with `cutover rollback RUN_ID` of that run (`cutover runs` lists it; its id ends in the subscription's suffix), then rehearse again",
            live.join(", ")
        )));
    }
    Ok(Some(filled))
}

fn problems_error(problems: &[String]) -> StepError {
    StepError::Check(format!(
        "preflight found {} problem(s); the copy did not start:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    ))
}

/// Rollback material: what the target held before the run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// Tables on the target before the run.
    #[serde(default)]
    target_tables: usize,
    /// The application roles already read-only on the target (a rollback leaves them so).
    #[serde(default)]
    target_frozen: Vec<String>,
}

/// One table's copy in [`Copied`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TableCopy {
    /// Chunks copied.
    chunks: u64,
    /// Rows copied.
    rows: u64,
    /// Bytes of COPY data.
    bytes: u64,
    /// The COPY format: `binary` or `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<copy::Format>,
    /// Why text, when text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    text_because: Option<String>,
}

/// What `postgres.replicate` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The publication on the source.
    publication: String,
    /// The subscription on the target.
    subscription: String,
    /// The replication slot on the source (named as the subscription).
    slot: String,
    /// The source database, `user@host:port/db` (no password).
    source: String,
    /// The target database, likewise.
    target: String,
    /// Tables replicated.
    tables: usize,
    /// The application roles kept read-only on the target until the flip.
    target_frozen_roles: Vec<String>,
    /// The slot's consistent point: the copy's snapshot, replication's start (absent when the
    /// subscription existed already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consistent_lsn: Option<String>,
    /// The copy's figures (absent when the subscription existed already).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    copied: Option<Copied>,
}

/// The figures of [`Outputs`]' copy.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Copied {
    /// Chunks the tables were split into.
    chunks: usize,
    /// Chunks this attempt copied.
    chunks_copied: usize,
    /// Chunks an earlier attempt had copied (not copied again).
    chunks_resumed: usize,
    /// Rows copied.
    rows_copied: u64,
    /// Bytes copied (COPY text).
    bytes_copied: u64,
    /// Wall time of the copy and its post-data (indexes, constraints, ANALYZE), in seconds.
    copy_seconds: f64,
    /// Post-data statements this attempt applied (index builds, ANALYZE, the finish
    /// transaction's statements, foreign key validations excluded).
    post_data_applied: usize,
    /// Foreign keys validated on the target after replication started (`table.constraint`).
    foreign_keys_validated: Vec<String>,
    /// Foreign keys left NOT VALID on the target, each with why.
    foreign_keys_not_validated: Vec<NotValidated>,
    /// Wall time of each part of this attempt, in seconds: `preflight`, `slot`,
    /// `schema_and_plan`, `copy_and_post_data`, `subscription`, `foreign_key_validation`.
    seconds: BTreeMap<String, f64>,
    /// Per table: rows, bytes and chunks copied, the COPY format (`binary` or `text`) and,
    /// for text, why (`text_because`).
    copy: BTreeMap<String, TableCopy>,
}

/// A foreign key the copy left `NOT VALID`.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct NotValidated {
    /// `table.constraint`.
    constraint: String,
    /// Why: the runbook said so, or it is `NOT VALID` on the source too.
    reason: String,
}

/// One progress line for post-data items that committed together in `secs` seconds.
fn post_data_line(items: &[Item], secs: f64) -> String {
    match items {
        [one] => format!("post-data: {} ({secs:.1} s)", one.label),
        many => format!(
            "post-data: {} statement(s) in one transaction (constraints attached, foreign keys added NOT VALID, triggers, comments) ({secs:.1} s)",
            many.len()
        ),
    }
}

/// Validates the foreign keys the copy added `NOT VALID` and has not validated yet (the
/// validate items of the progress schema), `jobs` at a time; their labels.
async fn validate_foreign_keys(
    cx: &StepContext<'_>,
    target: &tokio_postgres::Client,
    target_url: &str,
    jobs: usize,
) -> Result<Vec<String>, StepError> {
    if copy::load_state(target).await?.is_none() {
        return Ok(Vec::new());
    }
    let (preamble, items) = copy::pending_items(target).await?;
    let items: Vec<Item> = items
        .into_iter()
        .filter(|i| i.stage == Stage::Validate)
        .collect();
    if items.is_empty() {
        return Ok(Vec::new());
    }
    (cx.progress)(&format!(
        "validating {} foreign key(s) while replication runs",
        items.len()
    ));
    let mut done = Vec::new();
    copy::validate(target_url, &preamble, items, jobs, |d| {
        if let copy::Done::Items(items, secs) = d {
            (cx.progress)(&post_data_line(&items, secs));
            done.extend(items.into_iter().map(|i| i.label));
        }
    })
    .await?;
    Ok(done)
}

/// The target's foreign keys that are `NOT VALID`, with the reason.
async fn not_valid_foreign_keys(
    target: &tokio_postgres::Client,
    validate: bool,
) -> Result<Vec<NotValidated>, StepError> {
    let rows = target
        .query(
            "SELECT format('%I.%I.%I', n.nspname, t.relname, c.conname) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace WHERE c.contype = 'f' AND NOT c.convalidated ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg("target", e))?;
    Ok(rows
        .iter()
        .map(|r| NotValidated {
            constraint: r.get(0),
            reason: if validate {
                "NOT VALID on the source too".into()
            } else {
                "validate_foreign_keys: false in the runbook".into()
            },
        })
        .collect())
}

impl Outputs {
    fn new(publication: &str, subscription: &str, source: String, target: String) -> Outputs {
        Outputs {
            publication: publication.to_string(),
            subscription: subscription.to_string(),
            slot: subscription.to_string(),
            source,
            target,
            tables: 0,
            target_frozen_roles: Vec::new(),
            consistent_lsn: None,
            copied: None,
        }
    }

    fn with_summary(self, summary: String) -> Applied<Outputs> {
        Applied::new(self).summary(summary)
    }
}

#[async_trait]
impl Kind for Replicate {
    type Params = Params;
    type Outputs = Outputs;
    type Before = Before;
    type Predicted = Outputs;
    const NAME: &'static str = "postgres.replicate";
    const PURPOSE: &'static str = "Copy the legacy database to the target (exported snapshot, parallel chunked COPY, resumable) and start logical replication from the same point";
    const UNDO: &'static str = "Drop the subscription, the publication and the replication slot this run created; the copied tables stay on the target for inspection";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
    const ACTS_ON_DATABASE: bool = true;

    fn window_role(&self, _params: Option<&Literal<Params>>) -> WindowRole {
        WindowRole::Replicate
    }

    fn check(&self, l: &Literal<Params>) -> Vec<String> {
        let mut out = Vec::new();
        if l.known("jobs") && !(1..=64).contains(&l.params.jobs) {
            out.push(format!("jobs {} is not between 1 and 64", l.params.jobs));
        }
        if let Some(r) = l.params.rate_limit_mb.filter(|_| l.known("rate_limit_mb")) {
            if r <= 0.0 {
                out.push(format!("rate_limit_mb {r} must be greater than 0"));
            }
        }
        out
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<Before, Outputs>, StepError> {
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let source = cx.providers.source().await?;
        let target = cx.providers.target().await?;
        let state = copy::load_state(&target).await?;
        let reset = tables_to_reset(cx, &p, &source, &target).await?;
        let report =
            preflight_check(cx, &p, &source, &target, state.is_some(), reset.is_some()).await?;
        let sp = ConnParts::parse(&cx.providers.source_url()?, "source")?;
        let tp = ConnParts::parse(&cx.providers.target_url()?, "target")?;
        // The rights-and-routes table: this machine's reach, then each right on each side.
        let mut changes: Vec<Change> = [("source", &sp), ("target", &tp)]
            .iter()
            .map(|(side, c)| {
                Change::new(
                    Action::Check,
                    format!("route: this machine → {side} {}", c.display()),
                    format!("connected ({})", c.tls.describe()),
                )
            })
            .collect();
        changes.extend(report.rights.iter().map(|f| {
            Change::new(
                Action::Check,
                format!("right: {} role {}: {}", f.side, f.role, f.right.describe()),
                f.verdict(),
            )
        }));
        changes.extend(
            report
                .problems
                .iter()
                .map(|m| Change::new(Action::Check, "preflight", format!("WOULD FAIL: {m}"))),
        );
        if report.problems.is_empty() {
            changes.push(Change::new(Action::Check, "preflight", "wal_level, slots, senders, keys, target, extensions, versions, long transactions, rights and routes: all pass"));
        }
        if let Some(filled) = &reset {
            changes.push(Change::new(
                Action::Delete,
                format!("rows of {} table(s) on target {}", filled.len(), tp.display()),
                format!("DROP TABLE {} CASCADE (reset_target: an earlier rehearsal's copy; schema and rows copied again)", filled.join(", ")),
            ));
        }
        let subscribed = exists(&target, "target", SUB_SQL, &sub).await?;
        if subscribed {
            changes.push(Change::new(
                Action::None,
                format!("subscription {sub} on target"),
                "exists: copy done, replicating",
            ));
        } else {
            if !exists(&source, "source", PUB_SQL, &publ).await? {
                changes.push(Change::new(
                    Action::Create,
                    format!("publication {publ} on source"),
                    format!("FOR TABLE the {} tables below", report.source_tables.len()),
                ));
            }
            match &state {
                Some(s) => {
                    let (all, done) = copy::progress(&target).await?;
                    changes.push(Change::new(Action::Run, format!("copy into {}", tp.display()), format!(
                        "resume run {}'s copy under snapshot {} (slot {} at {}): {} of {} chunks copied, {} to go",
                        s.run_id, s.slot.snapshot, s.slot.slot, s.slot.consistent_lsn, done.len(), all.len(), all.len() - done.len()
                    )));
                }
                None => {
                    changes.push(Change::new(Action::Create, format!("replication slot {sub} on source"), "CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT (held until the copy ends)"));
                    changes.push(Change::new(
                        Action::Create,
                        format!("schema on target {}", tp.display()),
                        "pg_dump --section=pre-data under the snapshot",
                    ));
                    for t in &report.source_tables {
                        let chunks = copy::chunks_wanted(t, p.chunk_rows);
                        changes.push(Change::new(
                            Action::Run,
                            format!("copy {}", t.display),
                            format!(
                                "~{} rows, {} in {chunks} chunk(s)",
                                t.est_rows,
                                fmt_mb(t.bytes.max(0) as u64)
                            ),
                        ));
                    }
                }
            }
            changes.push(Change::new(
                Action::Create,
                format!("indexes and constraints on target {}", tp.display()),
                format!(
                    "pg_dump --section=post-data: each table's indexes built by the {} job(s) as soon as its rows are in, primary keys and unique constraints attached to them (USING INDEX), ANALYZE per table, foreign keys added NOT VALID{}",
                    p.jobs,
                    if p.validate_foreign_keys {
                        " and validated once replication runs (before the step ends, outside any write outage)"
                    } else {
                        " and left so (validate_foreign_keys: false)"
                    }
                ),
            ));
            changes.push(Change::new(Action::Create, format!("subscription {sub} on target"), format!(
                "PUBLICATION {publ} WITH (create_slot = false, slot_name = {sub}, copy_data = false): replication from the slot's consistent point; {} job(s){}",
                p.jobs,
                p.rate_limit_mb.map(|r| format!(", limited to {r} MB/s")).unwrap_or_default()
            )));
        }
        let predicted = Outputs {
            tables: report.source_tables.len(),
            ..Outputs::new(&publ, &sub, sp.display(), tp.display())
        };
        let app = super::postgres_freeze_writes::application_roles(
            &*cx.providers.database(crate::config::Side::Source).await?,
            None,
        )
        .await?;
        let on_target = roles::existing(&target, "target", &app).await?;
        let frozen = roles::frozen(&target, "target", &tp.dbname).await?;
        for r in on_target.iter().filter(|r| !frozen.contains(r)) {
            changes.push(Change::new(
                Action::Update,
                format!("role {r} in {} on target", tp.dbname),
                "read-only until the flip (postgres.fallback opens it): an application write to the target before then is refused",
            ));
        }
        Ok(Plan {
            changes,
            before: Before {
                target_tables: report.target_tables.len(),
                target_frozen: frozen,
            },
            predicted: Some(predicted),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
    ) -> Result<Applied<Outputs>, StepError> {
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let source_url = cx.providers.source_url()?;
        let target_url = cx.providers.target_url()?;
        let sp = ConnParts::parse(&source_url, "source")?;
        let tp = ConnParts::parse(&target_url, "target")?;
        let source = cx.providers.source().await?;
        let target = cx.providers.target().await?;
        let mut out = Outputs::new(&publ, &sub, sp.display(), tp.display());

        if exists(&target, "target", SUB_SQL, &sub).await? {
            // A crash after the subscription was created: the copy is done; foreign keys may
            // still wait for their validation.
            out.target_frozen_roles = freeze_target(cx).await?;
            let tables = crate::providers::postgres::catalog::tables(&source, "source").await?;
            out.tables = tables.len();
            validate_foreign_keys(cx, &target, &target_url, p.jobs).await?;
            let _ = target
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {STATE_SCHEMA} CASCADE"))
                .await;
            snapshot::release(&hold_file(cx));
            return Ok(out.with_summary(format!("subscription {sub} already replicating")));
        }

        let mut state = copy::load_state(&target).await?;
        // Whether post-data is ours to apply survives a restart of the copy.
        let mut carried_post_data = None;
        if let Some(s) = &state {
            let ours = s.run_id == cx.run_id;
            // Every chunk in: the rest of the work needs no snapshot.
            let (all, done) = copy::progress(&target).await?;
            let usable = s.phase != "copying"
                || all.len() == done.len()
                || snapshot::alive(&source_url, &s.slot.snapshot).await;
            if !ours || !usable {
                (cx.progress)(&format!(
                    "the copy under way on the target ({}, snapshot {}) cannot continue: {}; starting it again",
                    s.run_id,
                    s.slot.snapshot,
                    if ours { "its snapshot is gone" } else { "it belongs to another run" }
                ));
                restart_copy(cx, &source, &target, &sub).await?;
                carried_post_data = Some(s.post_data);
                state = None;
            }
        }
        if state.is_none() {
            if let Some(filled) = tables_to_reset(cx, &p, &source, &target).await? {
                (cx.progress)(&format!(
                    "reset_target: dropping {} table(s) an earlier rehearsal filled on the target; schema and rows are copied again",
                    filled.len()
                ));
                target
                    .batch_execute(&format!("DROP TABLE {} CASCADE", filled.join(", ")))
                    .await
                    .map_err(|e| pg("target", e))?;
            }
        }
        let mut clock = Instant::now();
        let mut seconds = BTreeMap::new();
        let mut lap = |name: &str| {
            seconds.insert(
                name.to_string(),
                (clock.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
            );
            clock = Instant::now();
        };
        let report = preflight_check(cx, &p, &source, &target, state.is_some(), false).await?;
        if !report.problems.is_empty() {
            return Err(problems_error(&report.problems));
        }
        lap("preflight");
        // Only now, with the target known not to be live: until the flip it takes writes from
        // replication only.
        out.target_frozen_roles = freeze_target(cx).await?;
        let tables: Vec<Table> = report.source_tables;
        out.tables = tables.len();

        let state = match state {
            Some(s) => s,
            None => {
                let list: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
                replication::create_publication(&source, "source", &publ, &list).await?;
                if exists(&source, "source", SLOT_SQL, &sub).await? {
                    source
                        .query("SELECT pg_drop_replication_slot($1)", &[&sub])
                        .await
                        .map_err(|e| pg("source", e))?;
                }
                (cx.progress)(&format!(
                    "creating replication slot {sub} with an exported snapshot"
                ));
                let slot = snapshot::create_slot(
                    &sp,
                    &sub,
                    &hold_file(cx),
                    cx.remaining().max(Duration::from_secs(60)),
                    Duration::from_secs(120),
                )
                .await?;
                lap("slot");
                let snap = crate::providers::postgres::connect(&source_url, "source").await?;
                snapshot::import(&snap, &slot.snapshot).await?;
                let chunks = copy::plan(&snap, &tables, p.chunk_rows).await?;
                // A target that already has the tables keeps its schema: pre-data and post-data
                // are applied only to a target this copy gave its schema.
                let create_schema = report.target_tables.is_empty();
                let post_data = carried_post_data.unwrap_or(create_schema);
                let pre = if create_schema {
                    snapshot::dump_section(&sp, "pre-data", Some(&slot.snapshot)).await?
                } else {
                    String::new()
                };
                // The post-data plan, read under the same snapshot as the schema.
                let (preamble, entries) = if post_data {
                    postdata::parse(
                        &snapshot::dump_section(&sp, "post-data", Some(&slot.snapshot)).await?,
                    )
                } else {
                    (String::new(), Vec::new())
                };
                let catalog = if entries.is_empty() {
                    postdata::Catalog::default()
                } else {
                    postdata::catalog(&snap, "source").await?
                };
                let names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
                let paused = copy::autovacuum_pausable(&snap, &names).await?;
                let (mut items, _) =
                    postdata::plan(&entries, &catalog, &names, p.validate_foreign_keys);
                postdata::resume_autovacuum(&mut items, &paused);
                // Schema and progress appear together or not at all.
                target
                    .batch_execute(&format!(
                        "BEGIN;\n{pre};\n{}COMMIT;",
                        copy::state_sql(
                            cx.run_id, &slot, &chunks, post_data, &preamble, &items, &paused
                        )
                    ))
                    .await
                    .map_err(|e| pg("target", e))?;
                lap("schema_and_plan");
                (cx.progress)(&format!(
                    "{}{} chunks planned under snapshot {} at {}",
                    if create_schema {
                        format!("schema (pre-data) of {} tables created; ", tables.len())
                    } else {
                        String::new()
                    },
                    chunks.len(),
                    slot.snapshot,
                    slot.consistent_lsn
                ));
                copy::State {
                    run_id: cx.run_id.to_string(),
                    slot,
                    phase: "copying".into(),
                    post_data,
                }
            }
        };
        out.consistent_lsn = Some(state.slot.consistent_lsn.clone());

        let started = Instant::now();
        let (all, done_before) = copy::progress(&target).await?;
        let same_major = catalog::major_version(&source, "source").await?
            == catalog::major_version(&target, "target").await?;
        let mut copied = 0usize;
        let mut items_applied = 0usize;
        if state.phase == "copying" {
            let pending: Vec<copy::Chunk> = all
                .iter()
                .filter(|c| {
                    !done_before
                        .iter()
                        .any(|d| d.chunk.table == c.table && d.chunk.index == c.index)
                })
                .cloned()
                .collect();
            if !done_before.is_empty() {
                (cx.progress)(&format!(
                    "resuming the copy: {} of {} chunks already copied, {} to go",
                    done_before.len(),
                    all.len(),
                    pending.len()
                ));
            }
            let (preamble, items) = copy::pending_items(&target).await?;
            let items: Vec<Item> = items
                .into_iter()
                .filter(|i| i.stage != Stage::Validate)
                .collect();
            let total_bytes: i64 = all.iter().map(|c| c.est_bytes).sum::<i64>().max(1);
            let mut bytes_so_far: i64 = done_before.iter().map(|d| d.chunk.est_bytes).sum();
            let mut n = done_before.len();
            let opts = copy::Options {
                same_major,
                jobs: p.jobs,
                rate_limit: p.rate_limit_mb.map(|m| m * 1e6),
                attempt: format!(
                    "{}@{}",
                    cx.run_id,
                    chrono::Utc::now().format("%H:%M:%S%.3f")
                ),
            };
            let work = copy::Work {
                chunks: pending,
                items,
                preamble,
            };
            // Safe points while the copy runs: every chunk commits with its progress row, so a
            // copy stopped by the panic flag or the write budget resumes (or rolls back) cleanly.
            let copying = copy::run(
                &source_url,
                &target_url,
                &state.slot.snapshot,
                &tables,
                work,
                &opts,
                |d| match d {
                    copy::Done::Chunk(d) => {
                        n += 1;
                        copied += 1;
                        bytes_so_far += d.chunk.est_bytes;
                        (cx.progress)(&format!(
                            "copied {} chunk {}/{} ({} rows, {}); {n} of {} chunks, {}%",
                            d.chunk.table,
                            d.chunk.index + 1,
                            d.chunk.of,
                            d.rows,
                            fmt_mb(d.bytes),
                            all.len(),
                            bytes_so_far * 100 / total_bytes
                        ));
                    }
                    copy::Done::Items(items, secs) => {
                        items_applied += items.len();
                        (cx.progress)(&post_data_line(&items, secs));
                    }
                },
            );
            cx.watched(copying, "the initial copy").await??;
            lap("copy_and_post_data");
            snapshot::release(&hold_file(cx));
            target
                .batch_execute("UPDATE cutover_copy.run SET phase = 'post-data'")
                .await
                .map_err(|e| pg("target", e))?;
        }
        snapshot::release(&hold_file(cx));
        let copy_seconds = started.elapsed().as_secs_f64();

        // Per-table figures, read before the progress schema goes.
        let (_, done_all) = copy::progress(&target).await?;
        let mut per_table: BTreeMap<String, TableCopy> = BTreeMap::new();
        for d in &done_all {
            let e = per_table.entry(d.chunk.table.clone()).or_default();
            e.chunks += 1;
            e.rows += d.rows;
            e.bytes += d.bytes;
        }
        for t in &tables {
            if let Some(e) = per_table.get_mut(&t.name) {
                let (format, why) = copy::format_for(t, same_major);
                e.format = Some(format);
                e.text_because = why;
            }
        }

        (cx.progress)(&format!(
            "creating subscription {sub} from slot {sub} (no second copy)"
        ));
        let sql = format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false, slot_name = {}, copy_data = false)",
            ident(&sub),
            literal(&sp.conninfo()),
            ident(&publ),
            literal(&sub)
        );
        // The statement holds the source password: report only the server's message.
        target
            .batch_execute(&sql)
            .await
            .map_err(|e| pg("target", e))?;
        lap("subscription");
        let validated = validate_foreign_keys(cx, &target, &target_url, p.jobs).await?;
        lap("foreign_key_validation");
        target
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {STATE_SCHEMA} CASCADE"))
            .await
            .map_err(|e| pg("target", e))?;
        let not_validated = not_valid_foreign_keys(&target, p.validate_foreign_keys).await?;

        let rows: u64 = done_all.iter().map(|d| d.rows).sum();
        let bytes: u64 = done_all.iter().map(|d| d.bytes).sum();
        out.copied = Some(Copied {
            chunks: all.len(),
            chunks_copied: copied,
            chunks_resumed: done_before.len(),
            rows_copied: rows,
            bytes_copied: bytes,
            copy_seconds: (copy_seconds * 1000.0).round() / 1000.0,
            post_data_applied: items_applied,
            foreign_keys_validated: validated,
            foreign_keys_not_validated: not_validated,
            seconds,
            copy: per_table,
        });
        Ok(out.with_summary(format!(
            "{} tables, {rows} rows ({}) copied in {} chunks{} with {} job(s); replicating through {sub} from {}",
            tables.len(), fmt_mb(bytes), all.len(),
            if done_before.is_empty() { String::new() } else { format!(" ({} resumed)", done_before.len()) },
            p.jobs, state.slot.consistent_lsn
        )))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        _p: &Params,
        outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let sub = outputs.subscription.clone();
        let target = cx.providers.target().await?;
        loop {
            let row = target
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE r.srsubstate NOT IN ('r','s')), \
                            (SELECT count(*) FROM pg_stat_subscription st JOIN pg_subscription s2 ON s2.oid = st.subid WHERE s2.subname = $1 AND st.pid IS NOT NULL) \
                     FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
                    &[&sub],
                )
                .await
                .map_err(|e| pg("target", e))?;
            let (total, copying, workers): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
            if copying == 0 && workers > 0 {
                // Owners and privileges as on the source: the application's roles must be able
                // to do on the target what they do on the source (their own migrations too).
                let source = cx.providers.source().await?;
                let on_source = ownership::privileges(&source, "source").await?;
                let on_target = ownership::privileges(&target, "target").await?;
                let differ = ownership::differences(&on_source, &on_target);
                if !differ.is_empty() {
                    return Err(StepError::Check(format!(
                        "owners or privileges differ from the source's on {} object(s): {}",
                        differ.len(),
                        differ
                            .iter()
                            .take(10)
                            .cloned()
                            .collect::<Vec<_>>()
                            .join("; ")
                    )));
                }
                return Ok(Evidence {
                    facts: vec![
                        ("tables_ready".into(), json!(total)),
                        ("privileges_compared".into(), json!(on_source.len())),
                    ],
                    summary: Some(format!(
                        "{total} tables replicating through {sub}; owners and privileges of {} object(s) as on the source",
                        on_source.len()
                    )),
                });
            }
            cx.check_deadline(&format!("the apply worker of subscription {sub} to start"))?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        before: &Before,
        _outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let mut lines = Vec::new();
        let dropped = |object: String, what: &str| {
            Restored::new(object.clone(), Some(&object), None, what.to_string())
        };
        snapshot::release(&hold_file(cx));
        let target = cx.providers.target().await?;
        if exists(&target, "target", SUB_SQL, &sub).await? {
            target
                .batch_execute(&format!("DROP SUBSCRIPTION {}", ident(&sub)))
                .await
                .map_err(|e| pg("target", e))?;
            lines.push(dropped(format!("subscription {sub} (target)"), "dropped"));
        }
        if copy::load_state(&target).await?.is_some() {
            let resumed = copy::resume_autovacuum(&target).await?;
            if !resumed.is_empty() {
                lines.push(dropped(
                    format!("autovacuum pause of {} table(s) (target)", resumed.len()),
                    "autovacuum_enabled reset",
                ));
            }
            target
                .batch_execute(&format!("DROP SCHEMA {STATE_SCHEMA} CASCADE"))
                .await
                .map_err(|e| pg("target", e))?;
            lines.push(dropped(
                format!("schema {STATE_SCHEMA} (target)"),
                "copy progress dropped",
            ));
        }
        let tdb = ConnParts::parse(&cx.providers.target_url()?, "target")?.dbname;
        let was = &before.target_frozen;
        let now_frozen = roles::frozen(&target, "target", &tdb).await?;
        let source = cx.providers.source().await?;
        // The roles this run froze: read-only now and not before the run.
        let ours: Vec<String> = now_frozen
            .into_iter()
            .filter(|r| !was.contains(r))
            .collect();
        roles::unfreeze(&target, "target", &tdb, &ours).await?;
        for r in &ours {
            lines.push(Restored::new(
                format!("role {r} in database {tdb} on the target"),
                Some("default_transaction_read_only=on"),
                Some("default_transaction_read_only=off"),
                "read-only → as before the run",
            ));
        }
        if exists(&source, "source", SLOT_SQL, &sub).await? {
            replication::drop_slot(&source, "source", &sub).await?;
            lines.push(dropped(
                format!("replication slot {sub} (source)"),
                "dropped",
            ));
        }
        if exists(&source, "source", PUB_SQL, &publ).await? {
            source
                .batch_execute(&format!("DROP PUBLICATION {}", ident(&publ)))
                .await
                .map_err(|e| pg("source", e))?;
            lines.push(dropped(format!("publication {publ} (source)"), "dropped"));
        }
        Ok(lines)
    }
}

/// Freezes the application's roles on the target (those of the source's writers that exist
/// there): an application write to the target before the flip is refused. Returns them.
async fn freeze_target(cx: &StepContext<'_>) -> Result<Vec<String>, StepError> {
    let source = cx.providers.database(crate::config::Side::Source).await?;
    let target = cx.providers.database(crate::config::Side::Target).await?;
    let app = super::postgres_freeze_writes::application_roles(&*source, None).await?;
    let on_target = target.existing_roles(&app).await?;
    target.freeze(&on_target).await?;
    Ok(on_target)
}

/// Throws away a copy that cannot continue: the copied rows, the progress schema and the slot.
async fn restart_copy(
    cx: &StepContext<'_>,
    source: &tokio_postgres::Client,
    target: &tokio_postgres::Client,
    slot: &str,
) -> Result<(), StepError> {
    snapshot::release(&hold_file(cx));
    let (_, done) = copy::progress(target).await?;
    let mut tables: Vec<String> = done.iter().map(|d| d.chunk.table.clone()).collect();
    tables.sort();
    tables.dedup();
    let mut sql = String::from("BEGIN;\n");
    if !tables.is_empty() {
        sql.push_str(&format!("TRUNCATE {};\n", tables.join(", ")));
    }
    sql.push_str(&format!("DROP SCHEMA {STATE_SCHEMA} CASCADE;\nCOMMIT;"));
    target
        .batch_execute(&sql)
        .await
        .map_err(|e| pg("target", e))?;
    if exists(source, "source", SLOT_SQL, slot).await? {
        replication::drop_slot(source, "source", slot).await?;
    }
    Ok(())
}
