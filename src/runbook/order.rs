//! The order of a runbook's steps as its users would feel it: one ordering that would leave the
//! application unable to write is refused, and four that cost users are warned about (each with
//! the file, the line, the reason and the fix). `cutover validate --deny-warnings` makes the
//! warnings errors for CI.
//!
//! Refused:
//! - a flip after `postgres.replicate` with no `postgres.fallback` between them: the target keeps
//!   the application's roles read-only until a fallback opens them, so the application could not
//!   write after the flip.
//!
//! Warned:
//! 1. the database frozen before traffic moves: users DNS still sends to the legacy host meet a
//!    read-only database until their cached answers expire;
//! 2. a full-table verify inside the window: the write outage grows with the data;
//! 3. a flip with no fallback replication before it: a rollback after the flip would have to
//!    refuse (it would lose the writes the target took);
//! 4. a heartbeat without the legacy path while DNS moves after the freeze: the outage the
//!    legacy host's users see is not measured;
//! 5. `reload: volume` with a `volume_delay` at least `max_write_outage`: every rehearsal that
//!    flips would roll back.
//!
//! Owns these rules over the steps' [`WindowRole`]s; must not render templates or do I/O.

use super::Plan;
use crate::config::Problem;
use crate::steps::WindowRole;

/// The problems of `plan`'s order: `(refused, warnings)`. `heartbeat_line` is the line of the
/// runbook's `heartbeat:` key, when it has one.
pub fn check(plan: &Plan, heartbeat_line: Option<u32>) -> (Vec<Problem>, Vec<Problem>) {
    let file = &plan.runbook_path;
    let steps: Vec<(&str, u32, WindowRole)> = plan
        .steps()
        .map(|(_, s)| (s.id.as_str(), s.line, s.kind.window_role(&s.params)))
        .collect();
    let first = |pred: &dyn Fn(&WindowRole) -> bool| steps.iter().position(|(_, _, r)| pred(r));
    let freeze = first(&|r| *r == WindowRole::Freeze);
    let mut refused = Vec::new();
    let mut warnings = Vec::new();

    // The flips, and what comes before each.
    for (i, (id, line, role)) in steps.iter().enumerate() {
        if !matches!(role, WindowRole::Flip { .. }) {
            continue;
        }
        let before = &steps[..i];
        let replicate = before
            .iter()
            .rposition(|(_, _, r)| *r == WindowRole::Replicate);
        let fallback = before.iter().rev().find_map(|(_, _, r)| match r {
            WindowRole::Fallback { replication } => Some(*replication),
            _ => None,
        });
        let fallback_after_replicate = replicate.is_some_and(|r| {
            before[r..]
                .iter()
                .any(|(_, _, x)| matches!(x, WindowRole::Fallback { .. }))
        });
        if replicate.is_some() && !fallback_after_replicate {
            refused.push(
                Problem::new(
                    file,
                    Some(*line),
                    format!(
                        "step `{id}`: the application would be unable to write after this flip: `{}` (postgres.replicate) keeps the application's roles read-only on the target until a postgres.fallback step opens them, and none comes between them",
                        before[replicate.unwrap_or(0)].0
                    ),
                )
                .hint(Some(format!(
                    "add `- {{ id: fallback, kind: postgres.fallback }}` before `{id}` (with `replication: false` only where the legacy database cannot subscribe: a rollback after the flip then refuses)"
                ))),
            );
        } else if fallback != Some(true) {
            warnings.push(
                Problem::new(
                    file,
                    Some(*line),
                    format!(
                        "step `{id}`: no fallback replication comes before this flip: a rollback after it would have to refuse, since the writes the target took would be lost{}",
                        if fallback == Some(false) { " (its postgres.fallback has `replication: false`)" } else { "" }
                    ),
                )
                .hint(Some(format!(
                    "add `- {{ id: fallback, kind: postgres.fallback }}` (replication on, the default) before `{id}`"
                ))),
            );
        }
    }

    if let Some(f) = freeze {
        let (fid, fline, _) = steps[f];
        // 1. Traffic moved after the freeze.
        let late_traffic: Vec<&(&str, u32, WindowRole)> = steps[f..]
            .iter()
            .filter(|(_, _, r)| *r == WindowRole::MoveTraffic)
            .collect();
        if let Some((tid, tline, _)) = late_traffic.first() {
            warnings.push(
                Problem::new(
                    file,
                    Some(fline),
                    format!(
                        "step `{fid}`: the database is frozen before traffic moves (`{tid}`, line {tline}): users DNS still sends to the legacy host meet a read-only database until every answer cached under the record's old TTL expires"
                    ),
                )
                .hint(Some(format!(
                    "move `{tid}` before `{fid}` (traffic first, as runbooks/shop-cutover.yaml orders its phases), with `wait_old_answers: true`"
                ))),
            );
            // 4. ... with a heartbeat that cannot see those users.
            if plan.heartbeat.as_ref().is_some_and(|h| h.legacy.is_none()) {
                warnings.push(
                    Problem::new(
                        file,
                        heartbeat_line,
                        format!(
                            "heartbeat: DNS moves after the freeze (`{tid}`, line {tline}) but the heartbeat has no `legacy` path: the outage of the users still sent to the legacy host is not measured"
                        ),
                    )
                    .hint(Some(
                        "add `legacy: { url: \"{{ secrets.<legacy application URL> }}\", record: \"<service>.{{ env.dns.domain }}\" }` under `heartbeat:`, or move traffic before the freeze".into(),
                    )),
                );
            }
        }
        // 2. A full-table verify inside the window (from the freeze to the first flip).
        let end = steps[f..]
            .iter()
            .position(|(_, _, r)| matches!(r, WindowRole::Flip { .. }))
            .map_or(steps.len(), |p| f + p);
        for (vid, vline, role) in &steps[f..end] {
            if *role == (WindowRole::Verify { full: true }) {
                warnings.push(
                    Problem::new(
                        file,
                        Some(*vline),
                        format!(
                            "step `{vid}`: a full-table verify inside the window (after `{fid}`): every row is read while writes are frozen, so the write outage grows with the data"
                        ),
                    )
                    .hint(Some(format!(
                        "run `postgres.verify` with `method: checksum` before `{fid}` (while replication runs) and `method: changed-since-prepass` here"
                    ))),
                );
            }
        }
    }
    // A budget the reload mode cannot meet: every rehearsal that flips would roll back.
    if let Some(h) = &plan.heartbeat {
        let flips = steps
            .iter()
            .any(|(_, _, r)| matches!(r, WindowRole::Flip { pooler: false }));
        if flips
            && h.reload == crate::config::Reload::Volume
            && h.volume_delay >= h.max_write_outage
        {
            warnings.push(
                Problem::new(
                    file,
                    heartbeat_line,
                    format!(
                        "heartbeat: with `reload: volume` the application uses the flipped Secret {} s after the flip, but `max_write_outage` is {} s: every rehearsal would roll back after its flip",
                        h.volume_delay.as_secs_f64(),
                        h.max_write_outage.as_secs_f64()
                    ),
                )
                .hint(Some(
                    "raise `max_write_outage` above `volume_delay` plus the window, or shorten the delay the pods really have (the kubelet's syncFrequency), or move the application behind a pooler (`reload: pooler`)".into(),
                )),
            );
        }
    }
    pooler_window(plan, &steps, heartbeat_line, &mut refused, &mut warnings);
    warnings.sort_by_key(|w| w.line);
    (refused, warnings)
}

