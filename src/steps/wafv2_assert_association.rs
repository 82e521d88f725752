//! `wafv2.assert_association`: no traffic moves to a load balancer that is not behind the web ACL.
//! A read-only gate: fails when WAFv2 reports no web ACL for the resource (or another one than
//! expected).

use super::{parse_params, Change, ParamSpec, Planned, StepContext, StepError, StepKind};
use crate::providers::aws::err;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The `wafv2.assert_association` kind.
pub struct AssertAssociation;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    resource: String,
    #[serde(default)]
    web_acl: Option<String>,
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "resource",
        required: true,
        doc: "ARN of the load balancer (or other WAFv2 resource)",
    },
    ParamSpec {
        name: "web_acl",
        required: false,
        doc: "name of the web ACL that must be associated",
    },
];

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
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["web_acl_name", "web_acl_arn"]
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let (p, acl) = observe(cx).await?;
        let detail = match judge(&p, &acl) {
            Ok(()) => format!(
                "associated with {}",
                acl.as_ref().map(|a| a.0.as_str()).unwrap_or("")
            ),
            Err(e) => format!("WOULD FAIL: {e}"),
        };
        Ok(Planned {
            changes: vec![Change::new(
                "check",
                format!("waf association of {}", p.resource),
                detail,
            )],
            ..Default::default()
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let (p, acl) = observe(cx).await?;
        judge(&p, &acl).map_err(StepError::Check)?;
        let (name, arn) = acl.unwrap_or_default();
        let mut out = Map::new();
        out.insert(
            "summary".into(),
            json!(format!("{} behind web ACL {name}", p.resource)),
        );
        out.insert("web_acl_name".into(), json!(name));
        out.insert("web_acl_arn".into(), json!(arn));
        Ok(out)
    }
}
