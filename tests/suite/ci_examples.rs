//! The CI examples in examples/ci: valid against the GitHub Actions and GitLab CI schemas
//! (check-jsonschema's vendored schemas, installed by scripts/install-deps), and running exactly
//! the commands the README documents, each of which the real command line accepts.

use crate::common;

use clap::Parser;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn lint(schema: &str, file: &Path) -> (bool, String) {
    let out = Command::new(common::check_jsonschema())
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
            "cutover validate --deny-warnings",
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

/// A directory of stand-ins for PATH: `cutover` that prints a `run_started` event and exits with
/// `code`, `jq` that prints that run's id, and `apt-get` / `cargo` that do nothing (the
/// pipelines' set-up, not under test).
fn stand_ins(dir: &Path, code: i32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join(format!("bin-{code}"));
    std::fs::create_dir_all(&bin).unwrap();
    let scripts = [
        (
            "cutover",
            format!("#!/bin/sh\necho '{{\"type\":\"run_started\",\"data\":{{\"run_id\":\"{RUN}\"}}}}'\nexit {code}\n"),
        ),
        ("jq", format!("#!/bin/sh\necho {RUN}\n")),
        ("apt-get", "#!/bin/sh\nexit 0\n".to_string()),
        ("cargo", "#!/bin/sh\nexit 0\n".to_string()),
    ];
    for (name, text) in scripts {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

const RUN: &str = "20261121-000000-abcdef";

/// Runs `script` as `shell` (words, `{0}` for the script's path, as GitHub writes a step's
/// shell) in `cwd` with `bin` first on PATH; whether it succeeded.
fn runs_ok(shell: &[&str], script: &str, cwd: &Path, bin: &Path) -> bool {
    let file = cwd.join("step.sh");
    std::fs::write(&file, script).unwrap();
    let words: Vec<String> = shell
        .iter()
        .map(|w| w.replace("{0}", file.to_str().unwrap()))
        .collect();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(&words[0])
        .args(&words[1..])
        .current_dir(cwd)
        .env("PATH", path)
        .output()
        .unwrap()
        .status
        .success()
}

/// The command GitHub Actions runs a `run:` step with, from its `shell:` (or the job's or the
/// workflow's `defaults.run.shell`), as GitHub documents them: none is `bash -e {0}`, `bash` is
/// `bash --noprofile --norc -eo pipefail {0}`, `sh` is `sh -e {0}`.
fn github_shell(name: Option<&str>) -> Vec<&'static str> {
    match name {
        None => vec!["bash", "-e", "{0}"],
        Some("bash") => vec!["bash", "--noprofile", "--norc", "-eo", "pipefail", "{0}"],
        Some("sh") => vec!["sh", "-e", "{0}"],
        Some(other) => panic!("shell `{other}` is not modelled by this test"),
    }
}

fn runs_cutover(script: &str) -> bool {
    script.lines().any(|l| l.trim().starts_with("cutover "))
}

/// A place a step runs in: a checkout where the run's directory exists (so a step's `cp` of it
/// succeeds when cutover did).
fn workdir(dir: &Path, name: &str) -> PathBuf {
    let cwd = dir.join(name);
    std::fs::create_dir_all(cwd.join(".cutover/runs").join(RUN)).unwrap();
    cwd
}

#[test]
fn every_ci_step_that_runs_cutover_fails_when_cutover_fails() {
    let dir = tempfile::tempdir().unwrap();
    let (ok_bin, failing_bin) = (stand_ins(dir.path(), 0), stand_ins(dir.path(), 1));
    let mut checked = Vec::new();

    // GitHub Actions: every `run:` step that calls cutover, with the shell GitHub would use.
    let text =
        std::fs::read_to_string(common::repo().join("examples/ci/github-actions.yml")).unwrap();
    let wf: Value = serde_saphyr::from_str(&text).unwrap();
    let wf_shell = wf["defaults"]["run"]["shell"].as_str();
    for (job_name, job) in wf["jobs"].as_object().unwrap() {
        let job_shell = job["defaults"]["run"]["shell"].as_str().or(wf_shell);
        for (i, step) in job["steps"].as_array().unwrap().iter().enumerate() {
            let Some(script) = step["run"].as_str().filter(|s| runs_cutover(s)) else {
                continue;
            };
            let shell = github_shell(step["shell"].as_str().or(job_shell));
            let name = format!("github {job_name} step {i}");
            let cwd = workdir(dir.path(), &name.replace(' ', "-"));
            assert!(
                runs_ok(&shell, script, &cwd, &ok_bin),
                "{name} fails with a cutover that succeeds:\n{script}"
            );
            assert!(
                !runs_ok(&shell, script, &cwd, &failing_bin),
                "{name} passes although cutover exited 1:\n{script}"
            );
            // The check can fail: GitHub's default shell (no pipefail) lets a piped failure pass.
            if script.contains("| tee") {
                assert!(
                    runs_ok(&github_shell(None), script, &cwd, &failing_bin),
                    "{name}: bash -e should hide the failure of a pipe"
                );
            }
            checked.push(name);
        }
    }

    // GitLab CI: a job's before_script (its own, else the default's) and script run in one shell
    // that stops at the first failing command; after_script runs apart and never fails a job.
    let text = std::fs::read_to_string(common::repo().join("examples/ci/gitlab-ci.yml")).unwrap();
    let ci: Value = serde_saphyr::from_str(&text).unwrap();
    let lines = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l.as_str().map(str::to_string))
            .collect()
    };
    for (job_name, job) in ci.as_object().unwrap() {
        let Some(script) = job.get("script") else {
            continue;
        };
        let script = lines(script).join("\n");
        if !runs_cutover(&script) {
            continue;
        }
        let before = match job.get("before_script") {
            Some(b) => lines(b),
            None => lines(&ci["default"]["before_script"]),
        };
        let whole = format!("{}\n{script}\n", before.join("\n"));
        let name = format!("gitlab {job_name}");
        let cwd = workdir(dir.path(), &name.replace(' ', "-"));
        let shell = ["bash", "-e", "{0}"];
        assert!(
            runs_ok(&shell, &whole, &cwd, &ok_bin),
            "{name} fails with a cutover that succeeds:\n{whole}"
        );
        assert!(
            !runs_ok(&shell, &whole, &cwd, &failing_bin),
            "{name} passes although cutover exited 1:\n{whole}"
        );
        checked.push(name);
    }
    for needed in [
        "github rehearse-staging",
        "github execute-production",
        "gitlab rehearse-staging",
        "gitlab execute-production",
    ] {
        assert!(
            checked.iter().any(|c| c.starts_with(needed)),
            "{needed} not checked: {checked:?}"
        );
    }
}

