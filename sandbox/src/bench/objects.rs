//! The object copy (issue 31): the same objects at the same concurrency, from the sandbox's
//! legacy Space (SeaweedFS) into a fresh bucket of the environment's account (moto's S3), three
//! ways in one invocation:
//!
//! - cutover: `s3.replicate` then `s3.sync` through `cutover rehearse` (a runbook of those two
//!   steps in a scratch project): every object's metadata and part layout kept, its content
//!   checked by the target (Content-MD5 of a single-part object; the multipart ETag, which is the
//!   MD5 of every part's MD5), its SHA-256 computed while it streams, the target listed and
//!   compared with the manifest;
//! - rclone: `rclone copy --checksum` (Debian's rclone), which compares MD5 where both sides have
//!   one: a source object uploaded in parts has none, so those are compared by size only;
//! - the floor: a bare GET streamed into a PUT per object, nothing kept or checked.
//!
//! Prints seconds, MB/s and objects/s of each, the peak RSS of the two processes, and the ratios.

use super::{own_max_rss, secs, Bench, Options};
use anyhow::{bail, Context, Result};
use aws_sdk_s3::config::ProvideCredentials;
use cutover::config::{BucketSection, SecretRef, StoreKind, Tier};
use cutover::providers::objects::{Bucket, Location, Metadata, PART_JOBS};
use futures_util::StreamExt;
use std::path::Path;
use std::time::Instant;

const SOURCE_BUCKET: &str = "cutover-bench-objects";

/// What one method took.
struct Measured {
    seconds: f64,
    rss: Option<u64>,
}

fn env_var(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set (eval \"$(cutover-sandbox env)\" before the bench)")
    })
}

/// The legacy Space's endpoint, region and key of the bench's environment.
struct Space {
    endpoint: String,
    region: String,
    key: String,
    secret: String,
}

impl Space {
    fn of(env: &str) -> Result<Space> {
        let up = env.to_uppercase();
        Ok(Space {
            endpoint: env_var(&format!("CUTOVER_{up}_SPACES_ENDPOINT"))?,
            region: env_var(&format!("CUTOVER_{up}_SPACES_REGION"))?,
            key: env_var(&format!("CUTOVER_{up}_SPACES_ACCESS_KEY_ID"))?,
            secret: env_var(&format!("CUTOVER_{up}_SPACES_SECRET_ACCESS_KEY"))?,
        })
    }

    fn client(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new(self.region.clone()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                &self.key,
                &self.secret,
                None,
                None,
                "bench",
            ))
            .endpoint_url(&self.endpoint)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build();
        aws_sdk_s3::Client::from_conf(conf)
    }

    fn bucket(&self) -> Bucket {
        Bucket::compatible(
            Location {
                endpoint: Some(self.endpoint.clone()),
                region: self.region.clone(),
                bucket: SOURCE_BUCKET.into(),
            },
            &self.key,
            &self.secret,
        )
    }
}

/// Empties (or creates) `bucket` with `client`.
async fn fresh_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<()> {
    if client.head_bucket().bucket(bucket).send().await.is_err() {
        client
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .with_context(|| format!("creating bucket {bucket}"))?;
        return Ok(());
    }
    let mut token = None;
    loop {
        let page = client
            .list_objects_v2()
            .bucket(bucket)
            .set_continuation_token(token)
            .send()
            .await?;
        for o in page.contents() {
            client
                .delete_object()
                .bucket(bucket)
                .set_key(o.key().map(str::to_string))
                .send()
                .await?;
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => return Ok(()),
        }
    }
}

