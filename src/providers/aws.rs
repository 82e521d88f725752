//! AWS: the environment's role assumed from the standard credential chain, and the account check
//! that guards every mutation.
//!
//! Endpoints follow the SDK's standard configuration (`AWS_ENDPOINT_URL`, `AWS_REGION`, profile
//! files), so the same code reaches AWS or a local moto server.

use super::ProviderError;
use crate::config::Environment;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{self, ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Formats an SDK error with its full context (code and message), never including credentials.
pub fn err<E: std::error::Error + 'static>(op: &str, e: E) -> ProviderError {
    ProviderError::Aws {
        op: op.to_string(),
        message: aws_smithy_display(&e),
    }
}

fn aws_smithy_display(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !parts.contains(&t) {
            parts.push(t);
        }
        src = s.source();
    }
    parts.join(": ")
}

/// Length of an assumed-role session in seconds: IAM's limit for a role assumed with another
/// role's credentials ("role chaining", 1 hour), which is how a management account reaches
/// `OrganizationAccountAccessRole`.
pub const SESSION_SECONDS: u64 = 3600;

/// Credentials are renewed when they have less than this left (EKS tokens live 15 minutes and
/// are made from them; SDK clients renew on their own through the same provider).
pub const RENEW_MARGIN: Duration = Duration::from_secs(600);

/// The environment role's credentials, renewed before they expire: a cache over a source
/// provider (the SDK's [`AssumeRoleProvider`], which assumes the role again on every call).
/// Shared by the SDK clients (as their credentials provider), the EKS token and Terraform, so
/// a run held for hours reaches its last step with live credentials.
#[derive(Clone, Debug)]
pub struct RenewingCredentials {
    source: SharedCredentialsProvider,
    cached: Arc<tokio::sync::Mutex<Option<Credentials>>>,
}

impl RenewingCredentials {
    /// Renews from `source`.
    pub fn new(source: impl ProvideCredentials + 'static) -> Self {
        Self {
            source: SharedCredentialsProvider::new(source),
            cached: Arc::default(),
        }
    }

    /// Credentials valid for at least `at_least` more (renewed from the source when the cached
    /// ones are not). Credentials without an expiry never renew.
    ///
    /// # Errors
    /// The source's error (AssumeRole refused, STS unreachable).
    pub async fn valid_for(&self, at_least: Duration) -> Result<Credentials, CredentialsError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref() {
            let lasts = c.expiry().is_none_or(|e| e > SystemTime::now() + at_least);
            if lasts {
                return Ok(c.clone());
            }
        }
        let fresh = self.source.provide_credentials().await?;
        *cached = Some(fresh.clone());
        Ok(fresh)
    }

    /// Credentials valid for at least [`RENEW_MARGIN`].
    ///
    /// # Errors
    /// As [`RenewingCredentials::valid_for`].
    pub async fn current(&self) -> Result<Credentials, CredentialsError> {
        self.valid_for(RENEW_MARGIN).await
    }
}

impl ProvideCredentials for RenewingCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.current())
    }
}

/// Assumes `role_arn` from the standard credential chain with session name `cutover-<session>`
/// (characters IAM does not allow dropped, at most 64), for [`SESSION_SECONDS`], renewed by
/// [`RenewingCredentials`]. Returns an SDK configuration using them, and them.
///
/// # Errors
/// [`ProviderError::Aws`] when the first AssumeRole fails.
pub async fn assume_role(
    region: &str,
    role_arn: &str,
    session: &str,
) -> Result<(SdkConfig, RenewingCredentials), ProviderError> {
    let base = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .load()
        .await;
    let session_name: String = format!("cutover-{session}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-".contains(*c))
        .take(64)
        .collect();
    let source = AssumeRoleProvider::builder(role_arn)
        .session_name(session_name)
        .session_length(Duration::from_secs(SESSION_SECONDS))
        .region(Region::new(region.to_string()))
        .configure(&base)
        .build()
        .await;
    let creds = RenewingCredentials::new(source);
    creds
        .current()
        .await
        .map_err(|e| err("sts:AssumeRole", e))?;
    let config = base
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(creds.clone()))
        .build();
    Ok((config, creds))
}

