//! The copy part: two generated databases (a `bigint`-keyed table with a foreign key, and a
//! table with a composite primary key), each copied three ways into a fresh target database
//! with the same parallelism: `postgres.replicate` (through `cutover rehearse`, with the CPU and
//! peak memory of the cutover process), `pg_dump -Fd -j` with `pg_restore -j`, and a native
//! subscription with `copy_data = true` (schema first, indexes after, as pg_dump's sections put
//! them). Each method's result is checked: every row and every index and foreign key valid.

use super::{secs, Bench, Options};
use anyhow::{bail, Result};
use cutover::engine::event::Event;
use cutover::providers::postgres::snapshot::dump_section;
use cutover::providers::postgres::{connect, ident, literal, ConnParts, Server};
use std::time::{Duration, Instant};

pub(super) const DB: &str = "cutover_bench_copy";

/// The table shapes the part copies, each in its own generated database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// `accounts` (100000 rows) and `events` (one `bigint` key, a secondary index, a foreign
    /// key to `accounts`): the size asked for.
    Events,
    /// `line_items`, a composite primary key `(order_id, line)` and a secondary index, at a
    /// quarter of the size asked for and at least 1,000,000 rows: a key that cannot be cut
    /// arithmetically (split at sampled keys).
    Composite,
}

/// Bytes per generated `events` row on disk (heap, primary key, secondary index), measured on
/// PostgreSQL 15: 1501 MB for 4876190 rows.
const ROW_BYTES: u64 = 300;

/// Bytes per generated `line_items` row on disk (heap, primary key, secondary index), measured
/// on PostgreSQL 15 likewise.
const LINE_BYTES: u64 = 125;

/// Bytes of the fixed `accounts` table (100000 rows with its indexes), measured likewise.
const ACCOUNTS_BYTES: u64 = 15_000_000;

/// Two writers at once, one per half of `1..=rows`, each running `insert` with `{lo}` and `{hi}`.
async fn fill(url: &str, rows: i64, insert: &str) -> Result<()> {
    let half = rows / 2;
    let one = |lo: i64, hi: i64| {
        let url = url.to_string();
        let sql = insert
            .replace("{lo}", &lo.to_string())
            .replace("{hi}", &hi.to_string());
        async move {
            let c = connect(&url, Server::Source).await?;
            c.batch_execute(&sql).await?;
            Ok::<_, anyhow::Error>(())
        }
    };
    tokio::try_join!(one(1, half), one(half + 1, rows))?;
    Ok(())
}

/// Creates the shape's database on the source; returns its size on disk (bytes), the main
/// table's name and its rows.
pub(super) async fn generate(
    bench: &Bench,
    shape: Shape,
    size_mb: u64,
) -> Result<(u64, &'static str, i64)> {
    bench.fresh_databases(DB).await?;
    let url = bench.source_db(DB)?;
    let c = connect(&url, Server::Source).await?;
    c.batch_execute(&super::as_app()).await?;
    let (table, rows) = match shape {
        Shape::Events => {
            let rows =
                ((size_mb * 1_000_000).saturating_sub(ACCOUNTS_BYTES) / ROW_BYTES).max(1000) as i64;
            c.batch_execute(
                "CREATE TABLE accounts (id bigint PRIMARY KEY, email text NOT NULL UNIQUE, created_at timestamptz NOT NULL);
                 CREATE TABLE events (id bigint PRIMARY KEY, account_id bigint NOT NULL REFERENCES accounts(id), kind text NOT NULL, payload text NOT NULL, created_at timestamptz NOT NULL);
                 INSERT INTO accounts SELECT g, 'user' || g || '@example.com', timestamptz '2025-01-01' + g * interval '1 minute' FROM generate_series(1, 100000) g;",
            )
            .await?;
            fill(&url, rows, "INSERT INTO events SELECT g, 1 + g % 100000, 'kind' || (g % 17), repeat(md5(g::text), 6), timestamptz '2025-01-01' + g * interval '1 second' FROM generate_series({lo}, {hi}) g").await?;
            c.batch_execute("CREATE INDEX events_account_id ON events (account_id)")
                .await?;
            ("events", rows)
        }
        Shape::Composite => {
            let rows = (size_mb * 1_000_000 / 4 / LINE_BYTES).max(1_000_000) as i64;
            c.batch_execute(
                "CREATE TABLE line_items (order_id bigint, line int, sku text NOT NULL, quantity int NOT NULL, price_cents bigint NOT NULL, added_at timestamptz NOT NULL, PRIMARY KEY (order_id, line))",
            )
            .await?;
            fill(&url, rows, "INSERT INTO line_items SELECT g / 8, g % 8, 'SKU-' || (g % 5000), 1 + g % 13, g % 100000, timestamptz '2025-01-01' + g * interval '1 second' FROM generate_series({lo}, {hi}) g").await?;
            c.batch_execute("CREATE INDEX line_items_sku ON line_items (sku)")
                .await?;
            ("line_items", rows)
        }
    };
    c.batch_execute("VACUUM ANALYZE").await?;
    let size: i64 = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0);
    Ok((size as u64, table, rows))
}

