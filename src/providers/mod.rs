//! Clients for the real services: AWS (SDK, assumed role per environment), Kubernetes (kube-rs,
//! kubeconfig context named by the EKS cluster ARN), PostgreSQL (tokio-postgres), Terraform (the
//! `terraform` CLI) and HTTP (reqwest). Authentication, connection and retries live here.
//!
//! Providers know nothing of runbooks, steps or the event log: they take plain parameters and
//! return plain results.

pub mod aws;
pub mod aws_calls;
pub mod eks_token;
pub mod external_secrets;
pub mod http;
pub mod kube;
pub mod metrics;
pub mod objects;
pub mod organizations;
pub mod pgbouncer;
pub mod postgres;
pub mod rds;
pub mod route53;
pub mod secrets;
pub mod terraform;
pub mod waf;

use crate::config::{Environment, SecretRef, SecretSource, Side};
use crate::secret::Redactor;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// Why a provider call failed. Messages never contain secret values.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// An AWS API call failed; the operation and the service's error.
    #[error("AWS {op}: {message}")]
    Aws {
        /// API operation, e.g. `route53:ChangeResourceRecordSets`.
        op: String,
        /// The SDK's error with its context.
        message: String,
    },
    /// STS reports another account than the environment's (a gate: exit 3).
    #[error("wrong AWS account: expected {expected}, STS reports {actual} ({arn})")]
    WrongAccount {
        /// The environment's account id.
        expected: String,
        /// The account STS reported.
        actual: String,
        /// The caller ARN STS reported.
        arn: String,
    },
    /// The account is not where the environment file says it is in the Organization (OU path,
    /// SCPs): a gate, exit 3. Names expected and actual.
    #[error("wrong Organization placement: {0}")]
    WrongPlacement(String),
    /// A Kubernetes API call or kubeconfig lookup failed.
    #[error("Kubernetes: {0}")]
    Kube(String),
    /// A PostgreSQL connection or statement failed.
    #[error("PostgreSQL ({side}): {message}")]
    Postgres {
        /// Which server.
        side: postgres::Server,
        /// The server's or driver's message.
        message: String,
    },
    /// A `terraform` command failed.
    #[error("terraform {command}: {message}")]
    Terraform {
        /// The subcommand, e.g. `plan`.
        command: String,
        /// Exit status and the end of stderr.
        message: String,
        /// What kind of failure it was, classified where Terraform ran
        /// ([`terraform::Failure::of`]).
        failure: terraform::Failure,
    },
    /// An HTTP request failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// A local copy worker process (`cutover copy-worker`) could not be started or failed past
    /// its restarts; its last stderr line.
    #[error("copy worker: {0}")]
    Worker(String),
    /// A required environment variable (holding a secret) is unset.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// A required secret (file, Secrets Manager secret, SSM parameter) does not exist.
    #[error("{0} does not exist")]
    MissingSecret(String),
    /// A secret source cannot be read or used as asked (the message names the source and the
    /// problem, never a value).
    #[error("secret source: {0}")]
    SecretSource(String),
    /// A database URL variable's value cannot be used (the problem names no part of it).
    #[error("environment variable {var}: the database URL {problem}")]
    BadUrl {
        /// The variable.
        var: String,
        /// What is wrong.
        problem: crate::secret::UrlProblem,
    },
}

impl ProviderError {
    /// For a failed `terraform` command, what it failed of; `None` for any other error.
    pub fn terraform_failure(&self) -> Option<terraform::Failure> {
        match self {
            ProviderError::Terraform { failure, .. } => Some(*failure),
            _ => None,
        }
    }
}

