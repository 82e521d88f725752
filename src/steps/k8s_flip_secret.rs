//! `k8s.flip_secret`: changes keys of a Kubernetes Secret (the application's connection string),
//! keeping the old content in a backup Secret in the same namespace, then restarts the named
//! Deployments (as `kubectl rollout restart` does) and waits until they have rolled out.
//!
//! A Secret an `ExternalSecret` owns is changed where the operator reads it: the upstream
//! Secrets Manager secret or SSM parameter gets the new value, the operator is made to refresh
//! (`force-sync`), and the step waits until the Secret shows it; a Secret a GitOps tool or
//! another controller manages is refused in plan, naming the owner ([`super::secret_owner`]).
//!
//! Rollback material stays in the cluster: the backup Secret `<secret>-backup-<run id>`, which
//! also keeps each upstream's whole value from before (`cutover.upstream.<key>`). Values
//! appear only as fingerprints. Each restart is marked with `cutover.dev/restarted-for` on the pod
//! template, so a resumed run never restarts a Deployment twice for the same step.

use super::rollout::{generation, restart, wait_rollouts};
use super::secret_backup::{self, backup_name, get_secret};
use super::secret_owner::{self, External, Owner};
use super::{
    Action, Applied, Change, Evidence, Kind, Literal, Plan, Restored, StepContext, StepError,
    WindowRole,
};
use crate::config::SecretRef;
use crate::providers::kube::{is_conflict, kube_err};
use crate::secret::fingerprint;
use async_trait::async_trait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// The `k8s.flip_secret` kind.
pub struct FlipSecret;

/// `with:` of `k8s.flip_secret`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Namespace of the Secret and Deployments.
    namespace: String,
    /// Name of the Secret.
    secret: String,
    /// Keys to set, e.g. DATABASE_URL (values may be secrets).
    data: BTreeMap<String, String>,
    /// Workloads to restart, as deployment/<name>.
    #[serde(default)]
    restart: Vec<String>,
    /// What the flip points the application at: `database` (default; the database window's
    /// flip, which `cutover validate` orders after the freeze) or `storage` (its object storage,
    /// e.g. a write-flip to S3 with read fallback, which may come before the window).
    #[serde(default)]
    moves: Moves,
}

/// What a `k8s.flip_secret` moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Moves {
    /// The application's database connection: the window's flip.
    #[default]
    Database,
    /// The application's object storage: not part of the database window.
    Storage,
}

/// Backup Secret keys holding an upstream's whole value from before the flip.
const UPSTREAM_PREFIX: &str = "cutover.upstream.";
/// Backup Secret annotation naming the ExternalSecret the flip went through.
const EXTERNAL_MARK: &str = "cutover.dev/external-secret";

fn decoded(s: &Secret) -> BTreeMap<String, String> {
    s.data
        .as_ref()
        .map(|d| {
            d.iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
                .collect()
        })
        .unwrap_or_default()
}

fn deployments(p: &Params) -> Result<Vec<String>, StepError> {
    p.restart
        .iter()
        .map(|r| match r.split_once('/') {
            Some(("deployment" | "deployments" | "deploy", name)) => Ok(name.to_string()),
            _ => Err(StepError::Params(format!(
                "restart entry `{r}`: expected deployment/<name>"
            ))),
        })
        .collect()
}

