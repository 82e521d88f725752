//! Crash at every record: a rehearsal of the shop runbook (and a rollback after its flip) is
//! killed with SIGKILL at one record after another, resumed each time, and must end in the same
//! state as a clean run of the same runbook in another sandbox.
//!
//! The kill points come from the clean run's own log: one point after every record (type, step
//! and occurrence within the step), and one before every record that follows a side effect
//! (an apply's result, a verify's evidence, a change submitted before its INSYNC, a rollback
//! step's undo, the end of the run). The engine's `CUTOVER_CRASH_AT` hook kills the process
//! right before or right after that append (after: the record is fsynced and nothing after it
//! happened; before: the work before it is done and unrecorded). The points are taken in the
//! clean run's order by chains of processes: the first `rehearse`, then one `resume` per point,
//! each killed at its point; the last `resume` finishes the run. The points are shared out among
//! [`CHAINS`] chains (every other point to each), each in a sandbox of its own and all at once,
//! started once the clean run is over and its sandbox given back (its end state is read first),
//! so the test takes the time of half the kills; each chain is still one run killed at every one
//! of its points and resumed, and every point is covered by one chain.
//!
//! What "the same state" means: the DNS record sets of the environment, the Secrets of the shop
//! namespace (keys, and which database each URL names), the Deployments' generations (one
//! restart each, never two), both databases' table fingerprints, the replication objects and
//! the frozen flags on both servers, the RDS snapshots; besides, no acknowledged heartbeat write
//! missing, every step completed once, the log verifies. Values that differ between sandboxes
//! by construction (run ids, account ids, ports, passwords) are named by role before comparing.
//!
//! Each test writes what it covered to `target/crash-report-<name>.txt` and prints it.

use crate::common;

use common::{run_with_timeout, text, Sandbox};
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;

