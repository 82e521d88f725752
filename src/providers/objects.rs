//! Object storage over the S3 API: an S3-compatible legacy endpoint (DigitalOcean Spaces,
//! SeaweedFS, MinIO) or a bucket in the environment's AWS account, through the AWS SDK's S3
//! client. Owns listing, reading an object's layout and metadata, and the streamed copy of one
//! object between two buckets (no local disk; memory is the chunks in flight), with the SHA-256
//! of its content computed on the way.
//!
//! It knows nothing of runbooks, manifests or passes: the step kinds (`steps::objects`) decide what
//! to copy and record it.
//!
//! Rules it follows, with their sources:
//! - Checksums are calculated and validated only where an operation requires them
//!   (`RequestChecksumCalculation::WhenRequired`): AWS SDK releases from January 2025 otherwise
//!   send CRC checksums (aws-chunked) that DigitalOcean Spaces refuses.
//! - A single-part object's ETag is the MD5 of its content, so its copy is sent with
//!   `Content-MD5` and the server refuses bytes that differ; a multipart object's ETag is the MD5
//!   of its parts' MD5s followed by `-<parts>`, so the copy keeps the source's part sizes and the
//!   target's ETag equals the source's exactly when every part arrived intact (AWS S3 user guide,
//!   "Checking object integrity").
//! - A server that slows a client down answers 503 `SlowDown` (Spaces, S3): reported as
//!   [`ObjectError::Throttled`] for the caller to back off and retry.

use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_types::body::SdkBody;
use base64::Engine as _;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Why an object operation failed. Messages name the bucket, the operation and the key, never a
/// credential.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The server asked the client to slow down (HTTP 503, `SlowDown`).
    #[error("{bucket}: {op} {key}: slowed down by the server (503 SlowDown)")]
    Throttled {
        /// The bucket's label (`endpoint/bucket`).
        bucket: String,
        /// The S3 operation, e.g. `GetObject`.
        op: &'static str,
        /// The object key (empty for bucket operations).
        key: String,
    },
    /// Any other failed request: the server's code and message, or the transport's error.
    #[error("{bucket}: {op} {key}: {message}")]
    Request {
        /// The bucket's label (`endpoint/bucket`).
        bucket: String,
        /// The S3 operation.
        op: &'static str,
        /// The object key (empty for bucket operations).
        key: String,
        /// The error with its context.
        message: String,
    },
    /// The source object was replaced while it was read (its ETag no longer matches the listing).
    #[error("{key}: replaced on the source while it was copied (ETag {expected} is gone)")]
    Changed {
        /// The object key.
        key: String,
        /// The ETag the copy started from.
        expected: String,
    },
    /// The object no longer exists on the source.
    #[error("{key}: deleted from the source")]
    Gone {
        /// The object key.
        key: String,
    },
    /// The target computed another ETag than the source's: the bytes did not arrive intact, or
    /// the part layout was not the source's.
    #[error("{key}: the target's ETag {target} differs from the source's {expected}")]
    Mismatch {
        /// The object key.
        key: String,
        /// The source's ETag.
        expected: String,
        /// The target's ETag.
        target: String,
    },
}

impl ObjectError {
    /// True for errors worth retrying after a pause: throttling and transport failures.
    pub fn transient(&self) -> bool {
        matches!(
            self,
            ObjectError::Throttled { .. } | ObjectError::Request { .. }
        )
    }
}

/// Where a bucket is and how to reach it.
#[derive(Debug, Clone)]
pub struct Location {
    /// The S3 API endpoint, e.g. `https://nyc3.digitaloceanspaces.com`; `None` for AWS S3 (the
    /// session's endpoint, which `AWS_ENDPOINT_URL` may point at a stand-in).
    pub endpoint: Option<String>,
    /// The signing region, e.g. `nyc3` or `us-east-1`.
    pub region: String,
    /// The bucket's name.
    pub bucket: String,
}

impl Location {
    /// `endpoint/bucket` (or `s3://bucket`), as messages name it.
    pub fn label(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("{}/{}", e.trim_end_matches('/'), self.bucket),
            None => format!("s3://{}", self.bucket),
        }
    }
}

/// A request-rate budget: at most `per_second` requests start per second on average, with
/// bursts of up to a tenth of a second's worth, shared by every task using the bucket (Spaces
/// limits older buckets to 240 operations/s, 150 of them writes and LISTs: DigitalOcean's Spaces
/// limits page). A request within the budget starts at once.
pub struct Budget {
    period: Duration,
    burst: Duration,
    next: Mutex<Instant>,
}

