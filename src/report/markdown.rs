//! The audit as markdown, record by record, for people reading it in a terminal or a pull
//! request. Must not read files or contact services.

use super::{analysis_line, heartbeat_line, s, weights_text};
use crate::engine::log::Record;
use crate::engine::signature::SignatureFile;
use serde_json::Value;
use std::fmt::Write;

/// The run as a markdown document: header, outcome, every step with parameters, plan, outcome and
/// evidence, the rollback, and the chain head.
pub fn markdown(records: &[Record], signature: Option<&SignatureFile>) -> String {
    let mut out = String::new();
    let audit = super::model::build(records, signature);
    let d = records
        .iter()
        .find(|r| r.event == "run_started")
        .map(|r| r.data.clone())
        .unwrap_or(Value::Null);
    let _ = writeln!(out, "# Cutover audit: run {}\n", audit.run_id);
    for (label, text) in &audit.banners {
        let _ = writeln!(out, "> **{label}.** {text}\n");
    }
    let _ = writeln!(out, "| | |\n|---|---|");
    for (label, value) in &audit.header {
        if label == "Outcome" {
            let _ = writeln!(out, "| {label} | **{value}** |");
        } else {
            let _ = writeln!(out, "| {label} | {} |", value.replace('|', "\\|"));
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
                let restored: Vec<&Value> = r
                    .data
                    .get("restored")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .collect();
                if restored.is_empty() {
                    let _ = writeln!(out, "- `{step}` undone: nothing to undo");
                } else {
                    let _ = writeln!(out, "- `{step}` undone:\n\n  | object | before | after | what |\n  |---|---|---|---|");
                    for x in restored {
                        let _ = writeln!(
                            out,
                            "  | {} | `{}` | `{}` | {} |",
                            s(x, "object"),
                            s(x, "before"),
                            s(x, "after"),
                            s(x, "detail").replace('|', "\\|")
                        );
                    }
                    let _ = writeln!(out);
                }
            }
            "rollback_step_failed" => {
                let _ = writeln!(
                    out,
                    "- `{step}` **rollback FAILED**: {}",
                    s(&r.data, "error")
                );
                for m in r
                    .data
                    .get("manual")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let _ = writeln!(out, "  - [ ] to do by hand: {}", m.as_str().unwrap_or(""));
                }
            }
            "traffic_stage" => {
                let _ = writeln!(
                    out,
                    "- {} stage {}/{}: {}; change batch `{}`",
                    r.ts,
                    r.data.get("stage").cloned().unwrap_or_default(),
                    r.data.get("of").cloned().unwrap_or_default(),
                    weights_text(r.data.get("weights")),
                    r.data.get("change_batch").cloned().unwrap_or_default()
                );
            }
            "traffic_stage_insync" => {
                let _ = writeln!(
                    out,
                    "- {} stage {} change {} INSYNC",
                    r.ts,
                    r.data.get("stage").cloned().unwrap_or_default(),
                    s(&r.data, "change_id")
                );
            }
            "analysis" => {
                let _ = writeln!(out, "- {} {}", r.ts, analysis_line(&r.data));
            }
            "traffic_returned" => {
                let _ = writeln!(
                    out,
                    "- {} **all weight returned to the old target** ({}): {}; change batch `{}`",
                    r.ts,
                    weights_text(r.data.get("weights")),
                    s(&r.data, "reason"),
                    r.data.get("change_batch").cloned().unwrap_or_default()
                );
            }
            "ttl_wait" => {
                let _ = writeln!(
                    out,
                    "- {} waited {} s for answers cached under the old TTL ({} s, lowered at {}) to expire",
                    r.ts,
                    r.data.get("wait_s").cloned().unwrap_or_default(),
                    r.data.get("previous_ttl").cloned().unwrap_or_default(),
                    s(&r.data, "lowered_at")
                );
            }
            "panic" => {
                let _ = writeln!(
                    out,
                    "- {} **PANIC**: {} (flag raised {})",
                    r.ts,
                    s(&r.data, "reason"),
                    s(&r.data, "raised_at")
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
    match signature {
        Some(f) => {
            let _ = writeln!(
                out,
                "\nSigned (ed25519) at {} by key `{}`, covering {} records up to head `{}`.",
                f.signed_at, f.key_fingerprint, f.records, f.chain_head
            );
        }
        None => {
            let _ = writeln!(
                out,
                "\nUnsigned: records cut off the end of an unsigned log cannot be detected."
            );
        }
    }
    out
}
