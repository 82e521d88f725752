//! `s3.replicate`: copies the legacy bucket (DigitalOcean Spaces or any S3-compatible endpoint)
//! into the environment's S3 bucket while the application keeps writing: a bulk pass, then
//! follow passes that copy what was created or overwritten and delete what was deleted since,
//! until a pass finds nothing to change (or `follow_passes` ran). Each object streams from one
//! endpoint to the other with its metadata and part layout (`providers::objects::copy`), and
//! lands in the run's object manifest (`steps::objects`), so a resumed run copies no recorded
//! object again. `s3.sync` takes the manifest over inside the window.
//!
//! Outputs: `manifest` (file name in the run directory), `objects`, `bytes`, `copied`,
//! `deleted`, `public`, `passes`, `manifest_sha256`, `source`, `target`. Rollback deletes from
//! the target the objects the manifest holds that the target still has as copied.

use super::objects::{self, Knobs, PublicObjects, SourceParams, TargetParams};
use super::{Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `s3.replicate` kind.
pub struct S3Replicate;

/// `with:` of `s3.replicate`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The legacy bucket and its access key.
    source: SourceParams,
    /// The bucket in the environment's account.
    target: TargetParams,
    /// Objects copied at once (1 to 64; default 8).
    #[serde(default = "objects::default_jobs")]
    jobs: usize,
    /// Requests per second to the source at most (default 100).
    #[serde(default = "objects::default_rate")]
    requests_per_second: u32,
    /// Objects whose ACL makes them public: fail (default) or private.
    #[serde(default = "objects::default_public")]
    public_objects: PublicObjects,
    /// Follow passes after the bulk pass at most (default 3); the step ends earlier when a pass
    /// changes nothing.
    #[serde(default = "default_follow")]
    follow_passes: u32,
}

fn default_follow() -> u32 {
    3
}

/// What `s3.replicate` returns.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The object manifest's file name in the run directory (`s3.sync`'s `manifest`).
    pub manifest: String,
    /// Objects on the target as the manifest holds them.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects this step copied (over every pass, resumed runs included).
    pub copied: u64,
    /// Objects it deleted on the target (deleted on the source meanwhile).
    pub deleted: u64,
    /// Objects public on the source, copied private (`public_objects: private`).
    pub public: u64,
    /// Passes run (the bulk pass and follow passes).
    pub passes: u32,
    /// SHA-256 over the manifest's entries in key order (hex).
    pub manifest_sha256: String,
    /// The source bucket (endpoint/bucket).
    pub source: String,
    /// The target bucket (s3://bucket).
    pub target: String,
}

