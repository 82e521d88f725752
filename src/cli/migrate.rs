//! `rehearse ENV --migration M` and `execute ENV --migration M [--dry-run]`: a migration wave
//! by wave. Each run is its own `cutover` process (`--in-migration M/WAVE`), so it has its own
//! event log, locks, heartbeat and audit exactly as if started alone; the runs of a wave run
//! concurrently up to the wave's `concurrency`; the next wave starts only when every run of this
//! one succeeded. Re-running the command continues where the migration stopped
//! ([`engine::migration::action`]).

use super::run::{policy_of, promotion_gate, Kind};
use super::{print_error, EXIT_INVALID, EXIT_REFUSED};
use crate::config::{self, OnFailure, OnUnrehearsed, Problems, Tier};
use crate::engine::event::Event;
use crate::engine::migration::{action, worst, Action, Ended};
use crate::engine::{self, runs};
use crate::runbook;
use std::path::Path;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// One `(runbook, database)` of a wave, resolved.
struct Entry {
    wave: usize,
    runbook: String,
    runbook_path: String,
    database: String,
    digest: String,
    label: String,
}

/// What the command line asked for beside the migration.
pub struct MigrateArgs<'a> {
    /// `--approve STEP`, passed to every run.
    pub approve: &'a [String],
    /// `--break-glass REASON`, passed to every run.
    pub break_glass: Option<&'a str>,
}

