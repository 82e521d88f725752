//! The audit as data: a run's verified records gathered per step, in the runbook's phases, with
//! the header, timeline, approvals, rollback and integrity that the HTML and JUnit renderers
//! lay out. Built only from records (and the signature file): no service is contacted.

use crate::engine::log::Record;
use crate::engine::signature::SignatureFile;
use serde_json::Value;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
}

/// The rollback of one step.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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

/// Builds the audit of `records`, with `signature` when the run is signed.
pub fn build(records: &[Record], signature: Option<&SignatureFile>) -> Audit {
    let start = records.iter().find(|r| r.event == "run_started");
    let d = start.map(|r| r.data.clone()).unwrap_or(Value::Null);
    let finish = records.iter().rev().find(|r| r.event == "run_finished");
    let outcome = finish
        .map(|r| s(&r.data, "status").to_string())
        .unwrap_or_else(|| "running or interrupted".into());

    let mut header = Vec::new();
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
        ("cutover version", "cutover_version"),
    ] {
        let v = s(&d, key);
        header.push((
            label.to_string(),
            if v.is_empty() { "—".into() } else { v.into() },
        ));
    }
    let ts = |r: Option<&Record>| r.map(|r| r.ts.clone()).unwrap_or_else(|| "—".into());
    header.push(("Started".into(), ts(start)));
    header.push(("Finished".into(), ts(finish)));
    header.push(("Outcome".into(), outcome.clone()));
    if let Some(f) = finish.filter(|f| !s(&f.data, "failed_step").is_empty()) {
        header.push(("Failed step".into(), s(&f.data, "failed_step").into()));
    }

    // The runbook's steps in order, from run_started (so steps never started are listed too).
    let mut phases: Vec<(String, Vec<StepReport>)> = Vec::new();
    for st in d
        .get("steps")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let phase = s(st, "phase").to_string();
        let report = StepReport {
            id: s(st, "id").into(),
            kind: s(st, "kind").into(),
            phase: phase.clone(),
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
        };
        match phases.last_mut() {
            Some((p, steps)) if *p == phase => steps.push(report),
            _ => phases.push((phase, vec![report])),
        }
    }

    let mut audit = Audit {
        run_id: s(&d, "run_id").into(),
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
    };

    for r in records {
        if let Some(line) = crate::engine::ui::line(r) {
            let first = line.lines().next().unwrap_or("").trim().to_string();
            audit
                .timeline
                .push((r.ts.clone(), r.step.clone().unwrap_or_default(), first));
        }
        let data = &r.data;
        match r.event.as_str() {
            "gate_bypassed" => audit.banners.push((
                "BREAK-GLASS".into(),
                format!(
                    "The {} gate was bypassed by {} at {}: \"{}\". It would have refused: {}.",
                    s(data, "gate"),
                    s(data, "operator"),
                    r.ts,
                    s(data, "reason"),
                    data.get("missing")
                        .and_then(Value::as_array)
                        .map(|m| m
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("; "))
                        .unwrap_or_default()
                ),
            )),
            "panic" => audit.banners.push((
                "PANIC".into(),
                format!(
                    "{} (raised {}, stopped {} `{}`); the run rolled back.",
                    s(data, "reason"),
                    s(data, "raised_at"),
                    s(data, "when"),
                    r.step.as_deref().unwrap_or("")
                ),
            )),
            "rollback_started" => {
                audit.rollback = Some((
                    r.ts.clone(),
                    s(data, "failed_step").into(),
                    s(data, "reason").into(),
                ))
            }
            // One line per heartbeat: the run's, then a later `cutover rollback`'s.
            "heartbeat" => {
                let line = super::heartbeat_line(data).trim().to_string();
                audit.downtime = Some(match audit.downtime.take() {
                    Some(prev) => format!("{prev}\n{line}"),
                    None => line,
                });
            }
            "run_finished" if s(data, "status") == "writes-missing" => audit.banners.push((
                "ACKNOWLEDGED WRITES MISSING".into(),
                format!(
                    "{} write(s) the heartbeat saw acknowledged are missing from {} (heartbeat table rows by writer and seq are in the heartbeat record); the steps ended {}. This is not a clean outcome: find the rows before the application takes writes again.",
                    data.get("missing_writes").and_then(Value::as_u64).unwrap_or(0),
                    s(data, "missing_in"),
                    s(data, "steps_status")
                ),
            )),
            "rollback_refused" => audit.banners.push((
                "ROLLBACK REFUSED".into(),
                format!(
                    "step `{}`: {}. Nothing was rolled back.",
                    r.step.as_deref().unwrap_or(""),
                    s(data, "reason")
                ),
            )),
            _ => {}
        }
        let Some(id) = r.step.as_deref() else {
            continue;
        };
        let Some(step) = audit
            .phases
            .iter_mut()
            .flat_map(|(_, steps)| steps.iter_mut())
            .find(|st| st.id == id)
        else {
            continue;
        };
        apply(step, r, &mut audit.approvals);
    }
    audit
}

