//! The parts of `postgres.replicate`'s apply that talk to the servers at length: the preflight,
//! the choice of tables to reset, the copy itself with its progress lines, and the foreign key
//! validation once replication runs. The order of the parts is the kind's (`mod.rs`).

use super::job::{self, Outcome};
use super::outputs::NotValidated;
use super::{fmt_mb, names, Params, Servers, WorkersRun};
use crate::providers::postgres::catalog::Table;
use crate::providers::postgres::copy;
use crate::providers::postgres::initial_copy::InitialCopy;
use crate::providers::postgres::postdata::{Item, Stage};
use crate::providers::postgres::preflight::{Needs, Report};
use crate::providers::postgres::workers;
use crate::steps::{StepContext, StepError};

/// Runs the preflight and turns its problems into one error listing them all.
pub(super) async fn preflight_check(
    cx: &StepContext<'_>,
    p: &Params,
    copy: &dyn InitialCopy,
    resuming: bool,
    reset: bool,
) -> Result<Report, StepError> {
    let (publication, _) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
    let needs = Needs {
        routes: None,
        forward_relay: p.replication != crate::steps::relay::Replication::Native,
        reset,
        target_logical: p.fallback,
        // The forward slot and the change-tracking slot of postgres.verify.
        slots: 2,
        senders: 2,
        max_transaction_age_secs: p.max_transaction_age,
        resuming,
        pg_dump_major: None,
    };
    Ok(copy
        .preflight(
            needs,
            &publication,
            &crate::steps::postgres_fallback::fallback_name(cx),
        )
        .await?)
}

/// The target tables of an earlier rehearsal's copy (every source table on the target, once
/// any of them holds rows), when `reset_target` may drop them: `None` when there is nothing to
/// reset; an error when resetting is not allowed here (production, or
/// an earlier run's fallback subscription is live on the source: the application uses the
/// target).
pub(super) async fn tables_to_reset(
    cx: &StepContext<'_>,
    p: &Params,
    s: &Servers,
) -> Result<Option<Vec<String>>, StepError> {
    if !p.reset_target {
        return Ok(None);
    }
    let source_tables = s.source.table_names().await?;
    let on_both: Vec<String> = s
        .target
        .table_names()
        .await?
        .into_iter()
        .filter(|t| source_tables.contains(t))
        .collect();
    let filled = s.copy.filled(&on_both).await?;
    if filled.is_empty() {
        return Ok(None);
    }
    if cx.env.tier == crate::config::Tier::Production {
        return Err(StepError::Gate(format!(
            "reset_target would empty {} table(s) of the production target; it is refused in production",
            filled.len()
        )));
    }
    // A live fallback: its subscription on the legacy database, or its relay's progress there.
    let mut live: Vec<String> = s
        .source
        .subscriptions("cutover_")
        .await?
        .into_iter()
        .filter(|n| n.ends_with("_fb"))
        .map(|n| format!("subscription {n}"))
        .collect();
    live.extend(
        s.source
            .relayed_slots("cutover_")
            .await?
            .into_iter()
            .filter(|n| n.ends_with("_fb"))
            .map(|n| format!("relay of slot {n}")),
    );
    if !live.is_empty() {
        return Err(StepError::Gate(format!(
            "the target holds the copy of an earlier run whose fallback is live ({} on the legacy database): the application uses the target. Return it to the legacy database first with `cutover rollback RUN_ID` of that run (`cutover runs` lists it; its id ends in the fallback's suffix), then rehearse again",
            live.join(", ")
        )));
    }
    // Every table of the earlier copy goes, the empty ones too: a copy stopped part-way leaves
    // tables without rows, and the schema is copied again only into a target without them.
    Ok(Some(on_both))
}

