//! `s3.fallback`: the legacy bucket becomes the fallback. Placed right before the step that lets
//! the application write to the target bucket (its storage flip, or the database flip when the
//! objects move inside the window), it records when; its rollback copies back to the legacy bucket
//! every object the target has that the run's manifest does not hold as it is (the application's
//! new uploads and overwrites since) and deletes there what the application deleted on the
//! target, so nothing written since is lost. The runbook's rollback runs in reverse order: the
//! flip after it is undone first (the application writes to the legacy bucket again), then this.
//!
//! Outputs: `manifest`, `since` (RFC 3339). The copy back takes the target's objects as they are
//! (the application's bucket from the flip on): what the legacy bucket holds as the manifest
//! recorded it is not written again.

use super::objects::{self, SourceParams, TargetParams};
use super::{Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError};
use crate::providers::objects::{copy, ObjectError};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `s3.fallback` kind.
pub struct S3Fallback;

/// `with:` of `s3.fallback`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The legacy bucket and its access key (as `s3.replicate`'s; its rollback writes there).
    source: SourceParams,
    /// The bucket in the environment's account (as `s3.replicate`'s).
    target: TargetParams,
    /// The manifest `s3.replicate` kept: `{{ steps.<id>.outputs.manifest }}`.
    manifest: String,
    /// Objects copied back at once on rollback (1 to 64; default 8).
    #[serde(default = "objects::default_jobs")]
    jobs: usize,
    /// Requests per second to the legacy bucket at most (default 100).
    #[serde(default = "objects::default_rate")]
    requests_per_second: u32,
}

/// What `s3.fallback` returns.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The manifest the copy back compares the target with.
    pub manifest: String,
    /// From when the application may write to the target (RFC 3339).
    pub since: String,
}

#[async_trait]
impl Kind for S3Fallback {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = Outputs;
    const NAME: &'static str = "s3.fallback";
    const PURPOSE: &'static str = "Make the legacy bucket the fallback: from here a rollback copies back what the application writes to the target bucket";
    const UNDO: &'static str = "Copy back to the legacy bucket every object the application wrote to the target since, and delete there what it deleted";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    fn check(&self, l: &Literal<Params>) -> Vec<String> {
        let mut out = Vec::new();
        if l.known("jobs") || l.known("requests_per_second") {
            out.extend(objects::check_knobs(
                l.params.jobs,
                l.params.requests_per_second,
            ));
        }
        if l.known("manifest") {
            out.extend(objects::check_manifest(&l.params.manifest));
        }
        out
    }

    async fn plan(&self, _cx: &StepContext, p: &Params) -> Result<Plan<(), Outputs>, StepError> {
        Ok(Plan {
            changes: vec![Change::new(
                Action::None,
                format!("objects in {}", p.source.bucket),
                format!(
                    "none now; a rollback from here copies back to {}/{} what the application writes to s3://{}",
                    p.source.endpoint, p.source.bucket, p.target.bucket
                ),
            )],
            before: (),
            predicted: Some(Outputs {
                manifest: p.manifest.clone(),
                since: chrono::Utc::now().to_rfc3339(),
            }),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        // The manifest must be there for the rollback to compare with.
        let manifest = objects::open_named(cx, &p.manifest)?;
        let (count, _) = manifest.totals();
        let out = Outputs {
            manifest: p.manifest.clone(),
            since: chrono::Utc::now().to_rfc3339(),
        };
        let summary = format!(
            "from {} a rollback copies back to {} what the application writes to s3://{} ({count} object(s) copied so far)",
            out.since, p.source.bucket, p.target.bucket
        );
        Ok(Applied::new(out).summary(summary))
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
        outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        if outputs.is_none() {
            // Never applied: the application was never let write to the target.
            return Ok(Vec::new());
        }
        let b = objects::buckets(cx, &p.source, &p.target, p.requests_per_second).await?;
        let manifest = objects::open_named(cx, &p.manifest)?;
        let err = |e: ObjectError| StepError::Check(e.to_string());
        let mut on_target = Vec::new();
        b.target
            .list_each("", |page| {
                on_target.extend(page);
                Ok(())
            })
            .await
            .map_err(err)?;
        let seen: std::collections::HashSet<String> =
            on_target.iter().map(|o| o.key.clone()).collect();
        let written: Vec<_> = on_target
            .into_iter()
            .filter(|o| {
                manifest
                    .get(&o.key)
                    .is_none_or(|e| e.etag != o.etag || e.size != o.size)
            })
            .collect();
        let mut back = futures_util::stream::iter(written)
            .map(|o| {
                let (source, target) = (b.source.clone(), b.target.clone());
                async move {
                    // Already there as it is (copied before a crash): nothing to write.
                    match source.head(&o.key).await? {
                        Some(h) if h.etag == o.etag => Ok(false),
                        _ => copy(&target, &source, &o).await.map(|_| true),
                    }
                }
            })
            .buffer_unordered(p.jobs);
        let mut copied_back = 0u64;
        while let Some(r) = back.next().await {
            copied_back += u64::from(r.map_err(err)?);
        }
        drop(back);
        let mut removed = Vec::new();
        for e in manifest.entries().filter(|e| !seen.contains(&e.key)) {
            // Deleted on the target by the application; the source still has what was copied.
            if let Some(h) = b.source.head(&e.key).await.map_err(err)? {
                if h.etag == e.etag {
                    b.source.delete(&e.key).await.map_err(err)?;
                    removed.push(e.key.clone());
                }
            }
        }
        Ok(vec![Restored::new(
            format!("objects in {}", b.source.label()),
            Some(&manifest.root()),
            None,
            format!(
                "{copied_back} object(s) written to the target since the fallback began copied back, {} deleted there deleted here too",
                removed.len()
            ),
        )])
    }

    fn manual_undo(&self, p: &Params, _before: &(), _run_id: &str) -> Vec<String> {
        vec![format!(
            "copy back to {}/{} the objects written to s3://{} since the fallback began (rclone copy --checksum), and delete there what was deleted on S3",
            p.source.endpoint, p.source.bucket, p.target.bucket
        )]
    }
}
