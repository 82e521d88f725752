//! A migration in waves against the sandbox: a failure in wave 2 rolls back only its own run and
//! leaves wave 1's service on AWS; running the command again continues with wave 2 and does not
//! repeat wave 1.

mod common;

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
    let sb = Sandbox::start();
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
    // Wave 1's service stays on AWS: its Secret names the target, its heartbeat lost nothing.
    let url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    let target_port = sb.state["target_port"].as_u64().unwrap().to_string();
    assert!(
        url.contains(&format!(":{target_port}/")),
        "the Secret went back: {url}"
    );
    common::heartbeat_without_loss(&shop_records);
    assert!(printed.contains("WAVE/RUNBOOK@DATABASE"), "{printed}");
    assert!(
        printed.contains("rest/after-shop@shop"),
        "{printed}"
    );
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

    // A third time, everything is done and nothing runs.
    let again = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert_eq!(sb.run_ids().len(), 3, "{}", text(&again));
    sb.assert_no_secrets(&[]);
}
