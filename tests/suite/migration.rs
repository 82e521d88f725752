//! A migration in waves against the sandbox: a failure in wave 2 rolls back only its own run and
//! leaves wave 1's service on AWS; running the command again continues with wave 2 and does not
//! repeat wave 1.

use crate::common;

use common::{events, text, Sandbox};

/// A second wave's runbook whose health check answers `status` is healthy (the sandbox app
/// answers 200, so 418 fails it).
fn after_shop(app_url: &str, status: u16) -> String {
    format!(
        "name: after-shop\ndatabase: shop\nphases:\n  - name: check\n    steps:\n      - {{ id: identity, kind: aws.assert_account }}\n      - {{ id: health, kind: http.check, with: {{ url: \"{app_url}/healthz\", expect_status: {status}, consecutive: 1, interval: 200ms }}, timeout: 3s }}\n"
    )
}

#[test]
fn a_failed_wave_rolls_back_only_its_run_and_the_migration_continues_where_it_stopped() {
    let sb = Sandbox::start_long();
    let app_url = sb.var("CUTOVER_STAGING_APP_URL");
    let project = sb.project.path();
    std::fs::write(
        project.join("runbooks/after-shop.yaml"),
        after_shop(&app_url, 418),
    )
    .unwrap();
    std::fs::create_dir_all(project.join("migrations")).unwrap();
    std::fs::write(
        project.join("migrations/move-shop.yaml"),
        "name: move-shop\nwaves:\n  - name: core\n    runs:\n      - runbook: shop-cutover\n  - name: rest\n    on_failure: rollback\n    runs:\n      - runbook: after-shop\n",
    )
    .unwrap();

    // The only migration in migrations/ is what `rehearse` runs by default.
    let first = sb.cutover(&["rehearse", "staging"]);
    let printed = text(&first);
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(first.status.code(), Some(1), "{printed}");
    let runs = sb.run_ids();
    assert_eq!(runs.len(), 2, "{printed}");
    let (shop, failed) = (&runs[0], &runs[1]);
    let shop_records = sb.records(shop);
    assert_eq!(shop_records[0]["data"]["migration"]["wave"], "core");
    assert_eq!(shop_records[0]["data"]["runbook"], "shop-cutover");
    assert_eq!(
        events(&shop_records, "run_finished")[0]["data"]["status"],
        "succeeded"
    );
    assert!(
        events(&shop_records, "rollback_started").is_empty(),
        "{printed}"
    );
    let failed_records = sb.records(failed);
    assert_eq!(failed_records[0]["data"]["migration"]["wave"], "rest");
    assert_eq!(
        events(&failed_records, "run_finished").last().unwrap()["data"]["status"],
        "rolled-back",
        "{printed}"
    );
    // Wave 1's service stays on AWS: its pooler sends it to the target, its heartbeat lost
    // nothing.
    assert_eq!(
        sb.shop_database("staging"),
        ("target".to_string(), false),
        "the pooler went back"
    );
    common::heartbeat_without_loss(&shop_records);
    assert!(printed.contains("WAVE/RUNBOOK@DATABASE"), "{printed}");
    assert!(printed.contains("rest/after-shop@shop"), "{printed}");
    assert!(printed.contains("run the same command again"), "{printed}");

    // Fixed, the same command continues: wave 1 is not repeated, wave 2 runs again and passes.
    std::fs::write(
        project.join("runbooks/after-shop.yaml"),
        after_shop(&app_url, 200),
    )
    .unwrap();
    let second = sb.cutover(&["rehearse", "staging"]);
    let printed = text(&second);
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(second.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains(&format!("already succeeded in run {shop}: not repeated")),
        "{printed}"
    );
    let runs = sb.run_ids();
    assert_eq!(runs.len(), 3, "{printed}");
    let third = sb.records(&runs[2]);
    assert_eq!(third[0]["data"]["runbook"], "after-shop");
    assert_eq!(
        events(&third, "run_finished")[0]["data"]["status"],
        "succeeded"
    );

    // The migration's summary from the runs on record, beside each run's own audit.
    let summary = sb.cutover(&["audit", "migration", "move-shop", "--env", "staging"]);
    let md = text(&summary);
    assert_eq!(summary.status.code(), Some(0), "{md}");
    assert!(md.contains("## Wave 1 of 2: core"), "{md}");
    assert!(
        md.contains(&format!("| shop-cutover | shop | succeeded | {shop} |")),
        "{md}"
    );
    assert!(
        md.contains(&format!("| after-shop | shop | succeeded | {} |", runs[2])),
        "{md}"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &sb.cutover(&[
            "audit",
            "migration",
            "move-shop",
            "--env",
            "staging",
            "--format",
            "json",
        ])
        .stdout,
    )
    .unwrap();
    assert_eq!(json["waves"][0]["runs"][0]["writes_missing"], 0, "{json}");

    // A third time, everything is done and nothing runs.
    let again = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(sb.run_ids().len(), 3, "{}", text(&again));
    sb.assert_no_secrets(&[]);
}

