//! `aws.assert_account`: the environment's role is assumed and STS reports exactly the
//! environment's account id. The engine makes the same check before the first step of every run;
//! this step records the identity as evidence at the point the runbook names.

use super::{Action, Applied, Change, Kind, Plan, StepContext, StepError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The `aws.assert_account` kind.
pub struct AssertAccount;

/// `with:` takes nothing.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {}

/// What `aws.assert_account` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The account STS reports.
    account_id: String,
    /// The assumed role's ARN, as STS reports it.
    caller_arn: String,
}

#[async_trait]
impl Kind for AssertAccount {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = Outputs;
    const NAME: &'static str = "aws.assert_account";
    const PURPOSE: &'static str = "Assume the environment's role and prove with STS that it acts in the environment's AWS account";
    const UNDO: &'static str = "Nothing to undo: the check is read-only";

    async fn plan(&self, cx: &StepContext, _p: &Params) -> Result<Plan<(), Outputs>, StepError> {
        let s = cx.providers.identity().await?;
        Ok(Plan {
            changes: vec![Change::new(
                Action::Check,
                format!("account {}", cx.env.aws.account_id),
                format!("STS reports {} as {}", s.account_id, s.caller_arn),
            )],
            before: (),
            predicted: Some(Outputs {
                account_id: s.account_id.clone(),
                caller_arn: s.caller_arn.clone(),
            }),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let s = cx.providers.identity().await?;
        if s.account_id != cx.env.aws.account_id {
            return Err(StepError::Gate(format!(
                "wrong AWS account: expected {}, STS reports {}",
                cx.env.aws.account_id, s.account_id
            )));
        }
        Ok(Applied::new(Outputs {
            account_id: s.account_id.clone(),
            caller_arn: s.caller_arn.clone(),
        })
        .summary(format!("account {} ({})", s.account_id, s.caller_arn)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::aws::Identity;
    use crate::steps::testing::Harness;

    /// STS reports the environment's own account, or `other` instead.
    fn harness(other: Option<&str>) -> Harness {
        Harness::new(|p| {
            let account = other.map_or_else(|| p.env().aws.account_id.clone(), str::to_owned);
            let identity = Identity {
                caller_arn: format!("arn:aws:sts::{account}:assumed-role/Deploy/cutover-test-run"),
                account_id: account,
            };
            p.with_identity(identity)
        })
    }

    #[tokio::test]
    async fn the_environments_account_passes_and_is_recorded_on_every_run() {
        let h = harness(None);
        let cx = h.cx();
        let account = cx.env.aws.account_id.clone();
        let plan = AssertAccount.plan(&cx, &Params {}).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Check);
        for _ in 0..2 {
            let out = AssertAccount.apply(&cx, &Params {}, &()).await.unwrap();
            assert_eq!(out.outputs.account_id, account);
            assert!(out.summary.unwrap().contains("assumed-role/Deploy"));
        }
        let ev = AssertAccount
            .verify(&cx, &Params {}, &plan.predicted.unwrap())
            .await;
        assert!(ev.is_ok());
        let undo = AssertAccount
            .rollback(&cx, &Params {}, &(), None)
            .await
            .unwrap();
        assert!(undo.is_empty(), "read-only: nothing to undo");
    }

    #[tokio::test]
    async fn another_account_is_refused_naming_both() {
        let h = harness(Some("999999999999"));
        let expected = h.cx().env.aws.account_id.clone();
        let err = AssertAccount
            .apply(&h.cx(), &Params {}, &())
            .await
            .err()
            .expect("wrong account");
        assert!(matches!(err, StepError::Gate(_)), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("999999999999") && text.contains(&expected),
            "{text}"
        );
    }
}
