//! A heartbeat writer that stands for an application: it asks a caller-supplied source for the
//! database URL the application uses now (the caller decides when a changed Secret takes
//! effect) every `reload` interval, reconnects when the URL changes, and inserts one row per tick
//! into a heartbeat table, remembering every write the server acknowledged. While it runs,
//! [`Heartbeat::live`] says how long writes have gone unacknowledged and the last error; stopping
//! it reports the longest gap between consecutive acknowledged writes (the write outage) and
//! which acknowledged writes are missing from the database the URL names at the end.
//!
//! Owns the writer and its table; must not know about runbooks or the event log.

use super::Server;
use super::{connect, ident, literal, pg};
use crate::providers::ProviderError;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the writer reads its URL from; called every reload interval.
pub type UrlSource = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Whether the path serves users now, polled every 500 ms: `Some(d)` when it does and will keep
/// doing so for at least `d` (an answer naming it may be cached that long), `None` when nothing
/// currently sends users to it.
pub type ServedSource = Arc<dyn Fn() -> BoxFuture<'static, Option<Duration>> + Send + Sync>;

/// The longest time writes went unacknowledged while the path served users: a gap opens at an
/// acknowledged write (or when the path starts serving again) and closes at the next
/// acknowledged write, or when the path stops serving users.
#[derive(Debug, Default)]
struct GapMeter {
    open_since: Option<(Instant, DateTime<Utc>)>,
    acked_once: bool,
    longest_ms: u64,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    /// Whether the path served users at the last tick.
    serving: bool,
}

impl GapMeter {
    fn close(&mut self, at: (Instant, DateTime<Utc>)) {
        if let Some((t, w)) = self.open_since.take() {
            let gap = at.0.saturating_duration_since(t).as_millis() as u64;
            if gap > self.longest_ms {
                self.longest_ms = gap;
                self.from = Some(w);
                self.to = Some(at.1);
            }
        }
    }

    /// An acknowledged write at `now`, while the path serves users or not.
    fn ack(&mut self, now: (Instant, DateTime<Utc>), served: bool) {
        self.close(now);
        self.acked_once = true;
        self.open_since = served.then_some(now);
    }

    /// A tick at `now`: a path that stopped serving users at `until` closes its gap there; one
    /// that serves users again opens one.
    fn tick(&mut self, now: (Instant, DateTime<Utc>), until: Option<Instant>) {
        self.serving = until.is_none_or(|u| now.0 <= u);
        match until {
            Some(u) if now.0 > u => {
                let back = now.0 - u;
                let wall = now.1 - chrono::Duration::from_std(back).unwrap_or_default();
                self.close((u, wall));
            }
            _ if self.open_since.is_none() && self.acked_once => self.open_since = Some(now),
            _ => {}
        }
    }
}

/// What a running writer sees now, updated after every tick: what the run checks against its
/// write budget while steps run.
#[derive(Debug, Clone, Default)]
pub struct Live {
    /// Since when no write has been acknowledged while the path serves users (`None`: the path
    /// does not serve users now, or the writer has not acknowledged a first write yet).
    pub open_since: Option<Instant>,
    /// The longest gap closed so far, milliseconds.
    pub longest_ms: u64,
    /// Writes acknowledged so far.
    pub acknowledged: u64,
    /// Whether the path serves users now (always, for a path without a served source).
    pub serving: bool,
    /// The last error a write or a connection met (the server's message; no URL), cleared by
    /// an acknowledged write.
    pub last_error: Option<String>,
}

impl Live {
    /// The outage open now, milliseconds (0 when none is).
    pub fn open_ms(&self, now: Instant) -> u64 {
        self.open_since
            .map(|t| now.saturating_duration_since(t).as_millis() as u64)
            .unwrap_or(0)
    }
}

/// Writer settings.
#[derive(Clone)]
pub struct Options {
    /// Heartbeat table (created if missing), unqualified; default `cutover_heartbeat`.
    pub table: String,
    /// Identifies this writer's rows (`writer` column), e.g. the run id.
    pub writer: String,
    /// Attempted writes per second.
    pub rate: f64,
    /// How often the URL is re-read.
    pub reload: Duration,
    /// Whether the path serves users; `None`: always (its gaps always count).
    pub served: Option<ServedSource>,
    /// How long one write may wait for its acknowledgement before it counts as failed (the
    /// application's statement timeout): 1 s where the application reaches the database
    /// directly, longer behind a pooler whose pause makes writes wait.
    pub write_timeout: Duration,
}

