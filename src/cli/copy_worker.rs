//! `cutover copy-worker`: one worker of the initial copy outside the run's process. It claims
//! chunks of the copy plan on the target until every chunk is copied, then exits 0
//! ([`crate::providers::postgres::workers`]). `postgres.replicate` starts such workers with
//! `workers: { run: processes, count: N }`. Reads both servers' URLs from its environment (a
//! Secret's keys in a pod), never from its command line.

use super::{print_error, EXIT_FAILED, EXIT_INVALID};
use crate::providers::postgres::workers::{self, WorkerEvent, WorkerOptions};
use std::time::Duration;

use workers::{SOURCE_URL_ENV as SOURCE_URL, TARGET_URL_ENV as TARGET_URL};

/// The worker's name when none is given: the Indexed Job's completion index where there is
/// one (`JOB_COMPLETION_INDEX`, set by Kubernetes in each pod), else the process id.
pub fn default_name() -> String {
    match std::env::var("JOB_COMPLETION_INDEX") {
        Ok(i) if !i.is_empty() => format!("index-{i}"),
        _ => format!("pid-{}", std::process::id()),
    }
}

/// Runs one worker; returns the exit code (2 for bad input, 1 when a chunk failed).
pub async fn run(name: Option<String>, lease: Duration, rate_limit_mb: Option<f64>) -> i32 {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (source, target) = (env(SOURCE_URL), env(TARGET_URL));
    let mut problems = Vec::new();
    for (var, v) in [(SOURCE_URL, &source), (TARGET_URL, &target)] {
        if v.is_none() {
            problems.push(format!(
                "{var} is not set: the worker reads both servers' URLs from its environment"
            ));
        }
    }
    if lease < Duration::from_secs(3) {
        problems.push(format!(
            "--lease {} s is too short: at least 3 s (the lease is renewed every third of it)",
            lease.as_secs()
        ));
    }
    if let Some(r) = rate_limit_mb.filter(|r| !(r.is_finite() && *r > 0.0)) {
        problems.push(format!("--rate-limit-mb {r} is not a positive number"));
    }
    if !problems.is_empty() {
        for p in &problems {
            print_error(&format!("cutover copy-worker: {p}"), None);
        }
        return EXIT_INVALID;
    }
    let opts = WorkerOptions {
        worker: name.unwrap_or_else(default_name),
        lease,
        rate_limit: rate_limit_mb.map(|m| m * 1e6),
        idle_poll: Duration::from_secs(1),
    };
    let who = opts.worker.clone();
    eprintln!(
        "copy-worker {who}: claiming chunks (lease {} s)",
        lease.as_secs()
    );
    let result = workers::work(
        &source.unwrap_or_default(),
        &target.unwrap_or_default(),
        &opts,
        |e| match e {
            WorkerEvent::Claimed(c) if c.claims > 1 => eprintln!(
                "copy-worker {who}: claimed {} chunk {}/{} again (claim {}: an earlier worker's lease ran out)",
                c.chunk.table,
                c.chunk.index + 1,
                c.chunk.of,
                c.claims
            ),
            WorkerEvent::Claimed(_) => {}
            WorkerEvent::Copied(d) => eprintln!(
                "copy-worker {who}: copied {} chunk {}/{} ({} rows, {} bytes)",
                d.chunk.table,
                d.chunk.index + 1,
                d.chunk.of,
                d.rows,
                d.bytes
            ),
            WorkerEvent::CopiedElsewhere(c) => eprintln!(
                "copy-worker {who}: {} chunk {}/{} was committed by another worker first; this copy rolled back",
                c.table,
                c.index + 1,
                c.of
            ),
            WorkerEvent::LeaseLost(c) => eprintln!(
                "copy-worker {who}: lost the lease on {} chunk {}/{} to another worker",
                c.table,
                c.index + 1,
                c.of
            ),
        },
    )
    .await;
    match result {
        Ok(s) => {
            eprintln!(
                "copy-worker {who}: no chunk left; this worker copied {} chunk(s), {} rows, {} bytes",
                s.copied, s.rows, s.bytes
            );
            0
        }
        Err(e) => {
            print_error(&format!("copy-worker {who}: {e}"), None);
            EXIT_FAILED
        }
    }
}
