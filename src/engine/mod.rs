//! The engine: executes plans (rehearse, execute, dry-run), journals every step to the event log
//! before acting, resumes interrupted runs from that log, rolls back failed runs, and keeps one
//! lock per environment.
//!
//! The engine owns ordering, retries, deadlines, the journal and rollback. It must not know what a
//! particular step kind does: that is behind [`crate::steps::StepKind`].

mod executor;
mod heartbeat;
pub mod lines;
pub mod promotion;
pub use crate::local::lock;
pub mod log;
pub mod runs;
pub mod signature;
pub mod store;
pub mod ui;

pub use executor::{EngineError, Outcome};

use crate::providers::{ProviderError, Providers};
use crate::runbook::{self, Plan};
use crate::secret::Redactor;
use crate::steps::context::Mode;
use executor::Executor;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use ui::Ui;

pub use crate::local::{holder_info, new_run_id, operator, state_dir};

fn holder(run_id: &str) -> String {
    format!("run {run_id} ({})", holder_info())
}

fn ci_job() -> Option<String> {
    if let (Ok(server), Ok(repo), Ok(id)) = (
        std::env::var("GITHUB_SERVER_URL"),
        std::env::var("GITHUB_REPOSITORY"),
        std::env::var("GITHUB_RUN_ID"),
    ) {
        return Some(format!("{server}/{repo}/actions/runs/{id}"));
    }
    std::env::var("CI_JOB_URL").ok()
}

/// The panic flag of environment `env`: `.cutover/panic-<env>`. While the file exists, a run
/// stops at its next safe point (between steps, or inside a wait: an analysis window, INSYNC, a
/// lag wait, a rollout) and rolls back; its first line is recorded as the reason. A run does not
/// start while it exists.
pub fn panic_flag(root: &Path, env: &str) -> PathBuf {
    state_dir(root).join(format!("panic-{env}"))
}

/// What the command line adds to a run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Step ids approved up front (`--approve STEP`, for CI where no one can answer a prompt).
    pub approved: Vec<String>,
    /// The promotion gate was bypassed with `--break-glass REASON`: the reason, and what the
    /// gate found missing. Recorded as a `gate_bypassed` record and shown first in the audit.
    pub break_glass: Option<(String, Vec<String>)>,
}

/// Starts a new run of `plan` in `mode`.
///
/// # Errors
/// [`EngineError::Config`] when a declared secret is unset (nothing was done);
/// [`EngineError::Log`] when the journal cannot be written.
pub async fn start(
    root: &Path,
    plan: &Plan,
    mode: Mode,
    ui: &Ui,
    options: &RunOptions,
) -> Result<Outcome, EngineError> {
    let flag = panic_flag(root, &plan.env.name);
    if mode != Mode::DryRun && flag.exists() {
        return Ok(Outcome::Refused(format!(
            "the panic flag {} is raised; remove it to run in {}",
            flag.display(),
            plan.env.name
        )));
    }
    let run_id = new_run_id();
    let state = state_dir(root);
    let redactor = Arc::new(Redactor::default());
    let signer = load_signer(&redactor)?;
    let providers = Providers::new(plan.env.clone(), &run_id, redactor.clone());
    providers
        .check_database_urls()
        .map_err(|e| EngineError::Config(redactor.redact(&e.to_string())))?;
    let (_lock, s3) = match lock_env(&state, plan, &providers, &run_id).await {
        Ok(l) => l,
        Err(reason) => return Ok(Outcome::Refused(redactor.redact(&reason))),
    };
    let run_dir = runs::run_dir(&state, &run_id);
    let mut log = log::EventLog::create(&runs::log_path(&state, &run_id), redactor.clone())?;
    sign_and_mirror(&mut log, signer, s3, &run_id)?;
    let mut ex = executor_for(
        root,
        plan,
        mode,
        &run_id,
        run_dir.clone(),
        ui,
        providers,
        redactor.clone(),
        log,
    )?;
    ex.approved = options.approved.clone();
    ex.load_secrets()?;
    ex.record(
        "run_started",
        None,
        json!({
            "run_id": run_id,
            "environment": plan.env.name,
            "tier": plan.env.tier.as_str(),
            "account_id": plan.env.aws.account_id,
            "region": plan.env.aws.region,
            "mode": mode.as_str(),
            "runbook": plan.runbook_name,
            "runbook_path": plan.runbook_path.display().to_string(),
            "runbook_digest": plan.runbook_digest,
            "plan_digest": plan.plan_digest,
            "operator": operator(),
            "ci_job": ci_job(),
            "cutover_version": env!("CARGO_PKG_VERSION"),
            "steps": plan.steps().map(|(p, s)| json!({"phase": p, "id": s.id, "kind": s.kind.name()})).collect::<Vec<_>>(),
            "approved": options.approved,
        }),
    )?;
    if let Some((reason, missing)) = &options.break_glass {
        ex.record(
            "gate_bypassed",
            None,
            json!({"gate": "promotion", "reason": reason, "missing": missing, "operator": operator()}),
        )?;
    }
    if let Some(outcome) = preflight(&mut ex).await? {
        return Ok(outcome);
    }
    heartbeat::start(&mut ex, 0).await?;
    ex.run_steps().await
}

