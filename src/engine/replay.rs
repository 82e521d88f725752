//! Replay: what a run's records say has happened, rebuilt by a state machine that refuses a
//! sequence no run can write (a step completed that never applied, a forward step after the
//! rollback began, a record after the end with no resume between), as a saga log's recovery
//! refuses an impossible log instead of guessing.
//!
//! This module owns the rules of a record sequence; it must not act on them (the executor
//! resumes from a [`Replayed`]), read files or render anything.

use super::event::{self, Entry, Event, EventError, RunFinished, RunStarted};
use super::log::Record;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// Where one step stands in the forward run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepState {
    /// Its attempt started; nothing planned yet.
    Started,
    /// Planned; apply comes next.
    Planned,
    /// Applied; verify comes next.
    Applied,
    /// Verified and completed.
    Completed,
    /// Its `when` was false.
    Skipped,
    /// It failed.
    Failed,
}

/// The rollback as the records show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RollbackProgress {
    /// The step whose failure started it (empty for an operator's `cutover rollback`).
    pub failed_step: String,
    /// Steps whose rollback completed.
    pub completed: HashSet<String>,
}

/// What a run's records say, for resume and status.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The run's first record.
    pub start: RunStarted,
    /// Steps whose attempt started, in the order of their first start.
    pub started: Vec<String>,
    /// Each step's state.
    pub steps: HashMap<String, StepState>,
    /// Per step, the `before` of its first plan (what its rollback restores).
    pub before: HashMap<String, Value>,
    /// Per step, the outputs of its last apply, in the order applied.
    pub outputs: Vec<(String, Map<String, Value>)>,
    /// How many times a later process continued the run (`run_resumed` records).
    pub resumes: usize,
    /// The rollback, once it started.
    pub rollback: Option<RollbackProgress>,
    /// The last `run_finished`, when the last process ended the run.
    pub finished: Option<RunFinished>,
}

impl Replayed {
    /// True when the step completed or was skipped (a resume does not run it again).
    pub fn done(&self, step: &str) -> bool {
        matches!(
            self.steps.get(step),
            Some(StepState::Completed | StepState::Skipped)
        )
    }
}

/// Why a log cannot be replayed.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ReplayError {
    /// A record of a type or shape this version does not know.
    #[error(transparent)]
    Unknown(#[from] EventError),
    /// A record that cannot follow the ones before it.
    #[error("record {seq} ({event}{}) cannot follow the records before it: {why}", step.as_ref().map(|s| format!(" of step {s}")).unwrap_or_default())]
    Impossible {
        /// The record's `seq`.
        seq: u64,
        /// Its type.
        event: String,
        /// Its step.
        step: Option<String>,
        /// Which rule it breaks.
        why: String,
    },
    /// The log has no record.
    #[error("the log has no record")]
    Empty,
}

/// Whether the process that wrote the last record is still the one writing (`Live`) or ended it
/// (a resume must come next).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Process {
    Live,
    Interrupted,
    Finished,
}

struct Machine {
    out: Replayed,
    process: Process,
    /// Index of the process (0 the first, +1 per resume) that started each step's attempt.
    attempt_in: HashMap<String, usize>,
    /// Rollback steps started and not yet ended, in this process.
    undoing: HashSet<String>,
    known_steps: HashSet<String>,
}

/// Replays `records` (verified, in order).
///
/// # Errors
/// [`ReplayError`] for an unknown record or an impossible sequence, naming the record.
pub fn replay(records: &[Record]) -> Result<Replayed, ReplayError> {
    let entries = event::entries(records)?;
    replay_entries(&entries)
}