impl Budget {
    /// A budget of `per_second` requests per second (at least 1).
    pub fn per_second(per_second: u32) -> Budget {
        let period = Duration::from_secs_f64(1.0 / f64::from(per_second.max(1)));
        Budget {
            period,
            burst: Duration::from_millis(100).max(period),
            next: Mutex::new(Instant::now()),
        }
    }

    /// How long the caller must wait before its request, from `now`; books its slot.
    fn book(&self, now: Instant) -> Duration {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        // Time left unused beyond one burst does not accumulate.
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        let start = (*next).max(floor);
        *next = start + self.period;
        start.saturating_duration_since(now)
    }

    async fn take(&self) {
        let wait = self.book(Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// One bucket and the client that reaches it.
#[derive(Clone)]
pub struct Bucket {
    client: aws_sdk_s3::Client,
    location: Location,
    label: String,
    budget: Option<Arc<Budget>>,
}

/// An object as a listing shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// The ETag, without quotes.
    pub etag: String,
}

/// One page of a listing and where the next one starts.
pub struct Page {
    /// Objects in key order.
    pub objects: Vec<Listed>,
    /// The continuation token of the next page, `None` on the last page.
    pub next: Option<String>,
}

/// The HTTP headers an object is served with and its user metadata: what a faithful copy keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Cache-Control`.
    pub cache_control: Option<String>,
    /// `Content-Disposition`.
    pub content_disposition: Option<String>,
    /// `Content-Encoding`.
    pub content_encoding: Option<String>,
    /// `Content-Language`.
    pub content_language: Option<String>,
    /// `Expires`, as the server sent it (an HTTP date).
    pub expires: Option<String>,
    /// `x-amz-meta-*` pairs, names lower-case without the prefix.
    pub user: BTreeMap<String, String>,
}

/// An object's head: size, ETag, part count and metadata.
#[derive(Debug, Clone)]
pub struct Head {
    /// Size in bytes.
    pub size: u64,
    /// The ETag, without quotes.
    pub etag: String,
    /// The version id, where the bucket keeps versions.
    pub version: Option<String>,
    /// Served headers and user metadata.
    pub metadata: Metadata,
}

/// What one copy wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copied {
    /// Size in bytes.
    pub size: u64,
    /// The target's ETag (equal to the source's), without quotes.
    pub etag: String,
    /// SHA-256 of the content, lower-case hex, computed from the bytes streamed; for a
    /// multipart object the composite ([`composite_sha256`]: `<hex>-<parts>`).
    pub sha256: String,
    /// The target's version id, where its bucket keeps versions.
    pub version: Option<String>,
    /// The part sizes in bytes of a multipart object (empty for a single-part one).
    pub parts: Vec<u64>,
}

/// The part count a multipart ETag (`<md5>-<n>`) names; `None` for a single-part ETag.
pub fn etag_parts(etag: &str) -> Option<u32> {
    let (_, n) = etag.rsplit_once('-')?;
    n.parse().ok()
}

/// The base64 `Content-MD5` of a single-part ETag (32 hex digits), `None` for any other ETag
/// (multipart, or encrypted with SSE-KMS, where the ETag is not the content's MD5).
pub fn content_md5(etag: &str) -> Option<String> {
    let raw = hex::decode(etag).ok().filter(|b| b.len() == 16)?;
    Some(base64::engine::general_purpose::STANDARD.encode(raw))
}

fn unquote(etag: Option<&str>) -> String {
    etag.unwrap_or_default().trim_matches('"').to_string()
}

/// The sizes of `parts` parts of an object of `size` bytes whose first part has `first` bytes,
/// when every part but the last has the first's size (how every SDK, the AWS CLI and rclone
/// upload); `None` when the counts cannot fit that layout.
pub fn uniform_parts(size: u64, parts: u32, first: u64) -> Option<Vec<u64>> {
    if parts == 0 || first == 0 {
        return None;
    }
    let before_last = first.checked_mul(u64::from(parts - 1))?;
    let last = size.checked_sub(before_last).filter(|l| *l > 0)?;
    if last > first || (parts == 1 && last != first) {
        return None;
    }
    let mut sizes = vec![first; parts as usize - 1];
    sizes.push(last);
    Some(sizes)
}

