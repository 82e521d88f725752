//! The database window's promises against the real stand-ins: a rollback after the flip loses no
//! write made on AWS (the legacy database subscribes to the target from the flip), a rollback of
//! a finished rehearsal measures its own outage, a rehearsal runs again after it, the fallback is
//! ended by a decommission, the outage users see is measured on the legacy path too, and a run
//! that lost an acknowledged write is never reported as clean.

use crate::common;

use common::{events, heartbeat_path, heartbeat_without_loss, text, wait_until, Sandbox};
use serde_json::Value;

fn scalar(sb: &Sandbox, url: &str, q: &str) -> String {
    sb.sql(url, q)[0][0].clone().unwrap_or_default()
}

/// Replication objects (`cutover_*` slots, publications, subscriptions) left on either server.
fn replication_objects(sb: &Sandbox, env: &str) -> Vec<String> {
    let up = env.to_uppercase();
    let mut out = Vec::new();
    for side in ["SOURCE", "TARGET"] {
        let url = sb.var(&format!("CUTOVER_{up}_{side}_DATABASE_URL"));
        for q in [
            "SELECT 'slot ' || slot_name FROM pg_replication_slots WHERE slot_name LIKE 'cutover%'",
            "SELECT 'publication ' || pubname FROM pg_publication WHERE pubname LIKE 'cutover%'",
            "SELECT 'subscription ' || subname FROM pg_subscription WHERE subname LIKE 'cutover%'",
        ] {
            for r in sb.sql(&url, q) {
                out.push(format!("{side}: {}", r[0].clone().unwrap_or_default()));
            }
        }
    }
    out
}

