//! The one place a record becomes a human line: what a run prints, and what the audit's
//! timeline and reports reuse. Pure functions of a record's data; no I/O.

use super::log::Record;
use serde_json::Value;

/// The text field `k` of `v`, or `""`.
pub(crate) fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The `restored` entries of a `rollback_step_completed` record as lines
/// `object: before → after (what)`.
pub fn restored_lines(d: &Value) -> Vec<String> {
    d.get("restored")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|x| {
            format!(
                "{}: {} → {} ({})",
                s(x, "object"),
                s(x, "before"),
                s(x, "after"),
                s(x, "detail")
            )
        })
        .collect()
}

/// Weights of a traffic stage, `{"aws": 10, "legacy": 90}`, as `aws 10% / legacy 90%`.
pub fn weights_text(w: Option<&Value>) -> String {
    w.and_then(Value::as_object)
        .map(|m| {
            let mut parts: Vec<(i64, String)> = m
                .iter()
                .map(|(k, v)| (v.as_i64().unwrap_or(0), k.clone()))
                .collect();
            parts.sort_by(|a, b| a.1.cmp(&b.1));
            parts
                .into_iter()
                .map(|(v, k)| format!("{k} {v}%"))
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .unwrap_or_default()
}

/// One line for an `analysis` record: stage, verdict and its figures.
pub fn analysis_line(d: &Value) -> String {
    let v = d.get("verdict").cloned().unwrap_or_default();
    let passed = v.get("passed").and_then(Value::as_bool) == Some(true);
    let fig = |k: &str| match v.get(k) {
        Some(Value::Null) | None => "—".to_string(),
        Some(x) => x.to_string(),
    };
    let mut line = format!(
        "analysis of stage {}/{} on {}: {} — {} of {} passed, success {}%, p95 {} ms, {} in a row at the end",
        d.get("stage").cloned().unwrap_or_default(),
        d.get("of").cloned().unwrap_or_default(),
        s(d, "url"),
        if passed { "passed" } else { "FAILED" },
        fig("passes"),
        fig("samples"),
        fig("success_rate"),
        fig("p95_ms"),
        fig("closing_passes")
    );
    if !passed {
        let reasons: Vec<&str> = v
            .get("reasons")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        line.push_str(&format!(": {}", reasons.join("; ")));
    }
    line
}

/// One line summarising a `heartbeat` record: writes acknowledged, the longest gap between
/// two of them (the write outage, milliseconds) and acknowledged writes missing at the end.
pub fn heartbeat_line(d: &Value) -> String {
    let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
    if let Some(e) = d.get("error").and_then(Value::as_str) {
        return format!("  heartbeat did not run: {e}");
    }
    let missing = match d.get("missing").and_then(Value::as_u64) {
        Some(0) => "no acknowledged write missing".to_string(),
        Some(m) => format!(
            "{m} ACKNOWLEDGED WRITE(S) MISSING (seq {})",
            d.get("missing_seqs").cloned().unwrap_or_default()
        ),
        None => format!(
            "missing writes not checked: {}",
            s(d, "missing_check_error")
        ),
    };
    let legacy = d
        .get("paths")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("path").and_then(Value::as_str) == Some("legacy"))
        })
        .map(|p| {
            format!(
                "; legacy path: {} acknowledged, longest gap {} ms while DNS sent users there",
                p.get("acknowledged").and_then(Value::as_u64).unwrap_or(0),
                p.get("longest_gap_ms").and_then(Value::as_u64).unwrap_or(0)
            )
        })
        .unwrap_or_default();
    format!(
        "  heartbeat: {} of {} writes acknowledged; longest gap {} ms ({} → {}){legacy}; {missing} in {}",
        n("acknowledged"),
        n("attempted"),
        n("longest_gap_ms"),
        s(d, "gap_from"),
        if d.get("open_at_end").and_then(Value::as_bool) == Some(true) && d.get("gap_to").is_none_or(Value::is_null) {
            "still open at the end"
        } else {
            s(d, "gap_to")
        },
        s(d, "database")
    )
}

