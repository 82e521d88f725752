//! `terraform.apply`: init the environment's root with its S3 backend, plan, apply exactly the
//! reviewed plan, and publish the root's outputs as `tf.*`.
//!
//! Terraform runs with the environment's assumed-role credentials, so state and resources land in
//! that account. Rollback leaves infrastructure in place (it is shared by later runs).

use super::Record;
use super::{Action, Applied, Change, Kind, Plan, StepContext, StepError};
use crate::providers::terraform::{outputs_from, summarize, PlanSummary, ResourceAction, Root};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::Arc;
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
) -> Result<(Arc<dyn Root>, BTreeMap<String, String>), StepError> {
    let tf = cx
        .providers
        .terraform(cx.root, &crate::local::state_dir(cx.root))
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
                let action = match r.action {
                    ResourceAction::Create => Action::Create,
                    ResourceAction::Update => Action::Update,
                    ResourceAction::Delete => Action::Delete,
                    ResourceAction::Replace => Action::Replace,
                };
                Change::new(action, &r.address, "terraform resource")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::terraform::Failure;
    use crate::providers::ProviderError;
    use crate::steps::testing::Harness;
    use serde_json::json;
    use std::path::Path;
    use std::sync::Mutex;

    /// A root whose plan creates one load balancer. As with Terraform, a saved plan applies
    /// once: applying it again finds the state moved on ("Saved plan is stale").
    #[derive(Default)]
    struct FakeRoot {
        /// Plans written, applies that took effect, applies refused as stale.
        counts: Mutex<(u32, u32, u32)>,
        /// The plan files applied already.
        applied: Mutex<Vec<std::path::PathBuf>>,
        /// The variables each plan was given.
        vars: Mutex<Vec<BTreeMap<String, String>>>,
    }

    fn shown(applied: bool) -> Value {
        let changes = if applied {
            json!([])
        } else {
            json!([{"address": "aws_lb.app", "change": {"actions": ["create"]}}])
        };
        json!({
            "resource_changes": changes,
            "planned_values": {"outputs": {
                "app_url": {"value": "https://shop.example.com", "sensitive": false},
                "db_password": {"value": "hunter2", "sensitive": true},
            }},
        })
    }

    #[async_trait]
    impl Root for FakeRoot {
        async fn init(&self, _backend: &BTreeMap<String, String>) -> Result<(), ProviderError> {
            Ok(())
        }
        async fn plan(
            &self,
            vars: &BTreeMap<String, String>,
            plan_file: &Path,
            _lock: bool,
        ) -> Result<bool, ProviderError> {
            std::fs::create_dir_all(plan_file.parent().unwrap()).unwrap();
            std::fs::write(plan_file, format!("plan {}", self.counts.lock().unwrap().0)).unwrap();
            self.counts.lock().unwrap().0 += 1;
            self.vars.lock().unwrap().push(vars.clone());
            Ok(self.applied.lock().unwrap().is_empty())
        }
        async fn show_plan(&self, _plan_file: &Path) -> Result<Value, ProviderError> {
            Ok(shown(!self.applied.lock().unwrap().is_empty()))
        }
        async fn apply(&self, plan_file: &Path) -> Result<(), ProviderError> {
            let content = std::fs::read_to_string(plan_file).unwrap();
            let mut applied = self.applied.lock().unwrap();
            let file = plan_file.with_extension(content.replace(' ', "-"));
            if applied.contains(&file) {
                self.counts.lock().unwrap().2 += 1;
                return Err(ProviderError::Terraform {
                    command: "apply".into(),
                    message: "exit 1: Error: Saved plan is stale".into(),
                    failure: Failure::StalePlan,
                });
            }
            applied.push(file);
            self.counts.lock().unwrap().1 += 1;
            Ok(())
        }
        async fn outputs(&self) -> Result<Record, ProviderError> {
            let mut o = Record::new();
            o.insert("app_url".into(), json!("https://shop.example.com"));
            Ok(o)
        }
    }

    fn params() -> Params {
        Params {
            vars: [("replicas".to_string(), json!(3))].into_iter().collect(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn plans_applies_the_reviewed_plan_and_a_rerun_plans_again_instead_of_failing() {
        let root = std::sync::Arc::new(FakeRoot::default());
        let fake = root.clone();
        let h = Harness::new(|p| p.with_terraform(fake));
        let cx = h.cx();
        let plan = TerraformApply.plan(&cx, &params()).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Run);
        assert!(
            plan.changes[0].detail.starts_with("1 to add"),
            "{:?}",
            plan.changes
        );
        assert_eq!(
            (plan.changes[1].action, plan.changes[1].target.as_str()),
            (Action::Create, "aws_lb.app")
        );
        let predicted = plan.predicted.as_ref().unwrap();
        assert_eq!(predicted.tf["app_url"], json!("https://shop.example.com"));
        assert!(
            !predicted.tf.contains_key("db_password"),
            "sensitive outputs stay out"
        );
        // The step's vars override the environment's, as `-var` text.
        assert_eq!(root.vars.lock().unwrap()[0]["replicas"], "3");

        let first = TerraformApply
            .apply(&cx, &params(), &plan.before)
            .await
            .unwrap();
        assert_eq!(first.outputs.create, 1);
        assert_eq!(
            TerraformApply.terraform_outputs(&first.outputs).unwrap()["app_url"],
            json!("https://shop.example.com")
        );
        assert_eq!(*root.counts.lock().unwrap(), (1, 1, 0));

        // A re-run after a crash: the saved plan is stale now; the step plans again and
        // applies the new plan, once.
        let again = TerraformApply
            .apply(&cx, &params(), &plan.before)
            .await
            .unwrap();
        assert_eq!(*root.counts.lock().unwrap(), (2, 2, 1));
        assert_eq!(again.outputs.tf, first.outputs.tf);

        let restored = TerraformApply
            .rollback(&cx, &params(), &plan.before, Some(&first.outputs))
            .await
            .unwrap();
        assert!(restored.is_empty(), "nothing is destroyed");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn another_failure_of_the_apply_is_not_retried() {
        struct Broken;
        #[async_trait]
        impl Root for Broken {
            async fn init(&self, _: &BTreeMap<String, String>) -> Result<(), ProviderError> {
                Ok(())
            }
            async fn plan(
                &self,
                _: &BTreeMap<String, String>,
                plan_file: &Path,
                _: bool,
            ) -> Result<bool, ProviderError> {
                std::fs::create_dir_all(plan_file.parent().unwrap()).unwrap();
                std::fs::write(plan_file, "plan").unwrap();
                Ok(true)
            }
            async fn show_plan(&self, _: &Path) -> Result<Value, ProviderError> {
                Ok(shown(false))
            }
            async fn apply(&self, _: &Path) -> Result<(), ProviderError> {
                Err(ProviderError::Terraform {
                    command: "apply".into(),
                    message: "exit 1: Error: creating ELBv2 Load Balancer: AccessDenied".into(),
                    failure: Failure::Other,
                })
            }
            async fn outputs(&self) -> Result<Record, ProviderError> {
                Ok(Record::new())
            }
        }
        let h = Harness::new(|p| p.with_terraform(std::sync::Arc::new(Broken)));
        let cx = h.cx();
        let plan = TerraformApply.plan(&cx, &params()).await.unwrap();
        let err = TerraformApply
            .apply(&cx, &params(), &plan.before)
            .await
            .err()
            .expect("apply fails");
        assert!(err.to_string().contains("AccessDenied"), "{err}");
    }
}