/// [`replay`] over records already typed.
///
/// # Errors
/// As [`replay`].
pub fn replay_entries(entries: &[Entry]) -> Result<Replayed, ReplayError> {
    let first = entries.first().ok_or(ReplayError::Empty)?;
    let Event::RunStarted(start) = &first.event else {
        return Err(impossible(
            first,
            "the first record of a run is run_started",
        ));
    };
    let mut m = Machine {
        known_steps: start.steps.iter().map(|s| s.id.clone()).collect(),
        out: Replayed {
            start: start.clone(),
            started: Vec::new(),
            steps: HashMap::new(),
            before: HashMap::new(),
            outputs: Vec::new(),
            resumes: 0,
            rollback: None,
            finished: None,
        },
        process: Process::Live,
        attempt_in: HashMap::new(),
        undoing: HashSet::new(),
    };
    for e in &entries[1..] {
        m.step(e)?;
    }
    Ok(m.out)
}

fn impossible(e: &Entry, why: impl Into<String>) -> ReplayError {
    let (event, _) = e.event.to_parts();
    ReplayError::Impossible {
        seq: e.seq,
        event,
        step: e.step.clone(),
        why: why.into(),
    }
}

impl Machine {
    fn step(&mut self, e: &Entry) -> Result<(), ReplayError> {
        if let Event::RunResumed(r) = &e.event {
            if self.process == Process::Finished && !r.rollback {
                return Err(impossible(
                    e,
                    "a finished run is continued only by `cutover rollback`",
                ));
            }
            self.process = Process::Live;
            self.out.resumes += 1;
            self.undoing.clear();
            return Ok(());
        }
        if self.process != Process::Live {
            return Err(impossible(
                e,
                "the process that wrote the run ended it; only run_resumed may follow",
            ));
        }
        let step = e.step.as_deref();
        if let Some(s) = step {
            if !self.known_steps.is_empty() && !self.known_steps.contains(s) {
                return Err(impossible(e, "no such step in the run's runbook"));
            }
        }
        let rolling_back = self.out.rollback.is_some();
        let state = step.and_then(|s| self.out.steps.get(s).copied());
        let need_step = || step.ok_or_else(|| impossible(e, "a step record without a step"));
        match &e.event {
            Event::RunStarted(_) => return Err(impossible(e, "a run starts once")),
            Event::RunResumed(_) => unreachable!("handled above"),
            Event::GateBypassed(_)
            | Event::AccountVerified(_)
            | Event::SecretsRead(_)
            | Event::RunRefused(_)
            | Event::HeartbeatStarted(_)
            | Event::HeartbeatFailed(_)
            | Event::Heartbeat(_)
            | Event::PhaseStarted(_) => {}
            Event::StepStarted(_) | Event::StepSkipped(_) => {
                let s = need_step()?;
                if rolling_back {
                    return Err(impossible(e, "no step starts after the rollback began"));
                }
                match state {
                    None => {}
                    Some(StepState::Completed | StepState::Skipped) => {
                        return Err(impossible(e, "the step is done already"))
                    }
                    Some(_) if self.attempt_in.get(s) == Some(&self.out.resumes) => {
                        return Err(impossible(
                            e,
                            "the step's attempt is in flight in this process",
                        ))
                    }
                    Some(_) => {}
                }
                self.attempt_in.insert(s.to_string(), self.out.resumes);
                let skipped = matches!(e.event, Event::StepSkipped(_));
                // A skipped step did nothing: it is not among the steps a rollback undoes.
                if !skipped && !self.out.started.iter().any(|x| x == s) {
                    self.out.started.push(s.to_string());
                }
                let next = if skipped {
                    StepState::Skipped
                } else {
                    StepState::Started
                };
                self.out.steps.insert(s.to_string(), next);
            }
            Event::StepPlanned(p) => {
                let s = need_step()?;
                if rolling_back {
                    return Err(impossible(e, "no step plans after the rollback began"));
                }
                // A dry-run plans a step whose parameters wait on earlier applies without
                // starting it.
                let unstarted_dry_run = state.is_none() && p.dry_run == Some(true);
                if state != Some(StepState::Started) && !unstarted_dry_run {
                    return Err(impossible(e, "a plan follows the step's start"));
                }
                self.out
                    .before
                    .entry(s.to_string())
                    .or_insert_with(|| p.before.clone());
                let next = if p.dry_run == Some(true) {
                    StepState::Completed
                } else {
                    StepState::Planned
                };
                self.out.steps.insert(s.to_string(), next);
            }
            Event::StepAttemptFailed(_) => {
                if state != Some(StepState::Planned) {
                    return Err(impossible(e, "an apply attempt follows the step's plan"));
                }
            }
            Event::StepApplied(a) => {
                let s = need_step()?;
                if state != Some(StepState::Planned) || rolling_back {
                    return Err(impossible(e, "an apply follows the step's plan"));
                }
                self.out.outputs.retain(|(id, _)| id != s);
                self.out.outputs.push((s.to_string(), a.outputs.clone()));
                self.out.steps.insert(s.to_string(), StepState::Applied);
            }
            Event::StepCompleted(_) => {
                let s = need_step()?;
                if state != Some(StepState::Applied) || rolling_back {
                    return Err(impossible(e, "a step completes after its apply"));
                }
                self.out.steps.insert(s.to_string(), StepState::Completed);
            }
            Event::StepFailed(_) => {
                let s = need_step()?;
                if matches!(state, Some(StepState::Completed | StepState::Skipped)) || rolling_back
                {
                    return Err(impossible(e, "only a step in flight fails"));
                }
                self.out.steps.insert(s.to_string(), StepState::Failed);
            }
            Event::Journal(_) => {
                let s = need_step()?;
                if state.is_none() {
                    return Err(impossible(e, "a step journals only once it started"));
                }
                let _ = s;
            }
            Event::Panic(_) | Event::WriteOutage(_) => {
                if rolling_back {
                    return Err(impossible(
                        e,
                        "a panic or a write outage stops the forward run, not its rollback",
                    ));
                }
            }
            Event::RunInterrupted(_) => self.process = Process::Interrupted,
            Event::RollbackStarted(r) => {
                if rolling_back {
                    return Err(impossible(e, "a run rolls back once"));
                }
                self.out.rollback = Some(super::replay::RollbackProgress {
                    failed_step: r.failed_step.clone(),
                    completed: HashSet::new(),
                });
            }
            Event::RollbackRefused(_) => {
                need_step()?;
                if !rolling_back {
                    return Err(impossible(e, "a rollback refuses only once it began"));
                }
            }
            Event::RollbackStepStarted(_) => {
                let s = need_step()?;
                self.undo_check(e, s, state)?;
                self.undoing.insert(s.to_string());
            }
            Event::RollbackStepCompleted(_) => {
                let s = need_step()?;
                self.undo_check(e, s, state)?;
                self.undoing.remove(s);
                if let Some(rb) = &mut self.out.rollback {
                    rb.completed.insert(s.to_string());
                }
            }
            Event::RollbackStepFailed(_) => {
                let s = need_step()?;
                if !self.undoing.remove(s) {
                    return Err(impossible(
                        e,
                        "a step's rollback fails only once it started",
                    ));
                }
            }
            Event::RunFinished(f) => {
                self.process = Process::Finished;
                self.out.finished = Some(f.clone());
            }
        }
        Ok(())
    }