/// A request body that hashes the bytes it passes on: the source object's stream, sent to the
/// target while the SHA-256 of the content is computed.
struct Hashing {
    inner: SdkBody,
    hasher: Arc<Mutex<Sha256>>,
    size: u64,
}

impl http_body::Body for Hashing {
    type Data = Bytes;
    type Error = aws_smithy_types::body::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.hasher
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .update(data);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.size)
    }
}

fn hashing(body: ByteStream, size: u64, hasher: &Arc<Mutex<Sha256>>) -> ByteStream {
    ByteStream::from_body_1_x(Hashing {
        inner: body.into_inner(),
        hasher: hasher.clone(),
        size,
    })
}

type Response = aws_smithy_runtime_api::http::Response;

fn status<E>(e: &SdkError<E, Response>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

impl Bucket {
    /// A bucket on an S3-compatible endpoint, signed with the given access key (path-style
    /// addressing, which every S3-compatible server accepts).
    pub fn compatible(location: Location, access_key_id: &str, secret_access_key: &str) -> Bucket {
        let creds = Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "cutover-object-storage",
        );
        let mut conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new(location.region.clone()))
            .credentials_provider(creds)
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &location.endpoint {
            conf = conf.endpoint_url(e);
        }
        Bucket::from_client(aws_sdk_s3::Client::from_conf(conf.build()), location)
    }

    /// A bucket in AWS S3 reached with `config` (the environment's assumed-role session).
    pub fn aws(config: &aws_config::SdkConfig, location: Location) -> Bucket {
        let mut conf = aws_sdk_s3::config::Builder::from(config)
            .region(Region::new(location.region.clone()))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(e) = &location.endpoint {
            conf = conf.endpoint_url(e);
        }
        Bucket::from_client(aws_sdk_s3::Client::from_conf(conf.build()), location)
    }

    fn from_client(client: aws_sdk_s3::Client, location: Location) -> Bucket {
        Bucket {
            client,
            label: location.label(),
            location,
            budget: None,
        }
    }

    /// The same bucket with every request waiting for `budget`.
    pub fn with_budget(mut self, budget: Arc<Budget>) -> Bucket {
        self.budget = Some(budget);
        self
    }

    /// `endpoint/bucket`, as messages name it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Where the bucket is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    async fn gate(&self) {
        if let Some(b) = &self.budget {
            b.take().await;
        }
    }

    fn fail<E>(&self, op: &'static str, key: &str, e: SdkError<E, Response>) -> ObjectError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let code = e.as_service_error().and_then(|s| s.code()).unwrap_or("");
        if code == "SlowDown" || status(&e) == Some(503) {
            return ObjectError::Throttled {
                bucket: self.label.clone(),
                op,
                key: key.to_string(),
            };
        }
        let message = match e.as_service_error() {
            Some(s) if !code.is_empty() => {
                format!("{code}: {}", s.message().unwrap_or(""))
            }
            _ => super::aws::err(op, e).to_string(),
        };
        ObjectError::Request {
            bucket: self.label.clone(),
            op,
            key: key.to_string(),
            message,
        }
    }

    /// One page (up to 1,000 objects) of the keys under `prefix`, from `token`.
    ///
    /// # Errors
    /// [`ObjectError`] when the listing fails.
    pub async fn list_page(
        &self,
        prefix: &str,
        token: Option<String>,
    ) -> Result<Page, ObjectError> {
        self.gate().await;
        let out = self
            .client
            .list_objects_v2()
            .bucket(&self.location.bucket)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|e| self.fail("ListObjectsV2", "", e))?;
        let objects = out
            .contents()
            .iter()
            .map(|o| Listed {
                key: o.key().unwrap_or_default().to_string(),
                size: o.size().unwrap_or(0).max(0) as u64,
                etag: unquote(o.e_tag()),
            })
            .collect();
        let next = out
            .is_truncated()
            .unwrap_or(false)
            .then(|| out.next_continuation_token().map(str::to_string))
            .flatten();
        Ok(Page { objects, next })
    }

    /// Every object under `prefix`, in key order (one page at a time through `each`).
    ///
    /// # Errors
    /// [`ObjectError`] when a page fails, or what `each` returns.
    pub async fn list_each<F>(&self, prefix: &str, mut each: F) -> Result<(), ObjectError>
    where
        F: FnMut(Vec<Listed>) -> Result<(), ObjectError>,
    {
        let mut token = None;
        loop {
            let page = self.list_page(prefix, token).await?;
            each(page.objects)?;
            match page.next {
                Some(t) => token = Some(t),
                None => return Ok(()),
            }
        }
    }

    /// The object's head, `None` when it does not exist.
    ///
    /// # Errors
    /// [`ObjectError`] for any other failure.
    pub async fn head(&self, key: &str) -> Result<Option<Head>, ObjectError> {
        self.gate().await;
        match self
            .client
            .head_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(h) => Ok(Some(Head {
                size: h.content_length().unwrap_or(0).max(0) as u64,
                etag: unquote(h.e_tag()),
                version: h.version_id().map(str::to_string),
                metadata: metadata_of_head(&h),
            })),
            Err(e) if status(&e) == Some(404) => Ok(None),
            Err(e) => Err(self.fail("HeadObject", key, e)),
        }
    }

    /// The size of part `n` (from 1) of a multipart object whose ETag is `etag`.
    async fn part_size(&self, key: &str, etag: &str, n: u32) -> Result<u64, ObjectError> {
        Ok(self.part_head(key, etag, n).await?.0)
    }

    /// The size of part `n` (from 1) of a multipart object whose ETag is `etag`, and the
    /// object's metadata.
    async fn part_head(
        &self,
        key: &str,
        etag: &str,
        n: u32,
    ) -> Result<(u64, Metadata), ObjectError> {
        self.gate().await;
        let h = self
            .client
            .head_object()
            .bucket(&self.location.bucket)
            .key(key)
            .part_number(n as i32)
            .if_match(format!("\"{etag}\""))
            .send()
            .await
            .map_err(|e| self.changed_or(key, etag, "HeadObject", e))?;
        Ok((
            h.content_length().unwrap_or(0).max(0) as u64,
            metadata_of_head(&h),
        ))
    }

    fn changed_or<E>(
        &self,
        key: &str,
        etag: &str,
        op: &'static str,
        e: SdkError<E, Response>,
    ) -> ObjectError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        match status(&e) {
            Some(412) => ObjectError::Changed {
                key: key.to_string(),
                expected: etag.to_string(),
            },
            Some(404) => ObjectError::Gone {
                key: key.to_string(),
            },
            _ => self.fail(op, key, e),
        }
    }

    /// Whether the object's ACL lets anyone read it (a grant of `READ` or `FULL_CONTROL` to the
    /// `AllUsers` group). A server without object ACLs answers as S3 does for a bucket whose
    /// ACLs are disabled: private.
    ///
    /// # Errors
    /// [`ObjectError`] when the request fails otherwise.
    pub async fn public_read(&self, key: &str) -> Result<bool, ObjectError> {
        self.gate().await;
        let acl = match self
            .client
            .get_object_acl()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(a) => a,
            Err(e) if matches!(status(&e), Some(404) | Some(501)) => return Ok(false),
            Err(e) => return Err(self.fail("GetObjectAcl", key, e)),
        };
        Ok(acl.grants().iter().any(|g| {
            let all = g
                .grantee()
                .and_then(|w| w.uri())
                .is_some_and(|u| u.ends_with("/global/AllUsers"));
            let reads = matches!(
                g.permission(),
                Some(aws_sdk_s3::types::Permission::Read)
                    | Some(aws_sdk_s3::types::Permission::FullControl)
            );
            all && reads
        }))
    }

    /// Deletes the object (nothing when it does not exist).
    ///
    /// # Errors
    /// [`ObjectError`] when the request fails.
    pub async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        self.gate().await;
        self.client
            .delete_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| self.fail("DeleteObject", key, e))?;
        Ok(())
    }

    /// Deletes `keys` (absent ones too), up to 1,000 per `DeleteObjects` request.
    ///
    /// # Errors
    /// [`ObjectError`] when a request fails or the server reports a key it could not delete.
    pub async fn delete_many(&self, keys: &[String]) -> Result<(), ObjectError> {
        for chunk in keys.chunks(1000) {
            self.gate().await;
            let objects = chunk
                .iter()
                .map(|k| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .map_err(|e| ObjectError::Request {
                            bucket: self.label.clone(),
                            op: "DeleteObjects",
                            key: k.clone(),
                            message: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let delete = aws_sdk_s3::types::Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| ObjectError::Request {
                    bucket: self.label.clone(),
                    op: "DeleteObjects",
                    key: String::new(),
                    message: e.to_string(),
                })?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.location.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.fail("DeleteObjects", "", e))?;
            if let Some(e) = out.errors().first() {
                return Err(ObjectError::Request {
                    bucket: self.label.clone(),
                    op: "DeleteObjects",
                    key: e.key().unwrap_or_default().to_string(),
                    message: format!(
                        "{}: {}",
                        e.code().unwrap_or_default(),
                        e.message().unwrap_or_default()
                    ),
                });
            }
        }
        Ok(())
    }

    /// Reads the object and returns its size and SHA-256 (lower-case hex): a check of the
    /// content the bucket serves. With `parts` (a multipart object's part sizes) the composite
    /// over those byte ranges ([`composite_sha256`]), as [`copy`] records it.
    ///
    /// # Errors
    /// [`ObjectError::Gone`] when it does not exist; [`ObjectError`] otherwise.
    pub async fn sha256(&self, key: &str, parts: &[u64]) -> Result<(u64, String), ObjectError> {
        if parts.is_empty() {
            let (size, digest) = self.range_sha256(key, None).await?;
            return Ok((size, hex::encode(digest)));
        }
        let (mut size, mut digests, mut start) = (0, Vec::with_capacity(parts.len()), 0u64);
        for len in parts {
            let (n, d) = self
                .range_sha256(key, Some(format!("bytes={start}-{}", start + len - 1)))
                .await?;
            size += n;
            start += len;
            digests.push(d);
        }
        Ok((size, composite_sha256(&digests)))
    }

    async fn range_sha256(
        &self,
        key: &str,
        range: Option<String>,
    ) -> Result<(u64, [u8; 32]), ObjectError> {
        self.gate().await;
        let out = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .set_range(range)
            .send()
            .await
            .map_err(|e| self.changed_or(key, "", "GetObject", e))?;
        let mut body = out.body;
        let mut h = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| ObjectError::Request {
                bucket: self.label.clone(),
                op: "GetObject",
                key: key.to_string(),
                message: e.to_string(),
            })?;
            size += chunk.len() as u64;
            h.update(&chunk);
        }
        Ok((size, h.finalize().into()))
    }

    /// Reads a whole object (small objects: the sandbox application's uploads); `None` when it
    /// does not exist.
    ///
    /// # Errors
    /// [`ObjectError`] for any other failure.
    pub async fn get(&self, key: &str) -> Result<Option<(Bytes, Metadata)>, ObjectError> {
        self.gate().await;
        let out = match self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(o) => o,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(self.fail("GetObject", key, e)),
        };
        let metadata = metadata_of_get(&out);
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| ObjectError::Request {
                bucket: self.label.clone(),
                op: "GetObject",
                key: key.to_string(),
                message: e.to_string(),
            })?
            .into_bytes();
        Ok(Some((body, metadata)))
    }

    /// Writes `body` as one object with `metadata` (small objects: the sandbox's uploads and
    /// tests). Returns the ETag.
    ///
    /// # Errors
    /// [`ObjectError`] when the request fails.
    pub async fn put(
        &self,
        key: &str,
        body: Bytes,
        metadata: &Metadata,
    ) -> Result<String, ObjectError> {
        self.gate().await;
        let req = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(key)
            .content_length(body.len() as i64)
            .body(ByteStream::from(body));
        let out = with_metadata_put(req, metadata)
            .send()
            .await
            .map_err(|e| self.fail("PutObject", key, e))?;
        Ok(unquote(out.e_tag()))
    }

    /// Writes `parts` as one multipart object with `metadata` (tests and the sandbox's seed).
    /// Returns the ETag.
    ///
    /// # Errors
    /// [`ObjectError`] when a request fails.
    pub async fn put_parts(
        &self,
        key: &str,
        parts: Vec<Bytes>,
        metadata: &Metadata,
    ) -> Result<String, ObjectError> {
        self.gate().await;
        let req = self
            .client
            .create_multipart_upload()
            .bucket(&self.location.bucket)
            .key(key);
        let up = with_metadata_create(req, metadata)
            .send()
            .await
            .map_err(|e| self.fail("CreateMultipartUpload", key, e))?;
        let id = up.upload_id().unwrap_or_default().to_string();
        let mut done = Vec::new();
        for (i, p) in parts.into_iter().enumerate() {
            self.gate().await;
            let n = i as i32 + 1;
            let out = self
                .client
                .upload_part()
                .bucket(&self.location.bucket)
                .key(key)
                .upload_id(&id)
                .part_number(n)
                .content_length(p.len() as i64)
                .body(ByteStream::from(p))
                .send()
                .await
                .map_err(|e| self.fail("UploadPart", key, e))?;
            done.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .build(),
            );
        }
        self.complete(key, &id, done).await
    }

    async fn complete(
        &self,
        key: &str,
        id: &str,
        parts: Vec<aws_sdk_s3::types::CompletedPart>,
    ) -> Result<String, ObjectError> {
        self.gate().await;
        let out = self
            .client
            .complete_multipart_upload()
            .bucket(&self.location.bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.fail("CompleteMultipartUpload", key, e))?;
        Ok(unquote(out.e_tag()))
    }

    async fn abort(&self, key: &str, id: &str) {
        let _ = self
            .client
            .abort_multipart_upload()
            .bucket(&self.location.bucket)
            .key(key)
            .upload_id(id)
            .send()
            .await;
    }
}

