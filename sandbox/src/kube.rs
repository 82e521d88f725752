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
//! - Deployments: `metadata.generation` increments when the spec changes; a deployment
//!   controller ([`reconcile`]) replaces pods as a RollingUpdate does (`maxSurge` and
//!   `maxUnavailable`, 25% by default), each new pod ready [`pod_ready_delay`] after it starts
//!   (`CUTOVER_SANDBOX_POD_READY`, default 2 s), and reports `status` as the real controller does,
//!   so clients wait for a rollout as they would on a real cluster. A pod resolves the Secret
//!   keys its environment names when it starts and keeps them ([`Store::ready_pod_env`]): the
//!   application reaches a new database only through pods started after the Secret changed.
//!
//! - Jobs (`/apis/batch/v1/...`) with a Job controller ([`jobs`]): Indexed Jobs' pods of the
//!   `cutover` image run as local processes with `JOB_COMPLETION_INDEX`, `backoffLimit`, pod
//!   failure policies, status and conditions as a v1.31 controller writes them; a Job deleted
//!   without a cascading `propagationPolicy` orphans its pods, as the API does.
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
use tokio::time::Instant;

mod jobs;
pub use jobs::reconcile_jobs;

/// One cluster's objects, keyed by (resource, namespace, name).
pub struct Store {
    objects: BTreeMap<(String, String, String), Value>,
    next_rv: u64,
    uid_counter: u64,
    /// Each Deployment's pods (the deployment controller's view), with the Deployment's uid
    /// (a Deployment deleted and created again gets new pods).
    pods: BTreeMap<Key, (String, Vec<Pod>)>,
    /// How long a new pod takes to become ready ([`pod_ready_delay`]).
    pub pod_ready: Duration,
    /// The latest resourceVersion, published on every write: what watchers of the cluster
    /// (the pooler's sidecar) wait on.
    changes: tokio::sync::watch::Sender<u64>,
    /// Each Job's pods and counts (the Job controller's view, [`jobs`]).
    jobs: BTreeMap<Key, jobs::JobRun>,
    /// Pods of Jobs deleted without cascading, running until they exit.
    orphans: Vec<jobs::Orphan>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            objects: BTreeMap::new(),
            next_rv: 0,
            uid_counter: 0,
            pods: BTreeMap::new(),
            pod_ready: DEFAULT_POD_READY,
            changes: tokio::sync::watch::channel(0).0,
            jobs: BTreeMap::new(),
            orphans: Vec::new(),
        }
    }
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
        self.changes.send_replace(self.next_rv);
        self.next_rv.to_string()
    }

    /// A receiver that sees every later write to the cluster (its resourceVersion).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
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

    /// The keys of every stored object of `resource`.
    fn keys_of(&self, resource: &str) -> Vec<Key> {
        self.objects
            .keys()
            .filter(|(r, _, _)| r == resource)
            .cloned()
            .collect()
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
        "jobs" => ("Job", "batch/v1"),
        _ => ("Namespace", "v1"),
    }
}

/// The resources served, each with the path prefix of its API group and version.
const SERVED: [(&str, &str); 5] = [
    ("secrets", "/api/v1/"),
    ("deployments", "/apis/apps/v1/"),
    ("externalsecrets", "/apis/external-secrets.io/v1/"),
    ("secretstores", "/apis/external-secrets.io/v1/"),
    ("jobs", "/apis/batch/v1/"),
];

/// Whether `resource` is served under the request path `path`.
fn served(resource: &str, path: &str) -> bool {
    SERVED
        .iter()
        .any(|(r, prefix)| *r == resource && path.starts_with(prefix))
}

