//! The request ids of the AWS calls that change something, for the event log: an SDK
//! interceptor ([`RequestIds`]) on every client that can change a resource notes each such
//! call (service, operation, HTTP status, request id) when its response arrives, and the engine
//! takes the calls noted so far ([`take`]) into the next step record it writes.
//!
//! Which calls change something follows AWS's naming: operations named `Get*`, `List*`,
//! `Describe*`, `Head*`, `Lookup*`, `Search*`, `Test*`, `Validate*`, and STS's `AssumeRole*` /
//! `GetCallerIdentity` read only; every other operation is noted. This module owns only the
//! noting; it must not decide what a step records.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::AfterDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// One call that may have changed something, as its response reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AwsCall {
    /// The service (`Route 53`, `RDS`, `Secrets Manager`, ...), as the SDK names it.
    pub service: String,
    /// The operation (`ChangeResourceRecordSets`, `CreateDBSnapshot`, `PutSecretValue`).
    pub operation: String,
    /// The HTTP status of the response.
    pub status: u16,
    /// The `x-amzn-RequestId` (or S3's `x-amz-request-id`) response header: what AWS Support and
    /// CloudTrail know the call by. `None` when the response carried none.
    pub request_id: Option<String>,
}

impl AwsCall {
    /// `Route 53 ChangeResourceRecordSets: HTTP 200, request id 1a2b…` for people.
    pub fn line(&self) -> String {
        format!(
            "{} {}: HTTP {}, request id {}",
            self.service,
            self.operation,
            self.status,
            self.request_id.as_deref().unwrap_or("(none)")
        )
    }
}

/// Calls noted and not yet taken, in the order their responses arrived.
static NOTED: Mutex<Vec<AwsCall>> = Mutex::new(Vec::new());

/// The calls noted since the last `take`, oldest first.
pub fn take() -> Vec<AwsCall> {
    std::mem::take(&mut *NOTED.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Puts `calls` (taken, but not recorded) back before any noted since.
pub fn restore(mut calls: Vec<AwsCall>) {
    let mut noted = NOTED.lock().unwrap_or_else(|p| p.into_inner());
    calls.append(&mut noted);
    *noted = calls;
}

/// Whether `operation` can change a resource (see the module docs for the rule).
pub fn mutating(operation: &str) -> bool {
    const READS: [&str; 8] = [
        "Get", "List", "Describe", "Head", "Lookup", "Search", "Test", "Validate",
    ];
    !(READS.iter().any(|p| operation.starts_with(p)) || operation.starts_with("AssumeRole"))
}

/// The interceptor that notes mutating calls; add it with [`aws_client!`](crate::aws_client).
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIds;

impl Intercept for RequestIds {
    fn name(&self) -> &'static str {
        "cutover::RequestIds"
    }

    fn read_after_deserialization(
        &self,
        context: &AfterDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let Some(meta) = cfg.load::<Metadata>() else {
            return Ok(());
        };
        if !mutating(meta.name()) {
            return Ok(());
        }
        let response = context.response();
        let headers = response.headers();
        let request_id = headers
            .get("x-amzn-requestid")
            .or_else(|| headers.get("x-amz-request-id"))
            .map(str::to_string);
        NOTED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(AwsCall {
                service: meta.service().to_string(),
                operation: meta.name().to_string(),
                status: response.status().as_u16(),
                request_id,
            });
        Ok(())
    }
}

/// A client of SDK crate `$sdk` for `$config` (`&SdkConfig`) whose mutating calls are noted by
/// [`RequestIds`]: `aws_client!(aws_sdk_route53, &session.config)`.
#[macro_export]
macro_rules! aws_client {
    ($sdk:ident, $config:expr) => {
        $sdk::Client::from_conf(
            $sdk::config::Builder::from($config)
                .interceptor($crate::providers::aws_calls::RequestIds)
                .build(),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_told_from_changes_by_aws_naming() {
        for op in [
            "ChangeResourceRecordSets",
            "CreateDBSnapshot",
            "PutSecretValue",
            "PutParameter",
            "DeleteDBSnapshot",
        ] {
            assert!(mutating(op), "{op}");
        }
        for op in [
            "GetChange",
            "ListResourceRecordSets",
            "DescribeDBSnapshots",
            "GetSecretValue",
            "HeadObject",
            "AssumeRole",
            "GetCallerIdentity",
        ] {
            assert!(!mutating(op), "{op}");
        }
    }
}
