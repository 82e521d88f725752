//! `s3.sync`: the last pass of the object copy and its proof, inside the window (or after a
//! write-flip, DESIGN.md "Object storage"): takes over `s3.replicate`'s manifest, copies what
//! changed on the source since (its cost is what changed, not the bucket), then compares every
//! object of the target with the manifest (size and ETag from one listing; with `content`, the
//! SHA-256 of every object read back) and fails naming each object that differs, is missing or
//! was not copied.
//!
//! Outputs: `objects`, `bytes`, `copied`, `deleted`, `verified`, `content_checked`,
//! `manifest_sha256`, `synced_at`. Rollback (after the flip, when the application wrote to the
//! target): copies back to the source every object the target has that the manifest does not
//! hold as it is (new uploads, overwrites) and deletes on the source what the application
//! deleted on the target, so nothing written since the flip is lost.

use super::objects::{self, Knobs, PublicObjects, SourceParams, TargetParams};
use super::{Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError};
use crate::providers::objects::{copy, ObjectError};
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `s3.sync` kind.
pub struct S3Sync;

/// Passes the sync runs at most while the source keeps changing under it.
const MAX_PASSES: u32 = 3;

/// `with:` of `s3.sync`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The legacy bucket and its access key (as `s3.replicate`'s).
    source: SourceParams,
    /// The bucket in the environment's account (as `s3.replicate`'s).
    target: TargetParams,
    /// The manifest `s3.replicate` kept: `{{ steps.<id>.outputs.manifest }}`.
    manifest: String,
    /// Objects copied or read at once (1 to 64; default 8).
    #[serde(default = "objects::default_jobs")]
    jobs: usize,
    /// Requests per second to the source at most (default 100).
    #[serde(default = "objects::default_rate")]
    requests_per_second: u32,
    /// Objects whose ACL makes them public: fail (default) or private.
    #[serde(default = "objects::default_public")]
    public_objects: PublicObjects,
    /// Read every target object back and compare its SHA-256 with the manifest's (default false:
    /// size and ETag, which the target computed from the bytes it received).
    #[serde(default, deserialize_with = "super::rendered::flag")]
    content: bool,
}

/// What `s3.sync` returns.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// Objects on the target, all verified.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Objects copied by this step (changed since `s3.replicate`).
    pub copied: u64,
    /// Objects deleted on the target by this step.
    pub deleted: u64,
    /// Objects compared equal with the manifest.
    pub verified: u64,
    /// Whether the comparison read every object's content back (SHA-256).
    pub content_checked: bool,
    /// SHA-256 over the manifest's entries in key order (hex).
    pub manifest_sha256: String,
    /// When the last pass ended (RFC 3339): from here the application writes to the target.
    pub synced_at: String,
}

#[async_trait]
impl Kind for S3Sync {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = Outputs;
    const NAME: &'static str = "s3.sync";
    const PURPOSE: &'static str = "Copy what changed in the legacy bucket since s3.replicate, then compare every object of the target with the manifest and name each that differs";
    const UNDO: &'static str = "Copy back to the legacy bucket what the application wrote to the target since the sync, and delete there what it deleted";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