#[async_trait]
impl Kind for S3Replicate {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = Outputs;
    const NAME: &'static str = "s3.replicate";
    const PURPOSE: &'static str = "Copy the legacy bucket into the environment's S3 bucket (streamed, metadata and part layout kept, every object recorded in the run's manifest) and follow the application's changes";
    const UNDO: &'static str =
        "Delete from the target bucket the objects this run copied there and still holds as copied";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(12 * 3600);

    fn check(&self, l: &Literal<Params>) -> Vec<String> {
        if l.known("jobs") || l.known("requests_per_second") {
            objects::check_knobs(l.params.jobs, l.params.requests_per_second)
        } else {
            Vec::new()
        }
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), Outputs>, StepError> {
        let b = objects::buckets(cx, &p.source, &p.target, p.requests_per_second).await?;
        let (mut count, mut size, mut multipart) = (0u64, 0u64, 0u64);
        b.source
            .list_each("", |page| {
                for o in page {
                    count += 1;
                    size += o.size;
                    multipart +=
                        u64::from(crate::providers::objects::etag_parts(&o.etag).is_some());
                }
                Ok(())
            })
            .await
            .map_err(|e| StepError::Check(e.to_string()))?;
        let manifest = objects::open_manifest(&objects::manifest_path(cx.run_dir, cx.step_id))?;
        let (held, _) = manifest.totals();
        let change = Change::new(
            Action::Create,
            format!("objects in {}", b.target.label()),
            format!(
                "copy {count} object(s), {} ({multipart} multipart, part layout kept), from {}; {held} already in this run's manifest; {} at once, at most {} request(s)/s to the source; public objects: {}; then up to {} follow pass(es)",
                objects::bytes(size),
                b.source.label(),
                p.jobs,
                p.requests_per_second,
                match p.public_objects {
                    PublicObjects::Fail => "fail",
                    PublicObjects::Private => "copied private",
                },
                p.follow_passes
            ),
        );
        Ok(Plan {
            changes: vec![change],
            before: (),
            predicted: Some(Outputs {
                manifest: objects::manifest_name(cx.step_id),
                objects: count,
                bytes: size,
                copied: count.saturating_sub(held),
                deleted: 0,
                public: 0,
                passes: 1,
                manifest_sha256: String::new(),
                source: b.source.label().to_string(),
                target: b.target.label().to_string(),
            }),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let b = objects::buckets(cx, &p.source, &p.target, p.requests_per_second).await?;
        let mut manifest = objects::open_manifest(&objects::manifest_path(cx.run_dir, cx.step_id))?;
        let knobs = Knobs {
            jobs: p.jobs,
            public: p.public_objects,
            keep_target_writes: false,
        };
        let (mut copied, mut deleted, mut public, mut passes) = (0, 0, 0, 0u32);
        loop {
            passes += 1;
            let pass = objects::pass(cx, &b, &mut manifest, &knobs, passes).await?;
            copied += pass.copied;
            deleted += pass.deleted;
            public += pass.public;
            if !pass.refused.is_empty() {
                return Err(objects::refused(&pass.refused));
            }
            let quiet = pass.changes() == 0 && pass.changed.is_empty();
            if quiet || passes > p.follow_passes {
                break;
            }
        }
        let (count, size) = manifest.totals();
        let out = Outputs {
            manifest: objects::manifest_name(cx.step_id),
            objects: count,
            bytes: size,
            copied,
            deleted,
            public,
            passes,
            manifest_sha256: manifest.root(),
            source: b.source.label().to_string(),
            target: b.target.label().to_string(),
        };
        let summary = format!(
            "{count} object(s), {} in {} ({copied} copied, {deleted} deleted over {passes} pass(es)); manifest {}",
            objects::bytes(size),
            out.target,
            &out.manifest_sha256[..12]
        );
        Ok(Applied::new(out).summary(summary))
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
        _outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let path = objects::manifest_path(cx.run_dir, cx.step_id);
        if !path.exists() {
            return Ok(Vec::new());
        }
        let b = objects::buckets(cx, &p.source, &p.target, p.requests_per_second).await?;
        let manifest = objects::open_manifest(&path)?;
        // One listing of the target says which copies are still as copied; they go in batches.
        let err = |e: crate::providers::objects::ObjectError| StepError::Check(e.to_string());
        let mut ours = Vec::new();
        let mut kept = Vec::new();
        b.target
            .list_each("", |page| {
                for o in page {
                    match manifest.get(&o.key) {
                        Some(e) if e.etag == o.etag => ours.push(o.key),
                        Some(_) => kept.push(o.key),
                        None => {}
                    }
                }
                Ok(())
            })
            .await
            .map_err(err)?;
        let removed = ours.len();
        b.target.delete_many(&ours).await.map_err(err)?;
        let mut detail = format!("{removed} copied object(s) deleted");
        if !kept.is_empty() {
            detail.push_str(&format!(
                "; {} rewritten since the copy kept: {}",
                kept.len(),
                objects::some_keys(&kept)
            ));
        }
        Ok(vec![Restored::new(
            format!("objects in {}", b.target.label()),
            Some(&manifest.root()),
            None,
            detail,
        )])
    }

    fn manual_undo(&self, p: &Params, _before: &(), run_id: &str) -> Vec<String> {
        vec![format!(
            "delete from s3://{} the objects listed in .cutover/runs/{run_id}/objects-*.jsonl",
            p.target.bucket
        )]
    }
}