/// What a stopped writer saw.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Writes attempted.
    pub attempted: u64,
    /// Writes the server acknowledged (COMMIT returned).
    pub acknowledged: u64,
    /// Longest time between two consecutive acknowledged writes, milliseconds.
    pub longest_gap_ms: u64,
    /// When that gap began (the last acknowledged write before it).
    pub gap_from: Option<DateTime<Utc>>,
    /// When it ended (the first acknowledged write after it).
    pub gap_to: Option<DateTime<Utc>>,
    /// Time from the first acknowledged write to the last, milliseconds.
    pub writing_ms: u64,
    /// True when no write was acknowledged in the 10 s after the writer was asked to stop: the
    /// outage was still open at the end (`longest_gap_ms` counts it up to then).
    pub open_at_end: bool,
    /// Times the writer (re)connected, the first included.
    pub connections: u64,
    /// The URL changed this many times while writing.
    pub url_changes: u64,
    /// Writes refused by the server or not acknowledged within the write timeout, while the
    /// path served users.
    pub failed: u64,
    /// The longest time one acknowledged write took, milliseconds.
    pub wait_max_ms: u64,
    /// The 99th percentile (nearest rank) of the acknowledged writes' times, milliseconds.
    pub wait_p99_ms: u64,
    /// Each acknowledged write's time, milliseconds (for the figures above).
    #[serde(skip)]
    waits_ms: Vec<u32>,
    /// Sequence numbers of acknowledged writes (checked against the final database).
    #[serde(skip)]
    pub acked: Vec<i64>,
    /// The URL in force when the writer stopped (a secret: never print it).
    #[serde(skip)]
    pub final_url: String,
    /// The first error that kept the writer from starting, if any.
    pub error: Option<String>,
    /// When the writer started: the origin of `acked_per_second`.
    pub started_at: Option<DateTime<Utc>>,
    /// Acknowledged writes in each second after `started_at` (index 0 is the first second), over
    /// at most the first [`MAX_SERIES_SECONDS`]: the audit's picture of writes over time.
    pub acked_per_second: Vec<u32>,
}

/// Longest stretch `Report::acked_per_second` covers, seconds (4 hours: 14,400 counts).
pub const MAX_SERIES_SECONDS: usize = 4 * 3600;

/// The nearest-rank percentile `p` (0-100) of `values` (0 when there are none).
pub fn percentile(values: &[u32], p: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

impl Report {
    /// Counts one acknowledged write `since` the writer started.
    fn count_ack(&mut self, since: Duration) {
        let i = since.as_secs() as usize;
        if i >= MAX_SERIES_SECONDS {
            return;
        }
        if self.acked_per_second.len() <= i {
            self.acked_per_second.resize(i + 1, 0);
        }
        self.acked_per_second[i] += 1;
    }
}

/// What one tick's write did, for [`Live`].
enum Write {
    /// No write was attempted (no connection, or the writer is stopping).
    None,
    /// The server acknowledged it.
    Acked,
    /// It failed with this message.
    Failed(String),
}

/// A running writer.
pub struct Heartbeat {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Report>,
    live: Arc<std::sync::Mutex<Live>>,
}

/// Creates the heartbeat table through the URL's database if missing: `(writer text, seq bigint,
/// written_at timestamptz, PRIMARY KEY (writer, seq))`.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn ensure_table(url: &str, table: &str) -> Result<(), ProviderError> {
    let c = connect(url, Server::Application).await?;
    // Present already (a frozen database refuses even CREATE TABLE IF NOT EXISTS): nothing to do.
    let present = c
        .query_typed(
            "SELECT to_regclass($1) IS NOT NULL",
            &[(&ident(table), tokio_postgres::types::Type::TEXT)],
        )
        .await
        .map_err(|e| pg(Server::Application, e))?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    if present {
        return Ok(());
    }
    // Two writers (the legacy and the AWS path) start together: CREATE TABLE IF NOT EXISTS is
    // not safe against a concurrent create of the same name (the second fails on
    // `pg_type_typname_nsp_index`), so the create is serialised by a transaction-scoped advisory
    // lock on the table's name.
    c.batch_execute(&format!(
        "BEGIN; SELECT pg_advisory_xact_lock(hashtext({})); CREATE TABLE IF NOT EXISTS {} (writer text NOT NULL, seq bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (writer, seq)); COMMIT",
        literal(&format!("cutover heartbeat {table}")),
        ident(table)
    ))
    .await
    .map_err(|e| pg(Server::Application, e))
}

