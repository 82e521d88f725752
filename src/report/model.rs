//! The audit as data: a run's verified records gathered per step, in the runbook's phases, with
//! the header, timeline, approvals, rollback and integrity that the HTML and JUnit renderers
//! lay out. Built only from records (and the signature file): no service is contacted.

use crate::engine::event::{Event, RunStarted, RunStatus};
use crate::engine::lines::event_line;
use crate::engine::log::Record;
use crate::engine::signature::SignatureFile;
use crate::steps::journal::Journal;
use serde::Serialize;
use serde_json::Value;

/// How a step ended, as far as the log shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepStatus {
    /// `step_completed`.
    Completed,
    /// `step_planned` in a dry-run: planned only.
    Planned,
    /// `step_failed`.
    Failed,
    /// `step_skipped` (its `when` was false).
    Skipped,
    /// Started, no outcome: the run was interrupted or is still running.
    Unfinished,
    /// Never started (the run stopped before it).
    NotRun,
}

/// Serialized as its [`StepStatus::label`] (what reports print).
impl Serialize for StepStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.label())
    }
}

impl StepStatus {
    /// Lower-case label: `completed`, `planned`, `FAILED`, `skipped`, `unfinished`, `not run`.
    pub fn label(self) -> &'static str {
        match self {
            StepStatus::Completed => "completed",
            StepStatus::Planned => "planned",
            StepStatus::Failed => "FAILED",
            StepStatus::Skipped => "skipped",
            StepStatus::Unfinished => "unfinished",
            StepStatus::NotRun => "not run",
        }
    }
}

/// One object a rollback put back, with fingerprints of its state.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestoredRow {
    /// What was restored.
    pub object: String,
    /// Fingerprint before the rollback.
    pub before: String,
    /// Fingerprint after it.
    pub after: String,
    /// What was done.
    pub detail: String,
}

/// One step of the run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    /// Step id.
    pub id: String,
    /// Step kind (`postgres.replicate`, ...).
    pub kind: String,
    /// Phase name.
    pub phase: String,
    /// Outcome.
    pub status: StepStatus,
    /// RFC 3339 start (first `step_started`).
    pub started: Option<String>,
    /// RFC 3339 end (outcome record).
    pub finished: Option<String>,
    /// Duration of the successful attempt, milliseconds.
    pub duration_ms: Option<u64>,
    /// Rendered parameters as recorded (secrets are fingerprints in the log).
    pub params: Value,
    /// Plan lines `action target: detail`, with the exact request document when there is one.
    pub plan: Vec<(String, Option<String>)>,
    /// Evidence as `key: value` pairs: the outputs of `step_applied` and the evidence of
    /// `step_completed` (change ids, snapshot ids, checksums, health results, LSNs, ...).
    pub evidence: Vec<(String, String)>,
    /// What happened in between: attempts failed, traffic stages, analysis windows, TTL waits.
    pub events: Vec<(String, String)>,
    /// One-line outcome (`summary` of `step_completed`, error of `step_failed`, skip reason).
    pub summary: String,
    /// Rollback of this step, when one ran: restored objects, or the error and manual to-dos.
    pub rollback: Option<StepRollback>,
    /// The AWS calls that changed something, one line each with its request id (`(rollback)`
    /// after the ones its rollback made).
    pub aws_calls: Vec<String>,
}

/// The rollback of one step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRollback {
    /// When it finished (RFC 3339).
    pub at: String,
    /// Restored objects (empty: nothing to undo).
    pub restored: Vec<RestoredRow>,
    /// The error when the rollback failed.
    pub error: Option<String>,
    /// What a person must do by hand when it failed.
    pub manual: Vec<String>,
}

/// The signature as the report states it (checked or not: `audit verify` checks).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignatureInfo {
    /// Key fingerprint.
    pub key_fingerprint: String,
    /// Records covered.
    pub records: u64,
    /// Head covered.
    pub chain_head: String,
    /// When signed.
    pub signed_at: String,
}

