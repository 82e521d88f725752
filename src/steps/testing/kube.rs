//! A Kubernetes API in memory for unit tests: a `kube::Client` whose transport is a
//! `tower` service answering the API's REST calls on Secrets, Deployments and Namespaces from a map, so
//! the kinds under test go through kube-rs's own request building and error decoding.
//!
//! What it keeps of the API's documented semantics: `GET`, `POST` (409 `AlreadyExists`), `PUT`
//! (409 `Conflict` on a stale `resourceVersion`), JSON merge and strategic merge `PATCH` (the
//! same for the maps a step patches), `DELETE`; every write bumps `resourceVersion`; a change to
//! a Deployment's `spec` bumps `metadata.generation`. The Deployment controller completes a
//! rollout at the next read unless the test holds rollouts. Everything else answers 404.

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    /// Objects by their path (`/api/v1/namespaces/shop/secrets/shop-db`).
    objects: BTreeMap<String, Value>,
    version: u64,
    /// While true, Deployments never finish rolling out.
    hold_rollouts: bool,
    /// Every request: `METHOD path`.
    requests: Vec<String>,
}

/// The API server's state, shared with the clients made from it.
#[derive(Clone, Default)]
pub struct FakeKube {
    state: Arc<Mutex<State>>,
}

impl FakeKube {
    /// A client whose requests this fake answers.
    pub fn client(&self) -> kube::Client {
        let state = self.state.clone();
        let service = tower::service_fn(move |req: Request<kube::client::Body>| {
            let state = state.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                Ok::<_, Infallible>(s.answer(&parts.method, parts.uri.path(), &body))
            }
        });
        kube::Client::new(service, "default")
    }

    /// Stores `object` (a Secret or Deployment as JSON) in `namespace`.
    pub fn put(&self, namespace: &str, object: Value) {
        let mut s = self.lock();
        let path = object_path(namespace, &object);
        s.version += 1;
        let mut object = object;
        object["metadata"]["resourceVersion"] = json!(s.version.to_string());
        object["metadata"]["namespace"] = json!(namespace);
        s.objects.insert(path, object);
    }

    /// The object at `namespace`, `kind` (`secrets`, `deployments`) and `name`.
    pub fn get(&self, namespace: &str, kind: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&collection(namespace, kind).map(|c| format!("{c}/{name}"))?)
            .cloned()
    }

    /// Holds (true) or lets (false) Deployments finish rolling out.
    pub fn hold_rollouts(&self, hold: bool) {
        self.lock().hold_rollouts = hold;
    }

    /// Every request so far, `METHOD path`.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn collection(namespace: &str, kind: &str) -> Option<String> {
    match kind {
        "secrets" => Some(format!("/api/v1/namespaces/{namespace}/secrets")),
        "deployments" => Some(format!("/apis/apps/v1/namespaces/{namespace}/deployments")),
        _ => None,
    }
}

fn object_path(namespace: &str, object: &Value) -> String {
    let kind = match object["kind"].as_str() {
        Some("Deployment") => "deployments",
        _ => "secrets",
    };
    format!(
        "{}/{}",
        collection(namespace, kind).unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// RFC 7386: objects merge key by key, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => {
            *target = match patch.as_object() {
                Some(_) => {
                    let mut fresh = json!({});
                    merge(&mut fresh, patch);
                    fresh
                }
                None => patch.clone(),
            }
        }
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response<Full<Bytes>> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16()
    });
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = code;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

