//! What the object-storage kinds (`s3.replicate`, `s3.sync`) share: the source and target
//! bucket parameters, the manifest of copied objects, and one pass of the copy (list the source,
//! copy what is new or changed since the manifest, delete on the target what the source no
//! longer has, record each object as it lands).
//!
//! The manifest is a JSON-lines file in the run's directory (`objects-<step>.jsonl`), one line
//! per copied or deleted object, appended as each lands and synced at the end of each pass: a
//! killed run resumes from it and copies no recorded object again. Its root hash (SHA-256 over
//! its entries in key order) goes into the step's outputs, so into the signed event log and the
//! audit. It holds about 200 bytes per object in memory while a step runs.
//!
//! Owns the decisions of what one pass copies and deletes; must not talk S3 itself (that is
//! `providers::objects`) nor decide what runs next.

use super::StepContext;
use super::StepError;
use crate::providers::objects::{self, Bucket, Budget, Listed, Location, ObjectError};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The legacy bucket: an S3-compatible endpoint (DigitalOcean Spaces, MinIO) and its access key.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceParams {
    /// The S3 API endpoint, e.g. https://nyc3.digitaloceanspaces.com.
    pub endpoint: String,
    /// The signing region, e.g. nyc3 (Spaces accepts its datacenter or us-east-1).
    pub region: String,
    /// The bucket (Space) name.
    pub bucket: String,
    /// The access key id, from a secret source (`{{ secrets.<name> }}`).
    pub access_key_id: String,
    /// The secret access key, from a secret source (`{{ secrets.<name> }}`).
    pub secret_access_key: String,
}

/// The bucket in the environment's AWS account (reached with the environment's role).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetParams {
    /// The bucket name, e.g. `{{ tf.uploads_bucket }}`.
    pub bucket: String,
    /// Its region; default the environment's.
    #[serde(default, deserialize_with = "super::rendered::opt_text")]
    pub region: Option<String>,
}

/// What to do with objects whose ACL lets anyone read them. New S3 buckets disable ACLs
/// (Object Ownership "bucket owner enforced"): public access there is a bucket policy or a CDN,
/// so a public object can only be refused or copied private, never silently either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PublicObjects {
    /// The step fails naming the public objects (copied nothing of them): decide first.
    Fail,
    /// Copied private; counted in `public` and marked `public: true` in the manifest, for the
    /// bucket policy or CDN that serves them.
    Private,
}

/// Default `jobs`: objects copied at once.
pub fn default_jobs() -> usize {
    8
}

/// Default `requests_per_second` against the source: below Spaces' 150 writes and LISTs per
/// second of older buckets, with room for the application (DigitalOcean's Spaces limits).
pub fn default_rate() -> u32 {
    100
}

/// Default `public_objects`.
pub fn default_public() -> PublicObjects {
    PublicObjects::Fail
}

/// A `manifest` parameter that cannot name a manifest, as `cutover validate` reports it.
pub fn check_manifest(name: &str) -> Option<String> {
    (!valid_manifest_name(name)).then(|| {
        format!(
            "manifest {name:?} is not a manifest's file name (objects-<step>.jsonl): use {{{{ steps.<id>.outputs.manifest }}}} of the s3.replicate step"
        )
    })
}

/// `jobs` and `requests_per_second` out of range, as `cutover validate` reports them.
pub fn check_knobs(jobs: usize, rate: u32) -> Vec<String> {
    let mut out = Vec::new();
    if !(1..=64).contains(&jobs) {
        out.push(format!("jobs {jobs} is not between 1 and 64"));
    }
    if rate == 0 {
        out.push("requests_per_second must be at least 1".into());
    }
    out
}

/// The two buckets of a step: the source with its request budget, the target through the
/// environment's AWS session.
pub struct Buckets {
    /// The legacy bucket.
    pub source: Bucket,
    /// The AWS bucket.
    pub target: Bucket,
}

