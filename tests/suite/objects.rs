//! Object storage (issue 31) against the sandbox's two real S3 implementations: SeaweedFS as the
//! legacy Space, moto as the account's bucket. `s3.replicate` and `s3.sync` move 10,000 objects
//! with multipart ones of three part layouts and every served header and user metadata kept; a
//! SIGKILL mid-copy and `cutover resume` copy no finished object again; objects created,
//! overwritten and deleted while the copy runs are right at the end; a target object changed
//! behind the copy is named by key; a rollback after the flip brings the application's new
//! uploads back to the Space.
//!
//! Each check reads both buckets independently of the tool (listings and heads through the S3
//! API), and the manifest the run kept.

use crate::common::{block_on, block_on_within, text, wait_until, Sandbox};
use bytes::Bytes;
use cutover::providers::objects::{Bucket, Listed, Location, Metadata};
use futures_util::StreamExt;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const MIB: usize = 1024 * 1024;

fn spaces(sb: &Sandbox) -> Bucket {
    Bucket::compatible(
        Location {
            endpoint: Some(sb.var("CUTOVER_STAGING_SPACES_ENDPOINT")),
            region: sb.var("CUTOVER_STAGING_SPACES_REGION"),
            bucket: sb.var("CUTOVER_STAGING_SPACES_BUCKET"),
        },
        &sb.var("CUTOVER_STAGING_SPACES_ACCESS_KEY_ID"),
        &sb.var("CUTOVER_STAGING_SPACES_SECRET_ACCESS_KEY"),
    )
}

fn uploads_name(sb: &Sandbox) -> String {
    format!(
        "shop-uploads-staging-{}",
        sb.var("CUTOVER_STAGING_ACCOUNT_ID")
    )
}

fn uploads(sb: &Sandbox) -> Bucket {
    Bucket::aws(
        &sb.aws("staging"),
        Location {
            endpoint: None,
            region: "us-east-1".into(),
            bucket: uploads_name(sb),
        },
    )
}

fn listing(b: &Bucket) -> BTreeMap<String, Listed> {
    block_on(async {
        let mut out = BTreeMap::new();
        b.list_each("", |page| {
            out.extend(page.into_iter().map(|o| (o.key.clone(), o)));
            Ok(())
        })
        .await
        .unwrap();
        out
    })
}