/// The signing key of [`signature::Signer::from_env`], its PEM text and base64 body registered
/// as secrets.
///
/// # Errors
/// [`EngineError::Config`] when the key is set but unreadable (nothing was done).
fn load_signer(redactor: &Redactor) -> Result<Option<Arc<signature::Signer>>, EngineError> {
    match signature::Signer::from_env() {
        Ok(Some((signer, pem))) => {
            redactor.add(pem.trim());
            let body: String = pem
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .map(str::trim)
                .collect();
            redactor.add(&body);
            Ok(Some(Arc::new(signer)))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(EngineError::Config(format!(
            "signing key: {}",
            redactor.redact(&e.to_string())
        ))),
    }
}

/// Has `log` sign its head after every append (when a key is set) and upload itself and its
/// signature to the S3 store (when the environment uses one).
///
/// # Errors
/// [`log::LogError::Io`] when the first signature or upload fails.
fn sign_and_mirror(
    log: &mut log::EventLog,
    signer: Option<Arc<signature::Signer>>,
    s3: Option<store::S3Store>,
    run_id: &str,
) -> Result<(), log::LogError> {
    if let Some(signer) = signer {
        log.set_signer(signer, run_id)?;
    }
    if let Some(s3) = s3 {
        let id = run_id.to_string();
        log.set_mirror(Box::new(move |name, bytes| s3.upload(&id, name, bytes)))?;
    }
    Ok(())
}

/// Takes the environment's lock in its store (the S3 store needs the environment's session,
/// so the role is assumed and the account checked first). Returns the lock and the S3 store.
async fn lock_env(
    state: &Path,
    plan: &Plan,
    providers: &Providers,
    run_id: &str,
) -> Result<(store::HeldLock, Option<store::S3Store>), String> {
    let s3 = if plan.env.store.kind == crate::config::StoreKind::S3 {
        let session = providers.aws().await.map_err(|e| e.to_string())?;
        store::S3Store::for_env(&plan.env, session)
    } else {
        None
    };
    let lock = store::acquire(state, s3.as_ref(), &plan.env.name, run_id, &holder(run_id))
        .await
        .map_err(|e| e.to_string())?;
    Ok((lock, s3))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn executor_for<'a>(
    root: &Path,
    plan: &'a Plan,
    mode: Mode,
    run_id: &str,
    run_dir: PathBuf,
    ui: &'a Ui,
    providers: Providers,
    redactor: Arc<Redactor>,
    log: log::EventLog,
) -> Result<Executor<'a>, EngineError> {
    Ok(Executor {
        plan,
        mode,
        run_id: run_id.to_string(),
        root: root.to_path_buf(),
        run_dir,
        log: Arc::new(std::sync::Mutex::new(log)),
        panic_flag: panic_flag(root, &plan.env.name),
        approved: Vec::new(),
        ui,
        providers,
        redactor,
        tf: Map::new(),
        outputs: HashMap::new(),
        secrets_real: Map::new(),
        secrets_display: Map::new(),
        started: Vec::new(),
        done: HashSet::new(),
        before: HashMap::new(),
        heartbeat: None,
        lost: None,
    })
}