/// Writes the bench's objects to the Space: `opts.objects` small ones (4–132 KiB, metadata of an
/// upload) and `opts.multipart` exports of three 8 MiB parts. Returns (objects, bytes).
async fn seed(space: &Space, opts: &Options) -> Result<(u64, u64)> {
    fresh_bucket(&space.client(), SOURCE_BUCKET).await?;
    let b = space.bucket();
    let mut puts = futures_util::stream::iter(0..opts.objects)
        .map(|i| {
            let b = b.clone();
            async move {
                let len = 4096 + (i as usize * 7919) % (128 * 1024);
                let meta = Metadata {
                    content_type: Some("image/jpeg".into()),
                    cache_control: Some("public, max-age=31536000".into()),
                    user: [("uploaded-by".to_string(), format!("user-{}", i % 11))].into(),
                    ..Metadata::default()
                };
                b.put(
                    &format!("uploads/{i:06}.jpg"),
                    crate::spaces::content(i, len),
                    &meta,
                )
                .await
                .map(|_| len as u64)
            }
        })
        .buffer_unordered(16);
    let mut bytes = 0;
    while let Some(r) = puts.next().await {
        bytes += r.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let part = 8 * 1024 * 1024;
    for i in 0..opts.multipart {
        let parts = (0..3)
            .map(|p| crate::spaces::content(100_000 + i * 10 + p, part))
            .collect();
        b.put_parts(
            &format!("exports/{i:03}.csv"),
            parts,
            &Metadata {
                content_type: Some("text/csv".into()),
                ..Metadata::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        bytes += 3 * part as u64;
    }
    Ok((opts.objects + opts.multipart, bytes))
}

/// Runs `cmd`, waits for it with `wait4` and returns its wall time and its own peak RSS.
fn run_measured(mut cmd: std::process::Command, what: &str) -> Result<(f64, u64, String)> {
    use std::os::unix::process::ExitStatusExt;
    let out_path = tempfile::NamedTempFile::new()?;
    let err_path = tempfile::NamedTempFile::new()?;
    let start = Instant::now();
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out_path.reopen()?)
        .stderr(err_path.reopen()?)
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    // The child's own peak RSS (VmHWM), read every 10 ms while it runs: getrusage's ru_maxrss of
    // a child counts the parent's pages it was forked with.
    let pid = child.id();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak = 0u64;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(kb) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmHWM:"))
                            .and_then(|l| l.split_whitespace().nth(1))
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                {
                    peak = peak.max(kb * 1024);
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            peak
        })
    };
    let mut status = 0;
    // SAFETY: wait4 writes only into the zeroed rusage and the status it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    let seconds = secs(start);
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let peak = watcher.join().unwrap_or(0);
    if waited < 0 {
        bail!("waiting for {what}: {}", std::io::Error::last_os_error());
    }
    let st = std::process::ExitStatus::from_raw(status);
    let stdout = std::fs::read_to_string(out_path.path()).unwrap_or_default();
    if !st.success() {
        let stderr = std::fs::read_to_string(err_path.path()).unwrap_or_default();
        let tail: String = stderr
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join(" | ");
        bail!("{what} failed ({st}): {tail}");
    }
    Ok((seconds, peak, stdout))
}

/// The scratch project of the cutover method: the environment `bench` (this environment with
/// the Space's bench bucket as `buckets.uploads`), and the runbook of the two steps.
fn scratch(bench: &Bench, dir: &Path, target: &str, jobs: usize) -> Result<()> {
    let mut env = bench.env.clone();
    env.name = "bench".into();
    env.tier = Tier::Staging;
    env.aws.organization = None;
    let up = bench_env_upper(bench);
    env.buckets.insert(
        "uploads".into(),
        BucketSection {
            endpoint: env_var(&format!("CUTOVER_{up}_SPACES_ENDPOINT"))?,
            region: env_var(&format!("CUTOVER_{up}_SPACES_REGION"))?,
            bucket: SOURCE_BUCKET.into(),
        },
    );
    env.secrets.clear();
    for name in ["spaces_access_key_id", "spaces_secret_access_key"] {
        env.secrets.insert(
            name.into(),
            SecretRef::env(&format!("CUTOVER_{up}_{}", name.to_uppercase())),
        );
    }
    env.store.kind = StoreKind::Local;
    std::fs::create_dir_all(dir.join("environments"))?;
    std::fs::create_dir_all(dir.join("runbooks"))?;
    std::fs::write(
        dir.join("environments/bench.yaml"),
        serde_json::to_string_pretty(&env)?,
    )?;
    let storage = format!(
        r#"source:
            endpoint: "{{{{ env.buckets.uploads.endpoint }}}}"
            region: "{{{{ env.buckets.uploads.region }}}}"
            bucket: "{{{{ env.buckets.uploads.bucket }}}}"
            access_key_id: "{{{{ secrets.spaces_access_key_id }}}}"
            secret_access_key: "{{{{ secrets.spaces_secret_access_key }}}}"
          target: {{ bucket: {target} }}
          jobs: {jobs}
          requests_per_second: 100000"#
    );
    std::fs::write(
        dir.join("runbooks/bench.yaml"),
        format!(
            r#"name: bench
description: The bench's objects, from the Space into S3.
phases:
  - name: move
    steps:
      - id: uploads
        kind: s3.replicate
        with:
          {storage}
      - id: sync
        kind: s3.sync
        with:
          {storage}
          manifest: "{{{{ steps.uploads.outputs.manifest }}}}"
"#
        ),
    )?;
    Ok(())
}

