//! Executes a plan step by step under the step contract, journals every transition to the event
//! log before acting on it, and rolls completed steps back in reverse order when one fails.

use super::event::{
    Event, Incomplete, PanicRaised, PhaseStarted, RollbackRefused, RollbackStarted,
    RollbackStepCompleted, RollbackStepFailed, RollbackStepStarted, RunFinished, RunInterrupted,
    RunStatus, StepApplied, StepAttemptFailed, StepCompleted, StepFailed, StepPlanned, StepSkipped,
    StepStarted,
};
use super::log::{EventLog, Record};
use super::ui::Ui;
use crate::config::RollbackPolicy;
use crate::providers::{ProviderError, Providers};
use crate::runbook::{env_context, template, Plan, PlanStep};
use crate::secret::Redactor;
use crate::steps::context::Mode;
use crate::steps::journal::Journal;
use crate::steps::{Planned, StepContext, StepError};
use backon::BackoffBuilder;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant as StdInstant;

mod rollback;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step completed (or, in a dry-run, planned).
    Succeeded,
    /// A step failed and every rollback completed (exit 1).
    RolledBack,
    /// A dry-run could not plan a step; nothing was changed, so nothing was rolled back
    /// (exit 1). The step id and its error (redacted).
    DryRunFailed {
        /// The step whose plan failed.
        step: String,
        /// Why.
        error: String,
    },
    /// A rollback step failed; a person must finish it (exit 4). Per step id, what to do.
    RollbackIncomplete(Vec<(String, Vec<String>)>),
    /// A gate refused before any mutation (exit 3).
    Refused(String),
    /// SIGINT or SIGTERM; the journal is consistent and `resume` continues (exit 130).
    Interrupted,
    /// The run ended (`status`: succeeded, rolled-back, ...) but the heartbeat found
    /// acknowledged writes missing from the database the application uses at the end: not a
    /// clean outcome whatever the steps say (exit 4).
    WritesMissing {
        /// The status the steps alone would have given.
        status: String,
        /// Acknowledged writes missing.
        missing: u64,
        /// The database they are missing from (`user@host:port/db`).
        database: String,
    },
}

/// Why the run could not even proceed as a run (configuration, journal I/O).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The event log could not be written: nothing further may happen.
    #[error(transparent)]
    Log(#[from] super::log::LogError),
    /// Configuration problems found at run time (a secret's variable unset, ...): exit 2.
    #[error("{0}")]
    Config(String),
}

/// The state of one run while it executes.
pub struct Executor<'a> {
    pub(super) plan: &'a Plan,
    pub(super) mode: Mode,
    pub(super) run_id: String,
    pub(super) root: PathBuf,
    pub(super) run_dir: PathBuf,
    pub(super) log: Arc<Mutex<EventLog>>,
    pub(super) ui: &'a Ui,
    pub(super) providers: Providers,
    pub(super) redactor: Arc<Redactor>,
    pub(super) tf: Map<String, Value>,
    pub(super) outputs: HashMap<String, Map<String, Value>>,
    pub(super) secrets_real: Map<String, Value>,
    pub(super) secrets_display: Map<String, Value>,
    /// Secret references not read yet ([`super::secrets`]).
    pub(super) pending_secrets: Vec<super::secrets::Pending>,
    /// Steps with a `step_started` record (candidates for rollback).
    pub(super) started: Vec<String>,
    /// Steps completed or skipped.
    pub(super) done: HashSet<String>,
    /// Rollback material from each step's first plan.
    pub(super) before: HashMap<String, Value>,
    /// The rehearsal heartbeat writer, while it runs.
    pub(super) heartbeat: Option<super::heartbeat::Running>,
    /// The panic flag file of this environment (see [`super::panic_flag`]).
    pub(super) panic_flag: PathBuf,
    /// Step ids approved on the command line.
    pub(super) approved: Vec<String>,
    /// Set by [`Executor::finish`] when the heartbeat found acknowledged writes missing:
    /// `(missing, database)`.
    pub(super) lost: Option<(u64, String)>,
}

/// Why a step stopped, from the [`StepError`] variant that stopped it (never from its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The operator raised the panic flag.
    Panic,
    /// A safety gate refused: the step changed nothing.
    Gate,
    /// Any other failure (provider, check, timeout, parameters, template).
    Error,
}

