//! `wafv2.assert_association`: no traffic moves to a load balancer that is not behind the web ACL.
//! A gate: fails when WAFv2 reports no web ACL for the resource (or another one than expected).
//! With `associate: true` it associates the named web ACL itself when none is, and its rollback
//! removes only an association it made: one its first plan did not find (so a re-run after a
//! crash between the association and its record still owns it).

use super::{Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError};
use crate::providers::waf::{Waf, WebAcl};
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
async fn acl_arn(waf: &dyn Waf, name: &str) -> Result<String, StepError> {
    waf.web_acl_arn(name)
        .await?
        .ok_or_else(|| StepError::Check(format!("no regional web ACL named {name} in the account")))
}

fn judge(p: &Params, acl: &Option<WebAcl>) -> Result<(), String> {
    match (acl, &p.web_acl) {
        (None, _) => Err(format!("no web ACL is associated with {}", p.resource)),
        (Some(a), Some(want)) if &a.name != want => Err(format!(
            "{} is associated with web ACL {}, not {want}",
            p.resource, a.name
        )),
        _ => Ok(()),
    }
}

/// Rollback material: whether the resource had a web ACL when the run first planned the step.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// `Some(false)`: none was associated (an association seen later is this run's);
    /// `None`: not observed (logs of earlier versions recorded only the first case).
    #[serde(default)]
    associated: Option<bool>,
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
        let waf = cx.providers.waf().await?;
        let acl = waf.web_acl_for(&p.resource).await?;
        let before = Before {
            associated: Some(acl.is_some()),
        };
        let target = format!("waf association of {}", p.resource);
        if acl.is_none() && p.associate {
            let name = p.web_acl.clone().unwrap_or_default();
            let detail = match acl_arn(waf.as_ref(), &name).await {
                Ok(arn) => format!(
                    "AssociateWebACL {{WebACLArn: {arn}, ResourceArn: {}}}",
                    p.resource
                ),
                Err(e) => format!("WOULD FAIL: {e}"),
            };
            return Ok(Plan {
                changes: vec![Change::new(Action::Create, target, detail)],
                before,
                predicted: None,
            });
        }
        let detail = match judge(p, &acl) {
            Ok(()) => format!(
                "associated with {}",
                acl.as_ref().map(|a| a.name.as_str()).unwrap_or("")
            ),
            Err(e) => format!("WOULD FAIL: {e}"),
        };
        Ok(Plan {
            before,
            ..Plan::check(target, detail)
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        before: &Before,
    ) -> Result<Applied<Outputs>, StepError> {
        let waf = cx.providers.waf().await?;
        let mut acl = waf.web_acl_for(&p.resource).await?;
        if acl.is_none() && p.associate {
            let name = p.web_acl.clone().unwrap_or_default();
            let arn = acl_arn(waf.as_ref(), &name).await?;
            waf.associate(&arn, &p.resource).await?;
            acl = waf.web_acl_for(&p.resource).await?;
        }
        judge(p, &acl).map_err(|e| StepError::Gate(format!("refused: {e}; no traffic moves to it (set associate: true and web_acl to associate it)")))?;
        // Ours when the first plan of the run found none: whether this call or an attempt
        // before a crash made it.
        let associated = p.associate && before.associated == Some(false);
        let WebAcl { name, arn } = acl.unwrap_or(WebAcl {
            name: String::new(),
            arn: String::new(),
        });
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
        before: &Before,
        outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        // Recorded as ours, or made before a crash that left no record: the first plan found
        // none and one is there now.
        let ours = match outputs {
            Some(o) => o.associated_by_run,
            None => p.associate && before.associated == Some(false),
        };
        if !ours {
            return Ok(vec![]);
        }
        let waf = cx.providers.waf().await?;
        if waf.web_acl_for(&p.resource).await?.is_none() {
            return Ok(vec![]);
        }
        waf.disassociate(&p.resource).await?;
        Ok(vec![Restored::new(
            format!("waf association of {}", p.resource),
            Some(p.web_acl.as_deref().unwrap_or("")),
            None,
            "association made by this run removed",
        )])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::Harness;
    use std::sync::{Arc, Mutex};

    const LB: &str = "arn:aws:elasticloadbalancing:us-east-1:111111111111:loadbalancer/app/shop/1";

    /// WAFv2 with one regional web ACL (`shop`, plus `other`) and a record of the calls.
    #[derive(Default)]
    struct FakeWaf {
        /// Resource → associated ACL name.
        associations: Mutex<std::collections::BTreeMap<String, String>>,
        calls: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Waf for FakeWaf {
        async fn web_acl_for(
            &self,
            resource: &str,
        ) -> Result<Option<WebAcl>, crate::providers::ProviderError> {
            Ok(self
                .associations
                .lock()
                .unwrap()
                .get(resource)
                .map(|n| WebAcl {
                    name: n.clone(),
                    arn: format!("arn:waf:{n}"),
                }))
        }
        async fn web_acl_arn(
            &self,
            name: &str,
        ) -> Result<Option<String>, crate::providers::ProviderError> {
            Ok(["shop", "other"]
                .contains(&name)
                .then(|| format!("arn:waf:{name}")))
        }
        async fn associate(
            &self,
            acl_arn: &str,
            resource: &str,
        ) -> Result<(), crate::providers::ProviderError> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("associate {acl_arn}"));
            let name = acl_arn.trim_start_matches("arn:waf:").to_string();
            self.associations
                .lock()
                .unwrap()
                .insert(resource.to_string(), name);
            Ok(())
        }
        async fn disassociate(
            &self,
            resource: &str,
        ) -> Result<(), crate::providers::ProviderError> {
            self.calls.lock().unwrap().push("disassociate".into());
            self.associations.lock().unwrap().remove(resource);
            Ok(())
        }
    }

    fn params(associate: bool) -> Params {
        Params {
            resource: LB.into(),
            web_acl: Some("shop".into()),
            associate,
        }
    }

    fn harness(fake: &Arc<FakeWaf>) -> Harness {
        Harness::new(|p| p.with_waf(fake.clone()))
    }

    #[tokio::test]
    async fn a_missing_association_is_refused_or_planned_as_a_creation() {
        let fake = Arc::new(FakeWaf::default());
        let h = harness(&fake);
        let cx = h.cx();
        let plan = AssertAssociation.plan(&cx, &params(false)).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Check);
        assert!(
            plan.changes[0].detail.starts_with("WOULD FAIL: no web ACL"),
            "{:?}",
            plan.changes
        );
        let e = AssertAssociation
            .apply(&cx, &params(false), &plan.before)
            .await
            .err()
            .unwrap();
        assert!(matches!(e, StepError::Gate(_)), "{e}");
        let plan = AssertAssociation.plan(&cx, &params(true)).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Create);
        assert!(
            plan.changes[0].detail.contains("arn:waf:shop"),
            "{:?}",
            plan.changes
        );
        assert!(
            fake.calls.lock().unwrap().is_empty(),
            "a plan changes nothing"
        );
    }

    #[tokio::test]
    async fn apply_associates_once_and_a_rerun_after_a_crash_still_owns_it_for_rollback() {
        let fake = Arc::new(FakeWaf::default());
        let h = harness(&fake);
        let cx = h.cx();
        let p = params(true);
        let plan = AssertAssociation.plan(&cx, &p).await.unwrap();
        let first = AssertAssociation
            .apply(&cx, &p, &plan.before)
            .await
            .unwrap();
        assert!(first.outputs.associated_by_run);
        assert_eq!(first.outputs.web_acl_name, "shop");
        // A crash before the record: the resumed run applies again with the first plan's
        // material; nothing is associated twice and the association is still this run's.
        let again = AssertAssociation
            .apply(&cx, &p, &plan.before)
            .await
            .unwrap();
        assert!(again.outputs.associated_by_run);
        assert_eq!(
            fake.calls.lock().unwrap().as_slice(),
            ["associate arn:waf:shop"]
        );
        let undone = AssertAssociation
            .rollback(&cx, &p, &plan.before, Some(&again.outputs))
            .await
            .unwrap();
        assert_eq!(undone.len(), 1);
        assert!(fake.associations.lock().unwrap().is_empty());
        // Rolling back again finds nothing to undo.
        assert!(AssertAssociation
            .rollback(&cx, &p, &plan.before, Some(&again.outputs))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn an_association_found_before_the_run_is_never_removed() {
        let fake = Arc::new(FakeWaf::default());
        fake.associations
            .lock()
            .unwrap()
            .insert(LB.into(), "shop".into());
        let h = harness(&fake);
        let cx = h.cx();
        let p = params(true);
        let plan = AssertAssociation.plan(&cx, &p).await.unwrap();
        let out = AssertAssociation
            .apply(&cx, &p, &plan.before)
            .await
            .unwrap();
        assert!(!out.outputs.associated_by_run);
        for outputs in [Some(&out.outputs), None] {
            assert!(AssertAssociation
                .rollback(&cx, &p, &plan.before, outputs)
                .await
                .unwrap()
                .is_empty());
        }
        // Rollback material from an earlier version (nothing observed) owns nothing either.
        assert!(AssertAssociation
            .rollback(&cx, &p, &Before::default(), None)
            .await
            .unwrap()
            .is_empty());
        assert!(fake.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn another_web_acl_than_the_named_one_is_refused() {
        let fake = Arc::new(FakeWaf::default());
        fake.associations
            .lock()
            .unwrap()
            .insert(LB.into(), "other".into());
        let h = harness(&fake);
        let cx = h.cx();
        let p = params(true);
        let plan = AssertAssociation.plan(&cx, &p).await.unwrap();
        assert!(
            plan.changes[0]
                .detail
                .contains("associated with web ACL other, not shop"),
            "{:?}",
            plan.changes
        );
        let e = AssertAssociation
            .apply(&cx, &p, &plan.before)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not shop"), "{e}");
        assert!(fake.calls.lock().unwrap().is_empty());
    }

    #[test]
    fn associate_without_a_web_acl_is_reported_by_validate() {
        let p = Params {
            resource: LB.into(),
            web_acl: None,
            associate: true,
        };
        assert_eq!(AssertAssociation.check(&Literal::of(p)).len(), 1);
    }
}
