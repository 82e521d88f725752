//! Run stores: where event logs and environment locks live.
//!
//! `local` keeps both under `.cutover/` (an flock per environment, see [`super::lock`]). `s3`
//! keeps them in a bucket of the environment's account, so every clone and CI runner sees the
//! same runs and the same lock:
//!
//! - `<prefix>runs/<run id>/events.jsonl` is the whole event log, written after every record is
//!   fsynced locally and before the record counts as written (a failed upload stops the run like
//!   a failed fsync would). The local file under `.cutover/runs/` is the working copy; listing
//!   commands download logs that are missing or shorter locally.
//! - `<prefix>locks/<env>.lock` is the environment's lock (`infra apply`), and
//!   `<prefix>locks/<env>/<key>.lock` a run's, one per thing it acts on (its database, each Secret
//!   and record it names; see [`crate::local::lock`]). A run creates its keys' objects and then
//!   checks that no environment lock exists; an apply creates the environment's and then checks
//!   that no key object exists; either backs out when it finds the other, so at most one of them
//!   proceeds. Each is created with `PutObject` and `If-None-Match: *`, the
//!   conditional write S3 answers with 412 Precondition Failed when the object exists (the same
//!   mechanism as Terraform's S3 `use_lockfile`). After the write the object is read back and
//!   must hold this holder's nonce, so a store that let two conditional writes through would
//!   still grant the lock once. The object is deleted on release. A lock left by a killed process
//!   names its run; `resume` or `rollback` of that run takes it over.
//!
//! The store does not interpret records; the engine does.

use crate::config::{Environment, StoreKind};
use crate::local::lock::{EnvLock, LockError};
use crate::providers::aws::{err, AwsSession};
use crate::providers::ProviderError;
use aws_sdk_s3::primitives::ByteStream;
use std::path::Path;

/// An S3 run store of one environment.
#[derive(Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

/// A held environment lock of either store; released on drop.
pub enum HeldLock {
    /// The local flock.
    Local(EnvLock),
    /// The S3 lock objects, deleted on drop.
    S3 {
        /// The store holding them.
        store: S3Store,
        /// Their keys.
        keys: Vec<String>,
    },
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let HeldLock::S3 { store, keys } = self {
            let (client, bucket, keys) = (
                store.client.clone(),
                store.bucket.clone(),
                std::mem::take(keys),
            );
            block_on(async move {
                for key in keys {
                    let _ = client.delete_object().bucket(&bucket).key(key).send().await;
                }
            });
        }
    }
}

/// Runs a future to completion from synchronous code inside the multi-threaded runtime.
fn block_on<F: std::future::Future>(f: F) -> Option<F::Output> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    Some(tokio::task::block_in_place(|| handle.block_on(f)))
}

impl S3Store {
    /// The store of `env` when its `store.kind` is `s3`, using the environment's assumed-role
    /// session (the bucket lives in the environment's account).
    pub fn for_env(env: &Environment, session: &AwsSession) -> Option<S3Store> {
        if env.store.kind != StoreKind::S3 {
            return None;
        }
        Some(S3Store {
            client: aws_sdk_s3::Client::new(&session.config),
            bucket: env.store.bucket.clone().unwrap_or_default(),
            prefix: env.store.prefix.clone(),
        })
    }

    fn lock_key(&self, env: &str) -> String {
        format!("{}locks/{env}.lock", self.prefix)
    }

    /// Takes the whole environment `env` (`infra apply`) for `run_id`, recording `holder`. A lock
    /// object left by the same run id (a killed process) is taken over.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder, or the runs holding keys of `env`;
    /// [`LockError::Io`] when S3 fails.
    pub async fn lock(&self, env: &str, run_id: &str, holder: &str) -> Result<HeldLock, LockError> {
        let key = self.lock_key(env);
        self.put_lock(&key, env, run_id, holder).await?;
        let held = HeldLock::S3 {
            store: self.clone(),
            keys: vec![key],
        };
        let runs = self.service_holders(env).await?;
        if !runs.is_empty() {
            drop(held);
            return Err(LockError::Held {
                env: env.to_string(),
                holder: runs.join("; "),
            });
        }
        Ok(held)
    }

