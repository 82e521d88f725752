//! `cutover validate` on bad input: every problem at once, with file and line, exit 2. No network.

use crate::common;

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
    cmd.arg("-C")
        .arg(common::repo())
        .args(["validate", "--deny-warnings"]);
    let out = run_with_timeout(cmd, 60);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // No ordering that costs users: not one warning.
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        text(&out)
    );
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
    validate_with(dir, &[])
}

fn validate_with(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C").arg(dir).arg("validate").args(args);
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
        text(&out).contains("terraform/: modules and roots agree"),
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
        err.contains(r#"environments/staging.yaml:8: aws.account_id `123\"\nevil: 1` is not a 12-digit AWS account id"#),
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

/// check-jsonschema (not ours) on `files` against `schema`: success and its output.
fn json_schema_check(schema: &std::path::Path, files: &[std::path::PathBuf]) -> (bool, String) {
    let out = Command::new(common::check_jsonschema())
        .arg("--schemafile")
        .arg(schema)
        .args(files)
        .output()
        .unwrap();
    (out.status.success(), text(&out))
}

fn yaml_files(dir: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(common::repo().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[test]
fn committed_schemas_are_current_and_every_committed_file_validates_against_them() {
    let dir = tempfile::tempdir().unwrap();
    for (file, yaml_dir) in [
        ("environment", "environments"),
        ("runbook", "runbooks"),
        ("migration", "migrations"),
    ] {
        let out = Command::new(cutover_bin())
            .args(["schema", file])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let printed = String::from_utf8(out.stdout).unwrap();
        let committed = common::repo().join(format!("schema/{file}.json"));
        assert_eq!(
            std::fs::read_to_string(&committed).unwrap_or_default(),
            printed,
            "schema/{file}.json is stale: run `cutover schema --write schema`"
        );
        let files = yaml_files(yaml_dir);
        assert!(!files.is_empty());
        for f in &files {
            let head = std::fs::read_to_string(f).unwrap();
            assert!(
                head.starts_with(&format!(
                    "# yaml-language-server: $schema=../schema/{file}.json\n"
                )),
                "{} lacks the schema comment",
                f.display()
            );
        }
        let (ok, msg) = json_schema_check(&committed, &files);
        assert!(
            ok,
            "committed {yaml_dir}/ do not validate against schema/{file}.json: {msg}"
        );
    }

    // A wrong type and a misspelt nested key are rejected by the same validator.
    let shop = std::fs::read_to_string(common::repo().join("runbooks/shop-cutover.yaml")).unwrap();
    let schema = common::repo().join("schema/runbook.json");
    let cases = [
        ("wrong-type", "samples: 6", "samples: six"),
        (
            "misspelt-nested",
            "min_success_rate: 100",
            "min_sucess_rate: 100",
        ),
        (
            "unknown-kind",
            "kind: route53.set_ttl",
            "kind: route53.set_ttll",
        ),
    ];
    for (name, from, to) in cases {
        assert!(shop.contains(from), "{from}");
        let bad = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&bad, shop.replacen(from, to, 1)).unwrap();
        let (ok, msg) = json_schema_check(&schema, &[bad]);
        assert!(!ok, "check-jsonschema accepted {name}: {msg}");
    }
    // A template stands where a number is expected.
    let templated = dir.path().join("templated.yaml");
    std::fs::write(
        &templated,
        shop.replacen("samples: 6", "samples: \"{{ vars.samples }}\"", 1),
    )
    .unwrap();
    let (ok, msg) = json_schema_check(&schema, &[templated]);
    assert!(ok, "a template in place of a number was refused: {msg}");
}

#[test]
fn completions_and_the_man_page_are_generated_and_the_bash_script_loads() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(cutover_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("rehearse") && script.contains("rollback"),
            "{shell}: {script}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(cutover_bin())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let file = dir.path().join("cutover.bash");
    std::fs::write(&file, &out.stdout).unwrap();
    // Loaded into bash, the script registers a completion for `cutover` that offers subcommands.
    let probe = format!(
        "source {}\ncomplete -p cutover\nCOMP_WORDS=(cutover reh)\nCOMP_CWORD=1\nCOMP_LINE='cutover reh'\nCOMP_POINT=${{#COMP_LINE}}\n_cutover cutover reh cutover\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        file.display()
    );
    let out = Command::new("bash")
        .args(["--norc", "-c", &probe])
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("-F _cutover cutover"), "{said}");
    assert!(said.lines().any(|l| l == "rehearse"), "{said}");

    let out = Command::new(cutover_bin()).arg("man").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let man = String::from_utf8(out.stdout).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH cutover"),
        "{man}"
    );
    assert!(man.contains("rehearse"), "{man}");
    let version = Command::new(cutover_bin())
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&version.stdout).contains("(commit "),
        "{}",
        text(&version)
    );
}