/// One kill point, as `CUTOVER_CRASH_AT` spells it.
#[derive(Debug, Clone)]
struct Point {
    before: bool,
    event: String,
    step: Option<String>,
    /// A data field that names what the record is about, with its JSON text: the traffic stage
    /// of a journal record (a resumed `route53.cutover` continues from the stage DNS shows, so
    /// its records are matched by stage, not counted), the phase of a `phase_started` (every
    /// resumed process starts its first phase again).
    field: Option<(&'static str, String)>,
    nth: usize,
}

impl Point {
    fn spec(&self) -> String {
        let when = if self.before { "before" } else { "after" };
        let stage = self
            .field
            .as_ref()
            .map(|(k, v)| format!("#{k}={v}"))
            .unwrap_or_default();
        match &self.step {
            Some(s) => format!("{when}:{}:{s}{stage}@{}", self.event, self.nth),
            None => format!("{when}:{}{stage}@{}", self.event, self.nth),
        }
    }
}

/// Records whose preceding work is a side effect that is not yet on record: a point before each.
const BEFORE: [&str; 6] = [
    "step_applied",
    "step_completed",
    "traffic_stage_insync",
    "traffic_returned_insync",
    "rollback_step_completed",
    "run_finished",
];

/// The kill points of a clean run's records from `from` on, in its order. A traffic stage's
/// records are named by their stage; other step records count their occurrence within the step
/// (a resumed process starts the step in flight afresh); records of no step are the first of
/// their type in the process that appends them.
fn points(records: &[Value], from: usize) -> Vec<Point> {
    let mut out = Vec::new();
    let mut within: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &records[from..] {
        let event = r["type"].as_str().unwrap().to_string();
        let step = r["step"].as_str().map(str::to_string);
        let field = match (event.as_str(), r["data"]["stage"].as_u64()) {
            (_, Some(n)) => Some(("stage", n.to_string())),
            ("phase_started", _) => Some(("phase", r["data"]["phase"].to_string())),
            _ => None,
        };
        let nth = match &step {
            _ if field.is_some() => 1,
            Some(s) => {
                if event == "step_started" || event == "rollback_step_started" {
                    within.retain(|(st, _), _| st != s);
                }
                let n = within.entry((s.clone(), event.clone())).or_insert(0);
                *n += 1;
                *n
            }
            None => 1,
        };
        // The TTL wait is journaled only while answers cached under the old TTL are pending; a
        // process resumed after they expired has nothing to wait for, so the point cannot be
        // reached by a resume (the first process covers it when it is the first point).
        if event == "ttl_wait" && !out.is_empty() {
            continue;
        }
        if BEFORE.contains(&event.as_str()) {
            out.push(Point {
                before: true,
                event: event.clone(),
                step: step.clone(),
                field: field.clone(),
                nth,
            });
        }
        out.push(Point {
            before: false,
            event,
            step,
            field,
            nth,
        });
    }
    out
}

/// The state a run leaves, with sandbox-specific values named by role.
fn end_state(
    sb: &Sandbox,
    run: &str,
    legacy_url: &str,
    legacy_value: &str,
) -> BTreeMap<String, String> {
    let records = sb.records(run);
    let aws_value = records
        .iter()
        .find(|r| r["type"] == "step_started" && r["step"] == "dns")
        .and_then(|r| r["data"]["params"]["to"].as_str())
        .unwrap_or("(no dns step)")
        .trim_end_matches('.')
        .to_string();
    let target_app = sb.var("CUTOVER_STAGING_TARGET_APP_DATABASE_URL");
    let account = sb.state["accounts"]["staging"]
        .as_str()
        .unwrap()
        .to_string();
    let short = run.rsplit('-').next().unwrap().to_string();
    let name = |v: &str| -> String {
        let mut v = v.to_string();
        for (real, role) in [
            (target_app.as_str(), "TARGET_APP_URL"),
            (legacy_url, "LEGACY_APP_URL"),
            (legacy_value.trim_end_matches('.'), "LEGACY_HOST"),
            (aws_value.as_str(), "AWS_HOST"),
            (run, "RUN"),
            (run.replace('-', "_").as_str(), "RUN"),
            (short.as_str(), "RUN"),
            (account.as_str(), "ACCOUNT"),
        ] {
            if !real.is_empty() {
                v = v.replace(real, role);
            }
        }
        v
    };
    let mut state = BTreeMap::new();
    let mut dns: Vec<String> = sb.dns_records("staging").iter().map(|r| name(r)).collect();
    dns.sort();
    state.insert("dns".into(), dns.join("\n"));
    let secrets = sb.kube_get("staging", "/api/v1/namespaces/shop/secrets");
    let mut names: Vec<String> = Vec::new();
    for s in secrets["items"].as_array().unwrap() {
        let n = s["metadata"]["name"].as_str().unwrap();
        let mut keys: Vec<String> = Vec::new();
        for k in s["data"]
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let v = sb.secret_value("staging", n, &k).unwrap_or_default();
            let shown = name(&v);
            // A value that is no known URL is compared by presence only (it is a secret).
            let shown = if shown == v {
                "(other)".to_string()
            } else {
                shown
            };
            keys.push(format!("{k}={shown}"));
        }
        names.push(format!("{} {}", name(n), keys.join(",")));
    }
    names.sort();
    state.insert("secrets".into(), names.join("\n"));
    let deps = sb.kube_get("staging", "/apis/apps/v1/namespaces/shop/deployments");
    let mut gens: Vec<String> = deps["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} generation {}",
                d["metadata"]["name"].as_str().unwrap(),
                d["metadata"]["generation"]
            )
        })
        .collect();
    gens.sort();
    state.insert("deployments".into(), gens.join("\n"));
    for side in ["SOURCE", "TARGET"] {
        let url = sb.var(&format!("CUTOVER_STAGING_{side}_DATABASE_URL"));
        state.insert(
            format!("{side} tables"),
            format!("{:?}", sb.table_fingerprints(&url)),
        );
        let mut objects = Vec::new();
        for q in [
            "SELECT 'slot ' || slot_name FROM pg_replication_slots",
            "SELECT 'publication ' || pubname FROM pg_publication",
            "SELECT 'subscription ' || subname || ' enabled ' || subenabled FROM pg_subscription",
            "SELECT 'setting ' || coalesce(d.datname, '*') || ' ' || array_to_string(s.setconfig, ',') FROM pg_db_role_setting s LEFT JOIN pg_database d ON d.oid = s.setdatabase",
            "SELECT 'schema ' || nspname FROM pg_namespace WHERE nspname LIKE 'cutover%'",
        ] {
            for r in sb.sql(&url, q) {
                objects.push(name(&r[0].clone().unwrap_or_default()));
            }
        }
        objects.sort();
        state.insert(format!("{side} objects"), objects.join("\n"));
    }
    let snapshots: Vec<String> = sb
        .rds_snapshots("staging")
        .iter()
        // moto names its automated snapshots `rds:<instance>-<yyyy-mm-dd-hh-mm>`: the minute
        // differs between two sandboxes.
        .map(|s| match s.strip_prefix("rds:") {
            Some(rest) => format!("rds:{}-(time)", rest.rsplitn(6, '-').last().unwrap_or(rest)),
            None => name(s),
        })
        .collect();
    state.insert("snapshots".into(), snapshots.join("\n"));
    state
}