/// Runs migration `reference` in environment `env`; returns the exit code (the worst run's).
pub async fn run(
    root: &Path,
    env: &str,
    reference: &str,
    kind: Kind,
    args: &MigrateArgs<'_>,
) -> i32 {
    let (migration, _, _) = match config::load_migration(root, reference) {
        Ok(m) => m,
        Err(p) => {
            super::print_problems(&p);
            return EXIT_INVALID;
        }
    };
    let mut problems = Problems::default();
    let mut entries = Vec::new();
    let mut tier = None;
    for (w, wave) in migration.waves.iter().enumerate() {
        for (rb, db) in wave.entries() {
            match runbook::resolve_for(root, &rb, env, db.as_deref()) {
                Ok(plan) => {
                    tier = Some(plan.env.tier);
                    entries.push(Entry {
                        wave: w,
                        label: format!("{}/{}@{}", wave.name, plan.runbook_name, plan.database),
                        runbook: plan.runbook_name.clone(),
                        runbook_path: plan.runbook_path.display().to_string(),
                        database: plan.database.clone(),
                        digest: plan.runbook_digest.clone(),
                    });
                }
                Err(p) => problems.extend_new(p),
            }
        }
    }
    if !problems.is_empty() {
        super::print_problems(&problems);
        return EXIT_INVALID;
    }
    if kind == Kind::Rehearse && tier == Some(Tier::Production) {
        print_error(
            &format!("{env} is a production environment; rehearsals run on staging or dev"),
            Some(&format!(
                "cutover execute {env} --migration {} --dry-run shows what it would change",
                migration.name
            )),
        );
        return EXIT_REFUSED;
    }
    let mut last_wave = migration.waves.len();
    if kind == Kind::Execute {
        if let Ok(e) = config::load_environment(root, env) {
            if let Some(policy) = policy_of(root, &e) {
                for required in &policy.requires {
                    super::pull_runs(root, Some(required)).await;
                }
                let mut refused: Vec<(usize, String, Vec<String>)> = Vec::new();
                for e in &entries {
                    let missing = promotion_gate(root, &policy, &e.digest);
                    if !missing.is_empty() && !refused.iter().any(|r| r.1 == e.runbook) {
                        refused.push((e.wave, e.runbook.clone(), missing));
                    }
                }
                if let Some(first) = refused.iter().map(|r| r.0).min() {
                    let proceed = migration.promotion.on_unrehearsed
                        == OnUnrehearsed::RunEarlierWaves
                        && first > 0;
                    if args.break_glass.is_none() {
                        eprintln!(
                            "{}: the promotion policy of {env} requires a succeeded run of each runbook's digest within {} in: {}",
                            if proceed { "warning" } else { "error: refused" },
                            policy.max_age,
                            policy.requires.join(", ")
                        );
                        for (w, rb, missing) in &refused {
                            eprintln!("  - runbook {rb} (wave {}):", migration.waves[*w].name);
                            for m in missing {
                                eprintln!("      {m}");
                            }
                        }
                        if !proceed {
                            eprintln!("hint: rehearse the changed runbooks (cutover rehearse ENV --migration {}); or set promotion.on_unrehearsed: run-earlier-waves in the migration to move the waves before them", migration.name);
                            return EXIT_REFUSED;
                        }
                        eprintln!(
                            "waves before `{}` proceed (promotion.on_unrehearsed: run-earlier-waves); it and later waves wait",
                            migration.waves[first].name
                        );
                        last_wave = first;
                    }
                }
            }
        }
    }

    let state = engine::state_dir(root);
    super::pull_runs(root, Some(env)).await;
    let mut outcomes: Vec<(String, Ended, Option<String>)> = Vec::new();
    let mut stopped_at = None;
    for (w, wave) in migration.waves.iter().enumerate().take(last_wave) {
        let list = runs::list(&state, Some(env));
        let in_wave: Vec<&Entry> = entries.iter().filter(|e| e.wave == w).collect();
        println!(
            "migration {} · wave {} of {}: {} ({} run{}, concurrency {}, on failure: {})",
            migration.name,
            w + 1,
            migration.waves.len(),
            wave.name,
            in_wave.len(),
            if in_wave.len() == 1 { "" } else { "s" },
            wave.concurrency.unwrap_or(in_wave.len()),
            wave.on_failure.as_str()
        );
        let mut todo = Vec::new();
        for e in in_wave {
            let a = if kind == Kind::DryRun {
                match action(&list, &migration.name, &e.runbook, &e.database) {
                    done @ Action::Done { .. } => done,
                    _ => Action::Start,
                }
            } else {
                action(&list, &migration.name, &e.runbook, &e.database)
            };
            match a {
                Action::Done { run_id } => {
                    println!(
                        "  [{}] already succeeded in run {run_id}: not repeated",
                        e.label
                    );
                    outcomes.push((e.label.clone(), Ended::Succeeded, Some(run_id)));
                }
                Action::Blocked { run_id } => {
                    println!("  [{}] run {run_id} could not finish its rollback: a person must (cutover audit show {run_id}), then re-run the migration", e.label);
                    outcomes.push((e.label.clone(), Ended::RollbackIncomplete, Some(run_id)));
                }
                a => todo.push((e, a)),
            }
        }
        let ended = run_wave(root, env, &migration.name, wave, todo, kind, args).await;
        outcomes.extend(ended);
        let wave_ok = outcomes
            .iter()
            .filter(|(l, _, _)| l.starts_with(&format!("{}/", wave.name)))
            .all(|(_, e, _)| *e == Ended::Succeeded);
        if !wave_ok && kind != Kind::DryRun {
            stopped_at = Some(w);
            break;
        }
    }
    summary(&state, &migration.name, &outcomes);
    if let Some(w) = stopped_at {
        let after = if w + 1 < migration.waves.len() {
            format!(
                "; the waves after `{}` did not start",
                migration.waves[w].name
            )
        } else {
            String::new()
        };
        println!(
            "wave `{}` did not succeed{after}. Fix the cause and run the same command again: finished runs are not repeated",
            migration.waves[w].name
        );
    }
    let worst = worst(&outcomes.iter().map(|o| o.1).collect::<Vec<_>>());
    if last_wave < migration.waves.len() && worst == Ended::Succeeded {
        return EXIT_REFUSED;
    }
    worst.exit_code()
}

