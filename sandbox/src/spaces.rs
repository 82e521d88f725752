//! The legacy object storage: SeaweedFS's `weed mini` serving the S3 API on 127.0.0.1, standing
//! in for DigitalOcean Spaces. A second, real S3 implementation beside moto's (the AWS side): it
//! signs and checks requests with its own access key, refuses a body whose `Content-MD5` does not
//! match (moto accepts it), keeps multipart part layouts and serves part-number reads.
//!
//! One Space per environment (`shop-uploads-<env>`, `shop-uploads` in production), created at
//! start and seeded with the shop's uploads: small images with their served headers and user
//! metadata, and multipart exports of two part sizes.

use crate::procs;
use crate::state::{State, ENVIRONMENTS};
use anyhow::{Context, Result};
use bytes::Bytes;
use cutover::providers::objects::{Bucket, Location, Metadata};
use std::path::Path;
use std::time::{Duration, Instant};

/// The Spaces stand-in's signing region (Spaces accepts `us-east-1` from every SDK).
pub const REGION: &str = "us-east-1";

/// Ports `weed mini` listens on: S3, master, filer, volume and admin, each with its gRPC port.
pub const PORTS: usize = 10;

/// The legacy bucket of `env`.
pub fn bucket(env: &str) -> String {
    if env == "production" {
        "shop-uploads".into()
    } else {
        format!("shop-uploads-{env}")
    }
}

/// The S3 endpoint's URL.
pub fn endpoint(s: &State) -> String {
    format!("http://127.0.0.1:{}", s.spaces_ports[0])
}

/// Starts `weed mini` on the state's `spaces_ports` with the state's access key as its only
/// identity, and waits until its S3 port answers.
///
/// # Errors
/// When it cannot be started or does not answer within a minute (its log's end in the message).
pub fn start(s: &mut State, venv: &Path) -> Result<()> {
    let dir = s.dir.join("spaces");
    std::fs::create_dir_all(dir.join("data"))?;
    let config = dir.join("s3.json");
    let identities = serde_json::json!({"identities": [{
        "name": "legacy-app",
        "credentials": [{"accessKey": s.spaces_access_key, "secretKey": s.spaces_secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }]});
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&config)?;
        std::io::Write::write_all(&mut f, identities.to_string().as_bytes())?;
    }
    let p = &s.spaces_ports;
    let buckets: Vec<String> = ENVIRONMENTS.iter().map(|e| bucket(e)).collect();
    eprintln!(
        "sandbox: starting SeaweedFS (the legacy Spaces) S3 on 127.0.0.1:{}",
        p[0]
    );
    let mut cmd = std::process::Command::new(venv.join("bin/weed"));
    cmd.arg("mini")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-s3.port={}", p[0]))
        .arg(format!("-s3.port.grpc={}", p[1]))
        .arg(format!("-master.port={}", p[2]))
        .arg(format!("-master.port.grpc={}", p[3]))
        .arg(format!("-filer.port={}", p[4]))
        .arg(format!("-filer.port.grpc={}", p[5]))
        .arg(format!("-volume.port={}", p[6]))
        .arg(format!("-volume.port.grpc={}", p[7]))
        .arg(format!("-admin.port={}", p[8]))
        .arg(format!("-admin.port.grpc={}", p[9]))
        .args([
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
        ])
        .arg(format!("-s3.config={}", config.display()))
        .arg(format!("-bucket={}", buckets.join(",")));
    let log = s.dir.join("spaces.log");
    s.spaces_pid = procs::spawn_detached(cmd, &log)?;
    s.save()?;
    procs::wait_http(
        s.spaces_pid,
        p[0],
        "SeaweedFS S3",
        &log,
        Duration::from_secs(60),
    )
}

/// The legacy bucket of `env` as the tool reaches it.
pub fn legacy_bucket(s: &State, env: &str) -> Bucket {
    Bucket::compatible(
        Location {
            endpoint: Some(endpoint(s)),
            region: REGION.into(),
            bucket: bucket(env),
        },
        &s.spaces_access_key,
        &s.spaces_secret_key,
    )
}

/// Product images in each environment's Space.
pub const IMAGES: u64 = 60;

/// Deterministic bytes of `len` for object `seed` (content the tests can recompute).
pub fn content(seed: u64, len: usize) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Seeds every environment's Space with the shop's uploads: [`IMAGES`] product images (2–40 KiB,
/// `image/jpeg`, a year's `Cache-Control`, user metadata naming the uploader) and one multipart
/// export (a 5 MiB part, S3's smallest but the last, and 1,000 bytes; `Content-Disposition:
/// attachment`). Waits for the buckets `weed mini` creates at start.
///
/// # Errors
/// When a write fails past the buckets' creation.
pub async fn seed(s: &State) -> Result<()> {
    for env in ENVIRONMENTS {
        let b = legacy_bucket(s, env);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match b.list_page("", None).await {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(anyhow::anyhow!("{e}")).context("the legacy Space's bucket");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
        for i in 0..IMAGES {
            let meta = Metadata {
                content_type: Some("image/jpeg".into()),
                cache_control: Some("public, max-age=31536000".into()),
                user: [("uploaded-by".to_string(), format!("user-{}", i % 7))].into(),
                ..Metadata::default()
            };
            let len = 2048 + (i as usize * 331) % (38 * 1024);
            b.put(&format!("products/{i:04}.jpg"), content(i, len), &meta)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        let mib = 1024 * 1024;
        for (name, part, parts, last) in [("exports/catalog.csv", 5 * mib, 1, 1000)] {
            let meta = Metadata {
                content_type: Some("text/csv".into()),
                content_disposition: Some(format!(
                    "attachment; filename=\"{}\"",
                    name.trim_start_matches("exports/")
                )),
                content_language: Some("en".into()),
                user: [("export".to_string(), "nightly".to_string())].into(),
                ..Metadata::default()
            };
            let mut bodies: Vec<Bytes> =
                (0..parts).map(|p| content(1000 + p as u64, part)).collect();
            bodies.push(content(2000, last));
            b.put_parts(name, bodies, &meta)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    Ok(())
}
