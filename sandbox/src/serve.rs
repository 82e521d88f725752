//! `cutover-sandbox serve`: the long-running part of the sandbox. One Kubernetes API emulator per
//! environment's EKS cluster, each seeded with namespace `shop`, Secret `shop-db` (the legacy
//! connection URL) and Deployments `shop-api` and `shop-worker`, and the second service's
//! namespace `letters`, Secret `letters-db` (kept by an ExternalSecret from Secrets Manager, see
//! [`crate::eso`]) and Deployment `letters-api`; the AWS-side application per
//! environment, whose `/healthz` connects to the database a ready `shop-api` pod read from the
//! cluster's Secret when it started (the pods take the Secret as environment variables, so a new
//! value reaches the application through a rollout) and whose `POST /orders` writes through it; and the
//! legacy application; both sides serve the users' `/shop` page and `/metrics`
//! ([`crate::traffic`]).

use crate::kube::{self, Cluster};
use crate::listen::Listeners;
use crate::state::{State, ENVIRONMENTS};
use anyhow::Result;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The environment whose users browse from the start (the one the README and most tests
/// rehearse); the others' start when their cluster's API is first used.
const ALWAYS_IN_USE: &str = "staging";

/// Seeds namespace `ns` with Secret `secret` (key `DATABASE_URL` = `url`) and the service's
/// Deployments `(name, replicas)`, each reading the Secret as its pods' environment.
fn seed_service(
    store: &mut kube::Store,
    ns: &str,
    secret: &str,
    url: &str,
    deployments: &[(&str, i64)],
    extra_env: &[Value],
) {
    store.seed(
        "namespaces",
        "",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
    );
    let url = base64::engine::general_purpose::STANDARD.encode(url);
    let mut env = vec![
        json!({"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": "DATABASE_URL"}}}),
    ];
    env.extend(extra_env.iter().cloned());
    store.seed("secrets", ns, json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": secret, "labels": {"app": ns}}, "data": {"DATABASE_URL": url}}));
    for (name, replicas) in deployments {
        store.seed(
            "deployments",
            ns,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                         "template": {"metadata": {"labels": {"app": name}},
                                      "spec": {"containers": [{"name": "app", "image": format!("registry.example-shop.com/{name}:1.0"),
                                                               "env": env}]}}},
                "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                           "conditions": [{"type": "Available", "status": "True"}]}
            }),
        );
    }
}

fn seed_cluster(s: &State, env: &str) -> Cluster {
    let mut store = kube::Store::default();
    store.pod_ready = kube::pod_ready_delay();
    seed_service(
        &mut store,
        "shop",
        "shop-db",
        // The application reaches its database through its pooler from the start.
        &s.pooler_app_url(env),
        &[("shop-api", 2), ("shop-worker", 1)],
        // The users' files: where Secret shop-storage says (the legacy Space at first).
        &[
            json!({"name": "STORAGE_URL", "valueFrom": {"secretKeyRef": {"name": "shop-storage", "key": "STORAGE_URL"}}}),
            json!({"name": "STORAGE_FALLBACK_URL", "valueFrom": {"secretKeyRef": {"name": "shop-storage", "key": "STORAGE_FALLBACK_URL", "optional": true}}}),
        ],
    );
    if !s.spaces_ports.is_empty() {
        let storage = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}/{}",
            crate::spaces::endpoint(s),
            crate::spaces::bucket(env)
        ));
        store.seed(
            "secrets",
            "shop",
            json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                   "metadata": {"name": "shop-storage", "labels": {"app": "shop"}},
                   "data": {"STORAGE_URL": storage}}),
        );
    }
    seed_service(
        &mut store,
        "letters",
        "letters-db",
        &s.letters_url(env, "letters", false),
        &[("letters-api", 1)],
        &[],
    );
    // The pooler's [databases] file, which its pods' sidecar writes to disk ([`crate::pooler`]).
    let file =
        base64::engine::general_purpose::STANDARD.encode(crate::pooler::databases_ini(s, env));
    store.seed(
        "secrets",
        crate::pooler::SECRET_NAMESPACE,
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
               "metadata": {"name": crate::pooler::SECRET, "labels": {"app": "pgbouncer"}},
               "data": {crate::pooler::KEY: file}}),
    );
    seed_external_secret(&mut store, env);
    Arc::new(Mutex::new(store))
}

/// How often the letters ExternalSecret refreshes: short, so that a test sees several refreshes.
pub const LETTERS_REFRESH: &str = "3s";