/// Builds both buckets.
///
/// # Errors
/// [`StepError::Provider`] when the environment's AWS session cannot be had.
pub async fn buckets(
    cx: &StepContext<'_>,
    source: &SourceParams,
    target: &TargetParams,
    rate: u32,
) -> Result<Buckets, StepError> {
    let src = Bucket::compatible(
        Location {
            endpoint: Some(source.endpoint.clone()),
            region: source.region.clone(),
            bucket: source.bucket.clone(),
        },
        &source.access_key_id,
        &source.secret_access_key,
    )
    .with_budget(Arc::new(Budget::per_second(rate)));
    let session = cx.providers.aws().await?;
    let dst = Bucket::aws(
        &session.config,
        Location {
            endpoint: None,
            region: target
                .region
                .clone()
                .unwrap_or_else(|| cx.env.aws.region.clone()),
            bucket: target.bucket.clone(),
        },
    );
    Ok(Buckets {
        source: src,
        target: dst,
    })
}

/// One object in the manifest: what was copied and what it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag on both sides, without quotes.
    pub etag: String,
    /// SHA-256 of the content, computed while it streamed (a multipart object's is the composite
    /// over its parts, `<hex>-<parts>`, as S3 defines composite checksums).
    pub sha256: String,
    /// A multipart object's part sizes in bytes (empty for a single-part one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<u64>,
    /// The target's version id, where the bucket keeps versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The source's ACL let anyone read it (copied private, `public_objects: private`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
}

/// One manifest line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Line {
    /// The object landed on the target in pass `pass`.
    Copied {
        /// Which pass (1 = the bulk pass).
        pass: u32,
        /// What landed.
        #[serde(flatten)]
        entry: Entry,
    },
    /// The object was deleted on the target (gone from the source) in pass `pass`.
    Deleted {
        /// Which pass.
        pass: u32,
        /// The key.
        key: String,
    },
}

/// The manifest file and its entries by key.
pub struct Manifest {
    path: PathBuf,
    file: std::fs::File,
    entries: BTreeMap<String, Entry>,
    /// Copy lines read or written (an object copied twice counts twice).
    copies: u64,
}

/// The manifest file of step `step` in `run_dir`.
pub fn manifest_path(run_dir: &Path, step: &str) -> PathBuf {
    run_dir.join(manifest_name(step))
}

/// The manifest's file name for step `step` (what `s3.replicate` outputs as `manifest`).
pub fn manifest_name(step: &str) -> String {
    format!("objects-{step}.jsonl")
}

/// Whether `name` can be a manifest's file name (no directory, the `objects-*.jsonl` form).
pub fn valid_manifest_name(name: &str) -> bool {
    name.starts_with("objects-")
        && name.ends_with(".jsonl")
        && !name.contains('/')
        && !name.contains("..")
}

