//! Acceptance tests of the main job against the real stand-ins: moto (AWS API), PostgreSQL 15,
//! Terraform, the Kubernetes API emulator. Each test has its own sandbox.

use crate::common;

use common::{events, text, Sandbox, SHOP_STEP_IDS as STEP_IDS};
use serde_json::Value;
use std::time::{Duration, Instant};

#[test]
fn rehearsal_moves_data_secret_and_dns_and_its_audit_verifies() {
    let sb = Sandbox::start_long();
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .expect("seeded secret");
    let legacy_record = sb.shop_record("staging");
    let (out, weights) = sb.watch_weights("staging", || sb.cutover(&["rehearse", "staging"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("succeeded"));
    // Traffic moved in weighted stages, in this order, as moto saw them.
    assert_eq!(
        weights,
        vec![(10, 90), (50, 50), (100, 0)],
        "{}",
        text(&out)
    );
    // After the last stage the TTL went back up to the seeded record's (10 s, the sandbox's
    // SEED_TTL).
    let sets = sb.shop_sets("staging");
    assert!(sets.iter().all(|s| s.ttl == Some(10)), "{sets:?}");

    // DNS: moto's record points at the AWS load balancer named by Terraform's output.
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    let tf = events(&records, "step_applied")
        .into_iter()
        .find(|r| r["step"] == "infra")
        .unwrap()["data"]["outputs"]["tf"]
        .clone();
    let alb = tf["alb_dns_name"].as_str().unwrap();
    assert_ne!(legacy_record, alb);
    // Regression (issue 14): every output a kind returns is one it declares (the names
    // `validate` checks `steps.<id>.outputs.<name>` against).
    for applied in events(&records, "step_applied") {
        let kind = applied["data"]["kind"].as_str().unwrap();
        let declared = cutover::steps::lookup(kind).unwrap().outputs();
        for key in applied["data"]["outputs"].as_object().unwrap().keys() {
            assert!(
                declared.contains(key) || key == cutover::steps::SUMMARY_OUTPUT,
                "{kind} returned output `{key}` it does not declare ({declared:?})"
            );
        }
    }
    assert_eq!(sb.shop_record("staging"), alb);

    // The application's Secret still names its pooler, which sends it to RDS now (resumed);
    // the backup of the pooler's [databases] file holds the legacy entry.
    let target_url = sb.var("CUTOVER_STAGING_TARGET_APP_DATABASE_URL");
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    assert_eq!(sb.shop_database("staging"), ("target".to_string(), false));
    let backup = sb
        .pooler_backup("staging", &run)
        .expect("the pooler's backup");
    assert!(
        backup.contains(&format!("port={} ", sb.state["source_port"])),
        "the backup does not hold the legacy entry"
    );

    // Data: every source row on the target, counts and checksums equal.
    let src = sb.table_fingerprints(&sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL"));
    let tgt = sb.table_fingerprints(&sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL"));
    assert!(src["orders"].starts_with("100000 "), "{src:?}");
    assert_eq!(src, tgt);
    // The application can write on the target: sequences are past the source's values.
    let inserted = sb.sql(&target_url, "INSERT INTO customers (email, name, created_at) VALUES ('new@example.com', 'New', now()) RETURNING id");
    assert!(inserted[0][0].as_deref().unwrap().parse::<i64>().unwrap() > 10_000);
    // Owners as on the source (issue 15): the application role owns its tables on the target, so
    // its own schema migrations run there (rolled back here: the fallback replicates the target
    // to the legacy database, whose tables must keep the same columns).
    let owners = "SELECT string_agg(relname || '=' || pg_get_userbyid(relowner), ',' ORDER BY relname) FROM pg_class WHERE relname IN ('customers', 'orders', 'order_items')";
    let source_owners = sb.sql(&sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL"), owners);
    assert_eq!(
        source_owners,
        sb.sql(&sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL"), owners)
    );
    assert!(source_owners[0][0]
        .as_deref()
        .unwrap()
        .contains("orders=shop"));
    sb.sql(
        &target_url,
        "BEGIN; ALTER TABLE orders ADD COLUMN migration_probe int; CREATE INDEX orders_probe ON orders (migration_probe); ROLLBACK",
    );
    assert!(applied_summary(&records, "replicate").contains("owners and privileges of"));

    // Every row was compared before the freeze; inside the window only the rows changed since.
    let applied = |id: &str| {
        events(&records, "step_applied")
            .into_iter()
            .find(|r| r["step"] == id)
            .unwrap()["data"]["outputs"]
            .clone()
    };
    let all_rows = applied("prepass")["rows"].as_i64().unwrap();
    let in_window = applied("verify")["rows_compared"].as_i64().unwrap();
    assert!(all_rows > 300_000, "{all_rows}");
    assert!(
        (1..10_000).contains(&in_window),
        "the in-window check read {in_window} of {all_rows} rows"
    );
    // No acknowledged write missing on either path; the legacy database subscribes to the
    // target (the fallback) and the target takes the application's writes.
    let hb = common::heartbeat_without_loss(&records);
    // The application reaches the database through its pooler (`reload: pooler`): its writes
    // waited in the window, none failed, and no pod restarted for the database (once, before
    // the window, for the storage write-flip).
    assert_eq!(hb["reload"], "pooler", "{hb}");
    let aws = common::heartbeat_path(&hb, "aws");
    assert_eq!(aws["failed"], 0, "{hb}");
    assert!(aws["wait_max_ms"].as_u64().unwrap() > 0, "{hb}");
    let dep = sb.kube_get(
        "staging",
        "/apis/apps/v1/namespaces/shop/deployments/shop-worker",
    );
    assert_eq!(
        dep["metadata"]["generation"], 1,
        "shop-worker was restarted: {dep}"
    );
    let dep = sb.kube_get(
        "staging",
        "/apis/apps/v1/namespaces/shop/deployments/shop-api",
    );
    assert_eq!(dep["metadata"]["generation"], 2, "{dep}");
    let mark = dep
        .pointer("/spec/template/metadata/annotations/cutover.dev~1restarted-for")
        .and_then(Value::as_str)
        .unwrap_or_default();
    assert!(
        mark.ends_with("/storage"),
        "shop-api restarted for {mark:?}"
    );

    // Users' files: every object of the Space in the uploads bucket, verified against the
    // manifest, whose root hash the audit carries; the AWS side serves them from S3 now and a
    // new upload lands there.
    let synced = applied("uploads_sync");
    assert_eq!(synced["objects"], 61, "{synced}");
    assert_eq!(synced["verified"], 61, "{synced}");
    let bucket = tf["uploads_bucket"].as_str().unwrap().to_string();
    assert_eq!(sb.s3_keys("staging", &bucket).len(), 61);
    let app = sb.var("CUTOVER_STAGING_APP_URL");
    let (status, served_by) = common::block_on(async {
        let r = reqwest::get(format!("{app}/uploads/products/0001.jpg"))
            .await
            .unwrap();
        let by = r
            .headers()
            .get("x-storage")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), by)
    });
    assert_eq!((status, served_by), (200, Some(format!("s3://{bucket}"))));
    let status = common::block_on(async {
        reqwest::Client::new()
            .put(format!("{app}/uploads/products/after-the-flip.jpg"))
            .body("new upload")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 201);
    assert!(sb
        .s3_keys("staging", &bucket)
        .contains(&"products/after-the-flip.jpg".to_string()));
    assert_eq!(
        applied("fallback")["fallback"]
            .as_str()
            .map(|f| f.ends_with("_fb")),
        Some(true)
    );

    let verify = sb.cutover(&["audit", "verify", &run]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    let audit = sb.cutover(&["audit", "show", &run]);
    let md = text(&audit);
    for step in STEP_IDS {
        assert!(md.contains(&format!("`{step}`")), "audit lacks step {step}");
    }
    assert!(
        md.contains(synced["manifest_sha256"].as_str().unwrap()),
        "the audit carries the object manifest's root hash"
    );
    assert!(
        md.contains("reload: pooler (never)") && md.contains(", 0 failed, the slowest took "),
        "the audit names the reload mode, failed writes and the slowest beside the outage:\n{md}"
    );

    let runs = sb.cutover(&["runs", "--output", "json"]);
    let list: Value = serde_json::from_slice(&runs.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.as_str())
        .unwrap();
    for key in ["id", "environment", "mode", "status", "started_at"] {
        assert!(entry.get(key).is_some(), "runs --output json lacks {key}");
    }
    assert_eq!(entry["status"], "succeeded");
    assert_eq!(entry["environment"], "staging");
    sb.assert_no_secrets(&[]);
}

/// The summary a step's verify recorded.
fn applied_summary(records: &[serde_json::Value], step: &str) -> String {
    events(records, "step_completed")
        .into_iter()
        .find(|r| r["step"] == step)
        .map(|r| r["data"]["summary"].as_str().unwrap_or("").to_string())
        .unwrap_or_default()
}

#[test]
fn changing_one_byte_of_a_finished_log_fails_verify_naming_the_record() {
    let sb = Sandbox::start();
    let out = sb.cutover(&["execute", "staging", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = sb.run_ids().pop().unwrap();
    assert_eq!(
        sb.cutover(&["audit", "verify", &run]).status.code(),
        Some(0)
    );
    let path = sb.log_path(&run);
    let original = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    // Change one byte inside record 3's timestamp (a digit to another digit).
    let target = lines[3];
    let pos = target.find("\"ts\":\"").unwrap() + 10;
    let mut bytes = target.as_bytes().to_vec();
    bytes[pos] = if bytes[pos] == b'1' { b'2' } else { b'1' };
    let mut tampered: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    tampered[3] = String::from_utf8(bytes).unwrap();
    std::fs::write(&path, tampered.join("\n") + "\n").unwrap();
    let verify = sb.cutover(&["audit", "verify", &run]);
    assert_ne!(verify.status.code(), Some(0));
    let msg = text(&verify);
    assert!(msg.contains("record 3 (line 4)"), "{msg}");
}

#[test]
fn dry_run_of_production_prints_every_step_and_changes_nothing() {
    let sb = Sandbox::start();
    let snapshot = |sb: &Sandbox| {
        let mut s = Vec::new();
        s.push(format!("{:?}", sb.dns_records("production")));
        s.push(format!("{:?}", sb.rds_snapshots("production")));
        s.push(format!("{:?}", sb.shop_database("production")));
        // The objects, each with its own resourceVersion; not the list's, which is the whole
        // cluster's and moves whenever anything in it changes (the External Secrets operator
        // writes its ExternalSecret's status on every refresh).
        for path in [
            "/api/v1/namespaces/shop/secrets",
            "/apis/apps/v1/namespaces/shop/deployments",
            "/api/v1/namespaces/letters/secrets",
        ] {
            s.push(sb.kube_get("production", path)["items"].to_string());
        }
        for url in [
            sb.var("CUTOVER_PRODUCTION_SOURCE_DATABASE_URL"),
            sb.var("CUTOVER_PRODUCTION_TARGET_DATABASE_URL"),
        ] {
            s.push(format!("{:?}", sb.table_fingerprints(&url)));
            s.push(format!("{:?}", sb.sql(&url, "SELECT (SELECT count(*) FROM pg_publication), (SELECT count(*) FROM pg_subscription), (SELECT count(*) FROM pg_replication_slots), (SELECT count(*) FROM pg_db_role_setting), (SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace)")));
        }
        s
    };
    let before = snapshot(&sb);
    let out = sb.cutover(&["execute", "production", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    for step in STEP_IDS {
        assert!(
            printed.contains(&format!("• {step} ")),
            "dry-run does not show step {step}:\n{printed}"
        );
    }
    assert!(printed.contains("UPSERT"), "the change batch is shown");
    assert!(
        printed.contains("key databases.ini entry shop: shop@127.0.0.1:")
            && printed.contains(") → shop@127.0.0.1:")
            && printed.contains("(sha256:"),
        "the pooler's entry appears as fingerprints:\n{printed}"
    );
    let after = snapshot(&sb);
    assert_eq!(before, after, "a dry-run changed live state");
    sb.assert_no_secrets(&[]);
}

#[test]
fn sigkill_during_cutover_is_completed_by_resume_without_repeating_effects() {
    let sb = Sandbox::start_long();
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    let mut child = sb.spawn(&["rehearse", "staging"]);
    // Kill the run as soon as the flip has been journaled: inside the cutover phase.
    let start = Instant::now();
    let run = loop {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "the run never reached the flip"
        );
        if let Some(run) = sb.run_ids().pop() {
            if sb
                .records(&run)
                .iter()
                .any(|r| r["type"] == "step_started" && r["step"] == "flip")
            {
                break run;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // While it runs, the environment is locked: a second run is refused, naming the holder.
    let second = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(second.status.code(), Some(3), "{}", text(&second));
    assert!(
        text(&second).contains(&format!(
            "environment staging (database shop) is locked by run {run}"
        )),
        "{}",
        text(&second)
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !sb.records(&run).iter().any(|r| r["type"] == "run_finished"),
        "the run finished before it was killed"
    );

    let out = sb.cutover(&["resume", &run]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let records = sb.records(&run);
    // Every step completed exactly once.
    for step in ["infra", "replicate", "freeze", "flip", "dns", "health"] {
        let n = records
            .iter()
            .filter(|r| r["type"] == "step_completed" && r["step"] == step)
            .count();
        assert_eq!(n, 1, "step {step} completed {n} times");
    }
    // The flip's effects happened once: one backup of the pooler's file holding the legacy
    // entry, the pooler on the target and resumed, the application's Secret never changed.
    let backup = sb
        .pooler_backup("staging", &run)
        .expect("the pooler's backup");
    assert!(backup.contains(&format!("port={} ", sb.state["source_port"])));
    assert_eq!(sb.shop_database("staging"), ("target".to_string(), false));
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    let backups = sb.kube_get("staging", "/api/v1/namespaces/shop/secrets");
    let n_backups = backups["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| {
            s["metadata"]["name"]
                .as_str()
                .unwrap()
                .starts_with("pgbouncer-databases-backup-")
        })
        .count();
    assert_eq!(n_backups, 1);
    assert_eq!(
        sb.table_fingerprints(&sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL")),
        sb.table_fingerprints(&sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL"))
    );
    assert_eq!(
        sb.cutover(&["audit", "verify", &run]).status.code(),
        Some(0)
    );
    sb.assert_no_secrets(&[]);
}

#[test]
fn a_failing_analysis_after_the_flip_returns_all_weight_and_rolls_back_secret_dns_and_every_aws_write(
) {
    let sb = Sandbox::start();
    // DNS after the flip: the analysis at stage 2 judges the AWS side on the target, and the
    // rollback comes after the application wrote there.
    let runbook = sb.extra_runbook("shop-cutover-flip-first", &common::flip_first_runbook());
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    let legacy_sets = sb.shop_sets("staging");
    let target_admin = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    let (out, weights) = sb.watch_weights("staging", || {
        let (mut child, out, err) =
            sb.spawn_logged(&["rehearse", "staging", "--runbook", &runbook]);
        // Once moto shows stage 2 (50/50), make the AWS side unhealthy for real: its database
        // role can no longer log in and its sessions end, so the pooler's logins and /healthz
        // fail inside stage 2's analysis window.
        let start = Instant::now();
        loop {
            assert!(
                start.elapsed() < Duration::from_secs(300),
                "stage 2 never came"
            );
            if sb.shop_weights("staging") == Some((50, 50)) {
                // The pooler's open server connections end too: it must log in again.
                sb.sql(&target_admin, "ALTER ROLE shop NOLOGIN");
                sb.sql(
                    &sb.var("CUTOVER_SANDBOX_TARGET_SUPERUSER_URL"),
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'shop'",
                );
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the run ended before stage 2 ({status}): {}",
                    std::fs::read_to_string(&err).unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = child.wait().unwrap();
        (
            status,
            std::fs::read_to_string(out).unwrap() + &std::fs::read_to_string(err).unwrap(),
        )
    });
    let (status, printed) = out;
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(status.code(), Some(1), "{printed}");
    assert_eq!(&weights[..2], &[(10, 90), (50, 50)], "{weights:?}");
    assert!(!weights.contains(&(100, 0)), "stage 3 ran: {weights:?}");
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    // All weight went back to the legacy target (read back from moto), then the rollback put
    // back the exact record set from before the run.
    let returned = events(&records, "traffic_returned_insync");
    assert_eq!(returned.len(), 1, "{printed}");
    let observed = returned[0]["data"]["observed"].as_array().unwrap();
    let weight_of = |id: &str| {
        observed
            .iter()
            .find(|s| s["set_identifier"] == id)
            .map(|s| s["weight"].as_i64().unwrap())
    };
    assert_eq!(
        (
            weight_of("aws-shop.staging.example-shop.com"),
            weight_of("legacy-shop.staging.example-shop.com")
        ),
        (Some(0), Some(100))
    );
    assert_eq!(events(&records, "traffic_returned")[0]["data"]["stage"], 2);
    assert_eq!(sb.shop_sets("staging"), legacy_sets);
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    // The application's writes are accepted on the legacy database again.
    let ro = sb.sql(
        &sb.var("CUTOVER_STAGING_LEGACY_APP_DATABASE_URL"),
        "SHOW default_transaction_read_only",
    );
    assert_eq!(ro[0][0].as_deref(), Some("off"));
    let audit = text(&sb.cutover(&["audit", "show", &run]));
    assert!(audit.contains("**rolled-back**"), "{audit}");
    assert!(audit.contains("## Rollback"));
    assert!(audit.contains("`dns`") && audit.contains("**FAILED**"));
    assert!(audit.contains("stage 2/3 (50%) analysis failed"), "{audit}");
    // Each restored object with fingerprints of its state before and after the rollback.
    let row = |object: &str| {
        audit
            .lines()
            .find(|l| l.starts_with(&format!("  | {object} | `sha256:")))
            .unwrap_or_else(|| panic!("no restored row for {object}:\n{audit}"))
            .to_string()
    };
    // The pooler's entry went back to the legacy database (the application's Secret, which
    // names the pooler, never changed).
    let legacy_entry = cutover::providers::pgbouncer::Upstream::from_url(
        &sb.var("CUTOVER_STAGING_LEGACY_APP_DATABASE_URL"),
    )
    .unwrap();
    let secret_row = row("secret shop/pgbouncer-databases key databases.ini entry shop_staging");
    assert!(
        secret_row.contains(&format!("`{}` |", legacy_entry.fingerprint())),
        "{secret_row}"
    );
    assert_eq!(sb.shop_database("staging"), ("source".to_string(), false));
    let dns_row = row("CNAME shop.staging.example-shop.com.");
    let cells: Vec<&str> = dns_row.split('|').map(str::trim).collect();
    assert_ne!(cells[2], cells[3], "{dns_row}");
    for d in [
        "PgBouncer 127.0.0.1:",
        "role shop in database shop_staging on the source",
        "role shop in database shop_staging on the target",
        // The fallback ran through the relay (the sandbox's legacy admin may not subscribe).
        "relay cutover/relay-cutover-shop-staging-",
    ] {
        audit
            .lines()
            .find(|l| l.starts_with(&format!("  | {d}")))
            .unwrap_or_else(|| panic!("no restored row for {d}:\n{audit}"));
    }
    // The audit names the means of the fallback and why.
    assert!(
        audit.contains("through the relay cutover/relay-cutover-shop-staging-")
            && audit.contains("auto: the legacy admin may not create a subscription to the target (must be superuser to create subscriptions)"),
        "{audit}"
    );
    // Every write the application made on the target after the flip reached the legacy
    // database before it took writes again, and the rollback's outage is on record.
    let hb = common::heartbeat_without_loss(&records);
    assert!(audit.contains("heartbeat:"), "{audit}");
    assert!(hb["longest_gap_ms"].as_u64().unwrap() > 0, "{hb}");
    sb.sql(&target_admin, "ALTER ROLE shop LOGIN");
    let list: Value =
        serde_json::from_slice(&sb.cutover(&["runs", "--output", "json"]).stdout).unwrap();
    assert_eq!(
        list.as_array().unwrap().last().unwrap()["status"],
        "rolled-back"
    );
    sb.assert_no_secrets(&[]);
}