pub(super) fn problems_error(problems: &[String]) -> StepError {
    StepError::Check(format!(
        "preflight found {} problem(s); the copy did not start:\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    ))
}

/// Validates the foreign keys the copy added `NOT VALID` and has not validated yet (the
/// validate items of the progress schema), `jobs` at a time; their labels.
pub(super) async fn validate_foreign_keys(
    cx: &StepContext<'_>,
    copy: &dyn InitialCopy,
    jobs: usize,
) -> Result<Vec<String>, StepError> {
    if copy.state().await?.is_none() {
        return Ok(Vec::new());
    }
    let (preamble, items) = copy.pending_items().await?;
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
    copy.validate(&preamble, items, jobs, &mut |d| {
        if let copy::Done::Items(items, secs) = d {
            (cx.progress)(&post_data_line(&items, secs));
            done.extend(items.into_iter().map(|i| i.label));
        }
    })
    .await?;
    Ok(done)
}

/// The target's foreign keys that are `NOT VALID`, with the reason.
pub(super) async fn not_valid_foreign_keys(
    copy: &dyn InitialCopy,
    validate: bool,
) -> Result<Vec<NotValidated>, StepError> {
    Ok(copy
        .not_valid_foreign_keys()
        .await?
        .into_iter()
        .map(|constraint| NotValidated {
            constraint,
            reason: if validate {
                "NOT VALID on the source too".into()
            } else {
                "validate_foreign_keys: false in the runbook".into()
            },
        })
        .collect())
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

/// What [`run_copy`] did: the chunk plan, how many chunks an earlier attempt had copied, how many
/// chunks and post-data items this attempt committed.
pub(super) struct CopyRun {
    /// Every planned chunk.
    pub all: Vec<copy::Chunk>,
    /// Chunks copied before this attempt.
    pub done_before: usize,
    /// Chunks this attempt copied.
    pub copied: usize,
    /// Post-data items this attempt applied.
    pub items_applied: usize,
    /// Whether anything was left to copy (the copy was still in its copying phase).
    pub ran: bool,
    /// Source and target run the same major version (binary COPY possible).
    pub same_major: bool,
}

/// Copies the chunks and post-data items not yet in, under `state`'s snapshot, printing a line
/// per commit; then releases the snapshot and records the copy done.
///
/// # Errors
/// What the copy returns; the panic flag, the write budget and the deadline stop it between
/// two commits (every chunk commits with its progress row, so it resumes cleanly).
pub(super) async fn run_copy(
    cx: &StepContext<'_>,
    p: &Params,
    s: &Servers,
    state: &copy::State,
    tables: &[Table],
) -> Result<CopyRun, StepError> {
    let (all, done_before) = s.copy.progress().await?;
    let same_major = s.source.major_version().await? == s.target.major_version().await?;
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
        let (preamble, items) = s.copy.pending_items().await?;
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
        // With worker processes or a Job, they copy the chunks (claiming them from the plan on
        // the target); the run then applies the post-data as it does after its own workers.
        let pending = match p.workers.run {
            _ if pending.is_empty() => pending,
            WorkersRun::InProcess => pending,
            WorkersRun::Processes => {
                let procs = workers::Processes {
                    exe: std::env::current_exe().map_err(|e| {
                        StepError::Check(format!("cannot find the cutover executable: {e}"))
                    })?,
                    count: p.workers.count,
                    lease: std::time::Duration::from_secs(p.workers.lease),
                    rate_limit_mb: p.rate_limit_mb.map(|m| m / p.workers.count as f64),
                    backoff_limit: p.workers.backoff_limit,
                };
                (cx.progress)(&format!(
                    "copying {} chunk(s) with {} worker process(es) claiming from the plan on the target (lease {} s)",
                    pending.len(),
                    procs.count,
                    p.workers.lease
                ));
                let mut on_line = |l: String| (cx.progress)(&l);
                let copying = s.copy.copy_by_processes(&procs, &mut on_line);
                cx.watched(copying, "the initial copy").await??;
                let (_, done_now) = s.copy.progress().await?;
                copied += done_now.len().saturating_sub(done_before.len());
                Vec::new()
            }
            WorkersRun::Job => {
                copied += copy_by_job(cx, p, s, pending.len()).await?;
                Vec::new()
            }
        };
        let work = copy::Work {
            chunks: pending,
            items,
            preamble,
        };
        let mut on_done = |d| match d {
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
        };
        // Safe points while the copy runs: every chunk commits with its progress row, so a
        // copy stopped by the panic flag or the write budget resumes (or rolls back) cleanly.
        let copying = s
            .copy
            .copy(&state.slot.snapshot, tables, work, &opts, &mut on_done);
        cx.watched(copying, "the initial copy").await??;
        s.copy.release_snapshot();
        s.copy.copied().await?;
    }
    Ok(CopyRun {
        done_before: done_before.len(),
        all,
        copied,
        items_applied,
        ran: state.phase == "copying",
        same_major,
    })
}

/// Copies the plan's chunks not yet copied (`pending` of them) with the Indexed Job of
/// `workers: { run: job }`: applies it (keeping one an earlier attempt left running), follows
/// its pods and the plan each second in the progress line, and deletes it with its Secret once
/// it completed. Returns how many chunks the Job copied.
///
/// # Errors
/// [`StepError::Check`] when the Job failed (its condition's reason and message), vanished, or
/// completed with chunks left; the Job is left for the rollback to delete.
async fn copy_by_job(
    cx: &StepContext<'_>,
    p: &Params,
    s: &Servers,
    pending: usize,
) -> Result<usize, StepError> {
    let (_, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
    let j = p.copy_job(cx, &sub);
    let before = s.copy.work_queue().await?;
    let created = job::apply(cx, &j, &s.source.conninfo(), &s.target.conninfo()).await?;
    (cx.progress)(&format!(
        "copying {pending} chunk(s) with Job {}/{} in the target cluster ({}): {} indexed worker(s), backoffLimit {}, lease {} s",
        j.namespace,
        j.name,
        if created { "created" } else { "kept: an earlier attempt's, still running" },
        j.count,
        j.backoff_limit,
        p.workers.lease
    ));
    let follow = async {
        let mut last = String::new();
        loop {
            let Some(st) = job::state(cx, &j).await? else {
                return Err(StepError::Check(format!(
                    "Job {}/{} disappeared from the target cluster while it copied; run again to resume the copy",
                    j.namespace, j.name
                )));
            };
            let q = s.copy.work_queue().await?;
            let by: Vec<String> = q
                .by_worker
                .iter()
                .map(|(w, n)| format!("{w}: {n}"))
                .collect();
            let line = format!(
                "Job {}/{}: {}; {} of {} chunks copied{}",
                j.namespace,
                j.name,
                st.pods(),
                q.chunks - q.left,
                q.chunks,
                if by.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", by.join(", "))
                }
            );
            if line != last {
                (cx.progress)(&line);
                last = line;
            }
            match st.outcome {
                Outcome::Running => {}
                Outcome::Complete if q.left == 0 => return Ok(q),
                Outcome::Complete => {
                    return Err(StepError::Check(format!(
                        "Job {}/{} completed with {} of {} chunks not copied",
                        j.namespace, j.name, q.left, q.chunks
                    )))
                }
                Outcome::Failed { reason, message } => {
                    return Err(StepError::Check(format!(
                        "Job {}/{} failed ({reason}: {message}) with {} of {} chunks not copied; its pods' logs say why (kubectl logs -n {} job/{} --all-containers)",
                        j.namespace, j.name, q.left, q.chunks, j.namespace, j.name
                    )))
                }
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    };
    let q = cx.watched(follow, "the copy Job").await??;
    job::delete(cx, &j).await?;
    (cx.progress)(&format!(
        "Job {}/{} completed and deleted with its Secret",
        j.namespace, j.name
    ));
    Ok((before.left - q.left).max(0) as usize)
}