pub(super) async fn fresh_target(bench: &Bench) -> Result<()> {
    let c = super::admin(&bench.target_url, Server::Target).await?;
    c.batch_execute(&format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        ident(DB)
    ))
    .await?;
    // Owned by the application's role, which owns the tables (an admin that is not a
    // superuser may make a role the owner of a table only where that role may create).
    c.batch_execute(&format!(
        "CREATE DATABASE {} OWNER {}",
        ident(DB),
        super::APP_ROLE
    ))
    .await?;
    Ok(())
}

/// Rows of `table` on the target, and how many of its indexes and constraints are there and
/// valid (a method that skipped post-data would look fast).
pub(super) async fn target_rows(bench: &Bench, table: &str) -> Result<(i64, i64)> {
    let c = connect(&bench.target_db(DB)?, Server::Target).await?;
    let r = c
        .query_one(
            &format!(
                "SELECT (SELECT count(*) FROM {table}), \
                 (SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid WHERE c.relname = '{table}' AND i.indisvalid) \
                 + (SELECT count(*) FROM pg_constraint WHERE conrelid = '{table}'::regclass AND convalidated AND contype = 'f')"
            ),
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

pub(super) async fn native_subscription(bench: &Bench, jobs: usize) -> Result<()> {
    let src_url = bench.source_db(DB)?;
    let tgt_url = bench.target_db(DB)?;
    let sp = ConnParts::parse(&src_url, Server::Source)?;
    let tgt_admin = super::admin(&bench.target_url, Server::Target).await?;
    // The native copy's parallelism is a server setting: ALTER SYSTEM where the admin may (a
    // superuser), else the server's own value (RDS: the parameter group's), said so.
    let set = tgt_admin
        .batch_execute(&format!(
            "ALTER SYSTEM SET max_sync_workers_per_subscription = {jobs}; SELECT pg_reload_conf()"
        ))
        .await
        .is_ok();
    if !set {
        let r = tgt_admin
            .query_one(
                "SELECT current_setting('max_sync_workers_per_subscription')",
                &[],
            )
            .await?;
        let workers: String = r.get(0);
        eprintln!("bench: the native subscription copies with the server's max_sync_workers_per_subscription = {workers} (ALTER SYSTEM is refused to the admin role; a parameter group sets it on RDS)");
    }
    let pre = dump_section(&sp, "pre-data", None).await?;
    let tgt = connect(&tgt_url, Server::Target).await?;
    tgt.batch_execute(&pre).await?;
    let src = connect(&src_url, Server::Source).await?;
    // FOR ALL TABLES needs a superuser; the tables' owner may publish them by name.
    let tables: String = src
        .query_one(
            "SELECT coalesce(string_agg(format('%I.%I', schemaname, tablename), ', '), '') FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await?
        .get(0);
    src.batch_execute(&format!(
        "DROP PUBLICATION IF EXISTS bench_native; CREATE PUBLICATION bench_native FOR TABLE {tables}"
    ))
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
    if set {
        tgt_admin
            .batch_execute(
                "ALTER SYSTEM RESET max_sync_workers_per_subscription; SELECT pg_reload_conf()",
            )
            .await?;
    }
    Ok(())
}

/// Runs the part and prints its figures: each shape copied by the three methods.
///
/// # Errors
/// Generation or a copy method fails.
pub async fn run(bench: &Bench, opts: &Options) -> Result<()> {
    for shape in [Shape::Events, Shape::Composite] {
        let result = run_shape(bench, opts, shape).await;
        bench.drop_databases(DB).await;
        result?;
    }
    Ok(())
}

async fn run_shape(bench: &Bench, opts: &Options, shape: Shape) -> Result<()> {
    let t = Instant::now();
    let (size, table, rows) = generate(bench, shape, opts.size_mb).await?;
    let mb = size as f64 / 1e6;
    match shape {
        Shape::Events => println!("\n(b) initial copy of a generated database of {mb:.0} MB (accounts 100000 rows; events {rows} rows, bigint key, an index, a foreign key) with {} parallel job(s), each method into a fresh target; generated in {:.1} s", opts.jobs, secs(t)),
        Shape::Composite => println!("\n(b) initial copy of a generated database of {mb:.0} MB (line_items {rows} rows, composite primary key (order_id, line), an index) with {} parallel job(s), each method into a fresh target; generated in {:.1} s", opts.jobs, secs(t)),
    }
    let mut figures = Vec::new();
    let check = |(copied, objects): (i64, i64)| {
        if copied != rows {
            bail!("{table}: {copied} rows on the target, {rows} on the source");
        }
        Ok(objects)
    };

    fresh_target(bench).await?;
    let dir = tempfile::tempdir()?;
    bench.scratch_project(dir.path(), DB, &runbook(opts.jobs))?;
    let t = Instant::now();
    let (records, rss, cpu) = bench.rehearse(dir.path(), DB)?;
    let s = secs(t);
    let objects = check(target_rows(bench, table).await?)?;
    let parts = records
        .iter()
        .find_map(|e| match &e.event {
            Event::StepApplied(a) => a.outputs.get("seconds")?.as_object().cloned(),
            _ => None,
        })
        .unwrap_or_default();
    let parts: Vec<String> = parts
        .iter()
        .map(|(k, v)| format!("{} {:.1} s", k.replace('_', " "), v.as_f64().unwrap_or(0.0)))
        .collect();
    println!("  cutover postgres.replicate: {s:.1} s ({:.1} MB/s), {rows} {table} rows, {objects} valid indexes/foreign keys; cutover process: peak RSS {:.0} MB, CPU {cpu:.1} s ({:.1} ms per MB)", mb / s, rss as f64 / 1e6, cpu * 1000.0 / mb);
    println!("    the step's parts: {}", parts.join(", "));
    figures.push(("cutover", s));
    bench.drop_replication(DB).await;

    fresh_target(bench).await?;
    let s = bench.dump_restore(DB, opts.jobs).await?;
    let objects = check(target_rows(bench, table).await?)?;
    println!("  pg_dump -Fd -j {0} + pg_restore -j {0}: {s:.1} s ({1:.1} MB/s), {objects} valid indexes/foreign keys", opts.jobs, mb / s);
    figures.push(("pg_dump/pg_restore", s));

    fresh_target(bench).await?;
    let t = Instant::now();
    native_subscription(bench, opts.jobs).await?;
    let s = secs(t);
    let objects = check(target_rows(bench, table).await?)?;
    println!("  native subscription (copy_data = true, max_sync_workers_per_subscription = {}), then post-data: {s:.1} s ({:.1} MB/s), {objects} valid indexes/foreign keys", opts.jobs, mb / s);
    figures.push(("native subscription", s));

    let ours = figures[0].1.max(0.001);
    println!(
        "  ratios (cutover's time / theirs): {}",
        figures[1..]
            .iter()
            .map(|(n, s)| format!("vs {n} {:.2}", ours / s.max(0.001)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