impl Heartbeat {
    /// Starts writing. The first URL is read before this returns; the table is created there
    /// (a writer that cannot start reports why in [`Report::error`] when stopped).
    pub async fn start(urls: UrlSource, opts: Options) -> Heartbeat {
        let (stop, mut stopped) = watch::channel(false);
        let first = urls().await;
        let live = Arc::new(std::sync::Mutex::new(Live::default()));
        let shared = live.clone();
        let publish = move |meter: &GapMeter, report: &Report, write: Write| {
            let mut l = shared.lock().unwrap_or_else(|p| p.into_inner());
            l.open_since = meter.open_since.map(|(t, _)| t);
            l.longest_ms = meter.longest_ms;
            l.acknowledged = report.acknowledged;
            l.serving = meter.serving;
            match write {
                Write::Acked => l.last_error = None,
                Write::Failed(e) => l.last_error = Some(e),
                Write::None => {}
            }
        };
        let task = tokio::spawn(async move {
            let mut report = Report::default();
            let mut url = match first {
                Ok(u) => u,
                Err(e) => {
                    report.error = Some(format!("cannot read the database URL: {e}"));
                    return report;
                }
            };
            if let Err(e) = ensure_table(&url, &opts.table).await {
                report.error = Some(e.to_string());
                return report;
            }
            let (url_tx, mut url_rx) = watch::channel(url.clone());
            let reload = opts.reload;
            let watcher = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(reload).await;
                    if let Ok(u) = urls().await {
                        url_tx.send_if_modified(|cur| {
                            if *cur != u {
                                *cur = u;
                                true
                            } else {
                                false
                            }
                        });
                    }
                }
            });
            // When the path serves users until (None: always).
            let (served_tx, served_rx) = watch::channel::<Option<Instant>>(
                // Until the first answer, the path counts as serving users.
                opts.served
                    .as_ref()
                    .map(|_| Instant::now() + Duration::from_secs(3600)),
            );
            let served_poller = opts.served.clone().map(|served| {
                tokio::spawn(async move {
                    let mut first = true;
                    loop {
                        let answer = served().await;
                        let now = Instant::now();
                        served_tx.send_modify(|cur| match answer {
                            // The first answer replaces the provisional hour; later ones only
                            // extend: a cached answer keeps sending users until it expires.
                            Some(d) if first || cur.is_none_or(|c| c < now + d) => {
                                *cur = Some(now + d)
                            }
                            None if first => *cur = Some(now),
                            _ => {}
                        });
                        first = false;
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                })
            });
            let mut meter = GapMeter::default();
            let insert = format!(
                "INSERT INTO {} (writer, seq) VALUES ($1, $2)",
                ident(&opts.table)
            );
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(1.0)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut client: Option<tokio_postgres::Client> = None;
            let mut first_ack: Option<Instant> = None;
            let mut seq = 0i64;
            // Once asked to stop, the writer goes on until one more write is acknowledged (at
            // most 10 s), so an outage still open at the end of the run is measured, not cut off.
            let mut stop_by: Option<Instant> = None;
            let began = Instant::now();
            report.started_at = Some(Utc::now());
            loop {
                tokio::select! {
                    _ = stopped.changed(), if stop_by.is_none() => {
                        stop_by = Some(Instant::now() + Duration::from_secs(10));
                        continue;
                    }
                    _ = tick.tick() => {}
                }
                let until = *served_rx.borrow();
                meter.tick((Instant::now(), Utc::now()), until);
                if stop_by.is_some() && !meter.serving {
                    // Asked to stop while no user is sent this way: its gaps no longer count
                    // (the tick closed any at the moment it stopped serving), so there is no
                    // outage left to measure (a frozen legacy database would never acknowledge).
                    break;
                }
                if stop_by.is_some_and(|t| Instant::now() >= t) {
                    // No write acknowledged since: an outage still open at the end counts up
                    // to now.
                    if meter.open_since.is_some() {
                        meter.close((Instant::now(), Utc::now()));
                        meter.to = None;
                        report.open_at_end = true;
                    }
                    break;
                }
                if url_rx.has_changed().unwrap_or(false) {
                    url = url_rx.borrow_and_update().clone();
                    report.url_changes += 1;
                    client = None;
                }
                if client.is_none() {
                    let c = tokio::time::timeout(
                        Duration::from_secs(1),
                        connect(&url, Server::Application),
                    )
                    .await;
                    match c {
                        Ok(Ok(c)) => {
                            report.connections += 1;
                            client = Some(c);
                        }
                        Ok(Err(e)) => publish(&meter, &report, Write::Failed(e.to_string())),
                        Err(_) => publish(
                            &meter,
                            &report,
                            Write::Failed("connecting took more than 1 s".into()),
                        ),
                    }
                }
                let Some(c) = &client else {
                    publish(&meter, &report, Write::None);
                    continue;
                };
                seq += 1;
                report.attempted += 1;
                let sent = Instant::now();
                // An unnamed statement, parsed, bound and run in one round trip: a pooler in
                // transaction mode may hand each round trip another server connection, where a
                // named prepared statement would not exist.
                match tokio::time::timeout(
                    opts.write_timeout,
                    c.query_typed(
                        &insert,
                        &[
                            (&opts.writer, tokio_postgres::types::Type::TEXT),
                            (&seq, tokio_postgres::types::Type::INT8),
                        ],
                    ),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        let now = (Instant::now(), Utc::now());
                        report
                            .waits_ms
                            .push((now.0 - sent).as_millis().min(u32::MAX as u128) as u32);
                        let served = served_rx.borrow().is_none_or(|u| now.0 <= u);
                        meter.ack(now, served);
                        let first = *first_ack.get_or_insert(now.0);
                        report.writing_ms = (now.0 - first).as_millis() as u64;
                        report.acknowledged += 1;
                        report.acked.push(seq);
                        report.count_ack(now.0 - began);
                        publish(&meter, &report, Write::Acked);
                        if stop_by.is_some() {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        if meter.serving {
                            report.failed += 1;
                        }
                        let msg = match e.as_db_error() {
                            Some(db) => db.message().to_string(),
                            None => e.to_string(),
                        };
                        publish(&meter, &report, Write::Failed(msg));
                        if e.is_closed() || e.as_db_error().is_none() {
                            client = None;
                        }
                    }
                    Err(_) => {
                        if meter.serving {
                            report.failed += 1;
                        }
                        publish(
                            &meter,
                            &report,
                            Write::Failed(format!(
                                "the write took more than {} s",
                                opts.write_timeout.as_secs_f64()
                            )),
                        );
                        client = None
                    }
                }
            }
            watcher.abort();
            if let Some(p) = served_poller {
                p.abort();
            }
            report.wait_max_ms = report.waits_ms.iter().copied().max().unwrap_or(0) as u64;
            report.wait_p99_ms = percentile(&report.waits_ms, 99.0) as u64;
            report.longest_gap_ms = meter.longest_ms;
            report.gap_from = meter.from;
            report.gap_to = meter.to;
            report.final_url = url;
            report
        });
        Heartbeat { stop, task, live }
    }

    /// What the writer sees now (see [`Live`]).
    pub fn live(&self) -> Live {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the writer (after its next acknowledged write, waiting at most 10 s) and returns
    /// what it saw.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

/// The acknowledged sequence numbers of `writer` that `url`'s database does not hold.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn missing(
    url: &str,
    table: &str,
    writer: &str,
    acked: &[i64],
) -> Result<Vec<i64>, ProviderError> {
    let c = connect(url, Server::Application).await?;
    // Unnamed statements only: `url` may name a pooler in transaction mode.
    let rows = c
        .query_typed(
            &format!(
                "SELECT s FROM unnest($2::bigint[]) s WHERE NOT EXISTS (SELECT 1 FROM {} h WHERE h.writer = $1 AND h.seq = s) ORDER BY s",
                ident(table)
            ),
            &[
                (&writer, tokio_postgres::types::Type::TEXT),
                (&acked, tokio_postgres::types::Type::INT8_ARRAY),
            ],
        )
        .await
        .map_err(|e| pg(Server::Application, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> (Instant, DateTime<Utc>) {
        (base + Duration::from_millis(ms), Utc::now())
    }

    #[test]
    fn acknowledged_writes_are_counted_per_second_up_to_the_cap() {
        let mut r = Report::default();
        r.count_ack(Duration::from_millis(10));
        r.count_ack(Duration::from_millis(990));
        r.count_ack(Duration::from_millis(3_200));
        assert_eq!(r.acked_per_second, vec![2, 0, 0, 1]);
        r.count_ack(Duration::from_secs(MAX_SERIES_SECONDS as u64));
        assert_eq!(r.acked_per_second.len(), 4);
    }

    #[test]
    fn gaps_count_only_while_the_path_serves_users() {
        let b = Instant::now();
        // Always served: the longest gap between acknowledged writes.
        let mut m = GapMeter::default();
        m.ack(at(b, 0), true);
        m.ack(at(b, 100), true);
        m.tick(at(b, 200), None);
        m.ack(at(b, 700), true);
        assert_eq!(m.longest_ms, 600);
        // Served until 300 ms: the gap from 100 ms closes there, later silence does not count.
        let mut m = GapMeter::default();
        let until = Some(b + Duration::from_millis(300));
        m.ack(at(b, 100), true);
        m.tick(at(b, 5_000), until);
        m.ack(at(b, 9_000), false);
        assert_eq!(m.longest_ms, 200);
        // Serving again (a new answer names the path): the gap opens then.
        m.tick(at(b, 10_000), Some(b + Duration::from_millis(60_000)));
        m.ack(at(b, 11_000), true);
        assert_eq!(m.longest_ms, 1_000);
        // Nothing before the first acknowledged write counts.
        let mut m = GapMeter::default();
        m.tick(at(b, 0), None);
        m.ack(at(b, 4_000), true);
        assert_eq!(m.longest_ms, 0);
    }
}
