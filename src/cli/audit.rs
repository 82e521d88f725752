//! `runs`, `status`, `audit show`, `audit verify`.

use super::{print_error, EXIT_FAILED, EXIT_INVALID, EXIT_OK};
use crate::engine::{self, log, runs, ui::OutputFormat};
use crate::report;
use std::path::Path;

/// Audit output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// Markdown.
    Md,
    /// JSON.
    Json,
}

/// `cutover runs [ENV]`.
pub fn runs(root: &Path, env: Option<&str>, output: OutputFormat) -> i32 {
    let list = runs::list(&engine::state_dir(root), env);
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        ),
        OutputFormat::Human => {
            if list.is_empty() {
                eprintln!("no runs on record");
            }
            for r in list {
                println!(
                    "{:<24} {:<11} {:<9} {:<20} {:<14} {}",
                    r.id,
                    r.environment,
                    r.mode,
                    r.status,
                    &r.runbook_digest.get(..12).unwrap_or(""),
                    r.started_at
                );
            }
        }
    }
    EXIT_OK
}

fn load(root: &Path, run_id: &str) -> Result<Vec<log::Record>, i32> {
    let path = runs::log_path(&engine::state_dir(root), run_id);
    if !path.exists() {
        print_error(
            &format!("no run {run_id} on record"),
            Some("`cutover runs` lists the runs on record"),
        );
        return Err(EXIT_INVALID);
    }
    log::read_verified(&path).map_err(|e| {
        print_error(
            &format!("the event log of run {run_id} does not verify: {e}"),
            Some(&format!("file {}", path.display())),
        );
        EXIT_FAILED
    })
}

/// `cutover status RUN_ID`.
pub fn status(root: &Path, run_id: &str) -> i32 {
    let records = match load(root, run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let s = runs::summarize(run_id, &records);
    println!("run {} ({} {}) {}", s.id, s.mode, s.environment, s.status);
    if let Some(last) = records.last() {
        println!(
            "last event: {} {} at {}",
            last.event,
            last.step.as_deref().unwrap_or(""),
            last.ts
        );
    }
    EXIT_OK
}

/// `cutover audit show RUN_ID`.
pub fn show(root: &Path, run_id: &str, format: AuditFormat) -> i32 {
    let records = match load(root, run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    match format {
        AuditFormat::Md => print!("{}", report::markdown(&records)),
        AuditFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&records)).unwrap_or_default()
        ),
    }
    EXIT_OK
}

/// `cutover audit verify RUN_ID`.
pub fn verify(root: &Path, run_id: &str) -> i32 {
    match load(root, run_id) {
        Ok(records) => {
            println!(
                "run {run_id}: {} records verified; chain head {}",
                records.len(),
                records.last().map(|r| r.hash.as_str()).unwrap_or("")
            );
            EXIT_OK
        }
        Err(c) => c,
    }
}
