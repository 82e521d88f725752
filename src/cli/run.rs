//! `validate`, `rehearse`, `execute`, `resume`, `rollback`.

use super::{print_error, print_problems};
use super::{
    EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK, EXIT_REFUSED, EXIT_ROLLBACK_INCOMPLETE,
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

/// `cutover validate`: every runbook against every environment; all problems at once, and the
/// orderings that cost users as warnings (errors, exit 2, with `deny_warnings`).
pub fn validate(root: &Path, only: Option<&str>, output: OutputFormat, deny_warnings: bool) -> i32 {
    let envs = config::list_names(&root.join("environments"));
    let runbooks: Vec<String> = match only {
        Some(r) => vec![r.to_string()],
        None => config::list_names(&root.join("runbooks")),
    };
    if envs.is_empty() || runbooks.is_empty() {
        print_error("nothing to validate", Some("expected environments/*.yaml and runbooks/*.yaml in the project directory (found upward from the current one, or -C DIR / CUTOVER_PROJECT_DIR)"));
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
                Err(p) => all.extend_new(p),
            }
        }
    }
    for name in config::list_names(&root.join("migrations")) {
        match config::load_migration(root, &name) {
            Err(p) => all.extend(p),
            Ok((m, _, _)) => {
                let mut runs = 0;
                for env in &envs {
                    for wave in &m.waves {
                        for (rb, db) in wave.entries() {
                            runs += 1;
                            if let Err(p) = runbook::resolve_for(root, &rb, env, db.as_deref()) {
                                all.extend_new(p);
                            }
                        }
                    }
                }
                ok.push(format!(
                    "migration {}: {} waves, {} runs over {} environments",
                    m.name,
                    m.waves.len(),
                    runs,
                    envs.len()
                ));
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
        all.extend_new(crate::infra::check::check(root, &loaded, &refs));
        ok.push(format!(
            "terraform/: modules and roots agree with {} environment(s) and the runbooks' tf.* outputs",
            loaded.len()
        ));
    }
    let mut warnings = Vec::new();
    for w in plans.iter().flat_map(|p| &p.warnings) {
        if !warnings.contains(w) {
            warnings.push(w.clone());
        }
    }
    if deny_warnings && !warnings.is_empty() {
        for w in &warnings {
            let mut p = w.clone();
            p.message = format!(
                "{} (a warning; --deny-warnings makes it an error)",
                p.message
            );
            all.extend_new(Problems::one(p));
        }
    } else {
        super::diag::print_warnings(&warnings);
    }
    if !all.is_empty() {
        print_problems(&all);
        return EXIT_INVALID;
    }
    for line in ok {
        match output {
            OutputFormat::Human => println!("ok: {line}"),
            OutputFormat::Json => {
                println!("{}", serde_json::json!({ "type": "ok", "message": line }))
            }
        }
    }
    EXIT_OK
}

fn default_runbook(root: &Path) -> Result<String, String> {
    let dir = root.join("runbooks");
    let names: Vec<String> = config::list_names(&dir)
        .into_iter()
        .filter(|n| !config::follows_another(&dir.join(format!("{n}.yaml"))))
        .collect();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err("no runbook in runbooks/".into()),
        many => Err(format!(
            "several runbooks in runbooks/ ({}); choose one with --runbook",
            many.join(", ")
        )),
    }
}

/// The command line of `rehearse` and `execute`.
#[derive(Debug, Default)]
pub struct StartArgs {
    /// `--runbook`.
    pub runbook: Option<String>,
    /// `--database`.
    pub database: Option<String>,
    /// `--migration`.
    pub migration: Option<String>,
    /// `--in-migration NAME/WAVE` (the migration runner's child runs).
    pub in_migration: Option<String>,
    /// `--approve STEP`, repeatable.
    pub approve: Vec<String>,
    /// `--break-glass REASON`.
    pub break_glass: Option<String>,
}

/// The policy `execute` applies to `env`: its own `promotion:` section, or for a production
/// environment without one, every staging and dev environment of the project within 7 days.
pub(super) fn policy_of(root: &Path, env: &config::Environment) -> Option<config::PromotionPolicy> {
    if let Some(p) = &env.promotion {
        return Some(p.clone());
    }
    (env.tier == Tier::Production).then(|| config::PromotionPolicy {
        requires: config::list_names(&root.join("environments"))
            .into_iter()
            .filter(|n| {
                config::load_environment(root, n)
                    .map(|e| e.tier != Tier::Production)
                    .unwrap_or(false)
            })
            .collect(),
        max_age: "7d".into(),
        approvers: Vec::new(),
    })
}

