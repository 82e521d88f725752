//! Relay replication as a Deployment, for both directions: where a server cannot subscribe to
//! the other itself (no right to `CREATE SUBSCRIPTION`, or no route between the servers: a
//! private RDS, a legacy host's firewall), `postgres.replicate` (forward: the legacy database
//! publishes, RDS applies) and `postgres.fallback` (from the flip: RDS publishes, the legacy
//! database applies) run `cutover relay` in the target environment's EKS cluster, which reaches
//! RDS inside its VPC and the legacy database as the tool does. A relay outlives the run that
//! started it (the fallback's carries every write made on AWS back to the legacy database until
//! `postgres.decommission`, days later), survives the operator's laptop closing, and is
//! restarted by the kubelet if it dies; its progress record on the destination makes a restart
//! exact.
//!
//! The manifests: a Secret with both servers' URLs (`envFrom` in the pod: the URLs are never on
//! a command line) and a Deployment of one replica, `strategy: Recreate` (never two relays on one
//! slot), running the `cutover` image with `relay --slot ... --publisher source|target`. The plan
//! and the dry-run show both, the Secret's values as fingerprints.
//!
//! This module owns the runbook's choice (`replication: auto | native | relay`) and the
//! Deployment; it must not hold either step's replication logic (slots, publications, waits).

use crate::config::Side;
use crate::providers::kube::{delete_if_exists, ensure_namespace, kube_err, opaque_secret, upsert};
use crate::providers::postgres::rights::Outcome;
use crate::secret::fingerprint;
use crate::steps::{StepContext, StepError};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The environment variable names `cutover relay` reads (its `envFrom` Secret's keys).
const PUBLISHER_KEY: &str = "CUTOVER_RELAY_PUBLISHER_URL";
const DESTINATION_KEY: &str = "CUTOVER_RELAY_DESTINATION_URL";

/// How one direction's changes reach the subscribing side (`replication:` of
/// `postgres.replicate` and `postgres.fallback`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Replication {
    /// Native where the subscribing server may subscribe and reach the publisher, else relay.
    Auto,
    /// A subscription on the subscribing server.
    Native,
    /// `cutover relay` in the target cluster.
    Relay,
    /// No replication (`false`; `postgres.fallback` only): a rollback after the target took
    /// writes refuses.
    Off,
}

impl Replication {
    const CHOICES: &'static str = "true, false, auto, native or relay";
    /// False for [`Replication::Off`].
    pub fn on(self) -> bool {
        self != Replication::Off
    }
}

impl<'de> Deserialize<'de> for Replication {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Replication;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "one of {}", Replication::CHOICES)
            }
            fn visit_bool<E: serde::de::Error>(self, b: bool) -> Result<Replication, E> {
                Ok(if b {
                    Replication::Auto
                } else {
                    Replication::Off
                })
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Replication, E> {
                match s {
                    "auto" | "true" => Ok(Replication::Auto),
                    "native" => Ok(Replication::Native),
                    "relay" => Ok(Replication::Relay),
                    "false" => Ok(Replication::Off),
                    other => Err(E::custom(format!(
                        "`{other}` is not one of {}",
                        Replication::CHOICES
                    ))),
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl schemars::JsonSchema for Replication {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Replication".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "true or auto (default): native where the subscribing server may subscribe to the publisher and reach it, else relay; native: a subscription; relay: cutover relay as a Deployment in the target cluster; false: none (postgres.fallback only)",
            "oneOf": [{"type": "boolean"}, {"enum": ["auto", "native", "relay"]}]
        })
    }
}

/// The means chosen for one direction, and recorded in the step's outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Means {
    /// A subscription on the subscribing server.
    Native,
    /// `cutover relay` in the target cluster.
    Relay,
}

impl Means {
    /// `native` or `relay`.
    pub fn as_str(self) -> &'static str {
        match self {
            Means::Native => "native",
            Means::Relay => "relay",
        }
    }
}

