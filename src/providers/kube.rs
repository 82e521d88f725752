//! Kubernetes: a kube-rs client for an environment's EKS cluster.
//!
//! The kubeconfig (`KUBECONFIG` or `~/.kube/config`) context is looked up by the cluster's ARN,
//! the name `aws eks update-kubeconfig` gives it, so the same lookup works against a real cluster.
//! Without such a context the client is built from DescribeCluster's endpoint and CA and an EKS
//! token signed with the environment's assumed-role credentials.

use super::aws::{err, AwsSession};
use super::ProviderError;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// What DescribeCluster says about an EKS cluster: its ARN, API endpoint and CA bundle.
#[derive(Debug, Clone)]
pub struct ClusterInfo {
    /// Cluster ARN (the kubeconfig context name `aws eks update-kubeconfig` writes).
    pub arn: String,
    /// API server URL, when the cluster has one.
    pub endpoint: Option<String>,
    /// Base64 PEM bundle of the cluster CA (`certificateAuthority.data`).
    pub ca_data: Option<String>,
}

/// Describes EKS cluster `name` in the session's account (EKS DescribeCluster).
///
/// # Errors
/// [`ProviderError::Aws`] when the cluster cannot be described or has no ARN.
pub async fn describe_cluster(
    session: &AwsSession,
    name: &str,
) -> Result<ClusterInfo, ProviderError> {
    let eks = aws_sdk_eks::Client::new(&session.config);
    let out = eks
        .describe_cluster()
        .name(name)
        .send()
        .await
        .map_err(|e| err("eks:DescribeCluster", e))?;
    let c = out.cluster().ok_or_else(|| ProviderError::Aws {
        op: "eks:DescribeCluster".into(),
        message: format!("no cluster {name}"),
    })?;
    Ok(ClusterInfo {
        arn: c
            .arn()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Aws {
                op: "eks:DescribeCluster".into(),
                message: format!("cluster {name} has no ARN"),
            })?,
        endpoint: c.endpoint().map(str::to_owned),
        ca_data: c
            .certificate_authority()
            .and_then(|a| a.data())
            .map(str::to_owned),
    })
}

/// How a client reached its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Through the kubeconfig context named by the cluster ARN (credentials as that context
    /// says; kube-rs refreshes exec-plugin tokens itself).
    Kubeconfig,
    /// Endpoint and CA from DescribeCluster with an EKS token (valid 15 minutes; callers make a
    /// new client before it expires).
    Token,
}

/// A client for cluster `name`: through the kubeconfig context named by its ARN when one exists,
/// otherwise through DescribeCluster's endpoint and CA with a token made as `aws eks get-token`
/// makes it (see [`super::eks_token`]).
///
/// # Errors
/// [`ProviderError::Kube`] when neither way is possible (no context and no endpoint or CA), or
/// the client cannot be built.
pub async fn client_for_cluster(
    session: &AwsSession,
    name: &str,
) -> Result<(kube::Client, Access), ProviderError> {
    let info = describe_cluster(session, name).await?;
    let arn = info.arn.clone();
    if let Ok(kubeconfig) = Kubeconfig::read() {
        if kubeconfig.contexts.iter().any(|c| c.name == arn) {
            let options = KubeConfigOptions {
                context: Some(arn.clone()),
                ..Default::default()
            };
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|e| ProviderError::Kube(format!("context {arn}: {e}")))?;
            let client = kube::Client::try_from(config)
                .map_err(|e| ProviderError::Kube(format!("client for {arn}: {e}")))?;
            return Ok((client, Access::Kubeconfig));
        }
    }
    let (Some(endpoint), Some(ca)) = (info.endpoint.as_deref(), info.ca_data.as_deref()) else {
        return Err(ProviderError::Kube(format!(
            "kubeconfig has no context named {arn} and DescribeCluster gave no endpoint and CA; create the context with `aws eks update-kubeconfig --name {name}`"
        )));
    };
    let url = endpoint
        .parse()
        .map_err(|e| ProviderError::Kube(format!("cluster endpoint {endpoint}: {e}")))?;
    let mut config = kube::Config::new(url);
    config.root_cert = Some(super::eks_token::pem_bundle_to_der(ca).map_err(ProviderError::Kube)?);
    // Made from the live credentials: renewed when the run has outlived their session.
    let credentials = session
        .credentials
        .current()
        .await
        .map_err(|e| super::aws::err("sts:AssumeRole (renewal)", e))?;
    let token = super::eks_token::token(
        &credentials,
        &session.region,
        name,
        std::time::SystemTime::now(),
    )?;
    config.auth_info.token = Some(secrecy::SecretString::from(token));
    let client = kube::Client::try_from(config)
        .map_err(|e| ProviderError::Kube(format!("client for {arn}: {e}")))?;
    Ok((client, Access::Token))
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

