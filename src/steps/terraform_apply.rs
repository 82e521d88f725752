//! `terraform.apply`: init the environment's root with its S3 backend, plan, apply exactly the
//! reviewed plan, and publish the root's outputs as `tf.*`.
//!
//! Terraform runs with the environment's assumed-role credentials, so state and resources land in
//! that account. Rollback leaves infrastructure in place (it is shared by later runs).

use super::Record;
use super::{Action, Applied, Change, Kind, Plan, StepContext, StepError};
use crate::providers::terraform::{outputs_from, summarize, PlanSummary, Terraform};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `terraform.apply` kind.
pub struct TerraformApply;

/// `with:` of `terraform.apply`.
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Extra `-var` values, merged over the environment's `terraform.vars`.
    #[serde(default)]
    vars: BTreeMap<String, Value>,
}

/// What `terraform.apply` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The root module's outputs after the apply (`tf.<name>` in later templates).
    tf: Record,
    /// Resources created.
    #[serde(default)]
    create: u64,
    /// Resources updated in place.
    #[serde(default)]
    update: u64,
    /// Resources replaced.
    #[serde(default)]
    replace: u64,
    /// Resources destroyed.
    #[serde(default)]
    delete: u64,
}

/// What a dry-run predicts: the outputs the plan shows (or the state holds).
#[derive(Serialize)]
pub struct Predicted {
    /// The root module's outputs as the plan shows them.
    tf: Record,
}

/// Rollback material: the plan's counts (nothing is undone; `apply` reports them).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// The reviewed plan's actions.
    #[serde(default)]
    summary: PlanSummary,
}

async fn terraform(
    cx: &StepContext<'_>,
    p: &Params,
) -> Result<(Terraform, BTreeMap<String, String>), StepError> {
    let session = cx.providers.aws().await?;
    let tf =
        Terraform::for_environment(cx.root, &crate::local::state_dir(cx.root), cx.env, session)
            .await?;
    let mut vars = cx.env.terraform.vars.clone();
    for (k, v) in &p.vars {
        vars.insert(
            k.clone(),
            match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
        );
    }
    Ok((tf, vars))
}

/// Waits for this environment's Terraform turn on this machine (runs of one environment share
/// its `TF_DATA_DIR`, so two `terraform` processes must not work in it at once; runs of a
/// migration's wave may reach this step together). Terraform's own state lock orders runs on
/// different machines; a plan made stale by another run's apply is planned again in `apply`.
fn terraform_turn(cx: &StepContext<'_>) -> Result<crate::local::lock::EnvLock, StepError> {
    let state = crate::local::state_dir(cx.root);
    let holder = format!("run {} step {}", cx.run_id, cx.step_id);
    let wait = cx.remaining();
    let got = tokio::task::block_in_place(|| {
        crate::local::lock::EnvLock::wait_exclusive(
            &state,
            &cx.env.name,
            "terraform",
            &holder,
            wait,
        )
    })
    .map_err(|e| StepError::Gate(e.to_string()))?;
    got.ok_or_else(|| {
        StepError::Timeout(format!(
            "the Terraform data directory of {} (another run of it is using Terraform)",
            cx.env.name
        ))
    })
}

#[async_trait]
impl Kind for TerraformApply {
    type Params = Params;
    type Outputs = Outputs;
    type Before = Before;
    type Predicted = Predicted;
    const NAME: &'static str = "terraform.apply";
    const PURPOSE: &'static str =
        "Apply the environment's Terraform root in its own account and publish its outputs as tf.*";
    const UNDO: &'static str =
        "Nothing is destroyed: the new infrastructure stays and carries no traffic until DNS moves";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

    fn terraform_outputs(&self, o: &Outputs) -> Option<Record> {
        Some(o.tf.clone())
    }

    async fn plan(
        &self,
        cx: &StepContext,
        p: &Params,
    ) -> Result<Plan<Before, Predicted>, StepError> {
        let _turn = terraform_turn(cx)?;
        let (tf, vars) = terraform(cx, p).await?;
        (cx.progress)(&format!("terraform init ({})", cx.env.terraform.dir));
        tf.init(&cx.env.terraform.backend).await?;
        let plan_file = cx.run_dir.join(format!("{}.tfplan", cx.step_id));
        (cx.progress)("terraform plan");
        let lock = cx.mode != super::context::Mode::DryRun;
        tf.plan(&vars, &plan_file, lock).await?;
        let shown = tf.show_plan(&plan_file).await?;
        let violations = crate::policy::violations(&shown, &cx.env.terraform.policy);
        if !violations.is_empty() && crate::policy::refuses(cx.env.tier) {
            return Err(StepError::Gate(crate::policy::refusal(cx.env, &violations)));
        }
        let s = summarize(&shown);
        let mut changes: Vec<Change> = s
            .resources
            .iter()
            .map(|r| {
                let (addr, action) = r.rsplit_once(": ").unwrap_or((r, ""));
                let action = match action {
                    "create" => Action::Create,
                    "update" => Action::Update,
                    "delete" => Action::Delete,
                    "replace" => Action::Replace,
                    _ => Action::Unknown,
                };
                Change::new(action, addr, "terraform resource")
            })
            .collect();
        changes.insert(
            0,
            Change::new(
                Action::Run,
                format!("terraform apply {}", cx.env.terraform.dir),
                format!(
                    "{} to add, {} to change, {} to replace, {} to destroy",
                    s.create, s.update, s.replace, s.delete
                ),
            ),
        );
        let mut tf_out = outputs_from(&shown, true);
        if tf_out.is_empty() {
            tf_out = tf.outputs().await.unwrap_or_default();
        }
        Ok(Plan {
            changes,
            before: Before { summary: s },
            predicted: Some(Predicted { tf: tf_out }),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        before: &Before,
    ) -> Result<Applied<Outputs>, StepError> {
        let _turn = terraform_turn(cx)?;
        let (tf, vars) = terraform(cx, p).await?;
        let plan_file = cx.run_dir.join(format!("{}.tfplan", cx.step_id));
        if !plan_file.exists() {
            tf.init(&cx.env.terraform.backend).await?;
            tf.plan(&vars, &plan_file, true).await?;
        }
        (cx.progress)("terraform apply (reviewed plan)");
        if let Err(e) = tf.apply(&plan_file).await {
            // A plan saved before a crash is stale once state moved on: plan again, once.
            if e.terraform_failure() == Some(crate::providers::terraform::Failure::StalePlan) {
                tf.plan(&vars, &plan_file, true).await?;
                tf.apply(&plan_file).await?;
            } else {
                return Err(e.into());
            }
        }
        let outputs = tf.outputs().await?;
        let s = &before.summary;
        let summary = format!(
            "{} added, {} changed, {} replaced, {} destroyed; {} outputs",
            s.create,
            s.update,
            s.replace,
            s.delete,
            outputs.len()
        );
        Ok(Applied::new(Outputs {
            tf: outputs,
            create: s.create as u64,
            update: s.update as u64,
            replace: s.replace as u64,
            delete: s.delete as u64,
        })
        .summary(summary))
    }
}