impl Cause {
    fn of(e: &StepError) -> Self {
        match e {
            StepError::Panic(_) => Cause::Panic,
            StepError::Gate(_) | StepError::Provider(ProviderError::WrongAccount { .. }) => {
                Cause::Gate
            }
            _ => Cause::Error,
        }
    }
}

struct Failure {
    step: String,
    error: String,
    cause: Cause,
}

/// Whether a failed apply attempt may be retried: not when a gate refused, the operator
/// panicked, the parameters are wrong or the journal failed (that stops the run).
fn retryable(e: &StepError) -> bool {
    !matches!(
        e,
        StepError::Gate(_)
            | StepError::Panic(_)
            | StepError::WriteOutage(_)
            | StepError::Params(_)
            | StepError::Journal(_)
            | StepError::Provider(ProviderError::WrongAccount { .. })
    )
}

/// The first event-log failure a step's journal closure met; once set, the run stops
/// ([`EngineError::Log`]) whatever the step does with the error it was given.
type JournalFault = Arc<Mutex<Option<super::log::LogError>>>;

fn lock_log(log: &Mutex<EventLog>) -> std::sync::MutexGuard<'_, EventLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a> Executor<'a> {
    /// Appends a record and shows it. A step's applied, completed or failed record, and a step
    /// rollback's outcome, carry the AWS calls that changed something since the last such record
    /// (`crate::providers::aws_calls`).
    pub(super) fn record(
        &mut self,
        mut event: Event,
        step: Option<&str>,
    ) -> Result<Record, EngineError> {
        let calls = crate::providers::aws_calls::take();
        if !calls.is_empty() {
            if let Some(back) = event.with_aws_calls(calls) {
                crate::providers::aws_calls::restore(back);
            }
        }
        let rec = lock_log(&self.log).append(&event, step)?;
        self.ui.record(&rec);
        Ok(rec)
    }

    /// The closure a step journals through: appends a [`Journal`] record for `step` and fsyncs it
    /// before returning, so an intent is on record before its side effect.
    ///
    /// A write failure is kept in `fault` (checked by the executor after every step call) and
    /// given to the step as [`StepError::Journal`], which is never retried.
    fn journal_for(
        &self,
        step: &str,
        fault: &JournalFault,
    ) -> impl Fn(Journal) -> Result<(), StepError> + Send + Sync + 'a {
        let (log, ui, step) = (self.log.clone(), self.ui, step.to_string());
        let fault = fault.clone();
        move |record: Journal| {
            let appended = lock_log(&log).append(&Event::Journal(record), Some(&step));
            match appended {
                Ok(rec) => {
                    ui.record(&rec);
                    Ok(())
                }
                Err(e) => {
                    let msg = e.to_string();
                    let mut slot = fault.lock().unwrap_or_else(|p| p.into_inner());
                    slot.get_or_insert(e);
                    Err(StepError::Journal(msg))
                }
            }
        }
    }

    /// [`EngineError::Log`] when a step's journal failed: nothing further may happen.
    fn journal_fault(fault: &JournalFault) -> Result<(), EngineError> {
        match fault.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(EngineError::Log(e)),
            None => Ok(()),
        }
    }

    /// The closure a step reports a long wait through: the line is redacted, shown (a spinner on
    /// a terminal, a line otherwise, an event with `--output json`) and kept as the run's
    /// latest progress in `progress.json` for `cutover status` in another terminal. That file
    /// is not part of the journal: it is overwritten, never fsynced, and its loss loses nothing.
    fn progress_for(&self, step: &str) -> impl Fn(&str) + Send + Sync + 'a {
        let (ui, redactor, step) = (self.ui, self.redactor.clone(), step.to_string());
        let file = self.run_dir.join(super::runs::PROGRESS_FILE);
        move |msg: &str| {
            let msg = redactor.redact(msg);
            ui.progress(&step, &msg);
            let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let body = json!({"ts": ts, "step": step, "message": msg}).to_string();
            let tmp = file.with_extension("json.part");
            if std::fs::write(&tmp, body).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
    }

    /// Takes up step outputs, Terraform outputs and progress from a replayed log (resume).
    pub(super) fn take_up(&mut self, replayed: &super::replay::Replayed) {
        self.started = replayed.started.clone();
        for (step, before) in &replayed.before {
            self.before
                .entry(step.clone())
                .or_insert_with(|| before.clone());
        }
        for (step, outputs) in &replayed.outputs {
            self.absorb_outputs(step, outputs.clone());
        }
        for step in replayed.steps.keys() {
            if replayed.done(step) {
                self.done.insert(step.clone());
            }
        }
    }

    fn absorb_outputs(&mut self, step: &str, outputs: Map<String, Value>) {
        let published = self
            .plan
            .steps()
            .find(|(_, s)| s.id == step)
            .and_then(|(_, s)| s.kind.terraform_outputs(&outputs));
        for (k, v) in published.into_iter().flatten() {
            self.tf.insert(k, v);
        }
        self.outputs.insert(step.to_string(), outputs);
    }

    pub(super) fn context(&self, display: bool) -> Value {
        let steps: Map<String, Value> = self
            .outputs
            .iter()
            .map(|(k, v)| (k.clone(), json!({"outputs": v})))
            .collect();
        json!({
            "env": env_context(&self.plan.env),
            "vars": self.plan.vars,
            "tf": self.tf,
            "steps": steps,
            "secrets": if display { &self.secrets_display } else { &self.secrets_real },
        })
    }

    /// Runs every step not yet done, in order; on failure rolls back. Returns the outcome.
    pub(super) async fn run_steps(&mut self) -> Result<Outcome, EngineError> {
        let plan = self.plan;
        let mut current_phase = String::new();
        // The handlers are installed once, before the first step: a signal that arrives while a
        // step writes its first record is then held for the select below, never the default
        // action (which would end the process with no `run_interrupted` record).
        let mut signals = Signals::install();
        for (phase, step) in plan.steps() {
            if self.done.contains(&step.id) {
                continue;
            }
            // A safe point between steps.
            if self.mode != Mode::DryRun {
                if let Some(reason) = crate::steps::context::panic_reason(&self.panic_flag) {
                    return self
                        .panic(&step.id, "before the step started", &reason)
                        .await;
                }
                if let Some(outage) = super::heartbeat::over_budget_between(self) {
                    return self.write_outage(&step.id, outage).await;
                }
            }
            if phase != current_phase {
                current_phase = phase.to_string();
                self.record(
                    Event::PhaseStarted(PhaseStarted {
                        phase: phase.to_string(),
                    }),
                    None,
                )?;
            }
            let result = tokio::select! {
                r = self.run_step(phase, step) => r?,
                signal = signals.next() => {
                    let id = self.run_id.clone();
                    self.record(
                        Event::RunInterrupted(RunInterrupted { run_id: id, signal: signal.to_string() }),
                        Some(&step.id),
                    )?;
                    return Ok(Outcome::Interrupted);
                }
            };
            if let Err(f) = result {
                if self.mode == Mode::DryRun {
                    self.finish(
                        RunStatus::Failed,
                        Ending {
                            failed_step: Some(f.step.clone()),
                            error: Some(f.error.clone()),
                            ..Ending::default()
                        },
                    )
                    .await?;
                    return Ok(Outcome::DryRunFailed {
                        step: f.step,
                        error: f.error,
                    });
                }
                if f.cause == Cause::Panic {
                    return self.panic(&f.step, "during the step", &f.error).await;
                }
                return self.rollback(&f.step, &f.error).await;
            }
        }
        // The last safe point: a panic flag raised before the run records its finish is
        // honoured, and the application must write again within the budget.
        if self.mode != Mode::DryRun {
            if let Some(last) = plan.steps().last().map(|(_, s)| s.id.clone()) {
                if let Some(reason) = crate::steps::context::panic_reason(&self.panic_flag) {
                    return self.panic(&last, "after the last step", &reason).await;
                }
                match super::heartbeat::settle(self).await {
                    super::heartbeat::Settled::Writing => {}
                    super::heartbeat::Settled::Panic(reason) => {
                        return self.panic(&last, "after the last step", &reason).await
                    }
                    super::heartbeat::Settled::OverBudget(outage) => {
                        return self.write_outage(&last, outage).await
                    }
                }
            }
        }
        let status = if self.mode == Mode::DryRun {
            RunStatus::Planned
        } else {
            RunStatus::Succeeded
        };
        self.finish(status, Ending::default()).await?;
        Ok(self.outcome(status, Outcome::Succeeded))
    }

    /// The application's write outage passed the budget outside a step: records it, then rolls
    /// back every started step (`step` names where the run stood).
    async fn write_outage(
        &mut self,
        step: &str,
        mut outage: super::event::WriteOutage,
    ) -> Result<Outcome, EngineError> {
        outage.last_error = outage.last_error.map(|e| self.redactor.redact(&e));
        let reason = outage.reason();
        self.record(Event::WriteOutage(outage), Some(step))?;
        self.rollback(step, &reason).await
    }

    /// Stops the heartbeat and records `run_finished`. When acknowledged writes are missing,
    /// the status becomes `writes-missing` (the steps' own status kept as `steps_status`, with
    /// `missing_writes` and `missing_in`), and [`Executor::outcome`] reports it.
    pub(super) async fn finish(
        &mut self,
        status: RunStatus,
        ending: Ending,
    ) -> Result<(), EngineError> {
        self.lost = super::heartbeat::finish(self).await?;
        let mut fin = RunFinished {
            run_id: self.run_id.clone(),
            status,
            environment: self.plan.env.name.clone(),
            mode: self.mode,
            failed_step: ending.failed_step,
            error: ending.error,
            reason: ending.reason,
            incomplete: ending.incomplete,
            steps_status: None,
            missing_writes: None,
            missing_in: None,
        };
        if let Some((missing, db)) = &self.lost {
            fin.status = RunStatus::WritesMissing;
            fin.steps_status = Some(status);
            fin.missing_writes = Some(*missing);
            fin.missing_in = Some(db.clone());
        }
        self.record(Event::RunFinished(fin), None)?;
        Ok(())
    }

    /// `normal`, unless [`Executor::finish`] found acknowledged writes missing.
    pub(super) fn outcome(&self, status: RunStatus, normal: Outcome) -> Outcome {
        match &self.lost {
            Some((missing, database)) => Outcome::WritesMissing {
                status: status.as_str().to_string(),
                missing: *missing,
                database: database.clone(),
            },
            None => normal,
        }
    }

    /// The context of one call into a step kind. `deadline` is the attempt's: one per step
    /// attempt, covering plan, every apply retry and verify (or one per rollback step).
    #[allow(clippy::too_many_arguments)]
    fn step_context<'b>(
        &'b self,
        step: &'b PlanStep,
        params: Map<String, Value>,
        progress: &'b (dyn Fn(&str) + Send + Sync),
        journal: &'b (dyn Fn(Journal) -> Result<(), StepError> + Send + Sync),
        deadline: tokio::time::Instant,
        rolling_back: bool,
    ) -> StepContext<'b> {
        StepContext {
            run_id: &self.run_id,
            step_id: &step.id,
            mode: self.mode,
            env: &self.plan.env,
            params,
            deadline,
            providers: &self.providers,
            run_dir: &self.run_dir,
            root: &self.root,
            progress,
            journal,
            panic_flag: (!rolling_back).then_some(self.panic_flag.as_path()),
            approved: &self.approved,
            writes: if rolling_back {
                None
            } else {
                self.heartbeat
                    .as_ref()
                    .map(|h| h as &dyn crate::steps::context::WriteWatch)
            },
        }
    }

    async fn run_step(
        &mut self,
        phase: &str,
        step: &PlanStep,
    ) -> Result<Result<(), Failure>, EngineError> {
        let kind = step.kind;
        let unread = self.read_pending(super::secrets::Reach::All).await.err();
        let fail = |this: &mut Self,
                    cause: Cause,
                    error: String|
         -> Result<Result<(), Failure>, EngineError> {
            let error = this.redactor.redact(&error);
            this.record(
                Event::StepFailed(StepFailed {
                    aws_calls: Vec::new(),
                    kind: kind.name().to_string(),
                    error: error.clone(),
                }),
                Some(&step.id),
            )?;
            Ok(Err(Failure {
                step: step.id.clone(),
                cause,
                error,
            }))
        };
        if let Some(e) = unread {
            return fail(self, Cause::Error, e);
        }
        // `when`
        if let Some(w) = &step.when {
            match template::render_str(w, &self.context(true)) {
                Ok(r) if !template::truthy(&r) => {
                    self.done.insert(step.id.clone());
                    let reason = format!("when `{w}` is {}", r.trim());
                    self.record(
                        Event::StepSkipped(StepSkipped {
                            kind: kind.name().to_string(),
                            reason,
                        }),
                        Some(&step.id),
                    )?;
                    return Ok(Ok(()));
                }
                Ok(_) => {}
                Err(e) => return fail(self, Cause::Error, format!("when `{w}`: {e}")),
            }
        }
        let params_obj = Value::Object(step.params.clone());
        let display = match template::render_value(&params_obj, &self.context(true)) {
            Ok(v) => v,
            Err(e) if self.mode == Mode::DryRun => {
                // A dry-run cannot know values that only an earlier step's apply produces.
                self.done.insert(step.id.clone());
                let change = crate::steps::Change::new(
                    crate::steps::Action::Unknown,
                    format!("step {}", step.id),
                    format!(
                        "parameters depend on values known only after earlier steps apply ({e})"
                    ),
                );
                self.record(
                    Event::StepPlanned(StepPlanned {
                        kind: kind.name().to_string(),
                        changes: vec![change],
                        before: Value::Null,
                        dry_run: Some(true),
                    }),
                    Some(&step.id),
                )?;
                return Ok(Ok(()));
            }
            Err(e) => return fail(self, Cause::Error, format!("template {e}")),
        };
        let real = match template::render_value(&params_obj, &self.context(false)) {
            Ok(Value::Object(m)) => m,
            Ok(_) => Map::new(),
            Err(e) => return fail(self, Cause::Error, format!("template {e}")),
        };
        if !self.started.contains(&step.id) {
            self.started.push(step.id.clone());
        }
        self.record(
            Event::StepStarted(StepStarted {
                phase: phase.to_string(),
                kind: kind.name().to_string(),
                params: display,
                timeout_s: step.timeout.as_secs(),
            }),
            Some(&step.id),
        )?;

        let started = StdInstant::now();
        let progress = self.progress_for(&step.id);
        let fault = JournalFault::default();
        let journal = self.journal_for(&step.id, &fault);
        // One deadline for the whole attempt: plan, every apply retry and verify.
        let deadline = tokio::time::Instant::now() + step.timeout;

        // plan
        let planned: Result<Planned, StepError> = {
            let cx = self.step_context(step, real.clone(), &progress, &journal, deadline, false);
            tokio::time::timeout_at(deadline, kind.plan(&cx))
                .await
                .unwrap_or_else(|_| Err(StepError::Timeout("plan".into())))
        };
        Self::journal_fault(&fault)?;
        let mut planned = match planned {
            Ok(p) => p,
            Err(e) => return self.step_error(e, fail),
        };
        // Rollback material is the first observation of the run: a resumed step plans again
        // over state its own earlier attempt may have changed.
        let first = self
            .before
            .entry(step.id.clone())
            .or_insert_with(|| planned.before.clone())
            .clone();
        let observed_now = std::mem::replace(&mut planned.before, first);
        let dry = self.mode == Mode::DryRun;
        self.record(
            Event::StepPlanned(StepPlanned {
                kind: kind.name().to_string(),
                changes: planned.changes.clone(),
                before: observed_now,
                dry_run: Some(dry),
            }),
            Some(&step.id),
        )?;
        if dry {
            self.absorb_outputs(&step.id, planned.predicted.clone());
            self.done.insert(step.id.clone());
            return Ok(Ok(()));
        }

        // apply, with `retries` extra attempts spaced by exponential backoff with jitter
        // (2 s doubling to at most 60 s), all within the attempt's deadline.
        let mut delays = backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_secs(2))
            .with_max_delay(std::time::Duration::from_secs(60))
            .with_max_times(step.retries as usize)
            .with_jitter()
            .build();
        let mut attempt = 0u32;
        let outputs = loop {
            attempt += 1;
            let result = {
                let cx =
                    self.step_context(step, real.clone(), &progress, &journal, deadline, false);
                tokio::time::timeout_at(deadline, kind.apply(&cx, &planned))
                    .await
                    .unwrap_or_else(|_| Err(StepError::Timeout("apply".into())))
            };
            Self::journal_fault(&fault)?;
            let e = match result {
                Ok(o) => break o,
                Err(e) => e,
            };
            let next = delays.next().filter(|_| retryable(&e));
            match next {
                Some(delay) if tokio::time::Instant::now() + delay < deadline => {
                    let msg = self.redactor.redact(&e.to_string());
                    self.record(
                        Event::StepAttemptFailed(StepAttemptFailed {
                            attempt,
                            error: msg,
                            retry_in_ms: delay.as_millis() as u64,
                        }),
                        Some(&step.id),
                    )?;
                    tokio::time::sleep(delay).await;
                }
                Some(_) => {
                    let e = StepError::Timeout(format!(
                        "apply: the step's {} s timeout leaves no time for attempt {} (last error: {e})",
                        step.timeout.as_secs(),
                        attempt + 1
                    ));
                    return self.step_error(e, fail);
                }
                None => return self.step_error(e, fail),
            }
        };
        self.record(
            Event::StepApplied(StepApplied {
                aws_calls: Vec::new(),
                kind: kind.name().to_string(),
                outputs: outputs.clone(),
            }),
            Some(&step.id),
        )?;
        self.absorb_outputs(&step.id, outputs.clone());

        // verify
        let evidence = {
            let cx = self.step_context(step, real.clone(), &progress, &journal, deadline, false);
            tokio::time::timeout_at(deadline, kind.verify(&cx, &outputs))
                .await
                .unwrap_or_else(|_| Err(StepError::Timeout("verify".into())))
        };
        Self::journal_fault(&fault)?;
        let evidence = match evidence {
            Ok(e) => e,
            Err(e) => return self.step_error(e, fail),
        };
        let summary = summary_line(&planned, &outputs, &evidence);
        self.done.insert(step.id.clone());
        self.record(
            Event::StepCompleted(StepCompleted {
                aws_calls: Vec::new(),
                kind: kind.name().to_string(),
                evidence: Value::Object(evidence),
                summary,
                duration_ms: started.elapsed().as_millis() as u64,
                attempts: attempt,
            }),
            Some(&step.id),
        )?;
        Ok(Ok(()))
    }

    fn step_error(
        &mut self,
        e: StepError,
        fail: impl Fn(&mut Self, Cause, String) -> Result<Result<(), Failure>, EngineError>,
    ) -> Result<Result<(), Failure>, EngineError> {
        let cause = Cause::of(&e);
        let msg = match cause {
            Cause::Gate => format!("refused: {}", e.to_string().trim_start_matches("refused: ")),
            _ => e.to_string(),
        };
        fail(self, cause, msg)
    }

    /// The operator raised the panic flag: records what triggered it, then rolls back.
    async fn panic(
        &mut self,
        step: &str,
        when: &str,
        reason: &str,
    ) -> Result<Outcome, EngineError> {
        let raised_at = std::fs::metadata(&self.panic_flag)
            .and_then(|m| m.modified())
            .ok()
            .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339());
        let reason = self.redactor.redact(reason);
        let flag = self.panic_flag.display().to_string();
        self.record(
            Event::Panic(PanicRaised {
                flag,
                reason: reason.clone(),
                raised_at,
                when: when.to_string(),
            }),
            Some(step),
        )?;
        self.rollback(step, &reason).await
    }
}