/// Prints each run's outcome with its write outage and missing writes (from its event log).
fn summary(state: &Path, name: &str, outcomes: &[(String, Ended, Option<String>)]) {
    let list = runs::list(state, None);
    println!("migration {name}: summary");
    println!(
        "  {:<40} {:<20} {:<24} {}",
        "WAVE/RUNBOOK@DATABASE", "OUTCOME", "RUN", "WRITE OUTAGE"
    );
    for (label, ended, id) in outcomes {
        let r = id.as_ref().and_then(|i| list.iter().find(|r| &r.id == i));
        let outage = match r.and_then(|r| r.write_outage_ms.map(|ms| (ms, r.writes_missing))) {
            Some((ms, missing)) => {
                let mode = r
                    .and_then(|r| r.reload.map(|m| m.as_str()))
                    .map(|m| format!(" (reload: {m})"))
                    .unwrap_or_default();
                let failed = r
                    .and_then(|r| r.writes_failed)
                    .map(|n| format!(", {n} failed"))
                    .unwrap_or_default();
                match missing {
                    Some(n) => format!("{ms} ms{mode}{failed}, {n} acknowledged write(s) missing"),
                    None => format!("{ms} ms{mode}{failed}"),
                }
            }
            None => "-".into(),
        };
        println!(
            "  {:<40} {:<20} {:<24} {}",
            label,
            ended.as_str(),
            id.as_deref().unwrap_or("-"),
            outage
        );
    }
}

