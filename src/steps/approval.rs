//! `approval`: a person approves the run before it goes on. On a terminal the step asks for the
//! step id to be typed back; in CI the approval comes from `--approve STEP` and the approver's
//! identity from the CI environment. When the environment's promotion policy lists `approvers`,
//! only they may approve.
//!
//! The step changes nothing in the world and has nothing to undo.

use super::{parse_params, Planned, StepContext, StepError, StepKind};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::io::IsTerminal;
use std::time::Duration;

/// The `approval` kind.
pub struct Approval;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// What the approver confirms, shown in the prompt and the audit.
    #[serde(default)]
    message: Option<String>,
}

/// What `approval` returns.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Outputs {
    /// Who approved (`$USER` at a terminal; the CI actor with `--approve`).
    approver: String,
    /// How: `terminal` or `--approve`.
    via: String,
    /// When, RFC 3339.
    approved_at: String,
    /// The step's `message`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
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
impl StepKind for Approval {
    fn name(&self) -> &'static str {
        "approval"
    }
    fn asks_approval(&self) -> bool {
        true
    }
    fn purpose(&self) -> &'static str {
        "A person approves before the run goes on (terminal prompt, or --approve STEP in CI)"
    }

    fn undo(&self) -> &'static str {
        "Nothing to undo: an approval changes nothing"
    }
    super::typed_io!(Params, Outputs);
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let _: Params = parse_params(&cx.params)?;
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
        Ok(Planned::check(format!("approval {}", cx.step_id), detail))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let (who, via) = if cx.approved.iter().any(|s| s == cx.step_id) {
            (approver(), "--approve")
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
                "terminal",
            )
        } else {
            return Err(StepError::Gate(format!(
                "step {} needs an approval: no terminal to ask on; pass `--approve {}`",
                cx.step_id, cx.step_id
            )));
        };
        allowed(cx, &who)?;
        let mut out = super::outputs_map(&Outputs {
            approver: who.clone(),
            via: via.to_string(),
            approved_at: chrono::Utc::now().to_rfc3339(),
            message: p.message,
        });
        out.insert(
            super::SUMMARY_OUTPUT.into(),
            json!(format!("approved by {who} ({via})")),
        );
        Ok(out)
    }
}
