//! The typed records of the event log: what the engine appends ([`Event`]) and what step kinds
//! journal ([`Journal`]), as [`Entry`], parsed from and written to the same JSON as before (a
//! record's `type` is the variant's snake_case name, its `data` the variant's fields), so logs
//! written before the types existed still verify and replay.
//!
//! This module owns the shapes and their conversion to and from a record's `(type, data)`; it
//! must not write files (that is [`super::log`]) or decide what a sequence of records means
//! (that is [`super::replay`]).

use super::log::Record;
use crate::steps::context::{Change, Mode, Restored};
use crate::steps::journal::Journal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One record the engine appends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// The first record of every run.
    RunStarted(RunStarted),
    /// The promotion gate was bypassed (break-glass).
    GateBypassed(GateBypassed),
    /// STS confirmed the environment's account (each process of the run).
    AccountVerified(AccountVerified),
    /// The run was refused before any step (wrong account, no credentials).
    RunRefused(Reason),
    /// Secrets read from a file, Secrets Manager or SSM: names, sources, fingerprints.
    SecretsRead(SecretsRead),
    /// A later process continues the run (`resume`, or `rollback` when `rollback`).
    RunResumed(RunResumed),
    /// The heartbeat writers started: what they write, where, and how the application reloads.
    HeartbeatStarted(HeartbeatStarted),
    /// A heartbeat writer could not start or read its URL.
    HeartbeatFailed(HeartbeatFailed),
    /// The heartbeat's measurement at the end of a process's run (writes attempted and
    /// acknowledged, the longest gap, acknowledged writes missing, per path).
    Heartbeat(Box<HeartbeatRecord>),
    /// A phase's first step is about to start.
    PhaseStarted(PhaseStarted),
    /// A step's attempt starts (its intent: plan, apply and verify follow).
    StepStarted(StepStarted),
    /// A step's `when` is false.
    StepSkipped(StepSkipped),
    /// A step's plan, with the state its rollback restores (`before`).
    StepPlanned(StepPlanned),
    /// An apply attempt failed and is retried after `retry_in_ms`.
    StepAttemptFailed(StepAttemptFailed),
    /// A step's apply succeeded, with its outputs.
    StepApplied(StepApplied),
    /// A step's verify passed.
    StepCompleted(StepCompleted),
    /// A step failed (the run rolls back, or a dry-run ends).
    StepFailed(StepFailed),
    /// The panic flag stopped the run.
    Panic(PanicRaised),
    /// The application's write outage, as the heartbeat measured it, passed the runbook's
    /// budget between steps or after the last one: the run rolls back. (Inside a step, the
    /// step's failure says it.)
    WriteOutage(WriteOutage),
    /// SIGINT or SIGTERM stopped the run at a step; `resume` continues it.
    RunInterrupted(RunInterrupted),
    /// The rollback of every started step, newest first, begins.
    RollbackStarted(RollbackStarted),
    /// A step's rollback would lose data or cannot run: nothing was rolled back.
    RollbackRefused(RollbackRefused),
    /// One step's rollback starts.
    RollbackStepStarted(RollbackStepStarted),
    /// One step's rollback restored what it lists.
    RollbackStepCompleted(RollbackStepCompleted),
    /// One step's rollback failed.
    RollbackStepFailed(RollbackStepFailed),
    /// The last record of a process's run.
    RunFinished(RunFinished),
    /// A record a step journaled.
    #[serde(untagged)]
    Journal(Journal),
}

/// Which migration (`migrations/<name>.yaml`) and wave a run belongs to ([`RunStarted`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationTag {
    /// The migration's name.
    pub name: String,
    /// The wave's name.
    pub wave: String,
}

/// One entry of the runbook's step list in [`RunStarted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepEntry {
    /// Phase name.
    pub phase: String,
    /// Step id.
    pub id: String,
    /// Step kind.
    pub kind: String,
}

