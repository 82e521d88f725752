//! The fallback's relay: where the legacy database cannot subscribe to the target itself (no
//! right to `CREATE SUBSCRIPTION`, or no route from the legacy host to a private RDS),
//! `postgres.fallback` runs `cutover relay` as a Deployment in the target environment's EKS
//! cluster, which reaches the target inside its VPC and the legacy database as the tool does.
//! It outlives the run (it carries every write made on AWS back to the legacy database until
//! `postgres.decommission`, days later), survives the operator's laptop closing, and is
//! restarted by the kubelet if it dies; its progress record makes a restart exact.
//!
//! The manifests: a Secret with both servers' URLs (`envFrom` in the pod: the URLs are never on
//! a command line) and a Deployment of one replica, `strategy: Recreate` (never two relays on one
//! slot), running the `cutover` image with `relay --slot ... --publisher target`. The plan and
//! the dry-run show both, the Secret's values as fingerprints.

use super::Params;
use crate::providers::kube::kube_err;
use crate::secret::fingerprint;
use crate::steps::{StepContext, StepError};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};

/// The environment variable names `cutover relay` reads (its `envFrom` Secret's keys).
const PUBLISHER_KEY: &str = "CUTOVER_RELAY_PUBLISHER_URL";
const DESTINATION_KEY: &str = "CUTOVER_RELAY_DESTINATION_URL";

/// The relay of one run's fallback, as it will be (or was) applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relay {
    /// Namespace of the Deployment and its Secret.
    pub namespace: String,
    /// Name of both (`relay-<slot>`, underscores as hyphens).
    pub name: String,
    /// The container image.
    pub image: String,
    /// The container's arguments.
    pub args: Vec<String>,
}

/// The name of the relay's Deployment and Secret for slot `slot`.
pub fn name(slot: &str) -> String {
    format!("relay-{}", slot.replace('_', "-"))
}

/// The relay for slot `slot` (also the publication's name) under `p`.
pub fn relay(p: &Params, slot: &str) -> Relay {
    let mut args: Vec<String> = [
        "relay",
        "--slot",
        slot,
        "--publication",
        slot,
        "--publisher",
        "target",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, v) in [
        ("--wal-budget", &p.wal_budget),
        ("--wal-limit", &p.wal_limit),
    ] {
        args.push(flag.into());
        args.push(v.clone());
    }
    Relay {
        namespace: p.relay_namespace.clone(),
        name: name(slot),
        image: p
            .relay_image
            .clone()
            .unwrap_or_else(|| format!("cutover:{}", env!("CARGO_PKG_VERSION"))),
        args,
    }
}

fn labels(r: &Relay, run_id: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "cutover-relay",
        "app.kubernetes.io/managed-by": "cutover",
        "app.kubernetes.io/instance": r.name,
        "cutover.dev/run": run_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>(),
    })
}

/// The Deployment's manifest.
pub fn deployment(r: &Relay, run_id: &str) -> Value {
    let labels = labels(r, run_id);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": r.name, "namespace": r.namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/instance": r.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [{
                        "name": "relay",
                        "image": r.image,
                        "args": r.args,
                        "envFrom": [{"secretRef": {"name": r.name}}],
                        "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
                    }]
                }
            }
        }
    })
}

/// The Secret's manifest with `publisher` and `destination` (URLs with passwords).
fn secret(r: &Relay, run_id: &str, publisher: &str, destination: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": r.name, "namespace": r.namespace, "labels": labels(r, run_id)},
        "type": "Opaque",
        "stringData": {PUBLISHER_KEY: publisher, DESTINATION_KEY: destination},
    })
}

/// What the plan shows of the relay: the Deployment (image, arguments) and the Secret's keys
/// with their values' fingerprints.
pub fn describe(r: &Relay, publisher: &str, destination: &str) -> (String, String) {
    (
        format!(
            "image {}; args: {}; one replica, strategy Recreate",
            r.image,
            r.args.join(" ")
        ),
        format!(
            "{PUBLISHER_KEY} {} (the target), {DESTINATION_KEY} {} (the legacy database)",
            fingerprint(publisher),
            fingerprint(destination)
        ),
    )
}