#[test]
fn cutover_rollback_of_a_rehearsal_loses_no_aws_write_and_the_rehearsal_runs_again_then_decommissions(
) {
    let sb = Sandbox::start_first();
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    let legacy_sets = sb.shop_sets("staging");
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let app_target = sb.var("CUTOVER_STAGING_TARGET_APP_DATABASE_URL");

    let first = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let run = sb.run_ids().pop().unwrap();
    heartbeat_without_loss(&sb.records(&run));
    // While the fallback lives, status says which slot retains WAL.
    let status = sb.cutover(&["status", &run]);
    assert!(text(&status).contains("retains"), "{}", text(&status));
    // The fallback runs through the relay here (the legacy admin may not subscribe): status
    // shows its state, last applied LSN and lag.
    assert!(
        text(&status)
            .contains("(the fallback to the legacy database): streaming, last applied LSN"),
        "{}",
        text(&status)
    );

    // Again on top of a live cutover: refused before anything of the live side is touched,
    // saying what to do.
    let again = sb.cutover(&["rehearse", "staging"]);
    assert_ne!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("cutover rollback"),
        "{}",
        text(&again)
    );
    // The application's Secret names its pooler throughout; the pooler sends it to RDS now.
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    assert_eq!(sb.shop_database("staging"), ("target".to_string(), false));
    assert_eq!(
        scalar(&sb, &app_target, "SHOW default_transaction_read_only"),
        "off"
    );

    // The application writes on AWS after the rehearsal; `cutover rollback` carries it back.
    let id = scalar(&sb, &app_target, "INSERT INTO orders (customer_id, status, total_cents, created_at) VALUES (1, 'paid', 4242, now()) RETURNING id");
    let back = sb.cutover(&["rollback", &run]);
    assert_eq!(back.status.code(), Some(1), "{}", text(&back));
    assert_eq!(
        scalar(
            &sb,
            &src,
            &format!("SELECT count(*) FROM orders WHERE id = {id} AND total_cents = 4242")
        ),
        "1",
        "the write made on AWS is not on the legacy database"
    );
    assert_eq!(sb.shop_database("staging"), ("source".to_string(), false));
    assert_eq!(sb.shop_sets("staging"), legacy_sets);
    assert_eq!(
        scalar(&sb, &legacy_url, "SHOW default_transaction_read_only"),
        "off"
    );
    // The rollback measured its own window: a second heartbeat, nothing missing.
    let records = sb.records(&run);
    assert_eq!(events(&records, "heartbeat").len(), 2);
    heartbeat_without_loss(&records);
    let audit = text(&sb.cutover(&["audit", "show", &run]));
    // The audit shows both measurements: the rehearsal's and its rollback's.
    assert_eq!(
        audit.matches("no acknowledged write missing").count(),
        2,
        "{audit}"
    );

    // Rehearsed again, the forward replication through the relay too (`replication: relay`,
    // as where the legacy host's firewall does not let RDS in): the earlier copy on the target
    // is emptied and copied afresh, the relay follows the copy, the flip retires it.
    let runbook = std::fs::read_to_string(sb.project.path().join("runbooks/shop-cutover.yaml"))
        .unwrap()
        .replace(
            "kind: postgres.replicate, with: { jobs: 4,",
            "kind: postgres.replicate, with: { replication: relay, jobs: 4,",
        );
    assert!(runbook.contains("replication: relay"));
    std::fs::write(sb.project.path().join("runbooks/shop-relay.yaml"), runbook).unwrap();
    let third = sb.cutover(&["rehearse", "staging", "--runbook", "shop-relay"]);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    let run3 = sb.run_ids().pop().unwrap();
    let records3 = sb.records(&run3);
    heartbeat_without_loss(&records3);
    let replicated = events(&records3, "step_applied")
        .into_iter()
        .find(|r| r["step"] == "replicate")
        .unwrap();
    assert_eq!(
        replicated["data"]["outputs"]["means"], "relay",
        "{replicated}"
    );
    assert!(
        replicated["data"]["outputs"]["relay"]
            .as_str()
            .is_some_and(|r| r.starts_with("cutover/relay-cutover-shop-staging-")),
        "{replicated}"
    );
    let audit3 = text(&sb.cutover(&["audit", "show", &run3]));
    assert!(
        audit3.contains("replicating through the relay cutover/relay-cutover-shop-staging-"),
        "{audit3}"
    );
    // After the flip only the fallback's relay runs: the forward one was retired with its slot.
    let status3 = text(&sb.cutover(&["status", &run3]));
    assert!(
        status3.contains("(the fallback to the legacy database): streaming")
            && !status3.contains("(the forward replication to the target)"),
        "{status3}"
    );
    let reset = events(&records3, "step_planned")
        .into_iter()
        .find(|r| r["step"] == "replicate")
        .unwrap()["data"]["changes"]
        .to_string();
    assert!(reset.contains("DROP TABLE"), "{reset}");
    assert_eq!(
        sb.table_fingerprints(&src),
        sb.table_fingerprints(&sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL"))
    );

    // The decommission ends the fallback: nothing of any run is left on either side.
    assert!(!replication_objects(&sb, "staging").is_empty());
    let dec = sb.cutover(&["execute", "staging", "--runbook", "shop-decommission"]);
    assert_eq!(dec.status.code(), Some(0), "{}", text(&dec));
    assert_eq!(replication_objects(&sb, "staging"), Vec::<String>::new());
    sb.assert_no_secrets(&[]);
}

