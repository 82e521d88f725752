//! The replication part: one pgbench load (`pgbench -N`, simple-update: one UPDATE of
//! `pgbench_accounts` and one INSERT into `pgbench_history` per transaction) replicated from
//! the legacy server to the target two ways, one after the other on fresh databases: a native
//! subscription, and `cutover relay` (the tool's own replication). Two figures per method:
//!
//! - **under load**: the consumer runs while pgbench does; rows applied per second from the
//!   load's start until the consumer confirms the load's last LSN (a consumer that keeps up
//!   scores the load's own rate);
//! - **backlog**: the consumer starts after the same load has finished (its slot holds every
//!   change); rows per second until it confirms the last LSN: how fast it applies at most.
//!
//! Each method's result is checked: `pgbench_accounts` and `pgbench_history` equal on both
//! sides (an MD5 of every row in key order).

use super::{run_tool, secs, Bench, Options};
use anyhow::{bail, Context, Result};
use cutover::providers::postgres::{connect, literal, ConnParts, Server};
use std::time::{Duration, Instant};

const DB: &str = "cutover_bench_repl";
const SLOT: &str = "bench_slot";
const PUBLICATION: &str = "bench_pub";

/// How the changes reach the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Native,
    Relay,
}

/// When the consumer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    UnderLoad,
    Backlog,
}

/// One measurement.
struct Figure {
    transactions: u64,
    rows: u64,
    seconds: f64,
    relay_rss_kb: Option<u64>,
}

/// Runs pgbench on the source's bench database; returns the transactions it processed.
async fn load(bench: &Bench, opts: &Options) -> Result<u64> {
    let url = bench.app_db(Server::Source, DB)?;
    let p = ConnParts::parse(&url, Server::Source)?;
    let out = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-N",
            "-c",
            &opts.repl_clients.to_string(),
            "-j",
            &opts.repl_clients.to_string(),
            "-T",
            &opts.repl_seconds.to_string(),
            DB,
        ])
        .envs(
            p.libpq_env()
                .into_iter()
                .filter(|(k, _)| *k != "PGDATABASE"),
        )
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run pgbench (Debian package postgresql-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    text.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .with_context(|| format!("pgbench said no transaction count: {text}"))
}

async fn lsn(c: &tokio_postgres::Client) -> Result<String> {
    Ok(c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0))
}