/// Creates the namespace when missing, then creates or replaces the Secret and the Deployment.
///
/// # Errors
/// [`StepError`] from the Kubernetes API (the message never holds the Secret's values).
pub async fn apply(
    cx: &StepContext<'_>,
    r: &Relay,
    publisher: &str,
    destination: &str,
) -> Result<(), StepError> {
    let client = cx.providers.kube().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_opt(&r.namespace)
        .await
        .map_err(|e| kube_err(&format!("get namespace {}", r.namespace), e))?
        .is_none()
    {
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": r.namespace}}))
            .map_err(|e| StepError::Check(e.to_string()))?;
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(kube_err(&format!("create namespace {}", r.namespace), e).into()),
        }
    }
    let s: Secret = serde_json::from_value(secret(r, cx.run_id, publisher, destination))
        .map_err(|e| StepError::Check(e.to_string()))?;
    let d: Deployment = serde_json::from_value(deployment(r, cx.run_id))
        .map_err(|e| StepError::Check(e.to_string()))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
    upsert(&secrets, &r.name, s, "Secret").await?;
    let deployments: Api<Deployment> = Api::namespaced(client, &r.namespace);
    upsert(&deployments, &r.name, d, "Deployment").await
}

async fn upsert<K>(api: &Api<K>, name: &str, mut obj: K, what: &str) -> Result<(), StepError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
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

/// Deletes the Deployment and its Secret; returns whether the Deployment existed.
///
/// # Errors
/// [`StepError`] from the Kubernetes API (404s are not errors).
pub async fn delete(cx: &StepContext<'_>, r: &Relay) -> Result<bool, StepError> {
    delete_named(cx, &r.namespace, &r.name).await
}

/// Deletes the relay Deployment `namespace/name` and its Secret; returns whether the
/// Deployment existed.
///
/// # Errors
/// [`StepError`] from the Kubernetes API (404s are not errors).
pub async fn delete_named(
    cx: &StepContext<'_>,
    namespace: &str,
    name: &str,
) -> Result<bool, StepError> {
    let r = Relay {
        namespace: namespace.to_string(),
        name: name.to_string(),
        image: String::new(),
        args: Vec::new(),
    };
    let client = cx.providers.kube().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &r.namespace);
    let existed = match deployments.delete(&r.name, &DeleteParams::default()).await {
        Ok(_) => true,
        Err(kube::Error::Api(s)) if s.code == 404 => false,
        Err(e) => return Err(kube_err(&format!("delete Deployment {}", r.name), e).into()),
    };
    let secrets: Api<Secret> = Api::namespaced(client, &r.namespace);
    match secrets.delete(&r.name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => return Err(kube_err(&format!("delete Secret {}", r.name), e).into()),
    }
    Ok(existed)
}

/// Whether the relay's Deployment exists.
///
/// # Errors
/// [`StepError`] from the Kubernetes API.
pub async fn exists(cx: &StepContext<'_>, r: &Relay) -> Result<bool, StepError> {
    let client = cx.providers.kube().await?;
    let deployments: Api<Deployment> = Api::namespaced(client, &r.namespace);
    Ok(deployments
        .get_opt(&r.name)
        .await
        .map_err(|e| kube_err(&format!("get Deployment {}", r.name), e))?
        .is_some())
}

/// The labels' map, for tests.
#[cfg(test)]
pub fn label_map(r: &Relay) -> std::collections::BTreeMap<String, String> {
    serde_json::from_value(labels(r, "run-1")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deployment_runs_one_relay_of_the_slot_with_its_urls_from_the_secret() {
        let p: Params = serde_json::from_value(json!({})).unwrap();
        let r = relay(&p, "cutover_shop_staging_ab12_fb");
        assert_eq!(r.name, "relay-cutover-shop-staging-ab12-fb");
        let d = deployment(&r, "staging-20261206T091700Z-ab12");
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], r.name);
        assert!(c["image"].as_str().unwrap().starts_with("cutover:"));
        let args: Vec<&str> = c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            &args[..7],
            [
                "relay",
                "--slot",
                "cutover_shop_staging_ab12_fb",
                "--publication",
                "cutover_shop_staging_ab12_fb",
                "--publisher",
                "target"
            ]
        );
        assert!(args.contains(&"--wal-limit"));
        // The URLs are in the Secret, never in the Deployment; the plan shows fingerprints.
        let text = d.to_string();
        assert!(!text.contains("postgres://"));
        let (_, keys) = describe(&r, "postgres://a:pw@t/db", "postgres://b:pw@s/db");
        assert!(!keys.contains("pw@") && keys.contains("sha256:"), "{keys}");
        assert_eq!(label_map(&r)["app.kubernetes.io/managed-by"], "cutover");
    }
}
