//! The pooler path (runbooks/shop-cutover.yaml's window): PgBouncer pauses the application's
//! database, the window runs, the pooler's upstream moves and it resumes. Its failure modes on
//! one sandbox, one after another: a transaction that keeps PAUSE past its budget (the window is
//! abandoned before anything is frozen), then a run killed while the pooler is paused (`cutover
//! status` says so; `cutover rollback` resumes it on the legacy database). The rehearsal and the
//! rollback after the flip through the pooler are checked where the shop runbook is rehearsed
//! (acceptance.rs, fallback.rs).

use crate::common;

use common::{block_on, events, text, Sandbox};
use cutover::providers::pgbouncer::Console;
use std::os::unix::process::ExitStatusExt;

/// The shop runbook without its DNS stages (and so without the legacy path, whose users DNS
/// never moves here), with a 2 s pause budget: the window as the shop runbook has it, reached in
/// seconds.
fn window_runbook() -> String {
    let shop = common::shop_runbook();
    let a = shop.find("      - id: dns\n").expect("dns step");
    let b = shop
        .find("      # Every row compared")
        .expect("prepass comment");
    let mut rb = format!("{}{}", &shop[..a], &shop[b..]);
    let legacy = rb.find("  legacy: {").expect("legacy path");
    let end = legacy + rb[legacy..].find('\n').unwrap() + 1;
    rb.replace_range(legacy..end, "");
    rb.replace("name: shop-cutover\n", "name: shop-pooler-window\n")
        .replace("budget: 5s", "budget: 2s")
}

/// Whether the shop database is paused in staging's pooler.
fn paused(sb: &Sandbox) -> bool {
    let url = sb.var("CUTOVER_STAGING_POOLER_ADMIN_URL");
    block_on(async {
        let c = Console::connect(&url).await.unwrap();
        c.database("shop_staging").await.unwrap().paused
    })
}

/// A write as the application makes it, through its pooler; `Err` with the server's message.
fn app_write(sb: &Sandbox, url: &str) -> Result<(), String> {
    sb.try_sql(
        url,
        "INSERT INTO orders (customer_id, status, total_cents, created_at) VALUES ((SELECT min(id) FROM customers), 'paid', 4343, now())",
    )
    .map(|_| ())
}

#[test]
fn a_pause_past_its_budget_abandons_the_window_and_a_run_killed_while_paused_is_resumed_by_rollback(
) {
    let sb = Sandbox::start();
    let rb = sb.extra_runbook("shop-pooler-window", &window_runbook());
    let app = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .expect("the application's URL");
    let superuser = sb.var("CUTOVER_SANDBOX_SOURCE_SUPERUSER_URL");

    // --- A long transaction holds a server connection: PAUSE cannot complete in 2 s. ---
    let holder = {
        let app = app.clone();
        std::thread::spawn(move || {
            block_on(async {
                let c = cutover::providers::postgres::connect(
                    &app,
                    cutover::providers::postgres::Server::Application,
                )
                .await
                .unwrap();
                // Ended by pg_terminate_backend below.
                let _ = c
                    .simple_query("SELECT pg_sleep(600) /* cutover pooler test */")
                    .await;
            })
        })
    };
    let mut pid = String::new();
    common::wait_until(30, "the long transaction on the legacy database", || {
        pid = sb
            .sql(
                &superuser,
                "SELECT coalesce(string_agg(pid::text, ','), '') FROM pg_stat_activity WHERE query LIKE '%cutover pooler test%' AND pid <> pg_backend_pid()",
            )
            .first()
            .and_then(|r| r[0].clone())
            .unwrap_or_default();
        !pid.is_empty()
    });
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    let failed = events(&records, "step_failed");
    assert!(
        failed.iter().any(|f| f["step"] == "pause"),
        "the pause did not fail: {failed:?}"
    );
    // Nothing in the window ran: nothing was frozen.
    assert!(
        !records
            .iter()
            .any(|r| r["step"] == "freeze" && r["type"] == "step_started"),
        "the freeze ran after an abandoned pause"
    );
    let audit = text(&sb.cutover(&["audit", "show", &run]));
    assert!(
        audit.contains(&format!("backend pid {pid} (role shop")),
        "the audit does not name the blocking session {pid}: {audit}"
    );
    assert!(
        !audit.contains("cutover pooler test"),
        "the audit shows the blocking query's text"
    );
    assert!(!paused(&sb), "the pooler was left paused");
    let hb = events(&records, "heartbeat")
        .last()
        .map(|r| r["data"].clone())
        .expect("a heartbeat record");
    assert_eq!(hb["missing"], 0, "{hb}");
    sb.sql(&superuser, &format!("SELECT pg_terminate_backend({pid})"));
    holder.join().unwrap();
    // The legacy database takes the application's writes as before, through its pooler.
    app_write(&sb, &app).expect("the application cannot write after the abandoned window");

    // --- Killed while paused: status says so; rollback resumes on the legacy database. ---
    let mut cmd = sb.command(&["rehearse", "staging", "--runbook", &rb]);
    cmd.env("CUTOVER_CRASH_AT", "after:step_completed:pause");
    let killed = sb.record(common::run_with_timeout(cmd, 300));
    assert_eq!(killed.status.signal(), Some(9), "{}", text(&killed));
    let run = sb.run_ids().pop().unwrap();
    assert!(paused(&sb), "the pooler is not paused after the kill");
    let status = text(&sb.cutover(&["status", &run]));
    assert!(status.contains("pooler paused since"), "{status}");
    let back = sb.cutover(&["rollback", &run]);
    assert_eq!(back.status.code(), Some(1), "{}", text(&back));
    assert!(!paused(&sb), "rollback left the pooler paused");
    let status = text(&sb.cutover(&["status", &run]));
    assert!(!status.contains("pooler paused since"), "{status}");
    app_write(&sb, &app).expect("the application cannot write after the rollback");
    let records = sb.records(&run);
    let hb = events(&records, "heartbeat")
        .last()
        .map(|r| r["data"].clone())
        .expect("the rollback's heartbeat record");
    assert_eq!(hb["missing"], 0, "{hb}");
    sb.assert_no_secrets(&[]);
}