/// The value of `key` in Secret `namespace/name`, as UTF-8 text (a secret: never print it).
///
/// # Errors
/// [`ProviderError::Kube`] when the Secret or the key is missing or the API call fails.
pub async fn secret_value(
    client: kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<String, ProviderError> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client, namespace);
    let secret = api
        .get(name)
        .await
        .map_err(|e| kube_err(&format!("get secret {namespace}/{name}"), e))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| {
            ProviderError::Kube(format!("secret {namespace}/{name} has no key {key}"))
        })?;
    Ok(String::from_utf8_lossy(&bytes.0).into_owned())
}

/// Where a Deployment's rollout stands, as `kubectl rollout status` reads its `status` (the
/// deployment controller's `observedGeneration`, `updatedReplicas`, `replicas`,
/// `availableReplicas` and its `Progressing` condition).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// The controller has not observed `generation` yet.
    Observing {
        /// The Deployment's `metadata.generation`.
        generation: i64,
    },
    /// New pods are being created.
    Updating {
        /// Pods of the current template.
        updated: i32,
        /// Replicas wanted.
        want: i32,
    },
    /// Every new pod exists; old ones are still terminating (and serving).
    Terminating {
        /// Old pods left.
        old: i32,
    },
    /// Every old pod is gone; some new ones are not available yet.
    Unavailable {
        /// New pods available.
        available: i32,
        /// New pods.
        updated: i32,
    },
    /// Every pod runs the current template and is available.
    Complete {
        /// The generation rolled out.
        generation: i64,
        /// Pods available.
        available: i32,
    },
    /// The `Progressing` condition says `ProgressDeadlineExceeded`.
    DeadlineExceeded,
}

impl std::fmt::Display for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rollout::Observing { generation } => write!(
                f,
                "waiting for the controller to observe generation {generation}"
            ),
            Rollout::Updating { updated, want } => {
                write!(f, "{updated} of {want} replicas updated")
            }
            Rollout::Terminating { old } => write!(f, "{old} old replicas pending termination"),
            Rollout::Unavailable { available, updated } => {
                write!(f, "{available} of {updated} updated replicas available")
            }
            Rollout::Complete {
                generation,
                available,
            } => write!(
                f,
                "rolled out (generation {generation}, {available} available)"
            ),
            Rollout::DeadlineExceeded => write!(f, "exceeded its progress deadline"),
        }
    }
}

/// Where `d`'s rollout stands.
pub fn rollout(d: &k8s_openapi::api::apps::v1::Deployment) -> Rollout {
    let generation = d.metadata.generation.unwrap_or(0);
    let want = d.spec.replicas.unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let progressing = st.conditions.as_ref().and_then(|cs| {
        cs.iter()
            .find(|c| c.type_.as_deref() == Some("Progressing"))
    });
    if progressing.is_some_and(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded")) {
        return Rollout::DeadlineExceeded;
    }
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let available = st.available_replicas.unwrap_or(0);
    if st.observed_generation.unwrap_or(0) < generation {
        Rollout::Observing { generation }
    } else if updated < want {
        Rollout::Updating { updated, want }
    } else if total > updated {
        Rollout::Terminating {
            old: total - updated,
        }
    } else if available < updated {
        Rollout::Unavailable { available, updated }
    } else {
        Rollout::Complete {
            generation,
            available,
        }
    }
}