/// [`Event::RunStarted`]. Fields default when absent (logs of earlier versions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    /// The run id.
    pub run_id: String,
    /// Environment name.
    pub environment: String,
    /// `production` or `non-production`.
    #[serde(default)]
    pub tier: String,
    /// The environment's AWS account id.
    #[serde(default)]
    pub account_id: String,
    /// AWS region.
    #[serde(default)]
    pub region: String,
    /// How the run acts.
    pub mode: Mode,
    /// Runbook name.
    #[serde(default)]
    pub runbook: String,
    /// Runbook file, relative to the project.
    #[serde(default)]
    pub runbook_path: String,
    /// SHA-256 of the runbook file.
    #[serde(default)]
    pub runbook_digest: String,
    /// The environment's database the run acts on (empty in logs of earlier versions: the
    /// environment's only one).
    #[serde(default)]
    pub database: String,
    /// The migration and wave that started this run, when a migration did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<MigrationTag>,
    /// SHA-256 of the resolved plan.
    #[serde(default)]
    pub plan_digest: String,
    /// Who started it (`user@host`).
    #[serde(default)]
    pub operator: String,
    /// The CI job's URL or id, when run in CI.
    #[serde(default)]
    pub ci_job: Option<String>,
    /// The tool's version.
    #[serde(default)]
    pub cutover_version: String,
    /// The runbook's steps in order.
    #[serde(default)]
    pub steps: Vec<StepEntry>,
    /// Approval step ids approved on the command line.
    #[serde(default)]
    pub approved: Vec<String>,
}

/// [`Event::GateBypassed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateBypassed {
    /// The gate (`promotion`).
    pub gate: String,
    /// The operator's stated reason.
    pub reason: String,
    /// What the gate would have required.
    #[serde(default)]
    pub missing: Vec<String>,
    /// Who bypassed it.
    #[serde(default)]
    pub operator: String,
}

/// [`Event::AccountVerified`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountVerified {
    /// The account STS reported.
    pub account_id: String,
    /// The assumed role's ARN.
    pub caller_arn: String,
}

/// [`Event::SecretsRead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretsRead {
    /// Each secret read by this process at this point.
    pub secrets: Vec<SecretRead>,
}

/// One secret in [`SecretsRead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRead {
    /// `secrets.<name>`'s name, or `source_database_url` / `target_database_url`.
    pub name: String,
    /// Where it came from, e.g. `Secrets Manager secret shop-staging/app` (names, never values).
    pub source: String,
    /// [`crate::secret::fingerprint`] of the value; `None` for an optional one that is absent.
    pub fingerprint: Option<String>,
}

/// A reason alone ([`Event::RunRefused`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reason {
    /// Why (redacted).
    pub reason: String,
}

/// [`Event::RunResumed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResumed {
    /// The run id.
    pub run_id: String,
    /// True when `cutover rollback` continues the run.
    #[serde(default)]
    pub rollback: bool,
}

/// One heartbeat path's figures ([`HeartbeatRecord::paths`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathFigures {
    /// Acknowledged writes in each second after `started_at`.
    #[serde(default)]
    pub acked_per_second: Vec<u32>,
    /// Writes the server acknowledged.
    #[serde(default)]
    pub acknowledged: u64,
    /// Writes attempted.
    #[serde(default)]
    pub attempted: u64,
    /// Times the writer (re)connected.
    #[serde(default)]
    pub connections: u64,
    /// The error that kept the writer from starting, if any.
    #[serde(default)]
    pub error: Option<String>,
    /// Writes that failed: refused by the server, or not acknowledged within the writer's
    /// timeout (1 s; 30 s with `reload: pooler`, where a paused pooler makes writes wait).
    #[serde(default)]
    pub failed: u64,
    /// When this path's longest gap began.
    #[serde(default)]
    pub gap_from: Option<chrono::DateTime<chrono::Utc>>,
    /// When it ended.
    #[serde(default)]
    pub gap_to: Option<chrono::DateTime<chrono::Utc>>,
    /// The longest time between two acknowledged writes while the path served users, ms.
    #[serde(default)]
    pub longest_gap_ms: u64,
    /// Its acknowledged writes missing at the end (when they were checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<u64>,
    /// The first (at most 20) of their sequence numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_seqs: Option<Vec<i64>>,
    /// True when the longest gap was still open when the writer stopped.
    #[serde(default)]
    pub open_at_end: bool,
    /// `aws` or `legacy`.
    #[serde(default)]
    pub path: String,
    /// When the writer started (the origin of `acked_per_second`).
    #[serde(default)]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Times the database URL changed under the writer.
    #[serde(default)]
    pub url_changes: u64,
    /// The longest time one acknowledged write took (from sending it to its COMMIT), ms: how
    /// long a user's write waited, e.g. in a paused pooler.
    #[serde(default)]
    pub wait_max_ms: u64,
    /// The 99th percentile of the acknowledged writes' times (nearest rank), ms.
    #[serde(default)]
    pub wait_p99_ms: u64,
    /// The `writer` column of its rows.
    #[serde(default)]
    pub writer: String,
    /// Time from its first acknowledged write to its last, ms.
    #[serde(default)]
    pub writing_ms: u64,
}

