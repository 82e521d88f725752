//! How a run is shown: human lines (data to stdout, progress to stderr) or, with `--output json`,
//! every event as one JSON object per line on stdout for CI. Progress of a long wait is one
//! spinner line (indicatif) on a terminal, replaced by the next record, and plain lines when
//! stderr is not a terminal (CI logs). No colour is used, so `NO_COLOR` is respected trivially.

use super::log::Record;
use serde_json::json;
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

pub use super::lines::line;
