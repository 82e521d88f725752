//! The downtime part: N rehearsed cutover windows (replicate, wait for lag, freeze, drain, sync
//! sequences, verify, flip the Secret) under a heartbeat writer that follows the Secret; then the
//! outage a stop-dump-restore cutover of the same database would have.

use super::{secs, Bench, Options};
use crate::providers::postgres::connect;
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::time::Instant;

const DB: &str = "cutover_bench_window";
const SECRET: &str = "cutover-bench-db";

fn runbook(rate: f64, jobs: usize) -> String {
    format!(
        "name: bench-window
heartbeat: {{ namespace: shop, secret: {SECRET}, key: DATABASE_URL, writes_per_second: {rate} }}
phases:
  - name: prepare
    steps:
      - {{ id: replicate, kind: postgres.replicate, with: {{ jobs: {jobs} }} }}
      - {{ id: synced, kind: postgres.wait_lag, timeout: 5m }}
      - {{ id: prepass, kind: postgres.verify, with: {{ jobs: {jobs} }}, timeout: 1h }}
  - name: cutover
    steps:
      - {{ id: freeze, kind: postgres.freeze_writes }}
      - {{ id: drained, kind: postgres.wait_lag, timeout: 2m }}
      - {{ id: sequences, kind: postgres.sync_sequences, with: {{ margin: 1000 }} }}
      - {{ id: verify, kind: postgres.verify, with: {{ method: changed-since-prepass }} }}
      - {{ id: fallback, kind: postgres.fallback }}
      - {{ id: flip, kind: k8s.flip_secret, with: {{ namespace: shop, secret: {SECRET}, data: {{ DATABASE_URL: \"{{{{ secrets.target_app_database_url }}}}\" }} }} }}
"
    )
}

async fn seed(bench: &Bench, rows: i64) -> Result<()> {
    bench.fresh_databases(DB).await?;
    let c = connect(&bench.source_db(DB)?, "bench").await?;
    c.batch_execute(&super::as_app()).await?;
    c.batch_execute(&format!(
        "CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL, status text NOT NULL, total_cents bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO orders (customer_id, status, total_cents) SELECT g % 1000, 'paid', g FROM generate_series(1, {rows}) g;
         GRANT SELECT, INSERT, UPDATE, DELETE ON orders TO {app};
         GRANT USAGE, SELECT, UPDATE ON SEQUENCE orders_id_seq TO {app};
         ANALYZE",
        app = super::APP_ROLE
    ))
    .await?;
    Ok(())
}

/// The Secrets of namespace `shop` in the environment's cluster.
async fn secrets(bench: &Bench) -> Result<kube::Api<Secret>> {
    let providers =
        crate::providers::Providers::new(bench.env.clone(), "bench", Default::default());
    Ok(kube::Api::namespaced(providers.kube().await?, "shop"))
}

async fn point_secret_at_source(bench: &Bench) -> Result<()> {
    let api = secrets(bench).await?;
    let _ = api.delete(SECRET, &Default::default()).await;
    let mut s = Secret::default();
    s.metadata.name = Some(SECRET.into());
    s.data = Some(
        [(
            "DATABASE_URL".to_string(),
            ByteString(bench.app_db(&bench.source_url, DB)?.into_bytes()),
        )]
        .into(),
    );
    api.create(&Default::default(), &s)
        .await
        .context("create the bench Secret")?;
    Ok(())
}

/// Runs the part at every size of `--downtime-rows` and prints its figures; with several
/// sizes, the ratio of each size's p50 outage to the smallest size's.
///
/// # Errors
/// A rehearsal or a database statement fails, or an acknowledged write went missing.
pub async fn run(bench: &Bench, opts: &Options) -> Result<()> {
    let mut p50s = Vec::new();
    for &rows in &opts.downtime_rows {
        p50s.push((rows, run_size(bench, opts, rows).await?));
    }
    if let [(small, base), rest @ ..] = p50s.as_slice() {
        for (rows, p50) in rest {
            println!(
                "  size: p50 write outage at {rows} rows / at {small} rows = {:.2} ({p50} ms / {base} ms)",
                *p50 as f64 / (*base).max(1) as f64
            );
        }
    }
    Ok(())
}

/// One size: N windows, then stop-dump-restore; returns the p50 outage, milliseconds.
async fn run_size(bench: &Bench, opts: &Options, downtime_rows: i64) -> Result<u64> {
    println!(
        "\n(a) downtime: {} cutover windows of a {}-row database under {} heartbeat writes/s (writer follows the Secret, re-read every 100 ms)",
        opts.runs, downtime_rows, opts.rate
    );
    let mut gaps = Vec::new();
    let mut missing_total = 0u64;
    let mut acked_total = 0u64;
    let mut rates: Vec<f64> = Vec::new();
    for i in 1..=opts.runs {
        seed(bench, downtime_rows).await?;
        point_secret_at_source(bench).await?;
        let dir = tempfile::tempdir()?;
        bench.scratch_project(dir.path(), DB, &runbook(opts.rate, opts.jobs))?;
        let started = Instant::now();
        let result = bench.rehearse(dir.path(), DB);
        let (records, _, _) = match result {
            Ok(r) => r,
            Err(e) => {
                bench.drop_databases(DB).await;
                return Err(e);
            }
        };
        let hb = records
            .iter()
            .find(|r| r["type"] == "heartbeat")
            .map(|r| r["data"].clone())
            .context("the rehearsal recorded no heartbeat")?;
        let gap = hb["longest_gap_ms"].as_u64().unwrap_or(0);
        let missing = hb["missing"]
            .as_u64()
            .context("heartbeat without a missing-write check")?;
        let acked = hb["acknowledged"].as_u64().unwrap_or(0);
        let writing = hb["writing_ms"].as_u64().unwrap_or(0);
        // The rate the writer sustained while the database took writes (the outage left out).
        let rate =
            acked.saturating_sub(1) as f64 * 1000.0 / (writing.saturating_sub(gap)).max(1) as f64;
        println!(
            "  run {i}: write outage {gap} ms; {acked} of {} writes acknowledged over {:.1} s, {rate:.0} acknowledged writes/s outside the outage; {missing} acknowledged write(s) missing (run {:.1} s)",
            hb["attempted"].as_u64().unwrap_or(0),
            writing as f64 / 1000.0,
            secs(started)
        );
        // Where the window's time went: each step from the freeze to the flip.
        let window: Vec<String> = records
            .iter()
            .filter(|r| r["type"] == "step_completed")
            .filter_map(|r| Some((r["step"].as_str()?, r["data"]["duration_ms"].as_u64()?)))
            .skip_while(|(s, _)| *s != "freeze")
            .map(|(s, ms)| format!("{s} {ms} ms"))
            .collect();
        println!("         window steps: {}", window.join(", "));
        rates.push(rate);
        gaps.push(gap);
        missing_total += missing;
        acked_total += acked;
    }
    gaps.sort_unstable();
    let p50 = gaps
        .get(gaps.len().saturating_sub(1) / 2)
        .copied()
        .unwrap_or(0);
    let max = gaps.last().copied().unwrap_or(0);
    let min_rate = rates.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "  cutover: p50 write outage {p50} ms, max {max} ms over {} runs at ≥ {min_rate:.0} acknowledged writes/s; {missing_total} of {acked_total} acknowledged writes missing",
        gaps.len()
    );

    // What a user would otherwise do: stop writes, dump and restore, point the app at the copy.
    seed(bench, downtime_rows).await?;
    let dr = (bench.dump_restore(DB, opts.jobs).await? * 1000.0) as u64;
    println!("  pg_dump -Fd -j {0} + pg_restore -j {0} of the same database while writes are stopped: write outage at least {dr} ms", opts.jobs);
    println!(
        "  ratio: stop-dump-restore outage / cutover p50 outage = {:.1}",
        dr as f64 / p50.max(1) as f64
    );
    bench.drop_databases(DB).await;
    if let Ok(api) = secrets(bench).await {
        let _ = api.delete(SECRET, &Default::default()).await;
    }
    if missing_total > 0 {
        anyhow::bail!("{missing_total} acknowledged write(s) missing after the cutovers");
    }
    Ok(p50)
}