impl Manifest {
    /// Opens (or creates) the manifest at `path`, reading what it holds. A last line cut short
    /// (the process killed while writing it) is dropped from the file.
    ///
    /// # Errors
    /// The I/O error, or a line before the last that does not parse.
    pub fn open(path: &Path) -> std::io::Result<Manifest> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut entries = BTreeMap::new();
        let mut copies = 0;
        let mut good = 0usize;
        let mut offset = 0usize;
        for raw in text.split_inclusive(|b| *b == b'\n') {
            offset += raw.len();
            let complete = raw.ends_with(b"\n");
            match serde_json::from_slice::<Line>(raw) {
                Ok(Line::Copied { entry, .. }) if complete => {
                    copies += 1;
                    entries.insert(entry.key.clone(), entry);
                    good = offset;
                }
                Ok(Line::Deleted { key, .. }) if complete => {
                    entries.remove(&key);
                    good = offset;
                }
                _ if offset == text.len() => break,
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: line ending at byte {offset}: {e}", path.display()),
                    ))
                }
                Ok(_) => unreachable!("a complete line is handled above"),
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        file.set_len(good as u64)?;
        let mut file = file;
        use std::io::Seek;
        file.seek(std::io::SeekFrom::End(0))?;
        Ok(Manifest {
            path: path.to_path_buf(),
            file,
            entries,
            copies,
        })
    }

    /// Appends `line` (one write) and applies it.
    ///
    /// # Errors
    /// The I/O error.
    pub fn record(&mut self, line: Line) -> std::io::Result<()> {
        let mut text = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
        text.push(b'\n');
        self.file.write_all(&text)?;
        match line {
            Line::Copied { entry, .. } => {
                self.copies += 1;
                self.entries.insert(entry.key.clone(), entry);
            }
            Line::Deleted { key, .. } => {
                self.entries.remove(&key);
            }
        }
        Ok(())
    }

    /// Flushes the file to disk.
    ///
    /// # Errors
    /// The I/O error.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// The entry of `key`.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Every entry, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// Objects and bytes the manifest holds.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.entries.len() as u64,
            self.entries.values().map(|e| e.size).sum(),
        )
    }

    /// Copy lines recorded (an object copied again counts again).
    pub fn copies(&self) -> u64 {
        self.copies
    }

    /// The root hash: SHA-256 (hex) over `key \t size \t etag \t sha256 \n` of every entry in key
    /// order. Equal manifests give equal hashes whatever order the objects landed in.
    pub fn root(&self) -> String {
        let mut h = Sha256::new();
        for e in self.entries.values() {
            h.update(format!("{}\t{}\t{}\t{}\n", e.key, e.size, e.etag, e.sha256).as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn io(path: &Path, e: std::io::Error) -> StepError {
    StepError::Check(format!("the object manifest {}: {e}", path.display()))
}

/// Opens the manifest at `path`, as a step error.
///
/// # Errors
/// [`StepError::Check`] naming the file.
pub fn open_manifest(path: &Path) -> Result<Manifest, StepError> {
    Manifest::open(path).map_err(|e| io(path, e))
}

/// Opens the manifest an earlier step of this run named `name` (its `manifest` output).
///
/// # Errors
/// [`StepError::Params`] for a name that is not a manifest's; [`StepError::Check`] when this
/// run has no such manifest or it cannot be read.
pub fn open_named(cx: &StepContext<'_>, name: &str) -> Result<Manifest, StepError> {
    if !valid_manifest_name(name) {
        return Err(StepError::Params(format!(
            "manifest {name:?} is not a manifest's file name (objects-<step>.jsonl)"
        )));
    }
    let path = cx.run_dir.join(name);
    if !path.exists() {
        return Err(StepError::Check(format!(
            "no object manifest {name} in this run: it continues an s3.replicate of the same run"
        )));
    }
    open_manifest(&path)
}

/// The listed objects a pass copies: those the manifest does not hold with the same size and
/// ETag (new, or overwritten since they were copied).
pub fn to_copy(manifest: &Manifest, listed: Vec<Listed>) -> Vec<Listed> {
    listed
        .into_iter()
        .filter(|o| {
            manifest
                .get(&o.key)
                .is_none_or(|e| e.etag != o.etag || e.size != o.size)
        })
        .collect()
}

/// The manifest's keys the source no longer listed (`seen`): deleted there since the copy.
pub fn gone_from_source(manifest: &Manifest, seen: &HashSet<String>) -> Vec<String> {
    manifest
        .entries()
        .filter(|e| !seen.contains(&e.key))
        .map(|e| e.key.clone())
        .collect()
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    /// Objects the source listed.
    pub listed: u64,
    /// Objects copied.
    pub copied: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Objects deleted on the target (gone from the source).
    pub deleted: u64,
    /// Keys replaced or deleted on the source while they were copied (the next pass takes them).
    pub changed: Vec<String>,
    /// Public keys refused (`public_objects: fail`).
    pub refused: Vec<String>,
    /// Public keys copied private.
    pub public: u64,
    /// Requests retried after a throttle or a transport error.
    pub retries: u64,
    /// Keys the application rewrote on the target since the write-flip, left as it wrote them
    /// although the source changed too ([`Knobs::keep_target_writes`]).
    pub kept: Vec<String>,
}

impl Pass {
    /// Objects this pass changed on the target.
    pub fn changes(&self) -> u64 {
        self.copied + self.deleted
    }
}

/// How a pass runs.
pub struct Knobs {
    /// Objects copied at once.
    pub jobs: usize,
    /// The public-ACL policy.
    pub public: PublicObjects,
    /// The application already writes to the target (after a write-flip): an object it wrote
    /// there (absent from the manifest, or with another ETag than the manifest's) is neither
    /// overwritten nor deleted from the source's side.
    pub keep_target_writes: bool,
}

enum Done {
    Copied(Entry, u64),
    Changed(String),
    Refused(String),
}

/// Copies one object with retries on throttling and transport errors (exponential backoff from
/// 200 ms to 10 s, 8 tries: the SDK's own retries cannot replay a streamed body). Its ACL is read
/// while it copies; a public object refused by `public_objects: fail` is deleted from the target
/// again.
async fn copy_one(
    from: &Bucket,
    to: &Bucket,
    o: &Listed,
    public: PublicObjects,
) -> Result<Done, ObjectError> {
    use backon::Retryable;
    use std::sync::atomic::{AtomicU64, Ordering};
    let tries = Arc::new(AtomicU64::new(0));
    let acl = {
        let (from, key, tries) = (from.clone(), o.key.clone(), tries.clone());
        let read = move || {
            let (from, key) = (from.clone(), key.clone());
            async move { from.public_read(&key).await }
        };
        read.retry(backoff()).when(ObjectError::transient).notify(
            move |_: &ObjectError, _: Duration| {
                tries.fetch_add(1, Ordering::Relaxed);
            },
        )
    };
    let copy = {
        let (from, to, o, tries) = (from.clone(), to.clone(), o.clone(), tries.clone());
        let write = move || {
            let (from, to, o) = (from.clone(), to.clone(), o.clone());
            async move { objects::copy(&from, &to, &o).await }
        };
        write.retry(backoff()).when(ObjectError::transient).notify(
            move |_: &ObjectError, _: Duration| {
                tries.fetch_add(1, Ordering::Relaxed);
            },
        )
    };
    let (is_public, copied) = tokio::join!(acl, copy);
    let is_public = match is_public {
        Ok(p) => p,
        Err(ObjectError::Gone { key }) => return Ok(Done::Changed(key)),
        Err(e) => return Err(e),
    };
    if is_public && public == PublicObjects::Fail {
        if copied.is_ok() {
            to.delete(&o.key).await?;
        }
        return Ok(Done::Refused(o.key.clone()));
    }
    match copied {
        Ok(c) => Ok(Done::Copied(
            Entry {
                key: o.key.clone(),
                size: c.size,
                etag: c.etag,
                sha256: c.sha256,
                parts: c.parts,
                version: c.version,
                public: is_public,
            },
            tries.load(Ordering::Relaxed),
        )),
        Err(ObjectError::Changed { key, .. }) | Err(ObjectError::Gone { key }) => {
            Ok(Done::Changed(key))
        }
        Err(e) => Err(e),
    }
}

fn backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(8)
        .with_jitter()
}

fn object_error(e: ObjectError) -> StepError {
    StepError::Check(e.to_string())
}

/// One pass from `from` to `to`: copies every listed object the manifest does not hold with the
/// same size and ETag, deletes on the target the manifest's objects the source no longer lists,
/// and records each in `manifest` as it lands. Reports progress after each listing page.
///
/// # Errors
/// [`StepError::Check`] for a failed request (after retries) or the manifest's I/O;
/// [`StepError::Timeout`] past the step's deadline.
pub async fn pass(
    cx: &StepContext<'_>,
    b: &Buckets,
    manifest: &mut Manifest,
    knobs: &Knobs,
    n: u32,
) -> Result<Pass, StepError> {
    let mut out = Pass::default();
    let mut seen: HashSet<String> = HashSet::new();
    let mut token = None;
    loop {
        cx.check_deadline("the object copy")?;
        let page = b.source.list_page("", token).await.map_err(object_error)?;
        out.listed += page.objects.len() as u64;
        seen.extend(page.objects.iter().map(|o| o.key.clone()));
        let mut todo = to_copy(manifest, page.objects);
        if knobs.keep_target_writes {
            let mut left = Vec::with_capacity(todo.len());
            for o in todo {
                if written_on_target(&b.target, manifest.get(&o.key), &o.key).await? {
                    out.kept.push(o.key);
                } else {
                    left.push(o);
                }
            }
            todo = left;
        }
        let public = knobs.public;
        let mut results = futures_util::stream::iter(todo)
            .map(|o| {
                let (from, to) = (b.source.clone(), b.target.clone());
                async move { copy_one(&from, &to, &o, public).await }
            })
            .buffer_unordered(knobs.jobs);
        while let Some(r) = results.next().await {
            match r.map_err(object_error)? {
                Done::Copied(entry, retries) => {
                    out.copied += 1;
                    out.bytes += entry.size;
                    out.retries += retries;
                    out.public += u64::from(entry.public);
                    manifest
                        .record(Line::Copied { pass: n, entry })
                        .map_err(|e| io(manifest.path(), e))?;
                }
                Done::Changed(k) => out.changed.push(k),
                Done::Refused(k) => out.refused.push(k),
            }
        }
        drop(results);
        (cx.progress)(&format!(
            "objects pass {n}: {} listed, {} copied ({}), {} changed meanwhile",
            out.listed,
            out.copied,
            bytes(out.bytes),
            out.changed.len()
        ));
        match page.next {
            Some(t) => token = Some(t),
            None => break,
        }
    }
    let gone = gone_from_source(manifest, &seen);
    for key in gone {
        if knobs.keep_target_writes
            && written_on_target(&b.target, manifest.get(&key), &key).await?
        {
            out.kept.push(key);
            continue;
        }
        b.target.delete(&key).await.map_err(object_error)?;
        manifest
            .record(Line::Deleted { pass: n, key })
            .map_err(|e| io(manifest.path(), e))?;
        out.deleted += 1;
    }
    manifest.sync().map_err(|e| io(manifest.path(), e))?;
    Ok(out)
}

/// Whether the target's object `key` is not what the manifest recorded copying (`entry`): the
/// application wrote it there.
async fn written_on_target(
    target: &Bucket,
    entry: Option<&Entry>,
    key: &str,
) -> Result<bool, StepError> {
    let head = target.head(key).await.map_err(object_error)?;
    Ok(match (head, entry) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(h), Some(e)) => h.etag != e.etag,
    })
}