/// Assumes the environment's role and checks the account before anything else happens.
async fn preflight(ex: &mut Executor<'_>) -> Result<Option<Outcome>, EngineError> {
    match ex.providers.aws().await {
        Ok(s) => {
            let (account_id, caller_arn) = (s.account_id.clone(), s.caller_arn.clone());
            ex.record(
                "account_verified",
                None,
                json!({"account_id": account_id, "caller_arn": caller_arn}),
            )?;
            Ok(None)
        }
        Err(e @ ProviderError::WrongAccount { .. }) => {
            let reason = ex.redactor.redact(&e.to_string());
            ex.record("run_refused", None, json!({"reason": reason}))?;
            ex.finish("refused", json!({"reason": reason})).await?;
            Ok(Some(Outcome::Refused(reason)))
        }
        Err(e) => {
            let reason = ex.redactor.redact(&e.to_string());
            ex.record("run_refused", None, json!({"reason": reason}))?;
            ex.finish("refused", json!({"reason": reason})).await?;
            Ok(Some(Outcome::Refused(reason)))
        }
    }
}

/// Why `resume` cannot continue a run.
#[derive(Debug, thiserror::Error)]
pub enum ResumeError {
    /// No such run in the store.
    #[error("no run {0} in .cutover/runs")]
    NotFound(String),
    /// The log does not verify.
    #[error("the event log of run {0} does not verify: {1}")]
    Corrupt(String, log::LogError),
    /// The runbook or environment no longer resolve.
    #[error("{0}")]
    Config(crate::config::Problems),
}

/// Continues run `run_id` from its event log: re-runs the first step with an intent and no
/// outcome (its apply checks current state first), then the rest; or finishes an interrupted
/// rollback.
///
/// # Errors
/// [`ResumeError`] when the run cannot be found, verified or re-resolved.
pub async fn resume(
    root: &Path,
    run_id: &str,
    ui: &Ui,
    options: &RunOptions,
) -> Result<Result<Outcome, EngineError>, ResumeError> {
    let (records, start) = load_run(root, run_id).await?;
    let field = |k: &str| start_field(&start, k);
    if let Some(fin) = records.iter().rev().find(|r| r.event == "run_finished") {
        let status = fin.data.get("status").and_then(Value::as_str).unwrap_or("");
        println!("run {run_id} already finished: {status}");
        return Ok(Ok(match status {
            "succeeded" | "planned" => Outcome::Succeeded,
            "rolled-back" => Outcome::RolledBack,
            "failed" => Outcome::DryRunFailed {
                step: fin.data["failed_step"].as_str().unwrap_or("").to_string(),
                error: fin.data["error"].as_str().unwrap_or("").to_string(),
            },
            "refused" => Outcome::Refused(field("reason")),
            "writes-missing" => Outcome::WritesMissing {
                status: fin.data["steps_status"].as_str().unwrap_or("").to_string(),
                missing: fin.data["missing_writes"].as_u64().unwrap_or(0),
                database: fin.data["missing_in"].as_str().unwrap_or("").to_string(),
            },
            _ => Outcome::RollbackIncomplete(executor::manual_todo(
                fin.data
                    .get("incomplete")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default(),
            )),
        }));
    }
    let plan = runbook::resolve(root, &field("runbook_path"), &field("environment"))
        .map_err(ResumeError::Config)?;
    if plan.runbook_digest != field("runbook_digest") {
        return Ok(Ok(Outcome::Refused(format!(
            "the runbook changed since run {run_id} started (digest {} now, {} then); finish it with `cutover rollback {run_id}` or start a new run",
            &plan.runbook_digest[..12],
            &field("runbook_digest").get(..12).unwrap_or("")
        ))));
    }
    let mode = match field("mode").as_str() {
        "rehearse" => Mode::Rehearse,
        "dry-run" => Mode::DryRun,
        _ => Mode::Execute,
    };
    Ok(continue_run(root, &plan, mode, run_id, &records, ui, false, options).await)
}

