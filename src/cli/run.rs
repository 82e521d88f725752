//! `validate`, `rehearse`, `execute`, `resume`, `rollback`.

use super::{
    print_error, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_REFUSED,
    EXIT_ROLLBACK_INCOMPLETE,
};
use crate::config::{self, Problems, Tier};
use crate::engine::{self, runs, ui::OutputFormat, ui::Ui, EngineError, Outcome, ResumeError};
use crate::runbook;
use crate::steps::context::Mode;
use std::path::{Path, PathBuf};

/// Which run command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `rehearse ENV`.
    Rehearse,
    /// `execute ENV`.
    Execute,
    /// `execute ENV --dry-run`.
    DryRun,
}

/// Prints every problem to stderr with a count.
pub(crate) fn print_problems(p: &Problems) {
    let n = p.0.len();
    eprintln!("error: {n} problem{} found", if n == 1 { "" } else { "s" });
    for problem in &p.0 {
        eprintln!("  {}", problem.to_string().replace('\n', "\n  "));
    }
}

/// `cutover validate`: every runbook against every environment; all problems at once.
pub fn validate(root: &Path, only: Option<&str>) -> i32 {
    let envs = config::list_names(&root.join("environments"));
    let runbooks: Vec<String> = match only {
        Some(r) => vec![r.to_string()],
        None => config::list_names(&root.join("runbooks")),
    };
    if envs.is_empty() || runbooks.is_empty() {
        print_error("nothing to validate", Some("expected environments/*.yaml and runbooks/*.yaml under the project directory (-C DIR)"));
        return EXIT_INVALID;
    }
    let mut all = Problems::default();
    let mut ok = Vec::new();
    let mut plans = Vec::new();
    for rb in &runbooks {
        for env in &envs {
            match runbook::resolve(root, rb, env) {
                Ok(plan) => {
                    ok.push(format!(
                        "{} × {env}: {} steps, runbook digest {}",
                        plan.runbook_name,
                        plan.steps().count(),
                        &plan.runbook_digest[..12]
                    ));
                    plans.push(plan);
                }
                Err(p) => {
                    for problem in p.0 {
                        if !all.0.contains(&problem) {
                            all.push(problem);
                        }
                    }
                }
            }
        }
    }
    let has_terraform = root.join("terraform").is_dir();
    if has_terraform {
        let mut loaded = Vec::new();
        for env in &envs {
            if let Ok(e) = config::load_environment(root, env) {
                loaded.push((PathBuf::from("environments").join(format!("{env}.yaml")), e));
            }
        }
        let mut refs = Vec::new();
        for plan in &plans {
            let file = plan
                .runbook_path
                .strip_prefix(root)
                .unwrap_or(&plan.runbook_path)
                .to_path_buf();
            for (step, line, output) in plan.tf_references() {
                refs.push(crate::infra::check::OutputRef {
                    runbook: file.clone(),
                    step,
                    line,
                    output,
                });
            }
        }
        for problem in crate::infra::check::check(root, &loaded, &refs).0 {
            if !all.0.contains(&problem) {
                all.push(problem);
            }
        }
        ok.push(format!(
            "terraform/: modules, live roots and terraform/sandbox agree with {} environment(s) and the runbooks' tf.* outputs",
            loaded.len()
        ));
    }
    if !all.is_empty() {
        print_problems(&all);
        return EXIT_INVALID;
    }
    for line in ok {
        println!("ok: {line}");
    }
    EXIT_OK
}

fn default_runbook(root: &Path) -> Result<String, String> {
    let names = config::list_names(&root.join("runbooks"));
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("no runbook in runbooks/".into()),
        many => Err(format!(
            "several runbooks in runbooks/ ({}); choose one with --runbook",
            many.join(", ")
        )),
    }
}