macro_rules! metadata_setter {
    ($name:ident, $builder:ty) => {
        fn $name(req: $builder, m: &Metadata) -> $builder {
            let mut req = req
                .set_content_type(m.content_type.clone())
                .set_cache_control(m.cache_control.clone())
                .set_content_disposition(m.content_disposition.clone())
                .set_content_encoding(m.content_encoding.clone())
                .set_content_language(m.content_language.clone())
                .set_expires(m.expires.as_deref().and_then(|e| {
                    aws_smithy_types::DateTime::from_str(
                        e,
                        aws_smithy_types::date_time::Format::HttpDate,
                    )
                    .ok()
                }));
            for (k, v) in &m.user {
                req = req.metadata(k, v);
            }
            req
        }
    };
}
metadata_setter!(
    with_metadata_put,
    aws_sdk_s3::operation::put_object::builders::PutObjectFluentBuilder
);
metadata_setter!(
    with_metadata_create,
    aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder
);

/// Copies `object` (as the source listed it) from `from` to `to`, streamed: the content passes
/// through memory a chunk at a time, hashed on the way. Keeps the metadata and, for a multipart
/// object, the source's part sizes, so the target's ETag equals the source's; the copy fails
/// unless it does.
///
/// # Errors
/// [`ObjectError::Changed`] or [`ObjectError::Gone`] when the source object changed since it was
/// listed; [`ObjectError::Mismatch`] when the target's ETag differs; [`ObjectError::Throttled`]
/// and [`ObjectError::Request`] for failed requests.
pub async fn copy(from: &Bucket, to: &Bucket, object: &Listed) -> Result<Copied, ObjectError> {
    let key = &object.key;
    let hasher = Arc::new(Mutex::new(Sha256::new()));
    let (etag, version, parts, composite) = match etag_parts(&object.etag) {
        None => {
            from.gate().await;
            let got = from
                .client
                .get_object()
                .bucket(&from.location.bucket)
                .key(key)
                .if_match(format!("\"{}\"", object.etag))
                .send()
                .await
                .map_err(|e| from.changed_or(key, &object.etag, "GetObject", e))?;
            let metadata = metadata_of_get(&got);
            let size = got.content_length().unwrap_or(0).max(0) as u64;
            to.gate().await;
            let req = to
                .client
                .put_object()
                .bucket(&to.location.bucket)
                .key(key)
                .content_length(size as i64)
                .set_content_md5(content_md5(&object.etag))
                .body(hashing(got.body, size, &hasher));
            let out = with_metadata_put(req, &metadata)
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(|e| to.fail("PutObject", key, e))?;
            (
                unquote(out.e_tag()),
                out.version_id().map(str::to_string),
                Vec::new(),
                None,
            )
        }
        Some(n) => {
            // The first part's head gives its size and the object's metadata (and fails if
            // the object changed since the listing).
            let (first, metadata) = from.part_head(key, &object.etag, 1).await?;
            let head = Head {
                size: object.size,
                etag: object.etag.clone(),
                version: None,
                metadata,
            };
            let sizes = match uniform_parts(head.size, n, first) {
                Some(s) => s,
                None => {
                    let mut s = vec![first];
                    for i in 2..=n {
                        s.push(from.part_size(key, &object.etag, i).await?);
                    }
                    s
                }
            };
            let (etag, version, sha) = copy_parts(from, to, object, &head, &sizes).await?;
            (etag, version, sizes, Some(sha))
        }
    };
    if etag != object.etag {
        return Err(ObjectError::Mismatch {
            key: key.clone(),
            expected: object.etag.clone(),
            target: etag,
        });
    }
    let sha256 = composite.unwrap_or_else(|| {
        hex::encode(
            std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner())).finalize(),
        )
    });
    Ok(Copied {
        size: object.size,
        etag,
        sha256,
        version,
        parts,
    })
}