/// The promotion gate over this project's runs (see [`engine::promotion::missing`]).
pub(super) fn promotion_gate(
    root: &Path,
    policy: &config::PromotionPolicy,
    digest: &str,
) -> Vec<String> {
    let state = engine::state_dir(root);
    let runs = policy
        .requires
        .iter()
        .map(|env| (env.clone(), runs::list(&state, Some(env))))
        .collect();
    engine::promotion::missing(policy, digest, &runs, chrono::Utc::now())
}

/// Approval steps that will ask, and no terminal to ask on: refused before anything runs.
fn unapproved_steps(plan: &runbook::Plan, approved: &[String]) -> Vec<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return Vec::new();
    }
    let ctx = serde_json::json!({"env": runbook::env_context(&plan.env), "vars": plan.vars});
    plan.steps()
        .filter(|(_, s)| s.kind.asks_approval() && !approved.contains(&s.id))
        .filter(|(_, s)| match &s.when {
            None => true,
            // A condition that needs run-time values counts as true: refuse rather than stop later.
            Some(w) => runbook::template::render_str(w, &ctx)
                .map(|r| runbook::template::truthy(&r))
                .unwrap_or(true),
        })
        .map(|(_, s)| s.id.clone())
        .collect()
}

/// `rehearse ENV`, `execute ENV [--dry-run]`.
pub async fn start(
    root: &Path,
    env: &str,
    args: &StartArgs,
    kind: Kind,
    output: OutputFormat,
) -> i32 {
    let migration = args.migration.clone().or_else(|| {
        let names = config::list_names(&root.join("migrations"));
        match (&args.runbook, &args.in_migration, names.as_slice()) {
            (None, None, [one]) => Some(one.clone()),
            _ => None,
        }
    });
    if let Some(m) = migration {
        if args.database.is_some() {
            print_error(
                "--database names one run's database; a migration's waves name theirs",
                None,
            );
            return EXIT_INVALID;
        }
        let margs = super::migrate::MigrateArgs {
            approve: &args.approve,
            break_glass: args.break_glass.as_deref(),
        };
        return super::migrate::run(root, env, &m, kind, &margs).await;
    }
    let rb = match args
        .runbook
        .clone()
        .map(Ok)
        .unwrap_or_else(|| default_runbook(root))
    {
        Ok(r) => r,
        Err(e) => {
            print_error(&e, None);
            return EXIT_INVALID;
        }
    };
    let tag = match args.in_migration.as_deref().map(|t| t.split_once('/')) {
        None => None,
        Some(Some((name, wave))) if !name.is_empty() && !wave.is_empty() => {
            Some(engine::event::MigrationTag {
                name: name.into(),
                wave: wave.into(),
            })
        }
        Some(_) => {
            print_error("--in-migration takes NAME/WAVE", None);
            return EXIT_INVALID;
        }
    };
    let plan = match runbook::resolve_for(root, &rb, env, args.database.as_deref()) {
        Ok(p) => p,
        Err(p) => {
            print_problems(&p);
            return EXIT_INVALID;
        }
    };
    // The orderings that cost users, once before the run (a JSON consumer reads them from
    // `cutover validate -o json`).
    if output == OutputFormat::Human {
        super::diag::print_warnings(&plan.warnings);
    }
    let approval_steps: Vec<String> = plan
        .steps()
        .filter(|(_, s)| s.kind.asks_approval())
        .map(|(_, s)| s.id.clone())
        .collect();
    for a in &args.approve {
        if !approval_steps.contains(a) {
            print_error(
                &format!("--approve {a}: the runbook has no approval step `{a}`"),
                Some(&format!(
                    "approval steps: {}",
                    if approval_steps.is_empty() {
                        "(none)".into()
                    } else {
                        approval_steps.join(", ")
                    }
                )),
            );
            return EXIT_INVALID;
        }
    }
    let mut options = engine::RunOptions {
        approved: args.approve.clone(),
        break_glass: None,
        migration: tag,
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
            if let Some(policy) = policy_of(root, &plan.env) {
                for env in &policy.requires {
                    super::pull_runs(root, Some(env)).await;
                }
                let missing = promotion_gate(root, &policy, &plan.runbook_digest);
                if !missing.is_empty() {
                    match &args.break_glass {
                        Some(reason) if !reason.trim().is_empty() => {
                            eprintln!("warning: BREAK-GLASS: the promotion gate of {env} is bypassed ({reason}); it would have refused:");
                            for m in &missing {
                                eprintln!("  - {m}");
                            }
                            options.break_glass = Some((reason.clone(), missing));
                        }
                        _ => {
                            eprintln!("error: refused: the promotion policy of {env} requires a succeeded run of this runbook (digest {}) within {} in: {}", &plan.runbook_digest[..12], policy.max_age, policy.requires.join(", "));
                            for m in &missing {
                                eprintln!("  - {m}");
                            }
                            let envs: Vec<&str> =
                                missing.iter().filter_map(|m| m.split(':').next()).collect();
                            eprintln!("hint: {}; or, in an emergency, --break-glass \"REASON\" (recorded at the head of the audit)", envs.iter().map(|e| format!("cutover rehearse {e}")).collect::<Vec<_>>().join(" and "));
                            return EXIT_REFUSED;
                        }
                    }
                }
            }
            Mode::Execute
        }
    };
    if mode != Mode::DryRun {
        let waiting = unapproved_steps(&plan, &args.approve);
        if !waiting.is_empty() {
            print_error(
                &format!("refused: approval step{} {} would wait for an answer and there is no terminal to ask on", if waiting.len() == 1 { "" } else { "s" }, waiting.join(", ")),
                Some(&waiting.iter().map(|w| format!("--approve {w}")).collect::<Vec<_>>().join(" ")),
            );
            return EXIT_REFUSED;
        }
    }
    let ui = Ui::new(output);
    let result = engine::start(root, &plan, mode, &ui, &options).await;
    exit_code(result)
}

