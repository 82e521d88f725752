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
        "name: bad\nphases:\n  - name: p\n    steps:\n      - { id: a, kind: postgres.teleport }\n      - id: b\n        kind: http.check\n        colour: blue\n        with: { url: x }\n      - { id: c, kind: http.check, with: { url: \"{{ env.nope.here }}\" } }\n      - { id: a, kind: http.check, with: { url: y } }\n",
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
