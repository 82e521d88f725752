//! The plan policy and drift report, read from `terraform show -json` of a saved plan.
//!
//! In a production-tier environment a plan that deletes or replaces a protected resource is
//! refused, naming its address, unless the environment file's `terraform.policy.allow_destroy`
//! lists it. Protected by default: the resource types whose loss is not recoverable by a re-apply
//! (the database, the cluster, the hosted zone whose name servers are delegated, and S3 buckets,
//! which hold Terraform state). Staging and dev plans are never refused; the same finding is
//! reported there as what production would refuse.
//!
//! Field names follow Terraform's JSON output format (`resource_changes[].change.actions`,
//! `resource_drift`), documented in "JSON Output Format" of the Terraform internals docs.

use crate::config::{Environment, PlanPolicy, Tier};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Resource types protected in production without any configuration.
pub const PROTECTED_TYPES: &[&str] = &[
    "aws_db_instance",
    "aws_rds_cluster",
    "aws_eks_cluster",
    "aws_route53_zone",
    "aws_s3_bucket",
];

/// A protected resource the plan would delete or replace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    /// Resource address, e.g. `module.rds.aws_db_instance.this`.
    pub address: String,
    /// Resource type.
    pub resource_type: String,
    /// `delete` or `replace`.
    pub action: String,
    /// The pattern that protects it.
    pub protected_by: String,
}

/// A resource whose real state differs from Terraform state (changed outside Terraform).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drift {
    /// Resource address.
    pub address: String,
    /// What the refresh found: `update` (changed) or `delete` (gone).
    pub action: String,
}

/// `pattern` matches a resource when it equals its type or its address, or ends with `*` and
/// the address starts with the rest.
fn matches(pattern: &str, address: &str, resource_type: &str) -> bool {
    if let Some(prefix) = pattern.strip_suffix('*') {
        return address.starts_with(prefix);
    }
    pattern == resource_type || pattern == address
}

fn actions(rc: &Value, pointer: &str) -> Vec<String> {
    rc.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Every protected resource the plan deletes or replaces, allowed ones left out. The tier does
/// not matter here; [`refuses`] says whether the findings block the environment.
pub fn violations(plan: &Value, policy: &PlanPolicy) -> Vec<Violation> {
    let mut out = Vec::new();
    for rc in plan
        .get("resource_changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let address = rc.get("address").and_then(Value::as_str).unwrap_or("");
        let resource_type = rc.get("type").and_then(Value::as_str).unwrap_or("");
        let acts = actions(rc, "/change/actions");
        let action = if acts.iter().any(|a| a == "delete") {
            if acts.iter().any(|a| a == "create") {
                "replace"
            } else {
                "delete"
            }
        } else {
            continue;
        };
        let protected_by = PROTECTED_TYPES
            .iter()
            .map(|s| s.to_string())
            .chain(policy.protect.iter().cloned())
            .find(|p| matches(p, address, resource_type));
        let Some(protected_by) = protected_by else {
            continue;
        };
        if policy
            .allow_destroy
            .iter()
            .any(|p| matches(p, address, resource_type) && p != resource_type)
        {
            continue;
        }
        out.push(Violation {
            address: address.to_string(),
            resource_type: resource_type.to_string(),
            action: action.to_string(),
            protected_by,
        });
    }
    out
}

/// Whether violations refuse the plan in an environment of `tier` (production only).
pub fn refuses(tier: Tier) -> bool {
    tier == Tier::Production
}

/// Resources changed outside Terraform, from the plan's `resource_drift`.
pub fn drift(plan: &Value) -> Vec<Drift> {
    plan.get("resource_drift")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|rc| {
            let address = rc.get("address")?.as_str()?.to_string();
            let acts = actions(rc, "/change/actions");
            let action = if acts.iter().any(|a| a == "delete") {
                "delete"
            } else {
                "update"
            };
            Some(Drift {
                address,
                action: action.to_string(),
            })
        })
        .collect()
}

/// The refusal message: every violating address, and how to allow it.
pub fn refusal(env: &Environment, violations: &[Violation]) -> String {
    let list: Vec<String> = violations
        .iter()
        .map(|v| {
            format!(
                "{} {} (protected as {})",
                v.action, v.address, v.protected_by
            )
        })
        .collect();
    format!(
        "plan policy refuses {} in {}: {}; to allow it, list the address under terraform.policy.allow_destroy in environments/{}.yaml",
        if violations.len() == 1 { "this change" } else { "these changes" },
        env.name,
        list.join(", "),
        env.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan() -> Value {
        json!({
            "resource_changes": [
                {"address": "module.rds.aws_db_instance.this", "type": "aws_db_instance",
                 "change": {"actions": ["delete", "create"]}},
                {"address": "module.eks.aws_eks_cluster.this", "type": "aws_eks_cluster",
                 "change": {"actions": ["update"]}},
                {"address": "module.network.aws_subnet.public[0]", "type": "aws_subnet",
                 "change": {"actions": ["delete"]}},
                {"address": "terraform_data.rds", "type": "terraform_data",
                 "change": {"actions": ["delete"]}}
            ],
            "resource_drift": [
                {"address": "aws_route53_record.direct", "change": {"actions": ["update"]}}
            ]
        })
    }

    #[test]
    fn replacing_a_protected_type_is_a_violation_and_updates_are_not() {
        let v = violations(&plan(), &PlanPolicy::default());
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].address, "module.rds.aws_db_instance.this");
        assert_eq!(v[0].action, "replace");
    }

    #[test]
    fn extra_patterns_protect_and_allow_destroy_exempts_by_address() {
        let policy = PlanPolicy {
            protect: vec!["terraform_data.rds".into()],
            allow_destroy: vec!["module.rds.*".into()],
        };
        let v = violations(&plan(), &policy);
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].address, "terraform_data.rds");
        assert_eq!(v[0].action, "delete");
    }

    #[test]
    fn allowing_a_whole_type_does_not_lift_the_protection() {
        let policy = PlanPolicy {
            protect: vec![],
            allow_destroy: vec!["aws_db_instance".into()],
        };
        assert_eq!(violations(&plan(), &policy).len(), 1);
    }

    #[test]
    fn only_production_refuses_and_drift_is_read() {
        assert!(refuses(Tier::Production));
        assert!(!refuses(Tier::Staging));
        assert_eq!(
            drift(&plan()),
            vec![Drift {
                address: "aws_route53_record.direct".into(),
                action: "update".into()
            }]
        );
    }
}