#[test]
fn the_project_is_found_upward_and_json_errors_name_file_line_and_field() {
    let dir = project_with_runbook(
        "name: bad\nphases:\n  - name: p\n    steps:\n      - { id: a, kind: rds.snapshto }\n",
    );
    // From runbooks/, with no -C: the project above is found.
    let mut cmd = Command::new(cutover_bin());
    cmd.current_dir(dir.path().join("runbooks"))
        .env_remove("CUTOVER_PROJECT_DIR")
        .arg("validate");
    let out = run_with_timeout(cmd, 60);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("runbooks/bad.yaml:5: step `a`: unknown kind `rds.snapshto`"),
        "{err}"
    );
    assert!(err.contains("did you mean `rds.snapshot`?"), "{err}");
    // CUTOVER_PROJECT_DIR names it from anywhere.
    let mut cmd = Command::new(cutover_bin());
    cmd.current_dir(std::env::temp_dir())
        .env("CUTOVER_PROJECT_DIR", dir.path())
        .args(["validate", "-o", "json"]);
    let out = run_with_timeout(cmd, 60);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let errors: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let e = errors
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("rds.snapshto"))
        })
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert_eq!(e["type"], "error");
    assert_eq!(e["file"], "runbooks/bad.yaml");
    assert_eq!(e["line"], 5);
    assert_eq!(e["field"], "kind");
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .starts_with("did you mean `rds.snapshot`?"),
        "{e}"
    );
    // A misspelt environment name is suggested too.
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C")
        .arg(common::repo())
        .args(["execute", "stagign", "--dry-run"]);
    let out = run_with_timeout(cmd, 60);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("did you mean `staging`?"),
        "{}",
        text(&out)
    );
}

/// runbooks/shop-cutover.yaml with `edit` applied, in a copy of the project; the runbook's lines
/// as written.
fn shop_runbook_variant(edit: impl Fn(String) -> String) -> (tempfile::TempDir, Vec<String>) {
    let dir = project_copy();
    let path = dir.path().join("runbooks/shop-cutover.yaml");
    let text = edit(std::fs::read_to_string(&path).unwrap());
    std::fs::write(&path, &text).unwrap();
    (dir, text.lines().map(str::to_string).collect())
}

/// The 1-based line of the first line of `lines` containing `needle`.
fn line_of(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle}"))
        + 1
}

