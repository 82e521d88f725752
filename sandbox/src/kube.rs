//! The Kubernetes API emulator: exactly the subset `cutover` uses, with the real API's semantics.
//!
//! - Secrets and Deployments in namespaces (`/api/v1/...`, `/apis/apps/v1/...`): get, list,
//!   create, replace, patch, delete; namespaces: get and create (`POST /api/v1/namespaces`).
//! - `metadata.resourceVersion` optimistic concurrency: a replace whose resourceVersion is not the
//!   stored one is refused with 409 Conflict; a create of an existing name with 409 AlreadyExists.
//! - Errors as `Status` objects (404 NotFound, 409, 415, 422).
//! - Patches: JSON merge patch (RFC 7386) and strategic merge patch (maps merged, `$patch`
//!   directives, lists of containers/env/volumes merged by `name`, other lists replaced).
//! - The External Secrets Operator's `ExternalSecret` and `SecretStore`
//!   (`/apis/external-secrets.io/v1/...`), with the operator's refresh in [`crate::eso`].
//! - Each resource only under its own API group's path (a Secret under `/apis/apps/v1` is 404).
//! - Deployments: `metadata.generation` increments when the spec changes; a rollout controller
//!   moves `status` along (observedGeneration, updatedReplicas, availableReplicas) a step at a time,
//!   as the deployment controller does, so clients must wait for a rollout as they would on a real
//!   cluster.
//!
//! It runs in the sandbox only; it is not part of the `cutover` binary.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One cluster's objects, keyed by (resource, namespace, name).
#[derive(Default)]
pub struct Store {
    objects: BTreeMap<(String, String, String), Value>,
    next_rv: u64,
    uid_counter: u64,
}

/// A cluster: its store behind a lock.
pub type Cluster = Arc<Mutex<Store>>;

fn status(code: u16, reason: &str, message: String, kind: &str, name: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {"name": name, "kind": kind}, "code": code
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

fn not_found(resource: &str, name: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("{resource} \"{name}\" not found"),
        resource,
        name,
    )
}

impl Store {
    fn bump(&mut self) -> String {
        self.next_rv += 1;
        self.next_rv.to_string()
    }

    /// Inserts an object as a create would (seeding).
    pub fn seed(&mut self, resource: &str, ns: &str, mut obj: Value) {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.stamp_new(&mut obj, ns);
        if has_generation(resource) {
            obj["metadata"]["generation"] = json!(1);
        }
        self.objects.insert((resource.into(), ns.into(), name), obj);
    }

    /// Every stored object of `resource`, as `(namespace, name, object)`.
    pub fn list(&self, resource: &str) -> Vec<(String, String, Value)> {
        self.objects
            .iter()
            .filter(|((r, _, _), _)| r == resource)
            .map(|((_, ns, n), v)| (ns.clone(), n.clone(), v.clone()))
            .collect()
    }

    /// Stores `obj` as a controller's write: a new resourceVersion, a uid and creation time when
    /// it is new. Returns the new resourceVersion.
    pub fn put(&mut self, resource: &str, ns: &str, mut obj: Value) -> String {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if self.get(resource, ns, &name).is_none() {
            self.stamp_new(&mut obj, ns);
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv);
        self.objects.insert((resource.into(), ns.into(), name), obj);
        rv
    }