/// Per step: how often it completed (forward) and how often its rollback completed.
fn completions(records: &[Value]) -> BTreeMap<String, (usize, usize)> {
    let mut out: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in records {
        let Some(step) = r["step"].as_str() else {
            continue;
        };
        match r["type"].as_str().unwrap() {
            "step_completed" | "step_skipped" => out.entry(step.into()).or_default().0 += 1,
            "rollback_step_completed" => out.entry(step.into()).or_default().1 += 1,
            _ => {}
        }
    }
    out
}

struct Chain {
    covered: Vec<String>,
    /// Points a resumed run never met, each with the fired point that explains why.
    passed_over: Vec<(String, String)>,
    exit: Option<i32>,
}

/// Whether `point` may be passed over after `fired` was the last point hit: a kill right before
/// a record leaves its work done and unrecorded, and the resumed run may see the work done and
/// never write that record (a traffic stage already INSYNC is not submitted again, so its
/// `traffic_stage_insync` is not written again).
fn may_pass_over(point: &Point, fired: Option<&Point>) -> bool {
    fired.is_some_and(|f| {
        f.before
            && !point.before
            && f.event == point.event
            && f.step == point.step
            && f.field == point.field
    })
}

/// Runs `first`, then `resume`, each with every point not yet met (the process dies at the first
/// it meets and names it), until the points are used up; then a last `resume` finishes the run.
fn crash_chain(sb: &Sandbox, first: &[&str], points: &[Point]) -> Chain {
    let mut covered = Vec::new();
    let mut passed_over = Vec::new();
    let mut run: Option<String> = None;
    let mut next = 0;
    let mut last_fired: Option<usize> = None;
    while next < points.len() {
        let specs: Vec<String> = points[next..].iter().map(Point::spec).collect();
        let mut cmd = match &run {
            None => sb.command(first),
            Some(r) => sb.command(&["resume", r]),
        };
        cmd.env("CUTOVER_CRASH_AT", specs.join(","));
        let out = run_with_timeout(cmd, 600);
        if run.is_none() {
            run = sb.run_ids().pop();
        }
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let fired = stderr
            .lines()
            .find_map(|l| l.strip_prefix("cutover: crash point "))
            .and_then(|spec| specs.iter().position(|s| s == spec))
            .map(|i| next + i);
        match (out.status.signal(), fired) {
            (Some(9), Some(i)) => {
                for skipped in &points[next..i] {
                    let why = last_fired.map(|f| points[f].spec()).unwrap_or_default();
                    assert!(
                        may_pass_over(skipped, last_fired.map(|f| &points[f])),
                        "the resumed run passed over {} (the last kill was at {why:?})\n{}",
                        skipped.spec(),
                        text(&out)
                    );
                    passed_over.push((skipped.spec(), why));
                }
                covered.push(points[i].spec());
                last_fired = Some(i);
                next = i + 1;
            }
            _ => panic!(
                "no kill point was met (exit {:?}); not reached: {specs:?}\n{}",
                out.status.code(),
                text(&out)
            ),
        }
    }
    let run = run.expect("a run was started");
    let out = sb.cutover(&["resume", &run]);
    Chain {
        covered,
        passed_over,
        exit: out.status.code(),
    }
}

fn report(name: &str, points: &[Point], chains: &[Chain], clean: &[Value]) -> String {
    let chain = Chain {
        covered: chains.iter().flat_map(|c| c.covered.clone()).collect(),
        passed_over: chains.iter().flat_map(|c| c.passed_over.clone()).collect(),
        exit: None,
    };
    let types: std::collections::BTreeSet<&str> =
        clean.iter().map(|r| r["type"].as_str().unwrap()).collect();
    let before = points.iter().filter(|p| p.before).count();
    let passed: Vec<String> = chain
        .passed_over
        .iter()
        .map(|(p, why)| format!("{p} (after the kill at {why})"))
        .collect();
    let text = format!(
        "{name}: {} of {} kill points covered ({} after a record, {before} before one) over a clean run of {} records, in {} chains; {} passed over by the resumed run; record types covered: {}\ncovered:\n{}\npassed over:\n{}\n",
        chain.covered.len(),
        points.len(),
        points.len() - before,
        clean.len(),
        chains.len(),
        passed.len(),
        types.into_iter().collect::<Vec<_>>().join(", "),
        chain.covered.join("\n"),
        passed.join("\n")
    );
    let path = common::repo().join(format!("target/crash-report-{name}.txt"));
    let _ = std::fs::write(path, &text);
    println!("{text}");
    text
}

