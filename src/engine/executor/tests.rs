//! The step contract's rules (deadline, retries, journal failure, dry-run failure,
//! rollback refusal and stop), with fake step kinds over a temporary log; no provider is
//! reached (the fakes never ask for one).
use super::*;
use crate::runbook::{PlanPhase, PlanStep};
use crate::steps::{ParamSpec, Restored, StepKind};
use async_trait::async_trait;

/// What a fake kind does.
#[derive(Clone, Copy, PartialEq)]
enum Fake {
    /// Applies; its rollback succeeds.
    Ok,
    /// Applies; undoing it would lose data (a refusal).
    Refuses,
    /// Applies; its rollback stops the rollback (a gate).
    StopsRollback,
    /// Its apply fails.
    Fails,
    /// Its plan fails.
    PlanFails,
    /// Plan, apply and verify each take 600 ms (of a 1 s timeout).
    Slow,
    /// Its first apply fails (counted in `FLAKY_APPLIES`), the next one succeeds.
    FailsFirstApply,
    /// Its apply journals an intent the log cannot take, then carries on as if it had.
    CannotJournal,
    /// Its apply hangs far past its deadline.
    Hangs,
    /// Its apply stops at a safe point because the panic flag is raised.
    Panics,
    /// Its apply waits 60 s through [`StepContext::wait`]; 300 ms in, another thread
    /// raises the panic flag.
    PanickedWhileWaiting,
    /// Applies; its verify raises the panic flag as it returns (the last moment of a step).
    PanickedAtTheEnd,
}

const SECONDS_5: std::time::Duration = std::time::Duration::from_secs(5);
const SECOND: std::time::Duration = std::time::Duration::from_secs(1);

static FLAKY_APPLIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static UNJOURNALED_APPLIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
/// The record name a [`Fake::CannotJournal`] step journals; the test's mirror refuses it.
const UNJOURNALABLE: &str = "fake_unjournalable";

#[async_trait]
impl StepKind for Fake {
    fn name(&self) -> &'static str {
        "fake.step"
    }
    fn purpose(&self) -> &'static str {
        "a fake"
    }
    fn undo(&self) -> &'static str {
        "a fake undo"
    }
    fn params(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    fn output_specs(&self) -> Vec<ParamSpec> {
        Vec::new()
    }
    fn params_schema(&self, _g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "object" })
    }
    async fn plan(&self, _cx: &StepContext) -> Result<Planned, StepError> {
        match self {
            Fake::PlanFails => Err(StepError::Check("cannot see the zone".into())),
            Fake::Slow => {
                tokio::time::sleep(std::time::Duration::from_millis(600)).await;
                Ok(Planned::default())
            }
            _ => Ok(Planned::default()),
        }
    }
    async fn apply(&self, cx: &StepContext, _p: &Planned) -> Result<Map<String, Value>, StepError> {
        use std::sync::atomic::Ordering;
        match self {
            Fake::Fails => Err(StepError::Check("it broke".into())),
            Fake::Slow => {
                tokio::time::sleep(std::time::Duration::from_millis(600)).await;
                Ok(Map::new())
            }
            Fake::FailsFirstApply => {
                if FLAKY_APPLIES.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(StepError::Check("a transient error".into()))
                } else {
                    Ok(Map::new())
                }
            }
            Fake::CannotJournal => {
                UNJOURNALED_APPLIES.fetch_add(1, Ordering::SeqCst);
                // A careless step: it ignores the journal's error and reports a failure
                // of its own, which must not be retried like one.
                let _ = (cx.journal)(Journal::TtlWait(crate::steps::journal::TtlWait {
                    record: UNJOURNALABLE.into(),
                    previous_ttl: 0,
                    lowered_at: String::new(),
                    wait_s: 0,
                }));
                Err(StepError::Check("something else".into()))
            }
            Fake::Hangs => {
                tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
                Ok(Map::new())
            }
            Fake::Panics => {
                std::fs::write(cx.panic_flag.unwrap(), "checkout errors\n").unwrap();
                cx.check_deadline("the fake's condition")?;
                Ok(Map::new())
            }
            Fake::PanickedWhileWaiting => {
                let flag = cx.panic_flag.unwrap().to_path_buf();
                std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    std::fs::write(flag, "orders failing\n").unwrap();
                });
                cx.wait(std::time::Duration::from_secs(60), "the fake's samples")
                    .await?;
                Ok(Map::new())
            }
            _ => Ok(Map::new()),
        }
    }
    async fn verify(
        &self,
        _cx: &StepContext,
        _o: &Map<String, Value>,
    ) -> Result<Map<String, Value>, StepError> {
        if *self == Fake::Slow {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
        if *self == Fake::PanickedAtTheEnd {
            std::fs::write(_cx.panic_flag.unwrap(), "late\n").unwrap();
        }
        Ok(Map::new())
    }
    async fn rollback_refusal(
        &self,
        _cx: &StepContext,
        _b: &Value,
        outputs: Option<&Map<String, Value>>,
    ) -> Result<Option<String>, StepError> {
        Ok((*self == Fake::Refuses && outputs.is_some()).then(|| "would lose 3 rows".to_string()))
    }
    async fn rollback(
        &self,
        _cx: &StepContext,
        _b: &Value,
        _o: Option<&Map<String, Value>>,
    ) -> Result<Vec<Restored>, StepError> {
        match self {
            Fake::StopsRollback => Err(StepError::Gate("not caught up".into())),
            _ => Ok(Vec::new()),
        }
    }
}

