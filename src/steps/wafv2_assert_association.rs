//! `wafv2.assert_association`: no traffic moves to a load balancer that is not behind the web ACL.
//! A gate: fails when WAFv2 reports no web ACL for the resource (or another one than expected).
//! With `associate: true` it associates the named web ACL itself when none is, and its rollback
//! removes only an association it made.

use super::{Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError};
use crate::providers::aws::err;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The `wafv2.assert_association` kind.
pub struct AssertAssociation;

/// `with:` of `wafv2.assert_association`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// ARN of the load balancer (or other WAFv2 resource).
    resource: String,
    /// Name of the web ACL that must be associated (required with associate).
    #[serde(default)]
    web_acl: Option<String>,
    /// Associate `web_acl` when no web ACL is (default false: refuse).
    #[serde(default)]
    associate: bool,
}

/// What `wafv2.assert_association` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The web ACL associated with the resource.
    web_acl_name: String,
    /// Its ARN.
    web_acl_arn: String,
    /// True when this step associated it (its rollback disassociates it).
    associated_by_run: bool,
}

/// The ARN of the regional web ACL named `name`.
async fn acl_arn(waf: &aws_sdk_wafv2::Client, name: &str) -> Result<String, StepError> {
    let out = waf
        .list_web_acls()
        .scope(aws_sdk_wafv2::types::Scope::Regional)
        .send()
        .await
        .map_err(|e| err("wafv2:ListWebACLs", e))?;
    out.web_acls()
        .iter()
        .find(|a| a.name() == Some(name))
        .and_then(|a| a.arn().map(str::to_owned))
        .ok_or_else(|| StepError::Check(format!("no regional web ACL named {name} in the account")))
}

async fn observe(cx: &StepContext<'_>, p: &Params) -> Result<Option<(String, String)>, StepError> {
    let waf = aws_sdk_wafv2::Client::new(&cx.providers.aws().await?.config);
    let out = waf
        .get_web_acl_for_resource()
        .resource_arn(&p.resource)
        .send()
        .await
        .map_err(|e| err("wafv2:GetWebACLForResource", e))?;
    Ok(out
        .web_acl()
        .map(|a| (a.name().to_string(), a.arn().to_string())))
}

fn judge(p: &Params, acl: &Option<(String, String)>) -> Result<(), String> {
    match (acl, &p.web_acl) {
        (None, _) => Err(format!("no web ACL is associated with {}", p.resource)),
        (Some((name, _)), Some(want)) if name != want => Err(format!(
            "{} is associated with web ACL {name}, not {want}",
            p.resource
        )),
        _ => Ok(()),
    }
}

/// Rollback material: whether an association existed before the run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// False when this step found no association and would make one.
    #[serde(default)]
    associated: bool,
}

#[async_trait]
impl Kind for AssertAssociation {
    type Params = Params;
    type Outputs = Outputs;
    type Before = Before;
    type Predicted = Outputs;
    const NAME: &'static str = "wafv2.assert_association";
    const PURPOSE: &'static str =
        "Refuse to move traffic unless the target load balancer is behind the WAF web ACL";
    const UNDO: &'static str = "Remove the web ACL association only if this run made it";

    fn check(&self, lit: &Literal<Params>) -> Vec<String> {
        let mut out = Vec::new();
        if lit.known("associate") && lit.params.associate && lit.params.web_acl.is_none() {
            out.push(
                "associate: true needs `web_acl`, the name of the web ACL to associate".into(),
            );
        }
        out
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<Before, Outputs>, StepError> {
        let acl = observe(cx, p).await?;
        if acl.is_none() && p.associate {
            let name = p.web_acl.clone().unwrap_or_default();
            let waf = aws_sdk_wafv2::Client::new(&cx.providers.aws().await?.config);
            let detail = match acl_arn(&waf, &name).await {
                Ok(arn) => format!(
                    "AssociateWebACL {{WebACLArn: {arn}, ResourceArn: {}}}",
                    p.resource
                ),
                Err(e) => format!("WOULD FAIL: {e}"),
            };
            return Ok(Plan {
                changes: vec![Change::new(
                    Action::Create,
                    format!("waf association of {}", p.resource),
                    detail,
                )],
                before: Before { associated: false },
                predicted: None,
            });
        }
        let detail = match judge(p, &acl) {
            Ok(()) => format!(
                "associated with {}",
                acl.as_ref().map(|a| a.0.as_str()).unwrap_or("")
            ),
            Err(e) => format!("WOULD FAIL: {e}"),
        };
        Ok(Plan::check(
            format!("waf association of {}", p.resource),
            detail,
        ))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
    ) -> Result<Applied<Outputs>, StepError> {
        let mut acl = observe(cx, p).await?;
        let mut associated = false;
        if acl.is_none() && p.associate {
            let name = p.web_acl.clone().unwrap_or_default();
            let waf = aws_sdk_wafv2::Client::new(&cx.providers.aws().await?.config);
            let arn = acl_arn(&waf, &name).await?;
            waf.associate_web_acl()
                .web_acl_arn(&arn)
                .resource_arn(&p.resource)
                .send()
                .await
                .map_err(|e| err("wafv2:AssociateWebACL", e))?;
            associated = true;
            acl = observe(cx, p).await?;
        }
        judge(p, &acl).map_err(|e| StepError::Gate(format!("refused: {e}; no traffic moves to it (set associate: true and web_acl to associate it)")))?;
        let (name, arn) = acl.unwrap_or_default();
        let summary = format!(
            "{} behind web ACL {name}{}",
            p.resource,
            if associated {
                " (associated by this step)"
            } else {
                ""
            }
        );
        Ok(Applied::new(Outputs {
            web_acl_name: name,
            web_acl_arn: arn,
            associated_by_run: associated,
        })
        .summary(summary))
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
        outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        if !outputs.is_some_and(|o| o.associated_by_run) {
            return Ok(vec![]);
        }
        let waf = aws_sdk_wafv2::Client::new(&cx.providers.aws().await?.config);
        waf.disassociate_web_acl()
            .resource_arn(&p.resource)
            .send()
            .await
            .map_err(|e| err("wafv2:DisassociateWebACL", e))?;
        Ok(vec![Restored::new(
            format!("waf association of {}", p.resource),
            Some(p.web_acl.as_deref().unwrap_or("")),
            None,
            "association made by this run removed",
        )])
    }
}