/// [`Event::Heartbeat`]: the `aws` path's counts at the top, the run's write outage (the longest
/// gap over every path), the acknowledged writes missing over every path, how the application
/// reloads, and each path's own figures. Fields are in the order the record has always had
/// (alphabetical), and every one has a default, so earlier logs read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    /// The `aws` path's acknowledged writes per second.
    #[serde(default)]
    pub acked_per_second: Vec<u32>,
    /// The `aws` path's acknowledged writes.
    #[serde(default)]
    pub acknowledged: u64,
    /// The `aws` path's attempted writes.
    #[serde(default)]
    pub attempted: u64,
    /// The `aws` path's connections.
    #[serde(default)]
    pub connections: u64,
    /// The database the Secret names at the end (host, port, name; no credential).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// With `reload: restart`, the Deployments that read the Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<String>>,
    /// Why the `aws` writer did not run, if it did not.
    #[serde(default)]
    pub error: Option<String>,
    /// When the run's write outage began.
    #[serde(default)]
    pub gap_from: Option<chrono::DateTime<chrono::Utc>>,
    /// The path of the longest gap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gap_path: Option<String>,
    /// When it ended.
    #[serde(default)]
    pub gap_to: Option<chrono::DateTime<chrono::Utc>>,
    /// The run's write outage: the longest gap over every path, ms.
    #[serde(default)]
    pub longest_gap_ms: u64,
    /// `heartbeat.max_write_outage`, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_write_outage_ms: Option<u64>,
    /// Acknowledged writes missing at the end over every path (absent when not checked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<u64>,
    /// Why the missing writes could not be checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_check_error: Option<String>,
    /// The first (at most 20) missing sequence numbers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_seqs: Option<Vec<i64>>,
    /// True when the longest gap was still open at the end.
    #[serde(default)]
    pub open_at_end: bool,
    /// Each path's own figures.
    #[serde(default)]
    pub paths: Vec<PathFigures>,
    /// How the application reloads its Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<crate::config::Reload>,
    /// When the `aws` writer started.
    #[serde(default)]
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The `aws` path's URL changes.
    #[serde(default)]
    pub url_changes: u64,
    /// With `reload: volume`, the delay before a mounted Secret shows a change, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_delay_ms: Option<u64>,
    /// The `aws` writer's id.
    #[serde(default)]
    pub writer: String,
    /// The `aws` path's time from first to last acknowledged write, ms.
    #[serde(default)]
    pub writing_ms: u64,
}

/// [`Event::HeartbeatStarted`]. Every field a later version added has a default, so logs
/// written before still read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatStarted {
    /// The writer's id (the run id; `<id>/legacy` for the legacy path's writer).
    pub writer: String,
    /// Writes attempted per second on each path.
    pub writes_per_second: f64,
    /// `namespace/name` of the Secret the writer reads its URL from.
    pub secret: String,
    /// The Secret's key holding the URL.
    pub key: String,
    /// The table written.
    pub table: String,
    /// How often the writer re-reads the Secret, in milliseconds.
    pub reload_ms: u64,
    /// How the application picks up a changed Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<crate::config::Reload>,
    /// The Deployments restarted to reload (`reload: restart`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployments: Option<Vec<String>>,
    /// The kubelet's delay before a mounted Secret changes, in milliseconds (`reload: volume`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_delay_ms: Option<u64>,
    /// The runbook's write-outage budget, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_write_outage_ms: Option<u64>,
    /// The legacy path's writer, when the runbook writes through the legacy DNS name too
    /// (`null` without one).
    #[serde(default)]
    pub legacy: Option<LegacyPath>,
}

/// [`HeartbeatStarted::legacy`]: the record the legacy writer resolves and what it named when
/// the run began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LegacyPath {
    /// The DNS record (`shop.example.com`).
    pub record: String,
    /// Its type (`CNAME`, `A`).
    #[serde(rename = "type")]
    pub rtype: String,
    /// What it named when the run began: the legacy side's targets.
    pub legacy_targets: Vec<String>,
}

/// [`Event::HeartbeatFailed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatFailed {
    /// The writer's path (`legacy`), absent for the AWS path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Why (redacted).
    pub error: String,
}

