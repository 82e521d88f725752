//! The External Secrets Operator, as far as the sandbox needs it: for each `ExternalSecret`
//! whose `SecretStore` uses the AWS provider (Secrets Manager or Parameter Store, read from
//! moto with the environment account's role), the target Secret is written with every
//! `spec.data` key's upstream value, owned by the ExternalSecret (`creationPolicy: Owner`, the
//! default: an `ownerReference` with `controller: true`, and the data replaced whole).
//!
//! A refresh happens, as the operator documents it, when the ExternalSecret is new, every
//! `spec.refreshInterval` (a Go duration; `0` never again), and whenever the ExternalSecret
//! changes (`kubectl annotate es NAME force-sync=$(date +%s) --overwrite`). An upstream that
//! cannot be read leaves the Secret as it is and sets the condition `Ready=False`
//! (`SecretSyncedError`). So a Secret edited directly gets the upstream value back at the next
//! refresh, which is what `cutover` must not be fooled by.

use crate::kube::Cluster;
use aws_config::SdkConfig;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A Go duration (`1h`, `5m30s`, `10s`, `500ms`, `0`) in seconds; `None` when malformed.
pub fn go_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let n: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        total += Duration::from_secs_f64(n * secs);
        rest = &rest[unit_len..];
    }
    Some(total)
}

/// What one ExternalSecret needs fetched.
struct Due {
    ns: String,
    name: String,
    es: Value,
    store: Option<Value>,
}

/// Reads one `remoteRef` from the store's AWS service.
async fn fetch(aws: &SdkConfig, service: &str, remote: &Value) -> Result<String, String> {
    let key = remote
        .get("key")
        .and_then(Value::as_str)
        .ok_or("remoteRef.key is required")?;
    let raw = match service {
        "SecretsManager" => aws_sdk_secretsmanager::Client::new(aws)
            .get_secret_value()
            .secret_id(key)
            .send()
            .await
            .map_err(|e| format!("GetSecretValue {key}: {e}"))?
            .secret_string()
            .ok_or(format!("{key} has no SecretString"))?
            .to_string(),
        "ParameterStore" => aws_sdk_ssm::Client::new(aws)
            .get_parameter()
            .name(key)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| format!("GetParameter {key}: {e}"))?
            .parameter()
            .and_then(|p| p.value())
            .ok_or(format!("{key} has no value"))?
            .to_string(),
        other => return Err(format!("unsupported AWS service {other}")),
    };
    match remote.get("property").and_then(Value::as_str) {
        None => Ok(raw),
        Some(p) => {
            let obj: Map<String, Value> =
                serde_json::from_str(&raw).map_err(|_| format!("{key} is not JSON"))?;
            match obj.get(p) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Ok(v.to_string()),
                None => Err(format!("{key} has no property {p}")),
            }
        }
    }
}

/// The Secret data of `es` from its store, or why not.
async fn values(aws: &SdkConfig, due: &Due) -> Result<Map<String, Value>, String> {
    let store = due.store.as_ref().ok_or("SecretStore not found")?;
    let service = store
        .pointer("/spec/provider/aws/service")
        .and_then(Value::as_str)
        .ok_or("the SecretStore has no AWS provider")?;
    let mut data = Map::new();
    for entry in due
        .es
        .pointer("/spec/data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let key = entry
            .get("secretKey")
            .and_then(Value::as_str)
            .ok_or("spec.data[].secretKey is required")?;
        let v = fetch(aws, service, entry.get("remoteRef").unwrap_or(&Value::Null)).await?;
        data.insert(
            key.to_string(),
            json!(base64::engine::general_purpose::STANDARD.encode(v)),
        );
    }
    Ok(data)
}

/// Runs the operator for one cluster forever, checking every 250 ms what is due.
pub async fn controller(cluster: Cluster, aws: SdkConfig) {
    // Per ExternalSecret: the resourceVersion this controller last left it at, and when.
    let mut synced: HashMap<(String, String), (String, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let due: Vec<Due> = {
            let s = cluster.lock().unwrap_or_else(|p| p.into_inner());
            s.list("externalsecrets")
                .into_iter()
                .filter(|(ns, name, es)| {
                    let rv = es
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let interval = es
                        .pointer("/spec/refreshInterval")
                        .and_then(Value::as_str)
                        .and_then(go_duration)
                        .unwrap_or(Duration::from_secs(3600));
                    match synced.get(&(ns.clone(), name.clone())) {
                        None => true,
                        Some((seen, at)) => {
                            seen != rv || (!interval.is_zero() && at.elapsed() >= interval)
                        }
                    }
                })
                .map(|(ns, name, es)| {
                    let store_name = es
                        .pointer("/spec/secretStoreRef/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    let store = s.get("secretstores", &ns, store_name).cloned();
                    Due {
                        ns,
                        name,
                        es,
                        store,
                    }
                })
                .collect()
        };
        for d in due {
            let result = values(&aws, &d).await;
            let mut s = cluster.lock().unwrap_or_else(|p| p.into_inner());
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            let Some(mut es) = s.get("externalsecrets", &d.ns, &d.name).cloned() else {
                continue;
            };
            let condition = match result {
                Ok(data) => {
                    let target =
                        d.es.pointer("/spec/target/name")
                            .and_then(Value::as_str)
                            .unwrap_or(&d.name)
                            .to_string();
                    let uid = es.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
                    let current = s.get("secrets", &d.ns, &target).cloned();
                    let mut secret = current.clone().unwrap_or_else(|| {
                        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": target}})
                    });
                    secret["data"] = Value::Object(data);
                    secret["metadata"]["ownerReferences"] = json!([{
                        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
                        "name": d.name, "uid": uid, "controller": true, "blockOwnerDeletion": true
                    }]);
                    if current.as_ref() != Some(&secret) {
                        s.put("secrets", &d.ns, secret);
                    }
                    json!({"type": "Ready", "status": "True", "reason": "SecretSynced", "message": "secret synced", "lastTransitionTime": now})
                }
                Err(e) => {
                    json!({"type": "Ready", "status": "False", "reason": "SecretSyncedError", "message": format!("could not get secret data from provider: {e}"), "lastTransitionTime": now})
                }
            };
            let changed_since = es.pointer("/metadata/resourceVersion")
                != d.es.pointer("/metadata/resourceVersion");
            es["status"] = json!({"conditions": [condition], "refreshTime": now,
                                  "syncedResourceVersion": format!("{}-{}", es.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1), es.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default())});
            let rv = s.put("externalsecrets", &d.ns, es);
            // A change made while the upstream was read is reconciled on the next tick.
            let seen = if changed_since { String::new() } else { rv };
            synced.insert((d.ns.clone(), d.name.clone()), (seen, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_as_the_operator_reads_them() {
        assert_eq!(go_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(go_duration("5m30s"), Some(Duration::from_secs(330)));
        assert_eq!(go_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(go_duration("0"), Some(Duration::ZERO));
        assert_eq!(go_duration("ten"), None);
        assert_eq!(go_duration("5x"), None);
    }
}
