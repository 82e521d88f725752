//! What a step receives (`StepContext`) and returns (`Planned`, `StepError`).

use crate::config::Environment;
use crate::providers::Providers;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
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
    pub params: Map<String, Value>,
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
}

impl StepContext<'_> {
    /// Time left until the deadline (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// A [`StepError::Timeout`] when the deadline has passed, naming what was awaited.
    pub fn check_deadline(&self, awaiting: &str) -> Result<(), StepError> {
        if Instant::now() >= self.deadline {
            Err(StepError::Timeout(awaiting.to_string()))
        } else {
            Ok(())
        }
    }
}

/// One change a step would make, as a dry-run prints it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `create`, `update`, `delete`, `restart`, `run`, `check` or `none`.
    pub action: String,
    /// The object, e.g. `secret shop/shop-db` or `CNAME shop.staging.example.com`.
    pub target: String,
    /// Human-readable detail, never a secret value (fingerprints only).
    pub detail: String,
}

impl Change {
    /// Shorthand constructor.
    pub fn new(action: &str, target: impl Into<String>, detail: impl Into<String>) -> Self {
        Change {
            action: action.into(),
            target: target.into(),
            detail: detail.into(),
        }
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
    pub predicted: Map<String, Value>,
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
    /// A safety gate refused (wrong account, ...): the run stops before any mutation, exit 3.
    #[error("{0}")]
    Gate(String),
}