#[test]
fn a_flip_with_no_fallback_after_replicate_is_refused_before_anything_runs() {
    let (dir, lines) = shop_runbook_variant(|t| {
        t.replace("      - { id: fallback, kind: postgres.fallback }\n", "")
    });
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let flip = line_of(&lines, "- id: flip");
    assert!(
        err.contains(&format!(
            "runbooks/shop-cutover.yaml:{flip}: step `flip`: the application would be unable to write after this flip"
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: add `- { id: fallback, kind: postgres.fallback }` before `flip`"),
        "{err}"
    );
    // A run is refused the same way, before it touches anything (no sandbox here).
    let mut cmd = Command::new(cutover_bin());
    cmd.arg("-C")
        .arg(dir.path())
        .args(["rehearse", "staging", "--runbook", "shop-cutover"]);
    let out = run_with_timeout(cmd, 60);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!dir.path().join(".cutover/runs").exists());
}

#[test]
fn each_ordering_that_costs_users_is_warned_about_with_its_line_and_fix_and_deny_warnings_exits_2()
{
    // The runbook a team wrote: data window first, then DNS; a full-table verify inside the
    // window; a fallback without replication; a heartbeat without the legacy path.
    let (dir, lines) = shop_runbook_variant(|t| {
        common::flip_first(&t)
            .replace("method: changed-since-prepass", "method: checksum")
            .replace(
                "{ id: fallback, kind: postgres.fallback }",
                "{ id: fallback, kind: postgres.fallback, with: { replication: false } }",
            )
            .replace(
                "  legacy: { url: \"{{ secrets.legacy_app_database_url }}\", record: \"shop.{{ env.dns.domain }}\" }\n",
                "",
            )
    });
    let out = validate(dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "warnings alone pass: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let at = |needle: &str| format!("runbooks/shop-cutover.yaml:{}:", line_of(&lines, needle));
    let expect = [
        (
            at("id: freeze"),
            "the database is frozen before traffic moves (`dns`",
            "move `dns` before `freeze`",
        ),
        (
            at("id: verify, kind: postgres.verify"),
            "a full-table verify inside the window",
            "`method: changed-since-prepass` here",
        ),
        (
            at("- id: flip"),
            "no fallback replication comes before this flip",
            "(replication on, the default) before `flip`",
        ),
        (
            at("heartbeat:"),
            "the heartbeat has no `legacy` path",
            "under `heartbeat:`",
        ),
    ];
    for (located, what, fix) in expect {
        let line = err
            .lines()
            .position(|l| l.starts_with(&format!("warning: {located}")) && l.contains(what))
            .unwrap_or_else(|| panic!("no warning `{located} ... {what}`:\n{err}"));
        let hint = err.lines().nth(line + 1).unwrap_or_default();
        assert!(
            hint.contains("hint:") && hint.contains(fix),
            "{hint}\n{err}"
        );
    }
    assert_eq!(err.matches("warning: ").count(), 4, "{err}");
    let out = validate_with(dir.path(), &["--deny-warnings"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("4 problems found"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_volume_reload_slower_than_the_write_budget_is_warned_about() {
    // The letters runbook flips its Secret (shop's application is behind its pooler).
    let dir = project_copy();
    let path = dir.path().join("runbooks/letters-cutover.yaml");
    let text0 = std::fs::read_to_string(&path).unwrap().replace(
        "  reload: restart\n",
        "  reload: volume\n  max_write_outage: 30s\n",
    );
    std::fs::write(&path, &text0).unwrap();
    let lines: Vec<String> = text0.lines().map(str::to_string).collect();
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let heartbeat = line_of(&lines, "heartbeat:");
    assert!(
        err.contains(&format!(
            "warning: runbooks/letters-cutover.yaml:{heartbeat}: heartbeat: with `reload: volume` the application uses the flipped Secret 60 s after the flip, but `max_write_outage` is 30 s"
        )),
        "{err}"
    );
    assert_eq!(err.matches("warning: ").count(), 1, "{err}");
}

#[test]
fn a_pooler_flip_without_a_pause_is_refused_and_a_pause_after_the_freeze_is_warned_about() {
    let (dir, lines) = shop_runbook_variant(|t| {
        let pause = t.find("      - { id: pause,").expect("pause step");
        let end = pause + t[pause..].find('\n').unwrap() + 1;
        let mut t = t.clone();
        t.replace_range(pause..end, "");
        t
    });
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let flip = line_of(&lines, "- id: flip");
    assert!(
        err.contains(&format!(
            "runbooks/shop-cutover.yaml:{flip}: step `flip`: a pooler flip with no pgbouncer.pause before it"
        )),
        "{err}"
    );
    let (dir, lines) = shop_runbook_variant(|t| {
        let pause = t.find("      - { id: pause,").expect("pause step");
        let end = pause + t[pause..].find('\n').unwrap() + 1;
        let line = t[pause..end].to_string();
        let mut t = t.clone();
        t.replace_range(pause..end, "");
        let freeze = t.find("      - { id: freeze,").expect("freeze step");
        let after = freeze + t[freeze..].find('\n').unwrap() + 1;
        t.insert_str(after, &line);
        t
    });
    let out = validate(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    let pause = line_of(&lines, "- { id: pause,");
    assert!(
        err.contains(&format!(
            "warning: runbooks/shop-cutover.yaml:{pause}: step `pause`: the pooler pauses after the freeze (`freeze`)"
        )),
        "{err}"
    );
}
