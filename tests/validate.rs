//! `cutover validate` on bad input: every problem at once, with file and line, exit 2. No network.

mod common;

use common::{cutover_bin, run_with_timeout, text};
use std::process::Command;

fn project_with_runbook(runbook: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let envs = dir.path().join("environments");
    std::fs::create_dir_all(&envs).unwrap();
    for e in ["staging", "dev", "production"] {
        std::fs::copy(
            common::repo().join(format!("environments/{e}.yaml")),
            envs.join(format!("{e}.yaml")),
        )
        .unwrap();
    }
    std::fs::create_dir_all(dir.path().join("runbooks")).unwrap();
    std::fs::write(dir.path().join("runbooks/bad.yaml"), runbook).unwrap();
    dir
}

#[test]
fn unknown_kind_unknown_field_undefined_variable_and_duplicate_id_are_all_reported() {
    let dir = project_with_runbook(
        "name: bad\nphases:\n  - name: p\n    steps:\n      - { id: a, kind: postgres.teleport }\n      - id: b\n        kind: http.check\n        colour: blue\n        with: { url: x }\n      - { id: c, kind: http.check, with: { url: \"{{ env.nope.here }}\" } }\n      - { id: a, kind: http.check, with: { url: \"http://y\" } }\n",
    );
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C").arg(dir.path()).arg("validate");
    let out = run_with_timeout(cmd, 60);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runbooks/bad.yaml:5: step `a`: unknown kind `postgres.teleport`"),
        "{err}"
    );
    assert!(err.contains("known kinds: "), "{err}");
    assert!(
        err.contains("runbooks/bad.yaml:8: step `b`: unknown field `colour`"),
        "{err}"
    );
    assert!(err.contains("runbooks/bad.yaml:10: step `c`: template `{{ env.nope.here }}`: undefined variable `env.nope.here`"), "{err}");
    assert!(
        err.contains("runbooks/bad.yaml:11: duplicate step id `a` (first defined on line 5)"),
        "{err}"
    );
    assert!(err.contains("4 problems found"), "{err}");
}

#[test]
fn the_repository_runbook_validates_against_every_environment() {
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C").arg(common::repo()).arg("validate");
    let out = run_with_timeout(cmd, 60);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("ok: shop-cutover"))
            .count(),
        3
    );
}

fn project_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_project(dir.path());
    dir
}

fn validate(dir: &std::path::Path) -> std::process::Output {
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C").arg(dir).arg("validate");
    // Environment files expand with their defaults, as on a machine without the sandbox.
    for (k, _) in std::env::vars() {
        if k.starts_with("CUTOVER_") {
            cmd.env_remove(k);
        }
    }
    run_with_timeout(cmd, 60)
}

#[test]
fn the_terraform_tree_agrees_with_the_environments_and_the_runbook() {
    let dir = project_copy();
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("terraform/: modules, live roots and terraform/sandbox agree"),
        "{}",
        text(&out)
    );
}

#[test]
fn removing_one_output_the_runbook_reads_fails_the_check_naming_root_and_step() {
    let dir = project_copy();
    let outputs = dir.path().join("terraform/live/production/outputs.tf");
    let text_before = std::fs::read_to_string(&outputs).unwrap();
    let start = text_before.find("output \"alb_dns_name\"").unwrap();
    let end = start + text_before[start..].find("}\n").unwrap() + 2;
    std::fs::write(
        &outputs,
        format!("{}{}", &text_before[..start], &text_before[end..]),
    )
    .unwrap();
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let runbook = std::fs::read_to_string(dir.path().join("runbooks/shop-cutover.yaml")).unwrap();
    let dns_line = runbook
        .lines()
        .position(|l| l.contains("{ id: dns,") || l.trim_start() == "- id: dns")
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("runbooks/shop-cutover.yaml:{dns_line}: step `dns` reads tf.alb_dns_name, but terraform/live/production defines no output `alb_dns_name`")),
        "{err}"
    );
    // letters-cutover reads it too: both are named.
    assert!(
        err.contains("runbooks/letters-cutover.yaml:")
            && err.contains("step `dns` reads tf.alb_dns_name, but terraform/live/production"),
        "{err}"
    );
    assert!(err.contains("error: 2 problems found"), "{err}");

    // The sandbox stack is held to the same outputs.
    let sandbox = dir.path().join("terraform/sandbox/main.tf");
    let s = std::fs::read_to_string(&sandbox).unwrap();
    std::fs::write(
        &sandbox,
        s.replace("output \"app_url\"", "output \"service_url\""),
    )
    .unwrap();
    let err = String::from_utf8_lossy(&validate(dir.path()).stderr).into_owned();
    assert!(
        err.contains(
            "step `health` reads tf.app_url, but terraform/sandbox defines no output `app_url`"
        ),
        "{err}"
    );
}

#[test]
fn a_module_call_missing_a_required_variable_is_reported_with_its_line() {
    let dir = project_copy();
    let main = dir.path().join("terraform/live/staging/main.tf");
    let s = std::fs::read_to_string(&main).unwrap();
    std::fs::write(&main, s.replace("  deletion_protection = false\n", "")).unwrap();
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "terraform/live/staging/main.tf:3: module `shop` does not set `deletion_protection`"
        ),
        "{err}"
    );
}

