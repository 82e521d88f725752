//! `cutover-sandbox bench` runs end to end on a sandbox (small sizes) and prints every figure; no
//! acknowledged write goes missing in its cutover windows. Figures are printed, never asserted
//! against time.

use crate::common;

use common::{text, Sandbox};

#[test]
fn bench_prints_downtime_copy_and_verify_figures_and_loses_no_write() {
    let sb = Sandbox::start_first();
    // The bench ships with the sandbox, not in the product; it measures the cutover binary of
    // this test run.
    let mut cmd = std::process::Command::new(common::sandbox_bin());
    // `--dir`: the pooler series lets the bench's role log in to this sandbox's PgBouncer.
    cmd.arg("--dir")
        .arg(sb.dir.path())
        .args(["bench", "-C"])
        .arg(sb.project.path())
        .arg("--cutover")
        .arg(common::cutover_bin())
        .args([
            "--runs",
            "2",
            "--downtime-rows",
            "5000",
            "--size-mb",
            "20",
            "--verify-rows",
            "100000",
            "--volume-delay",
            "3s",
        ])
        .envs(sb.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let out = sb.record(common::run_with_timeout(cmd, 300));
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    for needle in [
        "run 1: write outage",
        "run 2: write outage",
        "p50 write outage",
        "pg_dump -Fd -j 2 + pg_restore -j 2 of the same database",
        "cutover postgres.replicate:",
        "native subscription (copy_data = true",
        "ratios (cutover's time / theirs)",
        "composite primary key (order_id, line)",
        "ms per MB",
        "the step's parts:",
        "rows/s per side",
        "one corrupted row on the target: located as id=66667",
        // One series per reload mode, and a line per mode side by side.
        "cutover (restart): p50 write outage",
        "cutover (volume): p50 write outage",
        "cutover (pooler): p50 write outage",
        // Behind the pooler no write fails; with restart, the outage covers the rollout.
        "path pooler: 0 failed write(s)",
        "restart: p50 write outage",
        "per reload mode (p50 write outage at each size):",
    ] {
        assert!(t.contains(needle), "missing {needle:?} in:\n{t}");
    }
    for summary in t.lines().filter(|l| l.contains("): p50 write outage")) {
        assert!(summary.contains("; 0 of "), "{summary}");
    }
    // Each window (two per mode, three modes) acknowledged writes and none is missing, and so
    // says each mode's per-path line.
    assert_eq!(
        t.matches("0 acknowledged write(s) missing").count(),
        9,
        "{t}"
    );
    sb.assert_no_secrets(&[]);
}