/// Deterministic bytes of object `seed`.
fn body(seed: u64, len: usize) -> Bytes {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

/// Every header a faithful copy keeps, varied by `i`.
fn metadata(i: u64) -> Metadata {
    Metadata {
        content_type: Some(
            ["image/png", "application/pdf", "text/plain; charset=utf-8"][i as usize % 3].into(),
        ),
        cache_control: Some(format!("public, max-age={}", 60 + i)),
        content_disposition: (i % 2 == 0).then(|| format!("inline; filename=\"f{i}.bin\"")),
        content_encoding: (i % 5 == 0).then(|| "identity".to_string()),
        content_language: (i % 3 == 0).then(|| "de-CH".to_string()),
        expires: (i % 4 == 0).then(|| "Wed, 21 Oct 2037 07:28:00 GMT".to_string()),
        user: [
            ("owner".to_string(), format!("user-{}", i % 13)),
            ("purpose".to_string(), "test".to_string()),
        ]
        .into(),
    }
}

/// Writes `n` small objects `bulk/<i>` and three multipart objects (parts of 5 MiB; of 6 MiB;
/// and an uneven layout, 6 MiB then 5 MiB) to the Space.
fn seed(src: &Bucket, n: u64) {
    block_on_within(900, async {
        let mut puts = futures_util::stream::iter(0..n)
            .map(|i| {
                let src = src.clone();
                async move {
                    src.put(
                        &format!("bulk/{i:05}"),
                        body(i, 64 + (i as usize * 37) % 3000),
                        &metadata(i),
                    )
                    .await
                }
            })
            .buffer_unordered(32);
        while let Some(r) = puts.next().await {
            r.unwrap();
        }
        for (key, parts) in [
            ("mp/five.bin", vec![5 * MIB, 10]),
            ("mp/six.bin", vec![6 * MIB, 3]),
            ("mp/uneven.bin", vec![6 * MIB, 5 * MIB, 1024]),
        ] {
            let bodies = parts
                .iter()
                .enumerate()
                .map(|(i, len)| body(9000 + i as u64, *len))
                .collect();
            src.put_parts(key, bodies, &metadata(7)).await.unwrap();
        }
    });
}

/// The manifest lines of `run`'s step `step`.
fn manifest_lines(sb: &Sandbox, run: &str, step: &str) -> Vec<Value> {
    let path = sb
        .project
        .path()
        .join(".cutover/runs")
        .join(run)
        .join(format!("objects-{step}.jsonl"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn storage(sb: &Sandbox) -> String {
    format!(
        r#"source:
            endpoint: "{{{{ env.buckets.uploads.endpoint }}}}"
            region: "{{{{ env.buckets.uploads.region }}}}"
            bucket: "{{{{ env.buckets.uploads.bucket }}}}"
            access_key_id: "{{{{ secrets.spaces_access_key_id }}}}"
            secret_access_key: "{{{{ secrets.spaces_secret_access_key }}}}"
          target: {{ bucket: {} }}"#,
        uploads_name(sb)
    )
}

/// A gate for `http.check`: 503 until opened, then 200 (the test's own pause inside a run).
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
}

impl Gate {
    fn start() -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let open: Arc<AtomicBool> = Arc::default();
        let o = open.clone();
        std::thread::spawn(move || {
            for mut c in listener.incoming().flatten() {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
                let status = if o.load(Ordering::SeqCst) {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = c.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                );
            }
        });
        Gate { port, open }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

fn heads_equal(src: &Bucket, dst: &Bucket, keys: &[String]) {
    block_on(async {
        for k in keys {
            let a = src
                .head(k)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{k} on the Space"));
            let b = dst
                .head(k)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{k} in S3"));
            assert_eq!((a.size, &a.etag), (b.size, &b.etag), "{k}");
            assert_eq!(
                a.metadata, b.metadata,
                "{k}: served headers and user metadata"
            );
        }
    });
}

#[test]
fn ten_thousand_objects_move_faithfully_across_a_kill_and_the_changes_made_meanwhile() {
    let sb = Sandbox::start_first_holding(2);
    let src = spaces(&sb);
    let dst = uploads(&sb);
    seed(&src, 10_000);
    let rb = sb.extra_runbook(
        "uploads",
        &format!(
            r#"name: uploads
description: The shop's uploads alone, from the Space into S3.
phases:
  - name: move
    steps:
      - id: uploads
        kind: s3.replicate
        with:
          {storage}
          jobs: 8
          requests_per_second: 2000
      - id: sync
        kind: s3.sync
        with:
          {storage}
          manifest: "{{{{ steps.uploads.outputs.manifest }}}}"
          requests_per_second: 2000
"#,
            storage = storage(&sb)
        ),
    );
    let mut child = sb.spawn(&["rehearse", "staging", "--runbook", &rb]);
    // Killed once 2,000 objects are in the manifest: in the middle of the bulk pass.
    let mut run = String::new();
    wait_until(900, "2,000 objects copied", || {
        if let Some(r) = sb.run_ids().pop() {
            run = r;
            manifest_lines(&sb, &run, "uploads").len() >= 2000
        } else {
            false
        }
    });
    child.kill().unwrap();
    let _ = child.wait();
    let at_kill = manifest_lines(&sb, &run, "uploads");
    assert!(at_kill.len() < 10_000, "killed after the copy ended");
    // Which objects were copied before the kill is the manifest's to say (not the machine's
    // speed): two of them and two that were not are changed while the copy is stopped.
    let recorded: std::collections::BTreeSet<String> = at_kill
        .iter()
        .filter_map(|l| l["key"].as_str().map(String::from))
        .collect();
    let bulk = |i: u64| format!("bulk/{i:05}");
    let copied: Vec<String> = (0..10_000)
        .map(bulk)
        .filter(|k| recorded.contains(k))
        .take(2)
        .collect();
    let not_yet: Vec<String> = (0..10_000)
        .rev()
        .map(bulk)
        .filter(|k| !recorded.contains(k))
        .take(2)
        .collect();
    assert_eq!(
        (copied.len(), not_yet.len()),
        (2, 2),
        "{} recorded",
        recorded.len()
    );
    let (overwritten_copied, deleted_copied) = (copied[0].clone(), copied[1].clone());

    // While the copy is stopped: the application creates, overwrites and deletes objects, some
    // copied already, some not yet.
    block_on(async {
        for i in 0..10u64 {
            src.put(&format!("late/{i}"), body(50_000 + i, 500), &metadata(i))
                .await
                .unwrap();
        }
        for k in [&overwritten_copied, &not_yet[0]] {
            src.put(k, body(77, 4321), &metadata(3)).await.unwrap();
        }
        for k in [&deleted_copied, &not_yet[1]] {
            src.delete(k).await.unwrap();
        }
    });

    // The rest of 10,000 objects: minutes on a loaded 2-core machine, so a deadline of its own.
    let out = sb.cutover_within(1200, &["resume", &run]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let on_source = listing(&src);
    let on_target = listing(&dst);
    assert_eq!(
        on_source.keys().collect::<Vec<_>>(),
        on_target.keys().collect::<Vec<_>>(),
        "the same keys on both sides"
    );
    for (k, o) in &on_source {
        let t = &on_target[k];
        assert_eq!((o.size, &o.etag), (t.size, &t.etag), "{k}: size and ETag");
    }
    for (k, parts) in [
        ("mp/five.bin", "-2"),
        ("mp/six.bin", "-2"),
        ("mp/uneven.bin", "-3"),
    ] {
        assert!(
            on_target[k].etag.ends_with(parts),
            "{k}: {}",
            on_target[k].etag
        );
    }
    let mut sample: Vec<String> = on_source.keys().step_by(97).cloned().collect();
    sample.extend(
        [
            "mp/five.bin",
            "mp/six.bin",
            "mp/uneven.bin",
            &overwritten_copied,
            &not_yet[0],
            "late/3",
        ]
        .map(String::from),
    );
    heads_equal(&src, &dst, &sample);

    // No finished object copied again: one copy line per key, except the overwritten one that
    // was copied before its overwrite, then again.
    let lines = manifest_lines(&sb, &run, "uploads");
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for l in lines.iter().filter(|l| l["op"] == "copied") {
        *copies
            .entry(l["key"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let twice: Vec<_> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        twice.iter().all(|k| **k == overwritten_copied),
        "copied more than once: {twice:?}"
    );
    let deleted: Vec<_> = lines
        .iter()
        .filter(|l| l["op"] == "deleted")
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        deleted,
        [deleted_copied.as_str()],
        "only the copied object deleted on the target"
    );

    // The outputs and the audit carry the manifest's root hash, counts and bytes.
    let records = sb.records(&run);
    let synced = records
        .iter()
        .find(|r| r["type"] == "step_applied" && r["step"] == "sync")
        .expect("sync applied");
    let o = &synced["data"]["outputs"];
    let objects = on_source.len() as u64;
    assert_eq!(o["objects"], objects);
    assert_eq!(
        o["verified"], objects,
        "every object compared by size and ETag"
    );
    let hashed = lines
        .iter()
        .filter(|l| l["op"] == "copied" && l["sha256"].as_str().is_some_and(|h| h.len() >= 64))
        .count();
    assert_eq!(hashed, lines.iter().filter(|l| l["op"] == "copied").count());
    for (k, parts) in [
        ("mp/five.bin", "-2"),
        ("mp/six.bin", "-2"),
        ("mp/uneven.bin", "-3"),
    ] {
        let l = lines.iter().rev().find(|l| l["key"] == k).unwrap();
        assert!(l["sha256"].as_str().unwrap().ends_with(parts), "{l}");
    }
    let bytes: u64 = on_source.values().map(|o| o.size).sum();
    assert_eq!(o["bytes"], bytes);
    let root = o["manifest_sha256"].as_str().unwrap().to_string();
    assert_eq!(root.len(), 64);
    let audit = sb.cutover(&["audit", "show", &run]);
    assert!(text(&audit).contains(&root), "{}", text(&audit));
    sb.assert_no_secrets(&[sb.var("CUTOVER_STAGING_SPACES_SECRET_ACCESS_KEY")]);
}

#[test]
fn a_changed_target_object_is_named_and_a_rollback_after_the_flip_brings_new_uploads_back() {
    let sb = Sandbox::start();
    let src = spaces(&sb);
    let dst = uploads(&sb);
    let gate = Gate::start();
    let runbook = |name: &str, after_sync: &str| {
        format!(
            r#"name: {name}
description: The shop's uploads, with the test's pause in the middle.
phases:
  - name: move
    steps:
      - id: uploads
        kind: s3.replicate
        with:
          {storage}
      - {{ id: gate, kind: http.check, with: {{ url: "{gate}", consecutive: 1, interval: 100ms }}, timeout: 2m }}
      - id: sync
        kind: s3.sync
        with:
          {storage}
          manifest: "{{{{ steps.uploads.outputs.manifest }}}}"
          content: true
{after_sync}"#,
            storage = storage(&sb),
            gate = gate.url()
        )
    };

    // 1. A target object changed behind the copy (between the replicate and the sync) fails the
    //    sync naming its key.
    let rb = sb.extra_runbook("changed", &runbook("changed", ""));
    let child = sb.spawn(&["rehearse", "staging", "--runbook", &rb]);
    sb.wait_for_step("gate", "step_started", 120);
    block_on(dst.put("products/0007.jpg", body(1, 100), &Metadata::default())).unwrap();
    gate.open();
    let (code, out) = sb.finish(child, 120);
    assert_ne!(code, Some(0), "{out}");
    let run = sb.run_ids().pop().unwrap();
    let failed = sb
        .records(&run)
        .into_iter()
        .find(|r| r["type"] == "step_failed" && r["step"] == "sync")
        .expect("the sync failed");
    assert!(failed.to_string().contains("products/0007.jpg"), "{failed}");
    // The rollback deleted the copies it made, and left the object it did not write as it is.
    let left: Vec<String> = listing(&dst).into_keys().collect();
    assert_eq!(left, ["products/0007.jpg"]);
    block_on(dst.delete("products/0007.jpg")).unwrap();

    // 2. After the sync (the flip), the application writes to S3: new uploads, an overwrite, a
    //    delete. Then a check fails and the run rolls back: all of it is back on the Space.
    gate.open.store(false, Ordering::SeqCst);
    let written = Gate::start();
    let rb = sb.extra_runbook(
        "rolled-back",
        &runbook(
            "rolled-back",
            &format!(
                "      - id: fallback\n        kind: s3.fallback\n        with:\n          {storage}\n          manifest: \"{{{{ steps.uploads.outputs.manifest }}}}\"\n      - {{ id: written, kind: http.check, with: {{ url: \"{}\", consecutive: 1, interval: 100ms }}, timeout: 2m }}\n      - {{ id: broken, kind: http.check, with: {{ url: \"{}\", expect_status: 299, consecutive: 1, interval: 100ms }}, timeout: 2s }}\n",
                written.url(),
                gate.url(),
                storage = storage(&sb),
            ),
        ),
    );
    let runs = sb.run_ids().len();
    let child = sb.spawn(&["rehearse", "staging", "--runbook", &rb]);
    wait_until(60, "the second run started", || sb.run_ids().len() > runs);
    sb.wait_for_step("gate", "step_started", 120);
    gate.open();
    sb.wait_for_step("sync", "step_applied", 120);
    block_on(async {
        dst.put("products/new-upload.jpg", body(4242, 2000), &metadata(1))
            .await
            .unwrap();
        dst.put("products/0003.jpg", body(4343, 1500), &metadata(2))
            .await
            .unwrap();
        dst.delete("products/0004.jpg").await.unwrap();
    });
    written.open();
    let (code, out) = sb.finish(child, 180);
    assert_ne!(code, Some(0), "the broken check rolls the run back: {out}");
    let run = sb.run_ids().pop().unwrap();
    let synced = sb
        .records(&run)
        .into_iter()
        .find(|r| r["type"] == "step_applied" && r["step"] == "sync")
        .expect("the sync applied");
    let o = &synced["data"]["outputs"];
    assert_eq!(o["content_checked"], true);
    assert_eq!(
        o["verified"], o["objects"],
        "every object read back and hashed: {o}"
    );
    let on_source = listing(&src);
    let new = &on_source["products/new-upload.jpg"];
    assert_eq!(new.size, 2000);
    assert_eq!(
        block_on(src.sha256("products/new-upload.jpg", &[]))
            .unwrap()
            .1,
        block_on(async {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(body(4242, 2000)))
        })
    );
    assert_eq!(
        on_source["products/0003.jpg"].size, 1500,
        "the overwrite came back"
    );
    assert!(
        !on_source.contains_key("products/0004.jpg"),
        "the delete came back"
    );
    let head = block_on(src.head("products/new-upload.jpg"))
        .unwrap()
        .unwrap();
    assert_eq!(head.metadata, metadata(1), "copied back with its metadata");
    wait_until(10, "run finished", || {
        sb.records(&sb.run_ids().pop().unwrap())
            .iter()
            .any(|r| r["type"] == "run_finished")
    });
}