fn exit_code(result: Result<Outcome, EngineError>) -> i32 {
    match result {
        Ok(Outcome::Succeeded) => EXIT_OK,
        Ok(Outcome::RolledBack) => EXIT_FAILED,
        Ok(Outcome::DryRunFailed { step, error }) => {
            print_error(
                &format!("dry-run: step `{step}` could not be planned: {error}"),
                Some("nothing was changed and nothing was rolled back; fix the cause and run the dry-run again"),
            );
            EXIT_FAILED
        }
        Ok(Outcome::RollbackIncomplete(todo)) => {
            print_error("rollback incomplete: a person must finish it", None);
            eprintln!("what to do, object by object:");
            for (step, lines) in &todo {
                for l in lines {
                    eprintln!("  [{step}] {l}");
                }
            }
            eprintln!("hint: the audit (`cutover audit show RUN_ID`) keeps this list; `cutover rollback RUN_ID` retries the steps not yet undone");
            EXIT_ROLLBACK_INCOMPLETE
        }
        Ok(Outcome::Refused(reason)) => {
            print_error(&format!("refused: {reason}"), None);
            EXIT_REFUSED
        }
        Ok(Outcome::Interrupted) => EXIT_INTERRUPTED,
        Ok(Outcome::WritesMissing {
            status,
            missing,
            database,
        }) => {
            print_error(
                &format!("{missing} acknowledged write(s) missing from {database} at the end of the run (the steps ended {status})"),
                Some("the audit's first page names them (`cutover audit show RUN_ID`); a person must find the rows before the application takes writes again"),
            );
            EXIT_ROLLBACK_INCOMPLETE
        }
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
pub async fn resume(
    root: &Path,
    run_id: &str,
    output: OutputFormat,
    rollback: bool,
    approve: Vec<String>,
) -> i32 {
    let ui = Ui::new(output);
    let options = engine::RunOptions {
        approved: approve,
        break_glass: None,
        migration: None,
    };
    let r = if rollback {
        engine::rollback(root, run_id, &ui).await
    } else {
        engine::resume(root, run_id, &ui, &options).await
    };
    match r {
        Ok(result) => exit_code(result),
        Err(ResumeError::Config(p)) => {
            print_problems(&p);
            EXIT_INVALID
        }
        // The log exists but cannot be trusted to say what happened: a person must look.
        Err(e @ (ResumeError::Corrupt(..) | ResumeError::Impossible(..))) => {
            print_error(
                &e.to_string(),
                Some("`cutover audit verify RUN_ID` and `cutover audit show RUN_ID` show the log; nothing was changed"),
            );
            EXIT_ROLLBACK_INCOMPLETE
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