static OK: Fake = Fake::Ok;
static REFUSES: Fake = Fake::Refuses;
static STOPS: Fake = Fake::StopsRollback;
static FAILS: Fake = Fake::Fails;
static PLAN_FAILS: Fake = Fake::PlanFails;
static SLOW: Fake = Fake::Slow;
static FLAKY: Fake = Fake::FailsFirstApply;
static CANNOT_JOURNAL: Fake = Fake::CannotJournal;
static HANGS: Fake = Fake::Hangs;
static PANICS: Fake = Fake::Panics;
static PANICKED_WAITING: Fake = Fake::PanickedWhileWaiting;
static PANICKED_AT_END: Fake = Fake::PanickedAtTheEnd;

#[tokio::test]
async fn a_panic_flag_raised_during_the_last_steps_wait_stops_it_and_rolls_back() {
    // The last step would wait 60 s; the flag rises 300 ms in. The run must end well before
    // the wait would have (10 s here; the safe points come every 250 ms).
    let (outcome, records) = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        run_with(
            &[("first", &OK), ("health", &PANICKED_WAITING)],
            Mode::Rehearse,
            0,
            std::time::Duration::from_secs(120),
        ),
    )
    .await
    .expect("the panic flag was not honoured during the step's wait");
    assert_eq!(outcome.unwrap(), Outcome::RolledBack, "{records:?}");
    assert!(has(&records, "panic", "health"), "{records:?}");
    assert!(!has(&records, "step_completed", "health"), "{records:?}");
    assert!(
        has(&records, "rollback_step_completed", "first"),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_panic_flag_raised_as_the_last_step_completes_still_rolls_back() {
    let (outcome, records) = run_with(
        &[("first", &OK), ("health", &PANICKED_AT_END)],
        Mode::Rehearse,
        0,
        SECONDS_5,
    )
    .await;
    assert_eq!(outcome.unwrap(), Outcome::RolledBack, "{records:?}");
    assert!(has(&records, "step_completed", "health"), "{records:?}");
    assert!(has(&records, "panic", "health"), "{records:?}");
    assert!(
        has(&records, "rollback_step_completed", "health"),
        "{records:?}"
    );
    assert!(
        has(&records, "rollback_step_completed", "first"),
        "{records:?}"
    );
}

fn plan(steps: &[(&str, &'static Fake)]) -> (tempfile::TempDir, Plan) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("environments")).unwrap();
    std::fs::write(
        dir.path().join("environments/staging.yaml"),
        include_str!("../../../environments/staging.yaml"),
    )
    .unwrap();
    let env = crate::config::load_environment(dir.path(), "staging").unwrap();
    let plan = Plan {
        runbook_name: "fake".into(),
        runbook_path: "runbooks/fake.yaml".into(),
        runbook_digest: "0".repeat(64),
        plan_digest: "0".repeat(64),
        database: env.database.name.clone(),
        env,
        vars: Default::default(),
        heartbeat: None,
        warnings: Vec::new(),
        phases: vec![PlanPhase {
            name: "only".into(),
            steps: steps
                .iter()
                .map(|(id, kind)| PlanStep {
                    id: id.to_string(),
                    kind: *kind,
                    params: Map::new(),
                    when: None,
                    timeout: std::time::Duration::from_secs(5),
                    retries: 0,
                    rollback: RollbackPolicy::Auto,
                    description: None,
                    line: 1,
                })
                .collect(),
        }],
    };
    (dir, plan)
}

/// Runs `steps` as a rehearsal to its outcome; returns it and the records (event, step).
async fn run(steps: &[(&str, &'static Fake)]) -> (Outcome, Vec<(String, String)>) {
    let (outcome, records) = run_with(steps, Mode::Rehearse, 0, SECONDS_5).await;
    (outcome.unwrap(), records)
}

/// Runs `steps` in `mode`, each with `retries` and `timeout`, over a log whose mirror
/// refuses the [`UNJOURNALABLE`] event; returns the result and the records on disk.
async fn run_with(
    steps: &[(&str, &'static Fake)],
    mode: Mode,
    retries: u32,
    timeout: std::time::Duration,
) -> (Result<Outcome, EngineError>, Vec<(String, String)>) {
    let (dir, mut plan) = plan(steps);
    for s in &mut plan.phases[0].steps {
        s.retries = retries;
        s.timeout = timeout;
    }
    let ui = Ui::new(crate::engine::ui::OutputFormat::Json);
    let redactor = Arc::new(Redactor::default());
    let log_path = dir.path().join("events.jsonl");
    let mut log = EventLog::create(&log_path, redactor.clone()).unwrap();
    log.set_mirror(Box::new(|_name: &str, bytes: Vec<u8>| {
        if String::from_utf8_lossy(&bytes).contains(UNJOURNALABLE) {
            Err("the store refused the upload".to_string())
        } else {
            Ok(())
        }
    }))
    .unwrap();
    let providers = Providers::new(plan.env.clone(), "test-run", redactor.clone());
    let mut ex = crate::engine::executor_for(
        dir.path(),
        &plan,
        mode,
        "test-run",
        dir.path().join("run"),
        &ui,
        providers,
        redactor,
        log,
    )
    .unwrap();
    ex.panic_flag = dir.path().join("panic-staging");
    let outcome = ex.run_steps().await;
    let records = super::super::log::read_verified(&log_path)
        .unwrap()
        .into_iter()
        .map(|r| (r.event, r.step.unwrap_or_default()))
        .collect();
    (outcome, records)
}

fn has(records: &[(String, String)], event: &str, step: &str) -> bool {
    records.iter().any(|(e, s)| e == event && s == step)
}

#[tokio::test]
async fn a_step_whose_undo_would_lose_data_refuses_the_whole_rollback_before_anything_is_undone() {
    let (outcome, records) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run(&[("a", &OK), ("keep", &REFUSES), ("broken", &FAILS)]),
    )
    .await
    .unwrap();
    match outcome {
        Outcome::RollbackIncomplete(todo) => assert_eq!(todo[0].0, "keep"),
        other => panic!("{other:?}"),
    }
    assert!(has(&records, "rollback_refused", "keep"));
    assert!(
        !records.iter().any(|(e, _)| e == "rollback_step_started"),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_gate_in_a_rollback_stops_it_before_the_earlier_steps() {
    let (outcome, records) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run(&[("first", &OK), ("fallback", &STOPS), ("broken", &FAILS)]),
    )
    .await
    .unwrap();
    assert!(
        matches!(outcome, Outcome::RollbackIncomplete(_)),
        "{outcome:?}"
    );
    assert!(has(&records, "rollback_step_completed", "broken"));
    assert!(has(&records, "rollback_step_failed", "fallback"));
    assert!(
        !has(&records, "rollback_step_started", "first"),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_clean_rollback_undoes_every_started_step_newest_first() {
    let (outcome, records) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run(&[("first", &OK), ("second", &OK), ("broken", &FAILS)]),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::RolledBack);
    let order: Vec<&str> = records
        .iter()
        .filter(|(e, _)| e == "rollback_step_completed")
        .map(|(_, s)| s.as_str())
        .collect();
    assert_eq!(order, ["broken", "second", "first"]);
}

#[tokio::test]
async fn a_clean_run_plans_applies_and_verifies_each_step_in_order_and_succeeds() {
    let (outcome, records) = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        run(&[("first", &OK), ("second", &OK)]),
    )
    .await
    .unwrap();
    assert_eq!(outcome, Outcome::Succeeded, "{records:?}");
    let steps: Vec<(&str, &str)> = records
        .iter()
        .filter(|(_, s)| !s.is_empty())
        .map(|(e, s)| (e.as_str(), s.as_str()))
        .collect();
    let lifecycle = [
        "step_started",
        "step_planned",
        "step_applied",
        "step_completed",
    ];
    let want: Vec<(&str, &str)> = ["first", "second"]
        .iter()
        .flat_map(|s| lifecycle.iter().map(move |e| (*e, *s)))
        .collect();
    assert_eq!(steps, want);
    assert!(
        !records.iter().any(|(e, _)| e.starts_with("rollback")),
        "{records:?}"
    );
}

#[tokio::test]
async fn deadline_one_per_attempt_covers_plan_apply_and_verify() {
    // 600 ms each of a 1 s timeout: every phase alone fits, the attempt does not.
    let (outcome, records) = run_with(&[("slow", &SLOW)], Mode::Rehearse, 0, SECOND).await;
    assert_eq!(outcome.unwrap(), Outcome::RolledBack, "{records:?}");
    assert!(has(&records, "step_failed", "slow"), "{records:?}");
    assert!(!has(&records, "step_completed", "slow"), "{records:?}");
}

#[tokio::test]
async fn a_step_hanging_past_its_deadline_fails_and_rolls_back() {
    let (outcome, records) = run_with(
        &[("first", &OK), ("hangs", &HANGS)],
        Mode::Rehearse,
        3,
        SECOND,
    )
    .await;
    assert_eq!(outcome.unwrap(), Outcome::RolledBack);
    assert!(has(&records, "step_failed", "hangs"));
    assert!(has(&records, "rollback_step_completed", "first"));
    // A timeout uses the whole attempt: no retry is started after it.
    assert!(
        !has(&records, "step_attempt_failed", "hangs"),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_step_failing_on_its_first_apply_is_retried_within_its_deadline() {
    // The first retry waits 2 s (with jitter, at most 4 s): well inside 30 s.
    let timeout = std::time::Duration::from_secs(30);
    let (outcome, records) = run_with(&[("flaky", &FLAKY)], Mode::Rehearse, 2, timeout).await;
    assert_eq!(outcome.unwrap(), Outcome::Succeeded, "{records:?}");
    assert!(has(&records, "step_attempt_failed", "flaky"));
    assert!(has(&records, "step_completed", "flaky"));
    assert_eq!(FLAKY_APPLIES.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn journal_failure_stops_the_run_and_is_not_retried() {
    let (outcome, records) = run_with(
        &[
            ("first", &OK),
            ("unjournaled", &CANNOT_JOURNAL),
            ("after", &OK),
        ],
        Mode::Rehearse,
        3,
        SECONDS_5,
    )
    .await;
    assert!(matches!(outcome, Err(EngineError::Log(_))), "{outcome:?}");
    assert_eq!(
        UNJOURNALED_APPLIES.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the apply was retried after the log failed"
    );
    assert!(
        !has(&records, "step_attempt_failed", "unjournaled"),
        "{records:?}"
    );
    assert!(!has(&records, "rollback_started", ""), "{records:?}");
    assert!(!has(&records, "step_started", "after"), "{records:?}");
}

#[tokio::test]
async fn dry_run_plan_failure_is_a_failed_dry_run_not_a_rollback() {
    let (outcome, records) = run_with(
        &[("first", &OK), ("zone", &PLAN_FAILS)],
        Mode::DryRun,
        0,
        SECONDS_5,
    )
    .await;
    match outcome.unwrap() {
        Outcome::DryRunFailed { step, error } => {
            assert_eq!(step, "zone");
            assert!(error.contains("cannot see the zone"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !records.iter().any(|(e, _)| e.starts_with("rollback")),
        "{records:?}"
    );
}

#[tokio::test]
async fn a_raised_panic_flag_rolls_back_by_its_variant_not_its_text() {
    let (outcome, records) = run_with(
        &[("first", &OK), ("panics", &PANICS)],
        Mode::Rehearse,
        3,
        SECONDS_5,
    )
    .await;
    assert_eq!(outcome.unwrap(), Outcome::RolledBack, "{records:?}");
    assert!(has(&records, "panic", "panics"), "{records:?}");
    assert!(
        !has(&records, "step_attempt_failed", "panics"),
        "{records:?}"
    );
    assert!(has(&records, "rollback_step_completed", "first"));
}
