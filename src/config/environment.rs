//! `environments/<env>.yaml`: one AWS account, its Terraform root, EKS cluster, databases, DNS
//! zone and the secrets the runbook may use (by environment variable name, never by value).

use super::node::Node;
use super::problem::{from_yaml_error, Problem, Problems};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::Path;

/// The tier of an environment; production is gated by rehearsals of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// A full-size rehearsal environment.
    Staging,
    /// A development environment, also used for rehearsals.
    Dev,
    /// The environment users depend on.
    Production,
}

impl Tier {
    /// The lower-case name used in files and templates (`env.tier`).
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Staging => "staging",
            Tier::Dev => "dev",
            Tier::Production => "production",
        }
    }
}

/// One environment = one AWS account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    /// Must equal the file stem (`staging` for `environments/staging.yaml`).
    pub name: String,
    /// staging | dev | production.
    pub tier: Tier,
    /// The account and how to reach it.
    pub aws: AwsSection,
    /// The Terraform root applied for this account.
    pub terraform: TerraformSection,
    /// The EKS cluster that runs the workloads.
    pub eks: EksSection,
    /// The database moved from the legacy host into RDS.
    pub database: DatabaseSection,
    /// The Route 53 hosted zone.
    pub dns: DnsSection,
    /// Secrets the runbook may reference as `secrets.<name>`; values come from the process
    /// environment at run time and are never written anywhere.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// Where run event logs and locks are kept; `local` when absent.
    #[serde(default)]
    pub store: StoreSection,
    /// What `execute` of this environment requires. Absent: production requires succeeded
    /// rehearsals in every staging and dev environment of the project within 7 days; other
    /// tiers require nothing.
    #[serde(default)]
    pub promotion: Option<PromotionPolicy>,
}

/// The promotion gate of an environment: the rehearsals `cutover execute` requires, and who may
/// approve its `approval` steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionPolicy {
    /// Environments in which a run of the same runbook digest must have succeeded.
    #[serde(default)]
    pub requires: Vec<String>,
    /// How old such a run may be (finish time), e.g. `7d`, `36h`; default 7 days.
    #[serde(default = "default_max_age")]
    pub max_age: String,
    /// Identities allowed to approve `approval` steps; empty: anyone but nobody silently.
    #[serde(default)]
    pub approvers: Vec<String>,
}

fn default_max_age() -> String {
    "7d".into()
}

/// The AWS account of an environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSection {
    /// 12-digit account id; STS must report exactly this after assuming `role_arn`.
    pub account_id: String,
    /// Role assumed from the standard credential chain for every AWS call and Terraform run.
    pub role_arn: String,
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// Where the account must sit in the Organization; checked before any mutation when set.
    #[serde(default)]
    pub organization: Option<OrganizationSection>,
}

/// The account's expected place in the AWS Organization, read through the management account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrganizationSection {
    /// Role in the management (or a delegated administrator) account allowed to call
    /// `organizations:DescribeAccount`, `ListParents`, `DescribeOrganizationalUnit` and
    /// `ListPoliciesForTarget`; assumed from the standard credential chain.
    pub management_role_arn: String,
    /// OU path from the root, names joined by `/`, e.g. `Root/Workloads/NonProd`.
    pub ou_path: String,
    /// Names of service control policies that must apply to the account, attached to it or to
    /// any OU above it (inheritance as AWS Organizations evaluates SCPs).
    #[serde(default)]
    pub scps: Vec<String>,
}

/// Store of run event logs and environment locks.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `local` (`.cutover/` in the project) or `s3` (shared by every clone and CI runner).
    #[serde(default)]
    pub kind: StoreKind,
    /// S3 bucket in the environment's account (required for `s3`).
    #[serde(default)]
    pub bucket: Option<String>,
    /// Key prefix inside the bucket, e.g. `cutover/`.
    #[serde(default)]
    pub prefix: String,
}

/// The kinds of run store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `.cutover/runs` and `.cutover/locks` in the project directory (flock).
    #[default]
    Local,
    /// Objects in the environment's bucket; the lock is a conditional PutObject (If-None-Match).
    S3,
}

/// Terraform root and backend for the environment's account.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TerraformSection {
    /// Directory of the root module, relative to the project root.
    pub dir: String,
    /// `-backend-config` key/value pairs for `terraform init` (bucket, key, region, ...).
    #[serde(default)]
    pub backend: BTreeMap<String, String>,
    /// `-var` values for plan.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// What a plan may do in this environment.
    #[serde(default)]
    pub policy: PlanPolicy,
}

/// The plan policy: in a production-tier environment a plan that deletes or replaces a protected
/// resource is refused unless its address is listed in `allow_destroy`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanPolicy {
    /// Extra protected resources, as resource types (`aws_db_instance`) or addresses
    /// (`module.rds.aws_db_instance.this`, a trailing `*` matches any suffix), added to the
    /// built-in protected types.
    #[serde(default)]
    pub protect: Vec<String>,
    /// Addresses (same patterns) whose deletion or replacement is allowed.
    #[serde(default)]
    pub allow_destroy: Vec<String>,
}

/// The EKS cluster; the kubeconfig context is looked up by the cluster's ARN.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EksSection {
    /// Cluster name as in DescribeCluster.
    pub cluster: String,
}