/// Lazily built clients for one run in one environment, shared by its steps.
pub struct Providers {
    env: Environment,
    run_id: String,
    redactor: Arc<Redactor>,
    aws: OnceCell<aws::AwsSession>,
    waf: OnceCell<Arc<dyn waf::Waf>>,
    route53: OnceCell<Arc<dyn route53::Route53>>,
    rds: OnceCell<Arc<dyn rds::Rds>>,
    identity: OnceCell<aws::Identity>,
    /// A stand-in for the environment's Terraform root (unit tests); unset, each call builds
    /// the real one with fresh credentials.
    terraform: OnceCell<Arc<dyn terraform::Root>>,
    /// Stand-ins for the source and target servers (unit tests); unset, each call connects.
    #[cfg(test)]
    databases: std::collections::HashMap<Side, Arc<dyn postgres::database::Database>>,
    /// A stand-in for the comparison of both servers (unit tests).
    #[cfg(test)]
    checksums: Option<Arc<dyn postgres::database::Checksums>>,
    /// A stand-in for the initial copy between them (unit tests).
    #[cfg(test)]
    initial_copy: Option<Arc<dyn postgres::initial_copy::InitialCopy>>,
    kube: tokio::sync::Mutex<Option<(::kube::Client, kube::Access, std::time::Instant)>>,
    /// Database admin URLs read from a secret source other than a variable
    /// ([`Providers::load_database_url`]).
    urls: std::sync::RwLock<std::collections::HashMap<&'static str, String>>,
    /// CA files read from the `*_ca` secret sources, by side ([`Providers::load_ca`]).
    cas: std::sync::RwLock<std::collections::HashMap<&'static str, std::path::PathBuf>>,
}

/// A token-authenticated Kubernetes client is rebuilt after this long (EKS tokens are accepted
/// for 15 minutes).
const KUBE_TOKEN_REFRESH: std::time::Duration = std::time::Duration::from_secs(10 * 60);

impl Providers {
    /// Clients for `env`; nothing is contacted until first use. Secrets read later are registered
    /// with `redactor`.
    pub fn new(env: Environment, run_id: &str, redactor: Arc<Redactor>) -> Self {
        Providers {
            env,
            run_id: run_id.to_string(),
            redactor,
            aws: OnceCell::new(),
            waf: OnceCell::new(),
            route53: OnceCell::new(),
            rds: OnceCell::new(),
            identity: OnceCell::new(),
            terraform: OnceCell::new(),
            #[cfg(test)]
            databases: Default::default(),
            #[cfg(test)]
            checksums: None,
            #[cfg(test)]
            initial_copy: None,
            kube: tokio::sync::Mutex::new(None),
            urls: Default::default(),
            cas: Default::default(),
        }
    }

    /// WAFv2 in the environment's account ([`waf::AwsWaf`] over [`Providers::aws`]'s session).
    ///
    /// # Errors
    /// What [`Providers::aws`] returns.
    pub async fn waf(&self) -> Result<Arc<dyn waf::Waf>, ProviderError> {
        self.waf
            .get_or_try_init(|| async {
                let config = &self.aws().await?.config;
                Ok::<_, ProviderError>(
                    Arc::new(waf::AwsWaf(aws_sdk_wafv2::Client::new(config))) as Arc<dyn waf::Waf>
                )
            })
            .await
            .cloned()
    }

    /// The same providers with `waf` in place of WAFv2 (unit tests of step kinds).
    #[cfg(test)]
    pub fn with_waf(self, waf: Arc<dyn waf::Waf>) -> Self {
        let _ = self.waf.set(waf);
        self
    }

    /// Route 53 in the environment's account ([`route53::AwsRoute53`] over [`Providers::aws`]'s
    /// session).
    ///
    /// # Errors
    /// What [`Providers::aws`] returns.
    pub async fn route53(&self) -> Result<Arc<dyn route53::Route53>, ProviderError> {
        self.route53
            .get_or_try_init(|| async {
                let config = &self.aws().await?.config;
                Ok::<_, ProviderError>(Arc::new(route53::AwsRoute53(crate::aws_client!(
                    aws_sdk_route53,
                    config
                ))) as Arc<dyn route53::Route53>)
            })
            .await
            .cloned()
    }

