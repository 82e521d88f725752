//! Kubernetes: a kube-rs client for an environment's EKS cluster.
//!
//! The kubeconfig (`KUBECONFIG` or `~/.kube/config`) context is looked up by the cluster's ARN,
//! the name `aws eks update-kubeconfig` gives it, so the same lookup works against a real cluster.

use super::aws::{err, AwsSession};
use super::ProviderError;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The ARN of EKS cluster `name` in the session's account (EKS DescribeCluster).
///
/// # Errors
/// [`ProviderError::Aws`] when the cluster cannot be described.
pub async fn cluster_arn(session: &AwsSession, name: &str) -> Result<String, ProviderError> {
    let eks = aws_sdk_eks::Client::new(&session.config);
    let out = eks
        .describe_cluster()
        .name(name)
        .send()
        .await
        .map_err(|e| err("eks:DescribeCluster", e))?;
    out.cluster()
        .and_then(|c| c.arn())
        .map(str::to_owned)
        .ok_or_else(|| ProviderError::Aws {
            op: "eks:DescribeCluster".into(),
            message: format!("cluster {name} has no ARN"),
        })
}

/// A client for cluster `name`, through the kubeconfig context named by its ARN.
///
/// # Errors
/// [`ProviderError::Kube`] when the kubeconfig cannot be read or has no such context (the hint
/// names the `aws eks update-kubeconfig` command that creates it).
pub async fn client_for_cluster(
    session: &AwsSession,
    name: &str,
) -> Result<kube::Client, ProviderError> {
    let arn = cluster_arn(session, name).await?;
    let kubeconfig = Kubeconfig::read()
        .map_err(|e| ProviderError::Kube(format!("cannot read kubeconfig: {e}")))?;
    if !kubeconfig.contexts.iter().any(|c| c.name == arn) {
        return Err(ProviderError::Kube(format!(
            "kubeconfig has no context named {arn}; create it with `aws eks update-kubeconfig --name {name}`"
        )));
    }
    let options = KubeConfigOptions {
        context: Some(arn.clone()),
        ..Default::default()
    };
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| ProviderError::Kube(format!("context {arn}: {e}")))?;
    kube::Client::try_from(config)
        .map_err(|e| ProviderError::Kube(format!("client for {arn}: {e}")))
}

/// Formats a kube-rs error without request bodies.
pub fn kube_err(what: &str, e: kube::Error) -> ProviderError {
    match e {
        kube::Error::Api(status) => ProviderError::Kube(format!(
            "{what}: {} ({} {})",
            status.message, status.code, status.reason
        )),
        other => ProviderError::Kube(format!("{what}: {other}")),
    }
}

/// True when the error is the API's 404 NotFound.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// True when the error is the API's 409 (AlreadyExists or Conflict).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}
