//! Secrets where AWS teams keep them and Secrets that operators own, against the sandbox's real
//! stand-ins: moto's Secrets Manager and SSM, and the emulator's External Secrets Operator,
//! which copies an upstream into Secret letters/letters-db every 3 s and on `force-sync`.

use crate::common;

use base64::Engine as _;
use common::{block_on, text, Sandbox};
use serde_json::{json, Value};
use std::time::Duration;

/// The `DATABASE_URL` of Secret letters/letters-db in staging.
fn letters_secret(sb: &Sandbox) -> String {
    let s = sb.kube_get("staging", "/api/v1/namespaces/letters/secrets/letters-db");
    let b = s["data"]["DATABASE_URL"].as_str().unwrap();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
}

/// The `DATABASE_URL` property of the ExternalSecret's upstream in moto's Secrets Manager.
fn upstream(sb: &Sandbox) -> String {
    let cfg = sb.aws("staging");
    let raw = block_on(async {
        aws_sdk_secretsmanager::Client::new(&cfg)
            .get_secret_value()
            .secret_id("letters-staging/db")
            .send()
            .await
            .unwrap()
            .secret_string()
            .unwrap()
            .to_string()
    });
    let v: Value = serde_json::from_str(&raw).unwrap();
    v["DATABASE_URL"].as_str().unwrap().to_string()
}

/// The ExternalSecret's `status.refreshTime`.
fn refreshed_at(sb: &Sandbox) -> String {
    sb.kube_get(
        "staging",
        "/apis/external-secrets.io/v1/namespaces/letters/externalsecrets/letters-db",
    )["status"]["refreshTime"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Sends a JSON merge patch to the emulator of staging.
fn merge_patch(sb: &Sandbox, path: &str, patch: Value) {
    let port = sb.port("/kube_ports/staging");
    block_on(async {
        let r = reqwest::Client::new()
            .patch(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
    });
}

#[test]
fn an_externalsecret_owned_secret_is_flipped_through_its_upstream_and_rollback_restores_both() {
    let sb = Sandbox::start_long();
    let legacy = sb.var("CUTOVER_STAGING_LETTERS_LEGACY_APP_DATABASE_URL");
    let target = sb.var("CUTOVER_STAGING_LETTERS_TARGET_APP_DATABASE_URL");
    common::wait_until(20, "the operator's first sync", || {
        !refreshed_at(&sb).is_empty()
    });
    assert_eq!(letters_secret(&sb), legacy);

    // The operator is real enough to defeat a direct edit: a patched Secret gets the upstream
    // value back at the next refresh (what a flip that ignores the owner would suffer).
    let direct = base64::engine::general_purpose::STANDARD.encode(&target);
    merge_patch(
        &sb,
        "/api/v1/namespaces/letters/secrets/letters-db",
        json!({"data": {"DATABASE_URL": direct}}),
    );
    assert_eq!(letters_secret(&sb), target);
    common::wait_until(10, "the operator to put the upstream value back", || {
        letters_secret(&sb) == legacy
    });

    let out = sb.cutover(&["rehearse", "staging", "--runbook", "letters-cutover"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run = sb.run_ids().pop().unwrap();
    assert_eq!(upstream(&sb), target, "the upstream holds the new URL");
    assert_eq!(letters_secret(&sb), target);
    // Several refresh intervals (3 s each) later the Secret still holds the new value.
    let before = refreshed_at(&sb);
    std::thread::sleep(Duration::from_secs(10));
    assert_ne!(refreshed_at(&sb), before, "the operator kept refreshing");
    assert_eq!(letters_secret(&sb), target);
    let audit = text(&sb.cutover(&["audit", "show", &run]));
    assert!(
        audit.contains("update Secrets Manager secret letters-staging/db: property DATABASE_URL")
            && audit.contains("annotate externalsecret letters/letters-db: force-sync"),
        "{audit}"
    );
    let backup = sb.kube_get(
        "staging",
        &format!("/api/v1/namespaces/letters/secrets/letters-db-backup-{run}"),
    );
    assert_eq!(
        backup["metadata"]["annotations"]["cutover.dev/external-secret"],
        "letters-db"
    );
    assert!(backup["data"]["cutover.upstream.DATABASE_URL"].is_string());

    // Rollback puts the upstream back and waits for the operator to copy it.
    let back = sb.cutover(&["rollback", &run]);
    assert_eq!(back.status.code(), Some(1), "{}", text(&back));
    assert!(
        text(&back).contains("upstream of ExternalSecret letters-db restored"),
        "{}",
        text(&back)
    );
    assert_eq!(upstream(&sb), legacy);
    assert_eq!(letters_secret(&sb), legacy);
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(letters_secret(&sb), legacy);
    let hb = common::heartbeat_without_loss(&sb.records(&run));
    assert_eq!(hb["missing"], 0, "{hb}");
    sb.assert_no_secrets(&[text(&out), text(&back), audit]);
}

#[test]
fn a_secret_tracked_by_argo_cd_is_refused_in_the_dry_run_naming_the_owner() {
    let sb = Sandbox::start();
    // The Secret the shop runbook's flip changes: its pooler's [databases] file.
    merge_patch(
        &sb,
        "/api/v1/namespaces/shop/secrets/pgbouncer-databases",
        json!({"metadata": {"labels": {"app.kubernetes.io/instance": "shop-staging"}}}),
    );
    let before = sb.secret_value("staging", "pgbouncer-databases", "databases.ini");
    let out = sb.cutover(&[
        "execute",
        "staging",
        "--dry-run",
        "--runbook",
        "shop-cutover",
    ]);
    let t = text(&out);
    assert_ne!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("secret shop/pgbouncer-databases is managed by Argo CD (label app.kubernetes.io/instance=shop-staging)"),
        "{t}"
    );
    assert!(
        t.contains("take the Secret out of Argo CD's management"),
        "{t}"
    );
    assert_eq!(
        sb.secret_value("staging", "pgbouncer-databases", "databases.ini"),
        before
    );
}
