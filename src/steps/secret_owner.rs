//! Who owns a Kubernetes Secret, for `k8s.flip_secret`: nobody (the step edits it), an
//! `ExternalSecret` of the External Secrets Operator (the step changes the upstream value the
//! operator copies, then has it refresh), or a GitOps tool or other controller (the step refuses:
//! the owner would put the old value back).
//!
//! The rules follow the tools' documentation: ESO sets an `ownerReference` (`controller: true`,
//! kind `ExternalSecret`) on a Secret it creates with `creationPolicy: Owner`, and refreshes on
//! every `refreshInterval` and on any change to the ExternalSecret (the `force-sync` annotation);
//! Argo CD tracks resources by the `argocd.argoproj.io/tracking-id` annotation or the
//! `app.kubernetes.io/instance` label (its default label tracking); Flux labels what it applies
//! with `kustomize.toolkit.fluxcd.io/name` or `helm.toolkit.fluxcd.io/name`; Helm marks what it
//! installs with `app.kubernetes.io/managed-by: Helm`.

use super::{StepContext, StepError};
use crate::config::SecretSource;
use crate::providers::external_secrets;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

/// Who writes a Secret besides this tool.
#[derive(Debug, Clone, PartialEq)]
pub enum Owner {
    /// Nobody: the Secret is edited directly.
    Unowned,
    /// The ExternalSecret of this name (same namespace) owns it.
    ExternalSecret(String),
    /// A GitOps tool or package manager applies it; `evidence` is the label or annotation.
    Managed {
        /// `Argo CD`, `Flux` or `Helm`.
        tool: &'static str,
        /// The label or annotation that says so, `key=value`.
        evidence: String,
    },
    /// Another controller's ownerReference.
    Controller {
        /// Its kind and API version, e.g. `SealedSecret (bitnami.com/v1alpha1)`.
        kind: String,
        /// Its name.
        name: String,
    },
}

/// The owner `meta` names; an ownerReference wins over labels (an ExternalSecret applied by
/// Argo CD creates a Secret Argo CD does not track).
pub fn owner_of(meta: &ObjectMeta) -> Owner {
    for r in meta.owner_references.iter().flatten() {
        if r.kind == "ExternalSecret" && r.api_version.starts_with(external_secrets::GROUP) {
            return Owner::ExternalSecret(r.name.clone());
        }
        if r.controller == Some(true) {
            return Owner::Controller {
                kind: format!("{} ({})", r.kind, r.api_version),
                name: r.name.clone(),
            };
        }
    }
    let annotations = meta.annotations.clone().unwrap_or_default();
    let labels = meta.labels.clone().unwrap_or_default();
    if let Some(v) = annotations.get("argocd.argoproj.io/tracking-id") {
        return Owner::Managed {
            tool: "Argo CD",
            evidence: format!("annotation argocd.argoproj.io/tracking-id={v}"),
        };
    }
    for (label, tool) in [
        ("app.kubernetes.io/instance", "Argo CD"),
        ("kustomize.toolkit.fluxcd.io/name", "Flux"),
        ("helm.toolkit.fluxcd.io/name", "Flux"),
    ] {
        if let Some(v) = labels.get(label) {
            return Owner::Managed {
                tool,
                evidence: format!("label {label}={v}"),
            };
        }
    }
    if labels
        .get("app.kubernetes.io/managed-by")
        .map(String::as_str)
        == Some("Helm")
    {
        return Owner::Managed {
            tool: "Helm",
            evidence: "label app.kubernetes.io/managed-by=Helm".into(),
        };
    }
    Owner::Unowned
}

/// Why a flip of a Secret so owned must not go ahead, and what to do instead; `None` when it
/// may (unowned, or an ExternalSecret the step reaches through its upstream).
pub fn refusal(owner: &Owner, target: &str) -> Option<String> {
    match owner {
        Owner::Unowned | Owner::ExternalSecret(_) => None,
        Owner::Managed { tool, evidence } => Some(format!(
            "{target} is managed by {tool} ({evidence}): {tool} would put the old value back. Change the value where {tool} reads it (its Git repository, or an ExternalSecret), or take the Secret out of {tool}'s management first, then run again"
        )),
        Owner::Controller { kind, name } => Some(format!(
            "{target} is owned by {kind} {name}, a controller cutover does not know: it would put the old value back. Change the value in {name}, or remove the ownerReference, then run again"
        )),
    }
}

/// Where one key of an ExternalSecret-owned Secret comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// The Secret's key (`spec.data[].secretKey`).
    pub key: String,
    /// The Secrets Manager secret or SSM parameter (`remoteRef.key`).
    pub source: SecretSource,
    /// The JSON property within it (`remoteRef.property`), if any.
    pub property: Option<String>,
}

/// An ExternalSecret as a flip uses it.
#[derive(Debug, Clone, PartialEq)]
pub struct External {
    /// Its name.
    pub name: String,
    /// `spec.refreshInterval` as written (`1h` when absent, the operator's default).
    pub refresh_interval: String,
    /// One per key the flip changes.
    pub upstreams: Vec<Upstream>,
}

