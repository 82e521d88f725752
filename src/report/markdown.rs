//! The audit as markdown, record by record, for people reading it in a terminal or a pull
//! request. Must not read files or contact services.

use super::{analysis_line, heartbeat_line, weights_text};
use crate::engine::event::Event;
use crate::engine::log::Record;
use crate::engine::signature::SignatureFile;
use crate::steps::journal::Journal;
use serde_json::Value;
use std::fmt::Write;

/// `text` in a table cell: `|` escaped, line breaks as spaces.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// The run as a markdown document: header, outcome, every step with parameters, plan, outcome and
/// evidence, the rollback, and the chain head.
pub fn markdown(records: &[Record], signature: Option<&SignatureFile>) -> String {
    let mut out = String::new();
    let audit = super::model::build(records, signature);
    let _ = writeln!(out, "# Cutover audit: run {}\n", audit.run_id);
    for (label, text) in &audit.banners {
        let _ = writeln!(out, "> **{label}.** {text}\n");
    }
    let _ = writeln!(out, "| | |\n|---|---|");
    for (label, value) in &audit.header {
        if label == "Outcome" {
            let _ = writeln!(out, "| {label} | **{value}** |");
        } else {
            let _ = writeln!(out, "| {label} | {} |", cell(value));
        }
    }
    let _ = writeln!(out, "\n## Steps\n");
    for r in records {
        let step = r.step.as_deref().unwrap_or("");
        let Ok(event) = Event::from_parts(&r.event, &r.data) else {
            let _ = writeln!(
                out,
                "- {} record `{}` (not known to this version)",
                r.ts,
                cell(&r.event)
            );
            continue;
        };
        match &event {
            Event::PhaseStarted(d) => {
                let _ = writeln!(out, "### Phase {}\n", d.phase);
            }
            Event::AccountVerified(d) => {
                let _ = writeln!(
                    out,
                    "- {} account verified: {} as {}\n",
                    r.ts, d.account_id, d.caller_arn
                );
            }
            Event::RunRefused(d) => {
                let _ = writeln!(out, "- {} **refused**: {}\n", r.ts, d.reason);
            }
            Event::StepStarted(d) => {
                let _ = writeln!(out, "#### `{step}` ({})\n", d.kind);
                let _ = writeln!(out, "- started {}", r.ts);
                if d.params.as_object().is_some_and(|o| !o.is_empty()) {
                    let _ = writeln!(out, "- parameters: `{}`", d.params);
                }
            }
            Event::StepSkipped(d) => {
                let _ = writeln!(
                    out,
                    "#### `{step}` ({})\n\n- skipped: {}\n",
                    d.kind, d.reason
                );
            }
            Event::StepPlanned(d) => {
                for c in &d.changes {
                    let _ = writeln!(out, "- plan: {} {}: {}", c.action, c.target, c.detail);
                }
            }
            Event::StepAttemptFailed(d) => {
                let _ = writeln!(out, "- attempt failed: {}", d.error);
            }
            Event::StepApplied(d) => {
                let _ = writeln!(out, "- outputs: `{}`", Value::Object(d.outputs.clone()));
            }
            Event::StepCompleted(d) => {
                let _ = writeln!(
                    out,
                    "- **completed** {} ({} ms): {}",
                    r.ts, d.duration_ms, d.summary
                );
                if d.evidence.as_object().is_some_and(|o| !o.is_empty()) {
                    let _ = writeln!(out, "- evidence: `{}`", d.evidence);
                }
                let _ = writeln!(out);
            }
            Event::StepFailed(d) => {
                let _ = writeln!(out, "- **FAILED** {}: {}\n", r.ts, d.error);
            }
            Event::RollbackStarted(d) => {
                let _ = writeln!(
                    out,
                    "## Rollback\n\nStarted {} because step `{}` failed: {}\n",
                    r.ts, d.failed_step, d.reason
                );
            }
            Event::RollbackStepCompleted(d) => {
                if d.restored.is_empty() {
                    let _ = writeln!(out, "- `{step}` undone: nothing to undo");
                } else {
                    let _ = writeln!(out, "- `{step}` undone:\n\n  | object | before | after | what |\n  |---|---|---|---|");
                    for x in &d.restored {
                        let _ = writeln!(
                            out,
                            "  | {} | `{}` | `{}` | {} |",
                            cell(&x.object),
                            cell(&x.before),
                            cell(&x.after),
                            cell(&x.detail)
                        );
                    }
                    let _ = writeln!(out);
                }
            }
            Event::RollbackStepFailed(d) => {
                let _ = writeln!(out, "- `{step}` **rollback FAILED**: {}", d.error);
                for m in &d.manual {
                    let _ = writeln!(out, "  - [ ] to do by hand: {m}");
                }
            }
            Event::Journal(Journal::TrafficStage(d)) => {
                let _ = writeln!(
                    out,
                    "- {} stage {}/{}: {}; change batch `{}`",
                    r.ts,
                    d.stage,
                    d.of,
                    weights_text(&d.weights),
                    d.change_batch
                );
            }
            Event::Journal(Journal::TrafficStageInsync(d)) => {
                let _ = writeln!(
                    out,
                    "- {} stage {} change {} INSYNC",
                    r.ts, d.stage, d.change_id
                );
            }
            Event::Journal(Journal::Analysis(d)) => {
                let _ = writeln!(out, "- {} {}", r.ts, analysis_line(d));
            }
            Event::Journal(Journal::TrafficReturned(d)) => {
                let _ = writeln!(
                    out,
                    "- {} **all weight returned to the old target** ({}): {}; change batch `{}`",
                    r.ts,
                    weights_text(&d.weights),
                    d.reason,
                    d.change_batch
                );
            }
            Event::Journal(Journal::TtlWait(d)) => {
                let _ = writeln!(
                    out,
                    "- {} waited {} s for answers cached under the old TTL ({} s, lowered at {}) to expire",
                    r.ts, d.wait_s, d.previous_ttl, d.lowered_at
                );
            }
            Event::Panic(d) => {
                let _ = writeln!(
                    out,
                    "- {} **PANIC**: {} (flag raised {})",
                    r.ts,
                    d.reason,
                    d.raised_at.as_deref().unwrap_or("")
                );
            }
            Event::RunInterrupted(_) => {
                let _ = writeln!(out, "- {} interrupted", r.ts);
            }
            Event::RunResumed(_) => {
                let _ = writeln!(out, "- {} resumed", r.ts);
            }
            Event::Heartbeat(d) => {
                let _ = writeln!(
                    out,
                    "\n**Write outage (heartbeat).** {}\n",
                    heartbeat_line(d).trim()
                );
            }
            _ => {}
        }
    }
    let head = records.last().map(|r| r.hash.as_str()).unwrap_or("");
    let _ = writeln!(out, "\n## Integrity\n\n{} records, SHA-256 hash chain head `{head}`. Check with `cutover audit verify {}`.", records.len(), audit.run_id);
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
