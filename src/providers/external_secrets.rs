//! The External Secrets Operator's objects through the Kubernetes API: reading an
//! `ExternalSecret` and the `SecretStore` / `ClusterSecretStore` it reads from, and asking the
//! operator to refresh now with the `force-sync` annotation (the operator's documented way:
//! any change to the ExternalSecret's annotations starts a reconcile).
//!
//! Objects are read as JSON from the served version of `external-secrets.io` (`v1`, else
//! `v1beta1` on operators before 0.17). Nothing here decides what a flip does with them.

use super::kube::{is_not_found, kube_err};
use super::ProviderError;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{json, Value};

/// The API group of the operator.
pub const GROUP: &str = "external-secrets.io";
/// Versions tried, newest first.
const VERSIONS: [&str; 2] = ["v1", "v1beta1"];
/// The annotation whose change forces a refresh.
pub const FORCE_SYNC: &str = "force-sync";

fn resource(version: &str, kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, version, kind))
}

/// The object `kind`/`name` (namespaced unless `kind` is `ClusterSecretStore`) as JSON, from
/// the first served version; `None` when it does not exist.
///
/// # Errors
/// [`ProviderError::Kube`] when the API fails other than with 404.
pub async fn get(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    name: &str,
) -> Result<Option<Value>, ProviderError> {
    for version in VERSIONS {
        let ar = resource(version, kind);
        let api: Api<DynamicObject> = if kind == "ClusterSecretStore" {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), namespace, &ar)
        };
        match api.get(name).await {
            Ok(o) => {
                return serde_json::to_value(o)
                    .map(Some)
                    .map_err(|e| ProviderError::Kube(format!("{kind} {name}: {e}")))
            }
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(kube_err(&format!("get {kind} {namespace}/{name}"), e)),
        }
    }
    Ok(None)
}

/// Sets the `force-sync` annotation of ExternalSecret `namespace/name` to `value` (a JSON merge
/// patch), so the operator refreshes its Secret now.
///
/// # Errors
/// [`ProviderError::Kube`] when the patch fails in every version.
pub async fn force_sync(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    value: &str,
) -> Result<(), ProviderError> {
    let patch = json!({"metadata": {"annotations": {FORCE_SYNC: value}}});
    let mut last = None;
    for version in VERSIONS {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            namespace,
            &resource(version, "ExternalSecret"),
        );
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if is_not_found(&e) => last = Some(e),
            Err(e) => {
                return Err(kube_err(
                    &format!("annotate externalsecret {namespace}/{name}"),
                    e,
                ))
            }
        }
    }
    Err(ProviderError::Kube(format!(
        "externalsecret {namespace}/{name} not found ({})",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}
