//! Fuzzing of what a user's files and a run's log reach: the environment and runbook parsers
//! (through `validate`'s own entry points), the template renderer and the event log reader.
//!
//! Inputs are mutations of a corpus (the repository's own files and `tests/fuzz-corpus/`): byte
//! deletions, duplications and insertions of YAML, template and JSON tokens, driven by proptest
//! with a fixed seed, so a failure is reproducible and shrunk to a small input. The property is
//! the contract for bad input: an `Ok` or a located `Err`, never a panic and never a hang.
//!
//! CI runs a bounded number of cases per target (`CUTOVER_FUZZ_CASES`, default 1000). A long run
//! sets `CUTOVER_FUZZ_SECONDS` (e.g. 600) and prints its counts:
//! `CUTOVER_FUZZ_SECONDS=600 cargo test --release --test suite fuzz:: -- --nocapture`.

use crate::common;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Tokens a mutation inserts: the syntax each parser reacts to.
const TOKENS: &[&str] = &[
    "\n",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a\n",
    "\"",
    "'",
    "\\",
    "${",
    "${CUTOVER_FUZZ_X}",
    "${CUTOVER_FUZZ_X:-1}",
    "$$",
    "{{",
    "}}",
    "{%",
    "%}",
    "{% for i in range(99999) %}",
    "{% endfor %}",
    "  ",
    "\t",
    "#",
    "|\n",
    ">\n",
    "!!str ",
    "!!binary ",
    "? ",
    "%",
    "%a\u{e9}",
    "\u{e9}",
    "\u{0}",
    "~",
    "null",
    "-5",
    "1e999",
    "99999999999999999999",
    "true",
    "y",
    "---\n",
    "...\n",
    "\u{feff}",
    "\r\n",
    "\"type\":",
    "\"hash\":\"",
    "\"seq\":",
    "0",
    "{\"a\":",
    "*",
    "**",
    "|",
    ".",
];

/// One mutation: what to do where.
#[derive(Debug, Clone)]
enum Mutation {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: usize },
    Duplicate { at: usize, len: usize },
    Flip { at: usize, byte: u8 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, token)| Mutation::Insert { at, token }),
        (any::<usize>(), 1usize..256).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
    ]
}

fn apply(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in mutations {
        let n = b.len().max(1);
        match *m {
            Mutation::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                if at < end {
                    b.drain(at..end);
                }
            }
            Mutation::Insert { at, token } => {
                let at = at % (b.len() + 1);
                b.splice(at..at, TOKENS[token].bytes());
            }
            Mutation::Duplicate { at, len } => {
                let at = at % n;
                let end = (at + len).min(b.len());
                let part = b.get(at..end).unwrap_or_default().to_vec();
                b.splice(at..at, part);
            }
            Mutation::Flip { at, byte } => {
                if !b.is_empty() {
                    let at = at % b.len();
                    b[at] = byte;
                }
            }
        }
    }
    b
}

/// Runs `check` over mutated seeds: `CUTOVER_FUZZ_CASES` cases (default 1000), or for
/// `CUTOVER_FUZZ_SECONDS`. A panic in `check` fails the test with the shrunk input. Returns
/// (cases run, how many `check` called accepted).
fn fuzz(target: &str, seeds: Vec<Vec<u8>>, check: impl Fn(&[u8]) -> bool) -> (u64, u64) {
    assert!(!seeds.is_empty());
    let cases: u32 = std::env::var("CUTOVER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let seconds: Option<u64> = std::env::var("CUTOVER_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok());
    let strategy = (0..seeds.len(), prop::collection::vec(mutation(), 0..12));
    let start = Instant::now();
    let (mut total, mut accepted) = (0u64, 0u64);
    let mut round = 0u64;
    loop {
        // A fixed seed per round: the same run finds the same inputs.
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&round.to_le_bytes());
        key[8..8 + target.len().min(24)]
            .copy_from_slice(&target.as_bytes()[..target.len().min(24)]);
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &key);
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        let mut runner = TestRunner::new_with_rng(config, rng);
        let counts = std::cell::Cell::new((0u64, 0u64));
        let result = runner.run(&strategy, |(seed, mutations)| {
            let input = apply(&seeds[seed], &mutations);
            let ok = check(&input);
            let (t, a) = counts.get();
            counts.set((t + 1, a + u64::from(ok)));
            Ok(())
        });
        let (t, a) = counts.get();
        total += t;
        accepted += a;
        if let Err(e) = result {
            panic!("fuzz {target}: failed after {total} cases: {e}");
        }
        round += 1;
        match seconds {
            Some(s) if start.elapsed() < Duration::from_secs(s) => continue,
            _ => break,
        }
    }
    println!(
        "fuzz {target}: {total} cases in {:.1}s, {accepted} accepted, {} rejected with an error, 0 panics",
        start.elapsed().as_secs_f64(),
        total - accepted
    );
    (total, accepted)
}