/// Secret letters/letters-db as the External Secrets Operator keeps it: SecretStore
/// `aws-secrets-manager` (AWS provider, Secrets Manager) and ExternalSecret `letters-db`, whose
/// `DATABASE_URL` is the property of the same name of Secrets Manager secret `letters-<env>/db`;
/// the Secret carries the ExternalSecret's ownerReference, as the operator's first sync leaves it.
fn seed_external_secret(store: &mut kube::Store, env: &str) {
    store.seed(
        "secretstores",
        "letters",
        json!({"apiVersion": "external-secrets.io/v1", "kind": "SecretStore",
               "metadata": {"name": "aws-secrets-manager"},
               "spec": {"provider": {"aws": {"service": "SecretsManager", "region": crate::state::REGION,
                                             "auth": {"jwt": {"serviceAccountRef": {"name": "external-secrets"}}}}}}}),
    );
    store.seed(
        "externalsecrets",
        "letters",
        json!({"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
               "metadata": {"name": "letters-db"},
               "spec": {"refreshInterval": LETTERS_REFRESH,
                        "secretStoreRef": {"name": "aws-secrets-manager", "kind": "SecretStore"},
                        "target": {"name": "letters-db", "creationPolicy": "Owner"},
                        "data": [{"secretKey": "DATABASE_URL",
                                  "remoteRef": {"key": State::letters_upstream_name(env), "property": "DATABASE_URL"}}]}}),
    );
    let uid = store
        .get("externalsecrets", "letters", "letters-db")
        .and_then(|e| e.pointer("/metadata/uid").cloned())
        .unwrap_or(Value::Null);
    if let Some(mut secret) = store.get("secrets", "letters", "letters-db").cloned() {
        secret["metadata"]["ownerReferences"] = json!([{"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
            "name": "letters-db", "uid": uid, "controller": true, "blockOwnerDeletion": true}]);
        store.put("secrets", "letters", secret);
    }
}

/// Connects as the application does: over TLS as the URL's `sslmode` and `sslrootcert` say
/// (the servers refuse plaintext), through the client code `cutover` uses; the server's message
/// on failure.
async fn app_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    cutover::providers::postgres::connect(url, cutover::providers::postgres::Server::Application)
        .await
        .map_err(|e| match e {
            cutover::providers::ProviderError::Postgres { message, .. } => message,
            other => other.to_string(),
        })
}

/// `SELECT 1` through `url` within 3 s. A check slower than 500 ms is logged (serve.log) with
/// where its time went, for a test that saw a slow answer.
async fn database_health(url: &str) -> Result<(), String> {
    let start = std::time::Instant::now();
    let client = tokio::time::timeout(Duration::from_secs(3), app_connect(url))
        .await
        .map_err(|_| "connect timed out".to_string())??;
    let connected = start.elapsed();
    // Unnamed statements only, as an application behind a transaction-mode pooler uses.
    let result = client
        .query_typed("SELECT 1", &[])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    if start.elapsed() > Duration::from_millis(500) {
        eprintln!(
            "serve: slow health check: connect {} ms, SELECT 1 {} ms",
            connected.as_millis(),
            (start.elapsed() - connected).as_millis()
        );
    }
    result
}

fn health_response(result: Result<(), String>, side: &str) -> (StatusCode, Json<Value>) {
    match result {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ok", "side": side}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unhealthy", "side": side, "error": e})),
        ),
    }
}

/// The URL the shop's pods use: the `DATABASE_URL` of the `shop-api` pod this request reaches.
fn secret_url(cluster: &Cluster) -> Option<String> {
    service_url(cluster, "shop", "shop-api")
}

/// Requests served so far: the round-robin position over ready pods.
static REQUESTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The `DATABASE_URL` of the ready pod of Deployment `ns/deployment` this request reaches, as a
/// Service balancing over ready pods routes it (round-robin): each pod read the Secret when it
/// started, so during a rollout old and new pods answer with the old and the new database.
fn service_url(cluster: &Cluster, ns: &str, deployment: &str) -> Option<String> {
    let s = cluster.lock().unwrap_or_else(|p| p.into_inner());
    let urls = s.ready_pod_env(ns, deployment, "DATABASE_URL");
    if urls.is_empty() {
        return None;
    }
    let i = REQUESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Some(urls[i % urls.len()].clone())
}

async fn aws_health(AxState(cluster): AxState<Cluster>) -> (StatusCode, Json<Value>) {
    match secret_url(&cluster) {
        None => health_response(
            Err("no ready pod of deployment shop/shop-api".into()),
            "aws",
        ),
        Some(u) => health_response(database_health(&u).await, "aws"),
    }
}

/// `GET /letters/healthz`: the second service's health, through its own Secret.
async fn letters_health(AxState(cluster): AxState<Cluster>) -> (StatusCode, Json<Value>) {
    match service_url(&cluster, "letters", "letters-api") {
        None => health_response(
            Err("no ready pod of deployment letters/letters-api".into()),
            "aws",
        ),
        Some(u) => health_response(database_health(&u).await, "aws"),
    }
}

