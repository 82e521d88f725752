//! `s3.sync`: the last pass of the object copy and its proof, inside the window (or after a
//! write-flip, DESIGN.md "Object storage"): takes over `s3.replicate`'s manifest, copies what
//! changed on the source since (its cost is what changed, not the bucket), then compares every
//! object of the target with the manifest (size and ETag from one listing; with `content`, the
//! SHA-256 of every object read back) and fails naming each object that differs, is missing or
//! was not copied.
//!
//! Outputs: `objects`, `bytes`, `copied`, `deleted`, `verified`, `content_checked`,
//! `manifest_sha256`, `synced_at`, `written_since_flip`, `deleted_since_flip`. No rollback of its
//! own: what the application writes to the target once it may is `s3.fallback`'s to bring back.

use super::objects::{self, Knobs, PublicObjects, SourceParams, TargetParams};
use super::{Action, Applied, Change, Kind, Literal, Plan, StepContext, StepError};
use async_trait::async_trait;
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
    /// The application already writes to the target and reads the source where the target
    /// lacks an object (a write-flip with read fallback, DESIGN.md "Object storage"): its
    /// objects on the target are not an error, one it rewrote there is not overwritten, one it
    /// deleted there is not copied again (default false: the sync runs inside the window,
    /// before the flip).
    #[serde(default, deserialize_with = "super::rendered::flag")]
    after_write_flip: bool,
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
    /// Objects the application wrote to the target since a write-flip (`after_write_flip`):
    /// on the target but not from the source, or rewritten there.
    #[serde(default)]
    pub written_since_flip: u64,
    /// Objects copied that the application deleted on the target since a write-flip.
    #[serde(default)]
    pub deleted_since_flip: u64,
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
    const UNDO: &'static str = "None: the objects stay (s3.fallback copies the application's writes back, s3.replicate's rollback deletes the copies)";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

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
                written_since_flip: 0,
                deleted_since_flip: 0,
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
            keep_target_writes: p.after_write_flip,
        };
        let mut kept = Vec::new();
        let (mut copied, mut deleted) = (0, 0);
        let mut n = 0;
        loop {
            n += 1;
            // The sync's passes are numbered from 1001 in the manifest, apart from the replicate's.
            let pass = objects::pass(cx, &b, &mut manifest, &knobs, 1000 + n).await?;
            copied += pass.copied;
            deleted += pass.deleted;
            kept.extend(pass.kept.iter().cloned());
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
        let mut cmp =
            objects::compare_with(cx, &b.target, &manifest, p.content, p.jobs, &kept).await?;
        let (mut written, mut gone) = (0, 0);
        if p.after_write_flip {
            // The application's own uploads and deletes since the write-flip.
            written = std::mem::take(&mut cmp.unexpected).len() as u64;
            gone = std::mem::take(&mut cmp.missing).len() as u64;
        }
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
            written_since_flip: written,
            deleted_since_flip: gone,
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
}

fn open(cx: &StepContext, p: &Params) -> Result<objects::Manifest, StepError> {
    objects::open_named(cx, &p.manifest)
}
