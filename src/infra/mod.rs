//! `cutover infra plan|apply|output`: Terraform for one environment's account, as a team runs it.
//!
//! A plan is made with the environment's assumed-role credentials (account checked by STS and,
//! when configured, its Organization placement), saved under `.cutover/plans/<env>.tfplan`, read
//! back with `terraform show -json`, summarised, checked against the plan policy
//! ([`policy`]) and reported with any drift. `apply` applies that saved plan file and nothing
//! else, under the environment's lock; Terraform's own S3 lockfile guards the state as well.
//!
//! This module owns the review of plans. It must not run runbook steps, and the static checks of
//! the Terraform tree live in [`check`].

pub mod check;
pub use crate::policy;

use crate::config::Environment;
use crate::engine::store::{self, S3Store};
use crate::local::state_dir;
use crate::providers::aws::AwsSession;
use crate::providers::terraform::{summarize, PlanSummary, Terraform};
use crate::providers::ProviderError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Why an infra command stopped.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    /// A gate refused: wrong account or placement, plan policy, lock held, no reviewed plan
    /// (exit 3). Nothing was changed.
    #[error("{0}")]
    Gate(String),
    /// Terraform or AWS failed (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl From<ProviderError> for InfraError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::WrongAccount { .. } | ProviderError::WrongPlacement(_) => {
                InfraError::Gate(e.to_string())
            }
            ProviderError::Terraform {
                failure: crate::providers::terraform::Failure::StateLocked,
                ..
            } => InfraError::Gate(format!("Terraform state is locked: {e}")),
            other => InfraError::Failed(other.to_string()),
        }
    }
}

/// A reviewed plan, as saved beside the plan file and as printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Review {
    /// Environment name.
    pub environment: String,
    /// Account the plan was made in (STS).
    pub account_id: String,
    /// Counts and addresses of planned changes.
    pub summary: PlanSummary,
    /// Whether `terraform plan -detailed-exitcode` reported changes (exit 2).
    pub changes: bool,
    /// Protected resources the plan deletes or replaces.
    pub violations: Vec<policy::Violation>,
    /// True when the violations refuse the plan (production tier).
    pub refused: bool,
    /// Resources changed outside Terraform since the last apply.
    pub drift: Vec<policy::Drift>,
    /// SHA-256 of the saved plan file (apply checks it is the reviewed one).
    pub plan_sha256: String,
    /// RFC 3339 time of the plan.
    pub planned_at: String,
    /// Who made it (see [`crate::engine`]'s operator rules).
    pub planned_by: String,
}

fn plans_dir(root: &Path) -> PathBuf {
    state_dir(root).join("plans")
}

/// The saved plan file of `env`.
pub fn plan_file(root: &Path, env: &str) -> PathBuf {
    plans_dir(root).join(format!("{env}.tfplan"))
}

fn review_file(root: &Path, env: &str) -> PathBuf {
    plans_dir(root).join(format!("{env}.review.json"))
}

