//! What a step receives (`StepContext`) and returns (`Planned`, `StepError`).

use super::journal::Journal;
use super::Record;
use crate::config::Environment;
use crate::providers::Providers;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::time::Instant;

/// How a run acts on the world.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Full run against a non-production environment; recorded as a rehearsal.
    Rehearse,
    /// Full run (production or any environment).
    Execute,
    /// Every step plans against live state and prints what it would change; nothing changes.
    DryRun,
}

impl Mode {
    /// `rehearse`, `execute` or `dry-run`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Rehearse => "rehearse",
            Mode::Execute => "execute",
            Mode::DryRun => "dry-run",
        }
    }
}

/// Everything one step invocation may use.
pub struct StepContext<'a> {
    /// The run's id (also in AWS session names and backup object names).
    pub run_id: &'a str,
    /// This step's id.
    pub step_id: &'a str,
    /// The run's mode.
    pub mode: Mode,
    /// The resolved environment.
    pub env: &'a Environment,
    /// Rendered parameters, secrets included: use for effects, never record.
    pub params: Record,
    /// Apply + verify must finish by then.
    pub deadline: Instant,
    /// Clients for AWS, Kubernetes, PostgreSQL, Terraform.
    pub providers: &'a Providers,
    /// The run's directory under `.cutover/runs/`, for files such as saved Terraform plans.
    pub run_dir: &'a Path,
    /// The project root (where `environments/` is).
    pub root: &'a Path,
    /// Prints a progress line for a long wait (stderr on a terminal, an event with --output json).
    pub progress: &'a (dyn Fn(&str) + Send + Sync),
    /// Appends a [`Journal`] record for this step to the event log and fsyncs it before
    /// returning: for intents and evidence inside a long step (a traffic stage about to be
    /// submitted, an analysis verdict). Its fields must be non-secret.
    pub journal: &'a (dyn Fn(Journal) -> Result<(), StepError> + Send + Sync),
    /// The panic flag file: while it exists, every safe point ([`StepContext::check_deadline`])
    /// stops the step. `None` during rollback, which a panic must not stop.
    pub panic_flag: Option<&'a Path>,
    /// Step ids approved on the command line (`--approve STEP`).
    pub approved: &'a [String],
    /// The application's writes as the run's heartbeat sees them: every safe point fails the
    /// step once their outage passes the runbook's budget. `None` without a heartbeat and during
    /// rollback.
    pub writes: Option<&'a dyn WriteWatch>,
}

/// What the run watches beside its steps: the application's writes. The engine implements it
/// over the heartbeat; a step only asks it at its safe points.
pub trait WriteWatch: Send + Sync {
    /// `Some(why)` when the application's write outage (on any path that serves users) has
    /// passed the runbook's budget, naming the path, the outage in milliseconds and the last
    /// error a write met.
    fn over_budget(&self) -> Option<String>;
}

/// Longest sleep between two safe points of [`StepContext::wait`] and
/// [`StepContext::watched`]: a panic flag is honoured within this plus one check (the issue's
/// bound is 2 s).
pub const SAFE_POINT_INTERVAL: Duration = Duration::from_millis(250);

impl StepContext<'_> {
    /// Time left until the deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A safe point: [`StepError::Panic`] when the panic flag is raised, [`StepError::Timeout`]
    /// when the deadline has passed (naming what was awaited).
    pub fn check_deadline(&self, awaiting: &str) -> Result<(), StepError> {
        if let Some(reason) = self.panic_flag.and_then(panic_reason) {
            return Err(StepError::Panic(reason));
        }
        if let Some(why) = self.writes.and_then(|w| w.over_budget()) {
            return Err(StepError::WriteOutage(why));
        }
        if Instant::now() >= self.deadline {
            Err(StepError::Timeout(awaiting.to_string()))
        } else {
            Ok(())
        }
    }

    /// Waits `d` (less when the deadline comes first), passing a safe point
    /// ([`StepContext::check_deadline`]) at least every [`SAFE_POINT_INTERVAL`].
    ///
    /// # Errors
    /// What [`StepContext::check_deadline`] returns at the first safe point that fails.
    pub async fn wait(&self, d: Duration, awaiting: &str) -> Result<(), StepError> {
        let until = Instant::now() + d;
        loop {
            self.check_deadline(awaiting)?;
            let now = Instant::now();
            if now >= until {
                return Ok(());
            }
            let next = (until - now).min(SAFE_POINT_INTERVAL).min(self.remaining());
            tokio::time::sleep(next.max(Duration::from_millis(1))).await;
        }
    }

    /// Runs `f` while passing safe points every [`SAFE_POINT_INTERVAL`]: the panic flag, the
    /// write budget and the deadline stop the step without waiting for `f`, which is dropped.
    /// Only for calls that are safe to drop at any await: a probe, a query, a copy whose chunks
    /// commit with their progress rows (never a Route 53 change or a Terraform apply).
    ///
    /// # Errors
    /// What [`StepContext::check_deadline`] returns at the first safe point that fails.
    pub async fn watched<F: std::future::Future>(
        &self,
        f: F,
        awaiting: &str,
    ) -> Result<F::Output, StepError> {
        tokio::pin!(f);
        loop {
            self.check_deadline(awaiting)?;
            tokio::select! {
                out = &mut f => return Ok(out),
                _ = tokio::time::sleep(SAFE_POINT_INTERVAL) => {}
            }
        }
    }
}