fn changed_keys(
    current: &BTreeMap<String, String>,
    wanted: &BTreeMap<String, String>,
) -> Vec<String> {
    wanted
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Writes `data` into the Secret with resourceVersion preconditions (retrying on 409 Conflict).
async fn write_data(
    api: &Api<Secret>,
    name: &str,
    data: &BTreeMap<String, String>,
) -> Result<(), StepError> {
    for _ in 0..5 {
        let Some(mut s) = get_secret(api, name).await? else {
            return Err(StepError::Check(format!("secret {name} does not exist")));
        };
        let mut current = s.data.take().unwrap_or_default();
        for (k, v) in data {
            current.insert(k.clone(), ByteString(v.as_bytes().to_vec()));
        }
        s.data = Some(current);
        match api.replace(name, &PostParams::default(), &s).await {
            Ok(_) => return Ok(()),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(kube_err(&format!("replace secret {name}"), e).into()),
        }
    }
    Err(StepError::Check(format!(
        "secret {name} kept changing (409 Conflict five times)"
    )))
}

/// The ExternalSecret behind the Secret `s` for `keys`, or `None` when nobody owns it.
///
/// # Errors
/// [`StepError::Gate`] when a GitOps tool or another controller owns it, or the ExternalSecret
/// cannot be followed.
async fn owned_through(
    cx: &StepContext<'_>,
    p: &Params,
    s: &Secret,
) -> Result<Option<External>, StepError> {
    let owner = secret_owner::owner_of(&s.metadata);
    let target = format!("secret {}/{}", p.namespace, p.secret);
    if let Some(why) = secret_owner::refusal(&owner, &target) {
        return Err(StepError::Gate(why));
    }
    match owner {
        Owner::ExternalSecret(name) => {
            let keys: Vec<String> = p.data.keys().cloned().collect();
            Ok(Some(
                secret_owner::external(cx, &p.namespace, &name, &keys).await?,
            ))
        }
        _ => Ok(None),
    }
}

/// The upstream's whole current value (registered as a secret).
async fn read_upstream(
    cx: &StepContext<'_>,
    source: &crate::config::SecretSource,
) -> Result<String, StepError> {
    cx.providers
        .read_secret(&SecretRef::from_source(source))
        .await?
        .ok_or_else(|| StepError::Check(format!("{} does not exist", source.describe())))
}

/// Writes `wanted[key]` into each upstream that does not hold it yet. Returns what it changed,
/// as `(source, property, old fingerprint, new fingerprint)`.
async fn write_upstreams(
    cx: &StepContext<'_>,
    ext: &External,
    wanted: &BTreeMap<String, String>,
) -> Result<Vec<String>, StepError> {
    let mut changed = Vec::new();
    for u in &ext.upstreams {
        let Some(value) = wanted.get(&u.key) else {
            continue;
        };
        let raw = read_upstream(cx, &u.source).await?;
        let new = secret_owner::with_value(&raw, u.property.as_deref(), value)
            .map_err(|e| StepError::Check(format!("{}: {e}", u.source.describe())))?;
        if new != raw {
            let session = cx.providers.aws().await?;
            crate::providers::secrets::write(session, &u.source, &new).await?;
            changed.push(u.source.describe());
        }
    }
    Ok(changed)
}

/// Asks the operator to refresh ExternalSecret `ext` now and waits until the Secret holds
/// `wanted`.
async fn refresh_and_wait(
    cx: &StepContext<'_>,
    p: &Params,
    ext: &External,
    wanted: &BTreeMap<String, String>,
) -> Result<(), StepError> {
    let client = cx.providers.kube().await?;
    let stamp = format!(
        "cutover-{}-{}",
        cx.run_id,
        chrono::Utc::now().timestamp_millis()
    );
    crate::providers::external_secrets::force_sync(&client, &p.namespace, &ext.name, &stamp)
        .await?;
    let secrets: Api<Secret> = Api::namespaced(client, &p.namespace);
    loop {
        let now = get_secret(&secrets, &p.secret)
            .await?
            .map(|s| decoded(&s))
            .unwrap_or_default();
        let pending = changed_keys(&now, wanted);
        if pending.is_empty() {
            return Ok(());
        }
        let what = format!(
            "ExternalSecret {}/{} to refresh secret {} (keys {})",
            p.namespace,
            ext.name,
            p.secret,
            pending.join(", ")
        );
        (cx.progress)(&format!(
            "waiting for {what}; up to {}s",
            cx.remaining().as_secs()
        ));
        cx.wait(Duration::from_millis(250), &what).await?;
    }
}

/// Rollback material: fingerprints of the Secret's keys before the flip, and the
/// ExternalSecret it was flipped through, if any.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// Key → fingerprint of its value before the run.
    #[serde(default)]
    keys: BTreeMap<String, String>,
    /// The ExternalSecret that owns the Secret, when one does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_secret: Option<String>,
}