    /// The same providers with `r53` in place of Route 53 (unit tests of step kinds).
    #[cfg(test)]
    pub fn with_route53(self, r53: Arc<dyn route53::Route53>) -> Self {
        let _ = self.route53.set(r53);
        self
    }

    /// RDS in the environment's account ([`rds::AwsRds`] over [`Providers::aws`]'s session).
    ///
    /// # Errors
    /// What [`Providers::aws`] returns.
    pub async fn rds(&self) -> Result<Arc<dyn rds::Rds>, ProviderError> {
        self.rds
            .get_or_try_init(|| async {
                let config = &self.aws().await?.config;
                Ok::<_, ProviderError>(Arc::new(rds::AwsRds(crate::aws_client!(
                    aws_sdk_rds,
                    config
                ))) as Arc<dyn rds::Rds>)
            })
            .await
            .cloned()
    }

    /// The same providers with `rds` in place of RDS (unit tests of step kinds).
    #[cfg(test)]
    pub fn with_rds(self, rds: Arc<dyn rds::Rds>) -> Self {
        let _ = self.rds.set(rds);
        self
    }

    /// Who the environment's session acts as: the account and assumed-role ARN STS reported
    /// when [`Providers::aws`] assumed the role.
    ///
    /// # Errors
    /// What [`Providers::aws`] returns.
    pub async fn identity(&self) -> Result<&aws::Identity, ProviderError> {
        self.identity
            .get_or_try_init(|| async {
                let s = self.aws().await?;
                Ok::<_, ProviderError>(aws::Identity {
                    account_id: s.account_id.clone(),
                    caller_arn: s.caller_arn.clone(),
                })
            })
            .await
    }

    /// The same providers acting as `identity` (unit tests of step kinds).
    #[cfg(test)]
    pub fn with_identity(self, identity: aws::Identity) -> Self {
        let _ = self.identity.set(identity);
        self
    }

    /// The environment's Terraform root under `root` (`terraform.dir`), its data directory
    /// under `state_dir`, run with the session's credentials renewed for this call.
    ///
    /// # Errors
    /// What [`Providers::aws`] returns, or the renewal's error.
    pub async fn terraform(
        &self,
        root: &std::path::Path,
        state_dir: &std::path::Path,
    ) -> Result<Arc<dyn terraform::Root>, ProviderError> {
        if let Some(t) = self.terraform.get() {
            return Ok(t.clone());
        }
        let session = self.aws().await?;
        Ok(Arc::new(
            terraform::Terraform::for_environment(root, state_dir, &self.env, session).await?,
        ))
    }

    /// The same providers with `tf` in place of the Terraform root (unit tests of step kinds).
    #[cfg(test)]
    pub fn with_terraform(self, tf: Arc<dyn terraform::Root>) -> Self {
        let _ = self.terraform.set(tf);
        self
    }

    /// The environment's AWS session: the role assumed and the account checked (see
    /// [`aws::AwsSession::assume`]).
    ///
    /// # Errors
    /// [`ProviderError::Aws`] when the role cannot be assumed, [`ProviderError::WrongAccount`]
    /// when STS reports another account.
    pub async fn aws(&self) -> Result<&aws::AwsSession, ProviderError> {
        self.aws
            .get_or_try_init(|| aws::AwsSession::assume(&self.env, &self.run_id))
            .await
    }

    /// A Kubernetes client for the environment's EKS cluster.
    ///
    /// # Errors
    /// See [`kube::client_for_cluster`].
    pub async fn kube(&self) -> Result<::kube::Client, ProviderError> {
        let mut cached = self.kube.lock().await;
        if let Some((client, access, made)) = cached.as_ref() {
            if *access == kube::Access::Kubeconfig || made.elapsed() < KUBE_TOKEN_REFRESH {
                return Ok(client.clone());
            }
        }
        let session = self.aws().await?;
        let (client, access) = kube::client_for_cluster(session, &self.env.eks.cluster).await?;
        *cached = Some((client.clone(), access, std::time::Instant::now()));
        Ok(client)
    }

