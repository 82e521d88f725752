//! `environments/<env>.yaml`: one AWS account, its Terraform root, EKS cluster, databases, DNS
//! zone and the secrets the runbook may use (by environment variable name, never by value).

use super::node::Node;
use super::problem::{from_yaml_error, Problem, Problems};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::Path;

/// The tier of an environment; production is gated by rehearsals of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
    /// The database a run acts on. In the file: the environment's only database, written
    /// `database:` (absent when the file lists `databases:`); in a resolved plan: the one the run
    /// chose ([`Environment::for_database`]).
    #[serde(default, skip_serializing_if = "DatabaseSection::is_unset")]
    pub database: DatabaseSection,
    /// Several databases, each moved by its own runs, by a name that is the same in every
    /// environment (`shop`, `letters`): a runbook says which with `database:` (or a migration's
    /// wave does). Absent when the file has one `database:`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub databases: BTreeMap<String, DatabaseSection>,
    /// The Route 53 hosted zone.
    pub dns: DnsSection,
    /// Secrets the runbook may reference as `secrets.<name>`; values come from the process
    /// environment at run time and are never written anywhere.
    #[serde(default)]
    pub secrets: BTreeMap<String, SecretRef>,
    /// The legacy object storage users' files move from (DigitalOcean Spaces or any
    /// S3-compatible endpoint), by a name that is the same in every environment (`uploads`):
    /// `env.buckets.<name>.endpoint`, `.region` and `.bucket` in templates. Its access keys are
    /// `secrets:` like any other.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub buckets: BTreeMap<String, BucketSection>,
    /// Where the metrics of the environment's real traffic are read by analysis windows
    /// (`env.monitoring.*` in templates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring: Option<MonitoringSection>,
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// `.cutover/runs` and `.cutover/locks` in the project directory (flock).
    #[default]
    Local,
    /// Objects in the environment's bucket; the lock is a conditional PutObject (If-None-Match).
    S3,
}

/// Terraform root and backend for the environment's account.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
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
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EksSection {
    /// Cluster name as in DescribeCluster.
    pub cluster: String,
    /// The `cutover` container image the cluster runs the copy's workers from (an Indexed Job,
    /// `postgres.replicate` `workers: { run: job }`), e.g. an ECR repository's
    /// `<account>.dkr.ecr.<region>.amazonaws.com/cutover:0.1.0`; default `cutover:<this version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The service account the copy's worker pods run as (e.g. one bound by IRSA or EKS Pod
    /// Identity to a role that may pull the image); default the namespace's `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// Source (legacy) and target (RDS) databases. Admin URLs carry passwords, so the file says where
/// to read them: an environment variable (`source_url_env`, `target_url_env`) or any secret source
/// (`source_url`, `target_url`, e.g. the RDS-managed master secret in Secrets Manager).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSection {
    /// Database name on both sides.
    pub name: String,
    /// Environment variable holding the source admin URL (`postgres://user:pass@host:port/db`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_url_env: String,
    /// Environment variable holding the target admin URL.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_url_env: String,
    /// The source admin URL from a secret source, instead of `source_url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<SecretRef>,
    /// The target admin URL from a secret source, instead of `target_url_env`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_url: Option<SecretRef>,
    /// The CA certificate (PEM) that signed the source server's certificate, from a secret
    /// source (file, variable, Secrets Manager, SSM): kept as a file and used as the source
    /// URL's `sslrootcert`, with `sslmode=verify-full` unless the URL gives a mode. For a CA
    /// that is not a file where the tool runs (DigitalOcean's per-cluster `ca-certificate.crt`
    /// kept in Secrets Manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ca: Option<SecretRef>,
    /// The same for the target server (RDS: `global-bundle.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ca: Option<SecretRef>,
}

/// One side of a database pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The legacy database.
    Source,
    /// The RDS database.
    Target,
}

impl Side {
    /// `source` or `target`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Source => "source",
            Side::Target => "target",
        }
    }
}

impl DatabaseSection {
    /// No database given (the file lists `databases:` instead).
    pub fn is_unset(&self) -> bool {
        self.name.is_empty()
            && self.source_url_env.is_empty()
            && self.target_url_env.is_empty()
            && self.source_url.is_none()
            && self.target_url.is_none()
    }

