//! AWS: the environment's role assumed from the standard credential chain, and the account check
//! that guards every mutation.
//!
//! Endpoints follow the SDK's standard configuration (`AWS_ENDPOINT_URL`, `AWS_REGION`, profile
//! files), so the same code reaches AWS or a local moto server.

use super::ProviderError;
use crate::config::Environment;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;

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

/// Assumes `role_arn` from the standard credential chain with session name `cutover-<session>`
/// (characters IAM does not allow dropped, at most 64), returning an SDK configuration that uses
/// the role's temporary credentials, and those credentials.
///
/// # Errors
/// [`ProviderError::Aws`] when AssumeRole fails.
pub async fn assume_role(
    region: &str,
    role_arn: &str,
    session: &str,
) -> Result<(SdkConfig, Credentials), ProviderError> {
    let base = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .load()
        .await;
    let sts = aws_sdk_sts::Client::new(&base);
    let session_name: String = format!("cutover-{session}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-".contains(*c))
        .take(64)
        .collect();
    let out = sts
        .assume_role()
        .role_arn(role_arn)
        .role_session_name(session_name)
        .duration_seconds(3600)
        .send()
        .await
        .map_err(|e| err("sts:AssumeRole", e))?;
    let c = out.credentials().ok_or_else(|| ProviderError::Aws {
        op: "sts:AssumeRole".into(),
        message: "response carried no credentials".into(),
    })?;
    let creds = Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        None,
        "cutover-assume-role",
    );
    let config = base
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(creds.clone()))
        .build();
    Ok((config, creds))
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
    /// Temporary credentials, handed to `terraform` through its environment (never logged).
    pub credentials: Credentials,
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