/// What the clean run left behind, read before its sandbox is given back (the chains run
/// after it, in sandboxes of their own).
struct CleanEnd {
    /// The clean run's records.
    records: Vec<Value>,
    /// Its end state, roles named ([`end_state`]).
    state: BTreeMap<String, String>,
}

/// Reads the end of `clean`'s last run; `legacy` is what its Secret and record said before it.
fn clean_end(clean: &Sandbox, legacy: &(String, String)) -> CleanEnd {
    let run = clean.run_ids().pop().unwrap();
    CleanEnd {
        records: clean.records(&run),
        state: end_state(clean, &run, &legacy.0, &legacy.1),
    }
}

fn assert_same_end(name: &str, clean: &CleanEnd, crashed: &Sandbox, legacy: &(String, String)) {
    let crash_run = crashed.run_ids().pop().unwrap();
    let a = &clean.state;
    let b = end_state(crashed, &crash_run, &legacy.0, &legacy.1);
    let shown: Vec<String> = a.iter().map(|(k, v)| format!("== {k}\n{v}")).collect();
    let path = common::repo().join(format!("target/crash-report-{name}.txt"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_default();
    text.push_str(&format!(
        "\nend state compared (clean run's, roles named):\n{}\n",
        shown.join("\n")
    ));
    let _ = std::fs::write(&path, text);
    for (k, v) in a {
        assert_eq!(Some(v), b.get(k), "{k} differs from the clean run's");
    }
    assert_eq!(a.len(), b.len());
    let (ra, rb) = (&clean.records, crashed.records(&crash_run));
    assert_eq!(
        completions(ra),
        completions(&rb),
        "steps completed a different number of times"
    );
    // Every process that reached the end measured its own writers: no acknowledged write is
    // missing on any path. (A process resumed after the freeze has a legacy writer that cannot
    // write at all, so only the AWS path must have acknowledged writes.)
    let beats: Vec<&Value> = rb.iter().filter(|r| r["type"] == "heartbeat").collect();
    assert!(!beats.is_empty(), "no heartbeat record");
    for hb in &beats {
        assert_eq!(hb["data"]["missing"], 0, "{hb}");
        for p in hb["data"]["paths"].as_array().unwrap() {
            assert_eq!(p["missing"], 0, "{p}");
        }
    }
    let last = &beats[beats.len() - 1]["data"];
    assert!(last["acknowledged"].as_u64().unwrap() > 0, "{last}");
    assert_eq!(
        crashed
            .cutover(&["audit", "verify", &crash_run])
            .status
            .code(),
        Some(0)
    );
    crashed.assert_no_secrets(&[]);
}

fn legacy_of(sb: &Sandbox) -> (String, String) {
    (
        sb.secret_value("staging", "shop-db", "DATABASE_URL")
            .unwrap(),
        sb.shop_record("staging"),
    )
}

/// How many chains share a test's kill points (point `i` goes to chain `i % CHAINS`), each in a
/// sandbox of its own, at once. Every chain is one run killed again and again; each starts
/// afresh like the clean run, so its first point is met where the clean run wrote that record.
const CHAINS: usize = 2;

fn share_out(points: &[Point]) -> Vec<Vec<Point>> {
    let mut parts = vec![Vec::new(); CHAINS];
    for (i, p) in points.iter().enumerate() {
        parts[i % CHAINS].push(p.clone());
    }
    parts
}

/// Runs one chain per share of `points`, each in its own sandbox with its own first command, at
/// once.
fn crash_chains(crashed: &[Sandbox], firsts: &[Vec<String>], points: &[Point]) -> Vec<Chain> {
    let parts = share_out(points);
    std::thread::scope(|s| {
        let handles: Vec<_> = parts
            .iter()
            .zip(crashed)
            .zip(firsts)
            .map(|((part, sb), first)| {
                s.spawn(move || {
                    let first: Vec<&str> = first.iter().map(String::as_str).collect();
                    crash_chain(sb, &first, part)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The run rolled back because of the failing health check after the flip, and only of it (a
/// run that failed earlier, say in a DNS stage's analysis, rolls back fewer steps and cannot be
/// compared); the message names the step that failed and why.
fn assert_failed_at_health(records: &[Value], output: &str) {
    let failed: Vec<String> = common::events(records, "step_failed")
        .iter()
        .map(|r| {
            format!(
                "{}: {}",
                r["step"].as_str().unwrap_or("?"),
                r["data"]["error"]
            )
        })
        .collect();
    assert!(
        failed.len() == 1 && failed[0].starts_with("health: "),
        "the run must fail at step health and nowhere else; it failed at {failed:?}\n{output}"
    );
}

/// One sandbox per chain, and what each one's Secret and record said before any run. They are
/// started once the clean run is over and its sandbox given back, so no sandbox waits idle
/// for another's run.
fn chain_sandboxes() -> (Vec<Sandbox>, Vec<(String, String)>) {
    let sandboxes = Sandbox::start_many(CHAINS);
    let legacy = sandboxes.iter().map(legacy_of).collect();
    (sandboxes, legacy)
}

/// Every point was met by one chain, and every chain's sandbox ended as the clean one did.
fn assert_all_covered_and_same_end(
    name: &str,
    points: &[Point],
    chains: &[Chain],
    clean: &CleanEnd,
    crashed: &[Sandbox],
    legacy: &[(String, String)],
) {
    let covered: usize = chains
        .iter()
        .map(|c| c.covered.len() + c.passed_over.len())
        .sum();
    assert_eq!(covered, points.len());
    for (sb, theirs) in crashed.iter().zip(legacy) {
        assert_same_end(name, clean, sb, theirs);
    }
}

#[test]
fn a_rehearsal_killed_at_every_record_and_resumed_ends_as_a_clean_one() {
    let clean = Sandbox::start_first();
    let clean_legacy = legacy_of(&clean);
    let out = clean.cutover(&["rehearse", "staging"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let end = clean_end(&clean, &clean_legacy);
    drop(clean);
    let points = points(&end.records, 0);
    let (crashed, legacy) = chain_sandboxes();
    let firsts = vec![vec!["rehearse".to_string(), "staging".to_string()]; CHAINS];
    let chains = crash_chains(&crashed, &firsts, &points);
    for c in &chains {
        assert_eq!(c.exit, Some(0), "a resumed rehearsal did not succeed");
    }
    report("rehearsal", &points, &chains, &end.records);
    assert_all_covered_and_same_end("rehearsal", &points, &chains, &end, &crashed, &legacy);
}

#[test]
fn a_rollback_after_the_flip_killed_at_every_record_and_resumed_ends_as_a_clean_one() {
    let clean = Sandbox::start_first();
    let clean_legacy = legacy_of(&clean);
    let shop = std::fs::read_to_string(common::repo().join("runbooks/shop-cutover.yaml")).unwrap();
    let failing = shop.replace(
        "{ id: health, kind: http.check, with: { url: \"{{ tf.app_url }}/healthz\"",
        "{ id: health, kind: http.check, with: { url: \"http://127.0.0.1:9/healthz\"",
    );
    assert_ne!(failing, shop);
    let clean_runbook = clean.extra_runbook("shop-cutover-failing-health", &failing);
    let out = clean.cutover(&["rehearse", "staging", "--runbook", &clean_runbook]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let end = clean_end(&clean, &clean_legacy);
    assert_failed_at_health(&end.records, &text(&out));
    drop(clean);
    let from = end
        .records
        .iter()
        .position(|r| r["type"] == "rollback_started")
        .expect("the clean run rolled back");
    let points = points(&end.records, from);
    let (crashed, legacy) = chain_sandboxes();
    let firsts: Vec<Vec<String>> = crashed
        .iter()
        .map(|sb| {
            let path = sb.extra_runbook("shop-cutover-failing-health", &failing);
            ["rehearse", "staging", "--runbook", &path]
                .map(String::from)
                .to_vec()
        })
        .collect();
    let chains = crash_chains(&crashed, &firsts, &points);
    for (c, sb) in chains.iter().zip(&crashed) {
        assert_eq!(
            c.exit,
            Some(1),
            "a resumed rollback did not end rolled back"
        );
        let run = sb.run_ids().pop().unwrap();
        assert_failed_at_health(&sb.records(&run), "(a chain's run)");
    }
    report("rollback", &points, &chains, &end.records[from..]);
    assert_all_covered_and_same_end("rollback", &points, &chains, &end, &crashed, &legacy);
}
