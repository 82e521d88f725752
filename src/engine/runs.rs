//! Runs on record in the local store (`.cutover/runs/<run id>/events.jsonl`): listing and summary.

use super::event::{Event, RunStarted, RunStatus};
use super::log::{read_verified, Record};
use crate::steps::context::Mode;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One run as `cutover runs` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// Run id.
    pub id: String,
    /// Environment name.
    pub environment: String,
    /// How the run acts (`None` when its log does not verify).
    pub mode: Option<Mode>,
    /// Where the run stands.
    pub status: RunState,
    /// Runbook name.
    pub runbook: String,
    /// SHA-256 of the runbook file.
    pub runbook_digest: String,
    /// The environment's database the run acts on (empty in logs of earlier versions).
    pub database: String,
    /// The migration and wave that started it, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migration: Option<super::event::MigrationTag>,
    /// The heartbeat's longest gap between acknowledged writes (milliseconds), from the run's
    /// last heartbeat record, when it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_outage_ms: Option<u64>,
    /// How the application picked up its Secret while that outage was measured
    /// (`restart`, `volume`, `pooler`), from the same record (`None` in logs of earlier
    /// versions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reload: Option<crate::config::Reload>,
    /// Acknowledged writes missing at the end, from the same record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_missing: Option<u64>,
    /// The application path's writes that failed (refused or timed out), from the same record.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writes_failed: Option<u64>,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time, when finished.
    pub finished_at: Option<String>,
}

/// Where a run on record stands, as `cutover runs` prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Started and not finished (or resumed after it finished, for a rollback).
    Running,
    /// Its last record says its process was interrupted (SIGINT/SIGTERM): resumable.
    Interrupted,
    /// Its log does not verify.
    Corrupt,
    /// Finished as its last `run_finished` record says.
    Finished(RunStatus),
}

impl RunState {
    /// `running`, `interrupted`, `corrupt` or the finished status (`succeeded`, `rolled-back`,
    /// ...).
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Corrupt => "corrupt",
            RunState::Finished(s) => s.as_str(),
        }
    }

    /// Finished with every step completed.
    pub fn succeeded(self) -> bool {
        self == RunState::Finished(RunStatus::Succeeded)
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `{:<11}` in tables pads it.
        f.pad(self.as_str())
    }
}

impl Serialize for RunState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl RunSummary {
    /// A run that changed something (not a dry-run).
    pub fn acted(&self) -> bool {
        self.mode.is_some_and(|m| m != Mode::DryRun)
    }
}

/// The latest progress line of a running step, `{"ts", "step", "message"}`, beside the log.
pub const PROGRESS_FILE: &str = "progress.json";

/// The directory of run `id`.
pub fn run_dir(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join("runs").join(id)
}

/// The event log of run `id`.
pub fn log_path(state_dir: &Path, id: &str) -> PathBuf {
    run_dir(state_dir, id).join(super::log::FILE_NAME)
}

/// The signature of run `id`'s chain head, when the run is signed (see [`super::signature`]).
pub fn signature_path(state_dir: &Path, id: &str) -> PathBuf {
    run_dir(state_dir, id).join(super::signature::FILE_NAME)
}

/// Summarizes a run from its records (a record this version does not know is passed over).
pub fn summarize(id: &str, records: &[Record]) -> RunSummary {
    let typed = super::event::known(records);
    let (start, finished) = super::event::start_and_finish(&typed);
    let last_is_interrupt = matches!(typed.last(), Some((_, Event::RunInterrupted(_))));
    let status = match finished {
        _ if last_is_interrupt => RunState::Interrupted,
        Some((_, f)) if !resumed_after(&typed) => RunState::Finished(f.status),
        _ => RunState::Running,
    };
    let heartbeat = typed.iter().rev().find_map(|(_, e)| match e {
        Event::Heartbeat(v) => Some(v),
        _ => None,
    });
    let field =
        |f: fn(&RunStarted) -> &str| start.map(|(_, s)| f(s).to_string()).unwrap_or_default();
    RunSummary {
        id: id.to_string(),
        environment: field(|s| &s.environment),
        mode: start.map(|(_, s)| s.mode),
        status,
        runbook: field(|s| &s.runbook),
        runbook_digest: field(|s| &s.runbook_digest),
        database: field(|s| &s.database),
        migration: start.and_then(|(_, s)| s.migration.clone()),
        write_outage_ms: heartbeat.map(|h| h.longest_gap_ms),
        reload: heartbeat.and_then(|h| h.reload),
        writes_missing: heartbeat.map(|h| h.missing.unwrap_or(0)),
        writes_failed: heartbeat
            .and_then(|h| h.paths.iter().find(|p| p.path == "aws").map(|p| p.failed)),
        started_at: start.map(|(r, _)| r.ts.clone()).unwrap_or_default(),
        finished_at: finished.map(|(r, _)| r.ts.clone()),
    }
}

/// True when a `run_resumed` follows the last `run_finished` (`cutover rollback` of a finished
/// run, still going or killed).
fn resumed_after(typed: &[(&Record, Event)]) -> bool {
    let last_fin = typed
        .iter()
        .rposition(|(_, e)| matches!(e, Event::RunFinished(_)));
    let last_resume = typed
        .iter()
        .rposition(|(_, e)| matches!(e, Event::RunResumed(_)));
    matches!((last_fin, last_resume), (Some(f), Some(r)) if r > f)
}

/// Every run in the store, oldest first, optionally only those of `env`. A run whose log does not
/// verify is listed with status `corrupt`.
pub fn list(state_dir: &Path, env: Option<&str>) -> Vec<RunSummary> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(state_dir.join("runs")) else {
        return out;
    };
    for entry in rd.filter_map(|e| e.ok()) {
        let id = entry.file_name().to_string_lossy().into_owned();
        let summary = match read_verified(&log_path(state_dir, &id)) {
            Ok(records) => summarize(&id, &records),
            Err(_) => RunSummary {
                id: id.clone(),
                environment: String::new(),
                mode: None,
                status: RunState::Corrupt,
                runbook: String::new(),
                runbook_digest: String::new(),
                database: String::new(),
                migration: None,
                write_outage_ms: None,
                reload: None,
                writes_missing: None,
                writes_failed: None,
                started_at: String::new(),
                finished_at: None,
            },
        };
        if env.is_none_or(|e| summary.environment == e) {
            out.push(summary);
        }
    }
    out.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
    out
}
