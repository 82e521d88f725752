//! The copy part: one generated database copied three ways, each into a fresh target database
//! with the same parallelism: `postgres.replicate` (through `cutover rehearse`), `pg_dump -Fd -j`
//! with `pg_restore -j`, and a native subscription with `copy_data = true` (schema first,
//! indexes after, as pg_dump's sections put them).

use super::{secs, Bench, Options};
use crate::providers::postgres::snapshot::dump_section;
use crate::providers::postgres::{connect, ident, literal, ConnParts};
use anyhow::{bail, Result};
use std::time::{Duration, Instant};

const DB: &str = "cutover_bench_copy";

/// Bytes per generated `events` row on disk (heap, primary key, secondary index), measured on
/// PostgreSQL 15: 1501 MB for 4876190 rows.
const ROW_BYTES: u64 = 300;

/// Bytes of the fixed `accounts` table (100000 rows with its indexes), measured likewise.
const ACCOUNTS_BYTES: u64 = 15_000_000;

async fn generate(bench: &Bench, size_mb: u64) -> Result<u64> {
    bench.fresh_databases(DB).await?;
    let rows = ((size_mb * 1_000_000).saturating_sub(ACCOUNTS_BYTES) / ROW_BYTES).max(1000) as i64;
    let url = bench.source_db(DB)?;
    let c = connect(&url, "bench").await?;
    c.batch_execute(
        "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, created_at timestamptz NOT NULL);
         CREATE TABLE events (id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts(id), kind text NOT NULL, payload text NOT NULL, created_at timestamptz NOT NULL);
         INSERT INTO accounts SELECT g, 'user' || g || '@example.com', timestamptz '2025-01-01' + g * interval '1 minute' FROM generate_series(1, 100000) g;",
    )
    .await?;
    // Two writers at once, one per half of the key range.
    let half = rows / 2;
    let fill = |lo: i64, hi: i64| {
        let url = url.clone();
        async move {
            let c = connect(&url, "bench").await?;
            c.batch_execute(&format!(
                "INSERT INTO events SELECT g, 1 + g % 100000, 'kind' || (g % 17), repeat(md5(g::text), 6), timestamptz '2025-01-01' + g * interval '1 second' FROM generate_series({lo}, {hi}) g"
            ))
            .await?;
            Ok::<_, anyhow::Error>(())
        }
    };
    tokio::try_join!(fill(1, half), fill(half + 1, rows))?;
    c.batch_execute("CREATE INDEX events_account_id ON events (account_id); ANALYZE")
        .await?;
    let size: i64 = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    Ok(size as u64)
}

async fn fresh_target(bench: &Bench) -> Result<()> {
    let c = super::admin(&bench.target_url).await?;
    c.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        ident(DB)
    ))
    .await?;
    c.batch_execute(&format!("CREATE DATABASE {}", ident(DB)))
        .await?;
    Ok(())
}

async fn target_size(bench: &Bench) -> Result<(i64, i64)> {
    let c = connect(&bench.target_db(DB)?, "bench").await?;
    let r = c
        .query_one(
            "SELECT pg_database_size(current_database()), (SELECT count(*) FROM events)",
            &[],
        )
        .await?;
    Ok((r.get(0), r.get(1)))
}

fn runbook(jobs: usize) -> String {
    format!(
        "name: bench-copy
phases:
  - name: copy
    steps:
      - {{ id: replicate, kind: postgres.replicate, with: {{ jobs: {jobs} }} }}
"
    )
}

