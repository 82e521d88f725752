//! The one place a record becomes a human line: what a run prints, and what the audit's
//! timeline and reports reuse. Pure functions of a record's data; no I/O.

use super::event::{Event, HeartbeatRecord};
use super::log::Record;
use crate::steps::context::Restored;
use crate::steps::journal::{AnalysisRecord, Journal};
use serde_json::Value;
use std::collections::BTreeMap;

/// The text field `k` of `v`, or `""`.
pub(crate) fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The `restored` entries of a `rollback_step_completed` record as lines
/// `object: before → after (what)`.
pub fn restored_lines(restored: &[Restored]) -> Vec<String> {
    restored
        .iter()
        .map(|x| format!("{}: {} → {} ({})", x.object, x.before, x.after, x.detail))
        .collect()
}

/// Weights of a traffic stage, `{"aws": 10, "legacy": 90}`, as `aws 10% / legacy 90%`.
pub fn weights_text(w: &BTreeMap<String, i64>) -> String {
    w.iter()
        .map(|(k, v)| format!("{k} {v}%"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// One line for an `analysis` record: stage, verdict and its figures.
pub fn analysis_line(a: &AnalysisRecord) -> String {
    let v = &a.verdict;
    let opt = |x: Option<String>| x.unwrap_or_else(|| "—".to_string());
    let mut line = format!(
        "analysis of stage {}/{} on {}: {} — {} of {} passed, success {}%, p95 {} ms, {} in a row at the end",
        a.stage,
        a.of,
        a.url,
        if v.passed { "passed" } else { "FAILED" },
        v.passes,
        v.samples,
        opt(v.success_rate.map(|r| serde_json::json!(r).to_string())),
        opt(v.p95_ms.map(|p| p.to_string())),
        v.closing_passes
    );
    let verdict = if v.passed { "passed" } else { "FAILED" };
    let of = if a.of == 0 {
        "analysis window".to_string()
    } else {
        format!("analysis of stage {}/{}", a.stage, a.of)
    };
    if a.url.is_empty() {
        line = format!("{of}: {verdict}");
    } else if a.of == 0 {
        line = line.replacen(&format!("analysis of stage {}/{}", a.stage, a.of), &of, 1);
    }
    for m in &v.metrics {
        let values: Vec<String> = m
            .measurements
            .iter()
            .map(|x| x.value.map_or("—".to_string(), |v| format!("{v:.4}")))
            .collect();
        line.push_str(&format!(
            "; {} {} [{}]",
            m.name,
            serde_json::to_value(m.phase)
                .ok()
                .and_then(|p| p.as_str().map(str::to_string))
                .unwrap_or_default(),
            values.join(", ")
        ));
    }
    if !v.passed {
        line.push_str(&format!(": {}", v.reasons.join("; ")));
    }
    line
}

/// How a heartbeat's application picks up its Secret, as words after the heartbeat's line
/// (nothing when it re-reads it).
fn reload_text(
    reload: Option<crate::config::Reload>,
    deployments: Option<&[String]>,
    volume_delay_ms: Option<u64>,
) -> String {
    use crate::config::Reload;
    match reload {
        Some(Reload::Restart) => {
            let names: Vec<String> = deployments
                .unwrap_or_default()
                .iter()
                .map(|n| format!("deployment/{n}"))
                .collect();
            if names.is_empty() {
                "; reload: restart (no Deployment reads the Secret: never)".into()
            } else {
                format!(
                    "; reload: restart (a new value once {} rolled out)",
                    names.join(", ")
                )
            }
        }
        Some(Reload::Volume) => format!(
            "; reload: volume ({} s after a change)",
            volume_delay_ms.unwrap_or(0) as f64 / 1000.0
        ),
        Some(other) => format!("; reload: {} (never)", other.as_str()),
        None => String::new(),
    }
}

/// One line summarising a `heartbeat` record: writes acknowledged, the longest gap between
/// two of them (the write outage, milliseconds) and acknowledged writes missing at the end.
pub fn heartbeat_line(d: &HeartbeatRecord) -> String {
    if let Some(e) = &d.error {
        return format!("  heartbeat did not run: {e}");
    }
    let missing = match d.missing {
        Some(0) => "no acknowledged write missing".to_string(),
        Some(m) => format!(
            "{m} ACKNOWLEDGED WRITE(S) MISSING (seq {})",
            serde_json::to_string(&d.missing_seqs.clone().unwrap_or_default()).unwrap_or_default()
        ),
        None => format!(
            "missing writes not checked: {}",
            d.missing_check_error.as_deref().unwrap_or("")
        ),
    };
    let legacy = d
        .paths
        .iter()
        .find(|p| p.path == "legacy")
        .map(|p| {
            format!(
                "; legacy path: {} acknowledged, longest gap {} ms while DNS sent users there",
                p.acknowledged, p.longest_gap_ms
            )
        })
        .unwrap_or_default();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
            .unwrap_or_default()
    };
    let waits = d
        .paths
        .iter()
        .find(|p| p.path == "aws")
        .map(|p| {
            format!(
                ", {} failed, the slowest took {} ms (p99 {} ms)",
                p.failed, p.wait_max_ms, p.wait_p99_ms
            )
        })
        .unwrap_or_default();
    format!(
        "  heartbeat: {} of {} writes acknowledged{waits}; longest gap {} ms ({} → {}){}{legacy}; {missing} in {}",
        d.acknowledged,
        d.attempted,
        d.longest_gap_ms,
        time(d.gap_from),
        if d.open_at_end && d.gap_to.is_none() {
            "still open at the end".to_string()
        } else {
            time(d.gap_to)
        },
        reload_text(d.reload, d.deployments.as_deref(), d.volume_delay_ms),
        d.database.as_deref().unwrap_or("")
    )
}

/// The human line(s) of one record, as a run prints it; `None` for records a person need not
/// see (non-dry-run plans, internal bookkeeping) and records this version does not know.
/// Reports reuse it for their timeline.
pub fn line(r: &Record) -> Option<String> {
    let event = Event::from_parts(&r.event, &r.data).ok()?;
    event_line(&event, r.step.as_deref().unwrap_or(""), &r.hash)
}

/// [`line`] of a typed record: `step` its step id (or `""`), `hash` its hash.
pub fn event_line(event: &Event, step: &str, hash: &str) -> Option<String> {
    Some(match event {
        Event::RunStarted(d) => format!(
            "cutover {} {} — runbook {} (digest {}), run {}",
            d.mode.as_str(),
            d.environment,
            d.runbook,
            d.runbook_digest.get(..12).unwrap_or(""),
            d.run_id
        ),
        Event::RunResumed(d) => format!("resuming run {}", d.run_id),
        Event::AccountVerified(d) => {
            format!("  account {} verified as {}", d.account_id, d.caller_arn)
        }
        Event::SecretsRead(d) => d
            .secrets
            .iter()
            .map(|s| {
                format!(
                    "  secret {} read from {}: {}",
                    s.name,
                    s.source,
                    s.fingerprint.as_deref().unwrap_or("absent (optional)")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Event::PhaseStarted(d) => format!("▸ phase {}", d.phase),
        Event::StepSkipped(d) => format!("  - {step:<12} {:<26} skipped: {}", d.kind, d.reason),
        Event::StepPlanned(d) if d.dry_run == Some(true) => {
            let mut out = format!("  • {step:<12} {}", d.kind);
            if d.changes.is_empty() {
                out.push_str("\n      no change");
            }
            for c in &d.changes {
                out.push_str(&format!(
                    "\n      {:<8} {}: {}",
                    c.action, c.target, c.detail
                ));
                if let Some(doc) = &c.document {
                    let text = match doc {
                        Value::String(t) => t.clone(),
                        other => other.to_string(),
                    };
                    out.push_str(&format!("\n               {text}"));
                }
            }
            out
        }
        Event::StepCompleted(d) => {
            let secs = d.duration_ms as f64 / 1000.0;
            format!("  ✓ {step:<12} {:<26} {secs:>6.1}s  {}", d.kind, d.summary)
        }
        Event::StepAttemptFailed(d) => {
            format!("  ! {step:<12} attempt {} failed: {}", d.attempt, d.error)
        }
        Event::StepFailed(d) => format!("  ✗ {step:<12} {:<26} {}", d.kind, d.error),
        Event::RollbackStarted(d) => {
            format!("rollback: {} (failed step {})", d.reason, d.failed_step)
        }
        Event::RollbackStepCompleted(d) => {
            let restored = restored_lines(&d.restored);
            if restored.is_empty() {
                format!("  ↺ {step:<12} nothing to undo")
            } else {
                format!("  ↺ {step:<12} {}", restored.join("\n    ↺ "))
            }
        }
        Event::RollbackStepFailed(d) => {
            let mut out = format!("  ✗ rollback of {step} failed: {}", d.error);
            for m in &d.manual {
                out.push_str(&format!("\n      to do: {m}"));
            }
            out
        }
        Event::Journal(Journal::TrafficStage(d)) => format!(
            "    → {step}: stage {}/{}: {}",
            d.stage,
            d.of,
            weights_text(&d.weights)
        ),
        Event::Journal(Journal::TrafficStageInsync(d)) => format!(
            "    → {step}: stage {} change {} INSYNC",
            d.stage, d.change_id
        ),
        Event::Journal(Journal::Analysis(d)) => format!("    → {step}: {}", analysis_line(d)),
        Event::Journal(Journal::TrafficReturned(d)) => format!(
            "    ⚠ {step}: all weight back to the old target ({}): {}",
            weights_text(&d.weights),
            d.reason
        ),
        Event::Journal(Journal::TrafficTtlRestore(d)) => {
            format!("    → {step}: TTL back to {}s", d.ttl)
        }
        Event::Journal(Journal::TtlWait(d)) => format!(
            "    … {step}: waiting {}s for answers cached under the old TTL ({}s) to expire",
            d.wait_s, d.previous_ttl
        ),
        Event::Panic(d) => format!("PANIC: {} ({} {step}) — rolling back", d.reason, d.when),
        Event::WriteOutage(d) => format!("WRITE OUTAGE: {} — rolling back", d.reason()),
        Event::GateBypassed(d) => format!(
            "BREAK-GLASS: the {} gate was bypassed by {}: {}",
            d.gate, d.operator, d.reason
        ),
        Event::RunRefused(d) => format!("refused: {}", d.reason),
        Event::HeartbeatStarted(d) => format!(
            "  heartbeat: {:.1} writes/s through secret {} ({}) into {}{}",
            d.writes_per_second,
            d.secret,
            d.key,
            d.table,
            reload_text(d.reload, d.deployments.as_deref(), d.volume_delay_ms)
        ),
        Event::HeartbeatFailed(d) => format!("  heartbeat could not start: {}", d.error),
        Event::Heartbeat(d) => heartbeat_line(d),
        Event::RunFinished(d) => format!(
            "run {} {} — audit: cutover audit show {} (chain head {})",
            d.run_id,
            d.status.as_str(),
            d.run_id,
            hash.get(..16).unwrap_or("")
        ),
        Event::RunInterrupted(d) => format!(
            "interrupted; the journal is consistent: cutover resume {}",
            d.run_id
        ),
        Event::StepStarted(_)
        | Event::StepPlanned(_)
        | Event::StepApplied(_)
        | Event::RollbackRefused(_)
        | Event::RollbackStepStarted(_)
        | Event::Journal(
            Journal::TrafficReturnedInsync(_) | Journal::TrafficOldAnswersExpired(_),
        ) => return None,
    })
}
