//! A run's outcome answers to what its users saw: a rehearsal whose application cannot write
//! after the flip fails and rolls back, and a panic flag raised during the last step's samples
//! stops it. Each test runs the shop runbook on its own sandbox.

use crate::common::{self, events, Sandbox};

/// runbooks/shop-cutover.yaml with `edit` applied, written outside runbooks/ as `name`.
fn shop_variant(sb: &Sandbox, name: &str, edit: impl Fn(String) -> String) -> String {
    let text =
        edit(common::shop_runbook().replace("name: shop-cutover\n", &format!("name: {name}\n")));
    sb.extra_runbook(name, &text)
}

#[test]
fn a_rehearsal_whose_application_cannot_write_after_the_flip_fails_and_rolls_back() {
    // The native fallback (a legacy server whose admin may subscribe and that reaches the
    // target: up --native): its rollback after the flip; the relay's are the other tests'.
    let sb = Sandbox::start_long_native();
    let legacy_url = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    // By hand, on the target: the application's role starts every session read-only, in every
    // database (what the fallback step opens is the per-database setting; this one stays).
    sb.sql(
        &sb.var("CUTOVER_SANDBOX_TARGET_SUPERUSER_URL"),
        "ALTER ROLE shop SET default_transaction_read_only = on",
    );
    let runbook = shop_variant(&sb, "shop-cutover-read-only", |t| {
        t.replace("  max_write_outage: 30s\n", "  max_write_outage: 10s\n")
    });
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &runbook]);
    let printed = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{printed}");
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    // The flip happened, the health check's `SELECT 1` passed or was under way, and the
    // application's writes, failing on the target, ended the run.
    assert!(
        records
            .iter()
            .any(|r| r["type"] == "step_completed" && r["step"] == "flip"),
        "{printed}"
    );
    // auto chose the subscription: the legacy admin may subscribe and reaches the target.
    assert!(
        printed.contains("the legacy database subscribes to the target through")
            && printed
                .contains("; auto: the legacy admin may subscribe to the target and reaches it"),
        "{printed}"
    );
    let rollback = events(&records, "rollback_started");
    assert_eq!(rollback.len(), 1, "{printed}");
    let reason = rollback[0]["data"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("heartbeat.max_write_outage (10 s)"),
        "{reason}"
    );
    assert!(
        reason.contains("cannot execute INSERT in a read-only transaction"),
        "{reason}"
    );
    assert_eq!(
        events(&records, "run_finished")[0]["data"]["status"],
        "rolled-back",
        "{printed}"
    );
    // Rolled back: the pooler sends the application to the legacy database again (its Secret,
    // naming the pooler, never changed), resumed, and nothing acknowledged is lost.
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .as_deref(),
        Some(legacy_url.as_str())
    );
    assert_eq!(sb.shop_database("staging"), ("source".to_string(), false));
    let hb = common::heartbeat_without_loss(&records);
    assert_eq!(hb["reload"], "pooler", "{hb}");
    sb.assert_no_secrets(&[]);
}

#[test]
fn a_panic_flag_raised_during_the_last_steps_samples_rolls_the_run_back() {
    let sb = Sandbox::start_long();
    // A last step whose samples would take 30 s.
    let runbook = shop_variant(&sb, "shop-cutover-long-health", |t| {
        t.replace(
            "consecutive: 3, interval: 1s }, timeout: 20s }",
            "consecutive: 30, interval: 1s }, timeout: 60s }",
        )
    });
    let (mut child, out, err) = sb.spawn_logged(&["rehearse", "staging", "--runbook", &runbook]);
    let run = sb.wait_for_step("health", "step_planned", 600);
    let flag = sb.project.path().join(".cutover/panic-staging");
    std::fs::write(&flag, "orders failing on the new side\n").unwrap();
    let (code, printed) = {
        let status = child.wait().unwrap();
        let printed =
            std::fs::read_to_string(out).unwrap() + &std::fs::read_to_string(err).unwrap();
        (status.code(), printed)
    };
    assert_eq!(code, Some(1), "{printed}");
    let records = sb.records(&run);
    let panic = events(&records, "panic");
    assert_eq!(panic.len(), 1, "{printed}");
    assert_eq!(panic[0]["step"], "health", "{printed}");
    assert_eq!(panic[0]["data"]["when"], "during the step", "{printed}");
    // Stopped inside its samples, not after them.
    assert!(
        !records
            .iter()
            .any(|r| r["type"] == "step_completed" && r["step"] == "health"),
        "{printed}"
    );
    assert_eq!(
        events(&records, "run_finished")[0]["data"]["status"],
        "rolled-back",
        "{printed}"
    );
    std::fs::remove_file(&flag).unwrap();
    common::heartbeat_without_loss(&records);
}
