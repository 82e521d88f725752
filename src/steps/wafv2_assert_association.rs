//! `wafv2.assert_association`: no traffic moves to a load balancer that is not behind the web ACL.
//! A gate: fails when WAFv2 reports no web ACL for the resource (or another one than expected).
//! With `associate: true` it associates the named web ACL itself when none is, and its rollback
//! removes only an association it made.

use super::{parse_params, Change, Planned, Restored, StepContext, StepError, StepKind};
use crate::providers::aws::err;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The `wafv2.assert_association` kind.
pub struct AssertAssociation;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
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
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Outputs {
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

async fn observe(cx: &StepContext<'_>) -> Result<(Params, Option<(String, String)>), StepError> {
    let p: Params = parse_params(&cx.params)?;
    let waf = aws_sdk_wafv2::Client::new(&cx.providers.aws().await?.config);
    let out = waf
        .get_web_acl_for_resource()
        .resource_arn(&p.resource)
        .send()
        .await
        .map_err(|e| err("wafv2:GetWebACLForResource", e))?;
    let acl = out
        .web_acl()
        .map(|a| (a.name().to_string(), a.arn().to_string()));
    Ok((p, acl))
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

#[async_trait]
impl StepKind for AssertAssociation {
    fn name(&self) -> &'static str {
        "wafv2.assert_association"
    }
    fn purpose(&self) -> &'static str {
        "Refuse to move traffic unless the target load balancer is behind the WAF web ACL"
    }

    fn undo(&self) -> &'static str {
        "Remove the web ACL association only if this run made it"
    }
    super::typed_io!(Params, Outputs);

    fn validate(&self, params: &Map<String, Value>) -> Vec<String> {
        let mut out = super::check_param_names(&self.params(), params);
        if params.get("associate") == Some(&Value::Bool(true)) && !params.contains_key("web_acl") {
            out.push(
                "associate: true needs `web_acl`, the name of the web ACL to associate".into(),
            );
        }
        out
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let (p, acl) = observe(cx).await?;
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
            return Ok(Planned {
                changes: vec![Change::new(
                    crate::steps::Action::Create,
                    format!("waf association of {}", p.resource),
                    detail,
                )],
                before: json!({"associated": false}),
                ..Default::default()
            });
        }
        let detail = match judge(&p, &acl) {
            Ok(()) => format!(
                "associated with {}",
                acl.as_ref().map(|a| a.0.as_str()).unwrap_or("")
            ),
            Err(e) => format!("WOULD FAIL: {e}"),
        };
        Ok(Planned::check(
            format!("waf association of {}", p.resource),
            detail,
        ))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let (p, mut acl) = observe(cx).await?;
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
            acl = observe(cx).await?.1;
        }
        judge(&p, &acl).map_err(|e| StepError::Gate(format!("refused: {e}; no traffic moves to it (set associate: true and web_acl to associate it)")))?;
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
        let mut out = super::outputs_map(&Outputs {
            web_acl_name: name,
            web_acl_arn: arn,
            associated_by_run: associated,
        });
        out.insert(super::SUMMARY_OUTPUT.into(), json!(summary));
        Ok(out)
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        _before: &Value,
        outputs: Option<&Map<String, Value>>,
    ) -> Result<Vec<Restored>, StepError> {
        if outputs.and_then(|o| o.get("associated_by_run")) != Some(&Value::Bool(true)) {
            return Ok(vec![]);
        }
        let p: Params = parse_params(&cx.params)?;
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