/// Production requires a succeeded rehearsal of the same runbook digest in staging and dev.
fn rehearsal_gate(root: &Path, digest: &str) -> Result<(), String> {
    let state = engine::state_dir(root);
    let mut missing = Vec::new();
    for env in ["staging", "dev"] {
        let ok = runs::list(&state, Some(env))
            .iter()
            .any(|r| r.mode == "rehearse" && r.status == "succeeded" && r.runbook_digest == digest);
        if !ok {
            missing.push(env);
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no succeeded rehearsal of this runbook (digest {}) in: {}",
            &digest[..12],
            missing.join(", ")
        ))
    }
}

/// `rehearse ENV`, `execute ENV [--dry-run]`.
pub async fn start(
    root: &Path,
    env: &str,
    runbook: Option<&str>,
    kind: Kind,
    output: OutputFormat,
) -> i32 {
    let rb = match runbook
        .map(str::to_owned)
        .map(Ok)
        .unwrap_or_else(|| default_runbook(root))
    {
        Ok(r) => r,
        Err(e) => {
            print_error(&e, None);
            return EXIT_INVALID;
        }
    };
    let plan = match runbook::resolve(root, &rb, env) {
        Ok(p) => p,
        Err(p) => {
            print_problems(&p);
            return EXIT_INVALID;
        }
    };
    let mode = match kind {
        Kind::Rehearse => {
            if plan.env.tier == Tier::Production {
                print_error(
                    &format!("{env} is a production environment; rehearsals run on staging or dev"),
                    Some(&format!(
                        "cutover execute {env} --dry-run shows what a real run would change"
                    )),
                );
                return EXIT_REFUSED;
            }
            Mode::Rehearse
        }
        Kind::DryRun => Mode::DryRun,
        Kind::Execute => {
            if plan.env.tier == Tier::Production {
                for env in ["staging", "dev"] {
                    super::pull_runs(root, Some(env)).await;
                }
                if let Err(e) = rehearsal_gate(root, &plan.runbook_digest) {
                    print_error(&format!("refused: {e}"), Some("run `cutover rehearse staging` and `cutover rehearse dev` with this runbook first"));
                    return EXIT_REFUSED;
                }
            }
            Mode::Execute
        }
    };
    let ui = Ui { format: output };
    let result = engine::start(root, &plan, mode, &ui).await;
    exit_code(result)
}

fn exit_code(result: Result<Outcome, EngineError>) -> i32 {
    match result {
        Ok(Outcome::Succeeded) => EXIT_OK,
        Ok(Outcome::RolledBack) => EXIT_FAILED,
        Ok(Outcome::RollbackIncomplete) => {
            print_error("rollback incomplete: a person must finish it", Some("the audit (`cutover audit show RUN_ID`) lists each object whose rollback failed"));
            EXIT_ROLLBACK_INCOMPLETE
        }
        Ok(Outcome::Refused(reason)) => {
            print_error(&format!("refused: {reason}"), None);
            EXIT_REFUSED
        }
        Ok(Outcome::Interrupted) => EXIT_INTERRUPTED,
        Err(EngineError::Config(m)) => {
            print_error(&m, None);
            EXIT_INVALID
        }
        Err(e) => {
            print_error(&e.to_string(), None);
            EXIT_ROLLBACK_INCOMPLETE
        }
    }
}

/// `resume RUN_ID` and `rollback RUN_ID`.
pub async fn resume(root: &Path, run_id: &str, output: OutputFormat, rollback: bool) -> i32 {
    let ui = Ui { format: output };
    let r = if rollback {
        engine::rollback(root, run_id, &ui).await
    } else {
        engine::resume(root, run_id, &ui).await
    };
    match r {
        Ok(result) => exit_code(result),
        Err(ResumeError::Config(p)) => {
            print_problems(&p);
            EXIT_INVALID
        }
        Err(e) => {
            print_error(
                &e.to_string(),
                Some("`cutover runs` lists the runs on record"),
            );
            EXIT_INVALID
        }
    }
}
