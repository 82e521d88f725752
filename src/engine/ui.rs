//! How a run is shown: human lines (data to stdout, progress to stderr) or, with `--output json`,
//! every event as one JSON object per line on stdout for CI. Progress of a long wait is one
//! spinner line (indicatif) on a terminal, replaced by the next record, and plain lines when
//! stderr is not a terminal (CI logs). No colour is used, so `NO_COLOR` is respected trivially.

use super::log::Record;
use serde_json::{json, Value};
use std::io::Write;

/// Output format of run commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Readable lines.
    Human,
    /// One JSON event per line on stdout.
    Json,
}

/// The run's printer.
pub struct Ui {
    /// Chosen format.
    pub format: OutputFormat,
    /// stderr is a terminal: progress is a spinner rather than lines.
    tty: bool,
    spinner: std::sync::Mutex<Option<indicatif::ProgressBar>>,
}

impl Ui {
    /// A printer in `format`; progress is a spinner when stderr is a terminal.
    pub fn new(format: OutputFormat) -> Ui {
        use std::io::IsTerminal;
        Ui {
            format,
            tty: std::io::stderr().is_terminal(),
            spinner: std::sync::Mutex::new(None),
        }
    }

    /// Prints one event-log record (clearing a progress spinner first).
    pub fn record(&self, r: &Record) {
        match self.format {
            OutputFormat::Json => out(&serde_json::to_string(r).unwrap_or_default()),
            OutputFormat::Human => {
                if let Some(text) = line(r) {
                    self.clear();
                    out(&text);
                }
            }
        }
    }

    /// Shows the progress of a long wait: what is awaited and for how long at most.
    pub fn progress(&self, step: &str, message: &str) {
        match self.format {
            OutputFormat::Json => {
                out(&json!({"type": "progress", "step": step, "message": message}).to_string())
            }
            OutputFormat::Human if self.tty => {
                let mut slot = self.spinner.lock().unwrap_or_else(|p| p.into_inner());
                let bar = slot.get_or_insert_with(|| {
                    let bar = indicatif::ProgressBar::new_spinner();
                    bar.enable_steady_tick(std::time::Duration::from_millis(120));
                    bar
                });
                bar.set_message(format!("{step}: {message}"));
            }
            OutputFormat::Human => {
                let _ = writeln!(std::io::stderr(), "      … {step}: {message}");
            }
        }
    }

    /// Removes the spinner, if one is shown.
    pub fn clear(&self) {
        let mut slot = self.spinner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bar) = slot.take() {
            bar.finish_and_clear();
        }
    }
}

/// Writes a line to stdout. A closed stdout (`| head`) must not stop a run half-way: the run goes
/// on and its journal stays complete, so write errors are ignored.
fn out(line: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
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
            let restored = crate::report::restored_lines(d);
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
            crate::report::weights_text(d.get("weights"))
        ),
        "traffic_stage_insync" => format!(
            "    → {step}: stage {} change {} INSYNC",
            d.get("stage").cloned().unwrap_or_default(),
            s(d, "change_id")
        ),
        "analysis" => format!("    → {step}: {}", crate::report::analysis_line(d)),
        "traffic_returned" => format!(
            "    ⚠ {step}: all weight back to the old target ({}): {}",
            crate::report::weights_text(d.get("weights")),
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
        "heartbeat" => crate::report::heartbeat_line(d),
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
