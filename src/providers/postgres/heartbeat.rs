//! A heartbeat writer that behaves like an application pod with a reloading secret volume: it
//! re-reads its database URL from a caller-supplied source (the Kubernetes Secret) every
//! `reload` interval, reconnects when the URL changes, and inserts one row per tick into a
//! heartbeat table, remembering every write the server acknowledged. Stopping it reports the
//! longest gap between consecutive acknowledged writes (the write outage) and which
//! acknowledged writes are missing from the database the URL names at the end.
//!
//! Owns the writer and its table; must not know about runbooks or the event log.

use super::{connect, ident, pg};
use crate::providers::ProviderError;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Where the writer reads its URL from; called every reload interval.
pub type UrlSource = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Writer settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Heartbeat table (created if missing), unqualified; default `cutover_heartbeat`.
    pub table: String,
    /// Identifies this writer's rows (`writer` column), e.g. the run id.
    pub writer: String,
    /// Attempted writes per second.
    pub rate: f64,
    /// How often the URL is re-read.
    pub reload: Duration,
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
    /// Times the writer (re)connected, the first included.
    pub connections: u64,
    /// The URL changed this many times while writing.
    pub url_changes: u64,
    /// Sequence numbers of acknowledged writes (checked against the final database).
    #[serde(skip)]
    pub acked: Vec<i64>,
    /// The URL in force when the writer stopped (a secret: never print it).
    #[serde(skip)]
    pub final_url: String,
    /// The first error that kept the writer from starting, if any.
    pub error: Option<String>,
}

/// A running writer.
pub struct Heartbeat {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Report>,
}

/// Creates the heartbeat table through the URL's database if missing: `(writer text, seq bigint,
/// written_at timestamptz, PRIMARY KEY (writer, seq))`.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn ensure_table(url: &str, table: &str) -> Result<(), ProviderError> {
    let c = connect(url, "heartbeat").await?;
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {} (writer text NOT NULL, seq bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (writer, seq))",
        ident(table)
    ))
    .await
    .map_err(|e| pg("heartbeat", e))
}

impl Heartbeat {
    /// Starts writing. The first URL is read before this returns; the table is created there
    /// (a writer that cannot start reports why in [`Report::error`] when stopped).
    pub async fn start(urls: UrlSource, opts: Options) -> Heartbeat {
        let (stop, mut stopped) = watch::channel(false);
        let first = urls().await;
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
            let insert = format!(
                "INSERT INTO {} (writer, seq) VALUES ($1, $2)",
                ident(&opts.table)
            );
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(1.0)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut client: Option<tokio_postgres::Client> = None;
            let mut last_ack: Option<(Instant, DateTime<Utc>)> = None;
            let mut first_ack: Option<Instant> = None;
            let mut seq = 0i64;
            // Once asked to stop, the writer goes on until one more write is acknowledged (at
            // most 10 s), so an outage still open at the end of the run is measured, not cut off.
            let mut stop_by: Option<Instant> = None;
            loop {
                tokio::select! {
                    _ = stopped.changed(), if stop_by.is_none() => {
                        stop_by = Some(Instant::now() + Duration::from_secs(10));
                        continue;
                    }
                    _ = tick.tick() => {}
                }
                if stop_by.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                if url_rx.has_changed().unwrap_or(false) {
                    url = url_rx.borrow_and_update().clone();
                    report.url_changes += 1;
                    client = None;
                }
                if client.is_none() {
                    let c =
                        tokio::time::timeout(Duration::from_secs(1), connect(&url, "heartbeat"))
                            .await;
                    if let Ok(Ok(c)) = c {
                        report.connections += 1;
                        client = Some(c);
                    }
                }
                let Some(c) = &client else { continue };
                seq += 1;
                report.attempted += 1;
                match tokio::time::timeout(
                    Duration::from_secs(1),
                    c.execute(&insert, &[&opts.writer, &seq]),
                )
                .await
                {
                    Ok(Ok(_)) => {
                        let now = (Instant::now(), Utc::now());
                        if let Some((t, w)) = last_ack {
                            let gap = (now.0 - t).as_millis() as u64;
                            if gap > report.longest_gap_ms {
                                report.longest_gap_ms = gap;
                                report.gap_from = Some(w);
                                report.gap_to = Some(now.1);
                            }
                        }
                        last_ack = Some(now);
                        let first = *first_ack.get_or_insert(now.0);
                        report.writing_ms = (now.0 - first).as_millis() as u64;
                        report.acknowledged += 1;
                        report.acked.push(seq);
                        if stop_by.is_some() {
                            break;
                        }
                    }
                    Ok(Err(e)) => {
                        if e.is_closed() || e.as_db_error().is_none() {
                            client = None;
                        }
                    }
                    Err(_) => client = None,
                }
            }
            watcher.abort();
            report.final_url = url;
            report
        });
        Heartbeat { stop, task }
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
    let c = connect(url, "heartbeat").await?;
    let rows = c
        .query(
            &format!(
                "SELECT s FROM unnest($2::bigint[]) s WHERE NOT EXISTS (SELECT 1 FROM {} h WHERE h.writer = $1 AND h.seq = s) ORDER BY s",
                ident(table)
            ),
            &[&writer, &acked],
        )
        .await
        .map_err(|e| pg("heartbeat", e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