fn read(p: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(p.as_ref()).unwrap_or_else(|e| panic!("{}: {e}", p.as_ref().display()))
}

fn corpus(name: &str) -> PathBuf {
    common::repo().join("tests/fuzz-corpus").join(name)
}

/// A project with the repository's environments and `runbooks/`, for the parsers to read.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for sub in ["environments", "runbooks"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
    }
    for e in ["staging", "dev", "production"] {
        std::fs::copy(
            common::repo().join(format!("environments/{e}.yaml")),
            dir.path().join(format!("environments/{e}.yaml")),
        )
        .unwrap();
    }
    dir
}

#[test]
fn environment_parser_never_panics_and_locates_every_problem() {
    let dir = project();
    let file = dir.path().join("environments/staging.yaml");
    let seeds = vec![
        read(common::repo().join("environments/staging.yaml")),
        read(common::repo().join("environments/production.yaml")),
        read(corpus("weird-environment.yaml")),
    ];
    let (total, _) = fuzz("environment", seeds, |input| {
        std::fs::write(&file, input).unwrap();
        match cutover::config::load_environment(dir.path(), "staging") {
            Ok(_) => true,
            Err(problems) => {
                assert!(!problems.0.is_empty());
                for p in &problems.0 {
                    assert_eq!(p.file, Path::new("environments/staging.yaml"), "{p:?}");
                    assert!(!p.message.is_empty());
                }
                false
            }
        }
    });
    assert!(total > 0);
}

#[test]
fn runbook_parser_and_resolution_never_panic() {
    let dir = project();
    let file = dir.path().join("runbooks/fuzz.yaml");
    let seeds = vec![
        read(common::repo().join("runbooks/shop-cutover.yaml")),
        read(common::repo().join("runbooks/shop-decommission.yaml")),
        read(corpus("anchors.yaml")),
    ];
    fuzz("runbook", seeds, |input| {
        std::fs::write(&file, input).unwrap();
        match cutover::runbook::resolve(dir.path(), "fuzz", "staging") {
            Ok(plan) => {
                // A resolved plan names only kinds this build has.
                for (_, step) in plan.steps() {
                    assert!(cutover::steps::lookup(step.kind.name()).is_some());
                }
                true
            }
            Err(problems) => {
                assert!(!problems.0.is_empty());
                false
            }
        }
    });
}

#[test]
fn template_renderer_never_panics_or_hangs() {
    let text = String::from_utf8(read(corpus("templates.txt"))).unwrap();
    let seeds: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    let ctx = json!({
        "env": {"dns": {"domain": "staging.example.com"}, "tier": "staging"},
        "tf": {"alb_dns_name": "alb.example.com"},
        "vars": {"x": 1},
        "secrets": {"api_token": "fingerprint"},
        "steps": {"replicate": {"outputs": {"subscription": "s"}}},
    });
    fuzz("template", seeds, |input| {
        let t = String::from_utf8_lossy(input);
        let started = Instant::now();
        let rendered = cutover::runbook::template::render_str(&t, &ctx);
        let _ = cutover::runbook::template::references(&t);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "template ran for {:?}: {t}",
            started.elapsed()
        );
        rendered.is_ok()
    });
}