/// Validates a Secret being written and folds its `stringData` into `data`, as the API server
/// does ("merged into the data field on write, overwriting any existing values"; `stringData`
/// is never output when reading).
fn validate_secret(obj: &mut Value) -> Result<(), String> {
    if let Some(Value::Object(strings)) = obj.as_object_mut().and_then(|o| o.remove("stringData")) {
        use base64::Engine as _;
        if !obj["data"].is_object() {
            obj["data"] = json!({});
        }
        for (k, v) in strings {
            let s = v
                .as_str()
                .ok_or_else(|| format!("stringData[{k}]: must be a string"))?;
            obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
        }
    }
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
    handle(
        c,
        method,
        &ns,
        &resource,
        None,
        HeaderMap::new(),
        body,
        None,
    )
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
    handle(
        c,
        method,
        &ns,
        &resource,
        Some(&name),
        headers,
        body,
        uri.query(),
    )
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
    query: Option<&str>,
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
                if let Err(e) = validate_secret(&mut obj) {
                    return status(
                        422,
                        "Invalid",
                        format!("Secret \"{n}\" is invalid: {e}"),
                        resource,
                        &n,
                    );
                }
            }
            if resource == "jobs" {
                if let Err(e) = jobs::admit(&mut obj) {
                    return status(
                        422,
                        "Invalid",
                        format!("Job.batch \"{n}\" is invalid: {e}"),
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
                if let Err(e) = validate_secret(&mut obj) {
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
                if let Err(e) = validate_secret(&mut obj) {
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
            Some(o) => {
                if resource == "jobs" {
                    // DeleteOptions in the body (kube-rs) or the query: only Background and
                    // Foreground delete a Job's pods; the default for a Job is Orphan.
                    let policy = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|b| b["propagationPolicy"].as_str().map(String::from))
                        .or_else(|| {
                            query.and_then(|q| {
                                q.split('&')
                                    .find_map(|kv| kv.strip_prefix("propagationPolicy="))
                                    .map(String::from)
                            })
                        });
                    let cascade = matches!(policy.as_deref(), Some("Background" | "Foreground"));
                    s.job_deleted(&key(resource, ns, n), cascade);
                }
                s.bump();
                Json(o).into_response()
            }
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
    matches!(resource, "deployments" | "externalsecrets" | "jobs")
}

/// The integer at JSON pointer `ptr` in `v`, or `default` when absent.
fn int_at(v: &Value, ptr: &str, default: i64) -> i64 {
    v.pointer(ptr).and_then(Value::as_i64).unwrap_or(default)
}

/// How long a new pod takes to become ready when `CUTOVER_SANDBOX_POD_READY` does not say
/// (a duration such as `2s`): image pull, start and the first passing readiness probe, which on
/// a real cluster take from a few seconds to tens of seconds; kept short so the suite stays
/// short, while a rollout of two replicas still takes over 4 s.
pub const DEFAULT_POD_READY: Duration = Duration::from_secs(2);

/// The pod readiness delay this process uses: `CUTOVER_SANDBOX_POD_READY` or
/// [`DEFAULT_POD_READY`].
pub fn pod_ready_delay() -> Duration {
    std::env::var("CUTOVER_SANDBOX_POD_READY")
        .ok()
        .and_then(|v| cutover::config::duration::parse_duration(&v).ok())
        .unwrap_or(DEFAULT_POD_READY)
}

/// One pod of a Deployment, as the controller keeps it (pods are not served by the API: the
/// tool never reads them).
#[derive(Debug, Clone)]
pub struct Pod {
    /// The Deployment generation whose template it runs.
    generation: i64,
    /// When it becomes ready.
    ready_at: Instant,
    /// Its containers' environment, resolved when it started (a `secretKeyRef` is read then and
    /// never again, as the kubelet does).
    env: BTreeMap<String, String>,
    /// Unique in the cluster: the name of its local process, when it has one.
    id: u64,
    /// The arguments of its `cutover` container, which the sandbox runs as a local process
    /// ([`crate::kubelet`]); `None` for the application's pods, which are simulated.
    run: Option<Vec<String>>,
}

/// A pod the sandbox runs as a local process: a `cutover` container of a Deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPod {
    /// The pod's id in its cluster.
    pub id: u64,
    /// Its owner's namespace.
    pub namespace: String,
    /// Its owner: the Deployment's name, or `<job>-<index>` for a Job's pod; its log and pid
    /// files are named `<namespace>.<owner>`.
    pub owner: String,
    /// The container's arguments (after the image's `cutover` entrypoint).
    pub args: Vec<String>,
    /// The container's environment, resolved when the pod was created.
    pub env: BTreeMap<String, String>,
    /// Started again when it exits (`restartPolicy: Always`, a Deployment's); a Job's pod is
    /// not (`Never`): its exit code goes to the Job controller ([`Store::pod_exited`]).
    pub restart: bool,
}

/// The arguments of a pod template's container that runs the `cutover` image (any registry,
/// any tag: the repository's last path segment is `cutover`): its `command` after the
/// entrypoint, then its `args`.
fn cutover_container(template: &Value) -> Option<Vec<String>> {
    let containers = template.pointer("/spec/containers")?.as_array()?;
    containers.iter().find_map(|c| {
        let image = c["image"].as_str()?;
        let repo = image.rsplit('/').next()?.split([':', '@']).next()?;
        if repo != "cutover" {
            return None;
        }
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut args: Vec<String> = strings(&c["command"]).into_iter().skip(1).collect();
        args.extend(strings(&c["args"]));
        Some(args)
    })
}

/// A RollingUpdate bound (`maxSurge`, `maxUnavailable`): an integer or a percentage of
/// `replicas`, rounded up for the surge and down for unavailability, as the deployment
/// controller does; `default` when absent.
fn rolling_bound(v: Option<&Value>, replicas: i64, round_up: bool, default_pct: i64) -> i64 {
    let pct = |p: i64| {
        if round_up {
            (replicas * p + 99) / 100
        } else {
            replicas * p / 100
        }
    };
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(t)) if t.ends_with('%') => {
            pct(t.trim_end_matches('%').parse().unwrap_or(default_pct))
        }
        _ => pct(default_pct),
    }
}