/// `public_objects: fail` found public objects: the error naming them.
pub fn refused(keys: &[String]) -> StepError {
    StepError::Check(format!(
        "{} object(s) on the source are public (their ACL grants AllUsers READ) and S3 buckets disable ACLs: {}; set public_objects: private to copy them private and serve them through a bucket policy or CDN",
        keys.len(),
        some_keys(keys)
    ))
}

/// Up to 10 keys, then how many more.
pub fn some_keys(keys: &[String]) -> String {
    let mut s = keys.iter().take(10).cloned().collect::<Vec<_>>().join(", ");
    if keys.len() > 10 {
        s.push_str(&format!(" and {} more", keys.len() - 10));
    }
    s
}

/// Bytes with a binary unit, e.g. `1.5 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// What a comparison of the target with the manifest found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Objects equal to their entry (size and ETag; and SHA-256 when content was read).
    pub equal: u64,
    /// Keys whose size, ETag or content differ, with what differs.
    pub different: Vec<String>,
    /// Manifest keys the target does not have.
    pub missing: Vec<String>,
    /// Target keys the manifest does not hold.
    pub unexpected: Vec<String>,
}

impl Comparison {
    /// True when every object matched and nothing was extra.
    pub fn clean(&self) -> bool {
        self.different.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }

    /// One line naming every problem by key.
    pub fn problems(&self) -> String {
        let mut parts = Vec::new();
        if !self.different.is_empty() {
            parts.push(format!(
                "{} differ: {}",
                self.different.len(),
                some_keys(&self.different)
            ));
        }
        if !self.missing.is_empty() {
            parts.push(format!(
                "{} missing on the target: {}",
                self.missing.len(),
                some_keys(&self.missing)
            ));
        }
        if !self.unexpected.is_empty() {
            parts.push(format!(
                "{} on the target but not on the source: {}",
                self.unexpected.len(),
                some_keys(&self.unexpected)
            ));
        }
        parts.join("; ")
    }
}