    /// Where `side`'s admin URL is read from: `*_url_env` as a [`SecretSource::Env`], else the
    /// `*_url` source; `None` when neither is given.
    pub fn url_source(&self, side: Side) -> Option<SecretSource> {
        let (var, src) = match side {
            Side::Source => (&self.source_url_env, &self.source_url),
            Side::Target => (&self.target_url_env, &self.target_url),
        };
        if !var.is_empty() {
            return Some(SecretSource::Env(var.clone()));
        }
        src.as_ref().and_then(|r| r.source().ok())
    }

    /// `side`'s CA certificate source (`source_ca`, `target_ca`), if given.
    pub fn ca(&self, side: Side) -> Option<&SecretRef> {
        match side {
            Side::Source => self.source_ca.as_ref(),
            Side::Target => self.target_ca.as_ref(),
        }
    }

    /// The problems of this section's URL fields: each side needs exactly one of `*_url_env` and
    /// `*_url`, and a `*_url` or `*_ca` source must itself be well formed.
    pub fn url_problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (side, ca) in [("source", &self.source_ca), ("target", &self.target_ca)] {
            if let Some(r) = ca {
                if let Err(e) = r.source() {
                    out.push(format!("{side}_ca: {e}"));
                }
                if r.as_database_url.is_some() {
                    out.push(format!(
                        "{side}_ca: `as_database_url` makes a URL, not a certificate: remove it"
                    ));
                }
            }
        }
        for (side, var, src) in [
            ("source", &self.source_url_env, &self.source_url),
            ("target", &self.target_url_env, &self.target_url),
        ] {
            match (var.is_empty(), src) {
                (true, None) => out.push(format!("`{side}_url_env` or `{side}_url` is required")),
                (false, Some(_)) => out.push(format!(
                    "both `{side}_url_env` and `{side}_url` are set: keep one"
                )),
                (true, Some(r)) => {
                    if let Err(e) = r.source() {
                        out.push(format!("{side}_url: {e}"));
                    }
                }
                (false, None) => {}
            }
        }
        out
    }
}

impl Environment {
    /// The names runs may choose from: the keys of `databases:`, or the one `database:`'s name.
    pub fn database_names(&self) -> Vec<String> {
        if self.databases.is_empty() {
            vec![self.database.name.clone()]
        } else {
            self.databases.keys().cloned().collect()
        }
    }

    /// The environment as a run acting on database `name` sees it: `database` is that one and
    /// `databases` is empty. `None` chooses the only database. Returns the chosen name too.
    ///
    /// # Errors
    /// A message naming the valid choices when `name` is not one of them, or when `None` is given
    /// and there are several.
    pub fn for_database(&self, name: Option<&str>) -> Result<(String, Environment), String> {
        let names = self.database_names();
        let chosen = match name {
            Some(n) if names.iter().any(|k| k == n) => n.to_string(),
            Some(n) => {
                return Err(format!(
                    "environment {} has no database `{n}`; its databases: {}",
                    self.name,
                    names.join(", ")
                ))
            }
            None if names.len() == 1 => names[0].clone(),
            None => {
                return Err(format!(
                    "environment {} has several databases ({}): the runbook must say which with `database:`",
                    self.name,
                    names.join(", ")
                ))
            }
        };
        let mut env = self.clone();
        if let Some(db) = self.databases.get(&chosen) {
            env.database = db.clone();
        }
        env.databases.clear();
        Ok((chosen, env))
    }
}

/// The Route 53 hosted zone of the environment.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
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

/// A legacy bucket: where `s3.replicate` reads users' files from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BucketSection {
    /// The S3 API endpoint, e.g. `https://nyc3.digitaloceanspaces.com`.
    pub endpoint: String,
    /// The signing region, e.g. `nyc3`.
    pub region: String,
    /// The bucket (Space) name.
    pub bucket: String,
}

