//! The engine: executes plans (rehearse, execute, dry-run), journals every step to the event log
//! before acting, resumes interrupted runs from that log, rolls back failed runs, and keeps one
//! lock per environment.
//!
//! The engine owns ordering, retries, deadlines, the journal and rollback. It must not know what a
//! particular step kind does: that is behind [`crate::steps::StepKind`].

mod executor;
mod heartbeat;
pub mod lines;
pub mod migration;
pub mod promotion;
mod reload;
mod secrets;
pub use crate::local::lock;
pub mod event;
pub mod log;
pub mod replay;
pub mod runs;
pub mod signature;
pub mod store;
pub mod ui;

pub use executor::{EngineError, Outcome};

use crate::providers::Providers;
use crate::runbook::{self, Plan};
use crate::secret::Redactor;
use crate::steps::context::Mode;
use event::{Event, RunStatus};
use executor::Executor;
use serde_json::Map;
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
    /// The migration and wave this run belongs to (recorded in `run_started`).
    pub migration: Option<event::MigrationTag>,
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
    let mut session =
        match Session::open(root, plan, mode, &run_id, ui, options, Journal::Create).await? {
            Ok(s) => s,
            Err(refused) => return Ok(refused),
        };
    let ex = &mut session.ex;
    ex.record(
        Event::RunStarted(event::RunStarted {
            run_id: run_id.clone(),
            environment: plan.env.name.clone(),
            tier: plan.env.tier.as_str().to_string(),
            account_id: plan.env.aws.account_id.clone(),
            region: plan.env.aws.region.clone(),
            mode,
            runbook: plan.runbook_name.clone(),
            runbook_path: plan.runbook_path.display().to_string(),
            runbook_digest: plan.runbook_digest.clone(),
            database: plan.database.clone(),
            migration: options.migration.clone(),
            plan_digest: plan.plan_digest.clone(),
            operator: operator(),
            ci_job: ci_job(),
            cutover_version: env!("CARGO_PKG_VERSION").to_string(),
            steps: plan
                .steps()
                .map(|(p, s)| event::StepEntry {
                    phase: p.to_string(),
                    id: s.id.clone(),
                    kind: s.kind.name().to_string(),
                })
                .collect(),
            approved: options.approved.clone(),
        }),
        None,
    )?;
    if let Some((reason, missing)) = &options.break_glass {
        ex.record(
            Event::GateBypassed(event::GateBypassed {
                gate: "promotion".into(),
                reason: reason.clone(),
                missing: missing.clone(),
                operator: operator(),
            }),
            None,
        )?;
    }
    if let Some(outcome) = preflight(ex).await? {
        return Ok(outcome);
    }
    heartbeat::start(ex, 0, None).await?;
    ex.run_steps().await
}

/// Whether a session writes a new log or continues one.
enum Journal<'r> {
    /// A new run: the log is created.
    Create,
    /// A run continued: the log is reopened; its records (verified) and what they say.
    Open(&'r [log::Record], &'r replay::Replayed),
}

/// What every process of a run stands on, whether it starts, resumes or rolls back the run: the
/// redactor, signer and providers, the database URLs checked, the environment's lock, the log
/// (created or reopened, signed and mirrored) and an executor with the secrets loaded and, for
/// a continued run, the records taken up.
struct Session<'a> {
    ex: Executor<'a>,
    _lock: store::HeldLock,
}