/// The pooler window's order: a `pgbouncer.repoint` needs a `pgbouncer.pause` before it (its
/// rollback leaves the entry paused for the pause's rollback to resume, and its RESUME would
/// have nothing to end); the pause comes before the freeze (frozen first, the application's
/// writes fail before they could wait); a heartbeat that reloads its Secret measures another
/// application than the one behind the pooler.
fn pooler_window(
    plan: &Plan,
    steps: &[(&str, u32, WindowRole)],
    heartbeat_line: Option<u32>,
    refused: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) {
    let file = &plan.runbook_path;
    let pause = steps.iter().position(|(_, _, r)| *r == WindowRole::Pause);
    for (i, (id, line, role)) in steps.iter().enumerate() {
        if *role == (WindowRole::Flip { pooler: true }) && pause.is_none_or(|p| p > i) {
            refused.push(
                Problem::new(
                    file,
                    Some(*line),
                    format!(
                        "step `{id}`: a pooler flip with no pgbouncer.pause before it: the application's writes would not wait while the database moves, and a rollback of `{id}` would leave the pooler paused with nothing to resume it"
                    ),
                )
                .hint(Some(format!(
                    "add a `pgbouncer.pause` step (same `admin` and `database`) before the freeze that precedes `{id}`"
                ))),
            );
        }
    }
    let freeze = steps.iter().position(|(_, _, r)| *r == WindowRole::Freeze);
    if let (Some(p), Some(f)) = (pause, freeze) {
        if f < p {
            let (pid, pline, _) = steps[p];
            warnings.push(
                Problem::new(
                    file,
                    Some(pline),
                    format!(
                        "step `{pid}`: the pooler pauses after the freeze (`{}`): the application's writes fail on the frozen database until the pause, instead of waiting",
                        steps[f].0
                    ),
                )
                .hint(Some(format!("move `{pid}` before `{}`", steps[f].0))),
            );
        }
    }
    let pooler_flip = steps
        .iter()
        .any(|(_, _, r)| *r == (WindowRole::Flip { pooler: true }));
    if let Some(h) = &plan.heartbeat {
        if pooler_flip && h.reload != crate::config::Reload::Pooler {
            warnings.push(
                Problem::new(
                    file,
                    heartbeat_line,
                    format!(
                        "heartbeat: `reload: {}` but the application is moved behind its pooler (pgbouncer.repoint): the writer would wait for a Secret change that never comes",
                        h.reload.as_str()
                    ),
                )
                .hint(Some("set `reload: pooler` under `heartbeat:`".into())),
            );
        }
    }
}