    /// Takes what run `run_id` acts on: one object per key, then checks that no apply holds the
    /// environment (see the module documentation).
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder and the key; [`LockError::Io`] when S3 fails.
    /// Nothing stays held on error.
    pub async fn lock_service(
        &self,
        env: &str,
        keys: &[String],
        run_id: &str,
        holder: &str,
    ) -> Result<HeldLock, LockError> {
        let mut held = HeldLock::S3 {
            store: self.clone(),
            keys: Vec::new(),
        };
        for k in keys {
            let object = format!(
                "{}locks/{env}/{}.lock",
                self.prefix,
                crate::local::lock::service_lock_file(k)
            );
            let what = format!("{env} ({})", k.replacen(':', " ", 1));
            self.put_lock(&object, &what, run_id, holder).await?;
            if let HeldLock::S3 { keys, .. } = &mut held {
                keys.push(object);
            }
        }
        let env_key = self.lock_key(env);
        if let Some(current) = self
            .read(&env_key)
            .await
            .map_err(|e| LockError::Io(format!("s3://{}/{env_key}", self.bucket), e.to_string()))?
        {
            drop(held);
            return Err(lock_held(env, Some(current)));
        }
        Ok(held)
    }

    /// `who: holder` for each run lock object of `env` that exists.
    async fn service_holders(&self, env: &str) -> Result<Vec<String>, LockError> {
        let prefix = format!("{}locks/{env}/", self.prefix);
        let io = |m: String| LockError::Io(format!("s3://{}/{prefix}", self.bucket), m);
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&prefix)
            .send()
            .await
            .map_err(|e| io(err("s3:ListObjectsV2", e).to_string()))?;
        let mut out = Vec::new();
        for o in listed.contents() {
            let Some(key) = o.key() else { continue };
            if let Some(body) = self.read(key).await.map_err(|e| io(e.to_string()))? {
                let name = key.trim_start_matches(&prefix).trim_end_matches(".lock");
                out.push(format!(
                    "{name}: {}",
                    body.lines().next().unwrap_or("another process")
                ));
            }
        }
        Ok(out)
    }

    /// Creates lock object `key` with `If-None-Match: *` and reads it back; `what` names it in
    /// a refusal. An object left by the same run id is taken over once.
    async fn put_lock(
        &self,
        key: &str,
        what: &str,
        run_id: &str,
        holder: &str,
    ) -> Result<(), LockError> {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let body = format!("{holder}\nrun_id={run_id}\nnonce={nonce}\n");
        let io = |m: String| LockError::Io(format!("s3://{}/{key}", self.bucket), m);
        for attempt in 0..2 {
            let put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .if_none_match("*")
                .body(ByteStream::from(body.clone().into_bytes()))
                .send()
                .await;
            match put {
                Ok(_) => {
                    let current = self.read(key).await.map_err(|e| io(e.to_string()))?;
                    if current.as_deref().is_some_and(|c| c.contains(&nonce)) {
                        return Ok(());
                    }
                    return Err(lock_held(what, current));
                }
                Err(e) => {
                    let status = e.raw_response().map(|r| r.status().as_u16());
                    if status != Some(412) && status != Some(409) {
                        return Err(io(err("s3:PutObject", e).to_string()));
                    }
                    let current = self.read(key).await.map_err(|e| io(e.to_string()))?;
                    let same_run = current
                        .as_deref()
                        .is_some_and(|c| c.lines().any(|l| l == format!("run_id={run_id}")));
                    if same_run && attempt == 0 {
                        // Left by this run's killed process: take it over.
                        let _ = self
                            .client
                            .delete_object()
                            .bucket(&self.bucket)
                            .key(key)
                            .send()
                            .await;
                        continue;
                    }
                    return Err(lock_held(what, current));
                }
            }
        }
        Err(lock_held(what, None))
    }

    async fn read(&self, key: &str) -> Result<Option<String>, ProviderError> {
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => {
                let bytes = o.body.collect().await.map_err(|e| ProviderError::Aws {
                    op: "s3:GetObject".into(),
                    message: e.to_string(),
                })?;
                Ok(Some(
                    String::from_utf8_lossy(&bytes.into_bytes()).into_owned(),
                ))
            }
            Err(e) if e.raw_response().map(|r| r.status().as_u16()) == Some(404) => Ok(None),
            Err(e) => Err(err("s3:GetObject", e)),
        }
    }

    /// Uploads the whole local file `name` (`events.jsonl` or `signature.json`) of `run_id`
    /// (called after every fsynced record).
    ///
    /// # Errors
    /// A message naming the object when the upload fails.
    pub fn upload(&self, run_id: &str, name: &str, bytes: Vec<u8>) -> Result<(), String> {
        let key = format!("{}runs/{run_id}/{name}", self.prefix);
        let (client, bucket) = (self.client.clone(), self.bucket.clone());
        let k = key.clone();
        let sent = block_on(async move {
            client
                .put_object()
                .bucket(bucket)
                .key(k)
                .content_type(if name.ends_with(".jsonl") {
                    "application/x-ndjson"
                } else {
                    "application/json"
                })
                .body(ByteStream::from(bytes))
                .send()
                .await
        });
        match sent {
            Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(format!(
                "s3://{}/{key}: {}",
                self.bucket,
                err("s3:PutObject", e)
            )),
            None => Err("no async runtime for the S3 upload".into()),
        }
    }

    /// Downloads every run log in the store that is missing locally or longer than the local
    /// copy into `<state_dir>/runs/<id>/events.jsonl`, with its `signature.json` when there is
    /// one; returns how many were fetched.
    ///
    /// # Errors
    /// [`ProviderError::Aws`] when listing or reading fails.
    pub async fn pull(&self, state_dir: &Path) -> Result<usize, ProviderError> {
        let mut fetched = 0;
        let mut token = None;
        let runs_prefix = format!("{}runs/", self.prefix);
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&runs_prefix)
                .set_continuation_token(token.clone())
                .send()
                .await
                .map_err(|e| err("s3:ListObjectsV2", e))?;
            for obj in page.contents() {
                let Some(key) = obj.key() else { continue };
                let Some(id) = key
                    .strip_prefix(&runs_prefix)
                    .and_then(|r| r.strip_suffix(&format!("/{}", super::log::FILE_NAME)))
                else {
                    continue;
                };
                if id.is_empty() || id.contains('/') || id.contains("..") {
                    continue;
                }
                let local = super::runs::log_path(state_dir, id);
                let local_len = std::fs::metadata(&local).map(|m| m.len()).unwrap_or(0);
                if obj.size().unwrap_or(0) as u64 <= local_len {
                    continue;
                }
                if let Some(text) = self.read(key).await? {
                    if let Some(dir) = local.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                    let tmp = local.with_extension("jsonl.part");
                    std::fs::write(&tmp, text.as_bytes())
                        .and_then(|_| std::fs::rename(&tmp, &local))
                        .map_err(|e| ProviderError::Aws {
                            op: "s3:GetObject".into(),
                            message: format!("{}: {e}", local.display()),
                        })?;
                    let sig_key = format!("{runs_prefix}{id}/{}", super::signature::FILE_NAME);
                    if let Some(sig) = self.read(&sig_key).await? {
                        let path = super::runs::signature_path(state_dir, id);
                        std::fs::write(&path, sig.as_bytes()).map_err(|e| ProviderError::Aws {
                            op: "s3:GetObject".into(),
                            message: format!("{}: {e}", path.display()),
                        })?;
                    }
                    fetched += 1;
                }
            }
            token = page.next_continuation_token().map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(fetched)
    }
}