/// The whole audit.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Audit {
    /// Run id.
    pub run_id: String,
    /// Header rows (label, value) in print order: runbook, digests, environment, account, mode,
    /// operator, CI job, start, end, outcome.
    pub header: Vec<(String, String)>,
    /// `succeeded`, `rolled-back`, `planned`, ... or `running or interrupted`.
    pub outcome: String,
    /// Notices that must head the document, as (label, text): `BREAK-GLASS` (the promotion
    /// gate was bypassed) and `PANIC` (the panic flag stopped the run).
    pub banners: Vec<(String, String)>,
    /// Phases in runbook order, each with its steps.
    pub phases: Vec<(String, Vec<StepReport>)>,
    /// Every record with a human line: (RFC 3339 time, step id or empty, text).
    pub timeline: Vec<(String, String, String)>,
    /// Approvals: `step: approved by WHO (VIA) at TIME`.
    pub approvals: Vec<String>,
    /// Why a rollback ran, when one did: (time, failed step, reason).
    pub rollback: Option<(String, String, String)>,
    /// The heartbeat's measured write outage, when the run measured one.
    pub downtime: Option<String>,
    /// Number of records.
    pub records: usize,
    /// Hash of the last record.
    pub chain_head: String,
    /// The signature file's statement, when the run is signed.
    pub signature: Option<SignatureInfo>,
    /// The run on a time axis: steps, write outage, writes per second, DNS stages, rollback.
    #[serde(skip)]
    pub picture: super::timeline::Timeline,
}

impl Audit {
    /// Every step in runbook order.
    pub fn steps(&self) -> impl Iterator<Item = &StepReport> {
        self.phases.iter().flat_map(|(_, steps)| steps.iter())
    }
}

/// Compact text of an output value: strings bare, everything else JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(t) => t.clone(),
        other => other.to_string(),
    }
}