fn sha256_file(path: &Path) -> Result<String, InfraError> {
    let bytes =
        std::fs::read(path).map_err(|e| InfraError::Failed(format!("{}: {e}", path.display())))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

async fn terraform_for(
    root: &Path,
    env: &Environment,
    session_id: &str,
) -> Result<(Terraform, AwsSession), InfraError> {
    let session = AwsSession::assume(env, session_id).await?;
    let tf = Terraform::for_environment(root, &state_dir(root), env, &session).await?;
    Ok((tf, session))
}

/// Plans `env`: init with its backend, `plan -detailed-exitcode -out`, `show -json`, policy and
/// drift. The plan file is kept for `apply` unless the policy refuses it.
///
/// # Errors
/// [`InfraError::Gate`] for a wrong account or placement or a held state lock;
/// [`InfraError::Failed`] when Terraform fails.
pub async fn plan(root: &Path, env: &Environment, session_id: &str) -> Result<Review, InfraError> {
    let (tf, session) = terraform_for(root, env, session_id).await?;
    tf.init(&env.terraform.backend).await?;
    std::fs::create_dir_all(plans_dir(root))
        .map_err(|e| InfraError::Failed(format!("{}: {e}", plans_dir(root).display())))?;
    let file = plan_file(root, &env.name);
    let _ = std::fs::remove_file(review_file(root, &env.name));
    let changes = tf.plan(&env.terraform.vars, &file, true).await?;
    let shown = tf.show_plan(&file).await?;
    let violations = policy::violations(&shown, &env.terraform.policy);
    let refused = !violations.is_empty() && policy::refuses(env.tier);
    let review = Review {
        environment: env.name.clone(),
        account_id: session.account_id.clone(),
        summary: summarize(&shown),
        changes,
        refused,
        violations,
        drift: policy::drift(&shown),
        plan_sha256: sha256_file(&file)?,
        planned_at: chrono::Utc::now().to_rfc3339(),
        planned_by: crate::local::operator(),
    };
    if refused {
        let _ = std::fs::remove_file(&file);
    } else {
        let text = serde_json::to_vec_pretty(&review).unwrap_or_default();
        std::fs::write(review_file(root, &env.name), text)
            .map_err(|e| InfraError::Failed(format!("saving the review: {e}")))?;
    }
    Ok(review)
}

/// Applies the plan `cutover infra plan ENV` saved, under the environment's lock, after checking
/// the file is the reviewed one and the policy still allows it. Returns the root's outputs.
///
/// # Errors
/// [`InfraError::Gate`] when another run or apply holds the lock (naming it), no reviewed plan is
/// saved, the file changed since review, the policy refuses it, or the state moved on since the
/// plan (Terraform: "Saved plan is stale"); [`InfraError::Failed`] when Terraform fails.
pub async fn apply(
    root: &Path,
    env: &Environment,
    session_id: &str,
) -> Result<(Review, Map<String, Value>), InfraError> {
    let (tf, session) = terraform_for(root, env, session_id).await?;
    let holder = format!("infra apply {session_id} ({})", crate::local::holder_info());
    let s3 = S3Store::for_env(env, &session);
    let _lock = store::acquire(
        &state_dir(root),
        s3.as_ref(),
        &env.name,
        session_id,
        &holder,
    )
    .await
    .map_err(|e| InfraError::Gate(e.to_string()))?;
    let file = plan_file(root, &env.name);
    let review: Review = std::fs::read(review_file(root, &env.name))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|_| file.exists())
        .ok_or_else(|| {
            InfraError::Gate(format!(
                "no reviewed plan for {0}: run `cutover infra plan {0}` first",
                env.name
            ))
        })?;
    if sha256_file(&file)? != review.plan_sha256 {
        return Err(InfraError::Gate(format!(
            "{} changed since it was reviewed; plan again",
            file.display()
        )));
    }
    let shown = tf.show_plan(&file).await?;
    let violations = policy::violations(&shown, &env.terraform.policy);
    if !violations.is_empty() && policy::refuses(env.tier) {
        return Err(InfraError::Gate(refusal(env, &violations)));
    }
    if let Err(e) = tf.apply(&file).await {
        if e.terraform_failure() == Some(crate::providers::terraform::Failure::StalePlan) {
            let _ = std::fs::remove_file(&file);
            return Err(InfraError::Gate(format!(
                "the state of {} changed since the plan was reviewed; run `cutover infra plan {}` again",
                env.name, env.name
            )));
        }
        return Err(e.into());
    }
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(review_file(root, &env.name));
    let outputs = tf.outputs().await?;
    Ok((review, outputs))
}

/// The root's outputs from state (sensitive ones left out).
///
/// # Errors
/// As [`plan`] for the account checks; [`InfraError::Failed`] when Terraform fails.
pub async fn output(
    root: &Path,
    env: &Environment,
    session_id: &str,
) -> Result<Map<String, Value>, InfraError> {
    let (tf, _) = terraform_for(root, env, session_id).await?;
    tf.init(&env.terraform.backend).await?;
    Ok(tf.outputs().await?)
}

pub use crate::policy::refusal;

/// Human summary lines of a review.
pub fn describe(review: &Review, env: &Environment) -> Vec<String> {
    let s = &review.summary;
    let mut lines = vec![format!(
        "{} (account {}): {} to add, {} to change, {} to replace, {} to destroy",
        review.environment, review.account_id, s.create, s.update, s.replace, s.delete
    )];
    for r in &s.resources {
        lines.push(format!("  {r}"));
    }
    if review.drift.is_empty() {
        lines.push("  drift: none".into());
    } else {
        for d in &review.drift {
            lines.push(format!(
                "  drift: {} changed outside Terraform ({})",
                d.address, d.action
            ));
        }
    }
    if review.refused {
        lines.push(format!("  REFUSED: {}", refusal(env, &review.violations)));
    } else {
        for v in &review.violations {
            lines.push(format!(
                "  note: {} {} would be refused in production",
                v.action, v.address
            ));
        }
        if review.changes {
            lines.push(format!(
                "  saved {}; apply it with `cutover infra apply {}`",
                plan_file_display(env),
                review.environment
            ));
        } else {
            lines.push("  no changes".into());
        }
    }
    lines
}

fn plan_file_display(env: &Environment) -> String {
    format!(".cutover/plans/{}.tfplan", env.name)
}