    fn check(&self, l: &Literal<Params>) -> Vec<String> {
        let mut out = Vec::new();
        if l.known("jobs") || l.known("requests_per_second") {
            out.extend(objects::check_knobs(
                l.params.jobs,
                l.params.requests_per_second,
            ));
        }
        if l.known("manifest") && !objects::valid_manifest_name(&l.params.manifest) {
            out.push(format!(
                "manifest {:?} is not a manifest's file name (objects-<step>.jsonl): use {{{{ steps.<id>.outputs.manifest }}}} of the s3.replicate step",
                l.params.manifest
            ));
        }
        out
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), Outputs>, StepError> {
        let b = objects::buckets(cx, &p.source, &p.target, p.requests_per_second).await?;
        // In a dry-run the replicate has not made its manifest yet.
        let (count, size, root) = match open(cx, p) {
            Ok(m) => {
                let (c, s) = m.totals();
                (c, s, m.root())
            }
            Err(StepError::Check(_)) => (0, 0, String::new()),
            Err(e) => return Err(e),
        };
        Ok(Plan {
            changes: vec![
                Change::new(
                    Action::Update,
                    format!("objects in {}", b.target.label()),
                    format!(
                        "copy what changed on {} since the manifest ({count} object(s), {}), delete what was deleted",
                        b.source.label(),
                        objects::bytes(size)
                    ),
                ),
                Change::new(
                    Action::Check,
                    format!("objects in {}", b.target.label()),
                    if p.content {
                        "compare every object's size, ETag and SHA-256 (read back) with the manifest"
                    } else {
                        "compare every object's size and ETag with the manifest"
                    },
                ),
            ],
            before: (),
            predicted: Some(Outputs {
                objects: count,
                bytes: size,
                copied: 0,
                deleted: 0,
                verified: count,
                content_checked: p.content,
                manifest_sha256: root,
                synced_at: chrono::Utc::now().to_rfc3339(),
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
        let mut manifest = open(cx, p)?;
        let knobs = Knobs {
            jobs: p.jobs,
            public: p.public_objects,
        };
        let (mut copied, mut deleted) = (0, 0);
        let mut n = 0;
        loop {
            n += 1;
            // The sync's passes are numbered from 1001 in the manifest, apart from the replicate's.
            let pass = objects::pass(cx, &b, &mut manifest, &knobs, 1000 + n).await?;
            copied += pass.copied;
            deleted += pass.deleted;
            if !pass.refused.is_empty() {
                return Err(objects::refused(&pass.refused));
            }
            if pass.changed.is_empty() {
                break;
            }
            if n == MAX_PASSES {
                return Err(StepError::Check(format!(
                    "the source bucket still changes after {MAX_PASSES} passes (the application writes to it): {}",
                    objects::some_keys(&pass.changed)
                )));
            }
        }
        let synced_at = chrono::Utc::now().to_rfc3339();
        let cmp = objects::compare(cx, &b.target, &manifest, p.content, p.jobs).await?;
        if !cmp.clean() {
            return Err(StepError::Check(format!(
                "{} does not hold what was copied: {}",
                b.target.label(),
                cmp.problems()
            )));
        }
        let (count, size) = manifest.totals();
        let out = Outputs {
            objects: count,
            bytes: size,
            copied,
            deleted,
            verified: cmp.equal,
            content_checked: p.content,
            manifest_sha256: manifest.root(),
            synced_at,
        };
        let summary = format!(
            "{count} object(s), {} verified ({}) in {}; {copied} copied and {deleted} deleted since the replicate; manifest {}",
            objects::bytes(size),
            if p.content { "size, ETag, SHA-256" } else { "size, ETag" },
            b.target.label(),
            &out.manifest_sha256[..12]
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
            // The sync never completed: the application never wrote to the target.
            return Ok(Vec::new());
        }
        let b = objects::buckets(cx, &p.source, &p.target, p.requests_per_second).await?;
        let manifest = open(cx, p)?;
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
                "{copied_back} object(s) written to the target since the sync copied back, {} deleted there deleted here too",
                removed.len()
            ),
        )])
    }

    fn manual_undo(&self, p: &Params, _before: &(), _run_id: &str) -> Vec<String> {
        vec![format!(
            "copy back to {}/{} the objects written to s3://{} since the sync (rclone copy --checksum)",
            p.source.endpoint, p.source.bucket, p.target.bucket
        )]
    }
}

fn open(cx: &StepContext, p: &Params) -> Result<objects::Manifest, StepError> {
    if !objects::valid_manifest_name(&p.manifest) {
        return Err(StepError::Params(format!(
            "manifest {:?} is not a manifest's file name (objects-<step>.jsonl)",
            p.manifest
        )));
    }
    let path = cx.run_dir.join(&p.manifest);
    if !path.exists() {
        return Err(StepError::Check(format!(
            "no object manifest {} in this run: s3.sync continues an s3.replicate of the same run",
            p.manifest
        )));
    }
    objects::open_manifest(&path)
}