/// [`Event::PhaseStarted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseStarted {
    /// Phase name.
    pub phase: String,
}

/// [`Event::StepStarted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStarted {
    /// Phase name.
    pub phase: String,
    /// Step kind.
    pub kind: String,
    /// Rendered parameters, secrets as fingerprints.
    pub params: Value,
    /// The attempt's deadline, in seconds.
    pub timeout_s: u64,
}

/// [`Event::StepSkipped`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepSkipped {
    /// Step kind.
    pub kind: String,
    /// Why (`when` ... is False).
    pub reason: String,
}

/// [`Event::StepPlanned`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepPlanned {
    /// Step kind.
    pub kind: String,
    /// What the apply will change.
    pub changes: Vec<Change>,
    /// The state the step's rollback restores (`null` when it restores nothing).
    #[serde(default)]
    pub before: Value,
    /// True in a dry-run (nothing is applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// [`Event::StepAttemptFailed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepAttemptFailed {
    /// 1-based attempt that failed.
    pub attempt: u32,
    /// Why (redacted).
    pub error: String,
    /// Backoff before the next attempt, in milliseconds.
    pub retry_in_ms: u64,
}

/// [`Event::StepApplied`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepApplied {
    /// Step kind.
    pub kind: String,
    /// The step's outputs, by name (`steps.<id>.outputs.<name>` in later templates).
    pub outputs: Map<String, Value>,
    /// The AWS calls that changed something while this record's work ran, with their request
    /// ids (`crate::providers::aws_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_calls: Vec<crate::providers::aws_calls::AwsCall>,
}

/// [`Event::StepCompleted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepCompleted {
    /// Step kind.
    pub kind: String,
    /// What verify observed.
    #[serde(default)]
    pub evidence: Value,
    /// One line for people.
    #[serde(default)]
    pub summary: String,
    /// Duration of the attempt, in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// Apply attempts made.
    #[serde(default = "one")]
    pub attempts: u32,
    /// The AWS calls that changed something while this record's work ran, with their request
    /// ids (`crate::providers::aws_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_calls: Vec<crate::providers::aws_calls::AwsCall>,
}

fn one() -> u32 {
    1
}

/// [`Event::StepFailed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepFailed {
    /// Step kind.
    pub kind: String,
    /// Why (redacted).
    pub error: String,
    /// The AWS calls that changed something while this record's work ran, with their request
    /// ids (`crate::providers::aws_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_calls: Vec<crate::providers::aws_calls::AwsCall>,
}

/// [`Event::WriteOutage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteOutage {
    /// The heartbeat path (`aws`, `legacy`).
    pub path: String,
    /// How long its writes went unacknowledged, milliseconds.
    pub outage_ms: u64,
    /// `heartbeat.max_write_outage`, milliseconds.
    pub budget_ms: u64,
    /// The last error a write met (the server's message), when one did.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Where the run stood (`during the step`, `before the step started`, `after the last step`).
    pub when: String,
}

impl WriteOutage {
    /// One sentence for the rollback's reason.
    pub fn reason(&self) -> String {
        format!(
            "the {} path's writes went {} ms without an acknowledgement ({}), more than heartbeat.max_write_outage ({} s){}",
            self.path,
            self.outage_ms,
            self.when,
            self.budget_ms as f64 / 1000.0,
            self.last_error
                .as_deref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        )
    }
}

/// [`Event::Panic`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PanicRaised {
    /// The flag file.
    pub flag: String,
    /// Its content, or a default text.
    pub reason: String,
    /// When it was raised (its modification time, RFC 3339), when the file could be read.
    #[serde(default)]
    pub raised_at: Option<String>,
    /// Where the run stopped (`before the step started`, `during the step`).
    #[serde(default)]
    pub when: String,
}

/// [`Event::RunInterrupted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInterrupted {
    /// The run id.
    pub run_id: String,
    /// `SIGINT` or `SIGTERM`.
    #[serde(default)]
    pub signal: String,
}

/// [`Event::RollbackStarted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackStarted {
    /// The step that failed (empty for an operator's `cutover rollback`).
    pub failed_step: String,
    /// Why.
    pub reason: String,
}

/// [`Event::RollbackRefused`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackRefused {
    /// Why the step's rollback cannot run.
    pub reason: String,
    /// What a person must do instead.
    #[serde(default)]
    pub manual: Vec<String>,
}

