//! Audit rendering: a run's event log as markdown (for people) or JSON (for machines).
//!
//! Reports are pure functions of the verified records; they never contact a service and never see
//! a secret (the log holds none).

use crate::engine::log::Record;
use serde_json::Value;
use std::fmt::Write;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The run as a markdown document: header, outcome, every step with parameters, plan, outcome and
/// evidence, the rollback, and the chain head.
pub fn markdown(records: &[Record]) -> String {
    let mut out = String::new();
    let start = records.iter().find(|r| r.event == "run_started");
    let d = start.map(|r| r.data.clone()).unwrap_or(Value::Null);
    let finish = records.iter().rev().find(|r| r.event == "run_finished");
    let status = finish
        .map(|r| s(&r.data, "status").to_string())
        .unwrap_or_else(|| "running or interrupted".into());
    let _ = writeln!(out, "# Cutover audit: run {}\n", s(&d, "run_id"));
    let _ = writeln!(out, "| | |\n|---|---|");
    for (label, key) in [
        ("Runbook", "runbook"),
        ("Runbook file", "runbook_path"),
        ("Runbook digest", "runbook_digest"),
        ("Plan digest", "plan_digest"),
        ("Environment", "environment"),
        ("Tier", "tier"),
        ("AWS account", "account_id"),
        ("Region", "region"),
        ("Mode", "mode"),
        ("Operator", "operator"),
        ("CI job", "ci_job"),
    ] {
        let v = s(&d, key);
        let _ = writeln!(out, "| {label} | {} |", if v.is_empty() { "—" } else { v });
    }
    let _ = writeln!(
        out,
        "| Started | {} |",
        start.map(|r| r.ts.as_str()).unwrap_or("—")
    );
    let _ = writeln!(
        out,
        "| Finished | {} |",
        finish.map(|r| r.ts.as_str()).unwrap_or("—")
    );
    let _ = writeln!(out, "| Outcome | **{status}** |");
    if let Some(f) = finish {
        if !s(&f.data, "failed_step").is_empty() {
            let _ = writeln!(out, "| Failed step | {} |", s(&f.data, "failed_step"));
        }
    }
    let _ = writeln!(out, "\n## Steps\n");
    for r in records {
        let step = r.step.as_deref().unwrap_or("");
        match r.event.as_str() {
            "phase_started" => {
                let _ = writeln!(out, "### Phase {}\n", s(&r.data, "phase"));
            }
            "account_verified" => {
                let _ = writeln!(
                    out,
                    "- {} account verified: {} as {}\n",
                    r.ts,
                    s(&r.data, "account_id"),
                    s(&r.data, "caller_arn")
                );
            }
            "run_refused" => {
                let _ = writeln!(out, "- {} **refused**: {}\n", r.ts, s(&r.data, "reason"));
            }
            "step_started" => {
                let _ = writeln!(out, "#### `{step}` ({})\n", s(&r.data, "kind"));
                let _ = writeln!(out, "- started {}", r.ts);
                if let Some(p) = r
                    .data
                    .get("params")
                    .filter(|p| p.as_object().is_some_and(|o| !o.is_empty()))
                {
                    let _ = writeln!(out, "- parameters: `{}`", p);
                }
            }
            "step_skipped" => {
                let _ = writeln!(
                    out,
                    "#### `{step}` ({})\n\n- skipped: {}\n",
                    s(&r.data, "kind"),
                    s(&r.data, "reason")
                );
            }
            "step_planned" => {
                for c in r
                    .data
                    .get("changes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let _ = writeln!(
                        out,
                        "- plan: {} {}: {}",
                        s(c, "action"),
                        s(c, "target"),
                        s(c, "detail")
                    );
                }
            }
            "step_attempt_failed" => {
                let _ = writeln!(out, "- attempt failed: {}", s(&r.data, "error"));
            }
            "step_applied" => {
                if let Some(o) = r.data.get("outputs") {
                    let _ = writeln!(out, "- outputs: `{o}`");
                }
            }
            "step_completed" => {
                let _ = writeln!(
                    out,
                    "- **completed** {} ({} ms): {}",
                    r.ts,
                    r.data
                        .get("duration_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    s(&r.data, "summary")
                );
                if let Some(e) = r
                    .data
                    .get("evidence")
                    .filter(|e| e.as_object().is_some_and(|o| !o.is_empty()))
                {
                    let _ = writeln!(out, "- evidence: `{e}`");
                }
                let _ = writeln!(out);
            }
            "step_failed" => {
                let _ = writeln!(out, "- **FAILED** {}: {}\n", r.ts, s(&r.data, "error"));
            }
            "rollback_started" => {
                let _ = writeln!(
                    out,
                    "## Rollback\n\nStarted {} because step `{}` failed: {}\n",
                    r.ts,
                    s(&r.data, "failed_step"),
                    s(&r.data, "reason")
                );
            }
            "rollback_step_completed" => {
                let restored: Vec<&str> = r
                    .data
                    .get("restored")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let _ = writeln!(
                    out,
                    "- `{step}` undone: {}",
                    if restored.is_empty() {
                        "nothing to undo".to_string()
                    } else {
                        restored.join("; ")
                    }
                );
            }
            "rollback_step_failed" => {
                let _ = writeln!(
                    out,
                    "- `{step}` **rollback FAILED**: {}",
                    s(&r.data, "error")
                );
            }
            "run_interrupted" => {
                let _ = writeln!(out, "- {} interrupted", r.ts);
            }
            "run_resumed" => {
                let _ = writeln!(out, "- {} resumed", r.ts);
            }
            "heartbeat" => {
                let _ = writeln!(
                    out,
                    "\n**Write outage (heartbeat).** {}\n",
                    heartbeat_line(&r.data).trim()
                );
            }
            _ => {}
        }
    }
    let head = records.last().map(|r| r.hash.as_str()).unwrap_or("");
    let _ = writeln!(out, "\n## Integrity\n\n{} records, SHA-256 hash chain head `{head}`. Check with `cutover audit verify {}`.", records.len(), s(&d, "run_id"));
    out
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
    format!(
        "  heartbeat: {} of {} writes acknowledged; longest gap {} ms ({} → {}); {missing} in {}",
        n("acknowledged"),
        n("attempted"),
        n("longest_gap_ms"),
        s(d, "gap_from"),
        s(d, "gap_to"),
        s(d, "database")
    )
}

/// The records as one JSON document: `{"run_id", "records": [...], "chain_head"}`.
pub fn json(records: &[Record]) -> Value {
    let run_id = records
        .first()
        .map(|r| s(&r.data, "run_id").to_string())
        .unwrap_or_default();
    serde_json::json!({"run_id": run_id, "records": records, "chain_head": records.last().map(|r| r.hash.clone())})
}