/// SIGINT and SIGTERM (a CI cancel) for the life of a run.
struct Signals {
    streams: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    /// Installs the handlers; without them (they cannot be installed) [`Signals::next`] never
    /// completes.
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        Signals {
            streams: signal(SignalKind::interrupt())
                .ok()
                .zip(signal(SignalKind::terminate()).ok()),
        }
    }

    /// Completes at the next SIGINT or SIGTERM; returns the signal's name.
    async fn next(&mut self) -> &'static str {
        let Some((int, term)) = &mut self.streams else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    }
}

/// Per step, what a person must do, from the `incomplete` entries of a `run_finished` record.
pub(super) fn manual_todo(incomplete: &[Incomplete]) -> Vec<(String, Vec<String>)> {
    incomplete
        .iter()
        .map(|i| (i.step.clone(), i.manual.clone()))
        .collect()
}

/// What a [`RunFinished`] says besides its status.
#[derive(Debug, Default)]
pub(super) struct Ending {
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub reason: Option<String>,
    pub incomplete: Vec<Incomplete>,
}

fn summary_line(
    planned: &Planned,
    outputs: &Map<String, Value>,
    evidence: &Map<String, Value>,
) -> String {
    if let Some(Value::String(s)) = evidence.get("summary").or_else(|| outputs.get("summary")) {
        return s.clone();
    }
    let changed: Vec<String> = planned
        .changes
        .iter()
        .filter(|c| c.action != crate::steps::Action::None)
        .map(|c| format!("{} {}", c.action, c.target))
        .collect();
    if changed.is_empty() {
        "no change".into()
    } else {
        changed.join("; ")
    }
}

#[cfg(test)]
mod tests;