/// Source (legacy) and target (RDS) databases. URLs carry passwords, so the file names the
/// environment variables that hold them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// Database name on both sides.
    pub name: String,
    /// Environment variable holding the source admin URL (`postgres://user:pass@host:port/db`).
    pub source_url_env: String,
    /// Environment variable holding the target admin URL.
    pub target_url_env: String,
}

/// The Route 53 hosted zone of the environment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSection {
    /// Zone apex, e.g. `staging.shop.example.com`.
    pub domain: String,
    /// TTL in seconds the service's record is lowered to ahead of a cutover (default 60).
    #[serde(default = "default_cutover_ttl")]
    pub cutover_ttl: u32,
}

fn default_cutover_ttl() -> u32 {
    60
}

/// A secret value taken from the process environment at run time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of the environment variable.
    pub from_env: String,
    /// When true, an unset variable leaves the secret undefined instead of stopping the run
    /// (for values only a rehearsal's heartbeat uses, such as the legacy application's URL).
    #[serde(default)]
    pub optional: bool,
}

/// Parses one environment file: YAML first, then `${VAR}` expansion inside its string values
/// (see [`super::expand`]), then the typed structure, each problem with its line.
pub(super) fn parse(path: &Path, text: &str, expected_name: &str) -> Result<Environment, Problems> {
    let lookup = |n: &str| std::env::var(n).ok();
    let mut tree: Spanned<Node> =
        super::parse_yaml(text).map_err(|e| Problems::one(from_yaml_error(path, &e)))?;
    let errs = super::expand::expand_tree(&mut tree, text, &lookup);
    if !errs.is_empty() {
        return Err(Problems(
            errs.into_iter()
                .map(|(l, m)| Problem::new(path, Some(l), m))
                .collect(),
        ));
    }
    let env: Environment = serde_path_to_error::deserialize(tree.value.to_json()).map_err(|e| {
        let line = tree
            .value
            .line_at(e.path())
            .or(Some(tree.referenced.line() as u32));
        let inner = e.inner().to_string();
        let at = e.path().to_string();
        let message = if at == "." || at.is_empty() {
            inner
        } else {
            format!("{at}: {inner}")
        };
        Problems::one(Problem::new(path, line, message))
    })?;
    let mut problems = Problems::default();
    let line_of = |key: &str| {
        text.lines()
            .position(|l| l.trim_start().starts_with(&format!("{key}:")))
            .map(|i| i as u32 + 1)
    };
    if env.name != expected_name {
        problems.push(Problem::new(
            path,
            line_of("name"),
            format!(
                "name `{}` does not match the file name `{expected_name}`",
                env.name
            ),
        ));
    }
    let id = &env.aws.account_id;
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
        problems.push(Problem::new(
            path,
            line_of("account_id"),
            format!(
                "aws.account_id `{}` is not a 12-digit AWS account id",
                id.escape_debug()
            ),
        ));
    }
    if !env.aws.role_arn.starts_with("arn:aws") || !env.aws.role_arn.contains(":role/") {
        problems.push(Problem::new(
            path,
            line_of("role_arn"),
            format!(
                "aws.role_arn `{}` is not an IAM role ARN",
                env.aws.role_arn.escape_debug()
            ),
        ));
    }
    if env.store.kind == StoreKind::S3 && env.store.bucket.as_deref().unwrap_or("").is_empty() {
        problems.push(Problem::new(
            path,
            line_of("store"),
            "store.kind is s3 but store.bucket is not set",
        ));
    }
    if let Some(org) = &env.aws.organization {
        if !org.ou_path.starts_with("Root") {
            problems.push(Problem::new(
                path,
                line_of("ou_path"),
                format!(
                    "aws.organization.ou_path `{}` must start at `Root`",
                    org.ou_path
                ),
            ));
        }
    }
    if let Some(policy) = &env.promotion {
        if super::duration::parse_duration(&policy.max_age).is_err() {
            problems.push(Problem::new(
                path,
                line_of("max_age"),
                format!(
                    "promotion.max_age `{}` is not a duration like 7d, 36h or 90m",
                    policy.max_age
                ),
            ));
        }
        if policy.requires.iter().any(|r| r == &env.name) {
            problems.push(Problem::new(
                path,
                line_of("requires"),
                format!("promotion.requires names {} itself", env.name),
            ));
        }
    }
    problems.into_result(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: staging\ntier: staging\naws: {account_id: '123456789012', role_arn: 'arn:aws:iam::123456789012:role/x', region: us-east-1}\nterraform: {dir: t}\neks: {cluster: c}\ndatabase: {name: shop, source_url_env: S, target_url_env: T}\ndns: {domain: staging.example.com}\n";

    #[test]
    fn parses_a_complete_file() {
        let env = parse(Path::new("e.yaml"), GOOD, "staging").unwrap();
        assert_eq!(env.tier, Tier::Staging);
        assert_eq!(env.aws.region, "us-east-1");
    }

    #[test]
    fn unknown_field_is_rejected_with_its_line() {
        let text = GOOD.replace("tier: staging\n", "tier: staging\ncolour: blue\n");
        let err = parse(Path::new("e.yaml"), &text, "staging").unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert!(err.0[0].message.contains("colour"), "{}", err);
        assert_eq!(err.0[0].line, Some(3));
    }

    #[test]
    fn wrong_name_and_bad_account_are_both_reported() {
        let text = GOOD.replace("'123456789012', role", "'12', role");
        let err = parse(Path::new("e.yaml"), &text, "dev").unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }
}