/// [`Event::RollbackStepStarted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackStepStarted {
    /// Step kind.
    pub kind: String,
}

/// [`Event::RollbackStepCompleted`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackStepCompleted {
    /// What was restored, fingerprints only.
    #[serde(default)]
    pub restored: Vec<Restored>,
    /// Why nothing was done (`rollback: skip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The AWS calls that changed something while this record's work ran, with their request
    /// ids (`crate::providers::aws_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_calls: Vec<crate::providers::aws_calls::AwsCall>,
}

/// [`Event::RollbackStepFailed`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackStepFailed {
    /// Why (redacted).
    pub error: String,
    /// What a person must do.
    #[serde(default)]
    pub manual: Vec<String>,
    /// True when the rollback stopped here (the earlier steps were not rolled back).
    #[serde(default)]
    pub stopped: bool,
    /// The AWS calls that changed something while this record's work ran, with their request
    /// ids (`crate::providers::aws_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aws_calls: Vec<crate::providers::aws_calls::AwsCall>,
}

/// How a run (or one process of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    /// Every step completed.
    Succeeded,
    /// A dry-run planned every step.
    Planned,
    /// A dry-run's plan failed; nothing changed.
    Failed,
    /// Refused before any step.
    Refused,
    /// A step failed and every started step was rolled back.
    RolledBack,
    /// A step's rollback refused: nothing was rolled back.
    RollbackRefused,
    /// A step's rollback failed: what a person must do is listed.
    RollbackIncomplete,
    /// Acknowledged writes are missing (the steps' own status is `steps_status`).
    WritesMissing,
}

impl RunStatus {
    /// The status as written: `succeeded`, `rolled-back`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Planned => "planned",
            RunStatus::Failed => "failed",
            RunStatus::Refused => "refused",
            RunStatus::RolledBack => "rolled-back",
            RunStatus::RollbackRefused => "rollback-refused",
            RunStatus::RollbackIncomplete => "rollback-incomplete",
            RunStatus::WritesMissing => "writes-missing",
        }
    }
}

/// A step a rollback could not finish, in [`RunFinished::incomplete`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incomplete {
    /// Step id.
    pub step: String,
    /// Step kind.
    pub kind: String,
    /// Why (redacted).
    pub error: String,
    /// What a person must do.
    #[serde(default)]
    pub manual: Vec<String>,
}

/// [`Event::RunFinished`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFinished {
    /// The run id.
    pub run_id: String,
    /// How it ended.
    pub status: RunStatus,
    /// Environment name.
    #[serde(default)]
    pub environment: String,
    /// How the run acted.
    pub mode: Mode,
    /// The failed step, when one failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<String>,
    /// A dry-run's plan error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why the run was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Steps whose rollback refused or failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incomplete: Vec<Incomplete>,
    /// With [`RunStatus::WritesMissing`]: the steps' own status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_status: Option<RunStatus>,
    /// With [`RunStatus::WritesMissing`]: how many acknowledged writes are missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_writes: Option<u64>,
    /// With [`RunStatus::WritesMissing`]: the database they are missing from (no password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_in: Option<String>,
}

/// A record a log holds, typed.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// 0-based position in the log.
    pub seq: u64,
    /// RFC 3339 UTC timestamp with milliseconds.
    pub ts: String,
    /// The step, for step records.
    pub step: Option<String>,
    /// What happened.
    pub event: Event,
}

/// A record whose `type` or `data` is not one this version knows.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("record {seq}: `{event}` is not a record this version knows: {message}")]
pub struct EventError {
    /// The record's `seq`.
    pub seq: u64,
    /// Its `type`.
    pub event: String,
    /// The serde error.
    pub message: String,
}

impl Event {
    /// The AWS calls this record carries (empty for records that carry none).
    pub fn aws_calls(&self) -> &[crate::providers::aws_calls::AwsCall] {
        match self {
            Event::StepApplied(e) => &e.aws_calls,
            Event::StepCompleted(e) => &e.aws_calls,
            Event::StepFailed(e) => &e.aws_calls,
            Event::RollbackStepCompleted(e) => &e.aws_calls,
            Event::RollbackStepFailed(e) => &e.aws_calls,
            _ => &[],
        }
    }