/// Who an AWS session acts as, as STS reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The account id.
    pub account_id: String,
    /// The assumed role's ARN.
    pub caller_arn: String,
}

/// An SDK configuration holding the environment role's temporary credentials, and who STS says
/// they are.
#[derive(Clone, Debug)]
pub struct AwsSession {
    /// Configuration for every service client of this environment.
    pub config: SdkConfig,
    /// The account STS reported (equal to the environment's).
    pub account_id: String,
    /// The assumed-role ARN STS reported.
    pub caller_arn: String,
    /// The role's temporary credentials, renewed before they expire; handed to `terraform`
    /// through its environment and signed into EKS tokens (never logged).
    pub credentials: RenewingCredentials,
    /// The environment's region.
    pub region: String,
}

impl AwsSession {
    /// Assumes `env.aws.role_arn` from the default chain with session name `cutover-<run_id>`,
    /// then calls STS GetCallerIdentity with the new credentials.
    ///
    /// # Errors
    /// [`ProviderError::Aws`] when AssumeRole or GetCallerIdentity fails;
    /// [`ProviderError::WrongAccount`] when the reported account is not `env.aws.account_id`.
    pub async fn assume(env: &Environment, run_id: &str) -> Result<AwsSession, ProviderError> {
        let (config, creds) = assume_role(&env.aws.region, &env.aws.role_arn, run_id).await?;
        let who = aws_sdk_sts::Client::new(&config)
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| err("sts:GetCallerIdentity", e))?;
        let account_id = who.account().unwrap_or_default().to_string();
        let caller_arn = who.arn().unwrap_or_default().to_string();
        if account_id != env.aws.account_id {
            return Err(ProviderError::WrongAccount {
                expected: env.aws.account_id.clone(),
                actual: account_id,
                arn: caller_arn,
            });
        }
        if let Some(org) = &env.aws.organization {
            let placed = super::organizations::placement(
                &env.aws.region,
                &org.management_role_arn,
                run_id,
                &account_id,
            )
            .await?;
            let problems = super::organizations::mismatches(&org.ou_path, &org.scps, &placed);
            if !problems.is_empty() {
                return Err(ProviderError::WrongPlacement(problems.join("; ")));
            }
        }
        Ok(AwsSession {
            config,
            account_id,
            caller_arn,
            credentials: creds,
            region: env.aws.region.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A source handing out credentials that expire `lifetime` after each call, counting calls.
    #[derive(Debug)]
    struct Source {
        calls: Arc<AtomicU32>,
        lifetime: Duration,
    }

    impl ProvideCredentials for Source {
        fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
        where
            Self: 'a,
        {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            provider::future::ProvideCredentials::ready(Ok(Credentials::new(
                format!("AKIA{n}"),
                "secret",
                Some("token".into()),
                Some(SystemTime::now() + self.lifetime),
                "test",
            )))
        }
    }

    fn renewing(lifetime: Duration) -> (RenewingCredentials, Arc<AtomicU32>) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = RenewingCredentials::new(Source {
            calls: calls.clone(),
            lifetime,
        });
        (c, calls)
    }

    #[tokio::test]
    async fn role_session_is_renewed_before_it_expires_and_terraform_gets_a_full_one() {
        // An hour's session is reused while it has more than the margin left.
        let (c, calls) = renewing(Duration::from_secs(SESSION_SECONDS));
        let first = c.current().await.unwrap();
        let again = c.current().await.unwrap();
        assert_eq!(first.access_key_id(), again.access_key_id());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Asking for longer than is left (Terraform's per-call need) renews.
        let long = c
            .valid_for(Duration::from_secs(SESSION_SECONDS))
            .await
            .unwrap();
        assert_ne!(long.access_key_id(), first.access_key_id());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Credentials inside the margin (as a held run's would be after 50 minutes) renew.
        let (c, calls) = renewing(RENEW_MARGIN / 2);
        let a = c.current().await.unwrap();
        let b = c.current().await.unwrap();
        assert_ne!(a.access_key_id(), b.access_key_id());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The SDK's clients go through the same cache.
        let via_sdk = c.provide_credentials().await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(via_sdk.expiry().is_some());
    }
}
