//! `approval`: a person approves the run before it goes on. On a terminal the step asks for the
//! step id to be typed back; in CI the approval comes from `--approve STEP` and the approver's
//! identity from the CI environment. When the environment's promotion policy lists `approvers`,
//! only they may approve.
//!
//! The step changes nothing in the world and has nothing to undo.

use super::{Applied, Kind, Plan, StepContext, StepError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::io::IsTerminal;
use std::time::Duration;

/// The `approval` kind.
pub struct Approval;

/// `with:` of `approval`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// What the approver confirms, shown in the prompt and the audit.
    #[serde(default)]
    message: Option<String>,
}

/// How a step was approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub enum Via {
    /// Typed back at the terminal running the step.
    #[serde(rename = "terminal")]
    Terminal,
    /// `--approve STEP` on the command line (CI).
    #[serde(rename = "--approve")]
    CommandLine,
}

impl Via {
    /// `terminal` or `--approve`.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Terminal => "terminal",
            Via::CommandLine => "--approve",
        }
    }
}

/// What `approval` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// Who approved (`$USER` at a terminal; the CI actor with `--approve`).
    approver: String,
    /// How: `terminal` or `--approve`.
    via: Via,
    /// When, RFC 3339.
    approved_at: String,
    /// The step's `message`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

/// Who approves in CI: `CUTOVER_APPROVER`, `GITHUB_ACTOR`, `GITLAB_USER_LOGIN`, `BUILD_REQUESTEDFOR`
/// (Azure Pipelines), `USER`, the first set; `unknown` otherwise.
pub fn approver() -> String {
    [
        "CUTOVER_APPROVER",
        "GITHUB_ACTOR",
        "GITLAB_USER_LOGIN",
        "BUILD_REQUESTEDFOR",
        "USER",
    ]
    .iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    .unwrap_or_else(|| "unknown".into())
}

fn interactive() -> bool {
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

fn allowed(cx: &StepContext<'_>, who: &str) -> Result<(), StepError> {
    let list = cx
        .env
        .promotion
        .as_ref()
        .map(|p| p.approvers.clone())
        .unwrap_or_default();
    if list.is_empty() || list.iter().any(|a| a == who) {
        Ok(())
    } else {
        Err(StepError::Gate(format!(
            "{who} may not approve in {} (approvers: {})",
            cx.env.name,
            list.join(", ")
        )))
    }
}

#[async_trait]
impl Kind for Approval {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "approval";
    const PURPOSE: &'static str =
        "A person approves before the run goes on (terminal prompt, or --approve STEP in CI)";
    const UNDO: &'static str = "Nothing to undo: an approval changes nothing";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
    const ASKS_APPROVAL: bool = true;

    async fn plan(&self, cx: &StepContext, _p: &Params) -> Result<Plan<(), ()>, StepError> {
        let who = approver();
        let detail = if cx.approved.iter().any(|s| s == cx.step_id) {
            match allowed(cx, &who) {
                Ok(()) => format!("approved on the command line by {who}"),
                Err(e) => format!("WOULD REFUSE: {e}"),
            }
        } else if interactive() {
            "will ask on this terminal".to_string()
        } else {
            format!(
                "WOULD REFUSE: no terminal and no `--approve {}`",
                cx.step_id
            )
        };
        Ok(Plan::check(format!("approval {}", cx.step_id), detail))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let (who, via) = if cx.approved.iter().any(|s| s == cx.step_id) {
            (approver(), Via::CommandLine)
        } else if interactive() {
            let question = format!(
                "\nApprove step `{}` of run {} in {}{}?\nType `{}` to approve, anything else to stop: ",
                cx.step_id,
                cx.run_id,
                cx.env.name,
                p.message.as_deref().map(|m| format!(" — {m}")).unwrap_or_default(),
                cx.step_id
            );
            let answer = tokio::task::spawn_blocking(move || {
                eprint!("{question}");
                let mut line = String::new();
                std::io::stdin().read_line(&mut line).map(|_| line)
            })
            .await
            .map_err(|e| StepError::Check(e.to_string()))?
            .map_err(|e| StepError::Check(format!("reading the answer: {e}")))?;
            if answer.trim() != cx.step_id {
                return Err(StepError::Gate(format!(
                    "step {} was not approved at the terminal",
                    cx.step_id
                )));
            }
            (
                std::env::var("USER").unwrap_or_else(|_| approver()),
                Via::Terminal,
            )
        } else {
            return Err(StepError::Gate(format!(
                "step {} needs an approval: no terminal to ask on; pass `--approve {}`",
                cx.step_id, cx.step_id
            )));
        };
        allowed(cx, &who)?;
        Ok(Applied::new(Outputs {
            approver: who.clone(),
            via,
            approved_at: chrono::Utc::now().to_rfc3339(),
            message: p.message.clone(),
        })
        .summary(format!("approved by {who} ({})", via.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::Harness;

    fn params() -> Params {
        Params {
            message: Some("start the write outage".into()),
        }
    }

    #[tokio::test]
    async fn an_approval_given_on_the_command_line_is_recorded_with_who_and_how() {
        let h = Harness::new(|p| p);
        let approved = ["step".to_string()];
        let mut cx = h.cx();
        cx.approved = &approved;
        let plan = Approval.plan(&cx, &params()).await.unwrap();
        let who = approver();
        assert_eq!(
            plan.changes[0].detail,
            format!("approved on the command line by {who}")
        );
        // Resumed after a crash, the step asks again and records the same approval.
        for _ in 0..2 {
            let out = Approval.apply(&cx, &params(), &()).await.unwrap();
            assert_eq!(out.outputs.via, Via::CommandLine);
            assert_eq!(out.outputs.approver, who);
            assert_eq!(
                out.outputs.message.as_deref(),
                Some("start the write outage")
            );
            assert_eq!(out.summary, Some(format!("approved by {who} (--approve)")));
        }
        assert!(Approval
            .rollback(&cx, &params(), &(), None)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn someone_outside_the_approvers_list_is_refused_in_the_plan_and_the_apply() {
        let h = Harness::new(|p| p);
        let mut env = h.cx().env.clone();
        env.promotion = Some(crate::config::PromotionPolicy {
            requires: vec![],
            max_age: "7d".into(),
            approvers: vec!["nobody-by-this-name".into()],
        });
        let approved = ["step".to_string()];
        let mut cx = h.cx();
        cx.env = &env;
        cx.approved = &approved;
        let plan = Approval.plan(&cx, &params()).await.unwrap();
        assert!(
            plan.changes[0].detail.starts_with("WOULD REFUSE:"),
            "{:?}",
            plan.changes
        );
        let err = Approval
            .apply(&cx, &params(), &())
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, StepError::Gate(_)), "{err:?}");
        assert!(err.to_string().contains("nobody-by-this-name"), "{err}");
    }
}
