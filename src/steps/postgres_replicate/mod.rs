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
//! 5. The post-data section (indexes, constraints), then replication from the slot's consistent
//!    point without copying again, by one of two means chosen per run (`replication: auto |
//!    native | relay`) and said in the plan, the outputs and the audit:
//!    - `native`: a subscription on the target (`create_slot = false, copy_data = false`). Needs
//!      the target's admin's right to `CREATE SUBSCRIPTION` and a route from the target to the
//!      legacy server (RDS's egress let in by the legacy host's firewall).
//!    - `relay`: `cutover relay` as a Deployment in the target cluster ([`super::relay`]) streams
//!      the slot and applies on the target as its admin. Needs neither.
//!    - `auto` (the default): native where the preflight's trial of that subscription passed
//!      (rolled back), else relay, with the reason.
//!
//! Rollback drops the subscription (or deletes the relay), the slot, the publication and the
//! progress schema and releases the snapshot. The target's copied rows stay: the target is not live before the flip,
//! and after it they may hold acknowledged writes.

use super::relay::{self, Means, Replication};
use super::{
    Action, Applied, Change, Evidence, Kind, Literal, Plan, Restored, StepContext, StepError,
    WindowRole,
};
use crate::config::Side;
use crate::providers::postgres::catalog::Table;
use crate::providers::postgres::copy;
use crate::providers::postgres::database::{Database, Subscription};
use crate::providers::postgres::initial_copy::{InitialCopy, Prepare};
use crate::providers::postgres::preflight::Report;
use crate::providers::postgres::rights::{Outcome, Right};
use crate::providers::postgres::Server;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod job;
mod outputs;
mod phases;
pub use outputs::{Before, Copied, Outputs, TableCopy};
use phases::{
    not_valid_foreign_keys, preflight_check, problems_error, run_copy, tables_to_reset,
    validate_foreign_keys,
};

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
    /// Where the copy's workers run (default: in the run's own process, `jobs` of them).
    #[serde(default)]
    workers: Workers,
    /// Tables with a key and more rows than this (planner estimate) are copied in key-range chunks of about this many rows, each committed on its own (default 1000000: fewer, larger chunks measured faster than 250000 on a composite key, docs/BENCHMARKS.md; smaller chunks redo less after a kill).
    #[serde(default = "default_chunk_rows")]
    chunk_rows: i64,
    /// Limit of the whole copy in MB/s (10^6 bytes of COPY text per second; default none).
    #[serde(default)]
    rate_limit_mb: Option<f64>,
    /// A source transaction open longer than this many seconds fails the preflight (default 300).
    #[serde(default = "default_max_transaction_age")]
    max_transaction_age: i64,
    /// Non-production only: when the target's tables hold rows of an earlier rehearsal's copy (and no fallback subscription of a run is live on the source), drop every table of the source's on the target, empty ones included (their owned sequences with them), and copy schema and rows again (default false); e.g. "{{ env.tier != 'production' }}".
    #[serde(default, deserialize_with = "super::rendered::flag")]
    reset_target: bool,
    /// The runbook keeps a fallback replication (postgres.fallback): the target must have wal_level = logical (default true).
    #[serde(default = "yes")]
    fallback: bool,
    /// Validate every foreign key after replication has started (a scan that blocks no writes, never inside the write outage); false leaves them NOT VALID on the target, recorded with the reason (default true).
    #[serde(default = "yes")]
    validate_foreign_keys: bool,
    /// How the target receives the legacy database's changes after the copy: true or auto (default): a subscription on the target where its admin may subscribe to the legacy database and the target reaches it (tried in the preflight, rolled back), else relay; native; relay: cutover relay as a Deployment in the target cluster.
    #[serde(default = "auto")]
    replication: Replication,
    /// WAL the forward slot on the legacy database may retain before its relay (or, with a subscription, its WAL guard) warns (default 10GB).
    #[serde(default = "relay::default_budget")]
    wal_budget: String,
    /// WAL the forward slot on the legacy database may retain before its relay or WAL guard stops replication and drops the slot, so the legacy disk does not fill (default 100GB).
    #[serde(default = "relay::default_limit")]
    wal_limit: String,
    /// The container image of the relay or WAL guard (default cutover:<this version>).
    #[serde(default)]
    relay_image: Option<String>,
    /// The target cluster's namespace of the relay's or WAL guard's Deployment and Secret, created when missing (default cutover).
    #[serde(default = "relay::default_namespace")]
    relay_namespace: String,
}

/// Where the initial copy's workers run (`with: workers:`).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Workers {
    /// in_process (default): `jobs` workers inside the run; processes: `count` local `cutover copy-worker` processes claiming chunks from the plan on the target (a lease each; a killed worker's chunk is claimed again once its lease runs out); job: a Kubernetes Indexed Job of `count` such workers in the target cluster (namespace relay_namespace; image and service account from the environment's eks section), deleted when the copy ends and by rollback. Post-data is applied by the run in every case.
    #[serde(default)]
    run: WorkersRun,
    /// Worker processes at once (with run: processes; default 4, at most 64).
    #[serde(default = "default_worker_count")]
    count: usize,
    /// Seconds a worker's claim on a chunk holds without renewal (default 30, at least 3).
    #[serde(default = "default_lease")]
    lease: u64,
    /// Failed worker processes started again in all before the copy fails, as a Kubernetes Job's backoffLimit (default 6).
    #[serde(default = "default_backoff_limit")]
    backoff_limit: u32,
}

impl Default for Workers {
    fn default() -> Workers {
        Workers {
            run: WorkersRun::InProcess,
            count: default_worker_count(),
            lease: default_lease(),
            backoff_limit: default_backoff_limit(),
        }
    }
}

