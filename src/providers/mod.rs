//! Clients for the real services: AWS (SDK, assumed role per environment), Kubernetes (kube-rs,
//! kubeconfig context named by the EKS cluster ARN), PostgreSQL (tokio-postgres), Terraform (the
//! `terraform` CLI) and HTTP (reqwest). Authentication, connection and retries live here.
//!
//! Providers know nothing of runbooks, steps or the event log: they take plain parameters and
//! return plain results.

pub mod aws;
pub mod eks_token;
pub mod http;
pub mod kube;
pub mod organizations;
pub mod postgres;
pub mod route53;
pub mod terraform;

use crate::config::Environment;
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
        /// `source` or `target`.
        side: String,
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
    },
    /// An HTTP request failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// A required environment variable (holding a secret) is unset.
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    /// A database URL variable's value cannot be used (the problem names no part of it).
    #[error("environment variable {var}: the database URL {problem}")]
    BadUrl {
        /// The variable.
        var: String,
        /// What is wrong.
        problem: crate::secret::UrlProblem,
    },
}

/// Lazily built clients for one run in one environment, shared by its steps.
pub struct Providers {
    env: Environment,
    run_id: String,
    redactor: Arc<Redactor>,
    aws: OnceCell<aws::AwsSession>,
    kube: tokio::sync::Mutex<Option<(::kube::Client, kube::Access, std::time::Instant)>>,
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
            kube: tokio::sync::Mutex::new(None),
        }
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
        let session = self.aws().await?;
        let mut cached = self.kube.lock().await;
        if let Some((client, access, made)) = cached.as_ref() {
            if *access == kube::Access::Kubeconfig || made.elapsed() < KUBE_TOKEN_REFRESH {
                return Ok(client.clone());
            }
        }
        let (client, access) = kube::client_for_cluster(session, &self.env.eks.cluster).await?;
        *cached = Some((client.clone(), access, std::time::Instant::now()));
        Ok(client)
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

    /// The source (legacy) database admin URL.
    pub fn source_url(&self) -> Result<String, ProviderError> {
        self.database_url_env(&self.env.database.source_url_env)
    }

    /// The target (RDS) database admin URL.
    pub fn target_url(&self) -> Result<String, ProviderError> {
        self.database_url_env(&self.env.database.target_url_env)
    }

    /// Every set database URL variable of the environment is usable: the check a run makes
    /// before it takes a lock or writes a record.
    ///
    /// # Errors
    /// The first [`ProviderError::BadUrl`].
    pub fn check_database_urls(&self) -> Result<(), ProviderError> {
        for var in [
            &self.env.database.source_url_env,
            &self.env.database.target_url_env,
        ] {
            match self.database_url_env(var) {
                Ok(_) | Err(ProviderError::MissingEnv(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Connects to the source database. The session is read-write even after the database was
    /// frozen (`default_transaction_read_only`), since this tool's own statements (dropping a
    /// publication on rollback) must still run.
    pub async fn source(&self) -> Result<tokio_postgres::Client, ProviderError> {
        let c = postgres::connect(&self.source_url()?, "source").await?;
        c.batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| postgres::pg("source", e))?;
        Ok(c)
    }

    /// Connects to the target database.
    pub async fn target(&self) -> Result<tokio_postgres::Client, ProviderError> {
        postgres::connect(&self.target_url()?, "target").await
    }

    /// The environment these clients act on.
    pub fn env(&self) -> &Environment {
        &self.env
    }
}