    /// Puts `calls` into the record, when it is one that carries AWS calls (a step's applied,
    /// completed or failed record, or one step's rollback outcome); otherwise gives them back.
    pub fn with_aws_calls(
        &mut self,
        calls: Vec<crate::providers::aws_calls::AwsCall>,
    ) -> Option<Vec<crate::providers::aws_calls::AwsCall>> {
        let slot = match self {
            Event::StepApplied(e) => &mut e.aws_calls,
            Event::StepCompleted(e) => &mut e.aws_calls,
            Event::StepFailed(e) => &mut e.aws_calls,
            Event::RollbackStepCompleted(e) => &mut e.aws_calls,
            Event::RollbackStepFailed(e) => &mut e.aws_calls,
            _ => return Some(calls),
        };
        slot.extend(calls);
        None
    }

    /// The record's `(type, data)`.
    pub fn to_parts(&self) -> (String, Value) {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => {
                let t = match m.remove("type") {
                    Some(Value::String(t)) => t,
                    _ => String::new(),
                };
                (t, m.remove("data").unwrap_or(Value::Null))
            }
            _ => (String::new(), Value::Null),
        }
    }

    /// Parses a record's `(type, data)`.
    ///
    /// # Errors
    /// The serde error when neither an engine event nor a step journal record matches.
    pub fn from_parts(event: &str, data: &Value) -> Result<Event, String> {
        let v = serde_json::json!({"type": event, "data": data});
        serde_json::from_value(v).map_err(|e| e.to_string())
    }
}

impl From<Journal> for Event {
    fn from(j: Journal) -> Event {
        Event::Journal(j)
    }
}

impl Entry {
    /// Types a record.
    ///
    /// # Errors
    /// [`EventError`] for a record this version does not know.
    pub fn from_record(r: &Record) -> Result<Entry, EventError> {
        Ok(Entry {
            seq: r.seq,
            ts: r.ts.clone(),
            step: r.step.clone(),
            event: Event::from_parts(&r.event, &r.data).map_err(|message| EventError {
                seq: r.seq,
                event: r.event.clone(),
                message,
            })?,
        })
    }
}

/// The records of a log this version knows, each with its typed event, in order (records of an
/// unknown type are passed over: status and reports still show the rest).
pub fn known(records: &[Record]) -> Vec<(&Record, Event)> {
    records
        .iter()
        .filter_map(|r| Event::from_parts(&r.event, &r.data).ok().map(|e| (r, e)))
        .collect()
}

/// The first `run_started` of `typed` ([`known`]) and the last `run_finished`, with their
/// records.
pub fn start_and_finish<'a>(
    typed: &'a [(&'a Record, Event)],
) -> (
    Option<(&'a Record, &'a RunStarted)>,
    Option<(&'a Record, &'a RunFinished)>,
) {
    let start = typed.iter().find_map(|(r, e)| match e {
        Event::RunStarted(s) => Some((*r, s)),
        _ => None,
    });
    let finish = typed.iter().rev().find_map(|(r, e)| match e {
        Event::RunFinished(f) => Some((*r, f)),
        _ => None,
    });
    (start, finish)
}

/// Types every record of a log.
///
/// # Errors
/// The first [`EventError`].
pub fn entries(records: &[Record]) -> Result<Vec<Entry>, EventError> {
    records.iter().map(Entry::from_record).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_round_trip_for_engine_and_journal_records() {
        let e = Event::RollbackStepCompleted(RollbackStepCompleted {
            aws_calls: Vec::new(),
            restored: vec![],
            note: Some("rollback: skip".into()),
        });
        let (t, d) = e.to_parts();
        assert_eq!(t, "rollback_step_completed");
        assert_eq!(d, json!({"restored": [], "note": "rollback: skip"}));
        assert_eq!(Event::from_parts(&t, &d).unwrap(), e);

        let j = Event::Journal(Journal::TrafficOldAnswersExpired(
            crate::steps::journal::OldAnswersExpired { ttl: 5 },
        ));
        let (t, d) = j.to_parts();
        assert_eq!(
            (t.as_str(), d.clone()),
            ("traffic_old_answers_expired", json!({"ttl": 5}))
        );
        assert_eq!(Event::from_parts(&t, &d).unwrap(), j);
    }

    #[test]
    fn an_unknown_type_or_a_wrong_field_is_an_error_not_a_guess() {
        assert!(Event::from_parts("step_teleported", &json!({})).is_err());
        assert!(Event::from_parts("step_failed", &json!({"kind": 3, "error": "x"})).is_err());
    }
}
