//! Traffic cutover against moto and the sandbox apps: the TTL guard, and the panic flag raised
//! inside an analysis window. Each test has its own sandbox.

use crate::common;

use common::{events, text, Sandbox};
use std::time::{Duration, Instant};

/// A runbook that lowers the TTL and starts the cutover right after it.
fn ttl_guard_runbook(on_pending: &str) -> String {
    format!(
        r#"name: ttl-guard
phases:
  - name: dns
    steps:
      - {{ id: ttl, kind: route53.set_ttl, with: {{ record: "shop.{{{{ env.dns.domain }}}}", ttl: 60 }} }}
      - id: dns
        kind: route53.cutover
        with:
          record: "shop.{{{{ env.dns.domain }}}}"
          to: shop-aws.example.net
          ttl: "{{{{ steps.ttl.outputs.ttl }}}}"
          ttl_lowered_at: "{{{{ steps.ttl.outputs.lowered_at }}}}"
          previous_ttl: "{{{{ steps.ttl.outputs.previous_ttl }}}}"
          on_ttl_pending: {on_pending}
"#
    )
}

/// Sets the TTL of the seeded `shop.<domain>` CNAME in moto (as a team's record would have).
fn set_seed_ttl(sb: &Sandbox, env: &str, ttl: i64) {
    let cfg = sb.aws(env);
    let value = sb.shop_record(env);
    common::block_on(async {
        use aws_sdk_route53::types::*;
        let r53 = aws_sdk_route53::Client::new(&cfg);
        let zone = r53.list_hosted_zones().send().await.unwrap().hosted_zones()[0]
            .id()
            .to_string();
        let name = format!(
            "shop.{}",
            r53.list_hosted_zones().send().await.unwrap().hosted_zones()[0].name()
        );
        let set = ResourceRecordSet::builder()
            .name(name)
            .r#type(RrType::Cname)
            .ttl(ttl)
            .resource_records(ResourceRecord::builder().value(value).build().unwrap())
            .build()
            .unwrap();
        r53.change_resource_record_sets()
            .hosted_zone_id(zone)
            .change_batch(
                ChangeBatch::builder()
                    .changes(
                        Change::builder()
                            .action(ChangeAction::Upsert)
                            .resource_record_set(set)
                            .build()
                            .unwrap(),
                    )
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    });
}

#[test]
fn cutover_one_second_after_lowering_a_300s_ttl_refuses_or_waits_as_configured() {
    let sb = Sandbox::start();
    set_seed_ttl(&sb, "staging", 300);
    let before = sb.shop_sets("staging");
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].ttl, Some(300));

    // on_ttl_pending: refuse — no traffic moves; the rollback raises the TTL back to 300.
    let refuse = sb.extra_runbook("ttl-refuse", &ttl_guard_runbook("refuse"));
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &refuse]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    let failed = events(&records, "step_failed");
    let msg = failed[0]["data"]["error"].as_str().unwrap();
    assert_eq!(failed[0]["step"], "dns");
    assert!(
        msg.starts_with(
            "refused: the TTL of CNAME shop.staging.example-shop.com. was lowered from 300s"
        ),
        "{msg}"
    );
    let left: i64 = msg
        .split(" live ")
        .nth(1)
        .unwrap()
        .split('s')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=300).contains(&left), "{msg}");
    assert!(events(&records, "traffic_stage").is_empty());
    let lowered = events(&records, "step_applied")[0]["data"]["outputs"].clone();
    assert_eq!(lowered["previous_ttl"], 300);
    assert_eq!(lowered["ttl"], 60);
    assert_eq!(
        sb.shop_sets("staging"),
        before,
        "the record is as before the run"
    );

    // on_ttl_pending: wait — the step waits out the old TTL; nothing moves while it waits.
    let wait = sb.extra_runbook("ttl-wait", &ttl_guard_runbook("wait"));
    let (mut child, _out, err) = sb.spawn_logged(&["rehearse", "staging", "--runbook", &wait]);
    let start = Instant::now();
    let (run, waited) = loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no ttl_wait: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        if let Some(run) = sb.run_ids().into_iter().find(|r| *r != run) {
            if let Some(w) = events(&sb.records(&run), "ttl_wait").first() {
                break (run.clone(), w["data"].clone());
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(waited["previous_ttl"], 300);
    let wait_s = waited["wait_s"].as_i64().unwrap();
    assert!((290..=300).contains(&wait_s), "{waited}");
    std::thread::sleep(Duration::from_secs(2));
    let sets = sb.shop_sets("staging");
    assert_eq!(sets.len(), 1, "traffic moved while waiting: {sets:?}");
    assert_eq!(sets[0].ttl, Some(60));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run stopped instead of waiting"
    );
    // Interrupt (as Ctrl-C would), then roll back: the TTL goes back to 300.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let rb = sb.cutover(&["rollback", &run]);
    assert_eq!(rb.status.code(), Some(1), "{}", text(&rb));
    assert_eq!(sb.shop_sets("staging"), before);
    sb.assert_no_secrets(&[]);
}