/// Chooses the means for `wanted` from the trial of the subscribing side's
/// `CREATE SUBSCRIPTION ... connect = true` (rolled back), and says why. `subscriber` names the
/// subscribing server in the reason (`the legacy admin`, `the target's admin`).
///
/// # Errors
/// [`StepError::Check`] when `native` is required and the trial failed (nothing was changed);
/// `None` for [`Replication::Off`].
pub fn choose(
    wanted: Replication,
    tried: &Outcome,
    subscriber: &str,
    publisher: &str,
) -> Result<Option<(Means, String)>, StepError> {
    Ok(match (wanted, tried) {
        (Replication::Off, _) => None,
        (Replication::Relay, _) => Some((Means::Relay, "replication: relay".into())),
        (Replication::Native, Outcome::Granted(_)) => {
            Some((Means::Native, "replication: native".into()))
        }
        (Replication::Native, Outcome::Refused(why) | Outcome::Unreachable(why)) => {
            return Err(StepError::Check(format!(
                "replication: native, but {subscriber} cannot subscribe to {publisher} ({why}); use replication: auto or relay, which run this direction through cutover relay in the target cluster. Nothing was changed"
            )))
        }
        (Replication::Auto, Outcome::Granted(_)) => Some((
            Means::Native,
            format!("auto: {subscriber} may subscribe to {publisher} and reaches it (tried, rolled back)"),
        )),
        (Replication::Auto, Outcome::Refused(why)) => Some((
            Means::Relay,
            format!("auto: {subscriber} may not create a subscription to {publisher} ({why})"),
        )),
        (Replication::Auto, Outcome::Unreachable(why)) => Some((
            Means::Relay,
            format!("auto: {subscriber} cannot reach {publisher} ({why})"),
        )),
    })
}

/// Where a relay runs and how its WAL guard is set (the steps' `relay_*` and `wal_*`
/// parameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Namespace of the Deployment and its Secret in the target cluster.
    pub namespace: String,
    /// The container image (`None`: `cutover:<this version>`).
    pub image: Option<String>,
    /// WAL the slot may retain before the relay warns (`10GB`).
    pub wal_budget: String,
    /// WAL the slot may retain before the relay stops and drops the slot (`100GB`).
    pub wal_limit: String,
}

/// The default `relay_namespace`.
pub fn default_namespace() -> String {
    "cutover".into()
}
/// The default `wal_budget`.
pub fn default_budget() -> String {
    "10GB".into()
}
/// The default `wal_limit`.
pub fn default_limit() -> String {
    "100GB".into()
}

/// One relay, as it will be (or was) applied.
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
    /// The server that publishes (its slot is `--slot`).
    pub publisher: Side,
}

/// The name of the relay's Deployment and Secret for slot `slot`.
pub fn name(slot: &str) -> String {
    format!("relay-{}", slot.replace('_', "-"))
}

/// The name of the WAL guard's Deployment and Secret for slot `slot` (a native subscription
/// consumes it).
pub fn guard_name(slot: &str) -> String {
    format!("guard-{}", slot.replace('_', "-"))
}

/// The WAL guard of slot `slot` on `publisher`, which a native subscription consumes:
/// `cutover relay --guard-only` warns past `wal_budget` and drops the slot past `wal_limit`,
/// recording why on the other server, so that no slot the tool created fills a disk unwatched.
pub fn guard(s: &Settings, slot: &str, publisher: Side) -> Relay {
    let mut g = relay(s, slot, slot, publisher);
    g.name = guard_name(slot);
    g.args.push("--guard-only".into());
    g
}