fn lock_held(env: &str, current: Option<String>) -> LockError {
    let holder = current
        .and_then(|c| c.lines().next().map(str::to_string))
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| "another process".into());
    LockError::Held {
        env: env.to_string(),
        holder,
    }
}

/// Takes what run `run_id` acts on in `env` (`keys`, e.g. `database:shop`) in its store: S3
/// objects when `store` is given, else local flocks.
///
/// # Errors
/// As [`S3Store::lock_service`] and [`EnvLock::acquire_service`].
pub async fn acquire_service(
    state_dir: &Path,
    store: Option<&S3Store>,
    env: &str,
    keys: &[String],
    run_id: &str,
    holder: &str,
) -> Result<HeldLock, LockError> {
    match store {
        Some(s) => s.lock_service(env, keys, run_id, holder).await,
        None => EnvLock::acquire_service(state_dir, env, keys, holder).map(HeldLock::Local),
    }
}

/// Takes `env`'s lock in its store: the S3 lock when `store` is given, else the local flock.
///
/// # Errors
/// As [`S3Store::lock`] and [`EnvLock::acquire`].
pub async fn acquire(
    state_dir: &Path,
    store: Option<&S3Store>,
    env: &str,
    run_id: &str,
    holder: &str,
) -> Result<HeldLock, LockError> {
    match store {
        Some(s) => s.lock(env, run_id, holder).await,
        None => EnvLock::acquire(state_dir, env, holder).map(HeldLock::Local),
    }
}

/// Brings the local copies of every run of the environments using an `s3` store up to date
/// (nothing happens, and nothing is contacted, when all use `local`). Environments whose store
/// cannot be reached are reported in the returned list and skipped.
pub async fn pull_all(root: &Path, only: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    for name in crate::config::list_names(&root.join("environments")) {
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let Ok(env) = crate::config::load_environment(root, &name) else {
            continue;
        };
        if env.store.kind != StoreKind::S3 {
            continue;
        }
        let session_id = format!("runs-{}", super::new_run_id());
        let result = match AwsSession::assume(&env, &session_id).await {
            Ok(session) => match S3Store::for_env(&env, &session) {
                Some(store) => store.pull(&super::state_dir(root)).await.map(|_| ()),
                None => Ok(()),
            },
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            problems.push(format!("{name}: cannot read the s3 run store: {e}"));
        }
    }
    problems
}
