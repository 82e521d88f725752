//! `aws.assert_account`: the environment's role is assumed and STS reports exactly the
//! environment's account id. The engine makes the same check before the first step of every run;
//! this step records the identity as evidence at the point the runbook names.

use super::{Change, Planned, StepContext, StepError, StepKind};
use async_trait::async_trait;
use serde_json::{json, Map, Value};

/// The `aws.assert_account` kind.
pub struct AssertAccount;

/// `with:` takes nothing.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {}

/// What `aws.assert_account` returns.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Outputs {
    /// The account STS reports.
    account_id: String,
    /// The assumed role's ARN, as STS reports it.
    caller_arn: String,
}

#[async_trait]
impl StepKind for AssertAccount {
    fn name(&self) -> &'static str {
        "aws.assert_account"
    }
    fn purpose(&self) -> &'static str {
        "Assume the environment's role and prove with STS that it acts in the environment's AWS account"
    }

    fn undo(&self) -> &'static str {
        "Nothing to undo: the check is read-only"
    }
    super::typed_io!(Params, Outputs);

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let s = cx.providers.aws().await?;
        Ok(Planned {
            changes: vec![Change::new(
                crate::steps::Action::Check,
                format!("account {}", cx.env.aws.account_id),
                format!("STS reports {} as {}", s.account_id, s.caller_arn),
            )],
            before: Value::Null,
            predicted: super::outputs_map(&Outputs {
                account_id: s.account_id.clone(),
                caller_arn: s.caller_arn.clone(),
            }),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let s = cx.providers.aws().await?;
        if s.account_id != cx.env.aws.account_id {
            return Err(StepError::Gate(format!(
                "wrong AWS account: expected {}, STS reports {}",
                cx.env.aws.account_id, s.account_id
            )));
        }
        let mut out = super::outputs_map(&Outputs {
            account_id: s.account_id.clone(),
            caller_arn: s.caller_arn.clone(),
        });
        out.insert(
            super::SUMMARY_OUTPUT.into(),
            json!(format!("account {} ({})", s.account_id, s.caller_arn)),
        );
        Ok(out)
    }
}
