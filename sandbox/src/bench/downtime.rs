//! The downtime part: N rehearsed cutover windows (replicate, wait for lag, freeze, drain, sync
//! sequences, verify, fallback, flip the Secret) under a heartbeat writer that uses the Secret's
//! new value when the application's pods would, per reload mode (`restart`: a Deployment
//! `cutover-bench-app` reading the Secret as environment variables, rolled out by the flip;
//! `volume`: a mounted Secret seen `--volume-delay` after the flip); then the outage a
//! stop-dump-restore cutover of the same database would have.

use super::{secs, Bench, Options};
use anyhow::{Context, Result};
use cutover::config::Reload;
use cutover::engine::event::Event;
use cutover::providers::postgres::{connect, Server};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use std::time::Instant;

const DB: &str = "cutover_bench_window";
const SECRET: &str = "cutover-bench-db";
/// The Deployment that reads [`SECRET`] as its pods' environment.
const DEPLOYMENT: &str = "cutover-bench-app";

fn runbook(rate: f64, jobs: usize, reload: Reload, volume_delay: std::time::Duration) -> String {
    if reload == Reload::Pooler {
        return pooler_runbook(rate, jobs);
    }
    let (mode, restart) = match reload {
        Reload::Restart => (
            format!("reload: restart, deployments: [{DEPLOYMENT}]"),
            format!(", restart: [deployment/{DEPLOYMENT}]"),
        ),
        Reload::Volume => (
            format!(
                "reload: volume, volume_delay: {}ms",
                volume_delay.as_millis()
            ),
            String::new(),
        ),
        Reload::Pooler => ("reload: pooler".to_string(), String::new()),
    };
    format!(
        "name: bench-window
heartbeat: {{ namespace: shop, secret: {SECRET}, key: DATABASE_URL, writes_per_second: {rate}, {mode}, max_write_outage: 5m }}
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
      - {{ id: flip, kind: k8s.flip_secret, with: {{ namespace: shop, secret: {SECRET}, data: {{ DATABASE_URL: \"{{{{ secrets.target_app_database_url }}}}\" }}{restart} }}, timeout: 10m }}
"
    )
}

/// The window through the environment's PgBouncer, as runbooks/shop-cutover.yaml has it: the
/// pooler pauses the bench database's entry first, the window runs, the entry moves to the
/// target and resumes.
fn pooler_runbook(rate: f64, jobs: usize) -> String {
    format!(
        "name: bench-window
heartbeat: {{ namespace: shop, secret: {SECRET}, key: DATABASE_URL, writes_per_second: {rate}, reload: pooler, max_write_outage: 5m }}
phases:
  - name: prepare
    steps:
      - {{ id: replicate, kind: postgres.replicate, with: {{ jobs: {jobs} }} }}
      - {{ id: synced, kind: postgres.wait_lag, timeout: 5m }}
      - {{ id: prepass, kind: postgres.verify, with: {{ jobs: {jobs} }}, timeout: 1h }}
  - name: cutover
    steps:
      - {{ id: pause, kind: pgbouncer.pause, with: {{ admin: [\"{{{{ secrets.pooler_admin_url }}}}\"], database: {DB}, budget: 5s }} }}
      - {{ id: freeze, kind: postgres.freeze_writes }}
      - {{ id: drained, kind: postgres.wait_lag, timeout: 2m }}
      - {{ id: sequences, kind: postgres.sync_sequences, with: {{ margin: 1000 }} }}
      - {{ id: verify, kind: postgres.verify, with: {{ method: changed-since-prepass }} }}
      - {{ id: fallback, kind: postgres.fallback }}
      - {{ id: flip, kind: pgbouncer.repoint, with: {{ admin: [\"{{{{ secrets.pooler_admin_url }}}}\"], database: {DB}, upstream: \"{{{{ secrets.target_app_database_url }}}}\", namespace: {ns}, secret: {secret} }} }}
",
        ns = crate::pooler::SECRET_NAMESPACE,
        secret = crate::pooler::SECRET,
    )
}

/// Puts the bench database behind the environment's PgBouncer, on the legacy database: the
/// bench's role may log in (its `userlist.txt`, re-read on RELOAD), the bench database's entry
/// is in the pooler's `[databases]` Secret (which the sidecar writes to disk) and every instance
/// shows it. Returns the application's URL through the pooler.
async fn behind_pooler(bench: &Bench, opts: &Options) -> Result<String> {
    use cutover::providers::pgbouncer::{Console, DatabasesFile, Upstream};
    let admin = std::env::var(format!(
        "CUTOVER_{}_POOLER_ADMIN_URL",
        opts.env.to_uppercase()
    ))
    .context("the pooler's admin URL (eval \"$(cutover-sandbox env)\")")?;
    let users = crate::pooler::dir(&opts.sandbox_dir, &opts.env).join("userlist.txt");
    let text = std::fs::read_to_string(&users)
        .with_context(|| format!("{} (is the sandbox up in --dir?)", users.display()))?;
    let quoted = format!("\"{}\"", super::APP_ROLE);
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(&quoted))
        .map(str::to_string)
        .collect();
    lines.push(format!("{quoted} \"{}\"", bench.app_password));
    std::fs::write(&users, lines.join("\n") + "\n")?;
    let source = Upstream::from_url(&bench.app_db(Server::Source, DB)?)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let api = shop_api::<Secret>(bench).await?;
    let mut s = api.get(crate::pooler::SECRET).await?;
    let file = s
        .data
        .as_ref()
        .and_then(|d| d.get(crate::pooler::KEY))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .unwrap_or_default();
    let mut file = DatabasesFile::parse(&file).map_err(|e| anyhow::anyhow!("{e}"))?;
    file.set(DB, source.clone());
    s.data.get_or_insert_with(Default::default).insert(
        crate::pooler::KEY.to_string(),
        ByteString(file.render().into_bytes()),
    );
    api.replace(crate::pooler::SECRET, &Default::default(), &s)
        .await
        .context("write the pooler's [databases] Secret")?;
    let console = Console::connect(&admin).await?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        console.reload().await?;
        if console
            .databases()
            .await?
            .iter()
            .any(|d| d.name == DB && source.shown_by(d) && !d.paused)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "PgBouncer does not show {DB} on the legacy database 10 s after its Secret changed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tls = cutover::providers::postgres::ConnParts::parse(
        &bench.app_db(Server::Source, DB)?,
        Server::Source,
    )?
    .tls
    .url_query();
    Ok(format!(
        "postgres://{}:{}@{}/{DB}{tls}",
        super::APP_ROLE,
        bench.app_password,
        console.address
    ))
}

async fn seed(bench: &Bench, rows: i64) -> Result<()> {
    bench.fresh_databases(DB).await?;
    let c = connect(&bench.source_db(DB)?, Server::Source).await?;
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

/// The objects of kind `K` in namespace `shop` of the environment's cluster (the bench's
/// Secret and Deployment).
async fn shop_api<K>(bench: &Bench) -> Result<kube::Api<K>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    let providers =
        cutover::providers::Providers::new(bench.env.clone(), "bench", Default::default());
    Ok(kube::Api::namespaced(providers.kube().await?, "shop"))
}

/// The Deployment `cutover-bench-app` (2 replicas) whose pods read the bench Secret as their
/// environment, created afresh; returns once it is available.
async fn app_deployment(bench: &Bench) -> Result<()> {
    let api: kube::Api<Deployment> = shop_api(bench).await?;
    let _ = api.delete(DEPLOYMENT, &Default::default()).await;
    let d: Deployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": DEPLOYMENT, "labels": {"app": DEPLOYMENT}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": DEPLOYMENT}},
                 "template": {"metadata": {"labels": {"app": DEPLOYMENT}},
                              "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9",
                                                       "env": [{"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "DATABASE_URL"}}}]}]}}}
    }))?;
    api.create(&Default::default(), &d)
        .await
        .context("create the bench Deployment")?;
    // Its pods must be running before the window, as the application's are.
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let d = api.get(DEPLOYMENT).await?;
        if matches!(
            cutover::providers::kube::rollout(&d),
            cutover::providers::kube::Rollout::Complete { .. }
        ) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "deployment {DEPLOYMENT} did not become available within 120 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn point_secret_at(bench: &Bench, url: String) -> Result<()> {
    let api = shop_api::<Secret>(bench).await?;
    let _ = api.delete(SECRET, &Default::default()).await;
    let mut s = Secret::default();
    s.metadata.name = Some(SECRET.into());
    s.data = Some([("DATABASE_URL".to_string(), ByteString(url.into_bytes()))].into());
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
    let mut per_mode = Vec::new();
    for &reload in &opts.reload {
        let mut p50s = Vec::new();
        for &rows in &opts.downtime_rows {
            p50s.push((rows, run_size(bench, opts, rows, reload).await?));
        }
        if let [(small, base), rest @ ..] = p50s.as_slice() {
            for (rows, p50) in rest {
                println!(
                    "  size ({}): p50 write outage at {rows} rows / at {small} rows = {:.2} ({p50} ms / {base} ms)",
                    reload.as_str(),
                    *p50 as f64 / (*base).max(1) as f64
                );
            }
        }
        per_mode.push((reload, p50s));
    }
    if per_mode.len() > 1 {
        println!("\n  per reload mode (p50 write outage at each size):");
        for (reload, p50s) in &per_mode {
            let cells: Vec<String> = p50s
                .iter()
                .map(|(rows, p50)| format!("{rows} rows: {p50} ms"))
                .collect();
            println!("    {:<8} {}", reload.as_str(), cells.join(", "));
        }
    }
    Ok(())
}

/// One size and reload mode: N windows, then stop-dump-restore; returns the p50 outage,
/// milliseconds.
async fn run_size(
    bench: &Bench,
    opts: &Options,
    downtime_rows: i64,
    reload: Reload,
) -> Result<u64> {
    let how = match reload {
        Reload::Restart => format!(
            "reload restart: the writer uses the new URL once deployment/{DEPLOYMENT} (2 replicas) has rolled out"
        ),
        Reload::Volume => format!(
            "reload volume: the writer uses the new URL {} s after the flip",
            opts.volume_delay.as_secs_f64()
        ),
        Reload::Pooler => "reload pooler: the application reaches the database through PgBouncer, which pauses, moves its upstream and resumes; no pod restarts".into(),
    };
    println!(
        "\n(a) downtime: {} cutover windows of a {}-row database under {} heartbeat writes/s ({how})",
        opts.runs, downtime_rows, opts.rate
    );
    let mut gaps = Vec::new();
    let mut failed_total = 0u64;
    let mut wait_maxes: Vec<u64> = Vec::new();
    let mut wait_p99s: Vec<u64> = Vec::new();
    let mut missing_total = 0u64;
    let mut acked_total = 0u64;
    let mut rates: Vec<f64> = Vec::new();
    // How long the flip took in each run: with `restart`, the rollout that any cutover needs
    // before the application reaches a new database, the stop-dump-restore one included.
    let mut flips: Vec<u64> = Vec::new();
    for i in 1..=opts.runs {
        seed(bench, downtime_rows).await?;
        let url = match reload {
            Reload::Pooler => behind_pooler(bench, opts).await?,
            Reload::Restart | Reload::Volume => bench.app_db(Server::Source, DB)?,
        };
        point_secret_at(bench, url).await?;
        app_deployment(bench).await?;
        let dir = tempfile::tempdir()?;
        bench.scratch_project(
            dir.path(),
            DB,
            &runbook(opts.rate, opts.jobs, reload, opts.volume_delay),
        )?;
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
            .find_map(|e| match &e.event {
                Event::Heartbeat(h) => Some(h.as_ref().clone()),
                _ => None,
            })
            .context("the rehearsal recorded no heartbeat")?;
        let aws = hb
            .paths
            .iter()
            .find(|p| p.path == "aws")
            .cloned()
            .unwrap_or_default();
        failed_total += aws.failed;
        wait_maxes.push(aws.wait_max_ms);
        wait_p99s.push(aws.wait_p99_ms);
        let gap = hb.longest_gap_ms;
        let missing = hb
            .missing
            .context("heartbeat without a missing-write check")?;
        let acked = hb.acknowledged;
        let writing = hb.writing_ms;
        // The rate the writer sustained while the database took writes (the outage left out).
        let rate =
            acked.saturating_sub(1) as f64 * 1000.0 / (writing.saturating_sub(gap)).max(1) as f64;
        println!(
            "  run {i}: write outage {gap} ms; {acked} of {} writes acknowledged over {:.1} s, {rate:.0} acknowledged writes/s outside the outage; {} failed; slowest acknowledged write {} ms (p99 {} ms); {missing} acknowledged write(s) missing (run {:.1} s)",
            hb.attempted,
            writing as f64 / 1000.0,
            aws.failed,
            aws.wait_max_ms,
            aws.wait_p99_ms,
            secs(started)
        );
        // Where the window's time went: each step from the freeze to the flip.
        let completed: Vec<(&str, u64)> = records
            .iter()
            .filter_map(|e| match &e.event {
                Event::StepCompleted(c) => Some((e.step.as_deref()?, c.duration_ms)),
                _ => None,
            })
            .collect();
        let window: Vec<String> = completed
            .iter()
            .copied()
            .skip_while(|(s, _)| *s != "pause" && *s != "freeze")
            .map(|(s, ms)| format!("{s} {ms} ms"))
            .collect();
        println!("         window steps: {}", window.join(", "));
        rates.push(rate);
        if let Some(ms) = completed
            .iter()
            .find(|(s, _)| *s == "flip")
            .map(|(_, ms)| *ms)
        {
            flips.push(ms);
        }
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
        "  cutover ({}): p50 write outage {p50} ms, max {max} ms over {} runs at ≥ {min_rate:.0} acknowledged writes/s; {missing_total} of {acked_total} acknowledged writes missing",
        reload.as_str(),
        gaps.len()
    );
    // What the application's users met, per path: writes that failed, and how long the
    // acknowledged ones waited (the slowest, and the worst run's 99th percentile).
    println!(
        "  path {}: {failed_total} failed write(s); slowest acknowledged write {} ms; p99 {} ms (worst run); {missing_total} acknowledged write(s) missing",
        reload.as_str(),
        wait_maxes.iter().max().copied().unwrap_or(0),
        wait_p99s.iter().max().copied().unwrap_or(0)
    );

    // What a user would otherwise do: stop writes, dump and restore, point the app at the copy.
    seed(bench, downtime_rows).await?;
    let dr = (bench.dump_restore(DB, opts.jobs).await? * 1000.0) as u64;
    println!("  pg_dump -Fd -j {0} + pg_restore -j {0} of the same database while writes are stopped: {dr} ms", opts.jobs);
    // Like for like: the application reaches the restored copy the same way it reaches the
    // target after the flip (a rollout, or the kubelet's delay).
    flips.sort_unstable();
    let (reload_ms, how) = match reload {
        Reload::Restart => (
            flips
                .get(flips.len().saturating_sub(1) / 2)
                .copied()
                .unwrap_or(0),
            "the p50 flip and rollout above",
        ),
        Reload::Volume => (opts.volume_delay.as_millis() as u64, "the volume delay"),
        Reload::Pooler => (0, "none"),
    };
    if reload == Reload::Restart {
        println!(
            "  restart: p50 write outage {p50} ms {} the p50 rollout {reload_ms} ms (writes fail until the new pods serve)",
            if p50 >= reload_ms { "≥" } else { "<" }
        );
    }
    let dr_total = dr + reload_ms;
    println!(
        "  stop-dump-restore with the same reload ({how}, {reload_ms} ms): write outage at least {dr_total} ms"
    );
    println!(
        "  ratio: stop-dump-restore outage / cutover p50 outage = {:.2}",
        dr_total as f64 / p50.max(1) as f64
    );
    bench.drop_databases(DB).await;
    if let Ok(api) = shop_api::<Secret>(bench).await {
        let _ = api.delete(SECRET, &Default::default()).await;
    }
    if let Ok(api) = shop_api::<Deployment>(bench).await {
        let _ = api.delete(DEPLOYMENT, &Default::default()).await;
    }
    if missing_total > 0 {
        anyhow::bail!("{missing_total} acknowledged write(s) missing after the cutovers");
    }
    Ok(p50)
}
