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
    warnings.sort_by_key(|w| w.line);
    (refused, warnings)
}
