//! The audit as markdown, record by record, for people reading it in a terminal or a pull
//! request. Must not read files or contact services.

use super::{analysis_line, heartbeat_line, weights_text};
use crate::engine::event::Event;
use crate::engine::log::Record;
use crate::engine::signature::SignatureFile;
use crate::steps::journal::Journal;
use serde_json::Value;
use std::fmt::Write;

/// `text` in a table cell, as text: backslash, `|` and markdown's inline markup characters
/// escaped, line breaks as spaces (CommonMark: a backslash before ASCII punctuation makes it
/// literal; GFM tables split on any unescaped `|`). An `_` between two letters or digits stays as
/// it is, because CommonMark never opens or closes emphasis inside a word with `_`
/// (`DATABASE_URL` reads as written in a terminal).
pub(super) fn cell(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '_' if i > 0
                && chars[i - 1].is_alphanumeric()
                && chars.get(i + 1).is_some_and(|n| n.is_alphanumeric()) =>
            {
                out.push('_')
            }
            '\\' | '|' | '*' | '_' | '`' | '[' | ']' | '<' | '>' | '#' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `text` in a table cell as a code span: fenced by one more backtick than its longest run of
/// backticks, `|` escaped (GFM splits cells on it even inside code), line breaks as spaces. The
/// content is padded with one space on each side only when it starts or ends with a backtick
/// (CommonMark strips exactly that padding), so `sha256:ab` stays `` `sha256:ab` ``.
pub(super) fn code_cell(text: &str) -> String {
    let flat = text.replace(['\n', '\r'], " ").replace('|', "\\|");
    let longest = flat.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    if flat.starts_with('`') || flat.ends_with('`') {
        format!("{fence} {flat} {fence}")
    } else {
        format!("{fence}{flat}{fence}")
    }
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
            let _ = writeln!(out, "| {} | **{}** |", cell(label), cell(value));
        } else {
            let _ = writeln!(out, "| {} | {} |", cell(label), cell(value));
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
        for c in event.aws_calls() {
            let _ = writeln!(out, "- AWS call: {}", c.line());
        }
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
            Event::SecretsRead(d) => {
                for s in &d.secrets {
                    let _ = writeln!(
                        out,
                        "- {} secret `{}` read from {}: {}\n",
                        r.ts,
                        s.name,
                        s.source,
                        s.fingerprint.as_deref().unwrap_or("absent (optional)")
                    );
                }
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
                            "  | {} | {} | {} | {} |",
                            cell(&x.object),
                            code_cell(&x.before),
                            code_cell(&x.after),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_keeps_its_table_whole() {
        assert_eq!(cell("a|b\nc *d*"), "a\\|b c \\*d\\*");
        assert_eq!(code_cell("x`y|z"), "``x`y\\|z``");
        assert_eq!(code_cell("`x"), "`` `x ``");
        assert_eq!(code_cell("sha256:ab"), "`sha256:ab`");
        assert_eq!(cell("key DATABASE_URL"), "key DATABASE_URL");
        assert_eq!(cell("_x_ a_ _b"), "\\_x\\_ a\\_ \\_b");
    }
}
