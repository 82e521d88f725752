//! AWS Organizations: where an account sits (OU path from the root) and which service control
//! policies apply to it, read through a role in the management account.
//!
//! SCPs apply to an account when attached to it, to any OU above it or to the root (AWS
//! Organizations User Guide, "Inheritance for service control policies"), so the effective set is
//! the union over the path. This module reports what it reads; comparing with what an environment
//! expects is [`mismatches`].

use super::aws::{assume_role, err};
use super::ProviderError;
use aws_sdk_organizations::types::{ParentType, PolicyType};
use aws_sdk_organizations::Client;

/// An account's place in the Organization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Account id.
    pub account_id: String,
    /// `Root/<OU>/<OU>`, names from the root down to the account's parent.
    pub ou_path: String,
    /// Names of the SCPs attached to the account, its OUs or the root, sorted.
    pub scps: Vec<String>,
}

/// Reads `account_id`'s placement with the management role `management_role_arn` (assumed from the
/// standard credential chain, session `cutover-<session>`).
///
/// # Errors
/// [`ProviderError::Aws`] when the role cannot be assumed, or the account is not a member of the
/// Organization (`organizations:DescribeAccount` fails), or a listing call fails.
pub async fn placement(
    region: &str,
    management_role_arn: &str,
    session: &str,
    account_id: &str,
) -> Result<Placement, ProviderError> {
    let (config, _) = assume_role(region, management_role_arn, session).await?;
    let org = Client::new(&config);
    org.describe_account()
        .account_id(account_id)
        .send()
        .await
        .map_err(|e| err("organizations:DescribeAccount", e))?;
    // Walk up: account -> OU -> ... -> root, collecting ids.
    let mut chain: Vec<(String, bool)> = Vec::new();
    let mut current = account_id.to_string();
    for _ in 0..10 {
        let parents = org
            .list_parents()
            .child_id(&current)
            .send()
            .await
            .map_err(|e| err("organizations:ListParents", e))?;
        let Some(p) = parents.parents().first() else {
            break;
        };
        let id = p.id().unwrap_or_default().to_string();
        let is_root = p.r#type() == Some(&ParentType::Root);
        chain.push((id.clone(), is_root));
        if is_root {
            break;
        }
        current = id;
    }
    let mut names = Vec::new();
    for (id, is_root) in chain.iter().rev() {
        if !is_root {
            let ou = org
                .describe_organizational_unit()
                .organizational_unit_id(id)
                .send()
                .await
                .map_err(|e| err("organizations:DescribeOrganizationalUnit", e))?;
            names.push(
                ou.organizational_unit()
                    .and_then(|o| o.name())
                    .unwrap_or(id)
                    .to_string(),
            );
        } else {
            names.push("Root".to_string());
        }
    }
    let mut scps = Vec::new();
    let targets =
        std::iter::once(account_id.to_string()).chain(chain.iter().map(|(i, _)| i.clone()));
    for target in targets {
        let mut token = None;
        loop {
            let page = org
                .list_policies_for_target()
                .target_id(&target)
                .filter(PolicyType::ServiceControlPolicy)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| err("organizations:ListPoliciesForTarget", e))?;
            for p in page.policies() {
                if let Some(n) = p.name() {
                    if !scps.contains(&n.to_string()) {
                        scps.push(n.to_string());
                    }
                }
            }
            token = page.next_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
    }
    scps.sort();
    Ok(Placement {
        account_id: account_id.to_string(),
        ou_path: names.join("/"),
        scps,
    })
}

/// What differs between the expected OU path and SCP names and `actual`, one sentence each
/// naming expected and actual; empty when the placement is as expected.
pub fn mismatches(expected_ou: &str, expected_scps: &[String], actual: &Placement) -> Vec<String> {
    let mut out = Vec::new();
    if expected_ou.trim_end_matches('/') != actual.ou_path {
        out.push(format!(
            "account {} is in OU {}, expected {}",
            actual.account_id, actual.ou_path, expected_ou
        ));
    }
    let missing: Vec<&str> = expected_scps
        .iter()
        .filter(|s| !actual.scps.contains(s))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "account {}: expected SCPs {} not in effect (in effect: {})",
            actual.account_id,
            missing.join(", "),
            if actual.scps.is_empty() {
                "none".to_string()
            } else {
                actual.scps.join(", ")
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mismatches_name_expected_and_actual() {
        let actual = Placement {
            account_id: "222222222222".into(),
            ou_path: "Root/Workloads/Prod".into(),
            scps: vec!["FullAWSAccess".into()],
        };
        let m = mismatches(
            "Root/Workloads/NonProd",
            &["DenyLeaveOrganization".into(), "FullAWSAccess".into()],
            &actual,
        );
        assert_eq!(m.len(), 2);
        assert!(m[0].contains("in OU Root/Workloads/Prod, expected Root/Workloads/NonProd"));
        assert!(m[1].contains("DenyLeaveOrganization not in effect (in effect: FullAWSAccess)"));
        assert!(mismatches("Root/Workloads/Prod/", &[], &actual).is_empty());
    }
}