/// The upstream of each of `keys` in ExternalSecret `es` (JSON) read through `store` (its
/// SecretStore's JSON), for an environment in `region`.
///
/// # Errors
/// A message saying what cutover cannot follow (a key from `dataFrom` or a template, a store
/// that is not AWS Secrets Manager or Parameter Store, another region, a pinned version, a
/// nested property).
pub fn upstreams(
    es: &Value,
    store: &Value,
    keys: &[String],
    region: &str,
) -> Result<External, String> {
    let name = es
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if es.pointer("/spec/target/template").is_some() {
        return Err(format!(
            "ExternalSecret {name} builds its Secret from a template: cutover cannot tell which upstream value makes each key"
        ));
    }
    let aws = store.pointer("/spec/provider/aws").ok_or_else(|| {
        format!("the store of ExternalSecret {name} is not an AWS provider: cutover can change upstream values in Secrets Manager or Parameter Store only")
    })?;
    let service = aws
        .get("service")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let store_region = aws.get("region").and_then(Value::as_str).unwrap_or(region);
    if store_region != region {
        return Err(format!(
            "the store of ExternalSecret {name} reads region {store_region}, the environment is in {region}"
        ));
    }
    let entries = es
        .pointer("/spec/data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for key in keys {
        let entry = entries
            .iter()
            .find(|e| e.get("secretKey").and_then(Value::as_str) == Some(key))
            .ok_or_else(|| {
                format!("key {key} is not in ExternalSecret {name}'s spec.data (it comes from dataFrom): cutover cannot tell its upstream")
            })?;
        let remote = entry.get("remoteRef").cloned().unwrap_or(Value::Null);
        let locator = remote
            .get("key")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("ExternalSecret {name}: key {key} has no remoteRef.key"))?
            .to_string();
        if let Some(v) = remote.get("version").and_then(Value::as_str) {
            if v != "AWSCURRENT" && v != "latest" {
                return Err(format!(
                    "ExternalSecret {name}: key {key} reads the pinned version {v}: a new value would not be picked up"
                ));
            }
        }
        let property = remote
            .get("property")
            .and_then(Value::as_str)
            .map(str::to_string);
        if property.as_deref().is_some_and(|p| p.contains('.')) {
            return Err(format!(
                "ExternalSecret {name}: key {key} reads the nested property {}: only top-level properties can be changed",
                property.unwrap_or_default()
            ));
        }
        let source = match service {
            "SecretsManager" => SecretSource::SecretsManager(locator),
            "ParameterStore" => SecretSource::Ssm(locator),
            other => {
                return Err(format!(
                    "the store of ExternalSecret {name} uses AWS service `{other}`; valid: SecretsManager, ParameterStore"
                ))
            }
        };
        out.push(Upstream {
            key: key.clone(),
            source,
            property,
        });
    }
    Ok(External {
        name,
        refresh_interval: es
            .pointer("/spec/refreshInterval")
            .and_then(Value::as_str)
            .unwrap_or("1h")
            .to_string(),
        upstreams: out,
    })
}