#[test]
fn rollbacks_after_the_flip_from_a_failed_health_check_or_a_panic_at_a_dns_stage_lose_nothing() {
    // The default sandbox, as managed databases are: the fallback runs through the relay.
    let sb = Sandbox::start_long();
    // staging: the shop runbook's order; the health check after the flip fails.
    let shop = std::fs::read_to_string(common::repo().join("runbooks/shop-cutover.yaml")).unwrap();
    let failing = shop.replace(
        "{ id: health, kind: http.check, with: { url: \"{{ tf.app_url }}/healthz\"",
        "{ id: health, kind: http.check, with: { url: \"http://127.0.0.1:9/healthz\"",
    );
    assert_ne!(failing, shop);
    let failing = sb.extra_runbook("shop-cutover-failing-health", &failing);
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    let legacy_sets = sb.shop_sets("staging");
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &failing]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    assert!(events(&records, "step_completed")
        .iter()
        .any(|r| r["step"] == "flip"));
    // auto chose the relay: the legacy admin may not subscribe.
    assert!(
        text(&out).contains("the legacy database receives the target's changes through the relay cutover/relay-cutover-shop-staging-"),
        "{}",
        text(&out)
    );
    // Through the pooler: the application's writes waited in the window and in the rollback
    // after the flip, none failed, none is missing.
    let hb = heartbeat_without_loss(&records);
    let aws = heartbeat_path(&hb, "aws");
    assert_eq!(aws["failed"], 0, "{hb}");
    assert_eq!(aws["url_changes"], 0, "{hb}");
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    assert_eq!(sb.shop_database("staging"), ("source".to_string(), false));
    assert_eq!(sb.shop_sets("staging"), legacy_sets);
    assert_eq!(
        scalar(&sb, &legacy_url, "SHOW default_transaction_read_only"),
        "off"
    );

    // dev: DNS after the flip, the panic flag raised at stage 2.
    let flip_first = sb.extra_runbook("shop-cutover-flip-first", &common::flip_first_runbook());
    let legacy_dev = sb.secret_value("dev", "shop-db", "DATABASE_URL").unwrap();
    let legacy_dev_sets = sb.shop_sets("dev");
    let (child, _, _) = sb.spawn_logged(&["rehearse", "dev", "--runbook", &flip_first]);
    wait_until(300, "stage 2 on dev", || {
        sb.shop_weights("dev") == Some((50, 50))
    });
    std::fs::write(
        sb.project.path().join(".cutover/panic-dev"),
        "checkout errors\n",
    )
    .unwrap();
    let mut child = child;
    let status = child.wait().unwrap();
    std::fs::remove_file(sb.project.path().join(".cutover/panic-dev")).unwrap();
    assert_eq!(status.code(), Some(1));
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    assert_eq!(events(&records, "panic").len(), 1);
    heartbeat_without_loss(&records);
    assert_eq!(
        sb.secret_value("dev", "shop-db", "DATABASE_URL").as_deref(),
        Some(legacy_dev.as_str())
    );
    assert_eq!(sb.shop_sets("dev"), legacy_dev_sets);
    sb.assert_no_secrets(&[]);
}

#[test]
fn a_run_that_lost_an_acknowledged_write_exits_4_and_says_so_first() {
    let sb = Sandbox::start_long();
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let (flag, child) = sb.start_held("staging", &["rehearse", "staging"]);
    // The postpone flag holds the run before the pooler pauses (and the freeze).
    let run = sb.wait_for_step("pause", "step_planned", 240);
    // Held before the freeze: some of the heartbeat's acknowledged writes disappear (as a bad
    // trigger or an operator's DELETE would make them); replication carries the loss along.
    wait_until(30, "heartbeat rows", || {
        scalar(
            &sb,
            &src,
            &format!("SELECT count(*) FROM cutover_heartbeat WHERE writer = '{run}'"),
        )
        .parse::<i64>()
        .unwrap()
            > 20
    });
    sb.sql(
        &src,
        &format!("DELETE FROM cutover_heartbeat WHERE writer = '{run}' AND seq <= 10"),
    );
    std::fs::remove_file(&flag).unwrap();
    let (code, out) = sb.finish(child, 240);
    assert_eq!(code, Some(4), "{out}");
    assert!(out.contains("acknowledged write(s) missing"), "{out}");
    let md = text(&sb.cutover(&["audit", "show", &run]));
    let first_page: String = md.lines().take(15).collect::<Vec<_>>().join("\n");
    assert!(
        first_page.contains("ACKNOWLEDGED WRITES MISSING"),
        "{first_page}"
    );
    assert!(first_page.contains("10 write(s)"), "{first_page}");
    let runs: Value =
        serde_json::from_slice(&sb.cutover(&["runs", "--output", "json"]).stdout).unwrap();
    assert_eq!(
        runs.as_array().unwrap().last().unwrap()["status"],
        "writes-missing"
    );
}