impl State {
    fn answer(&mut self, method: &Method, path: &str, body: &[u8]) -> Response<Full<Bytes>> {
        self.requests.push(format!("{method} {path}"));
        let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let known = path.contains("/secrets")
            || path.contains("/deployments")
            || path
                .strip_prefix("/api/v1/namespaces")
                .is_some_and(|rest| rest.matches('/').count() <= 1);
        if !known {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{path} not found"),
            );
        }
        let is_collection = path.ends_with("/secrets")
            || path.ends_with("/deployments")
            || path.ends_with("/namespaces");
        match (method.clone(), is_collection) {
            (Method::GET, false) => {
                self.roll_out(path);
                match self.objects.get(path) {
                    Some(o) => respond(StatusCode::OK, o),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{path} not found"),
                    ),
                }
            }
            (Method::POST, true) => {
                let name = parsed["metadata"]["name"].as_str().unwrap_or_default();
                let at = format!("{path}/{name}");
                if self.objects.contains_key(&at) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{name} already exists"),
                    );
                }
                let stored = self.store(&at, parsed, None);
                respond(StatusCode::CREATED, &stored)
            }
            (Method::PUT, false) => {
                let Some(old) = self.objects.get(path).cloned() else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{path} not found"),
                    );
                };
                let sent = parsed["metadata"]["resourceVersion"].as_str();
                if sent.is_some_and(|v| Some(v) != old["metadata"]["resourceVersion"].as_str()) {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again".into(),
                    );
                }
                let stored = self.store(path, parsed, Some(&old));
                respond(StatusCode::OK, &stored)
            }
            (Method::PATCH, false) => {
                let Some(old) = self.objects.get(path).cloned() else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{path} not found"),
                    );
                };
                let mut new = old.clone();
                merge(&mut new, &parsed);
                let stored = self.store(path, new, Some(&old));
                respond(StatusCode::OK, &stored)
            }
            (Method::DELETE, false) => match self.objects.remove(path) {
                Some(o) => respond(StatusCode::OK, &o),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{path} not found"),
                ),
            },
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {path}"),
            ),
        }
    }

    /// Stores `new` at `path`: a new `resourceVersion`; for a Deployment whose `spec` changed,
    /// the next `generation`; `status` kept from `old` (the main resource ignores it).
    fn store(&mut self, path: &str, mut new: Value, old: Option<&Value>) -> Value {
        self.version += 1;
        new["metadata"]["resourceVersion"] = json!(self.version.to_string());
        if path.contains("/deployments/") {
            let generation = old
                .and_then(|o| o["metadata"]["generation"].as_i64())
                .unwrap_or(0);
            let changed = old.is_none_or(|o| o["spec"] != new["spec"]);
            new["metadata"]["generation"] = json!(generation + i64::from(changed));
            new["status"] = old.map(|o| o["status"].clone()).unwrap_or(Value::Null);
        }
        self.objects.insert(path.to_string(), new.clone());
        new
    }

    /// The Deployment controller: a Deployment not yet observed at its generation is rolled
    /// out (every replica updated and available) unless rollouts are held.
    fn roll_out(&mut self, path: &str) {
        if self.hold_rollouts || !path.contains("/deployments/") {
            return;
        }
        let Some(d) = self.objects.get_mut(path) else {
            return;
        };
        let generation = d["metadata"]["generation"].as_i64().unwrap_or(1);
        if d["status"]["observedGeneration"].as_i64() == Some(generation) {
            return;
        }
        let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
        d["status"] = json!({
            "observedGeneration": generation,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}],
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::{Api, PostParams};

    #[tokio::test]
    async fn kube_rs_reads_writes_and_sees_the_apis_conflicts() {
        let fake = FakeKube::default();
        fake.put(
            "shop",
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "data": {"K": "dg=="}}),
        );
        let api: Api<Secret> = Api::namespaced(fake.client(), "shop");
        let mut s = api.get("db").await.unwrap();
        assert_eq!(s.data.as_ref().unwrap()["K"].0, b"v");
        let stale = s.clone();
        s.data
            .as_mut()
            .unwrap()
            .insert("K".into(), k8s_openapi::ByteString(b"w".to_vec()));
        api.replace("db", &PostParams::default(), &s).await.unwrap();
        let err = api
            .replace("db", &PostParams::default(), &stale)
            .await
            .expect_err("a stale resourceVersion");
        assert!(crate::providers::kube::is_conflict(&err), "{err:?}");
        let err = api.get("nope").await.expect_err("absent");
        assert!(crate::providers::kube::is_not_found(&err), "{err:?}");
        let err = api
            .create(&PostParams::default(), &stale)
            .await
            .expect_err("exists");
        assert!(crate::providers::kube::is_conflict(&err), "{err:?}");
    }
}