/// `Metadata` from an SDK output that carries an object's headers (`HeadObject`, `GetObject`).
macro_rules! metadata_from {
    ($name:ident, $output:ty) => {
        fn $name(o: &$output) -> Metadata {
            Metadata {
                content_type: o.content_type().map(str::to_string),
                cache_control: o.cache_control().map(str::to_string),
                content_disposition: o.content_disposition().map(str::to_string),
                content_encoding: o.content_encoding().map(str::to_string),
                content_language: o.content_language().map(str::to_string),
                expires: o.expires_string().map(str::to_string),
                user: o
                    .metadata()
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .unwrap_or_default(),
            }
        }
    };
}
metadata_from!(
    metadata_of_head,
    aws_sdk_s3::operation::head_object::HeadObjectOutput
);
metadata_from!(
    metadata_of_get,
    aws_sdk_s3::operation::get_object::GetObjectOutput
);

/// Parts of one object copied at once.
pub const PART_JOBS: usize = 4;

/// The composite SHA-256 of a multipart object, as S3 defines its composite checksums: the
/// SHA-256 of the concatenated SHA-256 digests of its parts, hex, followed by `-<parts>`.
pub fn composite_sha256(part_digests: &[[u8; 32]]) -> String {
    let mut h = Sha256::new();
    for d in part_digests {
        h.update(d);
    }
    format!("{}-{}", hex::encode(h.finalize()), part_digests.len())
}