#[test]
fn panic_flag_raised_in_an_analysis_window_rolls_back_and_the_audit_names_it() {
    let sb = Sandbox::start();
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    let legacy_sets = sb.shop_sets("staging");
    let (mut child, out, err) = sb.spawn_logged(&["rehearse", "staging"]);
    let start = Instant::now();
    let flag = sb.project.path().join(".cutover/panic-staging");
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "stage 1 never came: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        if let Some(run) = sb.run_ids().pop() {
            if !events(&sb.records(&run), "traffic_stage_insync").is_empty() {
                break;
            }
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the run ended before stage 1 ({status}): {}",
                std::fs::read_to_string(&err).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Inside stage 1's analysis window.
    std::fs::write(&flag, "checkout errors spiking on the new side\n").unwrap();
    let status = child.wait().unwrap();
    let printed = std::fs::read_to_string(out).unwrap() + &std::fs::read_to_string(err).unwrap();
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(status.code(), Some(1), "{printed}");
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    let panic = events(&records, "panic");
    assert_eq!(panic.len(), 1, "{printed}");
    assert_eq!(panic[0]["step"], "dns");
    assert!(panic[0]["data"]["reason"]
        .as_str()
        .unwrap()
        .contains("checkout errors spiking on the new side"));
    assert_eq!(
        events(&records, "analysis").len(),
        0,
        "the window was cut short by the flag"
    );
    assert_eq!(events(&records, "traffic_returned").len(), 1);
    assert!(
        events(&records, "rollback_step_failed").is_empty(),
        "{printed}"
    );
    assert_eq!(
        events(&records, "run_finished")[0]["data"]["status"],
        "rolled-back"
    );
    assert_eq!(sb.shop_sets("staging"), legacy_sets);
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    let audit = text(&sb.cutover(&["audit", "show", &run]));
    assert!(audit.contains("> **PANIC.** panic flag"), "{audit}");
    assert!(audit.contains("checkout errors spiking on the new side"));
    // While the flag is up, no run starts.
    let again = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(again.status.code(), Some(3), "{}", text(&again));
    assert!(text(&again).contains("panic flag"), "{}", text(&again));
    sb.assert_no_secrets(&[]);
}