    /// Installs `client` as the cluster's (unit tests: a client over an in-memory API).
    #[cfg(test)]
    pub fn with_kube(self, client: ::kube::Client) -> Self {
        *self.kube.try_lock().expect("not shared yet") =
            Some((client, kube::Access::Kubeconfig, std::time::Instant::now()));
        self
    }

    /// The value of a secret-holding environment variable, registered with the redactor.
    ///
    /// # Errors
    /// [`ProviderError::MissingEnv`] when unset or empty.
    pub fn secret_env(&self, name: &str) -> Result<String, ProviderError> {
        let v = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ProviderError::MissingEnv(name.to_string()))?;
        self.redactor.add(&v);
        Ok(v)
    }

    /// The value of the database URL variable `var`, registered as a secret and checked
    /// ([`crate::secret::check_url`]).
    ///
    /// # Errors
    /// [`ProviderError::MissingEnv`] when unset, [`ProviderError::BadUrl`] when unusable.
    pub fn database_url_env(&self, var: &str) -> Result<String, ProviderError> {
        let url = self.secret_env(var)?;
        crate::secret::check_url(&url).map_err(|problem| ProviderError::BadUrl {
            var: var.to_string(),
            problem,
        })?;
        Ok(url)
    }

    /// Reads the secret `r` names (its templates already rendered) and applies its `key` or
    /// `as_database_url`. The stored value, the derived value and, for a JSON object, each of
    /// its string fields are registered with the redactor. `Ok(None)` for a missing optional one.
    ///
    /// # Errors
    /// [`ProviderError::MissingEnv`] / [`ProviderError::MissingSecret`] when a required one does
    /// not exist; [`ProviderError::SecretSource`] when the reference is malformed or the value
    /// has no such key; [`ProviderError::Aws`] when AWS refuses.
    pub async fn read_secret(&self, r: &SecretRef) -> Result<Option<String>, ProviderError> {
        let source = r.source().map_err(ProviderError::SecretSource)?;
        let session = match source {
            SecretSource::SecretsManager(_) | SecretSource::Ssm(_) => Some(self.aws().await?),
            _ => None,
        };
        let raw = match secrets::read(session, &source).await? {
            secrets::Read::Value(v) => v,
            secrets::Read::Missing if r.optional => return Ok(None),
            secrets::Read::Missing => {
                return Err(match source {
                    SecretSource::Env(v) => ProviderError::MissingEnv(v),
                    other => ProviderError::MissingSecret(other.describe()),
                })
            }
        };
        self.redactor.add(&raw);
        // Inside a JSON secret, the password and any URL carrying one are secrets; a user name,
        // host or engine (`"username": "postgres"`) is not, and redacting it would rewrite
        // every record that names it.
        if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&raw) {
            for (k, v) in &fields {
                if let serde_json::Value::String(s) = v {
                    if k.to_ascii_lowercase().contains("password")
                        || crate::secret::url_has_password(s)
                    {
                        self.redactor.add(s);
                    }
                }
            }
        }
        let value = match (&r.key, &r.as_database_url) {
            (Some(k), _) => secrets::json_key(&raw, k),
            (None, Some(parts)) => secrets::database_url(&raw, parts),
            (None, None) => Ok(raw),
        }
        .map_err(|e| ProviderError::SecretSource(format!("{}: {e}", source.describe())))?;
        self.redactor.add(&value);
        Ok(Some(value))
    }

    /// Reads the admin URL of `side` from the secret `r` names (templates rendered) and keeps it
    /// for [`Providers::source_url`] / [`Providers::target_url`].
    ///
    /// # Errors
    /// As [`Providers::read_secret`]; [`ProviderError::BadUrl`] when the value is not a usable
    /// database URL.
    pub async fn load_database_url(&self, side: Side, r: &SecretRef) -> Result<(), ProviderError> {
        let described = r.source().map(|s| s.describe()).unwrap_or_default();
        // A credentials secret names no database of its own by default: the run's is meant.
        let mut r = r.clone();
        if let Some(parts) = r.as_database_url.as_mut() {
            if parts.dbname.is_none() && !self.env.database.name.is_empty() {
                parts.dbname = Some(self.env.database.name.clone());
            }
        }
        let Some(url) = self.read_secret(&r).await? else {
            return Err(ProviderError::MissingSecret(described));
        };
        crate::secret::check_url(&url).map_err(|problem| ProviderError::BadUrl {
            var: described,
            problem,
        })?;
        self.urls
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(side.as_str(), url);
        Ok(())
    }

    /// Reads both admin URLs that come from a secret source with no template in it (a template
    /// over Terraform outputs needs a run): what commands outside a run use before
    /// [`Providers::source_url`] / [`Providers::target_url`].
    ///
    /// # Errors
    /// As [`Providers::load_database_url`].
    pub async fn read_database_urls(&self) -> Result<(), ProviderError> {
        for (side, r) in [
            (Side::Source, self.env.database.source_url.clone()),
            (Side::Target, self.env.database.target_url.clone()),
        ] {
            let from_var = matches!(
                self.env.database.url_source(side),
                Some(SecretSource::Env(_))
            );
            if let (Some(r), false) = (r, from_var) {
                if !r.is_templated() {
                    self.load_database_url(side, &r).await?;
                }
            }
            if let Some(r) = self.env.database.ca(side).filter(|r| !r.is_templated()) {
                self.load_ca(side, &r.clone()).await?;
            }
        }
        Ok(())
    }

    /// Reads the CA certificate of `side`'s server from the secret `r` names (templates
    /// rendered), keeps it as a file ([`postgres::tls::store_ca`]) and verifies `side`'s
    /// connections against it from now on. Returns the file's path and the certificate's
    /// fingerprint ([`crate::secret::fingerprint`] of the PEM text).
    ///
    /// # Errors
    /// As [`Providers::read_secret`]; [`ProviderError::SecretSource`] when the value holds no
    /// PEM certificate.
    pub async fn load_ca(
        &self,
        side: Side,
        r: &SecretRef,
    ) -> Result<(std::path::PathBuf, String), ProviderError> {
        let described = r.source().map(|s| s.describe()).unwrap_or_default();
        let Some(pem) = self.read_secret(r).await? else {
            return Err(ProviderError::MissingSecret(described));
        };
        let path = postgres::tls::store_ca(&pem).map_err(|m| {
            ProviderError::SecretSource(format!("{} CA ({described}): {m}", side.as_str()))
        })?;
        self.cas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(side.as_str(), path.clone());
        Ok((path, crate::secret::fingerprint(&pem)))
    }

    fn database_url(&self, side: Side) -> Result<String, ProviderError> {
        let url = self.database_url_as_given(side)?;
        let ca = self
            .cas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(side.as_str())
            .cloned();
        match ca {
            None => Ok(url),
            Some(ca) => postgres::tls::with_root_cert(&url, &ca).map_err(|m| {
                ProviderError::SecretSource(format!("the {} database URL: {m}", side.as_str()))
            }),
        }
    }

    fn database_url_as_given(&self, side: Side) -> Result<String, ProviderError> {
        match self.env.database.url_source(side) {
            Some(SecretSource::Env(var)) => self.database_url_env(&var),
            other => self
                .urls
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(side.as_str())
                .cloned()
                .ok_or_else(|| {
                    ProviderError::SecretSource(format!(
                        "the {} database URL ({}) has not been read: it names values no step has produced yet",
                        side.as_str(),
                        other.map(|s| s.describe()).unwrap_or_else(|| "no source".into())
                    ))
                }),
        }
    }

    /// The source (legacy) database admin URL.
    ///
    /// # Errors
    /// As [`Providers::database_url_env`]; [`ProviderError::SecretSource`] when it comes from
    /// a secret source not read yet.
    pub fn source_url(&self) -> Result<String, ProviderError> {
        self.database_url(Side::Source)
    }

    /// The target (RDS) database admin URL; errors as [`Providers::source_url`].
    pub fn target_url(&self) -> Result<String, ProviderError> {
        self.database_url(Side::Target)
    }

    /// Every set database URL variable of the environment is usable: the check a run makes
    /// before it takes a lock or writes a record (URLs from other sources are checked as they
    /// are read).
    ///
    /// # Errors
    /// The first [`ProviderError::BadUrl`].
    pub fn check_database_urls(&self) -> Result<(), ProviderError> {
        for side in [Side::Source, Side::Target] {
            if let Some(SecretSource::Env(var)) = self.env.database.url_source(side) {
                match self.database_url_env(&var) {
                    Ok(_) | Err(ProviderError::MissingEnv(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// A new connection to `side`'s server behind the [`postgres::database::Database`] seam
    /// ([`postgres::database::PgDatabase::connect`]), read-write for this tool's own
    /// statements.
    ///
    /// # Errors
    /// As [`Providers::source_url`] and [`postgres::connect`].
    pub async fn database(
        &self,
        side: Side,
    ) -> Result<Arc<dyn postgres::database::Database>, ProviderError> {
        #[cfg(test)]
        if let Some(db) = self.databases.get(&side) {
            return Ok(db.clone());
        }
        Ok(Arc::new(
            postgres::database::PgDatabase::connect(&self.database_url(side)?, side).await?,
        ))
    }

    /// The comparison of every row of the source and the target
    /// ([`postgres::database::PgChecksums`] over both admin URLs).
    ///
    /// # Errors
    /// As [`Providers::source_url`].
    pub fn checksums(&self) -> Result<Arc<dyn postgres::database::Checksums>, ProviderError> {
        #[cfg(test)]
        if let Some(c) = &self.checksums {
            return Ok(c.clone());
        }
        Ok(Arc::new(postgres::database::PgChecksums {
            source_url: self.source_url()?,
            target_url: self.target_url()?,
        }))
    }

    /// The initial copy between the source and the target
    /// ([`postgres::initial_copy::PgInitialCopy`], connected to both); the exported snapshot's
    /// holder stops when file `hold` is removed.
    ///
    /// # Errors
    /// As [`Providers::source_url`] and [`postgres::connect`].
    pub async fn initial_copy(
        &self,
        hold: std::path::PathBuf,
    ) -> Result<Arc<dyn postgres::initial_copy::InitialCopy>, ProviderError> {
        #[cfg(test)]
        if let Some(c) = &self.initial_copy {
            return Ok(c.clone());
        }
        Ok(Arc::new(
            postgres::initial_copy::PgInitialCopy::connect(
                self.source_url()?,
                self.target_url()?,
                hold,
            )
            .await?,
        ))
    }

    /// Installs a stand-in for the initial copy (unit tests).
    #[cfg(test)]
    pub fn with_initial_copy(mut self, c: Arc<dyn postgres::initial_copy::InitialCopy>) -> Self {
        self.initial_copy = Some(c);
        self
    }

    /// Installs a stand-in for the comparison of both servers (unit tests).
    #[cfg(test)]
    pub fn with_checksums(mut self, c: Arc<dyn postgres::database::Checksums>) -> Self {
        self.checksums = Some(c);
        self
    }

    /// Installs a stand-in for `side`'s server (unit tests).
    #[cfg(test)]
    pub fn with_database(mut self, side: Side, db: Arc<dyn postgres::database::Database>) -> Self {
        self.databases.insert(side, db);
        self
    }

    /// The environment these clients act on.
    pub fn env(&self) -> &Environment {
        &self.env
    }
}