    fn stamp_new(&mut self, obj: &mut Value, ns: &str) {
        self.uid_counter += 1;
        let rv = self.bump();
        let m = obj.get_mut("metadata").and_then(Value::as_object_mut);
        if let Some(m) = m {
            if !ns.is_empty() {
                m.insert("namespace".into(), json!(ns));
            }
            m.insert("resourceVersion".into(), json!(rv));
            m.insert(
                "uid".into(),
                json!(format!("00000000-0000-4000-8000-{:012}", self.uid_counter)),
            );
            m.insert(
                "creationTimestamp".into(),
                json!(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
        }
    }

    /// The object, if stored.
    pub fn get(&self, resource: &str, ns: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(resource.to_string(), ns.to_string(), name.to_string()))
    }
}

fn kind_of(resource: &str) -> (&'static str, &'static str) {
    match resource {
        "secrets" => ("Secret", "v1"),
        "deployments" => ("Deployment", "apps/v1"),
        "externalsecrets" => ("ExternalSecret", "external-secrets.io/v1"),
        "secretstores" => ("SecretStore", "external-secrets.io/v1"),
        _ => ("Namespace", "v1"),
    }
}

/// The resources served, each with the path prefix of its API group and version.
const SERVED: [(&str, &str); 4] = [
    ("secrets", "/api/v1/"),
    ("deployments", "/apis/apps/v1/"),
    ("externalsecrets", "/apis/external-secrets.io/v1/"),
    ("secretstores", "/apis/external-secrets.io/v1/"),
];

/// Whether `resource` is served under the request path `path`.
fn served(resource: &str, path: &str) -> bool {
    SERVED
        .iter()
        .any(|(r, prefix)| *r == resource && path.starts_with(prefix))
}

fn validate_secret(obj: &Value) -> Result<(), String> {
    if let Some(Value::Object(data)) = obj.get("data") {
        use base64::Engine as _;
        for (k, v) in data {
            let s = v
                .as_str()
                .ok_or_else(|| format!("data[{k}]: must be a base64 string"))?;
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|_| format!("data[{k}]: illegal base64 data"))?;
        }
    }
    Ok(())
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

const MERGE_BY_NAME: &[&str] = &[
    "containers",
    "initContainers",
    "env",
    "volumes",
    "volumeMounts",
    "ports",
    "imagePullSecrets",
];

/// Strategic merge patch, for the fields the emulator serves: maps merge recursively (`null`
/// deletes, `$patch: replace|delete` honoured); the lists Kubernetes merges by `name` are merged by
/// it; other lists are replaced.
pub fn strategic_merge(target: &mut Value, patch: &Value, field: &str) {
    let is_object = target.is_object();
    let is_array = target.is_array();
    match patch {
        Value::Object(p) if is_object => {
            let t = target.as_object_mut().expect("object");
            match p.get("$patch").and_then(Value::as_str) {
                Some("replace") => {
                    let mut p = p.clone();
                    p.remove("$patch");
                    *target = Value::Object(p);
                    return;
                }
                Some("delete") => {
                    *target = Value::Null;
                    return;
                }
                _ => {}
            }
            for (k, v) in p {
                if k == "$patch" {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                    continue;
                }
                match t.get_mut(k) {
                    Some(existing) => strategic_merge(existing, v, k),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        Value::Array(items) if MERGE_BY_NAME.contains(&field) && is_array => {
            let list = target.as_array_mut().expect("array");
            for item in items {
                let name = item.get("name").cloned();
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match list
                    .iter()
                    .position(|e| e.get("name") == name.as_ref() && name.is_some())
                {
                    Some(i) if delete => {
                        list.remove(i);
                    }
                    Some(i) => strategic_merge(&mut list[i], item, ""),
                    None if !delete => list.push(item.clone()),
                    None => {}
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

type Key = (String, String, String);

fn key(resource: &str, ns: &str, name: &str) -> Key {
    (resource.to_string(), ns.to_string(), name.to_string())
}

async fn collection(
    State(c): State<Cluster>,
    method: Method,
    uri: Uri,
    Path((ns, resource)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    if !served(&resource, uri.path()) {
        return unserved(&resource);
    }
    handle(c, method, &ns, &resource, None, HeaderMap::new(), body)
}

async fn item(
    State(c): State<Cluster>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    Path((ns, resource, name)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    if !served(&resource, uri.path()) {
        return unserved(&resource);
    }
    handle(c, method, &ns, &resource, Some(&name), headers, body)
}

fn unserved(resource: &str) -> Response {
    status(
        404,
        "NotFound",
        format!("the server could not find the requested resource ({resource})"),
        resource,
        "",
    )
}

async fn namespace(State(c): State<Cluster>, Path(name): Path<String>) -> Response {
    let s = c.lock().unwrap_or_else(|p| p.into_inner());
    match s.get("namespaces", "", &name) {
        Some(o) => Json(o.clone()).into_response(),
        None => not_found("namespaces", &name),
    }
}

/// `POST /api/v1/namespaces`: creates a namespace (201), as the API server does: 409 AlreadyExists
/// when the name is taken, 400 without a valid `metadata.name` (an RFC 1123 label), 422 for a
/// body that is not a Namespace. New namespaces are `Active`.
async fn create_namespace(State(c): State<Cluster>, body: Bytes) -> Response {
    let mut obj: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return status(
                400,
                "BadRequest",
                format!("invalid JSON: {e}"),
                "namespaces",
                "",
            )
        }
    };
    if obj
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k != "Namespace")
    {
        return status(
            422,
            "Invalid",
            "the body's kind is not Namespace".into(),
            "namespaces",
            "",
        );
    }
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let label_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !label_ok {
        return status(
            422,
            "Invalid",
            format!("Namespace \"{name}\" is invalid: metadata.name: must be a lowercase RFC 1123 label"),
            "namespaces",
            &name,
        );
    }
    let mut s = c.lock().unwrap_or_else(|p| p.into_inner());
    if s.get("namespaces", "", &name).is_some() {
        return status(
            409,
            "AlreadyExists",
            format!("namespaces \"{name}\" already exists"),
            "namespaces",
            &name,
        );
    }
    obj["apiVersion"] = json!("v1");
    obj["kind"] = json!("Namespace");
    obj["status"] = json!({"phase": "Active"});
    s.seed("namespaces", "", obj);
    let created = s
        .get("namespaces", "", &name)
        .cloned()
        .unwrap_or(Value::Null);
    (StatusCode::CREATED, Json(created)).into_response()
}

fn handle(
    c: Cluster,
    method: Method,
    ns: &str,
    resource: &str,
    name: Option<&str>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !SERVED.iter().any(|(r, _)| *r == resource) {
        return unserved(resource);
    }
    let mut s = c.lock().unwrap_or_else(|p| p.into_inner());
    if s.get("namespaces", "", ns).is_none() {
        return not_found("namespaces", ns);
    }
    let (kind, api_version) = kind_of(resource);
    match (method, name) {
        (Method::GET, None) => {
            let items: Vec<Value> = s
                .objects
                .iter()
                .filter(|((r, n, _), _)| r == resource && n == ns)
                .map(|(_, v)| v.clone())
                .collect();
            let rv = s.next_rv.to_string();
            Json(json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": {"resourceVersion": rv}, "items": items})).into_response()
        }
        (Method::GET, Some(n)) => match s.get(resource, ns, n) {
            Some(o) => Json(o.clone()).into_response(),
            None => not_found(resource, n),
        },
        (Method::POST, None) => {
            let mut obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return status(
                        400,
                        "BadRequest",
                        format!("invalid JSON: {e}"),
                        resource,
                        "",
                    )
                }
            };
            let n = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if n.is_empty() {
                return status(
                    422,
                    "Invalid",
                    format!("{kind} is invalid: metadata.name: Required value"),
                    resource,
                    "",
                );
            }
            if resource == "secrets" {
                if let Err(e) = validate_secret(&obj) {
                    return status(
                        422,
                        "Invalid",
                        format!("Secret \"{n}\" is invalid: {e}"),
                        resource,
                        &n,
                    );
                }
            }
            if s.get(resource, ns, &n).is_some() {
                return status(
                    409,
                    "AlreadyExists",
                    format!("{resource} \"{n}\" already exists"),
                    resource,
                    &n,
                );
            }
            obj["kind"] = json!(kind);
            obj["apiVersion"] = json!(api_version);
            s.stamp_new(&mut obj, ns);
            if has_generation(resource) {
                obj["metadata"]["generation"] = json!(1);
            }
            s.objects.insert(key(resource, ns, &n), obj.clone());
            (StatusCode::CREATED, Json(obj)).into_response()
        }
        (Method::PUT, Some(n)) => {
            let mut obj: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return status(400, "BadRequest", format!("invalid JSON: {e}"), resource, n)
                }
            };
            let Some(current) = s.get(resource, ns, n).cloned() else {
                return not_found(resource, n);
            };
            let sent_rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_owned);
            let stored_rv = current
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if let Some(rv) = sent_rv {
                if rv != stored_rv {
                    return status(
                        409,
                        "Conflict",
                        format!("Operation cannot be fulfilled on {resource} \"{n}\": the object has been modified; please apply your changes to the latest version and try again"),
                        resource,
                        n,
                    );
                }
            }
            if resource == "secrets" {
                if let Err(e) = validate_secret(&obj) {
                    return status(
                        422,
                        "Invalid",
                        format!("Secret \"{n}\" is invalid: {e}"),
                        resource,
                        n,
                    );
                }
            }
            // Server-owned metadata is kept.
            for f in ["uid", "creationTimestamp", "namespace", "generation"] {
                if let Some(v) = current.pointer(&format!("/metadata/{f}")) {
                    obj["metadata"][f] = v.clone();
                }
            }
            if has_generation(resource) {
                obj["status"] = current.get("status").cloned().unwrap_or(Value::Null);
            }
            commit(&mut s, resource, ns, n, &current, obj)
        }
        (Method::PATCH, Some(n)) => {
            let Some(current) = s.get(resource, ns, n).cloned() else {
                return not_found(resource, n);
            };
            let ctype = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let patch: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => {
                    return status(400, "BadRequest", format!("invalid JSON: {e}"), resource, n)
                }
            };
            let mut obj = current.clone();
            if ctype.starts_with("application/merge-patch+json") {
                merge_patch(&mut obj, &patch);
            } else if ctype.starts_with("application/strategic-merge-patch+json") {
                strategic_merge(&mut obj, &patch, "");
            } else {
                return status(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {ctype})"), resource, n);
            }
            if let Some(rv) = patch
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                if Some(rv)
                    != current
                        .pointer("/metadata/resourceVersion")
                        .and_then(Value::as_str)
                {
                    return status(409, "Conflict", format!("Operation cannot be fulfilled on {resource} \"{n}\": the object has been modified; please apply your changes to the latest version and try again"), resource, n);
                }
            }
            for f in [
                "uid",
                "creationTimestamp",
                "namespace",
                "generation",
                "name",
            ] {
                if let Some(v) = current.pointer(&format!("/metadata/{f}")) {
                    obj["metadata"][f] = v.clone();
                }
            }
            if resource == "secrets" {
                if let Err(e) = validate_secret(&obj) {
                    return status(
                        422,
                        "Invalid",
                        format!("Secret \"{n}\" is invalid: {e}"),
                        resource,
                        n,
                    );
                }
            }
            commit(&mut s, resource, ns, n, &current, obj)
        }
        (Method::DELETE, Some(n)) => match s.objects.remove(&key(resource, ns, n)) {
            Some(o) => Json(o).into_response(),
            None => not_found(resource, n),
        },
        _ => status(
            405,
            "MethodNotAllowed",
            "method not allowed".into(),
            resource,
            name.unwrap_or(""),
        ),
    }
}

fn commit(
    s: &mut Store,
    resource: &str,
    ns: &str,
    n: &str,
    current: &Value,
    mut obj: Value,
) -> Response {
    if has_generation(resource) && obj.get("spec") != current.get("spec") {
        let g = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        obj["metadata"]["generation"] = json!(g + 1);
    }
    obj["metadata"]["resourceVersion"] = json!(s.bump());
    s.objects.insert(key(resource, ns, n), obj.clone());
    Json(obj).into_response()
}

/// Resources whose `metadata.generation` counts spec changes (the built-in workloads and
/// custom resources with a status subresource).
fn has_generation(resource: &str) -> bool {
    matches!(resource, "deployments" | "externalsecrets")
}

/// The integer at JSON pointer `ptr` in `v`, or `default` when absent.
fn int_at(v: &Value, ptr: &str, default: i64) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(default)
}

/// One tick of the deployment controller: moves each Deployment's status one replica closer to
/// its spec.
pub fn reconcile(s: &mut Store) {
    let keys: Vec<Key> = s
        .objects
        .keys()
        .filter(|(r, _, _)| r == "deployments")
        .cloned()
        .collect();
    for k in keys {
        let Some(d) = s.objects.get(&k).cloned() else {
            continue;
        };
        let generation = int_at(&d, "/metadata/generation", 1);
        let want = int_at(&d, "/spec/replicas", 1);
        let st = d.get("status").cloned().unwrap_or(json!({}));
        let observed = int_at(&st, "/observedGeneration", 0);
        let updated = int_at(&st, "/updatedReplicas", 0);
        let total = int_at(&st, "/replicas", 0);
        let new_status = if observed < generation {
            // A new template: the controller observes it; no pod is updated yet (old pods remain).
            json!({"observedGeneration": generation, "replicas": want, "updatedReplicas": 0, "readyReplicas": want, "availableReplicas": want,
                   "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]})
        } else if updated < want {
            // Surge one new pod, then retire one old pod.
            json!({"observedGeneration": generation, "replicas": want + 1, "updatedReplicas": updated + 1, "readyReplicas": want, "availableReplicas": want,
                   "conditions": [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]})
        } else if total != want {
            json!({"observedGeneration": generation, "replicas": want, "updatedReplicas": want, "readyReplicas": want, "availableReplicas": want,
                   "conditions": [{"type": "Available", "status": "True"}, {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]})
        } else {
            continue;
        };
        let mut d = d;
        d["status"] = new_status;
        d["metadata"]["resourceVersion"] = json!(s.bump());
        s.objects.insert(k, d);
    }
}

/// The API router for one cluster.
pub fn router(cluster: Cluster) -> Router {
    let mut r = Router::new()
        .route(
            "/version",
            get(|| async {
                Json(json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0-cutover-sandbox"}))
            }),
        )
        .route("/api/v1/namespaces", axum::routing::post(create_namespace))
        .route("/api/v1/namespaces/{name}", get(namespace));
    // One collection and one item route per API group path of SERVED.
    let mut prefixes: Vec<&str> = SERVED.iter().map(|(_, p)| *p).collect();
    prefixes.dedup();
    for prefix in prefixes {
        r = r
            .route(
                &format!("{prefix}namespaces/{{ns}}/{{resource}}"),
                get(collection).post(collection),
            )
            .route(
                &format!("{prefix}namespaces/{{ns}}/{{resource}}/{{name}}"),
                get(item).put(item).patch(item).delete(item),
            );
    }
    r.with_state(cluster)
}

/// Runs the deployment controller for `cluster` forever, one tick every 300 ms.
pub async fn controller(cluster: Cluster) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut s = cluster.lock().unwrap_or_else(|p| p.into_inner());
        reconcile(&mut s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_deletes_nulls_and_merges_maps() {
        let mut t = json!({"a": {"b": 1, "c": 2}, "d": [1]});
        merge_patch(&mut t, &json!({"a": {"b": null, "e": 3}, "d": [2]}));
        assert_eq!(t, json!({"a": {"c": 2, "e": 3}, "d": [2]}));
    }

    #[test]
    fn strategic_merge_merges_containers_by_name() {
        let mut t =
            json!({"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]});
        strategic_merge(
            &mut t,
            &json!({"containers": [{"name": "b", "image": "z"}]}),
            "",
        );
        assert_eq!(t["containers"][1]["image"], "z");
        assert_eq!(t["containers"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn controller_moves_a_rollout_to_completion() {
        let mut s = Store::default();
        s.seed("namespaces", "", json!({"metadata": {"name": "shop"}}));
        s.seed("deployments", "shop", json!({"metadata": {"name": "api"}, "spec": {"replicas": 2}, "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}));
        let k = key("deployments", "shop", "api");
        let cur = s.objects[&k].clone();
        let mut next = cur.clone();
        next["spec"]["template"] = json!({"metadata": {"annotations": {"x": "1"}}});
        let _ = commit(&mut s, "deployments", "shop", "api", &cur, next);
        assert_eq!(s.objects[&k]["metadata"]["generation"], 2);
        let mut ticks = 0;
        loop {
            reconcile(&mut s);
            ticks += 1;
            let st = &s.objects[&k]["status"];
            if st["observedGeneration"] == 2 && st["updatedReplicas"] == 2 && st["replicas"] == 2 {
                break;
            }
            assert!(ticks < 10, "rollout never completed: {st}");
        }
        assert!(ticks >= 3, "a rollout must take several controller ticks");
    }
}