#[test]
fn event_log_reader_never_panics_and_never_accepts_a_changed_record() {
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.jsonl");
    {
        let redactor = Arc::new(cutover::secret::Redactor::default());
        let mut log = cutover::engine::log::EventLog::create(&original, redactor).unwrap();
        use cutover::engine::event::*;
        let start: Event = serde_json::from_value(json!({"type": "run_started", "data": {"run_id": "r", "environment": "staging", "mode": "rehearse", "steps": [{"phase": "p", "id": "a", "kind": "http.check"}]}})).unwrap();
        log.append(&start, None).unwrap();
        log.append(
            &Event::StepStarted(StepStarted {
                phase: "p".into(),
                kind: "http.check".into(),
                params: json!({"url": "http://x"}),
                timeout_s: 30,
            }),
            Some("a"),
        )
        .unwrap();
        log.append(
            &Event::StepCompleted(StepCompleted {
                aws_calls: Vec::new(),
                kind: "http.check".into(),
                evidence: json!({"n": 3}),
                summary: "ok é".into(),
                duration_ms: 1,
                attempts: 1,
            }),
            Some("a"),
        )
        .unwrap();
        let fin: Event = serde_json::from_value(json!({"type": "run_finished", "data": {"run_id": "r", "status": "succeeded", "mode": "rehearse"}})).unwrap();
        log.append(&fin, None).unwrap();
    }
    let bytes = read(&original);
    let records = cutover::engine::log::read_verified(&original).unwrap();
    let file = dir.path().join("events.jsonl");
    fuzz("event-log", vec![bytes.clone()], |input| {
        std::fs::write(&file, input).unwrap();
        match cutover::engine::log::read_verified(&file) {
            Ok(got) => {
                // Accepted: a prefix of the original chain (truncation at a record boundary is
                // what only a signature detects), never an altered record.
                assert!(got.len() <= records.len());
                for (g, r) in got.iter().zip(&records) {
                    assert_eq!(g.hash, r.hash);
                    assert_eq!(g.data, r.data);
                    assert_eq!(g.event, r.event);
                }
                true
            }
            Err(_) => false,
        }
    });
}