#[test]
fn terraform_files_are_formatted() {
    let mut cmd = Command::new(std::env::var("TERRAFORM").unwrap_or_else(|_| "terraform".into()));
    cmd.args(["fmt", "-check", "-recursive", "terraform"])
        .current_dir(common::repo());
    let out = run_with_timeout(cmd, 60);
    assert!(out.status.success(), "terraform fmt -check: {}", text(&out));
}

/// Regression (issue 14): a password holding `%` then a one-byte and a multi-byte character
/// panicked in `secret.rs` and printed the password. It is bad input: exit 2, no value shown.
#[test]
fn a_percent_then_multibyte_password_in_a_database_url_exits_2_without_the_value() {
    let dir = project_with_runbook("name: ok\nphases: []\n");
    std::fs::copy(
        common::repo().join("runbooks/shop-cutover.yaml"),
        dir.path().join("runbooks/shop-cutover.yaml"),
    )
    .unwrap();
    std::fs::remove_file(dir.path().join("runbooks/bad.yaml")).unwrap();
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C")
        .arg(dir.path())
        .args(["execute", "staging", "--dry-run"])
        .env(
            "CUTOVER_STAGING_SOURCE_DATABASE_URL",
            "postgres://u:%a\u{e9}secretpw@127.0.0.1:1/db",
        );
    let out = run_with_timeout(cmd, 60);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(all.contains("CUTOVER_STAGING_SOURCE_DATABASE_URL"), "{all}");
    assert!(all.contains("%25"), "{all}");
    for form in ["secretpw", "%a\u{e9}", "c2VjcmV0cHc"] {
        assert!(!all.contains(form), "`{form}` in: {all}");
    }
    assert!(
        !dir.path().join(".cutover/runs").exists()
            || std::fs::read_dir(dir.path().join(".cutover/runs"))
                .unwrap()
                .next()
                .is_none(),
        "a run directory was left"
    );
}

/// Regression (issue 14): `${VAR}` was replaced in the raw text before YAML parsing, so a value
/// holding a quote and a newline rewrote the file ("missing field role_arn"). Expansion now
/// happens inside parsed values: the value is one (bad) account id, and the file keeps its shape.
#[test]
fn a_variable_holding_a_quote_and_a_newline_cannot_change_an_environment_files_structure() {
    let dir = project_with_runbook("name: ok\nphases: []\n");
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C")
        .arg(dir.path())
        .arg("validate")
        .env("CUTOVER_STAGING_ACCOUNT_ID", "123\"\nevil: 1");
    let out = run_with_timeout(cmd, 60);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        err.contains(r#"environments/staging.yaml:7: aws.account_id `123\"\nevil: 1` is not a 12-digit AWS account id"#),
        "{err}"
    );
    assert!(!err.contains("missing field"), "{err}");
    assert!(!err.contains("evil: 1\n"), "{err}");
    // An unquoted reference is typed after expansion: a TTL from the environment is a number.
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C")
        .arg(dir.path())
        .arg("validate")
        .env("CUTOVER_DEV_DNS_CUTOVER_TTL", "45");
    let out = run_with_timeout(cmd, 60);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Regression (issue 14): `validate` accepted wrong types, a negative count, an unreadable
/// duration, a misspelt nested key and an A record holding a host name; they failed only when
/// the step ran. An unknown kind's outputs were checked against the first registered kind.
#[test]
fn param_types_ranges_nested_keys_a_record_values_and_unknown_kinds_fail_in_validate() {
    let dir = project_with_runbook(concat!(
        "name: bad\nphases:\n  - name: p\n    steps:\n",
        "      - id: copy\n        kind: postgres.replicate\n        with:\n          jobs: \"four\"\n",
        "      - id: lag\n        kind: postgres.wait_lag\n        with:\n          max_lag_bytes: -5\n",
        "      - id: health\n        kind: http.check\n        with:\n          url: \"http://x\"\n          interval: 500 millis\n",
        "      - id: dns\n        kind: route53.cutover\n        with:\n          record: shop\n          to: my-alb-123.us-east-1.elb.amazonaws.com\n          type: A\n          stages: [10, 100]\n          analysis:\n            url: \"http://x\"\n            sampels: 6\n",
        "      - { id: ghost, kind: postgres.teleport }\n",
        "      - id: uses\n        kind: http.check\n        with: { url: \"{{ steps.ghost.outputs.anything }}\", interval: \"{{ steps.ghost.outputs.interval }}\" }\n",
    ));
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C")
        .arg(dir.path())
        .args(["validate", "--runbook", "bad"]);
    let out = run_with_timeout(cmd, 60);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    for (line, want) in [
        (8, "step `copy` (postgres.replicate): with.jobs: invalid type: string \"four\""),
        (12, "step `lag` (postgres.wait_lag): with.max_lag_bytes: invalid value: integer `-5`"),
        (17, "step `health` (http.check): with.interval: `500 millis` is not a duration"),
        (20, "step `dns` (route53.cutover): type A needs an IPv4 address, not `my-alb-123.us-east-1.elb.amazonaws.com`"),
        (27, "step `dns` (route53.cutover): with.analysis.sampels: unknown field `sampels`"),
        (28, "step `ghost`: unknown kind `postgres.teleport`"),
    ] {
        assert!(
            err.contains(&format!("runbooks/bad.yaml:{line}: {want}")),
            "no `{line}: {want}` in:\n{err}"
        );
    }
    // The reference to the unknown kind's outputs is not judged against some other kind.
    assert!(!err.contains("has outputs"), "{err}");
    assert!(!err.contains("step `uses`"), "{err}");
}