impl Store {
    /// The environment of a new pod of template `template` in `ns`: each `env` entry's value,
    /// or the current value of the Secret key its `secretKeyRef` names.
    fn resolve_env(&self, ns: &str, template: &Value) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let containers = template
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in containers {
            for e in c["env"].as_array().cloned().unwrap_or_default() {
                let Some(name) = e["name"].as_str() else {
                    continue;
                };
                if let Some(v) = e["value"].as_str() {
                    env.insert(name.to_string(), v.to_string());
                } else if let Some(r) = e.pointer("/valueFrom/secretKeyRef") {
                    let value = self
                        .get("secrets", ns, r["name"].as_str().unwrap_or_default())
                        .and_then(|s| {
                            s.pointer(&format!("/data/{}", r["key"].as_str().unwrap_or_default()))
                        })
                        .and_then(Value::as_str)
                        .and_then(|b| {
                            use base64::Engine as _;
                            base64::engine::general_purpose::STANDARD.decode(b).ok()
                        })
                        .map(|b| String::from_utf8_lossy(&b).into_owned());
                    if let Some(v) = value {
                        env.insert(name.to_string(), v);
                    }
                }
            }
            // envFrom: every key of each Secret named, as the kubelet reads them at the start.
            for from in c["envFrom"].as_array().cloned().unwrap_or_default() {
                let Some(secret) = from.pointer("/secretRef/name").and_then(Value::as_str) else {
                    continue;
                };
                let data = self
                    .get("secrets", ns, secret)
                    .and_then(|s| s.get("data"))
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                for (k, v) in data {
                    use base64::Engine as _;
                    if let Some(b) = v
                        .as_str()
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    {
                        env.insert(k, String::from_utf8_lossy(&b).into_owned());
                    }
                }
            }
        }
        env
    }

    /// The pods the sandbox runs as local processes: every Deployment's and Job's of the
    /// cluster.
    pub fn local_pods(&self) -> Vec<LocalPod> {
        let mut out = Vec::new();
        for ((_, ns, name), (_, pods)) in &self.pods {
            for p in pods {
                if let Some(args) = &p.run {
                    out.push(LocalPod {
                        id: p.id,
                        namespace: ns.clone(),
                        owner: name.clone(),
                        args: args.clone(),
                        env: p.env.clone(),
                        restart: true,
                    });
                }
            }
        }
        out.extend(self.job_local_pods());
        out
    }

    fn pod(
        &mut self,
        generation: i64,
        ready_at: Instant,
        env: BTreeMap<String, String>,
        run: Option<Vec<String>>,
    ) -> Pod {
        self.uid_counter += 1;
        Pod {
            generation,
            ready_at,
            env,
            id: self.uid_counter,
            run,
        }
    }

    /// The environment of each ready pod of Deployment `ns/name`, oldest pod first.
    pub fn ready_pods_env(&self, ns: &str, name: &str) -> Vec<BTreeMap<String, String>> {
        let now = Instant::now();
        self.pods
            .get(&key("deployments", ns, name))
            .map(|(_, pods)| {
                pods.iter()
                    .filter(|p| p.ready_at <= now)
                    .map(|p| p.env.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The value of `var` in each ready pod of Deployment `ns/name`, oldest pod first: what a
    /// Service in front of them would route to.
    pub fn ready_pod_env(&self, ns: &str, name: &str, var: &str) -> Vec<String> {
        let now = Instant::now();
        self.pods
            .get(&key("deployments", ns, name))
            .map(|(_, pods)| {
                pods.iter()
                    .filter(|p| p.ready_at <= now)
                    .filter_map(|p| p.env.get(var).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One tick of the deployment controller: per Deployment, creates pods of the current template
/// up to `maxSurge` above `replicas` (default 25%, rounded up), each ready
/// [`pod_ready_delay`] after it was created, and deletes old pods as long as at least `replicas`
/// minus `maxUnavailable` (default 25%, rounded down) stay ready; then writes `status`
/// (observedGeneration, replicas, updatedReplicas, readyReplicas, availableReplicas and the
/// Available / Progressing conditions) when it changed.
pub fn reconcile(s: &mut Store) {
    let now = Instant::now();
    let keys = s.keys_of("deployments");
    s.pods.retain(|k, _| keys.contains(k));
    for k in keys {
        let Some(d) = s.objects.get(&k).cloned() else {
            continue;
        };
        let uid = d
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let generation = int_at(&d, "/metadata/generation", 1);
        let want = int_at(&d, "/spec/replicas", 1);
        let ru = d.pointer("/spec/strategy/rollingUpdate");
        let mut surge = rolling_bound(ru.and_then(|r| r.get("maxSurge")), want, true, 25);
        let unavailable = rolling_bound(ru.and_then(|r| r.get("maxUnavailable")), want, false, 25);
        if surge == 0 && unavailable == 0 {
            surge = 1;
        }
        let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
        if s.pods.get(&k).is_none_or(|(u, _)| *u != uid) {
            // A Deployment seeded with a status had its pods running before the controller
            // started: ready now, of the generation the status reports. A new one has none.
            let pods = match d
                .pointer("/status/observedGeneration")
                .and_then(Value::as_i64)
            {
                Some(g) => {
                    let env = s.resolve_env(&k.1, &template);
                    let run = cutover_container(&template);
                    (0..want)
                        .map(|_| s.pod(g, now, env.clone(), run.clone()))
                        .collect()
                }
                None => Vec::new(),
            };
            s.pods.insert(k.clone(), (uid, pods));
        }
        let env = s.resolve_env(&k.1, &template);
        let run = cutover_container(&template);
        let delay = s.pod_ready;
        let is_new = |p: &Pod| p.generation == generation;
        // Scale up the new pods within the surge.
        loop {
            let pods = &s.pods.get(&k).expect("inserted above").1;
            if (pods.iter().filter(|p| is_new(p)).count() as i64) >= want
                || (pods.len() as i64) >= want + surge
            {
                break;
            }
            let pod = s.pod(generation, now + delay, env.clone(), run.clone());
            s.pods.get_mut(&k).expect("inserted above").1.push(pod);
        }
        let pods = &mut s.pods.get_mut(&k).expect("inserted above").1;
        // Scale down old pods (unready ones first) while enough stay ready.
        loop {
            let ready = pods.iter().filter(|p| p.ready_at <= now).count() as i64;
            let old_unready = pods.iter().position(|p| !is_new(p) && p.ready_at > now);
            let old_ready = pods.iter().position(|p| !is_new(p) && p.ready_at <= now);
            match (old_unready, old_ready) {
                (Some(i), _) => {
                    pods.remove(i);
                }
                (None, Some(i)) if ready > want - unavailable => {
                    pods.remove(i);
                }
                _ => break,
            }
        }
        // Scale down surplus new pods (replicas lowered).
        while pods.iter().filter(|p| is_new(p)).count() as i64 > want {
            if let Some(i) = pods.iter().rposition(&is_new) {
                pods.remove(i);
            }
        }
        let total = pods.len() as i64;
        let updated = pods.iter().filter(|p| is_new(p)).count() as i64;
        let ready = pods.iter().filter(|p| p.ready_at <= now).count() as i64;
        let complete = updated == want && total == want && ready == want;
        let conditions = if complete {
            json!([{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                   {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}])
        } else {
            json!([{"type": "Available", "status": if ready >= want - unavailable { "True" } else { "False" }, "reason": "MinimumReplicasAvailable"},
                   {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}])
        };
        let new_status = json!({"observedGeneration": generation, "replicas": total, "updatedReplicas": updated,
                                "readyReplicas": ready, "availableReplicas": ready, "unavailableReplicas": total - ready,
                                "conditions": conditions});
        if d.get("status") == Some(&new_status) {
            continue;
        }
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

/// Runs the deployment and Job controllers for `cluster` forever: a tick after every write to
/// the cluster (an API request, a pod's exit) and at the next moment a tick would change
/// something (a pod becoming ready, a failed Job pod's back-off ending), as a real controller
/// works from watch events and requeues; at least one every 5 s. Every sandbox runs three
/// clusters, several sandboxes at once in the suite: a fixed fine tick only costs CPU.
pub async fn controller(cluster: Cluster) {
    let mut changes = cluster.lock().unwrap_or_else(|p| p.into_inner()).changes();
    loop {
        let next = {
            let mut s = cluster.lock().unwrap_or_else(|p| p.into_inner());
            reconcile(&mut s);
            reconcile_jobs(&mut s);
            s.next_deadline()
        };
        let now = Instant::now();
        let wait = next
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or(Duration::from_secs(5))
            .min(Duration::from_secs(5));
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

impl Store {
    /// The earliest moment after now at which a controller tick would change something
    /// without a write: a Deployment's or Job's pod becoming ready, a Job's back-off ending.
    fn next_deadline(&self) -> Option<Instant> {
        let now = Instant::now();
        let pods = self
            .pods
            .values()
            .flat_map(|(_, pods)| pods.iter().map(|p| p.ready_at));
        pods.chain(self.job_deadlines()).filter(|t| *t > now).min()
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
    fn controller_replaces_pods_one_at_a_time_and_new_pods_read_the_secret_as_it_is_then() {
        let mut s = Store {
            pod_ready: Duration::from_millis(40),
            ..Store::default()
        };
        s.seed("namespaces", "", json!({"metadata": {"name": "shop"}}));
        let secret = |v: &str| {
            use base64::Engine as _;
            json!({"metadata": {"name": "db"}, "data": {"URL": base64::engine::general_purpose::STANDARD.encode(v)}})
        };
        s.seed("secrets", "shop", secret("old"));
        let template = json!({"spec": {"containers": [{"name": "app", "env": [{"name": "URL", "valueFrom": {"secretKeyRef": {"name": "db", "key": "URL"}}}]}]}});
        s.seed("deployments", "shop", json!({"metadata": {"name": "api"}, "spec": {"replicas": 2, "template": template}, "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}}));
        reconcile(&mut s);
        assert_eq!(s.ready_pod_env("shop", "api", "URL"), ["old", "old"]);
        // The Secret changes: running pods keep what they read.
        s.put("secrets", "shop", secret("new"));
        reconcile(&mut s);
        assert_eq!(s.ready_pod_env("shop", "api", "URL"), ["old", "old"]);
        // A restart: new template generation.
        let k = key("deployments", "shop", "api");
        let cur = s.objects[&k].clone();
        let mut next = cur.clone();
        next["spec"]["template"]["metadata"] = json!({"annotations": {"restartedAt": "now"}});
        let _ = commit(&mut s, "deployments", "shop", "api", &cur, next);
        let started = std::time::Instant::now();
        let mut seen_mixed = false;
        loop {
            reconcile(&mut s);
            let st = s.objects[&k]["status"].clone();
            // maxUnavailable 25% of 2 rounds down to 0: two pods ready at all times.
            assert!(st["readyReplicas"].as_i64().unwrap() >= 2, "{st}");
            assert!(
                st["replicas"].as_i64().unwrap() <= 3,
                "maxSurge 25% of 2 is 1: {st}"
            );
            let urls = s.ready_pod_env("shop", "api", "URL");
            seen_mixed |= urls.contains(&"old".to_string()) && urls.contains(&"new".to_string());
            if st["updatedReplicas"] == 2 && st["replicas"] == 2 && st["availableReplicas"] == 2 {
                assert_eq!(urls, ["new", "new"]);
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "rollout never completed: {st}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            seen_mixed,
            "old and new pods serve together during the rollout"
        );
        // Two pods replaced one after the other, each after its readiness delay.
        assert!(started.elapsed() >= Duration::from_millis(80));
    }
}