/// Folds one step record into its report.
fn apply(step: &mut StepReport, r: &Record, approvals: &mut Vec<String>) {
    let data = &r.data;
    match r.event.as_str() {
        "step_started" => {
            if step.started.is_none() {
                step.started = Some(r.ts.clone());
            }
            if step.status == StepStatus::NotRun {
                step.status = StepStatus::Unfinished;
            }
            step.params = data.get("params").cloned().unwrap_or(Value::Null);
        }
        "step_skipped" => {
            step.status = StepStatus::Skipped;
            step.finished = Some(r.ts.clone());
            step.summary = s(data, "reason").into();
        }
        "step_planned" => {
            if step.plan.is_empty() {
                for c in data
                    .get("changes")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    step.plan.push((
                        format!("{} {}: {}", s(c, "action"), s(c, "target"), s(c, "detail")),
                        c.get("document").map(value_text),
                    ));
                }
            }
            if data.get("dry_run").and_then(Value::as_bool) == Some(true) {
                step.status = StepStatus::Planned;
                step.finished = Some(r.ts.clone());
            }
        }
        "step_attempt_failed" => step.events.push((
            r.ts.clone(),
            format!(
                "attempt {} failed: {}",
                data.get("attempt").and_then(Value::as_u64).unwrap_or(0),
                s(data, "error")
            ),
        )),
        "step_applied" => {
            if let Some(Value::Object(o)) = data.get("outputs") {
                for (k, v) in o {
                    if k != "summary" {
                        step.evidence.push((k.clone(), value_text(v)));
                    }
                }
            }
        }
        "step_completed" => {
            step.status = StepStatus::Completed;
            step.finished = Some(r.ts.clone());
            step.duration_ms = data.get("duration_ms").and_then(Value::as_u64);
            step.summary = s(data, "summary").into();
            if let Some(Value::Object(o)) = data.get("evidence") {
                for (k, v) in o {
                    if k != "summary" {
                        step.evidence.push((k.clone(), value_text(v)));
                    }
                }
            }
            if step.kind == "approval" {
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
        "step_failed" => {
            step.status = StepStatus::Failed;
            step.finished = Some(r.ts.clone());
            step.summary = s(data, "error").into();
        }
        "traffic_stage"
        | "traffic_stage_insync"
        | "analysis"
        | "traffic_returned"
        | "traffic_ttl_restore"
        | "ttl_wait"
        | "panic" => {
            if let Some(line) = crate::engine::ui::line(r) {
                let text = line.trim().trim_start_matches(['→', '⚠', '…']).trim();
                let text = text
                    .strip_prefix(&format!("{}:", step.id))
                    .unwrap_or(text)
                    .trim();
                step.events.push((r.ts.clone(), text.to_string()));
            }
        }
        "rollback_step_completed" => {
            step.rollback = Some(StepRollback {
                at: r.ts.clone(),
                restored: data
                    .get("restored")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|x| RestoredRow {
                        object: s(x, "object").into(),
                        before: s(x, "before").into(),
                        after: s(x, "after").into(),
                        detail: s(x, "detail").into(),
                    })
                    .collect(),
                error: None,
                manual: Vec::new(),
            })
        }
        "rollback_step_failed" => {
            step.rollback = Some(StepRollback {
                at: r.ts.clone(),
                restored: Vec::new(),
                error: Some(s(data, "error").into()),
                manual: data
                    .get("manual")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str().map(str::to_string))
                    .collect(),
            })
        }
        _ => {}
    }
}