/// The relay of slot `slot` (also the publication's name is `publication`) on `publisher`.
pub fn relay(s: &Settings, slot: &str, publication: &str, publisher: Side) -> Relay {
    let mut args: Vec<String> = [
        "relay",
        "--slot",
        slot,
        "--publication",
        publication,
        "--publisher",
        publisher.as_str(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (flag, v) in [
        ("--wal-budget", &s.wal_budget),
        ("--wal-limit", &s.wal_limit),
    ] {
        args.push(flag.into());
        args.push(v.clone());
    }
    Relay {
        namespace: s.namespace.clone(),
        name: name(slot),
        image: s
            .image
            .clone()
            .unwrap_or_else(|| format!("cutover:{}", env!("CARGO_PKG_VERSION"))),
        args,
        publisher,
    }
}

fn labels(r: &Relay, run_id: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "cutover-relay",
        "app.kubernetes.io/managed-by": "cutover",
        "app.kubernetes.io/instance": r.name,
        "cutover.dev/publisher": r.publisher.as_str(),
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
    opaque_secret(
        &r.namespace,
        &r.name,
        labels(r, run_id),
        &[(PUBLISHER_KEY, publisher), (DESTINATION_KEY, destination)],
    )
}

/// What the plan shows of the relay: the Deployment (image, arguments) and the Secret's keys
/// with their values' fingerprints.
pub fn describe(r: &Relay, publisher: &str, destination: &str) -> (String, String) {
    let (from, to) = match r.publisher {
        Side::Source => ("the legacy database", "the target"),
        Side::Target => ("the target", "the legacy database"),
    };
    (
        format!(
            "image {}; args: {}; one replica, strategy Recreate",
            r.image,
            r.args.join(" ")
        ),
        format!(
            "{PUBLISHER_KEY} {} ({from}), {DESTINATION_KEY} {} ({to})",
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
    ensure_namespace(&client, &r.namespace).await?;
    let s: Secret = serde_json::from_value(secret(r, cx.run_id, publisher, destination))
        .map_err(|e| StepError::Check(e.to_string()))?;
    let d: Deployment = serde_json::from_value(deployment(r, cx.run_id))
        .map_err(|e| StepError::Check(e.to_string()))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &r.namespace);
    upsert(&secrets, &r.name, s, "Secret").await?;
    let deployments: Api<Deployment> = Api::namespaced(client, &r.namespace);
    Ok(upsert(&deployments, &r.name, d, "Deployment").await?)
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
    let client = cx.providers.kube().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let params = DeleteParams::default();
    let existed = delete_if_exists(&deployments, name, &params, "Deployment").await?;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    delete_if_exists(&secrets, name, &params, "Secret").await?;
    Ok(existed)
}

/// Whether the relay's Deployment exists.
///
/// # Errors
/// [`StepError`] from the Kubernetes API.
pub async fn exists(cx: &StepContext<'_>, r: &Relay) -> Result<bool, StepError> {
    exists_named(cx, &r.namespace, &r.name).await
}

/// Whether the relay Deployment `namespace/name` exists.
///
/// # Errors
/// [`StepError`] from the Kubernetes API.
pub async fn exists_named(
    cx: &StepContext<'_>,
    namespace: &str,
    name: &str,
) -> Result<bool, StepError> {
    let client = cx.providers.kube().await?;
    let deployments: Api<Deployment> = Api::namespaced(client, namespace);
    Ok(deployments
        .get_opt(name)
        .await
        .map_err(|e| kube_err(&format!("get Deployment {name}"), e))?
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
    fn auto_chooses_native_where_the_trial_passed_and_says_why_otherwise() {
        let granted = Outcome::Granted("tried".into());
        let refused = Outcome::Refused("permission denied to create subscription".into());
        let closed = Outcome::Unreachable("no route from legacy-host".into());
        let pick = |w, o: &Outcome| choose(w, o, "the legacy admin", "the target");
        assert_eq!(
            pick(Replication::Auto, &granted).unwrap().unwrap().0,
            Means::Native
        );
        let (m, why) = pick(Replication::Auto, &refused).unwrap().unwrap();
        assert_eq!(m, Means::Relay);
        assert!(
            why.contains("may not create a subscription") && why.contains("permission denied"),
            "{why}"
        );
        let (m, why) = pick(Replication::Auto, &closed).unwrap().unwrap();
        assert_eq!(m, Means::Relay);
        assert!(why.contains("cannot reach the target (no route"), "{why}");
        assert_eq!(
            pick(Replication::Relay, &granted).unwrap().unwrap().0,
            Means::Relay
        );
        assert_eq!(pick(Replication::Off, &granted).unwrap(), None);
        let err = pick(Replication::Native, &closed).unwrap_err();
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("replication: native") && m.contains("Nothing was changed")),
            "{err:?}"
        );
    }

    #[test]
    fn replication_reads_booleans_and_names_and_lists_the_choices() {
        let r: Replication = serde_json::from_value(json!(true)).unwrap();
        assert_eq!(r, Replication::Auto);
        let r: Replication = serde_json::from_value(json!(false)).unwrap();
        assert_eq!(r, Replication::Off);
        let r: Replication = serde_json::from_value(json!("relay")).unwrap();
        assert_eq!(r, Replication::Relay);
        let e = serde_json::from_value::<Replication>(json!("logical")).unwrap_err();
        assert!(e.to_string().contains("auto, native or relay"), "{e}");
    }

    #[test]
    fn the_deployment_runs_one_relay_of_the_slot_with_its_urls_from_the_secret() {
        let s = Settings {
            namespace: default_namespace(),
            image: None,
            wal_budget: default_budget(),
            wal_limit: default_limit(),
        };
        let r = relay(
            &s,
            "cutover_shop_staging_ab12_fb",
            "cutover_shop_staging_ab12_fb",
            Side::Target,
        );
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
        assert!(keys.contains("(the target)"), "{keys}");
        assert_eq!(label_map(&r)["app.kubernetes.io/managed-by"], "cutover");
    }
}