/// Compares every object of `target` with `manifest`: size and ETag from the listing, and with
/// `content` the SHA-256 of the bytes the target serves (every object read again).
///
/// # Errors
/// [`StepError::Check`] for a failed request.
pub async fn compare(
    cx: &StepContext<'_>,
    target: &Bucket,
    manifest: &Manifest,
    content: bool,
    jobs: usize,
) -> Result<Comparison, StepError> {
    compare_with(cx, target, manifest, content, jobs, &[]).await
}

/// [`compare`], where the keys in `kept` (rewritten on the target by the application) count as
/// the application's objects.
///
/// # Errors
/// [`StepError::Check`] for a failed request.
pub async fn compare_with(
    cx: &StepContext<'_>,
    target: &Bucket,
    manifest: &Manifest,
    content: bool,
    jobs: usize,
    kept: &[String],
) -> Result<Comparison, StepError> {
    let mut out = Comparison::default();
    let mut seen = HashSet::new();
    let mut listed = Vec::new();
    target
        .list_each("", |page| {
            listed.extend(page);
            Ok(())
        })
        .await
        .map_err(object_error)?;
    let mut to_read = Vec::new();
    for o in listed {
        seen.insert(o.key.clone());
        if kept.contains(&o.key) {
            out.unexpected.push(o.key);
            continue;
        }
        match manifest.get(&o.key) {
            None => out.unexpected.push(o.key),
            Some(e) if e.size != o.size || e.etag != o.etag => out.different.push(format!(
                "{} (size {} ETag {} on the target, {} {} copied)",
                o.key, o.size, o.etag, e.size, e.etag
            )),
            Some(e) if content => to_read.push(e.clone()),
            Some(_) => out.equal += 1,
        }
    }
    let total = to_read.len();
    let mut reads = futures_util::stream::iter(to_read)
        .map(|e| async move { (target.sha256(&e.key, &e.parts).await, e) })
        .buffer_unordered(jobs);
    let mut done = 0;
    while let Some((r, e)) = reads.next().await {
        let (size, sha) = r.map_err(object_error)?;
        if size == e.size && sha == e.sha256 {
            out.equal += 1;
        } else {
            out.different.push(format!(
                "{} (content SHA-256 {} on the target, {} copied)",
                e.key, sha, e.sha256
            ));
        }
        done += 1;
        if done % 1000 == 0 {
            (cx.progress)(&format!("objects: {done}/{total} read back"));
        }
    }
    out.missing = manifest
        .entries()
        .filter(|e| !seen.contains(&e.key))
        .map(|e| e.key.clone())
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, size: u64) -> Entry {
        Entry {
            key: key.into(),
            size,
            etag: format!("etag-{key}"),
            sha256: format!("sha-{key}"),
            parts: Vec::new(),
            version: None,
            public: false,
        }
    }

    #[test]
    fn a_manifest_reopens_with_what_it_recorded_and_drops_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = manifest_path(dir.path(), "objects");
        let mut m = Manifest::open(&path).unwrap();
        m.record(Line::Copied {
            pass: 1,
            entry: entry("a", 3),
        })
        .unwrap();
        m.record(Line::Copied {
            pass: 1,
            entry: entry("b", 5),
        })
        .unwrap();
        m.record(Line::Deleted {
            pass: 2,
            key: "a".into(),
        })
        .unwrap();
        let root = m.root();
        drop(m);
        // A kill in the middle of a write leaves part of a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(br#"{"op":"copied","pass":2,"key":"c""#)
            .unwrap();
        drop(f);
        let mut m = Manifest::open(&path).unwrap();
        assert_eq!(m.totals(), (1, 5));
        assert_eq!(m.copies(), 2);
        assert_eq!(m.root(), root);
        assert!(m.get("a").is_none() && m.get("c").is_none());
        // The torn line is gone from the file: the next record starts a line of its own.
        m.record(Line::Copied {
            pass: 2,
            entry: entry("c", 7),
        })
        .unwrap();
        drop(m);
        let m = Manifest::open(&path).unwrap();
        assert_eq!(m.totals(), (2, 12));
    }

    #[test]
    fn a_damaged_line_before_the_last_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = manifest_path(dir.path(), "objects");
        std::fs::write(
            &path,
            "not json\n{\"op\":\"deleted\",\"pass\":1,\"key\":\"a\"}\n",
        )
        .unwrap();
        let e = Manifest::open(&path).err().expect("refused").to_string();
        assert!(e.contains("objects-objects.jsonl"), "{e}");
    }

    #[test]
    fn the_root_hash_depends_on_content_not_on_landing_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut one = Manifest::open(&manifest_path(dir.path(), "one")).unwrap();
        let mut two = Manifest::open(&manifest_path(dir.path(), "two")).unwrap();
        for k in ["x", "y"] {
            one.record(Line::Copied {
                pass: 1,
                entry: entry(k, 1),
            })
            .unwrap();
        }
        for k in ["y", "x"] {
            two.record(Line::Copied {
                pass: 1,
                entry: entry(k, 1),
            })
            .unwrap();
        }
        assert_eq!(one.root(), two.root());
        let mut changed = entry("x", 1);
        changed.sha256 = "other".into();
        two.record(Line::Copied {
            pass: 2,
            entry: changed,
        })
        .unwrap();
        assert_ne!(one.root(), two.root());
    }

    #[test]
    fn a_pass_copies_new_and_overwritten_objects_and_deletes_what_the_source_lost() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::open(&manifest_path(dir.path(), "objects")).unwrap();
        for (k, size) in [("same", 3), ("overwritten", 4), ("deleted", 5)] {
            m.record(Line::Copied {
                pass: 1,
                entry: entry(k, size),
            })
            .unwrap();
        }
        let listed = vec![
            Listed {
                key: "same".into(),
                size: 3,
                etag: "etag-same".into(),
            },
            Listed {
                key: "overwritten".into(),
                size: 4,
                etag: "another".into(),
            },
            Listed {
                key: "new".into(),
                size: 1,
                etag: "etag-new".into(),
            },
        ];
        let seen: HashSet<String> = listed.iter().map(|o| o.key.clone()).collect();
        let copy: Vec<String> = to_copy(&m, listed).into_iter().map(|o| o.key).collect();
        assert_eq!(copy, ["overwritten", "new"]);
        assert_eq!(gone_from_source(&m, &seen), ["deleted"]);
    }

    #[test]
    fn comparisons_name_each_problem_by_key() {
        let c = Comparison {
            equal: 3,
            different: vec!["a (size 1 ETag x on the target, 2 y copied)".into()],
            missing: vec!["b".into()],
            unexpected: vec![],
        };
        assert!(!c.clean());
        let p = c.problems();
        assert!(
            p.contains("1 differ: a (size 1") && p.contains("1 missing on the target: b"),
            "{p}"
        );
        assert!(Comparison::default().clean());
    }

    #[test]
    fn manifest_names_stay_inside_the_run_directory() {
        assert!(valid_manifest_name("objects-uploads.jsonl"));
        assert!(!valid_manifest_name("../objects-x.jsonl"));
        assert!(!valid_manifest_name("objects-a/b.jsonl"));
        assert!(!valid_manifest_name("events.jsonl"));
    }

    #[test]
    fn knobs_out_of_range_are_named() {
        assert!(check_knobs(8, 100).is_empty());
        assert_eq!(check_knobs(0, 0).len(), 2);
        assert!(check_knobs(65, 1)[0].contains("65"));
    }

    #[test]
    fn some_keys_names_ten_and_counts_the_rest() {
        let keys: Vec<String> = (0..12).map(|i| format!("k{i}")).collect();
        let s = some_keys(&keys);
        assert!(s.starts_with("k0, k1") && s.ends_with("and 2 more"), "{s}");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(10), "10 B");
    }
}