/// Whether pod template `t` reads Secret `secret`: through an `env` entry's `secretKeyRef`, an
/// `envFrom` `secretRef` or a `secret` volume.
pub fn template_reads_secret(
    t: &k8s_openapi::api::core::v1::PodTemplateSpec,
    secret: &str,
) -> bool {
    let Some(spec) = &t.spec else { return false };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    let in_containers = containers.clone().any(|c| {
        c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref())
                .is_some_and(|r| r.name == secret)
        }) || c
            .env_from
            .iter()
            .flatten()
            .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == secret))
    });
    in_containers
        || spec
            .volumes
            .iter()
            .flatten()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(secret))
}

/// The Deployments of `namespace` whose pod template reads Secret `secret`
/// ([`template_reads_secret`]), by name.
///
/// # Errors
/// [`ProviderError::Kube`] when the list fails.
pub async fn secret_readers(
    client: kube::Client,
    namespace: &str,
    secret: &str,
) -> Result<Vec<String>, ProviderError> {
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client, namespace);
    let list = api
        .list(&Default::default())
        .await
        .map_err(|e| kube_err(&format!("list deployments in {namespace}"), e))?;
    Ok(list
        .items
        .iter()
        .filter(|d| template_reads_secret(&d.spec.template, secret))
        .filter_map(|d| d.metadata.name.clone())
        .collect())
}

/// Creates namespace `name` when it is missing (a create that races another is not an error).
///
/// # Errors
/// [`ProviderError::Kube`] from the API.
pub async fn ensure_namespace(client: &kube::Client, name: &str) -> Result<(), ProviderError> {
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, PostParams};
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_opt(name)
        .await
        .map_err(|e| kube_err(&format!("get namespace {name}"), e))?
        .is_some()
    {
        return Ok(());
    }
    let mut ns = Namespace::default();
    ns.metadata.name = Some(name.to_string());
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(kube_err(&format!("create namespace {name}"), e)),
    }
}

/// Creates `obj` as `name`, or replaces the stored object of that name (at its
/// resourceVersion). `what` names the kind in errors (`Secret`, `Deployment`).
///
/// # Errors
/// [`ProviderError::Kube`] from the API (409 when the object changed between read and
/// replace); the message never holds the object's body.
pub async fn upsert<K>(
    api: &kube::Api<K>,
    name: &str,
    mut obj: K,
    what: &str,
) -> Result<(), ProviderError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    use kube::api::PostParams;
    match api
        .get_opt(name)
        .await
        .map_err(|e| kube_err(&format!("get {what} {name}"), e))?
    {
        None => {
            api.create(&PostParams::default(), &obj)
                .await
                .map_err(|e| kube_err(&format!("create {what} {name}"), e))?;
        }
        Some(existing) => {
            obj.meta_mut().resource_version = existing.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &obj)
                .await
                .map_err(|e| kube_err(&format!("replace {what} {name}"), e))?;
        }
    }
    Ok(())
}

/// The manifest of an `Opaque` Secret `namespace/name` with `labels` and the given keys as
/// `stringData` (values as written: the caller's secrets; never print the manifest).
pub fn opaque_secret(
    namespace: &str,
    name: &str,
    labels: serde_json::Value,
    data: &[(&str, &str)],
) -> serde_json::Value {
    let data: serde_json::Map<String, serde_json::Value> = data
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "type": "Opaque",
        "stringData": data,
    })
}

/// Deletes `name` through `api` with `params`; whether it existed (a 404 is not an error).
/// `what` names the kind in errors (`Secret`, `Job`).
///
/// # Errors
/// [`ProviderError::Kube`] from the API.
pub async fn delete_if_exists<K>(
    api: &kube::Api<K>,
    name: &str,
    params: &kube::api::DeleteParams,
    what: &str,
) -> Result<bool, ProviderError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, params).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(kube_err(&format!("delete {what} {name}"), e)),
    }
}