/// `cargo install --locked --path .` from a clean clone (only what is committed) installs a
/// `cutover` that runs: what the README's installation section and the CI examples do. Built
/// with the dev profile into this build's target directory: `cargo install` resolves `cutover`
/// alone, and Cargo.toml turns on the features the sandbox adds to shared crates, so every
/// dependency is reused and only cutover itself compiles again. It replaces
/// `target/debug/cutover`; the other tests run a private copy (`common::cutover_bin`).
/// Removes the variables cargo sets for a test process (`CARGO_MANIFEST_*`, `CARGO_PKG_*`,
/// `CARGO_CRATE_*`, `CARGO_BIN_*`, `CARGO_PRIMARY_PACKAGE`, `CARGO_TARGET_TMPDIR`), which a
/// shell that runs `cargo install` does not have.
trait RemoveCargoTestVars {
    fn envs_remove_cargo_test_vars(&mut self) -> &mut Self;
}

impl RemoveCargoTestVars for Command {
    fn envs_remove_cargo_test_vars(&mut self) -> &mut Self {
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy().into_owned();
            if [
                "CARGO_MANIFEST_",
                "CARGO_PKG_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
            ]
            .iter()
            .any(|p| k.starts_with(p))
                || k == "CARGO_PRIMARY_PACKAGE"
                || k == "CARGO_TARGET_TMPDIR"
            {
                self.env_remove(&k);
            }
        }
        self
    }
}

#[test]
fn cargo_install_from_a_clean_clone_gives_a_working_binary() {
    let dir = tempfile::tempdir().unwrap();
    let clone = dir.path().join("clone");
    let out = Command::new("git")
        .args(["clone", "--quiet", "--no-hardlinks"])
        .arg(common::repo())
        .arg(&clone)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git clone: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = dir.path().join("root");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This test binary is <target>/debug/deps/suite-<hash>.
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap().to_path_buf();
    let out = Command::new(cargo)
        .args(["install", "--locked", "--offline", "--debug", "--path"])
        .arg(&clone)
        .arg("--root")
        .arg(&root)
        .env("CARGO_TARGET_DIR", &target)
        // What cargo set for this test process: build scripts that watch these (ring watches
        // CARGO_MANIFEST_DIR and CARGO_PKG_*) would run again, and everything above them compile.
        .env_remove("OUT_DIR")
        .envs_remove_cargo_test_vars()
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "cargo install: {log}");
    // Nothing but the clone's own crate compiled: a dependency compiled again would mean the
    // features cutover resolves alone differ from the workspace's (see Cargo.toml).
    let compiled: Vec<&str> = log
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Compiling "))
        .collect();
    assert!(
        compiled.iter().all(|c| c.starts_with("cutover v")),
        "cargo install compiled dependencies again: {compiled:?}"
    );
    let bin = root.join("bin/cutover");
    // The product ships the product: no test hook, no benchmark.
    let bytes = std::fs::read(&bin).unwrap();
    assert!(
        !bytes.windows(16).any(|w| w == b"CUTOVER_CRASH_AT"),
        "the installed binary carries the crash test's hook"
    );
    let bench = Command::new(&bin).arg("bench").output().unwrap();
    assert_eq!(
        bench.status.code(),
        Some(2),
        "`cutover bench` is not a command of the product"
    );
    let version = Command::new(&bin).arg("--version").output().unwrap();
    let said = String::from_utf8_lossy(&version.stdout).to_string();
    assert!(
        said.starts_with("cutover ") && said.contains("(commit "),
        "{said}"
    );
    let validate = Command::new(&bin)
        .arg("validate")
        .current_dir(clone.join("runbooks"))
        .output()
        .unwrap();
    assert_eq!(
        validate.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&validate.stderr)
    );
}