/// The environment's monitoring endpoints, and the pace of the analyses that read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSection {
    /// Base URL of the Prometheus server (its HTTP API) that scrapes the application, e.g.
    /// `https://prometheus.staging.example.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus_url: Option<String>,
    /// How long a metric analysis waits after a traffic stage before it first measures, as
    /// runbooks use it (`{{ env.monitoring.analysis_initial_delay }}`): a duration such as `4s`
    /// (default), long enough for the query's rate window to hold the new stage's requests.
    #[serde(default = "default_analysis_initial_delay")]
    pub analysis_initial_delay: String,
    /// The time between a metric analysis's measurements
    /// (`{{ env.monitoring.analysis_interval }}`), e.g. `2s` (default); production runbooks
    /// measure over minutes.
    #[serde(default = "default_analysis_interval")]
    pub analysis_interval: String,
}

impl Default for MonitoringSection {
    fn default() -> Self {
        MonitoringSection {
            prometheus_url: None,
            analysis_initial_delay: default_analysis_initial_delay(),
            analysis_interval: default_analysis_interval(),
        }
    }
}

fn default_analysis_initial_delay() -> String {
    "4s".into()
}

fn default_analysis_interval() -> String {
    "2s".into()
}

/// Where a secret value is read at run time: exactly one of `from_env`, `from_secrets_manager`,
/// `from_ssm` or `from_file`. A value may be a template over Terraform outputs
/// (`from_secrets_manager: "{{ tf.master_user_secret_arn }}"`): it is read once a step has
/// produced them. Values are only ever shown as fingerprints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of a process environment variable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_env: Option<String>,
    /// Name or ARN of an AWS Secrets Manager secret (its current `SecretString`), read with the
    /// environment's assumed role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_secrets_manager: Option<String>,
    /// Name of an AWS Systems Manager parameter (a `SecureString` is decrypted), read with the
    /// environment's assumed role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_ssm: Option<String>,
    /// Path of a file holding the value (one trailing newline is dropped); relative to the
    /// directory `cutover` runs in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_file: Option<String>,
    /// The value is a JSON object: take this key's value (a string, or a number as text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The value is a database credentials JSON object as RDS and Secrets Manager keep them
    /// (`username`, `password`, and optionally `host`, `port`, `dbname`): the secret is the
    /// `postgres://` URL they make, with fields given here filling in those the object lacks
    /// (the RDS-managed master secret holds only `username` and `password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_database_url: Option<UrlParts>,
    /// When true, a variable that is unset, or a file, secret or parameter that does not exist,
    /// leaves the secret undefined instead of stopping the run (for values only a rehearsal's
    /// heartbeat uses, such as the legacy application's URL).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
}

/// The parts of a database URL a credentials secret may lack.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UrlParts {
    /// Host name or address, e.g. the RDS instance's endpoint address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// TCP port (text, so it may come from `${VAR}` or a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// Database name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// libpq's `sslmode` for the URL (`disable`, `allow`, `prefer`, `require`, `verify-ca`,
    /// `verify-full`); unset or empty: verified (`verify-full`), see
    /// `crate::providers::postgres::tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    /// libpq's `sslrootcert`: the path of the CA certificate file that signed the server's
    /// certificate (RDS: `global-bundle.pem`), or `system`; unset or empty: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<String>,
}

/// A [`SecretRef`]'s source, checked: what providers read.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretSource {
    /// A process environment variable.
    Env(String),
    /// A Secrets Manager secret by name or ARN.
    SecretsManager(String),
    /// A Systems Manager parameter by name.
    Ssm(String),
    /// A file by path.
    File(String),
}

impl SecretSource {
    /// What the source names, e.g. `Secrets Manager secret shop/app`: for messages.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::Env(v) => format!("environment variable {v}"),
            SecretSource::SecretsManager(id) => format!("Secrets Manager secret {id}"),
            SecretSource::Ssm(n) => format!("SSM parameter {n}"),
            SecretSource::File(p) => format!("file {p}"),
        }
    }

    /// The name, ARN or path the source reads.
    pub fn locator(&self) -> &str {
        match self {
            SecretSource::Env(s)
            | SecretSource::SecretsManager(s)
            | SecretSource::Ssm(s)
            | SecretSource::File(s) => s,
        }
    }

    /// The same kind of source reading `locator` instead.
    pub fn with_locator(&self, locator: String) -> SecretSource {
        match self {
            SecretSource::Env(_) => SecretSource::Env(locator),
            SecretSource::SecretsManager(_) => SecretSource::SecretsManager(locator),
            SecretSource::Ssm(_) => SecretSource::Ssm(locator),
            SecretSource::File(_) => SecretSource::File(locator),
        }
    }
}