/// The human line(s) of one record, as a run prints it; `None` for records a person need not
/// see (non-dry-run plans, internal bookkeeping). Reports reuse it for their timeline.
pub fn line(r: &Record) -> Option<String> {
    let d = &r.data;
    let step = r.step.as_deref().unwrap_or("");
    Some(match r.event.as_str() {
        "run_started" => format!(
            "cutover {} {} — runbook {} (digest {}), run {}",
            s(d, "mode"),
            s(d, "environment"),
            s(d, "runbook"),
            &s(d, "runbook_digest").get(..12).unwrap_or(""),
            s(d, "run_id")
        ),
        "run_resumed" => format!("resuming run {}", s(d, "run_id")),
        "account_verified" => format!(
            "  account {} verified as {}",
            s(d, "account_id"),
            s(d, "caller_arn")
        ),
        "phase_started" => format!("▸ phase {}", s(d, "phase")),
        "step_skipped" => format!(
            "  - {step:<12} {:<26} skipped: {}",
            s(d, "kind"),
            s(d, "reason")
        ),
        "step_planned" => {
            let mut out = String::new();
            let changes = d
                .get("changes")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if d.get("dry_run").and_then(Value::as_bool) == Some(true) {
                out.push_str(&format!("  • {step:<12} {}", s(d, "kind")));
                if changes.is_empty() {
                    out.push_str("\n      no change");
                }
                for c in &changes {
                    out.push_str(&format!(
                        "\n      {:<8} {}: {}",
                        s(c, "action"),
                        s(c, "target"),
                        s(c, "detail")
                    ));
                    if let Some(doc) = c.get("document") {
                        let text = match doc {
                            Value::String(t) => t.clone(),
                            other => other.to_string(),
                        };
                        out.push_str(&format!("\n               {text}"));
                    }
                }
                out
            } else {
                return None;
            }
        }
        "step_completed" => {
            let secs = d.get("duration_ms").and_then(Value::as_u64).unwrap_or(0) as f64 / 1000.0;
            format!(
                "  ✓ {step:<12} {:<26} {secs:>6.1}s  {}",
                s(d, "kind"),
                s(d, "summary")
            )
        }
        "step_attempt_failed" => format!(
            "  ! {step:<12} attempt {} failed: {}",
            d.get("attempt").and_then(Value::as_u64).unwrap_or(0),
            s(d, "error")
        ),
        "step_failed" => format!("  ✗ {step:<12} {:<26} {}", s(d, "kind"), s(d, "error")),
        "rollback_started" => format!(
            "rollback: {} (failed step {})",
            s(d, "reason"),
            s(d, "failed_step")
        ),
        "rollback_step_completed" => {
            let restored = restored_lines(d);
            if restored.is_empty() {
                format!("  ↺ {step:<12} nothing to undo")
            } else {
                format!("  ↺ {step:<12} {}", restored.join("\n    ↺ "))
            }
        }
        "rollback_step_failed" => {
            let mut out = format!("  ✗ rollback of {step} failed: {}", s(d, "error"));
            for m in d
                .get("manual")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                out.push_str(&format!("\n      to do: {}", m.as_str().unwrap_or("")));
            }
            out
        }
        "traffic_stage" => format!(
            "    → {step}: stage {}/{}: {}",
            d.get("stage").cloned().unwrap_or_default(),
            d.get("of").cloned().unwrap_or_default(),
            weights_text(d.get("weights"))
        ),
        "traffic_stage_insync" => format!(
            "    → {step}: stage {} change {} INSYNC",
            d.get("stage").cloned().unwrap_or_default(),
            s(d, "change_id")
        ),
        "analysis" => format!("    → {step}: {}", analysis_line(d)),
        "traffic_returned" => format!(
            "    ⚠ {step}: all weight back to the old target ({}): {}",
            weights_text(d.get("weights")),
            s(d, "reason")
        ),
        "traffic_ttl_restore" => format!(
            "    → {step}: TTL back to {}s",
            d.get("ttl").cloned().unwrap_or_default()
        ),
        "ttl_wait" => format!(
            "    … {step}: waiting {}s for answers cached under the old TTL ({}s) to expire",
            d.get("wait_s").cloned().unwrap_or_default(),
            d.get("previous_ttl").cloned().unwrap_or_default()
        ),
        "panic" => format!(
            "PANIC: {} ({} {step}) — rolling back",
            s(d, "reason"),
            s(d, "when")
        ),
        "gate_bypassed" => format!(
            "BREAK-GLASS: the {} gate was bypassed by {}: {}",
            s(d, "gate"),
            s(d, "operator"),
            s(d, "reason")
        ),
        "run_refused" => format!("refused: {}", s(d, "reason")),
        "heartbeat_started" => format!(
            "  heartbeat: {} writes/s through secret {} ({}) into {}",
            d.get("writes_per_second").cloned().unwrap_or_default(),
            s(d, "secret"),
            s(d, "key"),
            s(d, "table")
        ),
        "heartbeat_failed" => format!("  heartbeat could not start: {}", s(d, "error")),
        "heartbeat" => heartbeat_line(d),
        "run_finished" => format!(
            "run {} {} — audit: cutover audit show {} (chain head {})",
            s(d, "run_id"),
            s(d, "status"),
            s(d, "run_id"),
            &r.hash.get(..16).unwrap_or("")
        ),
        "run_interrupted" => format!(
            "interrupted; the journal is consistent: cutover resume {}",
            s(d, "run_id")
        ),
        _ => return None,
    })
}