/// `POST /orders`: the application's write path. Inserts one order through the database named
/// by the cluster's Secret and returns its id, as the real service would after the cutover.
async fn aws_create_order(AxState(cluster): AxState<Cluster>) -> (StatusCode, Json<Value>) {
    let Some(url) = secret_url(&cluster) else {
        return health_response(
            Err("no ready pod of deployment shop/shop-api".into()),
            "aws",
        );
    };
    let result = async {
        let client = app_connect(&url).await?;
        let rows = client
            .query_typed(
                "INSERT INTO orders (customer_id, status, total_cents, created_at) VALUES ((SELECT min(id) FROM customers), 'paid', 4200, now()) RETURNING id",
                &[],
            )
            .await
            .map_err(|e| e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string()))?;
        let row = rows.first().ok_or("INSERT returned no row")?;
        Ok::<i64, String>(row.get(0))
    }
    .await;
    match result {
        Ok(id) => (StatusCode::CREATED, Json(json!({"id": id, "side": "aws"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": e, "side": "aws"})),
        ),
    }
}

async fn legacy_health(AxState(url): AxState<Arc<String>>) -> (StatusCode, Json<Value>) {
    health_response(database_health(&url).await, "legacy")
}

/// Serves until killed, on the sockets `up` bound and passed down (see [`crate::listen`]).
pub async fn run(s: State) -> Result<()> {
    let mut sockets = Listeners::inherited()?;
    let mut tasks = Vec::new();
    let metrics = crate::traffic::Metrics::new(&ENVIRONMENTS);
    for env in ENVIRONMENTS {
        let cluster = seed_cluster(&s, env);
        let api = sockets.take(&format!("kube:{env}"))?;
        let app = sockets.take(&format!("app:{env}"))?;
        tasks.push(tokio::spawn(kube::controller(cluster.clone())));
        tasks.push(tokio::spawn(crate::kubelet::run(
            cluster.clone(),
            env,
            s.dir.clone(),
        )));
        tasks.push(tokio::spawn(crate::pooler::sidecar(
            cluster.clone(),
            crate::pooler::dir(&s.dir, env).join(crate::pooler::KEY),
        )));
        // Whether the environment is in use: staging from the start; dev and production from
        // the first request a client (not the sandbox's own probes) makes to their cluster's
        // API, which every run, dry-run and test on them makes before anything reads their
        // traffic. Until then their users do not browse and their resolvers do not look:
        // idle, an environment's users and Route 53 view cost a sandbox about a third of its
        // CPU, and the suite runs six sandboxes on two cores.
        let (active, mut in_use) = tokio::sync::watch::channel(env == ALWAYS_IN_USE);
        let active = Arc::new(active);
        // The operator and the users act with the account's role; the APIs serve meanwhile, and
        // a moto that is slow to answer delays them, never the sandbox.
        let (state, c) = (s.clone(), cluster.clone());
        tasks.push(tokio::spawn(async move {
            let aws = loop {
                // Read again on every try: a state written after this process started (a
                // reseeded moto, new account ids) is the one that counts.
                let current = State::load(&state.dir).unwrap_or_else(|| state.clone());
                match crate::seed::account_config(&current, env).await {
                    Ok(cfg) => break cfg,
                    Err(e) => {
                        eprintln!("serve: {env}: assuming the account's role: {e:#}; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            };
            tokio::join!(crate::eso::controller(c, aws.clone()), async {
                let _ = in_use.wait_for(|used| *used).await;
                crate::traffic::users(
                    env.to_string(),
                    State::domain(env),
                    aws,
                    state.app_ports.get(env).copied().unwrap_or(0),
                    state.legacy_app_port,
                )
                .await
            });
        }));
        let side = crate::traffic::Side {
            env: env.to_string(),
            metrics: metrics.clone(),
            fault: Default::default(),
        };
        let router = kube::router(cluster.clone()).layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let active = active.clone();
                async move {
                    if !req.headers().contains_key(crate::procs::PROBE_HEADER) {
                        active.send_if_modified(|used| !std::mem::replace(used, true));
                    }
                    next.run(req).await
                }
            },
        ));
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(api, router).await;
        }));
        let app_router = Router::new()
            .route("/healthz", get(aws_health))
            .route("/letters/healthz", get(letters_health))
            .route("/orders", axum::routing::post(aws_create_order))
            .with_state(cluster.clone())
            .merge(
                Router::new()
                    .route(
                        "/uploads/{*key}",
                        get(crate::uploads::get).put(crate::uploads::put),
                    )
                    .with_state(crate::uploads::Uploads {
                        cluster,
                        state: s.clone(),
                        env: env.to_string(),
                        aws: Default::default(),
                    }),
            )
            .merge(
                Router::new()
                    .route("/shop", get(crate::traffic::aws_page))
                    .route("/metrics", get(crate::traffic::aws_metrics))
                    .route(
                        "/_sandbox/faults",
                        axum::routing::post(crate::traffic::set_fault),
                    )
                    .with_state(side),
            );
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(app, app_router).await;
        }));
    }
    let legacy = sockets.take("legacy")?;
    let legacy_url = Arc::new(s.legacy_app_url("production"));
    let legacy_router = Router::new()
        .route("/healthz", get(legacy_health))
        .with_state(legacy_url)
        .merge(
            Router::new()
                .route("/shop", get(crate::traffic::legacy_page))
                .route("/metrics", get(crate::traffic::legacy_metrics))
                .with_state(metrics),
        );
    tasks.push(tokio::spawn(async move {
        let _ = axum::serve(legacy, legacy_router).await;
    }));
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}