impl SecretRef {
    /// A reference to the environment variable `var`.
    pub fn env(var: &str) -> SecretRef {
        SecretRef::from_source(&SecretSource::Env(var.to_string()))
    }

    /// A reference reading `source` as it is (no `key`, not optional).
    pub fn from_source(source: &SecretSource) -> SecretRef {
        let mut r = SecretRef::default();
        let at = match source {
            SecretSource::Env(_) => &mut r.from_env,
            SecretSource::SecretsManager(_) => &mut r.from_secrets_manager,
            SecretSource::Ssm(_) => &mut r.from_ssm,
            SecretSource::File(_) => &mut r.from_file,
        };
        *at = Some(source.locator().to_string());
        r
    }

    /// The one source this reference names.
    ///
    /// # Errors
    /// A message listing the four choices when none or several are given, or when `key` and
    /// `as_database_url` are both set.
    pub fn source(&self) -> Result<SecretSource, String> {
        let given: Vec<SecretSource> = [
            self.from_env.clone().map(SecretSource::Env),
            self.from_secrets_manager
                .clone()
                .map(SecretSource::SecretsManager),
            self.from_ssm.clone().map(SecretSource::Ssm),
            self.from_file.clone().map(SecretSource::File),
        ]
        .into_iter()
        .flatten()
        .collect();
        if self.key.is_some() && self.as_database_url.is_some() {
            return Err("`key` and `as_database_url` cannot both be set".into());
        }
        match given.len() {
            1 => Ok(given.into_iter().next().expect("one")),
            n => Err(format!(
                "{} of from_env, from_secrets_manager, from_ssm, from_file given: exactly one is required",
                if n == 0 { "none".to_string() } else { n.to_string() }
            )),
        }
    }

    /// Whether any of its strings is a template (`{{ ... }}`), read only once the values it
    /// names are known.
    pub fn is_templated(&self) -> bool {
        let parts = self
            .as_database_url
            .iter()
            .flat_map(|p| [&p.host, &p.port, &p.dbname, &p.sslmode, &p.sslrootcert]);
        [
            &self.from_env,
            &self.from_secrets_manager,
            &self.from_ssm,
            &self.from_file,
            &self.key,
        ]
        .into_iter()
        .chain(parts)
        .flatten()
        .any(|s| s.contains("{{"))
    }
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
    match (env.database.is_unset(), env.databases.is_empty()) {
        (true, true) => problems.push(Problem::new(
            path,
            None,
            "missing field `database` (or `databases:`, a map of named databases)",
        )),
        (false, false) => problems.push(Problem::new(
            path,
            line_of("databases"),
            "both `database` and `databases` are set: list every database under `databases:`",
        )),
        (false, true) => {
            for p in env.database.url_problems() {
                problems.push(Problem::new(
                    path,
                    line_of("database"),
                    format!("database: {p}"),
                ));
            }
        }
        _ => {}
    }
    for (name, r) in &env.secrets {
        if let Err(e) = r.source() {
            problems.push(Problem::new(
                path,
                line_of(name),
                format!("secrets.{name}: {e}"),
            ));
        }
    }
    for (key, db) in &env.databases {
        if key.is_empty()
            || !key
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            problems.push(Problem::new(
                path,
                line_of(key),
                format!(
                    "databases: `{}` is not a name of [a-z0-9_-]",
                    key.escape_debug()
                ),
            ));
        }
        if db.is_unset() || db.name.is_empty() {
            problems.push(Problem::new(
                path,
                line_of(key),
                format!("databases.{key}: `name` is required"),
            ));
        }
        for p in db.url_problems() {
            problems.push(Problem::new(
                path,
                line_of(key),
                format!("databases.{key}: {p}"),
            ));
        }
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
    fn secret_sources_need_exactly_one_source_and_each_problem_is_reported_with_its_line() {
        let text = GOOD.replace(
            "database: {name: shop, source_url_env: S, target_url_env: T}\n",
            "databases:\n  shop:\n    name: shop_staging\n    source_url_env: S\n    target_url: {from_secrets_manager: 'rds!db-1', as_database_url: {host: h}}\n  letters:\n    name: letters_staging\n    source_url_env: S2\n    target_url_env: T2\n    target_url: {from_ssm: /p}\n",
        ) + "secrets:\n  both:\n    from_env: X\n    from_ssm: /y\n  none:\n    optional: true\n  fine:\n    from_file: /run/secrets/pw\n  json:\n    from_secrets_manager: app\n    key: url\n";
        let err = parse(Path::new("e.yaml"), &text, "staging").unwrap_err();
        let msgs: Vec<String> = err
            .0
            .iter()
            .map(|p| format!("{:?} {}", p.line, p.message))
            .collect();
        assert_eq!(err.0.len(), 3, "{msgs:?}");
        assert!(
            msgs.iter()
                .any(|m| m
                    .contains("databases.letters: both `target_url_env` and `target_url` are set")),
            "{msgs:?}"
        );
        assert!(msgs.iter().any(|m| m.starts_with("Some(") && m.contains("secrets.both: 2 of from_env, from_secrets_manager, from_ssm, from_file given")), "{msgs:?}");
        assert!(
            msgs.iter().any(|m| m.contains("secrets.none: none of")),
            "{msgs:?}"
        );
        let ok = text.replace("    target_url_env: T2\n", "").replace(
            "  both:\n    from_env: X\n    from_ssm: /y\n  none:\n    optional: true\n",
            "",
        );
        let env = parse(Path::new("e.yaml"), &ok, "staging").unwrap();
        let (_, shop) = env.for_database(Some("shop")).unwrap();
        assert_eq!(
            shop.database.url_source(Side::Target),
            Some(SecretSource::SecretsManager("rds!db-1".into()))
        );
        assert_eq!(
            shop.database.url_source(Side::Source),
            Some(SecretSource::Env("S".into()))
        );
        assert_eq!(
            env.secrets["fine"].source(),
            Ok(SecretSource::File("/run/secrets/pw".into()))
        );
    }