#[test]
fn a_rollback_that_cannot_finish_exits_4_and_says_what_to_do_object_by_object() {
    let sb = Sandbox::start();
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    // Flip the Secret, then a health check that cannot pass (nothing listens on port 9).
    let runbook = sb.extra_runbook(
        "flip-then-fail",
        r#"name: flip-then-fail
phases:
  - name: cutover
    steps:
      - id: flip
        kind: k8s.flip_secret
        with:
          namespace: shop
          secret: shop-db
          data: { DATABASE_URL: "{{ secrets.target_app_database_url }}" }
          restart: [deployment/shop-api, deployment/shop-worker]
      - { id: health, kind: http.check, with: { url: "http://127.0.0.1:9/healthz", interval: 1s }, timeout: 8s }
"#,
    );
    let (mut child, out, err) = sb.spawn_logged(&["rehearse", "staging", "--runbook", &runbook]);
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no flip: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        let done = sb.run_ids().pop().is_some_and(|run| {
            sb.records(&run)
                .iter()
                .any(|r| r["type"] == "step_completed" && r["step"] == "flip")
        });
        if done {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // Someone deletes a Deployment while the health check runs: its restart cannot be undone.
    let port = sb.port("/kube_ports/staging");
    common::block_on(async {
        let r = reqwest::Client::new()
            .delete(format!(
                "http://127.0.0.1:{port}/apis/apps/v1/namespaces/shop/deployments/shop-worker"
            ))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    });
    let status = child.wait().unwrap();
    let printed = std::fs::read_to_string(out).unwrap() + &std::fs::read_to_string(&err).unwrap();
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(status.code(), Some(4), "{printed}");
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(stderr.contains("what to do, object by object:"), "{stderr}");
    assert!(
        stderr.contains(
            "[flip] restore the Secret from its backup: kubectl -n shop get secret shop-db-backup-"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            "[flip] restart and watch: kubectl -n shop rollout restart deployment/shop-worker"
        ),
        "{stderr}"
    );
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    let fin = events(&records, "run_finished")[0]["data"].clone();
    assert_eq!(fin["status"], "rollback-incomplete");
    assert_eq!(fin["incomplete"][0]["step"], "flip");
    // The Secret itself was restored before the restart failed.
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    let audit = text(&sb.cutover(&["audit", "show", &run]));
    assert!(audit.contains("`flip` **rollback FAILED**"), "{audit}");
    assert!(
        audit.contains("  - [ ] to do by hand: restore the Secret from its backup"),
        "{audit}"
    );
    sb.assert_no_secrets(&[]);
}

#[test]
fn with_a_long_ttl_wait_the_legacy_path_outage_stays_inside_the_window_unless_the_flip_comes_first()
{
    let sb = Sandbox::start_first();
    // Old answers may be cached for 45 s: route53.cutover waits what is left of that (at least
    // 30 s) before stage 1.
    set_seed_ttl(&sb, "staging", 45);
    set_seed_ttl(&sb, "dev", 45);
    let flip_first = sb.extra_runbook("shop-cutover-flip-first", &common::flip_first_runbook());
    let shop = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(shop.status.code(), Some(0), "{}", text(&shop));
    let dev = sb.cutover(&["rehearse", "dev", "--runbook", &flip_first]);
    assert_eq!(dev.status.code(), Some(0), "{}", text(&dev));
    let runs = sb.run_ids();
    let of = |env: &str| {
        runs.iter()
            .map(|r| sb.records(r))
            .find(|recs| events(recs, "run_started")[0]["data"]["environment"] == env)
            .unwrap()
    };
    for (env, flip_first) in [("staging", false), ("dev", true)] {
        let records = of(env);
        let waited: u64 = events(&records, "ttl_wait")
            .iter()
            .filter_map(|r| r["data"]["wait_s"].as_u64())
            .sum();
        // Stage 1 comes only after every answer cached under the old TTL (45 s from the moment
        // the TTL was lowered) has expired, however long the run took to get there.
        let lowered = records
            .iter()
            .find(|r| r["type"] == "step_applied" && r["step"] == "ttl")
            .and_then(|r| r["data"]["outputs"]["lowered_at"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{env}: no record says when the TTL was lowered"));
        let stage1 = events(&records, "traffic_stage")
            .first()
            .and_then(|r| r["ts"].as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{env}: no traffic stage"));
        let after_ms = common::log_time(&stage1).unwrap() - common::log_time(&lowered).unwrap();
        assert!(
            after_ms >= 45_000,
            "{env}: stage 1 came {after_ms} ms after the TTL was lowered from 45 s (waited {waited} s)"
        );
        let hb = common::heartbeat_without_loss(&records);
        let legacy = common::heartbeat_path(&hb, "legacy")["longest_gap_ms"]
            .as_u64()
            .unwrap();
        if flip_first {
            // The legacy database froze before DNS moved: users still sent there could not
            // write for the whole TTL wait and the stages, and the run says so.
            // (The wait itself is at least 45 s less the time from lowering the TTL to the DNS
            // step, which a loaded machine stretches: the outage is compared with the wait the
            // run recorded.)
            assert!(waited > 0, "{env}: no wait for old answers: {records:?}");
            assert!(
                legacy >= waited * 1000,
                "{env}: legacy path outage {legacy} ms, waited {waited} s"
            );
            assert_eq!(hb["gap_path"], "legacy", "{hb}");
            assert!(
                hb["longest_gap_ms"].as_u64().unwrap() >= waited * 1000,
                "{hb}"
            );
        } else {
            assert!(
                legacy <= 1_000,
                "{env}: legacy path outage {legacy} ms: {hb}"
            );
        }
    }
}