impl<'a> Session<'a> {
    /// Opens the session; `Ok(Err(outcome))` when the lock (or the store it needs) refused.
    #[allow(clippy::too_many_arguments)]
    async fn open(
        root: &Path,
        plan: &'a Plan,
        mode: Mode,
        run_id: &str,
        ui: &'a Ui,
        options: &RunOptions,
        journal: Journal<'_>,
    ) -> Result<Result<Session<'a>, Outcome>, EngineError> {
        let state = state_dir(root);
        let redactor = Arc::new(Redactor::default());
        let signer = load_signer(&redactor)?;
        let providers = Providers::new(plan.env.clone(), run_id, redactor.clone());
        providers
            .check_database_urls()
            .map_err(|e| EngineError::Config(redactor.redact(&e.to_string())))?;
        let (lock, s3) = match lock_env(&state, plan, &providers, run_id).await {
            Ok(l) => l,
            Err(reason) => return Ok(Err(Outcome::Refused(redactor.redact(&reason)))),
        };
        let path = runs::log_path(&state, run_id);
        let mut log = match &journal {
            Journal::Create => log::EventLog::create(&path, redactor.clone())?,
            Journal::Open(records, _) => {
                let (log, now) = log::EventLog::open(&path, redactor.clone())?;
                // The lock is held: nothing may have been appended since the records were read.
                if now.len() != records.len() {
                    return Err(EngineError::Config(format!(
                        "run {run_id}: its log grew from {} to {} records while it was being resumed; another process writes it",
                        records.len(),
                        now.len()
                    )));
                }
                log
            }
        };
        sign_and_mirror(&mut log, signer, s3, run_id)?;
        let mut ex = executor_for(
            root,
            plan,
            mode,
            run_id,
            runs::run_dir(&state, run_id),
            ui,
            providers,
            redactor,
            log,
        )?;
        ex.approved = options.approved.clone();
        ex.load_secrets().await?;
        if let Journal::Open(_, replayed) = journal {
            ex.take_up(replayed);
        }
        Ok(Ok(Session { ex, _lock: lock }))
    }
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

/// Takes the locks of what the run acts on ([`Plan::service_keys`]) in the environment's store (the S3 store needs the environment's session,
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
    let lock = store::acquire_service(
        state,
        s3.as_ref(),
        &plan.env.name,
        &plan.service_keys(),
        run_id,
        &holder(run_id),
    )
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
        pending_secrets: Vec::new(),
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
                Event::AccountVerified(event::AccountVerified {
                    account_id,
                    caller_arn,
                }),
                None,
            )?;
            match ex.read_pending(secrets::Reach::All).await {
                Ok(()) => Ok(None),
                Err(reason) => refuse(ex, reason).await,
            }
        }
        Err(e) => {
            let reason = ex.redactor.redact(&e.to_string());
            refuse(ex, reason).await
        }
    }
}

/// Records that the run was refused before any step for `reason` (redacted), and ends it.
async fn refuse(ex: &mut Executor<'_>, reason: String) -> Result<Option<Outcome>, EngineError> {
    ex.record(
        Event::RunRefused(event::Reason {
            reason: reason.clone(),
        }),
        None,
    )?;
    ex.finish(
        RunStatus::Refused,
        executor::Ending {
            reason: Some(reason.clone()),
            ..Default::default()
        },
    )
    .await?;
    Ok(Some(Outcome::Refused(reason)))
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
    /// The log verifies but holds a record this version does not know, or a sequence no run
    /// writes: continuing from it would be a guess.
    #[error("the event log of run {0} cannot be replayed: {1}")]
    Impossible(String, replay::ReplayError),
    /// The runbook or environment no longer resolve.
    #[error("{0}")]
    Config(crate::config::Problems),
}

/// What a run's `run_finished` record means as an outcome.
fn finished_outcome(fin: &event::RunFinished) -> Outcome {
    match fin.status {
        RunStatus::Succeeded | RunStatus::Planned => Outcome::Succeeded,
        RunStatus::RolledBack => Outcome::RolledBack,
        RunStatus::Failed => Outcome::DryRunFailed {
            step: fin.failed_step.clone().unwrap_or_default(),
            error: fin.error.clone().unwrap_or_default(),
        },
        RunStatus::Refused => Outcome::Refused(fin.reason.clone().unwrap_or_default()),
        RunStatus::WritesMissing => Outcome::WritesMissing {
            status: fin
                .steps_status
                .map(|s| s.as_str().to_string())
                .unwrap_or_default(),
            missing: fin.missing_writes.unwrap_or(0),
            database: fin.missing_in.clone().unwrap_or_default(),
        },
        RunStatus::RollbackRefused | RunStatus::RollbackIncomplete => {
            Outcome::RollbackIncomplete(executor::manual_todo(&fin.incomplete))
        }
    }
}