/// Waits for `child` (at most `secs`) and returns its exit code with what it printed.
fn finish_logged(
    sb: &Sandbox,
    (mut child, out, err): (std::process::Child, std::path::PathBuf, std::path::PathBuf),
    secs: u64,
) -> (Option<i32>, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("cutover did not finish within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let printed = std::fs::read_to_string(out).unwrap() + &std::fs::read_to_string(err).unwrap();
    sb.outputs.lock().unwrap().push(printed.clone());
    (status.code(), printed)
}

#[test]
fn two_services_of_one_environment_move_at_once_and_a_third_run_on_one_of_them_is_refused() {
    let sb = Sandbox::start_long();
    let shop = sb.spawn_logged(&["rehearse", "staging", "--runbook", "shop-cutover"]);
    let letters = sb.spawn_logged(&["rehearse", "staging", "--runbook", "letters-cutover"]);
    common::wait_until(120, "both runs started", || {
        let ids = sb.run_ids();
        ids.len() == 2 && ids.iter().all(|r| !sb.records(r).is_empty())
    });
    let holders = sb.run_ids();
    // A third run on shop's database while shop's run holds it: refused, naming the holder.
    let third = sb.extra_runbook(
        "shop-check",
        "name: shop-check\ndatabase: shop\nphases:\n  - name: check\n    steps:\n      - { id: identity, kind: aws.assert_account }\n",
    );
    let refused = sb.cutover(&["rehearse", "staging", "--runbook", &third]);
    let printed = text(&refused);
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(refused.status.code(), Some(3), "{printed}");
    assert!(printed.contains("database shop"), "{printed}");
    assert!(
        holders.iter().any(|h| printed.contains(h.as_str())),
        "the refusal names no holder of {holders:?}: {printed}"
    );
    // `infra apply` needs the whole environment: refused while the runs hold their services.
    let apply = sb.cutover(&["infra", "apply", "staging"]);
    assert_ne!(apply.status.code(), Some(0), "{}", text(&apply));

    let (shop_code, shop_out) = finish_logged(&sb, shop, 600);
    let (letters_code, letters_out) = finish_logged(&sb, letters, 600);
    assert_eq!(shop_code, Some(0), "{shop_out}");
    assert_eq!(letters_code, Some(0), "{letters_out}");

    // Their steps interleaved in time: each started a step before the other finished.
    let span = |run: &str| {
        let r = sb.records(run);
        let ts: Vec<String> = events(&r, "step_started")
            .iter()
            .map(|e| e["ts"].as_str().unwrap().to_string())
            .collect();
        let fin = events(&r, "run_finished")[0]["ts"]
            .as_str()
            .unwrap()
            .to_string();
        (ts[0].clone(), ts.last().unwrap().clone(), fin)
    };
    let runs: Vec<String> = sb
        .run_ids()
        .into_iter()
        .filter(|r| holders.contains(r))
        .collect();
    let (a, b) = (span(&runs[0]), span(&runs[1]));
    assert!(
        a.0 < b.2 && b.0 < a.2,
        "the runs did not overlap: {a:?} {b:?}"
    );
    assert!(
        a.1 > b.0 && b.1 > a.0,
        "no step of one started while the other ran: {a:?} {b:?}"
    );
    for r in &runs {
        common::heartbeat_without_loss(&sb.records(r));
        let v = sb.cutover(&["audit", "verify", r]);
        assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    }
    // Both services' records in the one hosted zone survived each other's stages: each ends on
    // the AWS side, and neither run's weighted sets removed the other's.
    let records = sb.dns_records("staging");
    for name in [
        "shop.staging.example-shop.com.",
        "letters.staging.example-shop.com.",
    ] {
        let of: Vec<&String> = records.iter().filter(|r| r.contains(name)).collect();
        assert!(!of.is_empty(), "{name} is gone: {records:?}");
        // All of its weight on the AWS side: a simple record naming it, or the weighted member
        // naming it at 100.
        assert!(
            of.iter().any(|r| r.contains("elb.amazonaws.com")
                && (r.contains("Some(100)") || r.contains(" None None "))),
            "{name} does not send its traffic to the AWS side: {records:?}"
        );
    }
    // A rollback of one service's run leaves the other's records where they are.
    let letters_run = runs
        .iter()
        .find(|r| sb.records(r)[0]["data"]["runbook"] == "letters-cutover")
        .unwrap()
        .clone();
    let back = sb.cutover(&["rollback", &letters_run]);
    assert_eq!(back.status.code(), Some(1), "{}", text(&back));
    let records = sb.dns_records("staging");
    let shop_sets: Vec<&String> = records
        .iter()
        .filter(|r| r.contains("shop.staging.example-shop.com."))
        .collect();
    assert!(
        shop_sets.iter().any(|r| r.contains("elb.amazonaws.com")
            && (r.contains("Some(100)") || r.contains(" None None "))),
        "letters' rollback moved shop's record: {records:?}"
    );
    let letters_sets: Vec<&String> = records
        .iter()
        .filter(|r| r.contains("letters.staging.example-shop.com."))
        .collect();
    assert!(
        !letters_sets.is_empty()
            && letters_sets
                .iter()
                .all(|r| r.contains("letters-legacy-staging")),
        "letters' record is not back on the legacy host: {records:?}"
    );
    sb.assert_no_secrets(&[]);
}

#[test]
fn production_refuses_a_migration_with_an_unrehearsed_runbook_naming_it_and_may_move_the_waves_before(
) {
    let sb = Sandbox::start();
    let project = sb.project.path();
    let tiny = |name: &str, db: &str, note: &str| {
        std::fs::write(
            project.join(format!("runbooks/{name}.yaml")),
            format!("# {note}\nname: {name}\ndatabase: {db}\nfollows: shop-cutover\nphases:\n  - name: check\n    steps:\n      - {{ id: identity, kind: aws.assert_account }}\n"),
        )
        .unwrap();
    };
    tiny("wave-one", "shop", "first");
    tiny("wave-two", "letters", "first");
    std::fs::create_dir_all(project.join("migrations")).unwrap();
    let migration = |policy: &str| {
        std::fs::write(
            project.join("migrations/tiny.yaml"),
            format!("name: tiny\n{policy}waves:\n  - name: one\n    runs:\n      - runbook: wave-one\n  - name: two\n    runs:\n      - runbook: wave-two\n"),
        )
        .unwrap();
    };
    migration("");
    for env in ["staging", "dev"] {
        let o = sb.cutover(&["rehearse", env, "--migration", "tiny"]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    // One runbook changes after its rehearsals: production refuses the migration, naming it.
    tiny("wave-two", "letters", "changed after its rehearsals");
    let before = sb.run_ids().len();
    let refused = sb.cutover(&["execute", "production", "--migration", "tiny"]);
    let printed = text(&refused);
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(refused.status.code(), Some(3), "{printed}");
    assert!(printed.contains("runbook wave-two (wave two)"), "{printed}");
    assert!(!printed.contains("runbook wave-one"), "{printed}");
    assert_eq!(sb.run_ids().len(), before, "a run started: {printed}");

    // With the policy, the unchanged earlier wave proceeds; the changed one and later wait.
    migration("promotion: { on_unrehearsed: run-earlier-waves }\n");
    let partial = sb.cutover(&["execute", "production", "--migration", "tiny"]);
    let printed = text(&partial);
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(partial.status.code(), Some(3), "{printed}");
    let ids = sb.run_ids();
    assert_eq!(ids.len(), before + 1, "{printed}");
    // Run ids sort by second, then at random: find the production run by its record.
    let production: Vec<Vec<serde_json::Value>> = ids
        .iter()
        .map(|i| sb.records(i))
        .filter(|r| r[0]["data"]["environment"] == "production")
        .collect();
    assert_eq!(production.len(), 1, "{printed}");
    let run = &production[0];
    assert_eq!(run[0]["data"]["runbook"], "wave-one");
    assert_eq!(
        events(&run, "run_finished")[0]["data"]["status"],
        "succeeded"
    );
    assert!(printed.contains("waves before `two` proceed"), "{printed}");
}

#[test]
fn files_with_one_database_and_no_database_field_validate_and_rehearse_as_before() {
    // The environment and runbook files as they were before `databases:` existed.
    let sb = Sandbox::start();
    let project = sb.project.path();
    let fixtures = common::repo().join("tests/fixtures/single-database");
    for sub in ["environments", "runbooks"] {
        std::fs::remove_dir_all(project.join(sub)).unwrap();
        std::fs::create_dir_all(project.join(sub)).unwrap();
        for e in std::fs::read_dir(fixtures.join(sub)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), project.join(sub).join(e.file_name())).unwrap();
        }
    }
    let v = sb.cutover(&["validate"]);
    assert_eq!(v.status.code(), Some(0), "{}", text(&v));
    let o = sb.cutover(&["rehearse", "staging"]);
    let printed = text(&o);
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(o.status.code(), Some(0), "{printed}");
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    assert_eq!(records[0]["data"]["database"], "shop_staging");
    assert!(records[0]["data"].get("migration").is_none());
    common::heartbeat_without_loss(&records);
}
