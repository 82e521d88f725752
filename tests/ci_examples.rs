//! The CI examples in examples/ci: valid against the GitHub Actions and GitLab CI schemas
//! (check-jsonschema's vendored schemas, installed by scripts/install-deps), and running exactly
//! the commands the README documents, each of which the real command line accepts.

mod common;

use clap::Parser;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn check_jsonschema() -> PathBuf {
    let venv = std::env::var("CUTOVER_SANDBOX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| common::repo().join(".sandbox/venv"));
    let bin = venv.join("bin/check-jsonschema");
    assert!(
        bin.exists(),
        "{} missing: run scripts/install-deps",
        bin.display()
    );
    bin
}

fn lint(schema: &str, file: &Path) -> (bool, String) {
    let out = Command::new(check_jsonschema())
        .args(["--builtin-schema", schema])
        .arg(file)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every shell line of the pipeline that runs `cutover`, cut before a pipe or redirection.
fn cutover_commands(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let doc: Value = serde_saphyr::from_str(&text).unwrap();
    let mut strings = Vec::new();
    collect(&doc, &mut strings);
    let mut out = Vec::new();
    for s in strings {
        for line in s.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("cutover ") {
                let cmd = rest.split(['|', '>']).next().unwrap().trim();
                out.push(format!("cutover {cmd}"));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn collect(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
        Value::Object(o) => o.values().for_each(|x| collect(x, out)),
        _ => {}
    }
}

const EXAMPLES: [(&str, &str); 2] = [
    ("examples/ci/github-actions.yml", "vendor.github-workflows"),
    ("examples/ci/gitlab-ci.yml", "vendor.gitlab-ci"),
];

#[test]
fn ci_examples_are_valid_pipelines_and_a_broken_one_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    for (file, schema) in EXAMPLES {
        let path = common::repo().join(file);
        let (ok, msg) = lint(schema, &path);
        assert!(ok, "{file} does not validate against {schema}: {msg}");
        // The linter can fail: the same file with a job's steps/script misspelt does not pass.
        let text = std::fs::read_to_string(&path).unwrap();
        let broken = text.replacen("    steps:\n", "    stepz:\n", 1).replacen(
            "  script:\n",
            "  scripts:\n",
            1,
        );
        assert_ne!(broken, text);
        let bad = dir.path().join(path.file_name().unwrap());
        std::fs::write(&bad, broken).unwrap();
        let (ok, _) = lint(schema, &bad);
        assert!(!ok, "{schema} accepted a broken {file}");
    }
}

#[test]
fn ci_examples_run_the_commands_the_readme_documents() {
    let readme = std::fs::read_to_string(common::repo().join("README.md")).unwrap();
    for (file, _) in EXAMPLES {
        let commands = cutover_commands(&common::repo().join(file));
        for needed in [
            "cutover validate",
            "cutover rehearse staging --output json",
            "cutover rehearse dev --output json",
            "cutover execute production --dry-run",
            "cutover execute production --approve approve --output json",
            "cutover audit show \"$RUN_ID\" --format html",
            "cutover audit show \"$RUN_ID\" --format junit",
        ] {
            assert!(
                commands.iter().any(|c| c == needed),
                "{file} lacks `{needed}`: {commands:?}"
            );
        }
        for cmd in &commands {
            assert!(
                readme.lines().any(|l| l.trim() == cmd),
                "{file} runs `{cmd}`, which the README's CI section does not document"
            );
            let words: Vec<String> = cmd
                .split_whitespace()
                .map(|w| w.replace("\"$RUN_ID\"", "20261121-000000-abcdef"))
                .collect();
            if let Err(e) = cutover::cli::Cli::try_parse_from(&words) {
                panic!("{file}: `{cmd}` is not a valid cutover command line: {e}");
            }
        }
    }
}