/// Rolls back run `run_id`: every started step in reverse order, as after a failure.
///
/// # Errors
/// As [`resume`].
pub async fn rollback(
    root: &Path,
    run_id: &str,
    ui: &Ui,
) -> Result<Result<Outcome, EngineError>, ResumeError> {
    let (records, start) = load_run(root, run_id).await?;
    let field = |k: &str| start_field(&start, k);
    let plan = runbook::resolve(root, &field("runbook_path"), &field("environment"))
        .map_err(ResumeError::Config)?;
    // A rehearsal's rollback is part of the rehearsal: its heartbeat measures it too.
    let mode = if field("mode") == "rehearse" {
        Mode::Rehearse
    } else {
        Mode::Execute
    };
    Ok(continue_run(
        root,
        &plan,
        mode,
        run_id,
        &records,
        ui,
        true,
        &RunOptions::default(),
    )
    .await)
}

/// A string field of a `run_started` payload (empty when absent).
fn start_field(start: &Value, k: &str) -> String {
    start
        .get(k)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// A run's verified records and its `run_started` payload; a run not on this machine is looked
/// for in the environments' `s3` stores first.
async fn load_run(root: &Path, run_id: &str) -> Result<(Vec<log::Record>, Value), ResumeError> {
    let path = runs::log_path(&state_dir(root), run_id);
    if !path.exists() {
        store::pull_all(root, None).await;
    }
    if !path.exists() {
        return Err(ResumeError::NotFound(run_id.to_string()));
    }
    let records =
        log::read_verified(&path).map_err(|e| ResumeError::Corrupt(run_id.to_string(), e))?;
    let start = records
        .iter()
        .find(|r| r.event == "run_started")
        .map(|r| r.data.clone())
        .ok_or_else(|| ResumeError::NotFound(run_id.to_string()))?;
    Ok((records, start))
}

#[allow(clippy::too_many_arguments)]
async fn continue_run(
    root: &Path,
    plan: &Plan,
    mode: Mode,
    run_id: &str,
    records: &[log::Record],
    ui: &Ui,
    force_rollback: bool,
    options: &RunOptions,
) -> Result<Outcome, EngineError> {
    let state = state_dir(root);
    let redactor = Arc::new(Redactor::default());
    let signer = load_signer(&redactor)?;
    let providers = Providers::new(plan.env.clone(), run_id, redactor.clone());
    let (_lock, s3) = match lock_env(&state, plan, &providers, run_id).await {
        Ok(l) => l,
        Err(reason) => return Ok(Outcome::Refused(redactor.redact(&reason))),
    };
    let run_dir = runs::run_dir(&state, run_id);
    let (mut log, records_now) =
        log::EventLog::open(&runs::log_path(&state, run_id), redactor.clone())?;
    debug_assert_eq!(records_now.len(), records.len());
    sign_and_mirror(&mut log, signer, s3, run_id)?;
    let mut ex = executor_for(
        root, plan, mode, run_id, run_dir, ui, providers, redactor, log,
    )?;
    ex.approved = options.approved.clone();
    ex.load_secrets()?;
    ex.replay(records);
    ex.record(
        "run_resumed",
        None,
        json!({"run_id": run_id, "rollback": force_rollback}),
    )?;
    if let Some(outcome) = preflight(&mut ex).await? {
        return Ok(outcome);
    }
    let attempt = records.iter().filter(|r| r.event == "run_resumed").count() + 1;
    heartbeat::start(&mut ex, attempt).await?;
    let rollback_start = records.iter().rev().find(|r| r.event == "rollback_started");
    if let Some(rs) = rollback_start {
        let failed = rs
            .data
            .get("failed_step")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let already: HashSet<String> = records
            .iter()
            .filter(|r| r.seq > rs.seq && r.event == "rollback_step_completed")
            .filter_map(|r| r.step.clone())
            .collect();
        return ex.continue_rollback(&failed, &already).await;
    }
    if force_rollback {
        return ex.rollback("", "rollback requested by the operator").await;
    }
    ex.run_steps().await
}