/// Where the copy's workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkersRun {
    /// `jobs` tasks inside the run's process.
    #[default]
    InProcess,
    /// `count` local `cutover copy-worker` processes.
    Processes,
    /// An Indexed Job of `count` `cutover copy-worker` pods in the target cluster.
    Job,
}

fn default_worker_count() -> usize {
    4
}
fn default_lease() -> u64 {
    30
}
fn default_backoff_limit() -> u32 {
    6
}

fn auto() -> Replication {
    Replication::Auto
}

impl Params {
    /// Where the forward relay runs.
    fn relay_settings(&self) -> relay::Settings {
        relay::Settings {
            namespace: self.relay_namespace.clone(),
            image: self.relay_image.clone(),
            wal_budget: self.wal_budget.clone(),
            wal_limit: self.wal_limit.clone(),
        }
    }

    /// The copy Job of slot `slot` (`workers: { run: job }`).
    fn copy_job(&self, cx: &StepContext, slot: &str) -> job::CopyJob {
        job::copy_job(
            &cx.env.eks,
            &self.relay_namespace,
            slot,
            self.workers.count,
            self.workers.backoff_limit,
            self.workers.lease,
            self.rate_limit_mb.map(|m| m / self.workers.count as f64),
        )
    }

    /// The forward relay of slot `slot` publishing `publication` on the legacy database.
    fn relay(&self, publication: &str, slot: &str) -> relay::Relay {
        relay::relay(&self.relay_settings(), slot, publication, Side::Source)
    }
}