/// A started child: its label and process.
struct Child {
    label: String,
    child: tokio::process::Child,
    run_id: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

async fn run_wave(
    root: &Path,
    env: &str,
    migration: &str,
    wave: &config::Wave,
    todo: Vec<(&Entry, Action)>,
    kind: Kind,
    args: &MigrateArgs<'_>,
) -> Vec<(String, Ended, Option<String>)> {
    let limit = wave.concurrency.unwrap_or(todo.len()).max(1);
    let mut pending: std::collections::VecDeque<(&Entry, Action)> = todo.into();
    let mut running: Vec<Child> = Vec::new();
    let mut out: Vec<(String, Ended, Option<String>)> = Vec::new();
    let mut failed = false;
    loop {
        // After a failure no new run of the wave starts, whatever the policy.
        while !failed && running.len() < limit {
            let Some((e, a)) = pending.pop_front() else {
                break;
            };
            match spawn(root, env, migration, &wave.name, e, &a, kind, args) {
                Ok(c) => running.push(c),
                Err(m) => {
                    eprintln!("  [{}] cannot start: {m}", e.label);
                    out.push((e.label.clone(), Ended::Refused, None));
                    failed = true;
                }
            }
        }
        if running.is_empty() {
            break;
        }
        // Wait for whichever child ends first.
        let (i, status) = {
            let waits = running.iter_mut().map(|c| Box::pin(c.child.wait()));
            let (status, i, _) = futures_util::future::select_all(waits).await;
            (i, status)
        };
        let c = running.remove(i);
        let ended = Ended::from_exit(status.ok().and_then(|s| s.code()));
        let id = c.run_id.lock().ok().and_then(|g| g.clone());
        println!(
            "  [{}] {}{}",
            c.label,
            ended.as_str(),
            id.as_ref()
                .map(|i| format!(" (run {i})"))
                .unwrap_or_default()
        );
        out.push((c.label.clone(), ended, id));
        if ended != Ended::Succeeded && kind != Kind::DryRun && !failed {
            failed = true;
            if wave.on_failure != OnFailure::Continue {
                for other in &running {
                    if let Some(pid) = other.child.id() {
                        println!(
                            "  [{}] interrupted (on_failure: {})",
                            other.label,
                            wave.on_failure.as_str()
                        );
                        // SAFETY: kill(2) with a child's pid and SIGINT has no memory effects.
                        unsafe {
                            libc::kill(pid as i32, libc::SIGINT);
                        }
                    }
                }
            }
        }
    }
    for (e, _) in pending {
        out.push((e.label.clone(), Ended::NotStarted, None));
    }
    if failed && wave.on_failure == OnFailure::Rollback {
        for (label, ended, id) in out.iter_mut() {
            let (Some(run_id), Ended::Succeeded | Ended::Interrupted) = (id.as_ref(), *ended)
            else {
                continue;
            };
            println!("  [{label}] rolling back run {run_id} (on_failure: rollback)");
            let status = Command::new(exe())
                .arg("-C")
                .arg(root)
                .args(["rollback", run_id])
                .stdin(std::process::Stdio::null())
                .status()
                .await;
            *ended = match Ended::from_exit(status.ok().and_then(|s| s.code())) {
                // A completed rollback exits 1 ("rolled back").
                Ended::RolledBack | Ended::Succeeded => Ended::RolledBack,
                other => other,
            };
        }
    }
    out
}

fn exe() -> std::path::PathBuf {
    std::env::current_exe().unwrap_or_else(|_| "cutover".into())
}

#[allow(clippy::too_many_arguments)]
fn spawn(
    root: &Path,
    env: &str,
    migration: &str,
    wave: &str,
    e: &Entry,
    a: &Action,
    kind: Kind,
    args: &MigrateArgs<'_>,
) -> Result<Child, String> {
    let mut cmd = Command::new(exe());
    cmd.arg("-C").arg(root);
    match a {
        Action::Resume { run_id } => {
            println!("  [{}] resuming run {run_id}", e.label);
            cmd.args(["resume", run_id]);
        }
        _ => {
            println!("  [{}] starting", e.label);
            match kind {
                Kind::Rehearse => cmd.args(["rehearse", env]),
                Kind::Execute => cmd.args(["execute", env]),
                Kind::DryRun => cmd.args(["execute", env, "--dry-run"]),
            };
            cmd.args(["--runbook", &e.runbook_path, "--database", &e.database]);
            cmd.arg("--in-migration").arg(format!("{migration}/{wave}"));
            if let Some(r) = args.break_glass {
                cmd.args(["--break-glass", r]);
            }
        }
    }
    for s in args.approve {
        cmd.args(["--approve", s]);
    }
    cmd.args(["--output", "json"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(false);
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let run_id = std::sync::Arc::new(std::sync::Mutex::new(match a {
        Action::Resume { run_id } => Some(run_id.clone()),
        _ => None,
    }));
    if let Some(stdout) = child.stdout.take() {
        let (label, run_id) = (e.label.clone(), run_id.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(text) = describe(&line, &run_id) {
                    println!("  [{label}] {text}");
                }
            }
        });
    }
    if let Some(stderr) = child.stderr.take() {
        let label = e.label.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("  [{label}] {line}");
            }
        });
    }
    Ok(Child {
        label: e.label.clone(),
        child,
        run_id,
    })
}

/// One line for a child's record worth showing (run start, each step's end, rollback, finish);
/// records the run id from `run_started`.
fn describe(line: &str, run_id: &std::sync::Mutex<Option<String>>) -> Option<String> {
    let r: crate::engine::log::Record = serde_json::from_str(line).ok()?;
    let e = Event::from_parts(&r.event, &r.data).ok()?;
    let step = r.step.clone().unwrap_or_default();
    match e {
        Event::RunStarted(s) => {
            if let Ok(mut g) = run_id.lock() {
                *g = Some(s.run_id.clone());
            }
            Some(format!(
                "run {} started ({} on database {})",
                s.run_id, s.runbook, s.database
            ))
        }
        Event::StepCompleted(c) => Some(format!("{step}: {}", c.summary)),
        Event::StepFailed(f) => Some(format!("{step}: FAILED: {}", f.error)),
        Event::RollbackStarted(_) => Some("rolling back".into()),
        Event::RunFinished(f) => Some(format!("finished: {}", f.status.as_str())),
        _ => None,
    }
}