/// Continues run `run_id` from its event log: re-runs the first step with an intent and no
/// outcome (its apply checks current state first), then the rest; or finishes an interrupted
/// rollback.
///
/// # Errors
/// [`ResumeError`] when the run cannot be found, verified, replayed or re-resolved.
pub async fn resume(
    root: &Path,
    run_id: &str,
    ui: &Ui,
    options: &RunOptions,
) -> Result<Result<Outcome, EngineError>, ResumeError> {
    let (records, replayed) = load_run(root, run_id).await?;
    if let Some(fin) = &replayed.finished {
        println!("run {run_id} already finished: {}", fin.status.as_str());
        return Ok(Ok(finished_outcome(fin)));
    }
    let start = &replayed.start;
    let plan = plan_of_run(root, start)?;
    if plan.runbook_digest != start.runbook_digest {
        return Ok(Ok(Outcome::Refused(format!(
            "the runbook changed since run {run_id} started (digest {} now, {} then); finish it with `cutover rollback {run_id}` or start a new run",
            &plan.runbook_digest[..12],
            start.runbook_digest.get(..12).unwrap_or("")
        ))));
    }
    Ok(continue_run(
        root, &plan, start.mode, run_id, &records, &replayed, ui, false, options,
    )
    .await)
}

/// The plan run `start` was made from, resolved again: the same runbook file, environment and
/// database.
fn plan_of_run(root: &Path, start: &event::RunStarted) -> Result<Plan, ResumeError> {
    runbook::resolve_for(
        root,
        &start.runbook_path,
        &start.environment,
        (!start.database.is_empty()).then_some(start.database.as_str()),
    )
    .map_err(ResumeError::Config)
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
    let (records, replayed) = load_run(root, run_id).await?;
    let start = &replayed.start;
    let plan = plan_of_run(root, start)?;
    // A rehearsal's rollback is part of the rehearsal: its heartbeat measures it too.
    let mode = if start.mode == Mode::Rehearse {
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
        &replayed,
        ui,
        true,
        &RunOptions::default(),
    )
    .await)
}

/// A run's verified records and what they say; a run not on this machine is looked for in the
/// environments' `s3` stores first.
async fn load_run(
    root: &Path,
    run_id: &str,
) -> Result<(Vec<log::Record>, replay::Replayed), ResumeError> {
    let path = runs::log_path(&state_dir(root), run_id);
    if !path.exists() {
        store::pull_all(root, None).await;
    }
    if !path.exists() {
        return Err(ResumeError::NotFound(run_id.to_string()));
    }
    let records =
        log::read_verified(&path).map_err(|e| ResumeError::Corrupt(run_id.to_string(), e))?;
    if records.is_empty() {
        return Err(ResumeError::NotFound(run_id.to_string()));
    }
    let replayed =
        replay::replay(&records).map_err(|e| ResumeError::Impossible(run_id.to_string(), e))?;
    Ok((records, replayed))
}

#[allow(clippy::too_many_arguments)]
async fn continue_run(
    root: &Path,
    plan: &Plan,
    mode: Mode,
    run_id: &str,
    records: &[log::Record],
    replayed: &replay::Replayed,
    ui: &Ui,
    force_rollback: bool,
    options: &RunOptions,
) -> Result<Outcome, EngineError> {
    let journal = Journal::Open(records, replayed);
    let mut session = match Session::open(root, plan, mode, run_id, ui, options, journal).await? {
        Ok(s) => s,
        Err(refused) => return Ok(refused),
    };
    let ex = &mut session.ex;
    ex.record(
        Event::RunResumed(event::RunResumed {
            run_id: run_id.to_string(),
            rollback: force_rollback,
        }),
        None,
    )?;
    if let Some(outcome) = preflight(ex).await? {
        return Ok(outcome);
    }
    // The legacy side is what DNS named when the run began, not what it names now.
    let legacy_targets =
        records
            .iter()
            .find_map(|r| match Event::from_parts(&r.event, &r.data).ok()? {
                Event::HeartbeatStarted(h) => h.legacy.map(|l| l.legacy_targets),
                _ => None,
            });
    heartbeat::start(ex, replayed.resumes + 1, legacy_targets).await?;
    if let Some(rb) = &replayed.rollback {
        return ex.continue_rollback(&rb.failed_step, &rb.completed).await;
    }
    if force_rollback {
        return ex.rollback("", "rollback requested by the operator").await;
    }
    ex.run_steps().await
}