fn bench_env_upper(bench: &Bench) -> String {
    bench.env.name.to_uppercase()
}

async fn cutover_copy(bench: &Bench, opts: &Options, target: &str) -> Result<Measured> {
    let dir = tempfile::tempdir()?;
    scratch(bench, dir.path(), target, opts.object_jobs)?;
    let mut cmd = std::process::Command::new(&bench.cutover);
    cmd.arg("-C").arg(dir.path()).args([
        "rehearse",
        "bench",
        "--runbook",
        "bench",
        "--output",
        "json",
    ]);
    let (process, rss, stdout) = tokio::task::block_in_place(|| run_measured(cmd, "cutover"))?;
    // The copy with its verification: from the replicate's start to the sync's end, as the run's
    // records time them (the process also starts, assumes the role and opens the run).
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let at = |kind: &str, step: &str| {
        records
            .iter()
            .find(|r| r["type"] == kind && r["step"] == step)
            .and_then(|r| r["ts"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
    };
    let (Some(start), Some(end)) = (
        at("step_started", "uploads"),
        at("step_applied", "sync").or(at("step_completed", "sync")),
    ) else {
        bail!("the bench run's records lack the steps' start or end");
    };
    let seconds = (end - start).num_milliseconds() as f64 / 1000.0;
    let sync_start = at("step_started", "sync").unwrap_or(end);
    println!(
        "  (cutover process {process:.2} s in all; s3.replicate {:.2} s, s3.sync {:.2} s)",
        (sync_start - start).num_milliseconds() as f64 / 1000.0,
        (end - sync_start).num_milliseconds() as f64 / 1000.0
    );
    Ok(Measured {
        seconds,
        rss: Some(rss),
    })
}

async fn rclone_copy(
    space: &Space,
    config: &aws_config::SdkConfig,
    opts: &Options,
    target: &str,
) -> Result<Measured> {
    let creds = config
        .credentials_provider()
        .context("no AWS credentials")?
        .provide_credentials()
        .await?;
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .unwrap_or_default();
    let region = config
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".into());
    let jobs = opts.object_jobs.to_string();
    let mut cmd = std::process::Command::new("rclone");
    // Its configuration is the variables below only (the sandbox's AWS_* ones, a CA bundle
    // among them, would be read by its S3 backend).
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("AWS_")) {
        cmd.env_remove(k);
    }
    cmd.args([
        "copy",
        "--checksum",
        "--transfers",
        &jobs,
        "--checkers",
        &jobs,
        "--s3-no-check-bucket",
        &format!("src:{SOURCE_BUCKET}"),
        &format!("dst:{target}"),
    ])
    .env("RCLONE_CONFIG_SRC_TYPE", "s3")
    .env("RCLONE_CONFIG_SRC_PROVIDER", "SeaweedFS")
    .env("RCLONE_CONFIG_SRC_ENDPOINT", &space.endpoint)
    .env("RCLONE_CONFIG_SRC_REGION", &space.region)
    .env("RCLONE_CONFIG_SRC_ACCESS_KEY_ID", &space.key)
    .env("RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY", &space.secret)
    .env("RCLONE_CONFIG_DST_TYPE", "s3")
    .env("RCLONE_CONFIG_DST_PROVIDER", "Other")
    .env("RCLONE_CONFIG_DST_ENDPOINT", &endpoint)
    .env("RCLONE_CONFIG_DST_REGION", &region)
    .env("RCLONE_CONFIG_DST_FORCE_PATH_STYLE", "true")
    .env("RCLONE_CONFIG_DST_ACCESS_KEY_ID", creds.access_key_id())
    .env(
        "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY",
        creds.secret_access_key(),
    )
    .env(
        "RCLONE_CONFIG_DST_SESSION_TOKEN",
        creds.session_token().unwrap_or(""),
    );
    let (seconds, rss, _) = tokio::task::block_in_place(|| run_measured(cmd, "rclone copy"))?;
    Ok(Measured {
        seconds,
        rss: Some(rss),
    })
}

/// One multipart object copied part for part with no checks: its first part's size from a head,
/// each part a ranged GET streamed into an `UploadPart`, [`PART_JOBS`] at once.
async fn bare_parts(
    src: &aws_sdk_s3::Client,
    dst: &aws_sdk_s3::Client,
    key: &str,
    size: i64,
    parts: u32,
    target: &str,
) -> Result<()> {
    let first = src
        .head_object()
        .bucket(SOURCE_BUCKET)
        .key(key)
        .part_number(1)
        .send()
        .await?
        .content_length()
        .unwrap_or(size);
    let up = dst
        .create_multipart_upload()
        .bucket(target)
        .key(key)
        .send()
        .await?;
    let id = up.upload_id().unwrap_or_default().to_string();
    let mut done: Vec<(i32, Option<String>)> = futures_util::stream::iter(0..parts)
        .map(|i| {
            let (src, dst, key, id, target) = (
                src.clone(),
                dst.clone(),
                key.to_string(),
                id.clone(),
                target.to_string(),
            );
            async move {
                let start = i64::from(i) * first;
                let end = (start + first).min(size) - 1;
                let got = src
                    .get_object()
                    .bucket(SOURCE_BUCKET)
                    .key(&key)
                    .range(format!("bytes={start}-{end}"))
                    .send()
                    .await?;
                let out = dst
                    .upload_part()
                    .bucket(&target)
                    .key(&key)
                    .upload_id(&id)
                    .part_number(i as i32 + 1)
                    .content_length(end - start + 1)
                    .body(got.body)
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await?;
                anyhow::Ok((i as i32 + 1, out.e_tag().map(str::to_string)))
            }
        })
        .buffer_unordered(PART_JOBS)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    done.sort_by_key(|(n, _)| *n);
    let parts = done
        .into_iter()
        .map(|(n, e)| {
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .set_e_tag(e)
                .build()
        })
        .collect();
    dst.complete_multipart_upload()
        .bucket(target)
        .key(key)
        .upload_id(&id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(parts))
                .build(),
        )
        .send()
        .await?;
    Ok(())
}