/// What `k8s.flip_secret` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The backup Secret holding the values before the flip (`null` when nothing changed).
    #[serde(default)]
    backup: Option<String>,
    /// The keys whose value changed.
    changed_keys: Vec<String>,
    /// The Deployments restarted (`deployment/NAME`).
    restarted: Vec<String>,
    /// When the first Deployment was restarted (RFC 3339, milliseconds); `null` when none was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restarted_at: Option<String>,
}

#[async_trait]
impl Kind for FlipSecret {
    type Params = Params;
    type Outputs = Outputs;
    type Before = Before;
    type Predicted = Outputs;
    const NAME: &'static str = "k8s.flip_secret";
    const PURPOSE: &'static str = "Point the application at the new database: update its Secret (old value kept in a backup Secret), restart its Deployments and wait for the rollout";
    const UNDO: &'static str = "Put the backup Secret's values back into the Secret and restart the same Deployments; the backup Secret is kept";

    fn window_role(&self, params: Option<&Literal<Params>>) -> WindowRole {
        match params.map(|l| l.params.moves) {
            Some(Moves::Storage) => WindowRole::Other,
            _ => WindowRole::Flip { pooler: false },
        }
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<Before, Outputs>, StepError> {
        let names = deployments(p)?;
        let client = cx.providers.kube().await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &p.namespace);
        let Some(s) = get_secret(&secrets, &p.secret).await? else {
            return Err(StepError::Check(format!(
                "secret {}/{} does not exist",
                p.namespace, p.secret
            )));
        };
        let current = decoded(&s);
        let changed = changed_keys(&current, &p.data);
        let external = owned_through(cx, p, &s).await?;
        let target = format!("secret {}/{}", p.namespace, p.secret);
        let mut changes = Vec::new();
        if changed.is_empty() {
            changes.push(Change::new(
                Action::None,
                &target,
                "keys already hold the wanted values",
            ));
        } else {
            for k in &changed {
                let old = current
                    .get(k)
                    .map(|v| fingerprint(v))
                    .unwrap_or_else(|| "(absent)".into());
                let upstream = external
                    .as_ref()
                    .and_then(|e| e.upstreams.iter().find(|u| &u.key == k));
                match upstream {
                    Some(u) => changes.push(Change::new(
                        Action::Update,
                        u.source.describe(),
                        format!(
                            "{}: {old} → {} (ExternalSecret {} copies it into {target} key {k})",
                            u.property
                                .as_deref()
                                .map_or("value".to_string(), |p| format!("property {p}")),
                            fingerprint(&p.data[k]),
                            external
                                .as_ref()
                                .map(|e| e.name.as_str())
                                .unwrap_or_default()
                        ),
                    )),
                    None => changes.push(Change::new(
                        Action::Update,
                        &target,
                        format!("{k}: {old} → {}", fingerprint(&p.data[k])),
                    )),
                }
            }
            if let Some(e) = &external {
                changes.push(Change::new(
                    Action::Annotate,
                    format!("externalsecret {}/{}", p.namespace, e.name),
                    format!(
                        "force-sync, then wait until {target} holds the new values (refreshInterval {})",
                        e.refresh_interval
                    ),
                ));
            }
            changes.push(Change::new(
                Action::Create,
                format!(
                    "secret {}/{}",
                    p.namespace,
                    backup_name(&p.secret, cx.run_id)
                ),
                "backup of the current keys",
            ));
            for n in &names {
                changes.push(Change::new(
                    Action::Restart,
                    format!("deployment {}/{n}", p.namespace),
                    "rollout restart, then wait until rolled out",
                ));
            }
        }
        let keys: BTreeMap<String, String> = current
            .iter()
            .map(|(k, v)| (k.clone(), fingerprint(v)))
            .collect();
        let predicted = Outputs {
            backup: Some(backup_name(&p.secret, cx.run_id)),
            changed_keys: changed.clone(),
            restarted: names.clone(),
            restarted_at: None,
        };
        Ok(Plan {
            changes,
            before: Before {
                keys,
                external_secret: external.as_ref().map(|e| e.name.clone()),
            },
            predicted: Some(predicted),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
    ) -> Result<Applied<Outputs>, StepError> {
        let names = deployments(p)?;
        let client = cx.providers.kube().await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &p.namespace);
        let backup = backup_name(&p.secret, cx.run_id);
        let Some(s) = get_secret(&secrets, &p.secret).await? else {
            return Err(StepError::Check(format!(
                "secret {}/{} does not exist",
                p.namespace, p.secret
            )));
        };
        let current = decoded(&s);
        let changed = changed_keys(&current, &p.data);
        let external = owned_through(cx, p, &s).await?;
        let have_backup = get_secret(&secrets, &backup).await?.is_some();
        if !changed.is_empty() {
            if !have_backup {
                let mut data = s.data.clone().unwrap_or_default();
                for u in external.iter().flat_map(|e| &e.upstreams) {
                    let raw = read_upstream(cx, &u.source).await?;
                    data.insert(
                        format!("{UPSTREAM_PREFIX}{}", u.key),
                        ByteString(raw.into_bytes()),
                    );
                }
                let annotations = external
                    .iter()
                    .map(|e| (EXTERNAL_MARK.to_string(), e.name.clone()))
                    .collect();
                secret_backup::create(
                    &secrets,
                    &s,
                    &p.secret,
                    &backup,
                    cx.run_id,
                    data,
                    annotations,
                )
                .await?;
            }
            match &external {
                Some(e) => {
                    write_upstreams(cx, e, &p.data).await?;
                    refresh_and_wait(cx, p, e, &p.data).await?;
                }
                None => write_data(&secrets, &p.secret, &p.data).await?,
            }
        }
        // Restart when this step changed the Secret now or before a crash (the backup exists).
        let mut restarted = Vec::new();
        let mut restarted_at = None;
        if !changed.is_empty() || have_backup {
            let deploys: Api<Deployment> = Api::namespaced(client, &p.namespace);
            let mark = format!("{}/{}", cx.run_id, cx.step_id);
            for n in &names {
                let at = chrono::Utc::now();
                if restart(&deploys, n, &mark).await? {
                    restarted.push(n.clone());
                    restarted_at.get_or_insert(at);
                }
            }
        }
        let summary = if changed.is_empty() && !have_backup {
            format!("secret {}/{} already up to date", p.namespace, p.secret)
        } else if let Some(e) = &external {
            format!(
                "secret {}/{} updated through ExternalSecret {} ({}), backup {backup}",
                p.namespace,
                p.secret,
                e.name,
                e.upstreams
                    .iter()
                    .map(|u| u.source.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "secret {}/{} updated ({}), backup {backup}",
                p.namespace,
                p.secret,
                p.data.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        Ok(Applied::new(Outputs {
            backup: (!changed.is_empty() || have_backup).then(|| backup.clone()),
            changed_keys: changed.clone(),
            restarted,
            restarted_at: restarted_at
                .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        })
        .summary(summary))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        p: &Params,
        outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let names = deployments(p)?;
        let client = cx.providers.kube().await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &p.namespace);
        let s = get_secret(&secrets, &p.secret)
            .await?
            .ok_or_else(|| StepError::Check(format!("secret {} vanished", p.secret)))?;
        let still = changed_keys(&decoded(&s), &p.data);
        if !still.is_empty() {
            return Err(StepError::Check(format!(
                "secret {}/{} keys {} do not hold the wanted values",
                p.namespace,
                p.secret,
                still.join(", ")
            )));
        }
        let deploys: Api<Deployment> = Api::namespaced(client, &p.namespace);
        let rolled = wait_rollouts(cx, &deploys, &names).await?;
        let keys: BTreeMap<String, String> = p
            .data
            .iter()
            .map(|(k, v)| (k.clone(), fingerprint(v)))
            .collect();
        let mut ev = Evidence {
            facts: vec![
                ("keys".into(), json!(keys)),
                ("rollouts".into(), json!(rolled)),
            ],
            summary: None,
        };
        // How long the restart took to roll out, from the first restart to every Deployment
        // complete: the least a `reload: restart` application's write outage can be.
        let restarted_at = outputs
            .restarted_at
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        if let Some(t) = restarted_at {
            let ms = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_milliseconds();
            ev.facts.push(("rollout_ms".into(), json!(ms.max(0))));
        }
        Ok(ev)
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
        outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let names = deployments(p)?;
        let client = cx.providers.kube().await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &p.namespace);
        let backup = outputs
            .and_then(|o| o.backup.clone())
            .unwrap_or_else(|| backup_name(&p.secret, cx.run_id));
        let Some(b) = get_secret(&secrets, &backup).await? else {
            // Not changed by this run: no backup was ever taken.
            return Ok(vec![]);
        };
        let old = decoded(&b);
        let now = get_secret(&secrets, &p.secret)
            .await?
            .map(|s| decoded(&s))
            .unwrap_or_default();
        let restore: BTreeMap<String, String> = p
            .data
            .keys()
            .filter_map(|k| old.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        let mut restored = Vec::new();
        let through = b
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(EXTERNAL_MARK))
            .cloned();
        if let Some(es) = &through {
            let keys: Vec<String> = p.data.keys().cloned().collect();
            let ext = secret_owner::external(cx, &p.namespace, es, &keys).await?;
            let session = cx.providers.aws().await?;
            let mut done = Vec::new();
            for u in &ext.upstreams {
                let Some(before) = old.get(&format!("{UPSTREAM_PREFIX}{}", u.key)) else {
                    continue;
                };
                if done.contains(&u.source) {
                    continue;
                }
                done.push(u.source.clone());
                let now_raw = read_upstream(cx, &u.source).await?;
                if &now_raw != before {
                    crate::providers::secrets::write(session, &u.source, before).await?;
                }
                restored.push(Restored::new(
                    u.source.describe(),
                    Some(&now_raw),
                    Some(before),
                    format!("upstream of ExternalSecret {es} restored from backup Secret {backup}"),
                ));
            }
            refresh_and_wait(cx, p, &ext, &restore).await?;
        }
        for (k, v) in &restore {
            restored.push(Restored::new(
                format!("secret {}/{} key {k}", p.namespace, p.secret),
                now.get(k).map(String::as_str),
                Some(v),
                if now.get(k) == Some(v) {
                    format!("already the value in backup {backup}")
                } else {
                    format!("restored from backup Secret {backup}")
                },
            ));
        }
        if through.is_none() && !changed_keys(&now, &restore).is_empty() {
            write_data(&secrets, &p.secret, &restore).await?;
        }
        let deploys: Api<Deployment> = Api::namespaced(client, &p.namespace);
        let mark = format!("{}/{}/rollback", cx.run_id, cx.step_id);
        let mut generations = Vec::new();
        for n in &names {
            generations.push(generation(&deploys, n).await?);
            restart(&deploys, n, &mark).await?;
        }
        let evidence = wait_rollouts(cx, &deploys, &names).await?;
        for ((n, g), line) in names.iter().zip(generations).zip(evidence) {
            let after = generation(&deploys, n).await?;
            restored.push(Restored::new(
                format!("deployment {}/{n}", p.namespace),
                Some(&format!("generation {g}")),
                Some(&format!("generation {after}")),
                format!("restarted onto the restored Secret; {line}"),
            ));
        }
        Ok(restored)
    }

    fn manual_undo(&self, p: &Params, _before: &Before, run_id: &str) -> Vec<String> {
        let (ns, secret) = (&p.namespace, &p.secret);
        let backup = backup_name(secret, run_id);
        let mut out = vec![format!(
            "restore the Secret from its backup: kubectl -n {ns} get secret {backup} -o json | jq '.metadata = {{name: \"{secret}\", namespace: \"{ns}\"}}' | kubectl apply -f -"
        )];
        for d in &p.restart {
            out.push(format!("restart and watch: kubectl -n {ns} rollout restart {d} && kubectl -n {ns} rollout status {d}"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::kube::FakeKube;
    use crate::steps::testing::Harness;
    use base64::Engine;
    use serde_json::Value;

    const OLD: &str = "postgres://app:legacy-pw@legacy:5432/shop";
    const NEW: &str = "postgres://app:rds-pw@shop.rds.internal:5432/shop";

    fn b64(v: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(v)
    }

    /// Namespace `shop`: Secret `shop-db` (DATABASE_URL = OLD, and a key the flip leaves
    /// alone) read by Deployment `web` (2 replicas, rolled out at generation 1).
    fn setup(secret_meta: Value) -> (Harness, FakeKube) {
        let fake = FakeKube::default();
        let mut meta = json!({"name": "shop-db"});
        merge_into(&mut meta, secret_meta);
        fake.put(
            "shop",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
                   "data": {"DATABASE_URL": b64(OLD), "REDIS_URL": b64("redis://cache")}}),
        );
        fake.put(
            "shop",
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"name": "web", "generation": 1},
                   "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                            "template": {"metadata": {"labels": {"app": "web"}},
                                         "spec": {"containers": [{"name": "web", "image": "shop"}]}}},
                   "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}),
        );
        let client = fake.clone();
        (Harness::new(|p| p.with_kube(client.client())), fake)
    }

    fn merge_into(into: &mut Value, from: Value) {
        if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
            a.extend(b.clone());
        }
    }

