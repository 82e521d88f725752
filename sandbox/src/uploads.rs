//! The shop application's users' files on its AWS side: `PUT /uploads/<key>` stores a file,
//! `GET /uploads/<key>` serves it, in the bucket the `shop-api` pod this request reaches read
//! from Secret `shop/shop-storage` when it started (`STORAGE_URL`: the legacy Space as
//! `http://host:port/bucket`, or the account's bucket as `s3://bucket`). Where the pod also has
//! `STORAGE_FALLBACK_URL` (a write-flip with read fallback), a file its bucket lacks is read
//! from there. Each answer names the bucket that served it (`x-storage`).

use crate::kube::Cluster;
use crate::state::State;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use bytes::Bytes;
use cutover::providers::objects::{Bucket, Location, Metadata};
use std::sync::Arc;

/// What the handlers need: the cluster (its pods' environment), the Space's key, and the
/// account's AWS configuration (the pods' IAM role for S3).
#[derive(Clone)]
pub struct Uploads {
    /// The environment's cluster.
    pub cluster: Cluster,
    /// The sandbox's state (the Space's access key).
    pub state: State,
    /// The environment.
    pub env: String,
    /// The account's configuration, made on first use.
    pub aws: Arc<tokio::sync::OnceCell<aws_config::SdkConfig>>,
}

/// Requests served: the round-robin position over ready pods.
static SERVED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl Uploads {
    /// The storage URLs (`STORAGE_URL`, `STORAGE_FALLBACK_URL`) of the ready `shop-api` pod this
    /// request reaches.
    fn pod_storage(&self) -> Option<(String, Option<String>)> {
        let pods = self
            .cluster
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ready_pods_env("shop", "shop-api");
        if pods.is_empty() {
            return None;
        }
        let i = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let env = &pods[i % pods.len()];
        Some((
            env.get("STORAGE_URL")?.clone(),
            env.get("STORAGE_FALLBACK_URL").cloned(),
        ))
    }

    /// The bucket a storage URL names.
    async fn bucket(&self, url: &str) -> Result<Bucket, String> {
        if let Some(name) = url.strip_prefix("s3://") {
            let cfg = self
                .aws
                .get_or_try_init(|| crate::seed::account_config(&self.state, &self.env))
                .await
                .map_err(|e| format!("{e:#}"))?;
            return Ok(Bucket::aws(
                cfg,
                Location {
                    endpoint: None,
                    region: crate::state::REGION.into(),
                    bucket: name.trim_end_matches('/').to_string(),
                },
            ));
        }
        let (endpoint, bucket) = url
            .trim_end_matches('/')
            .rsplit_once('/')
            .ok_or_else(|| format!("storage URL {url} names no bucket"))?;
        Ok(Bucket::compatible(
            Location {
                endpoint: Some(endpoint.to_string()),
                region: crate::spaces::REGION.into(),
                bucket: bucket.to_string(),
            },
            &self.state.spaces_access_key,
            &self.state.spaces_secret_key,
        ))
    }
}

fn answer(status: StatusCode, served_by: &str, body: Bytes) -> (StatusCode, HeaderMap, Bytes) {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(served_by) {
        h.insert("x-storage", v);
    }
    (status, h, body)
}

/// `PUT /uploads/<key>`: stores the body in the pod's bucket.
pub async fn put(
    AxState(u): AxState<Uploads>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    let Some((url, _)) = u.pod_storage() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "no ready pod of shop-api".into(),
        );
    };
    let bucket = match u.bucket(&url).await {
        Ok(b) => b,
        Err(e) => return answer(StatusCode::SERVICE_UNAVAILABLE, "", e.into()),
    };
    let metadata = Metadata {
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        ..Metadata::default()
    };
    match bucket.put(&key, body, &metadata).await {
        Ok(_) => answer(StatusCode::CREATED, bucket.label(), Bytes::new()),
        Err(e) => answer(
            StatusCode::BAD_GATEWAY,
            bucket.label(),
            e.to_string().into(),
        ),
    }
}

/// `GET /uploads/<key>`: the file from the pod's bucket, else from its fallback.
pub async fn get(
    AxState(u): AxState<Uploads>,
    Path(key): Path<String>,
) -> (StatusCode, HeaderMap, Bytes) {
    let Some((url, fallback)) = u.pod_storage() else {
        return answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "no ready pod of shop-api".into(),
        );
    };
    for url in std::iter::once(url).chain(fallback) {
        let bucket = match u.bucket(&url).await {
            Ok(b) => b,
            Err(e) => return answer(StatusCode::SERVICE_UNAVAILABLE, "", e.into()),
        };
        match bucket.get(&key).await {
            Ok(Some((body, _))) => return answer(StatusCode::OK, bucket.label(), body),
            Ok(None) => continue,
            Err(e) => {
                return answer(
                    StatusCode::BAD_GATEWAY,
                    bucket.label(),
                    e.to_string().into(),
                )
            }
        }
    }
    answer(StatusCode::NOT_FOUND, "", Bytes::new())
}