/// The multipart copy: one upload on the target, each part a ranged GET of the source (the part
/// number GET is not served by every server) streamed into `UploadPart`, [`PART_JOBS`] parts at
/// once, each hashed on the way; aborted on failure. Returns the target's ETag, version and the
/// composite SHA-256 ([`composite_sha256`]).
async fn copy_parts(
    from: &Bucket,
    to: &Bucket,
    object: &Listed,
    head: &Head,
    sizes: &[u64],
) -> Result<(String, Option<String>, String), ObjectError> {
    let key = &object.key;
    to.gate().await;
    let req = to
        .client
        .create_multipart_upload()
        .bucket(&to.location.bucket)
        .key(key);
    let up = with_metadata_create(req, &head.metadata)
        .send()
        .await
        .map_err(|e| to.fail("CreateMultipartUpload", key, e))?;
    let id = up.upload_id().unwrap_or_default().to_string();
    let starts: Vec<u64> = sizes
        .iter()
        .scan(0u64, |at, size| {
            let start = *at;
            *at += size;
            Some(start)
        })
        .collect();
    let result = async {
        use futures_util::StreamExt;
        let ranges: Vec<(usize, u64, u64)> = sizes
            .iter()
            .zip(&starts)
            .enumerate()
            .map(|(i, (size, start))| (i, *size, *start))
            .collect();
        let mut parts: Vec<(i32, Option<String>, [u8; 32])> = futures_util::stream::iter(ranges)
            .map(|(i, size, start)| {
                let (from, to, key, etag, id) = (
                    from.clone(),
                    to.clone(),
                    key.clone(),
                    object.etag.clone(),
                    id.clone(),
                );
                async move {
                    let n = i as i32 + 1;
                    from.gate().await;
                    let got = from
                        .client
                        .get_object()
                        .bucket(&from.location.bucket)
                        .key(&key)
                        .range(format!("bytes={start}-{}", start + size - 1))
                        .if_match(format!("\"{etag}\""))
                        .send()
                        .await
                        .map_err(|e| from.changed_or(&key, &etag, "GetObject", e))?;
                    let hasher = Arc::new(Mutex::new(Sha256::new()));
                    to.gate().await;
                    let out = to
                        .client
                        .upload_part()
                        .bucket(&to.location.bucket)
                        .key(&key)
                        .upload_id(&id)
                        .part_number(n)
                        .content_length(size as i64)
                        .body(hashing(got.body, size, &hasher))
                        .customize()
                        .disable_payload_signing()
                        .send()
                        .await
                        .map_err(|e| to.fail("UploadPart", &key, e))?;
                    let digest: [u8; 32] =
                        std::mem::take(&mut *hasher.lock().unwrap_or_else(|p| p.into_inner()))
                            .finalize()
                            .into();
                    Ok::<_, ObjectError>((n, out.e_tag().map(str::to_string), digest))
                }
            })
            .buffer_unordered(PART_JOBS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        parts.sort_by_key(|(n, _, _)| *n);
        let digests: Vec<[u8; 32]> = parts.iter().map(|(_, _, d)| *d).collect();
        let done = parts
            .into_iter()
            .map(|(n, etag, _)| {
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(n)
                    .set_e_tag(etag)
                    .build()
            })
            .collect();
        to.gate().await;
        let out = to
            .client
            .complete_multipart_upload()
            .bucket(&to.location.bucket)
            .key(key)
            .upload_id(&id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(done))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| to.fail("CompleteMultipartUpload", key, e))?;
        Ok((
            unquote(out.e_tag()),
            out.version_id().map(str::to_string),
            composite_sha256(&digests),
        ))
    }
    .await;
    if result.is_err() {
        to.abort(key, &id).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_etags_name_their_part_count() {
        assert_eq!(etag_parts("34ba8b2f16bd1be83f8c295b6cdbd06b-3"), Some(3));
        assert_eq!(etag_parts("9dd4e461268c8034f5c8564e155c67a6"), None);
        assert_eq!(etag_parts("abc-x"), None);
    }

    #[test]
    fn only_a_plain_md5_etag_gives_a_content_md5() {
        assert_eq!(
            content_md5("9dd4e461268c8034f5c8564e155c67a6").as_deref(),
            Some("ndTkYSaMgDT1yFZOFVxnpg==")
        );
        assert_eq!(content_md5("34ba8b2f16bd1be83f8c295b6cdbd06b-3"), None);
        assert_eq!(content_md5("not-hex"), None);
    }

    #[test]
    fn uniform_layouts_are_guessed_from_the_first_part() {
        let mib = 1024 * 1024;
        assert_eq!(
            uniform_parts(10 * mib + 1000, 3, 5 * mib),
            Some(vec![5 * mib, 5 * mib, 1000])
        );
        assert_eq!(
            uniform_parts(10 * mib, 2, 5 * mib),
            Some(vec![5 * mib, 5 * mib])
        );
        // Three parts cannot hold 16 MiB at 5 MiB each, nor can 2 parts of 8 hold 5.
        assert_eq!(uniform_parts(16 * mib, 3, 5 * mib), None);
        assert_eq!(uniform_parts(5 * mib, 2, 8 * mib), None);
        assert_eq!(uniform_parts(7, 1, 7), Some(vec![7]));
        assert_eq!(uniform_parts(7, 0, 7), None);
    }

    #[test]
    fn a_budget_lets_a_burst_through_then_spaces_requests_by_its_period() {
        let b = Budget::per_second(100);
        let now = Instant::now() + Duration::from_secs(1);
        // A tenth of a second's worth starts at once, then one every 10 ms.
        let waits: Vec<Duration> = (0..12).map(|_| b.book(now)).collect();
        assert!(waits[..10].iter().all(|w| w.is_zero()), "{waits:?}");
        assert_eq!(waits[10], Duration::ZERO);
        assert_eq!(waits[11], Duration::from_millis(10));
        // Unused time does not pile up past one burst.
        let later = now + Duration::from_secs(5);
        let waits: Vec<Duration> = (0..12).map(|_| b.book(later)).collect();
        assert!(waits[..11].iter().all(|w| w.is_zero()), "{waits:?}");
        assert_eq!(waits[11], Duration::from_millis(10));
    }

    #[test]
    fn a_composite_digest_is_the_digest_of_the_parts_digests() {
        let a: [u8; 32] = Sha256::digest(b"first part").into();
        let b: [u8; 32] = Sha256::digest(b"second").into();
        let mut both = a.to_vec();
        both.extend_from_slice(&b);
        assert_eq!(
            composite_sha256(&[a, b]),
            format!("{}-2", hex::encode(Sha256::digest(&both)))
        );
        assert_ne!(composite_sha256(&[b, a]), composite_sha256(&[a, b]));
    }

    #[test]
    fn labels_name_the_endpoint_and_bucket() {
        let l = Location {
            endpoint: Some("https://nyc3.digitaloceanspaces.com/".into()),
            region: "nyc3".into(),
            bucket: "shop-uploads".into(),
        };
        assert_eq!(
            l.label(),
            "https://nyc3.digitaloceanspaces.com/shop-uploads"
        );
        let a = Location {
            endpoint: None,
            ..l
        };
        assert_eq!(a.label(), "s3://shop-uploads");
    }
}