/// Builds the audit of `records`, with `signature` when the run is signed. A record this
/// version does not know is left out of the steps (the timeline and chain still count it).
pub fn build(records: &[Record], signature: Option<&SignatureFile>) -> Audit {
    let typed = crate::engine::event::known(records);
    let (start, finish) = crate::engine::event::start_and_finish(&typed);
    let outcome = finish
        .map(|(_, f)| f.status.as_str().to_string())
        .unwrap_or_else(|| "running or interrupted".into());

    let d = start.map(|(_, s)| s);
    let text = |f: fn(&RunStarted) -> String| d.map(f).unwrap_or_default();
    let mut header = Vec::new();
    for (label, v) in [
        ("Runbook", text(|s| s.runbook.clone())),
        ("Runbook file", text(|s| s.runbook_path.clone())),
        ("Runbook digest", text(|s| s.runbook_digest.clone())),
        ("Plan digest", text(|s| s.plan_digest.clone())),
        ("Environment", text(|s| s.environment.clone())),
        ("Tier", text(|s| s.tier.clone())),
        ("AWS account", text(|s| s.account_id.clone())),
        ("Region", text(|s| s.region.clone())),
        ("Mode", text(|s| s.mode.as_str().to_string())),
        ("Operator", text(|s| s.operator.clone())),
        ("CI job", text(|s| s.ci_job.clone().unwrap_or_default())),
        ("cutover version", text(|s| s.cutover_version.clone())),
    ] {
        header.push((label.to_string(), if v.is_empty() { "—".into() } else { v }));
    }
    let ts = |r: Option<&Record>| r.map(|r| r.ts.clone()).unwrap_or_else(|| "—".into());
    header.push(("Started".into(), ts(start.map(|(r, _)| r))));
    header.push(("Finished".into(), ts(finish.map(|(r, _)| r))));
    header.push(("Outcome".into(), outcome.clone()));
    if let Some(step) = finish
        .and_then(|(_, f)| f.failed_step.clone())
        .filter(|s| !s.is_empty())
    {
        header.push(("Failed step".into(), step));
    }

    // The runbook's steps in order, from run_started (so steps never started are listed too).
    let mut phases: Vec<(String, Vec<StepReport>)> = Vec::new();
    for st in d.map(|s| s.steps.as_slice()).unwrap_or_default() {
        let report = StepReport {
            id: st.id.clone(),
            kind: st.kind.clone(),
            phase: st.phase.clone(),
            status: StepStatus::NotRun,
            started: None,
            finished: None,
            duration_ms: None,
            params: Value::Null,
            plan: Vec::new(),
            evidence: Vec::new(),
            events: Vec::new(),
            summary: String::new(),
            rollback: None,
            aws_calls: Vec::new(),
        };
        match phases.last_mut() {
            Some((p, steps)) if *p == st.phase => steps.push(report),
            _ => phases.push((st.phase.clone(), vec![report])),
        }
    }

    let mut audit = Audit {
        run_id: text(|s| s.run_id.clone()),
        header,
        outcome,
        banners: Vec::new(),
        phases,
        timeline: Vec::new(),
        approvals: Vec::new(),
        rollback: None,
        downtime: None,
        records: records.len(),
        chain_head: records.last().map(|r| r.hash.clone()).unwrap_or_default(),
        signature: signature.map(|f| SignatureInfo {
            key_fingerprint: f.key_fingerprint.clone(),
            records: f.records,
            chain_head: f.chain_head.clone(),
            signed_at: f.signed_at.clone(),
        }),
        picture: Default::default(),
    };

    for (r, event) in &typed {
        let step_id = r.step.as_deref().unwrap_or("");
        if let Some(line) = event_line(event, step_id, &r.hash) {
            let first = line.lines().next().unwrap_or("").trim().to_string();
            audit
                .timeline
                .push((r.ts.clone(), step_id.to_string(), first));
        }
        match event {
            Event::GateBypassed(g) => audit.banners.push((
                "BREAK-GLASS".into(),
                format!(
                    "The {} gate was bypassed by {} at {}: \"{}\". It would have refused: {}.",
                    g.gate,
                    g.operator,
                    r.ts,
                    g.reason,
                    g.missing.join("; ")
                ),
            )),
            Event::Panic(p) => audit.banners.push((
                "PANIC".into(),
                format!(
                    "{} (raised {}, stopped {} `{step_id}`); the run rolled back.",
                    p.reason,
                    p.raised_at.as_deref().unwrap_or(""),
                    p.when,
                ),
            )),
            Event::WriteOutage(w) => audit.banners.push((
                "WRITE OUTAGE".into(),
                format!(
                    "{} (stopped {} `{step_id}`); the run rolled back.",
                    w.reason(),
                    w.when
                ),
            )),
            Event::RollbackStarted(rb) => {
                audit.rollback = Some((r.ts.clone(), rb.failed_step.clone(), rb.reason.clone()))
            }
            // One line per heartbeat: the run's, then a later `cutover rollback`'s.
            Event::Heartbeat(data) => {
                let line = super::heartbeat_line(data).trim().to_string();
                audit.downtime = Some(match audit.downtime.take() {
                    Some(prev) => format!("{prev}\n{line}"),
                    None => line,
                });
            }
            Event::RunFinished(f) if f.status == RunStatus::WritesMissing => audit.banners.push((
                "ACKNOWLEDGED WRITES MISSING".into(),
                format!(
                    "{} write(s) the heartbeat saw acknowledged are missing from {} (heartbeat table rows by writer and seq are in the heartbeat record); the steps ended {}. This is not a clean outcome: find the rows before the application takes writes again.",
                    f.missing_writes.unwrap_or(0),
                    f.missing_in.as_deref().unwrap_or(""),
                    f.steps_status.map(|s| s.as_str()).unwrap_or("")
                ),
            )),
            Event::RollbackRefused(rf) => audit.banners.push((
                "ROLLBACK REFUSED".into(),
                format!("step `{step_id}`: {}. Nothing was rolled back.", rf.reason),
            )),
            _ => {}
        }
        if r.step.is_none() {
            continue;
        }
        let Some(step) = audit
            .phases
            .iter_mut()
            .flat_map(|(_, steps)| steps.iter_mut())
            .find(|st| st.id == step_id)
        else {
            continue;
        };
        apply(step, r, event, &mut audit.approvals);
    }
    let steps: Vec<&StepReport> = audit.steps().collect();
    audit.picture = super::timeline::build(&typed, &steps);
    audit
}