/// Runs `cmd` and returns its exit code, its peak resident set size in bytes and its stderr.
///
/// The peak is measured by a python3 process that spawns `cmd` and reads
/// `RUSAGE_CHILDREN`: a process spawned by this test binary directly would report at least the
/// test binary's own peak, because Linux carries the peak of the address space a process execs
/// away from into its `ru_maxrss` (fs/exec.c, `setmax_mm_hiwater_rss`), and the suite's process
/// grows past the limit under test while many tests run. A child forked by the small python
/// process inherits only python's.
fn run_measured(cmd: std::process::Command) -> (i32, u64, String) {
    const MEASURE: &str = "import resource, subprocess, sys\n\
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n\
sys.stderr.buffer.write(r.stderr)\n\
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
sys.exit(r.returncode if r.returncode >= 0 else 128 - r.returncode)\n";
    let mut m = std::process::Command::new("python3");
    m.arg("-c")
        .arg(MEASURE)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => m.env(k, v),
            None => m.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        m.current_dir(d);
    }
    let out = m.output().expect("python3 runs the measured command");
    let kib: u64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("python3 printed the peak in KiB");
    (
        out.status.code().unwrap_or(-1),
        kib * 1024,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn anchor_bombs_and_10_mb_files_are_refused_under_100_mb_of_memory() {
    const LIMIT: u64 = 100 * 1024 * 1024;
    let dir = project();
    // Billion laughs: nine levels of nine aliases each.
    let mut bomb = String::from("name: bomb\nvars:\n  l0: &l0 \"lol\"\n");
    for i in 1..10 {
        let refs = vec![format!("*l{}", i - 1); 9].join(", ");
        bomb.push_str(&format!("  l{i}: &l{i} [{refs}]\n"));
    }
    bomb.push_str("phases: []\n");
    std::fs::write(dir.path().join("runbooks/bomb.yaml"), &bomb).unwrap();
    // 10 MB of valid-looking YAML.
    let mut big = String::from("name: big\nvars:\n");
    let mut i = 0;
    while big.len() < 10 * 1024 * 1024 {
        big.push_str(&format!("  v{i}: \"{}\"\n", "x".repeat(100)));
        i += 1;
    }
    big.push_str("phases: []\n");
    std::fs::write(dir.path().join("runbooks/big.yaml"), &big).unwrap();
    std::fs::write(
        dir.path().join("environments/big.yaml"),
        big.replace("name: big", "name: big\ntier: dev"),
    )
    .unwrap();
    for runbook in ["bomb", "big"] {
        let mut cmd = std::process::Command::new(common::cutover_bin());
        cmd.arg("-C")
            .arg(dir.path())
            .args(["validate", "--runbook", runbook]);
        let (code, rss, err) = run_measured(cmd);
        assert_eq!(code, 2, "{runbook}: {err}");
        assert!(
            err.contains(&format!("runbooks/{runbook}.yaml")),
            "{runbook}: {err}"
        );
        assert!(rss < LIMIT, "{runbook}: {rss} bytes resident");
        println!(
            "{runbook}: refused, exit 2, peak RSS {} MiB",
            rss / (1024 * 1024)
        );
    }
}

/// Replay over random sequences of well-formed records: never a panic; an accepted sequence
/// never has a step done that did not apply (or skip), nor an undone step that never started,
/// and the replay of any prefix of an accepted sequence is accepted too (the state machine only
/// refuses at the record that breaks a rule).
#[test]
fn replay_never_panics_and_accepts_only_coherent_sequences() {
    use cutover::engine::event::*;
    use cutover::engine::replay::{replay_entries, StepState};
    let kit = |i: usize| -> (Event, Option<&'static str>) {
        let step = if i % 2 == 0 { "a" } else { "b" };
        let e: Event = match i / 2 {
            0 => serde_json::from_value(json!({"type": "step_started", "data": {"phase": "p", "kind": "k", "params": {}, "timeout_s": 1}})).unwrap(),
            1 => serde_json::from_value(json!({"type": "step_planned", "data": {"kind": "k", "changes": [], "before": null, "dry_run": false}})).unwrap(),
            2 => serde_json::from_value(json!({"type": "step_applied", "data": {"kind": "k", "outputs": {}}})).unwrap(),
            3 => serde_json::from_value(json!({"type": "step_completed", "data": {"kind": "k"}})).unwrap(),
            4 => serde_json::from_value(json!({"type": "step_failed", "data": {"kind": "k", "error": "x"}})).unwrap(),
            5 => serde_json::from_value(json!({"type": "step_skipped", "data": {"kind": "k", "reason": "x"}})).unwrap(),
            6 => serde_json::from_value(json!({"type": "traffic_old_answers_expired", "data": {"ttl": 5}})).unwrap(),
            7 => serde_json::from_value(json!({"type": "rollback_step_started", "data": {"kind": "k"}})).unwrap(),
            8 => serde_json::from_value(json!({"type": "rollback_step_completed", "data": {"restored": []}})).unwrap(),
            9 => serde_json::from_value(json!({"type": "rollback_step_failed", "data": {"error": "x"}})).unwrap(),
            10 => return (serde_json::from_value(json!({"type": "rollback_started", "data": {"failed_step": step, "reason": "x"}})).unwrap(), None),
            11 => return (serde_json::from_value(json!({"type": "run_resumed", "data": {"run_id": "r", "rollback": i % 2 == 0}})).unwrap(), None),
            12 => return (serde_json::from_value(json!({"type": "run_finished", "data": {"run_id": "r", "status": "succeeded", "mode": "rehearse"}})).unwrap(), None),
            _ => return (serde_json::from_value(json!({"type": "run_interrupted", "data": {"run_id": "r"}})).unwrap(), Some(step)),
        };
        (e, Some(step))
    };
    let start: Event = serde_json::from_value(json!({"type": "run_started", "data": {"run_id": "r", "environment": "e", "mode": "rehearse", "steps": [{"phase": "p", "id": "a", "kind": "k"}, {"phase": "p", "id": "b", "kind": "k"}]}})).unwrap();
    let entries = |picks: &[usize]| -> Vec<Entry> {
        std::iter::once((start.clone(), None))
            .chain(picks.iter().map(|&i| kit(i)))
            .enumerate()
            .map(|(n, (event, step))| Entry {
                seq: n as u64,
                ts: String::new(),
                step: step.map(str::to_string),
                event,
            })
            .collect()
    };
    let cases: u32 = std::env::var("CUTOVER_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        * 5;
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &[7u8; 32]);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        rng,
    );
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(&prop::collection::vec(0usize..28, 0..24), |picks| {
            let all = entries(&picks);
            if let Ok(r) = replay_entries(&all) {
                accepted.set(accepted.get() + 1);
                for (step, state) in &r.steps {
                    let applied = all.iter().any(|e| {
                        e.step.as_deref() == Some(step.as_str())
                            && matches!(e.event, Event::StepApplied(_) | Event::StepSkipped(_))
                    });
                    if matches!(state, StepState::Completed | StepState::Skipped) {
                        prop_assert!(applied, "{step} done without an apply: {picks:?}");
                    }
                }
                if let Some(rb) = &r.rollback {
                    for s in &rb.completed {
                        prop_assert!(
                            r.steps.contains_key(s),
                            "{s} undone, never started: {picks:?}"
                        );
                    }
                }
                for n in 1..all.len() {
                    prop_assert!(
                        replay_entries(&all[..n]).is_ok(),
                        "a prefix of {picks:?} refused"
                    );
                }
            }
            Ok(())
        })
        .unwrap();
    // The generator must reach accepted sequences, or the properties above check nothing.
    assert!(
        accepted.get() > cases / 100,
        "only {} of {cases} accepted",
        accepted.get()
    );
}