/// The ExternalSecret `name` in `ns` and its store, resolved for `keys`.
///
/// # Errors
/// [`StepError::Gate`] when either is missing or cannot be followed (see [`upstreams`]).
pub async fn external(
    cx: &StepContext<'_>,
    ns: &str,
    name: &str,
    keys: &[String],
) -> Result<External, StepError> {
    let client = cx.providers.kube().await?;
    let es = external_secrets::get(&client, ns, "ExternalSecret", name)
        .await?
        .ok_or_else(|| {
            StepError::Gate(format!(
                "the Secret's owner ExternalSecret {ns}/{name} does not exist"
            ))
        })?;
    let store_kind = es
        .pointer("/spec/secretStoreRef/kind")
        .and_then(Value::as_str)
        .unwrap_or("SecretStore")
        .to_string();
    let store_name = es
        .pointer("/spec/secretStoreRef/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let store = external_secrets::get(&client, ns, &store_kind, &store_name)
        .await?
        .ok_or_else(|| {
            StepError::Gate(format!(
                "ExternalSecret {ns}/{name} reads {store_kind} {store_name}, which does not exist"
            ))
        })?;
    upstreams(&es, &store, keys, &cx.providers.env().aws.region).map_err(StepError::Gate)
}

/// The upstream's whole stored value with `property` set to `value` (or replaced by `value`
/// when there is no property).
///
/// # Errors
/// A message (no value in it) when the stored value is not a JSON object.
pub fn with_value(raw: &str, property: Option<&str>, value: &str) -> Result<String, String> {
    let Some(p) = property else {
        return Ok(value.to_string());
    };
    let mut obj: Value = serde_json::from_str(raw)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| {
            format!("the upstream value is not a JSON object, so property {p} cannot be set")
        })?;
    obj[p] = Value::from(value);
    Ok(obj.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use serde_json::json;

    fn meta(
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
        owner: Option<(&str, &str, bool)>,
    ) -> ObjectMeta {
        ObjectMeta {
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            annotations: Some(
                annotations
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            owner_references: owner.map(|(api, kind, controller)| {
                vec![OwnerReference {
                    api_version: api.into(),
                    kind: kind.into(),
                    name: "db".into(),
                    uid: "u".into(),
                    controller: Some(controller),
                    block_owner_deletion: None,
                }]
            }),
            ..Default::default()
        }
    }

    #[test]
    fn owners_are_told_apart_by_reference_annotation_and_label() {
        assert_eq!(owner_of(&meta(&[], &[], None)), Owner::Unowned);
        assert_eq!(
            owner_of(&meta(
                &[("app.kubernetes.io/instance", "shop")],
                &[],
                Some(("external-secrets.io/v1", "ExternalSecret", true))
            )),
            Owner::ExternalSecret("db".into())
        );
        let argo = owner_of(&meta(&[("app.kubernetes.io/instance", "shop")], &[], None));
        assert!(
            matches!(
                argo,
                Owner::Managed {
                    tool: "Argo CD",
                    ..
                }
            ),
            "{argo:?}"
        );
        let argo3 = owner_of(&meta(
            &[],
            &[(
                "argocd.argoproj.io/tracking-id",
                "shop:/Secret:shop/shop-db",
            )],
            None,
        ));
        assert!(matches!(
            argo3,
            Owner::Managed {
                tool: "Argo CD",
                ..
            }
        ));
        let flux = owner_of(&meta(
            &[("kustomize.toolkit.fluxcd.io/name", "apps")],
            &[],
            None,
        ));
        assert!(matches!(flux, Owner::Managed { tool: "Flux", .. }));
        let sealed = owner_of(&meta(
            &[],
            &[],
            Some(("bitnami.com/v1alpha1", "SealedSecret", true)),
        ));
        assert!(matches!(sealed, Owner::Controller { .. }));
        // A non-controller reference (garbage collection only) does not own the content.
        assert_eq!(
            owner_of(&meta(&[], &[], Some(("v1", "ConfigMap", false)))),
            Owner::Unowned
        );
        let msg = refusal(&argo, "secret shop/shop-db").unwrap();
        assert!(
            msg.contains("Argo CD") && msg.contains("label app.kubernetes.io/instance=shop"),
            "{msg}"
        );
        assert!(refusal(&Owner::ExternalSecret("x".into()), "s").is_none());
    }

    fn es(data: Value) -> Value {
        json!({"metadata": {"name": "letters-db"}, "spec": {"refreshInterval": "5s", "secretStoreRef": {"name": "aws"}, "data": data}})
    }

    #[test]
    fn upstreams_follow_spec_data_and_refuse_what_cannot_be_followed() {
        let sm = json!({"spec": {"provider": {"aws": {"service": "SecretsManager", "region": "us-east-1"}}}});
        let e = es(
            json!([{"secretKey": "DATABASE_URL", "remoteRef": {"key": "letters/db", "property": "url"}}]),
        );
        let got = upstreams(&e, &sm, &["DATABASE_URL".into()], "us-east-1").unwrap();
        assert_eq!(got.refresh_interval, "5s");
        assert_eq!(
            got.upstreams,
            vec![Upstream {
                key: "DATABASE_URL".into(),
                source: SecretSource::SecretsManager("letters/db".into()),
                property: Some("url".into())
            }]
        );
        let ps = json!({"spec": {"provider": {"aws": {"service": "ParameterStore"}}}});
        let e2 = es(json!([{"secretKey": "DATABASE_URL", "remoteRef": {"key": "/letters/db"}}]));
        assert_eq!(
            upstreams(&e2, &ps, &["DATABASE_URL".into()], "us-east-1")
                .unwrap()
                .upstreams[0]
                .source,
            SecretSource::Ssm("/letters/db".into())
        );
        assert!(upstreams(&e, &sm, &["OTHER".into()], "us-east-1")
            .unwrap_err()
            .contains("dataFrom"));
        assert!(upstreams(&e, &sm, &["DATABASE_URL".into()], "eu-west-1")
            .unwrap_err()
            .contains("region"));
        let vault = json!({"spec": {"provider": {"vault": {}}}});
        assert!(upstreams(&e, &vault, &["DATABASE_URL".into()], "us-east-1").is_err());
        let pinned =
            es(json!([{"secretKey": "DATABASE_URL", "remoteRef": {"key": "k", "version": "v1"}}]));
        assert!(
            upstreams(&pinned, &sm, &["DATABASE_URL".into()], "us-east-1")
                .unwrap_err()
                .contains("pinned")
        );
    }

    #[test]
    fn a_property_is_set_inside_the_upstream_json_and_the_rest_kept() {
        let raw = r#"{"url":"old","user":"letters"}"#;
        let new: Value =
            serde_json::from_str(&with_value(raw, Some("url"), "new").unwrap()).unwrap();
        assert_eq!(new, json!({"url": "new", "user": "letters"}));
        assert_eq!(with_value(raw, None, "whole").unwrap(), "whole");
        assert!(with_value("plain", Some("url"), "x").is_err());
    }
}