    /// A rollback step needs the rollback begun, the step started forward and not yet undone.
    fn undo_check(&self, e: &Entry, s: &str, state: Option<StepState>) -> Result<(), ReplayError> {
        let Some(rb) = &self.out.rollback else {
            return Err(impossible(
                e,
                "a step is rolled back only once the rollback began",
            ));
        };
        if state.is_none() {
            return Err(impossible(
                e,
                "a step that never started has nothing to roll back",
            ));
        }
        if rb.completed.contains(s) {
            return Err(impossible(e, "the step's rollback completed already"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::*;
    use crate::steps::context::Mode;

    fn start() -> Event {
        Event::RunStarted(RunStarted {
            run_id: "r".into(),
            environment: "staging".into(),
            tier: String::new(),
            account_id: String::new(),
            region: String::new(),
            mode: Mode::Rehearse,
            runbook: String::new(),
            runbook_path: String::new(),
            runbook_digest: String::new(),
            database: String::new(),
            migration: None,
            plan_digest: String::new(),
            operator: String::new(),
            ci_job: None,
            cutover_version: String::new(),
            steps: ["a", "b"]
                .iter()
                .map(|id| StepEntry {
                    phase: "p".into(),
                    id: id.to_string(),
                    kind: "fake".into(),
                })
                .collect(),
            approved: vec![],
        })
    }

    fn started() -> Event {
        Event::StepStarted(StepStarted {
            phase: "p".into(),
            kind: "fake".into(),
            params: Value::Null,
            timeout_s: 1,
        })
    }
    fn planned() -> Event {
        Event::StepPlanned(StepPlanned {
            kind: "fake".into(),
            changes: vec![],
            before: serde_json::json!({"v": 1}),
            dry_run: Some(false),
        })
    }
    fn applied() -> Event {
        Event::StepApplied(StepApplied {
            aws_calls: Vec::new(),
            kind: "fake".into(),
            outputs: Map::new(),
        })
    }
    fn completed() -> Event {
        Event::StepCompleted(StepCompleted {
            aws_calls: Vec::new(),
            kind: "fake".into(),
            evidence: Value::Null,
            summary: String::new(),
            duration_ms: 0,
            attempts: 1,
        })
    }
    fn resumed(rollback: bool) -> Event {
        Event::RunResumed(RunResumed {
            run_id: "r".into(),
            rollback,
        })
    }
    fn rollback_started() -> Event {
        Event::RollbackStarted(RollbackStarted {
            failed_step: "b".into(),
            reason: "x".into(),
        })
    }
    fn undone() -> Event {
        Event::RollbackStepCompleted(RollbackStepCompleted {
            aws_calls: Vec::new(),
            restored: vec![],
            note: None,
        })
    }
    fn undo_started() -> Event {
        Event::RollbackStepStarted(RollbackStepStarted {
            kind: "fake".into(),
        })
    }

    fn run(events: Vec<(Event, Option<&str>)>) -> Result<Replayed, ReplayError> {
        let entries: Vec<Entry> = events
            .into_iter()
            .enumerate()
            .map(|(i, (event, step))| Entry {
                seq: i as u64,
                ts: String::new(),
                step: step.map(str::to_string),
                event,
            })
            .collect();
        replay_entries(&entries)
    }

    fn why(r: Result<Replayed, ReplayError>) -> (u64, String) {
        match r {
            Err(ReplayError::Impossible { seq, why, .. }) => (seq, why),
            other => panic!("expected an impossible sequence, got {other:?}"),
        }
    }

    #[test]
    fn a_run_killed_mid_step_and_resumed_replays_to_its_state() {
        let r = run(vec![
            (start(), None),
            (started(), Some("a")),
            (planned(), Some("a")),
            (applied(), Some("a")),
            (completed(), Some("a")),
            (started(), Some("b")),
            (planned(), Some("b")),
            // killed; a later process starts b's attempt afresh
            (resumed(false), None),
            (started(), Some("b")),
            (planned(), Some("b")),
        ])
        .unwrap();
        assert!(r.done("a"));
        assert!(!r.done("b"));
        assert_eq!(r.started, vec!["a", "b"]);
        assert_eq!(r.resumes, 1);
        assert_eq!(r.steps["b"], StepState::Planned);
        assert_eq!(r.before["b"], serde_json::json!({"v": 1}));
    }

    #[test]
    fn impossible_sequences_are_refused_naming_the_record() {
        // Not starting with run_started.
        assert_eq!(why(run(vec![(started(), Some("a"))])).0, 0);
        // Completed without an apply.
        assert_eq!(
            why(run(vec![
                (start(), None),
                (started(), Some("a")),
                (completed(), Some("a"))
            ]))
            .0,
            2
        );
        // A second start of a step in the same process.
        assert_eq!(
            why(run(vec![
                (start(), None),
                (started(), Some("a")),
                (started(), Some("a"))
            ]))
            .0,
            2
        );
        // A forward step after the rollback began.
        assert_eq!(
            why(run(vec![
                (start(), None),
                (started(), Some("a")),
                (rollback_started(), None),
                (started(), Some("b")),
            ]))
            .0,
            3
        );
        // A rollback of a step that never started.
        assert_eq!(
            why(run(vec![
                (start(), None),
                (started(), Some("a")),
                (rollback_started(), None),
                (undo_started(), Some("b")),
            ]))
            .0,
            3
        );
        // A record after the end with no resume between.
        let fin = Event::RunFinished(RunFinished {
            run_id: "r".into(),
            status: RunStatus::Succeeded,
            environment: String::new(),
            mode: Mode::Rehearse,
            failed_step: None,
            error: None,
            reason: None,
            incomplete: vec![],
            steps_status: None,
            missing_writes: None,
            missing_in: None,
        });
        assert_eq!(
            why(run(vec![
                (start(), None),
                (fin.clone(), None),
                (started(), Some("a"))
            ]))
            .0,
            2
        );
        // A finished run continued by `resume` (not `rollback`).
        assert_eq!(
            why(run(vec![
                (start(), None),
                (fin, None),
                (resumed(false), None)
            ]))
            .0,
            2
        );
        // A step the runbook does not have.
        assert_eq!(
            why(run(vec![(start(), None), (started(), Some("zz"))])).0,
            1
        );
    }

    #[test]
    fn a_rollback_resumed_after_a_kill_knows_which_steps_are_undone() {
        let r = run(vec![
            (start(), None),
            (started(), Some("a")),
            (planned(), Some("a")),
            (applied(), Some("a")),
            (completed(), Some("a")),
            (started(), Some("b")),
            (rollback_started(), None),
            (undo_started(), Some("b")),
            (undone(), Some("b")),
            (undo_started(), Some("a")),
            (resumed(false), None),
            (undo_started(), Some("a")),
        ])
        .unwrap();
        let rb = r.rollback.unwrap();
        assert_eq!(rb.failed_step, "b");
        assert!(rb.completed.contains("b") && !rb.completed.contains("a"));
        // b's rollback completed: it cannot start again.
        let again = run(vec![
            (start(), None),
            (started(), Some("b")),
            (rollback_started(), None),
            (undo_started(), Some("b")),
            (undone(), Some("b")),
            (undo_started(), Some("b")),
        ]);
        assert_eq!(why(again).0, 5);
    }
}

#[cfg(test)]
mod old_logs {
    //! Logs written before the records were typed (by the session-2 binary, kept under
    //! `tests/fixtures/logs/`) still verify, type and replay.
    use super::*;
    use crate::engine::event::RunStatus;

    fn fixture(name: &str) -> Vec<Record> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/logs")
            .join(name);
        crate::engine::log::read_verified(&path).unwrap()
    }

    #[test]
    fn an_old_succeeded_rehearsal_types_every_record_and_replays_to_succeeded() {
        let records = fixture("rehearsal-succeeded.jsonl");
        assert_eq!(event::entries(&records).unwrap().len(), records.len());
        let r = replay(&records).unwrap();
        assert_eq!(r.finished.clone().unwrap().status, RunStatus::Succeeded);
        assert!(r.done("dns") && r.done("health") && r.done("approve"));
        assert!(
            !r.started.iter().any(|s| s == "approve"),
            "a skipped step is not undone"
        );
    }

    #[test]
    fn an_old_rolled_back_rehearsal_replays_with_its_rollback() {
        let records = fixture("rehearsal-refused-rolled-back.jsonl");
        let r = replay(&records).unwrap();
        assert_eq!(r.finished.clone().unwrap().status, RunStatus::RolledBack);
        let rb = r.rollback.unwrap();
        assert_eq!(rb.failed_step, "replicate");
        assert!(rb.completed.contains("ttl") && rb.completed.contains("replicate"));
    }
}
