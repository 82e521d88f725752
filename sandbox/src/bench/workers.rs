//! The copy by worker processes (`--workers 1,2,4`): the generated `events` database copied by
//! `postgres.replicate` with `workers: { run: processes, count: N }` for each N, each into a
//! fresh target, beside a native subscription (`copy_data = true`) in the same invocation:
//! seconds, rows/s and MB/s, and the CPU the run and its workers used per MB. Then the claim
//! contention of the plan as a work queue (`--claimers 1,8,32,64`): that many connections
//! claiming the chunks of a plan of `--claim-chunks` chunks with no rows to copy (the claim,
//! and the `copied` row a worker commits), so only the plan table's locking is measured:
//! claims/s, the median and 99th percentile claim latency, and any chunk claimed twice.

use super::copy::{self, Shape, DB};
use super::{secs, Bench, Options};
use anyhow::{bail, Result};
use cutover::providers::postgres::catalog::KeyRange;
use cutover::providers::postgres::copy::{state_sql, Chunk};
use cutover::providers::postgres::snapshot::ExportedSlot;
use cutover::providers::postgres::workers;
use cutover::providers::postgres::{connect, Server};
use std::time::{Duration, Instant};

fn runbook(count: usize) -> String {
    format!(
        "name: bench-copy
phases:
  - name: copy
    steps:
      - {{ id: replicate, kind: postgres.replicate, with: {{ workers: {{ run: processes, count: {count} }} }} }}
"
    )
}

/// Runs both series and prints their figures.
///
/// # Errors
/// Generation, a copy or a claim fails, or a check does not hold (rows missing, a chunk
/// claimed twice).
pub async fn run(bench: &Bench, opts: &Options) -> Result<()> {
    let result = copy_series(bench, opts).await;
    bench.drop_databases(DB).await;
    result?;
    claim_series(bench, opts).await
}

async fn copy_series(bench: &Bench, opts: &Options) -> Result<()> {
    let t = Instant::now();
    let (size, table, rows) = copy::generate(bench, Shape::Events, opts.size_mb).await?;
    let all_rows = rows + 100_000;
    let mb = size as f64 / 1e6;
    println!("\n(b-w) initial copy by N local worker processes (cutover copy-worker claiming chunks of 1000000 rows from the plan on the target) of a generated database of {mb:.0} MB (accounts 100000 rows; events {rows} rows), each into a fresh target, beside a native subscription; generated in {:.1} s", secs(t));
    let mut figures: Vec<(String, f64)> = Vec::new();
    for &count in &opts.workers {
        copy::fresh_target(bench).await?;
        let dir = tempfile::tempdir()?;
        bench.scratch_project(dir.path(), DB, &runbook(count))?;
        let t = Instant::now();
        let (_, _, cpu) = bench.rehearse(dir.path(), DB)?;
        let s = secs(t);
        let (copied, objects) = copy::target_rows(bench, table).await?;
        if copied != rows {
            bail!("{count} worker(s): {copied} {table} rows on the target, {rows} on the source");
        }
        println!("  {count} worker process(es): {s:.1} s, {:.0} rows/s, {:.1} MB/s ({:.1} MB/s per worker), {objects} valid indexes/foreign keys; run and workers: CPU {cpu:.1} s ({:.1} ms per MB)", all_rows as f64 / s, mb / s, mb / s / count as f64, cpu * 1000.0 / mb);
        figures.push((format!("{count} worker(s)"), s));
        bench.drop_replication(DB).await;
    }
    copy::fresh_target(bench).await?;
    let t = Instant::now();
    copy::native_subscription(bench, opts.jobs).await?;
    let s = secs(t);
    let (copied, objects) = copy::target_rows(bench, table).await?;
    if copied != rows {
        bail!("native subscription: {copied} {table} rows on the target, {rows} on the source");
    }
    println!("  native subscription (copy_data = true, max_sync_workers_per_subscription = {}), then post-data: {s:.1} s, {:.0} rows/s, {:.1} MB/s, {objects} valid indexes/foreign keys", opts.jobs, all_rows as f64 / s, mb / s);
    println!(
        "  ratios (time / the native subscription's): {}",
        figures
            .iter()
            .map(|(n, f)| format!("{n} {:.2}", f / s.max(0.001)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// A plan of `n` chunks with no rows behind them, in the target's bench database.
async fn claim_plan(bench: &Bench, n: usize) -> Result<()> {
    copy::fresh_target(bench).await?;
    let c = connect(&bench.target_db(DB)?, Server::Target).await?;
    let slot = ExportedSlot {
        slot: "bench".into(),
        consistent_lsn: "0/0".into(),
        snapshot: "none".into(),
    };
    let chunks: Vec<Chunk> = (0..n)
        .map(|i| Chunk {
            table: "public.claims".into(),
            index: i as i32,
            of: n as i32,
            range: KeyRange {
                lower: None,
                upper: None,
            },
            est_bytes: 1_000_000,
        })
        .collect();
    c.batch_execute(&state_sql("bench", &slot, &chunks, false, "", &[], &[]))
        .await?;
    workers::prepare(&c).await?;
    Ok(())
}

/// One claimer's loop: claim, record the chunk copied, until the plan has none left; its
/// claim latencies (seconds).
async fn claimer(url: String, name: String) -> Result<Vec<f64>> {
    let c = connect(&url, Server::Target).await?;
    let mut latencies = Vec::new();
    loop {
        let t = Instant::now();
        let Some(claim) = workers::claim(&c, &name, Duration::from_secs(30)).await? else {
            return Ok(latencies);
        };
        latencies.push(t.elapsed().as_secs_f64());
        c.execute(
            "INSERT INTO cutover_copy.copied (table_name, chunk, rows, bytes, attempt) VALUES ($1, $2, 0, 0, $3)",
            &[&claim.chunk.table, &claim.chunk.index, &name],
        )
        .await?;
    }
}

async fn claim_series(bench: &Bench, opts: &Options) -> Result<()> {
    println!("\n(b-c) claim contention on the plan as a work queue: N connections claim the {} chunks of a plan (FOR UPDATE SKIP LOCKED, a lease each) and record each copied, with no rows to copy", opts.claim_chunks);
    for &n in &opts.claimers {
        claim_plan(bench, opts.claim_chunks).await?;
        let url = bench.target_db(DB)?;
        let t = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| tokio::spawn(claimer(url.clone(), format!("claimer-{i}"))))
            .collect();
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.extend(task.await??);
        }
        let s = secs(t);
        let c = connect(&url, Server::Target).await?;
        let r = c
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE claims > 1), (SELECT count(*) FROM cutover_copy.copied) FROM cutover_copy.chunks",
                &[],
            )
            .await?;
        let (chunks, twice, copied): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
        if twice > 0 || copied != chunks || latencies.len() as i64 != chunks {
            bail!("{n} claimers: {twice} chunk(s) claimed twice, {copied} of {chunks} recorded, {} claims", latencies.len());
        }
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize] * 1000.0;
        println!(
            "  {n} claimer(s): {chunks} chunks in {s:.2} s, {:.0} claims/s; claim latency median {:.1} ms, p99 {:.1} ms, max {:.1} ms; chunks claimed twice: {twice}",
            chunks as f64 / s,
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    bench.drop_databases(DB).await;
    Ok(())
}
