//! Rights and routes (issues 26 and 30): the sandbox's admins are not superusers; the dry-run
//! prints, for both servers, what the tool's role may do there and whether each server reaches
//! the other, found by trying (rolled back); a legacy admin that may not subscribe, as
//! DigitalOcean's `doadmin` on PostgreSQL 15, makes the fallback run through `cutover relay`,
//! said in the table and the fallback's plan, and a runbook that requires the native fallback
//! is refused by the dry-run; a server the tool cannot reach is named with where the tool must
//! run.

use crate::common::{text, Sandbox};

/// The dry-run of the shop runbook on staging.
const DRY_RUN: [&str; 5] = [
    "execute",
    "staging",
    "--dry-run",
    "--runbook",
    "shop-cutover",
];

/// The rows of the rights-and-routes table in a dry-run's output.
fn table(printed: &str) -> Vec<&str> {
    printed
        .lines()
        .filter(|l| l.contains("right: ") || l.contains("route: this machine"))
        .collect()
}

/// Replication objects and role settings on both servers: what a trial must not leave behind.
fn replication_objects(sb: &Sandbox) -> Vec<Vec<Option<String>>> {
    let mut all = Vec::new();
    for side in ["SOURCE", "TARGET"] {
        let url = sb.var(&format!("CUTOVER_STAGING_{side}_DATABASE_URL"));
        for q in [
            "SELECT 'publication ' || pubname FROM pg_publication",
            "SELECT 'subscription ' || subname FROM pg_subscription",
            "SELECT 'slot ' || slot_name FROM pg_replication_slots",
            "SELECT 'setting ' || array_to_string(setconfig, ',') FROM pg_db_role_setting",
        ] {
            all.extend(sb.sql(&url, q));
        }
    }
    all.sort();
    all
}

#[test]
fn the_dry_run_tries_each_right_and_route_and_a_legacy_admin_that_cannot_subscribe_makes_the_fallback_relay(
) {
    // A legacy server that lets its admin subscribe and reaches the target (up --native).
    let mut sb = Sandbox::start_native();
    let before = replication_objects(&sb);

    // Superuser admins: every right granted, both routes tried, nothing left behind.
    let out = sb.cutover(&DRY_RUN);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    let rows = table(&t);
    for (side, right) in [
        ("source", "read every table"),
        ("source", "replication slots"),
        ("source", "publish the tables"),
        ("source", "freeze the application's roles"),
        ("source", "end the application's sessions"),
        ("target", "give the copied objects their owners"),
        ("target", "freeze the application's roles"),
        ("target", "subscribe, and reach the publisher"),
        ("source", "subscribe, and reach the publisher"),
    ] {
        let row = rows
            .iter()
            .find(|r| r.contains(&format!("right: {side} role ")) && r.contains(right))
            .unwrap_or_else(|| panic!("no row for {side} {right}:\n{}", rows.join("\n")));
        assert!(row.contains("granted ("), "{row}");
    }
    assert_eq!(
        rows.iter()
            .filter(|r| r.contains("route: this machine"))
            .count(),
        2,
        "{}",
        rows.join("\n")
    );
    assert_eq!(before, replication_objects(&sb), "a trial left something");

    // The sandbox's admins are not superusers: the legacy one as DigitalOcean makes `doadmin`,
    // the target's as RDS makes its master user.
    let admin = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    for (url, role) in [
        (admin.clone(), "doadmin"),
        (
            sb.var("CUTOVER_STAGING_LETTERS_TARGET_DATABASE_URL"),
            "shop_admin",
        ),
    ] {
        assert_eq!(
            sb.sql(
                &url,
                "SELECT current_user::text, rolsuper::text FROM pg_roles WHERE rolname = current_user"
            ),
            vec![vec![Some(role.to_string()), Some("false".to_string())]]
        );
    }
    // Without the right to subscribe (PostgreSQL 16's pg_create_subscription, which the
    // sandbox's legacy admin holds through a stand-in role), the legacy admin is what
    // DigitalOcean's doadmin is on PostgreSQL 15.
    sb.sql(
        &sb.var("CUTOVER_SANDBOX_SOURCE_SUPERUSER_URL"),
        "REVOKE sandbox_create_subscription FROM doadmin",
    );
    let out = sb.cutover(&DRY_RUN);
    let t = text(&out);
    let rows = table(&t);
    let sub = rows
        .iter()
        .find(|r| r.contains("right: source role doadmin: subscribe, and reach the publisher"))
        .unwrap_or_else(|| panic!("no source subscribe row:\n{t}"));
    assert!(
        sub.contains("REFUSED: must be superuser to create subscriptions"),
        "{sub}"
    );
    for right in [
        "publish the tables",
        "read every table",
        "freeze the application's roles",
    ] {
        let row = rows
            .iter()
            .find(|r| r.contains("right: source role doadmin") && r.contains(right))
            .unwrap_or_else(|| panic!("no row for {right}:\n{t}"));
        assert!(row.contains("granted ("), "{row}");
    }
    // Not a problem: postgres.fallback relays, and its plan says so and why.
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        sub.contains("→ the fallback runs through cutover relay"),
        "{sub}"
    );
    assert!(!t.contains("WOULD FAIL"), "{t}");
    assert!(
        t.contains("relay (auto: the legacy admin may not create a subscription to the target (must be superuser to create subscriptions))"),
        "{t}"
    );
    let deployment = t
        .lines()
        .find(|l| l.contains("Deployment cutover/relay-cutover-shop-staging-"))
        .unwrap_or_else(|| panic!("no relay Deployment in the plan:\n{t}"));
    assert!(
        deployment.contains("args: relay --slot cutover_shop_staging_")
            && deployment.contains("--publisher target"),
        "{deployment}"
    );
    assert!(
        t.lines()
            .any(|l| l.contains("Secret cutover/relay-cutover-shop-staging-")
                && l.contains("sha256:")),
        "{t}"
    );

    // A runbook that requires the native fallback: the dry-run refuses, saying what would work.
    let runbook = std::fs::read_to_string(sb.project.path().join("runbooks/shop-cutover.yaml"))
        .unwrap()
        .replace(
            "- { id: fallback, kind: postgres.fallback }",
            "- { id: fallback, kind: postgres.fallback, with: { replication: native } }",
        );
    assert!(runbook.contains("replication: native"));
    std::fs::write(sb.project.path().join("runbooks/shop-native.yaml"), runbook).unwrap();
    let out = sb.cutover(&[
        "execute",
        "staging",
        "--dry-run",
        "--runbook",
        "shop-native",
    ]);
    let t = text(&out);
    assert_ne!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("replication: native, but the legacy admin cannot subscribe to the target (must be superuser to create subscriptions)"),
        "{t}"
    );
    assert_eq!(
        before,
        replication_objects(&sb),
        "the dry-runs left something"
    );

    // A server the tool cannot reach: the error says where cutover must run.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let port = sb.port("/source_port");
    sb.set_var(
        "CUTOVER_STAGING_SOURCE_DATABASE_URL",
        &admin.replace(&format!(":{port}/"), &format!(":{closed}/")),
    );
    let out = sb.cutover(&DRY_RUN);
    let t = text(&out);
    assert_ne!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!(
            "127.0.0.1:{closed}: cannot reach the server from this machine"
        )),
        "{t}"
    );
    assert!(t.contains("a CI runner in the VPC"), "{t}");
    sb.assert_no_secrets(&[]);
}