/// Folds one step record into its report.
fn apply(step: &mut StepReport, r: &Record, event: &Event, approvals: &mut Vec<String>) {
    let rollback = matches!(
        event,
        Event::RollbackStepCompleted(_) | Event::RollbackStepFailed(_)
    );
    for c in event.aws_calls() {
        let suffix = if rollback { " (rollback)" } else { "" };
        step.aws_calls.push(format!("{}{suffix}", c.line()));
    }
    match event {
        Event::StepStarted(d) => {
            if step.started.is_none() {
                step.started = Some(r.ts.clone());
            }
            if step.status == StepStatus::NotRun {
                step.status = StepStatus::Unfinished;
            }
            step.params = d.params.clone();
        }
        Event::StepSkipped(d) => {
            step.status = StepStatus::Skipped;
            step.finished = Some(r.ts.clone());
            step.summary = d.reason.clone();
        }
        Event::StepPlanned(d) => {
            if step.plan.is_empty() {
                for c in &d.changes {
                    step.plan.push((
                        format!("{} {}: {}", c.action, c.target, c.detail),
                        c.document.as_ref().map(value_text),
                    ));
                }
            }
            if d.dry_run == Some(true) {
                step.status = StepStatus::Planned;
                step.finished = Some(r.ts.clone());
            }
        }
        Event::StepAttemptFailed(d) => step.events.push((
            r.ts.clone(),
            format!("attempt {} failed: {}", d.attempt, d.error),
        )),
        Event::StepApplied(d) => {
            for (k, v) in &d.outputs {
                if k != "summary" {
                    step.evidence.push((k.clone(), value_text(v)));
                }
            }
        }
        Event::StepCompleted(d) => {
            step.status = StepStatus::Completed;
            step.finished = Some(r.ts.clone());
            step.duration_ms = Some(d.duration_ms);
            step.summary = d.summary.clone();
            if let Value::Object(o) = &d.evidence {
                for (k, v) in o {
                    if k != "summary" {
                        step.evidence.push((k.clone(), value_text(v)));
                    }
                }
            }
            if crate::steps::lookup(&step.kind).is_some_and(|k| k.asks_approval()) {
                let out = |k: &str| {
                    step.evidence
                        .iter()
                        .find(|(key, _)| key == k)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                approvals.push(format!(
                    "{}: approved by {} ({}) at {}",
                    step.id,
                    out("approver"),
                    out("via"),
                    out("approved_at")
                ));
            }
        }
        Event::StepFailed(d) => {
            step.status = StepStatus::Failed;
            step.finished = Some(r.ts.clone());
            step.summary = d.error.clone();
        }
        Event::Journal(
            Journal::TrafficStage(_)
            | Journal::TrafficStageInsync(_)
            | Journal::Analysis(_)
            | Journal::TrafficReturned(_)
            | Journal::TrafficTtlRestore(_)
            | Journal::TtlWait(_),
        )
        | Event::Panic(_) => {
            if let Some(line) = event_line(event, &step.id, &r.hash) {
                let text = line.trim().trim_start_matches(['→', '⚠', '…']).trim();
                let text = text
                    .strip_prefix(&format!("{}:", step.id))
                    .unwrap_or(text)
                    .trim();
                step.events.push((r.ts.clone(), text.to_string()));
            }
        }
        Event::RollbackStepCompleted(d) => {
            step.rollback = Some(StepRollback {
                at: r.ts.clone(),
                restored: d
                    .restored
                    .iter()
                    .map(|x| RestoredRow {
                        object: x.object.clone(),
                        before: x.before.clone(),
                        after: x.after.clone(),
                        detail: x.detail.clone(),
                    })
                    .collect(),
                error: None,
                manual: Vec::new(),
            })
        }
        Event::RollbackStepFailed(d) => {
            step.rollback = Some(StepRollback {
                at: r.ts.clone(),
                restored: Vec::new(),
                error: Some(d.error.clone()),
                manual: d.manual.clone(),
            })
        }
        _ => {}
    }
}