    fn params() -> Params {
        Params {
            namespace: "shop".into(),
            secret: "shop-db".into(),
            data: [("DATABASE_URL".to_string(), NEW.to_string())].into(),
            restart: vec!["deployment/web".into()],
            moves: Moves::Database,
        }
    }

    fn value(fake: &FakeKube, name: &str, key: &str) -> Option<String> {
        let s = fake.get("shop", "secrets", name)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(s["data"][key].as_str()?)
            .ok()?;
        String::from_utf8(raw).ok()
    }

    fn generation_of(fake: &FakeKube) -> i64 {
        fake.get("shop", "deployments", "web").unwrap()["metadata"]["generation"]
            .as_i64()
            .unwrap()
    }

    #[tokio::test]
    async fn flips_backs_up_restarts_once_and_rollback_restores_the_old_value() {
        let (h, fake) = setup(json!({}));
        let cx = h.cx();
        let p = params();
        let plan = FlipSecret.plan(&cx, &p).await.unwrap();
        let lines: Vec<(Action, String, String)> = plan
            .changes
            .iter()
            .map(|c| (c.action, c.target.clone(), c.detail.clone()))
            .collect();
        assert_eq!(lines[0].0, Action::Update);
        assert_eq!(
            lines[0].2,
            format!("DATABASE_URL: {} → {}", fingerprint(OLD), fingerprint(NEW))
        );
        assert_eq!(lines[1].1, "secret shop/shop-db-backup-test-run");
        assert_eq!(
            lines[2],
            (
                Action::Restart,
                "deployment shop/web".into(),
                "rollout restart, then wait until rolled out".into()
            )
        );

        let first = FlipSecret.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(first.outputs.changed_keys, vec!["DATABASE_URL"]);
        assert_eq!(first.outputs.restarted, vec!["web"]);
        assert!(first.outputs.restarted_at.is_some());
        assert_eq!(
            value(&fake, "shop-db", "DATABASE_URL").as_deref(),
            Some(NEW)
        );
        assert_eq!(
            value(&fake, "shop-db", "REDIS_URL").as_deref(),
            Some("redis://cache")
        );
        assert_eq!(
            value(&fake, "shop-db-backup-test-run", "DATABASE_URL").as_deref(),
            Some(OLD)
        );
        assert_eq!(generation_of(&fake), 2);

        // A re-run after a crash: the Secret holds the value, the Deployment its mark.
        let again = FlipSecret.apply(&cx, &p, &plan.before).await.unwrap();
        assert!(again.outputs.changed_keys.is_empty());
        assert!(again.outputs.restarted.is_empty());
        assert_eq!(
            again.outputs.backup.as_deref(),
            Some("shop-db-backup-test-run")
        );
        assert_eq!(
            generation_of(&fake),
            2,
            "no second restart for the same step"
        );

        let evidence = FlipSecret.verify(&cx, &p, &first.outputs).await.unwrap();
        assert_eq!(
            evidence.facts[1].1,
            json!(["deployment/web rolled out (generation 2, 2 available)"])
        );

        let restored = FlipSecret
            .rollback(&cx, &p, &plan.before, Some(&again.outputs))
            .await
            .unwrap();
        assert_eq!(
            value(&fake, "shop-db", "DATABASE_URL").as_deref(),
            Some(OLD)
        );
        assert_eq!(restored[0].object, "secret shop/shop-db key DATABASE_URL");
        assert_eq!(restored[0].before, fingerprint(NEW));
        assert_eq!(restored[0].after, fingerprint(OLD));
        assert_eq!(restored[1].object, "deployment shop/web");
        assert_eq!(generation_of(&fake), 3, "restarted onto the old value");

        // Secrets appear only as fingerprints.
        let text = format!(
            "{:?}{:?}{:?}{:?}{:?}",
            plan.changes,
            first.summary,
            evidence.facts,
            restored,
            h.progress.lock().unwrap()
        );
        for secret in ["legacy-pw", "rds-pw"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[tokio::test]
    async fn a_rollout_that_does_not_finish_fails_verify_at_the_deadline() {
        let (h, fake) = setup(json!({}));
        let mut cx = h.cx();
        let p = params();
        let plan = FlipSecret.plan(&cx, &p).await.unwrap();
        fake.hold_rollouts(true);
        let applied = FlipSecret.apply(&cx, &p, &plan.before).await.unwrap();
        cx.deadline = tokio::time::Instant::now();
        let err = FlipSecret
            .verify(&cx, &p, &applied.outputs)
            .await
            .err()
            .expect("never rolled out");
        assert!(
            matches!(&err, StepError::Timeout(m) if m.contains("deployment web")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_secret_argo_cd_applies_is_refused_in_plan_and_nothing_is_written() {
        let (h, fake) = setup(
            json!({"annotations": {"argocd.argoproj.io/tracking-id": "shop:/Secret:shop/shop-db"}}),
        );
        let cx = h.cx();
        let err = FlipSecret
            .plan(&cx, &params())
            .await
            .err()
            .expect("Argo CD owns it");
        assert!(
            matches!(&err, StepError::Gate(m) if m.contains("Argo CD")),
            "{err:?}"
        );
        assert!(FlipSecret
            .apply(&cx, &params(), &Before::default())
            .await
            .is_err());
        assert!(
            fake.requests().iter().all(|r| r.starts_with("GET ")),
            "{:?}",
            fake.requests()
        );
        assert_eq!(
            value(&fake, "shop-db", "DATABASE_URL").as_deref(),
            Some(OLD)
        );
    }
}