async fn native_subscription(bench: &Bench, jobs: usize) -> Result<()> {
    let src_url = bench.source_db(DB)?;
    let tgt_url = bench.target_db(DB)?;
    let sp = ConnParts::parse(&src_url, "source")?;
    let tgt_admin = super::admin(&bench.target_url).await?;
    tgt_admin
        .batch_execute(&format!(
            "ALTER SYSTEM SET max_sync_workers_per_subscription = {jobs}"
        ))
        .await?;
    tgt_admin.batch_execute("SELECT pg_reload_conf()").await?;
    let pre = dump_section(&sp, "pre-data", None).await?;
    let tgt = connect(&tgt_url, "bench").await?;
    tgt.batch_execute(&pre).await?;
    let src = connect(&src_url, "bench").await?;
    src.batch_execute(
        "DROP PUBLICATION IF EXISTS bench_native; CREATE PUBLICATION bench_native FOR ALL TABLES",
    )
    .await?;
    tgt.batch_execute(&format!(
        "CREATE SUBSCRIPTION bench_native CONNECTION {} PUBLICATION bench_native WITH (copy_data = true)",
        literal(&sp.conninfo())
    ))
    .await?;
    let deadline = Instant::now() + Duration::from_secs(7200);
    loop {
        let r = tgt
            .query_one("SELECT count(*) FILTER (WHERE srsubstate NOT IN ('r', 's')), count(*) FROM pg_subscription_rel", &[])
            .await?;
        let (copying, total): (i64, i64) = (r.get(0), r.get(1));
        if total > 0 && copying == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the native subscription did not finish its copy in 2 h");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let post = dump_section(&sp, "post-data", None).await?;
    tgt.batch_execute(&post).await?;
    tgt.batch_execute("DROP SUBSCRIPTION bench_native").await?;
    src.batch_execute("DROP PUBLICATION bench_native").await?;
    tgt_admin
        .batch_execute("ALTER SYSTEM RESET max_sync_workers_per_subscription")
        .await?;
    tgt_admin.batch_execute("SELECT pg_reload_conf()").await?;
    Ok(())
}

/// Runs the part and prints its figures.
///
/// # Errors
/// Generation or a copy method fails.
pub async fn run(bench: &Bench, opts: &Options) -> Result<()> {
    println!("\n(b) initial copy of a generated database of about {} MB with {} parallel job(s), each method into a fresh target", opts.size_mb, opts.jobs);
    let t = Instant::now();
    let size = generate(bench, opts.size_mb).await?;
    println!("  generated: {:.0} MB on disk (accounts 100000 rows, events with an index and a foreign key) in {:.1} s", size as f64 / 1e6, secs(t));
    let result = async {
        let mut figures = Vec::new();

        fresh_target(bench).await?;
        let dir = tempfile::tempdir()?;
        bench.scratch_project(dir.path(), DB, &runbook(opts.jobs))?;
        let t = Instant::now();
        let (_, rss) = bench.rehearse(dir.path(), DB)?;
        let s = secs(t);
        let (_, rows) = target_size(bench).await?;
        println!("  cutover postgres.replicate: {s:.1} s ({:.1} MB/s), {rows} events rows; peak RSS of cutover {:.0} MB", size as f64 / 1e6 / s, rss as f64 / 1e6);
        figures.push(("cutover", s));
        bench.drop_replication(DB).await;

        fresh_target(bench).await?;
        let s = bench.dump_restore(DB, opts.jobs).await?;
        let (_, rows) = target_size(bench).await?;
        println!("  pg_dump -Fd -j {0} + pg_restore -j {0}: {s:.1} s ({1:.1} MB/s), {rows} events rows", opts.jobs, size as f64 / 1e6 / s);
        figures.push(("pg_dump/pg_restore", s));

        fresh_target(bench).await?;
        let t = Instant::now();
        native_subscription(bench, opts.jobs).await?;
        let s = secs(t);
        let (_, rows) = target_size(bench).await?;
        println!("  native subscription (copy_data = true, max_sync_workers_per_subscription = {}): {s:.1} s ({:.1} MB/s), {rows} events rows", opts.jobs, size as f64 / 1e6 / s);
        figures.push(("native subscription", s));

        let ours = figures[0].1.max(0.001);
        println!(
            "  ratios (time / cutover's time): {}",
            figures.iter().map(|(n, s)| format!("{n} {:.2}", s / ours)).collect::<Vec<_>>().join(", ")
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    bench.drop_databases(DB).await;
    result
}