/// Waits until the slot confirmed `goal` (at most 30 minutes).
async fn confirmed(c: &tokio_postgres::Client, goal: &str) -> Result<()> {
    let t = Instant::now();
    loop {
        let done: bool = c
            .query_one(
                &format!("SELECT coalesce(confirmed_flush_lsn >= {}::pg_lsn, false) FROM pg_replication_slots WHERE slot_name = '{SLOT}'", literal(goal)),
                &[],
            )
            .await?
            .get(0);
        if done {
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("the consumer did not confirm {goal} within 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Peak resident memory of process `pid` (kB), from /proc.
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Fresh databases with pgbench's tables (identical on both sides: pgbench's initial data is
/// deterministic), a publication and a slot on the source.
async fn prepare(bench: &Bench, opts: &Options) -> Result<tokio_postgres::Client> {
    bench.fresh_databases(DB).await?;
    for side in [Server::Source, Server::Target] {
        let url = bench.app_db(side, DB)?;
        run_tool(
            "pgbench",
            &["-i", "-q", "-s", &opts.repl_scale.to_string(), DB],
            &url,
            side,
        )
        .await?;
    }
    let source = connect(&bench.source_db(DB)?, Server::Source).await?;
    source
        .batch_execute(&format!(
            "CREATE PUBLICATION {PUBLICATION} FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history"
        ))
        .await?;
    // Its own statement: a slot is not created in a transaction that wrote.
    source
        .batch_execute(&format!(
            "SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')"
        ))
        .await?;
    Ok(source)
}

/// A consumer of the slot: a subscription on the target, or a `cutover relay` process.
enum Consumer {
    Native(tokio_postgres::Client),
    Relay(tokio::process::Child),
}

async fn start(bench: &Bench, method: Method) -> Result<Consumer> {
    Ok(match method {
        Method::Native => {
            let target = connect(&bench.target_db(DB)?, Server::Target).await?;
            let source = ConnParts::parse(&bench.source_db(DB)?, Server::Source)?;
            target
                .batch_execute(&format!(
                    "CREATE SUBSCRIPTION bench_sub CONNECTION {} PUBLICATION {PUBLICATION} WITH (create_slot = false, slot_name = '{SLOT}', copy_data = false)",
                    literal(&source.conninfo())
                ))
                .await
                .context("CREATE SUBSCRIPTION (the sandbox's target may subscribe to the legacy server)")?;
            Consumer::Native(target)
        }
        Method::Relay => Consumer::Relay(
            tokio::process::Command::new(&bench.cutover)
                .args([
                    "relay",
                    "--slot",
                    SLOT,
                    "--publication",
                    PUBLICATION,
                    "--publisher",
                    "source",
                ])
                .env("CUTOVER_RELAY_PUBLISHER_URL", bench.source_db(DB)?)
                .env("CUTOVER_RELAY_DESTINATION_URL", bench.target_db(DB)?)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start cutover relay")?,
        ),
    })
}

async fn stop(c: Consumer) -> Option<u64> {
    match c {
        Consumer::Native(target) => {
            let _ = target.batch_execute("DROP SUBSCRIPTION bench_sub").await;
            None
        }
        Consumer::Relay(mut child) => {
            let rss = child.id().and_then(peak_rss_kb);
            let _ = child.kill().await;
            rss
        }
    }
}

/// Both sides' pgbench tables equal.
async fn check(bench: &Bench) -> Result<()> {
    let q = "SELECT (SELECT md5(string_agg(a::text, ',' ORDER BY aid)) FROM pgbench_accounts a) || (SELECT count(*) || md5(coalesce(string_agg(h::text, ',' ORDER BY h::text), '')) FROM pgbench_history h)";
    let s: String = connect(&bench.source_db(DB)?, Server::Source)
        .await?
        .query_one(q, &[])
        .await?
        .get(0);
    let t: String = connect(&bench.target_db(DB)?, Server::Target)
        .await?
        .query_one(q, &[])
        .await?
        .get(0);
    if s != t {
        bail!("the target's pgbench tables differ from the source's");
    }
    Ok(())
}

async fn measure(bench: &Bench, opts: &Options, method: Method, when: When) -> Result<Figure> {
    let source = prepare(bench, opts).await?;
    let (consumer, t, transactions) = match when {
        When::UnderLoad => {
            let c = start(bench, method).await?;
            let t = Instant::now();
            (c, t, load(bench, opts).await?)
        }
        When::Backlog => {
            let n = load(bench, opts).await?;
            (start(bench, method).await?, Instant::now(), n)
        }
    };
    let goal = lsn(&source).await?;
    confirmed(&source, &goal).await?;
    let seconds = secs(t);
    let relay_rss_kb = stop(consumer).await;
    check(bench).await?;
    bench.drop_databases(DB).await;
    Ok(Figure {
        transactions,
        rows: transactions * 2,
        seconds,
        relay_rss_kb,
    })
}

/// Runs the part and prints its table.
///
/// # Errors
/// A tool, a statement or the equality check fails (the databases are dropped).
pub async fn run(bench: &Bench, opts: &Options) -> Result<()> {
    println!(
        "\nreplication: pgbench -N, {} client(s) for {} s at scale {}, from the legacy server to the target; rows = 2 per transaction (UPDATE pgbench_accounts, INSERT pgbench_history)",
        opts.repl_clients, opts.repl_seconds, opts.repl_scale
    );
    let mut rates = std::collections::BTreeMap::new();
    for when in [When::UnderLoad, When::Backlog] {
        for method in [Method::Native, Method::Relay] {
            let r = measure(bench, opts, method, when).await;
            let f = match r {
                Ok(f) => f,
                Err(e) => {
                    bench.drop_databases(DB).await;
                    return Err(e);
                }
            };
            let rate = f.rows as f64 / f.seconds.max(0.001);
            println!(
                "  {:<10} {:<7} {:>8} transactions, {:>8} rows in {:>7.2} s: {:>9.0} rows/s{}",
                match when {
                    When::UnderLoad => "under load",
                    When::Backlog => "backlog",
                },
                match method {
                    Method::Native => "native",
                    Method::Relay => "relay",
                },
                f.transactions,
                f.rows,
                f.seconds,
                rate,
                f.relay_rss_kb
                    .map(|k| format!(" (relay peak RSS {} MB)", k / 1024))
                    .unwrap_or_default()
            );
            rates.insert((when == When::Backlog, method == Method::Relay), rate);
        }
        let (native, relay) = (
            rates[&(when == When::Backlog, false)],
            rates[&(when == When::Backlog, true)],
        );
        println!("  relay / native: {:.2}x", relay / native.max(0.001));
    }
    Ok(())
}