    #[test]
    fn a_run_chooses_one_of_several_databases_by_name() {
        let text = GOOD.replace(
            "database: {name: shop, source_url_env: S, target_url_env: T}\n",
            "databases:\n  shop: {name: shop_staging, source_url_env: S, target_url_env: T}\n  letters: {name: letters_staging, source_url_env: S2, target_url_env: T2}\n",
        );
        let env = parse(Path::new("e.yaml"), &text, "staging").unwrap();
        assert_eq!(env.database_names(), ["letters", "shop"]);
        let (name, narrowed) = env.for_database(Some("letters")).unwrap();
        assert_eq!(name, "letters");
        assert_eq!(narrowed.database.name, "letters_staging");
        assert!(narrowed.databases.is_empty());
        let err = env.for_database(None).unwrap_err();
        assert!(err.contains("several databases (letters, shop)"), "{err}");
        let err = env.for_database(Some("shpo")).unwrap_err();
        assert!(
            err.contains("no database `shpo`") && err.contains("letters, shop"),
            "{err}"
        );
        // The one-database form keeps working: its database is the only choice.
        let one = parse(Path::new("e.yaml"), GOOD, "staging").unwrap();
        assert_eq!(one.for_database(None).unwrap().0, "shop");
    }

    #[test]
    fn both_forms_or_neither_are_refused() {
        let both = GOOD.replace(
            "dns:",
            "databases:\n  x: {name: x, source_url_env: S, target_url_env: T}\ndns:",
        );
        let err = parse(Path::new("e.yaml"), &both, "staging").unwrap_err();
        assert!(
            err.to_string().contains("both `database` and `databases`"),
            "{err}"
        );
        let neither = GOOD.replace(
            "database: {name: shop, source_url_env: S, target_url_env: T}\n",
            "",
        );
        let err = parse(Path::new("e.yaml"), &neither, "staging").unwrap_err();
        assert!(
            err.to_string().contains("missing field `database`"),
            "{err}"
        );
    }

    #[test]
    fn wrong_name_and_bad_account_are_both_reported() {
        let text = GOOD.replace("'123456789012', role", "'12', role");
        let err = parse(Path::new("e.yaml"), &text, "dev").unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
    }
}