/// The forward means for `p.replication`, from the preflight's trial of the target's
/// subscription to the source, and why.
///
/// # Errors
/// [`StepError::Check`] when `native` is required and the trial failed.
fn forward_means(p: &Params, report: &Report) -> Result<(Means, String), StepError> {
    let tried = report
        .rights
        .iter()
        .find(|f| f.side == Server::Target && matches!(f.right, Right::Subscribe { .. }))
        .map(|f| f.outcome.clone())
        .unwrap_or_else(|| Outcome::Granted("not tried".into()));
    relay::choose(
        p.replication,
        &tried,
        "the target's admin",
        "the legacy database",
    )?
    .ok_or_else(|| {
        StepError::Check("replication: false: the forward replication cannot be left out".into())
    })
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

/// The step's handles on both servers and on the copy between them.
struct Servers {
    source: Arc<dyn Database>,
    target: Arc<dyn Database>,
    copy: Arc<dyn InitialCopy>,
}

async fn servers(cx: &StepContext<'_>) -> Result<Servers, StepError> {
    Ok(Servers {
        source: cx.providers.database(Side::Source).await?,
        target: cx.providers.database(Side::Target).await?,
        copy: cx.providers.initial_copy(hold_file(cx)).await?,
    })
}

fn hold_file(cx: &StepContext) -> PathBuf {
    cx.run_dir.join(format!("{}.snapshot.hold", cx.step_id))
}

fn fmt_mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
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
        if l.known("workers") && !(1..=64).contains(&l.params.workers.count) {
            out.push(format!(
                "workers.count {} is not between 1 and 64",
                l.params.workers.count
            ));
        }
        if l.known("workers") && l.params.workers.lease < 3 {
            out.push(format!(
                "workers.lease {} s is below 3 s (a lease is renewed every third of it)",
                l.params.workers.lease
            ));
        }
        if l.known("replication") && l.params.replication == Replication::Off {
            out.push("replication: false: the forward replication cannot be left out (it keeps the target current until the flip); choose auto, native or relay".into());
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
        let s = servers(cx).await?;
        let state = s.copy.state().await?;
        let reset = tables_to_reset(cx, p, &s).await?;
        let report = preflight_check(cx, p, &*s.copy, state.is_some(), reset.is_some()).await?;
        let (sd, td) = (s.copy.display(Side::Source), s.copy.display(Side::Target));
        // The rights-and-routes table: this machine's reach, then each right on each side.
        let mut changes: Vec<Change> = [Side::Source, Side::Target]
            .iter()
            .map(|side| {
                Change::new(
                    Action::Check,
                    format!(
                        "route: this machine → {} {}",
                        side.as_str(),
                        s.copy.display(*side)
                    ),
                    format!("connected ({})", s.copy.tls(*side)),
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
                format!("{} table(s) on target {td}", filled.len()),
                format!("DROP TABLE {} CASCADE (reset_target: an earlier rehearsal's copy; schema and rows copied again)", filled.join(", ")),
            ));
        }
        let means = forward_means(p, &report).ok();
        let relay = p.relay(&publ, &sub);
        if s.target.has_subscription(&sub).await? {
            changes.push(Change::new(
                Action::None,
                format!("subscription {sub} on target"),
                "exists: copy done, replicating",
            ));
        } else if means.as_ref().is_some_and(|m| m.0 == Means::Relay)
            && state.is_none()
            && relay::exists(cx, &relay).await?
        {
            changes.push(Change::new(
                Action::None,
                format!(
                    "Deployment {}/{} in the target cluster",
                    relay.namespace, relay.name
                ),
                format!("exists: copy done, relaying slot {sub} to the target"),
            ));
        } else {
            if !s.source.has_publication(&publ).await? {
                changes.push(Change::new(
                    Action::Create,
                    format!("publication {publ} on source"),
                    format!("FOR TABLE the {} tables below", report.source_tables.len()),
                ));
            }
            match &state {
                Some(st) => {
                    let (all, done) = s.copy.progress().await?;
                    changes.push(Change::new(Action::Run, format!("copy into {td}"), format!(
                        "resume run {}'s copy under snapshot {} (slot {} at {}): {} of {} chunks copied, {} to go",
                        st.run_id, st.slot.snapshot, st.slot.slot, st.slot.consistent_lsn, done.len(), all.len(), all.len() - done.len()
                    )));
                }
                None => {
                    changes.push(Change::new(Action::Create, format!("replication slot {sub} on source"), "CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT (held until the copy ends)"));
                    changes.push(Change::new(
                        Action::Create,
                        format!("schema on target {td}"),
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
            if p.workers.run == WorkersRun::Job {
                let j = p.copy_job(cx, &sub);
                let (line, keys) = job::describe(&j, &s.source.conninfo(), &s.target.conninfo());
                changes.push(Change::new(
                    Action::Create,
                    format!("Secret {}/{} in the target cluster", j.namespace, j.name),
                    keys,
                ));
                changes.push(
                    Change::new(
                        Action::Create,
                        format!("Job {}/{} in the target cluster", j.namespace, j.name),
                        line,
                    )
                    .with_document(job::manifest(&j, cx.run_id)),
                );
            }
            changes.push(Change::new(
                Action::Create,
                format!("indexes and constraints on target {td}"),
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
            if let Some((m, why)) = &means {
                changes.push(Change::new(
                    Action::Check,
                    "forward replication",
                    format!("{} ({why})", m.as_str()),
                ));
            }
            match means.as_ref().map(|m| m.0) {
                Some(Means::Relay) => {
                    let (deploy, keys) =
                        relay::describe(&relay, &s.source.conninfo(), &s.target.conninfo());
                    changes.push(Change::new(
                        Action::Create,
                        format!(
                            "Secret {}/{} in the target cluster",
                            relay.namespace, relay.name
                        ),
                        keys,
                    ));
                    changes.push(Change::new(
                        Action::Create,
                        format!("Deployment {}/{} in the target cluster", relay.namespace, relay.name),
                        format!("{deploy}: every change of the legacy database from the slot's consistent point reaches the target through the relay (no second copy)"),
                    ));
                }
                _ => {
                    changes.push(Change::new(Action::Create, format!("subscription {sub} on target"), format!(
                        "PUBLICATION {publ} WITH (create_slot = false, slot_name = {sub}, copy_data = false): replication from the slot's consistent point; {} job(s){}",
                        p.jobs,
                        p.rate_limit_mb.map(|r| format!(", limited to {r} MB/s")).unwrap_or_default()
                    )));
                    let g = relay::guard(&p.relay_settings(), &sub, Side::Source);
                    changes.push(Change::new(
                        Action::Create,
                        format!("Deployment and Secret {}/{} in the target cluster", g.namespace, g.name),
                        format!("the WAL guard of slot {sub} on the legacy database: warns past {}, drops the slot past {} (image {})", p.wal_budget, p.wal_limit, g.image),
                    ));
                }
            }
        }
        let predicted = Outputs {
            tables: report.source_tables.len(),
            ..Outputs::new(&publ, &sub, sd, td)
        };
        let app = super::postgres_freeze_writes::application_roles(&*s.source, None).await?;
        let on_target = s.target.existing_roles(&app).await?;
        let frozen = s.target.frozen().await?;
        let tdb = s.target.name();
        for r in on_target.iter().filter(|r| !frozen.contains(r)) {
            changes.push(Change::new(
                Action::Update,
                format!("role {r} in {tdb} on target"),
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
        let s = servers(cx).await?;
        let mut out = Outputs::new(
            &publ,
            &sub,
            s.copy.display(Side::Source),
            s.copy.display(Side::Target),
        );

        let mut state = s.copy.state().await?;
        // A crash after replication started: the subscription exists, or the relay runs on the
        // slot with the copy's progress dropped. The copy is done; foreign keys may still wait
        // for their validation.
        let live = if s.target.has_subscription(&sub).await? {
            Some(Means::Native)
        } else if state.is_none()
            && p.replication != Replication::Native
            && s.source.slot_exists(&sub).await?
            && relay::exists(cx, &p.relay(&publ, &sub)).await?
        {
            Some(Means::Relay)
        } else {
            None
        };
        if let Some(means) = live {
            out.target_frozen_roles = freeze_target(&s).await?;
            out.tables = s.source.table_names().await?.len();
            out.means = Some(means);
            let summary = match means {
                Means::Native => {
                    out.guard = Some(start_guard(cx, p, &s, &sub).await?);
                    format!("subscription {sub} already replicating")
                }
                Means::Relay => {
                    let r = p.relay(&publ, &sub);
                    out.relay = Some(format!("{}/{}", r.namespace, r.name));
                    format!(
                        "the relay {}/{} already replicates slot {sub}",
                        r.namespace, r.name
                    )
                }
            };
            validate_foreign_keys(cx, &*s.copy, p.jobs).await?;
            let _ = s.copy.drop_progress().await;
            s.copy.release_snapshot();
            return Ok(out.with_summary(summary));
        }
        // Whether post-data is ours to apply survives a restart of the copy.
        let mut carried_post_data = None;
        if let Some(st) = &state {
            let ours = st.run_id == cx.run_id;
            // Every chunk in: the rest of the work needs no snapshot.
            let (all, done) = s.copy.progress().await?;
            let usable = st.phase != "copying"
                || all.len() == done.len()
                || s.copy.snapshot_alive(&st.slot.snapshot).await;
            if !ours || !usable {
                (cx.progress)(&format!(
                    "the copy under way on the target ({}, snapshot {}) cannot continue: {}; starting it again",
                    st.run_id,
                    st.slot.snapshot,
                    if ours { "its snapshot is gone" } else { "it belongs to another run" }
                ));
                restart_copy(&s, &sub).await?;
                carried_post_data = Some(st.post_data);
                state = None;
            }
        }
        if state.is_none() {
            if let Some(filled) = tables_to_reset(cx, p, &s).await? {
                (cx.progress)(&format!(
                    "reset_target: dropping the {} table(s) of an earlier rehearsal's copy on the target; schema and rows are copied again",
                    filled.len()
                ));
                s.copy.drop_tables(&filled).await?;
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
        let report = preflight_check(cx, p, &*s.copy, state.is_some(), false).await?;
        if !report.problems.is_empty() {
            return Err(problems_error(&report.problems));
        }
        let (means, means_reason) = forward_means(p, &report)?;
        lap("preflight");
        // Only now, with the target known not to be live: until the flip it takes writes from
        // replication only.
        out.target_frozen_roles = freeze_target(&s).await?;
        let tables: Vec<Table> = report.source_tables;
        out.tables = tables.len();

        let state = match state {
            Some(st) => st,
            None => {
                let list: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
                s.source.create_publication(&publ, &list).await?;
                s.source.drop_slot(&sub).await?;
                (cx.progress)(&format!(
                    "creating replication slot {sub} with an exported snapshot"
                ));
                let slot = s
                    .copy
                    .export_snapshot(
                        &sub,
                        cx.remaining().max(Duration::from_secs(60)),
                        Duration::from_secs(120),
                    )
                    .await?;
                lap("slot");
                // A target that already has the tables keeps its schema: pre-data and post-data
                // are applied only to a target this copy gave its schema.
                let create_schema = report.target_tables.is_empty();
                let post_data = carried_post_data.unwrap_or(create_schema);
                let chunks = s
                    .copy
                    .prepare(Prepare {
                        run_id: cx.run_id,
                        slot: &slot,
                        tables: &tables,
                        chunk_rows: p.chunk_rows,
                        create_schema,
                        post_data,
                        validate_foreign_keys: p.validate_foreign_keys,
                    })
                    .await?;
                lap("schema_and_plan");
                (cx.progress)(&format!(
                    "{}{chunks} chunks planned under snapshot {} at {}",
                    if create_schema {
                        format!("schema (pre-data) of {} tables created; ", tables.len())
                    } else {
                        String::new()
                    },
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
        let run = run_copy(cx, p, &s, &state, &tables).await?;
        if run.ran {
            lap("copy_and_post_data");
        }
        s.copy.release_snapshot();
        let copy_seconds = started.elapsed().as_secs_f64();

        // Per-table figures, read before the progress schema goes.
        let (_, done_all) = s.copy.progress().await?;
        let mut per_table: BTreeMap<String, TableCopy> = BTreeMap::new();
        for d in &done_all {
            let e = per_table.entry(d.chunk.table.clone()).or_default();
            e.chunks += 1;
            e.rows += d.rows;
            e.bytes += d.bytes;
        }
        for t in &tables {
            if let Some(e) = per_table.get_mut(&t.name) {
                let (format, why) = copy::format_for(t, run.same_major);
                e.format = Some(format);
                e.text_because = why;
            }
        }

        match means {
            Means::Native => {
                (cx.progress)(&format!(
                    "creating subscription {sub} from slot {sub} (no second copy; {means_reason})"
                ));
                let subscription = Subscription {
                    name: sub.clone(),
                    publication: publ.clone(),
                    origin_none: false,
                };
                s.target.subscribe(&subscription, &*s.source).await?;
                out.guard = Some(start_guard(cx, p, &s, &sub).await?);
            }
            Means::Relay => {
                let r = p.relay(&publ, &sub);
                (cx.progress)(&format!(
                    "starting the relay {}/{} of slot {sub} in the target cluster (no second copy; {means_reason})",
                    r.namespace, r.name
                ));
                start_relay(cx, &s, &r, &sub).await?;
                out.relay = Some(format!("{}/{}", r.namespace, r.name));
            }
        }
        out.means = Some(means);
        out.means_reason = Some(means_reason.clone());
        lap("subscription");
        let validated = validate_foreign_keys(cx, &*s.copy, p.jobs).await?;
        lap("foreign_key_validation");
        s.copy.drop_progress().await?;
        let not_validated = not_valid_foreign_keys(&*s.copy, p.validate_foreign_keys).await?;

        let rows: u64 = done_all.iter().map(|d| d.rows).sum();
        let bytes: u64 = done_all.iter().map(|d| d.bytes).sum();
        out.copied = Some(Copied {
            chunks: run.all.len(),
            chunks_copied: run.copied,
            chunks_resumed: run.done_before,
            rows_copied: rows,
            bytes_copied: bytes,
            copy_seconds: (copy_seconds * 1000.0).round() / 1000.0,
            post_data_applied: run.items_applied,
            foreign_keys_validated: validated,
            foreign_keys_not_validated: not_validated,
            seconds,
            copy: per_table,
        });
        let through = match &out.relay {
            Some(r) => format!("the relay {r} of slot {sub}"),
            None => format!("subscription {sub}"),
        };
        Ok(out.with_summary(format!(
            "{} tables, {rows} rows ({}) copied in {} chunks{} with {} job(s); replicating through {through} from {} ({means_reason})",
            tables.len(), fmt_mb(bytes), run.all.len(),
            if run.done_before == 0 { String::new() } else { format!(" ({} resumed)", run.done_before) },
            p.jobs, state.slot.consistent_lsn
        )))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        p: &Params,
        outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let sub = outputs.subscription.clone();
        let copy = cx.providers.initial_copy(hold_file(cx)).await?;
        if outputs.means == Some(Means::Relay) {
            let s = servers(cx).await?;
            wait_attached(cx, &s, &sub, &p.relay_namespace).await?;
            let (compared, differ) = copy.privilege_differences().await?;
            privileges_as_on_source(&differ)?;
            return Ok(Evidence {
                facts: vec![
                    ("tables_ready".into(), json!(outputs.tables)),
                    ("means".into(), json!("relay")),
                    ("relay".into(), json!(outputs.relay)),
                    ("privileges_compared".into(), json!(compared)),
                ],
                summary: Some(format!(
                    "{} tables replicating through the relay {} of slot {sub}; owners and privileges of {compared} object(s) as on the source",
                    outputs.tables,
                    outputs.relay.as_deref().unwrap_or_default()
                )),
            });
        }
        loop {
            let st = copy.subscription_state(&sub).await?;
            if st.syncing == 0 && st.workers > 0 {
                // Owners and privileges as on the source: the application's roles must be able
                // to do on the target what they do on the source (their own migrations too).
                let (compared, differ) = copy.privilege_differences().await?;
                privileges_as_on_source(&differ)?;
                return Ok(Evidence {
                    facts: vec![
                        ("tables_ready".into(), json!(st.tables)),
                        ("privileges_compared".into(), json!(compared)),
                    ],
                    summary: Some(format!(
                        "{} tables replicating through {sub}; owners and privileges of {compared} object(s) as on the source",
                        st.tables
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
        outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let mut lines = Vec::new();
        let dropped = |object: String, what: &str| {
            Restored::new(object.clone(), Some(&object), None, what.to_string())
        };
        let s = servers(cx).await?;
        s.copy.release_snapshot();
        if s.target.drop_subscription(&sub).await? {
            lines.push(dropped(format!("subscription {sub} (target)"), "dropped"));
        }
        let relayed = outputs.map_or(p.replication != Replication::Native, |o| {
            o.means == Some(Means::Relay)
        });
        let j = p.copy_job(cx, &sub);
        if job::delete(cx, &j).await? {
            lines.push(dropped(
                format!("copy Job {}/{} (target cluster)", j.namespace, j.name),
                "Job (with its pods) and Secret deleted",
            ));
        }
        let g = relay::guard(&p.relay_settings(), &sub, Side::Source);
        let mut deployments = vec![(g, "WAL guard")];
        if relayed {
            deployments.push((p.relay(&publ, &sub), "relay"));
        }
        for (d, what) in deployments {
            if relay::delete(cx, &d).await? {
                lines.push(dropped(
                    format!("{what} {}/{} (target cluster)", d.namespace, d.name),
                    "Deployment and Secret deleted",
                ));
            }
        }
        s.target.forget_relay(&sub).await?;
        if s.copy.state().await?.is_some() {
            let resumed = s.copy.resume_autovacuum().await?;
            if !resumed.is_empty() {
                lines.push(dropped(
                    format!("autovacuum pause of {} table(s) (target)", resumed.len()),
                    "autovacuum_enabled reset",
                ));
            }
            s.copy.drop_progress().await?;
            lines.push(dropped(
                format!(
                    "schema {} (target)",
                    crate::providers::postgres::catalog::STATE_SCHEMA
                ),
                "copy progress dropped",
            ));
        }
        let tdb = s.target.name().to_string();
        let was = &before.target_frozen;
        let now_frozen = s.target.frozen().await?;
        // The roles this run froze: read-only now and not before the run.
        let ours: Vec<String> = now_frozen
            .into_iter()
            .filter(|r| !was.contains(r))
            .collect();
        s.target.unfreeze(&ours).await?;
        for r in &ours {
            lines.push(Restored::new(
                format!("role {r} in database {tdb} on the target"),
                Some("default_transaction_read_only=on"),
                Some("default_transaction_read_only=off"),
                "read-only → as before the run",
            ));
        }
        if s.source.drop_slot(&sub).await? {
            lines.push(dropped(
                format!("replication slot {sub} (source)"),
                "dropped",
            ));
        }
        if s.source.drop_publication(&publ).await? {
            lines.push(dropped(format!("publication {publ} (source)"), "dropped"));
        }
        Ok(lines)
    }
}

/// Freezes the application's roles on the target (those of the source's writers that exist
/// there): an application write to the target before the flip is refused. Returns them.
async fn freeze_target(s: &Servers) -> Result<Vec<String>, StepError> {
    let app = super::postgres_freeze_writes::application_roles(&*s.source, None).await?;
    let on_target = s.target.existing_roles(&app).await?;
    s.target.freeze(&on_target).await?;
    Ok(on_target)
}

/// Applies the forward relay `r` and waits until its replication connection holds slot `sub`
/// on the legacy database (never past the step's deadline; at once when the relay recorded
/// that it ended).
async fn start_relay(
    cx: &StepContext<'_>,
    s: &Servers,
    r: &relay::Relay,
    sub: &str,
) -> Result<(), StepError> {
    relay::apply(cx, r, &s.source.conninfo(), &s.target.conninfo()).await?;
    wait_attached(cx, s, sub, &r.namespace).await
}

/// Applies the WAL guard of the forward slot `sub`, which the target's subscription consumes;
/// returns its `namespace/name`.
async fn start_guard(
    cx: &StepContext<'_>,
    p: &Params,
    s: &Servers,
    sub: &str,
) -> Result<String, StepError> {
    let g = relay::guard(&p.relay_settings(), sub, Side::Source);
    relay::apply(cx, &g, &s.source.conninfo(), &s.target.conninfo()).await?;
    (cx.progress)(&format!(
        "WAL guard {}/{} watches slot {sub} on the legacy database (warns past {}, drops the slot past {})",
        g.namespace, g.name, p.wal_budget, p.wal_limit
    ));
    Ok(format!("{}/{}", g.namespace, g.name))
}

/// Waits until a consumer holds slot `sub` on the legacy database (the relay attached).
async fn wait_attached(
    cx: &StepContext<'_>,
    s: &Servers,
    sub: &str,
    namespace: &str,
) -> Result<(), StepError> {
    let hint = format!(
        "its log is the pod's: kubectl logs -n {namespace} deploy/{}",
        relay::name(sub)
    );
    while !s.source.slot_active(sub).await? {
        super::postgres_wait_lag::relay_alive(&*s.target, sub, "the slot's consistent point")
            .await?;
        cx.check_deadline(&format!("the relay to attach to slot {sub} ({hint})"))?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Fails when the target's owners or privileges differ from the source's (`differ`, one
/// line per object; the first ten are named).
fn privileges_as_on_source(differ: &[String]) -> Result<(), StepError> {
    if differ.is_empty() {
        return Ok(());
    }
    Err(StepError::Check(format!(
        "owners or privileges differ from the source's on {} object(s): {}",
        differ.len(),
        differ
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    )))
}

/// Throws away a copy that cannot continue: the copied rows, the progress schema and the slot.
async fn restart_copy(s: &Servers, slot: &str) -> Result<(), StepError> {
    s.copy.release_snapshot();
    s.copy.discard().await?;
    s.source.drop_slot(slot).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::kube::FakeKube;
    use crate::steps::testing::postgres::FakePostgres;
    use crate::steps::testing::Harness;

    /// A source with `public.orders` (3 rows) and `public.users` (2 rows) written by role
    /// `app`; an empty target where `app` exists.
    fn setup() -> (Harness, FakePostgres) {
        let (h, pg, _) = setup_with_kube();
        (h, pg)
    }

    /// [`setup`], with the target cluster's API.
    fn setup_with_kube() -> (Harness, FakePostgres, FakeKube) {
        let pg = FakePostgres::new("shop_staging", "shop_staging");
        pg.server(Side::Source, |s| {
            s.tables = vec!["public.orders".into(), "public.users".into()];
            s.writers = vec!["app".into()];
            s.roles.insert("app".into());
        });
        pg.set_rows(
            Side::Source,
            "public.orders",
            &[(1, "a"), (2, "b"), (3, "c")],
        );
        pg.set_rows(Side::Source, "public.users", &[(1, "ann"), (2, "bob")]);
        pg.server(Side::Target, |s| {
            s.roles.insert("app".into());
        });
        let fake = pg.clone();
        let kube = FakeKube::default();
        let api = kube.clone();
        (
            Harness::new(|p| fake.install(p).with_kube(api.client())),
            pg,
            kube,
        )
    }

    fn params() -> Params {
        Params {
            publication: None,
            subscription: None,
            jobs: 2,
            workers: Workers::default(),
            chunk_rows: default_chunk_rows(),
            rate_limit_mb: None,
            max_transaction_age: 300,
            reset_target: false,
            fallback: true,
            validate_foreign_keys: true,
            replication: Replication::Auto,
            wal_budget: relay::default_budget(),
            wal_limit: relay::default_limit(),
            relay_image: None,
            relay_namespace: relay::default_namespace(),
        }
    }

    fn rows(pg: &FakePostgres, side: Side) -> crate::steps::testing::postgres::Rows {
        pg.server(side, |s| s.rows.clone())
    }

    #[tokio::test]
    async fn copies_subscribes_once_and_rollback_drops_what_it_made_keeping_the_rows() {
        let (h, pg) = setup();
        let cx = h.cx();
        let p = params();
        let sub = run_name(&cx);
        let plan = Replicate.plan(&cx, &p).await.unwrap();
        let targets: Vec<&str> = plan.changes.iter().map(|c| c.target.as_str()).collect();
        for want in [
            format!("publication {sub} on source"),
            format!("replication slot {sub} on source"),
            "copy public.orders".to_string(),
            format!("subscription {sub} on target"),
            format!(
                "Deployment and Secret cutover/{} in the target cluster",
                relay::guard_name(&sub)
            ),
            "role app in shop_staging on target".to_string(),
        ] {
            assert!(targets.contains(&want.as_str()), "{want} in {targets:?}");
        }
        assert_eq!(plan.before.target_tables, 0);

        let first = Replicate.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(first.outputs.means, Some(Means::Native));
        assert_eq!(
            first.outputs.guard.as_deref(),
            Some(&*format!("cutover/{}", relay::guard_name(&sub)))
        );
        let copied = first.outputs.copied.as_ref().unwrap();
        assert_eq!(
            (copied.chunks, copied.chunks_copied, copied.rows_copied),
            (2, 2, 5)
        );
        assert_eq!(first.outputs.target_frozen_roles, vec!["app"]);
        assert_eq!(rows(&pg, Side::Target), rows(&pg, Side::Source));
        pg.server(Side::Target, |s| {
            assert!(s.subscriptions.contains(&sub));
            assert!(s.frozen.contains("app"));
        });
        assert!(pg.copy_state(|c| c.progress.is_none() && c.snapshot.is_none()));
        // Replication runs from the slot's consistent point.
        pg.write_row(Side::Source, "public.orders", 4, Some("d"));
        assert_eq!(rows(&pg, Side::Target), rows(&pg, Side::Source));

        // A re-run after a crash finds the subscription: no second copy.
        let again = Replicate.apply(&cx, &p, &plan.before).await.unwrap();
        assert!(again.outputs.copied.is_none());
        assert_eq!(
            again.summary.as_deref(),
            Some(&*format!("subscription {sub} already replicating"))
        );
        let evidence = Replicate.verify(&cx, &p, &first.outputs).await.unwrap();
        assert_eq!(evidence.facts[0], ("tables_ready".to_string(), json!(2)));

        let restored = Replicate
            .rollback(&cx, &p, &plan.before, Some(&first.outputs))
            .await
            .unwrap();
        let objects: Vec<&str> = restored.iter().map(|r| r.object.as_str()).collect();
        assert_eq!(
            objects,
            vec![
                // Its slot on the source went with it.
                &*format!("subscription {sub} (target)"),
                &*format!(
                    "WAL guard cutover/{} (target cluster)",
                    relay::guard_name(&sub)
                ),
                "role app in database shop_staging on the target",
                &*format!("publication {sub} (source)"),
            ]
        );
        assert_eq!(
            rows(&pg, Side::Target).len(),
            2,
            "the copied rows stay for inspection"
        );
        pg.server(Side::Source, |s| {
            assert!(s.slots.is_empty() && s.publications.is_empty())
        });
    }

    #[tokio::test]
    async fn a_copy_killed_after_a_chunk_resumes_at_the_next_one() {
        let (h, pg) = setup();
        let cx = h.cx();
        let p = params();
        pg.copy_state(|c| c.fail_after = Some(1));
        let err = Replicate
            .apply(&cx, &p, &Before::default())
            .await
            .err()
            .expect("the copy's connection was lost");
        assert!(
            err.to_string().contains("server closed the connection"),
            "{err}"
        );
        let plan = Replicate.plan(&cx, &p).await.unwrap();
        assert!(plan
            .changes
            .iter()
            .any(|c| c.detail.contains("1 of 2 chunks copied, 1 to go")));

        let resumed = Replicate.apply(&cx, &p, &Before::default()).await.unwrap();
        let copied = resumed.outputs.copied.as_ref().unwrap();
        assert_eq!((copied.chunks_resumed, copied.chunks_copied), (1, 1));
        assert_eq!(rows(&pg, Side::Target), rows(&pg, Side::Source));
        assert!(h
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "resuming the copy: 1 of 2 chunks already copied, 1 to go"));
    }

    #[tokio::test]
    async fn worker_processes_copy_what_the_run_left_and_the_run_applies_the_rest() {
        let (h, pg) = setup();
        let cx = h.cx();
        let mut p = params();
        p.workers = Workers {
            run: WorkersRun::Processes,
            count: 3,
            ..Workers::default()
        };
        // A first run's copy lost its connection after one chunk: the workers take the rest.
        pg.copy_state(|c| c.fail_after = Some(1));
        assert!(Replicate.apply(&cx, &p, &Before::default()).await.is_err());
        let resumed = Replicate.apply(&cx, &p, &Before::default()).await.unwrap();
        let copied = resumed.outputs.copied.as_ref().unwrap();
        assert_eq!((copied.chunks_resumed, copied.chunks_copied), (1, 1));
        assert_eq!(rows(&pg, Side::Target), rows(&pg, Side::Source));
        let progress = h.progress.lock().unwrap().clone();
        assert!(
            progress.iter().any(|l| l
                == "copying 1 chunk(s) with 3 worker process(es) claiming from the plan on the target (lease 30 s)"),
            "{progress:?}"
        );
        assert!(
            progress
                .iter()
                .any(|l| l.starts_with("copy-worker process-0.1: copied ")),
            "{progress:?}"
        );
    }

    #[test]
    fn worker_settings_out_of_range_are_named() {
        let mut p = params();
        p.workers = Workers {
            run: WorkersRun::Processes,
            count: 65,
            lease: 1,
            backoff_limit: 0,
        };
        let problems = Replicate.check(&Literal::of(p));
        assert!(
            problems
                .iter()
                .any(|m| m == "workers.count 65 is not between 1 and 64"),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|m| m.starts_with("workers.lease 1 s is below 3 s")),
            "{problems:?}"
        );
    }

    #[tokio::test]
    async fn a_rollback_after_a_killed_copy_drops_its_progress_slot_and_publication() {
        let (h, pg) = setup();
        let cx = h.cx();
        let p = params();
        let sub = run_name(&cx);
        pg.copy_state(|c| c.fail_after = Some(1));
        assert!(Replicate.apply(&cx, &p, &Before::default()).await.is_err());
        let restored = Replicate
            .rollback(&cx, &p, &Before::default(), None)
            .await
            .unwrap();
        let objects: Vec<&str> = restored.iter().map(|r| r.object.as_str()).collect();
        assert_eq!(
            objects,
            vec![
                "schema cutover_copy (target)",
                "role app in database shop_staging on the target",
                &*format!("replication slot {sub} (source)"),
                &*format!("publication {sub} (source)"),
            ]
        );
        assert!(pg.copy_state(|c| c.progress.is_none() && c.snapshot.is_none()));
    }

    #[tokio::test]
    async fn a_copy_whose_snapshot_is_gone_starts_again_from_a_new_one() {
        let (h, pg) = setup();
        let cx = h.cx();
        let p = params();
        pg.copy_state(|c| c.fail_after = Some(1));
        assert!(Replicate.apply(&cx, &p, &Before::default()).await.is_err());
        // The snapshot's holder ended (the machine restarted) and the source moved on.
        pg.copy_state(|c| c.snapshot = None);
        pg.set_rows(
            Side::Source,
            "public.users",
            &[(1, "ann"), (2, "bob"), (3, "cy")],
        );
        let again = Replicate.apply(&cx, &p, &Before::default()).await.unwrap();
        let copied = again.outputs.copied.as_ref().unwrap();
        assert_eq!((copied.chunks_resumed, copied.chunks_copied), (0, 2));
        assert_eq!(rows(&pg, Side::Target), rows(&pg, Side::Source));
        assert!(h
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("cannot continue: its snapshot is gone")));
    }

    #[tokio::test]
    async fn preflight_problems_are_listed_together_and_nothing_is_created() {
        let (h, pg) = setup();
        let cx = h.cx();
        pg.copy_state(|c| {
            c.problems = vec![
                "wal_level is replica on the source".into(),
                "table public.log has no key".into(),
            ]
        });
        let plan = Replicate.plan(&cx, &params()).await.unwrap();
        assert_eq!(
            plan.changes
                .iter()
                .filter(|c| c.detail.starts_with("WOULD FAIL"))
                .count(),
            2
        );
        let err = Replicate
            .apply(&cx, &params(), &Before::default())
            .await
            .err()
            .expect("preflight fails");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("2 problem(s)") && m.contains("public.log")),
            "{err:?}"
        );
        pg.server(Side::Source, |s| {
            assert!(s.slots.is_empty() && s.publications.is_empty())
        });
        assert!(pg.server(Side::Target, |s| s.frozen.is_empty()));
    }

    #[tokio::test]
    async fn verify_fails_on_privileges_that_differ_and_waits_for_the_apply_worker() {
        let (h, pg) = setup();
        let mut cx = h.cx();
        let applied = Replicate
            .apply(&cx, &params(), &Before::default())
            .await
            .unwrap();
        pg.copy_state(|c| {
            c.privilege_differences =
                vec!["table public.orders: owner app on the source, admin on the target".into()]
        });
        let err = Replicate
            .verify(&cx, &params(), &applied.outputs)
            .await
            .err()
            .expect("owners differ");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("public.orders")),
            "{err:?}"
        );
        pg.stall(true);
        cx.deadline = tokio::time::Instant::now();
        let err = Replicate
            .verify(&cx, &params(), &applied.outputs)
            .await
            .err()
            .expect("no apply worker");
        assert!(matches!(err, StepError::Timeout(_)), "{err:?}");
    }

    #[tokio::test]
    async fn reset_target_recopies_a_rehearsals_tables_unless_a_fallback_is_live() {
        let (h, pg) = setup();
        let cx = h.cx();
        let mut p = params();
        p.reset_target = true;
        // An earlier rehearsal's copy, with a row the source no longer has.
        pg.server(Side::Target, |s| {
            s.tables = vec!["public.orders".into(), "public.users".into()];
        });
        pg.set_rows(Side::Target, "public.orders", &[(1, "a"), (99, "old")]);
        pg.server(Side::Source, |s| {
            s.subscriptions
                .insert("cutover_shop_staging_earlier_fb".into())
        });
        let err = Replicate
            .apply(&cx, &p, &Before::default())
            .await
            .err()
            .expect("a live fallback");
        assert!(
            matches!(&err, StepError::Gate(m) if m.contains("cutover_shop_staging_earlier_fb")),
            "{err:?}"
        );
        assert_eq!(
            pg.server(Side::Target, |s| s.rows["public.orders"].len()),
            2
        );

        // A live fallback that runs through a relay: its progress row on the legacy database.
        pg.server(Side::Source, |s| {
            s.subscriptions.clear();
            s.relays.insert("cutover_shop_staging_earlier_fb".into())
        });
        let err = Replicate
            .apply(&cx, &p, &Before::default())
            .await
            .err()
            .expect("a live fallback through a relay");
        assert!(
            matches!(&err, StepError::Gate(m) if m.contains("relay of slot cutover_shop_staging_earlier_fb")),
            "{err:?}"
        );

        pg.server(Side::Source, |s| s.relays.clear());
        let plan = Replicate.plan(&cx, &p).await.unwrap();
        assert!(plan.changes.iter().any(|c| c.action == Action::Delete));
        Replicate.apply(&cx, &p, &Before::default()).await.unwrap();
        assert_eq!(rows(&pg, Side::Target), rows(&pg, Side::Source));
    }

    #[tokio::test]
    async fn with_replication_relay_the_copy_is_followed_by_a_relay_in_the_target_cluster() {
        let (h, pg, kube) = setup_with_kube();
        let cx = h.cx();
        let mut p = params();
        p.replication = Replication::Relay;
        let sub = run_name(&cx);
        let name = relay::name(&sub);
        let plan = Replicate.plan(&cx, &p).await.unwrap();
        let rows_of = |t: &str| {
            plan.changes
                .iter()
                .find(|c| c.target == t)
                .map(|c| c.detail.clone())
        };
        assert_eq!(
            rows_of("forward replication").as_deref(),
            Some("relay (replication: relay)")
        );
        let keys = rows_of(&format!("Secret cutover/{name} in the target cluster")).unwrap();
        assert!(
            keys.contains("sha256:") && keys.contains("(the legacy database)"),
            "{keys}"
        );
        assert!(rows_of(&format!("subscription {sub} on target")).is_none());

        let applied = Replicate.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(applied.outputs.means, Some(Means::Relay));
        assert_eq!(
            applied.outputs.relay.as_deref(),
            Some(&*format!("cutover/{name}"))
        );
        assert!(applied
            .summary
            .as_deref()
            .unwrap()
            .contains("replication: relay"));
        assert_eq!(rows(&pg, Side::Target), rows(&pg, Side::Source));
        pg.server(Side::Target, |s| assert!(s.subscriptions.is_empty()));
        let d = kube
            .get("cutover", "deployments", &name)
            .expect("the relay's Deployment");
        let args = d["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
        assert!(args.contains(r#""--publisher","source""#), "{args}");
        assert!(kube.get("cutover", "secrets", &name).is_some());

        let evidence = Replicate.verify(&cx, &p, &applied.outputs).await.unwrap();
        assert!(evidence
            .facts
            .contains(&("means".to_string(), json!("relay"))));
        // A re-run after a crash finds the relay: no second copy, no second slot.
        let again = Replicate.apply(&cx, &p, &plan.before).await.unwrap();
        assert!(again.outputs.copied.is_none());
        assert!(again
            .summary
            .as_deref()
            .unwrap()
            .contains("already replicates"));

        let restored = Replicate
            .rollback(&cx, &p, &plan.before, Some(&applied.outputs))
            .await
            .unwrap();
        let objects: Vec<&str> = restored.iter().map(|r| r.object.as_str()).collect();
        assert!(
            objects.contains(&&*format!("relay cutover/{name} (target cluster)")),
            "{objects:?}"
        );
        assert!(kube.get("cutover", "deployments", &name).is_none());
        assert!(kube.get("cutover", "secrets", &name).is_none());
        pg.server(Side::Source, |s| {
            assert!(s.slots.is_empty() && s.publications.is_empty())
        });
    }

    #[test]
    fn replication_false_is_refused_for_the_forward_direction() {
        let l = Literal::of(Params {
            replication: Replication::Off,
            ..params()
        });
        let problems = Replicate.check(&l);
        assert!(
            problems.iter().any(|m| m.contains("replication: false")),
            "{problems:?}"
        );
    }
}