/// When the panic flag file `path` exists: `<path>` plus its first line (at most 200 characters)
/// as the operator's reason, e.g. `.cutover/panic-staging ("checkout errors")`.
pub fn panic_reason(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path)
        .ok()
        .or_else(|| path.exists().then(String::new))?;
    let first: String = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .take(200)
        .collect();
    Some(if first.is_empty() {
        format!("panic flag {} raised", path.display())
    } else {
        format!("panic flag {} raised: {first}", path.display())
    })
}

/// What one [`Change`] does to its object, as a dry-run prints it (`create`, `update`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Makes an object that is not there.
    Create,
    /// Changes an object in place.
    Update,
    /// Destroys and makes an object again (a Terraform replacement).
    Replace,
    /// Removes an object.
    Delete,
    /// Restarts workloads (a rollout).
    Restart,
    /// Adds a marker to an object without changing what it does (an annotation).
    Annotate,
    /// Runs a command or statement whose effect is the step's (`terraform apply`, SQL).
    Run,
    /// Reads and judges; changes nothing.
    Check,
    /// Live state already matches: nothing to do.
    None,
    /// Not known before earlier steps apply (a dry-run's parameters that depend on them).
    Unknown,
}

impl Action {
    /// The action as written in the event log and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Replace => "replace",
            Action::Delete => "delete",
            Action::Restart => "restart",
            Action::Annotate => "annotate",
            Action::Run => "run",
            Action::Check => "check",
            Action::None => "none",
            Action::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change a step would make, as a dry-run prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// What the change does.
    pub action: Action,
    /// The object, e.g. `secret shop/shop-db` or `CNAME shop.staging.example.com`.
    pub target: String,
    /// Human-readable detail, never a secret value (fingerprints only).
    pub detail: String,
    /// The exact request this change is, when there is one: a Route 53 change batch, SQL text.
    /// A dry-run prints it; the real run records the same document when it submits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<Value>,
}

impl Change {
    /// Shorthand constructor.
    pub fn new(action: Action, target: impl Into<String>, detail: impl Into<String>) -> Self {
        Change {
            action,
            target: target.into(),
            detail: detail.into(),
            document: None,
        }
    }

    /// The same change carrying its exact request document.
    pub fn with_document(mut self, document: Value) -> Self {
        self.document = Some(document);
        self
    }
}

/// What `plan` observed and would do.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Planned {
    /// The changes `apply` would make; empty or `none` entries when live state already matches.
    pub changes: Vec<Change>,
    /// Rollback material observed before any change (non-secret).
    pub before: Value,
    /// Outputs a dry-run can already predict, so later steps' templates render.
    pub predicted: Record,
}

/// One object a rollback put back, with fingerprints of its state before and after the rollback
/// (SHA-256 of the value or of the record sets' canonical JSON), so the audit can show what
/// changed without showing a secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restored {
    /// The object, e.g. `secret shop/shop-db key DATABASE_URL` or `CNAME shop.example.com.`.
    pub object: String,
    /// Fingerprint of the state the rollback found (`(absent)` when there was none).
    pub before: String,
    /// Fingerprint of the state the rollback left.
    pub after: String,
    /// What happened, in words without secret values.
    pub detail: String,
}

impl Restored {
    /// An entry whose states are given as text (values, canonical JSON); both are fingerprinted.
    /// `None` stands for an absent object.
    pub fn new(
        object: impl Into<String>,
        before: Option<&str>,
        after: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        let fp = |s: Option<&str>| {
            s.map(crate::secret::fingerprint)
                .unwrap_or_else(|| "(absent)".into())
        };
        Restored {
            object: object.into(),
            before: fp(before),
            after: fp(after),
            detail: detail.into(),
        }
    }

    /// `object: before → after (detail)`.
    pub fn line(&self) -> String {
        format!(
            "{}: {} → {} ({})",
            self.object, self.before, self.after, self.detail
        )
    }
}

impl Planned {
    /// A plan that changes nothing and reports one read-only check (`action: check`).
    pub fn check(target: impl Into<String>, detail: impl Into<String>) -> Self {
        Planned {
            changes: vec![Change::new(Action::Check, target, detail)],
            ..Default::default()
        }
    }
}

/// Why a step (or its rollback) failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Rendered parameters do not fit the kind.
    #[error("invalid parameters: {0}")]
    Params(String),
    /// A provider (AWS, Kubernetes, PostgreSQL, Terraform, HTTP) call failed.
    #[error(transparent)]
    Provider(#[from] crate::providers::ProviderError),
    /// The deadline passed while waiting for the named condition.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The step observed a state that fails its check (mismatch, unhealthy, missing association).
    #[error("{0}")]
    Check(String),
    /// A safety gate refused (wrong account, missing approval, ...): the step changes nothing.
    #[error("{0}")]
    Gate(String),
    /// The operator raised the panic flag: the step stopped at a safe point; the run rolls back.
    #[error("{0}")]
    Panic(String),
    /// The application's write outage passed the runbook's budget (`heartbeat.max_write_outage`):
    /// the step stopped at a safe point; the run rolls back.
    #[error("the application's writes: {0}")]
    WriteOutage(String),
    /// The step could not journal a record: the run stops (the executor turns this into
    /// [`crate::engine::EngineError::Log`]); a step must return it, never retry past it.
    #[error("the event log could not be written: {0}")]
    Journal(String),
}