/// The floor: every object GET from the Space streamed into a PUT on S3, at `jobs` at once;
/// with `part_for_part`, an object the source holds in parts is written in the same parts (the
/// request shape a faithful copy needs, without its checks), else in one PUT.
async fn floor_copy(
    space: &Space,
    dst: &aws_sdk_s3::Client,
    opts: &Options,
    target: &str,
    part_for_part: bool,
) -> Result<Measured> {
    let src = space.client();
    let mut keys = Vec::new();
    let mut token = None;
    let start = Instant::now();
    loop {
        let page = src
            .list_objects_v2()
            .bucket(SOURCE_BUCKET)
            .set_continuation_token(token)
            .send()
            .await?;
        keys.extend(page.contents().iter().filter_map(|o| {
            let parts = o
                .e_tag()
                .and_then(|e| cutover::providers::objects::etag_parts(e.trim_matches('"')));
            Some((o.key()?.to_string(), o.size().unwrap_or(0), parts))
        }));
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => break,
        }
    }
    let mut copies = futures_util::stream::iter(keys)
        .map(|(k, size, parts)| {
            let (src, dst) = (src.clone(), dst.clone());
            async move {
                if let Some(n) = parts.filter(|_| part_for_part) {
                    return bare_parts(&src, &dst, &k, size, n, target).await;
                }
                let got = src
                    .get_object()
                    .bucket(SOURCE_BUCKET)
                    .key(&k)
                    .send()
                    .await?;
                let len = got.content_length().unwrap_or(0);
                dst.put_object()
                    .bucket(target)
                    .key(&k)
                    .content_length(len)
                    .body(got.body)
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(opts.object_jobs);
    while let Some(r) = copies.next().await {
        r?;
    }
    Ok(Measured {
        seconds: secs(start),
        rss: None,
    })
}

/// Runs the part and prints its table.
///
/// # Errors
/// Seeding, a method or the bucket setup fails.
pub async fn run(bench: &Bench, opts: &Options) -> Result<()> {
    let space = Space::of(&bench.env.name)?;
    let (objects, bytes) = seed(&space, opts).await?;
    println!(
        "\nobjects: {objects} objects, {:.1} MB ({} of 4-132 KiB, {} multipart of 3 x 8 MiB), from the legacy Space (SeaweedFS) to the account's S3 (moto), {} at once",
        bytes as f64 / 1e6,
        opts.objects,
        opts.multipart,
        opts.object_jobs
    );
    let session = cutover::providers::aws::AwsSession::assume(&bench.env, "bench").await?;
    let config = session.config.clone();
    let dst = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
            .build(),
    );
    let account = &session.account_id;
    const METHODS: [&str; 4] = ["cutover", "rclone", "floor-parts", "floor-put"];
    // Every round runs each method once, starting one further along the list, so none always
    // runs first (after the seeding) or last; each method's figure is its median round.
    let mut rows: Vec<(&str, Vec<Measured>)> = METHODS.iter().map(|m| (*m, Vec::new())).collect();
    for round in 0..opts.object_rounds.max(1) {
        for k in 0..METHODS.len() {
            let method = METHODS[(round + k) % METHODS.len()];
            let target = format!("cutover-bench-{method}-{account}");
            fresh_bucket(&dst, &target).await?;
            let m = match method {
                "cutover" => cutover_copy(bench, opts, &target).await?,
                "rclone" => rclone_copy(&space, &config, opts, &target).await?,
                "floor-parts" => floor_copy(&space, &dst, opts, &target, true).await?,
                _ => floor_copy(&space, &dst, opts, &target, false).await?,
            };
            println!(
                "  round {}: {method:<11} {:>8.2} s{}",
                round + 1,
                m.seconds,
                m.rss
                    .map(|r| format!("  peak RSS {:.1} MB", r as f64 / 1e6))
                    .unwrap_or_default()
            );
            if let Some((_, v)) = rows.iter_mut().find(|(name, _)| *name == method) {
                v.push(m);
            }
            fresh_bucket(&dst, &target).await?;
            dst.delete_bucket().bucket(&target).send().await.ok();
        }
    }
    let median = |name: &str| -> (f64, Option<u64>) {
        let v = &rows.iter().find(|(m, _)| *m == name).expect("a method").1;
        let mut secs: Vec<f64> = v.iter().map(|m| m.seconds).collect();
        secs.sort_by(f64::total_cmp);
        let rss = v.iter().filter_map(|m| m.rss).max();
        (secs[secs.len() / 2], rss)
    };
    for method in METHODS {
        let (seconds, rss) = median(method);
        let verified = match method {
            "cutover" => "every object: content by the target (Content-MD5 / multipart ETag), SHA-256 in the manifest, metadata and part layout kept, target listed against the manifest",
            "rclone" => "MD5 of single-part objects; multipart ones (no MD5 on the source) by size only; metadata of its own",
            "floor-parts" => "nothing (multipart objects in the source's parts: their ETag kept)",
            _ => "nothing (each object in one PUT: a multipart object's ETag changes)",
        };
        println!(
            "  {method:<11} {:>8.2} s {:>8.1} MB/s {:>8.0} objects/s{}  verified: {verified}",
            seconds,
            bytes as f64 / 1e6 / seconds.max(0.001),
            objects as f64 / seconds.max(0.001),
            rss.map(|r| format!("  peak RSS {:.1} MB", r as f64 / 1e6))
                .unwrap_or_default(),
        );
    }
    let t = |name: &str| median(name).0;
    println!(
        "  cutover / rclone speed: {:.2}x; cutover / floor speed: {:.2}x part for part, {:.2}x against one PUT per object (bench process peak RSS {:.1} MB)",
        t("rclone") / t("cutover").max(0.001),
        t("floor-parts") / t("cutover").max(0.001),
        t("floor-put") / t("cutover").max(0.001),
        own_max_rss() as f64 / 1e6
    );
    fresh_bucket(&space.client(), SOURCE_BUCKET).await?;
    Ok(())
}
