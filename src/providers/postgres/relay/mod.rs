//! Relay replication: the tool itself streams a slot's logical changes (pgoutput, over the
//! streaming replication protocol) from the publisher and applies them on the destination, for
//! the directions where a native subscription is not possible (a subscriber that may not
//! `CREATE SUBSCRIPTION`, or that cannot reach the publisher: a private RDS seen from the legacy
//! host). Only the relay needs to reach both servers, with the rights managed databases give:
//! REPLICATION on the publisher, write rights on the destination.
//!
//! - [`wire`]: the replication connection; [`pgoutput`]: the message decoder; [`apply`]: the
//!   destination's transactions and the progress record that makes a restart exact.
//! - [`run`]: one relay, supervised: it reconnects after a lost connection (exponential backoff,
//!   1 s to 10 s), stops for good on anything that would make the servers diverge (a table that
//!   changed shape, a row that is not where the source says) after recording why in
//!   `cutover_relay.progress`, and is stopped by its WAL retention guard
//!   ([`RelayConfig::wal_limit`]), which drops the slot before the publisher's disk fills.
//!
//! Owns the mechanics of one direction of replication. Must not: know runbooks, steps or
//! where it runs (a process, a pod: `cutover relay`).

pub mod apply;
pub mod pgoutput;
pub mod wire;

use super::Server;
use apply::Applier;
use backon::{ExponentialBuilder, Retryable};
use std::time::Duration;
use tokio::time::Instant;
use wire::{format_lsn, ReplicationStream, WalMessage};

/// Why a relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// A server could not be reached or the connection broke: retried.
    #[error("{0}")]
    Connection(String),
    /// Applying on would make the servers differ: the relay stops and says why.
    #[error("{0}")]
    Divergence(String),
    /// The WAL retention guard stopped the relay and dropped its slot (or did so earlier).
    #[error("stopped by the WAL retention guard: {0}")]
    Stopped(String),
}

/// One relay's settings.
#[derive(Clone)]
pub struct RelayConfig {
    /// The logical replication slot on the publisher (created by the step that starts the relay).
    pub slot: String,
    /// The publication whose tables are relayed.
    pub publication: String,
    /// The publisher's admin URL (a secret: never printed).
    pub publisher_url: String,
    /// Which server the publisher is, for messages.
    pub publisher: Server,
    /// The destination's admin URL (a secret: never printed).
    pub destination_url: String,
    /// Which server the destination is, for messages.
    pub destination: Server,
    /// WAL retained for the slot (bytes) past which a warning is given.
    pub wal_budget: Option<u64>,
    /// WAL retained for the slot (bytes) past which the relay stops and drops the slot.
    pub wal_limit: Option<u64>,
    /// How often the guard looks at the slot.
    pub guard_interval: Duration,
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("publisher", &self.publisher)
            .field("destination", &self.destination)
            .field("wal_budget", &self.wal_budget)
            .field("wal_limit", &self.wal_limit)
            .finish_non_exhaustive()
    }
}

/// What a relay reports while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Streaming started from this LSN (the last one applied on the destination).
    Started {
        /// The LSN, as PostgreSQL prints it.
        from: String,
        /// Whether the destination session runs with `session_replication_role = replica`, as
        /// a subscription's apply worker does (the destination's triggers and foreign key
        /// checks do not fire for relayed rows). False where the role may not set it (it needs
        /// superuser, or rds_superuser on RDS): its ordinary triggers then fire.
        replica_role: bool,
    },
    /// A destination transaction committed source transactions up to `lsn`.
    Applied {
        /// The end LSN of the last source transaction in it.
        lsn: String,
        /// Source transactions applied since the relay first ran on this slot.
        transactions: i64,
    },
    /// A connection broke; the relay reconnects after `after`.
    Reconnecting {
        /// What broke.
        error: String,
        /// The wait before the next attempt.
        after: Duration,
    },
    /// The slot retains more WAL than the budget.
    WalWarning {
        /// Bytes retained.
        retained: u64,
        /// The budget, bytes.
        budget: u64,
        /// Bytes that may still be written before the server itself invalidates the slot
        /// (`pg_replication_slots.safe_wal_size`, PostgreSQL 13+; `None` where the server sets
        /// no `max_slot_wal_keep_size`, as on DigitalOcean: then only the disk limits it).
        room: Option<i64>,
    },
}

/// Changes after which a group of source transactions is committed on the destination even
/// though more are waiting.
const GROUP: usize = 5000;
/// Silence on the stream after which the relay asks the server for a keepalive (and so
/// confirms, while idle, the server's WAL end: a rollback waiting for the relay to confirm the
/// target's last LSN waits about this long).
const IDLE: Duration = Duration::from_secs(1);
/// Unanswered keepalive requests after which the connection counts as lost.
const SILENT_LIMIT: u32 = 10;

/// Runs the relay until the guard stops it or the servers would diverge; reconnects after
/// connection failures for as long as it takes.
///
/// # Errors
/// [`RelayError::Divergence`] (recorded as `failed` in the progress row first) or
/// [`RelayError::Stopped`]; never [`RelayError::Connection`].
pub async fn run(
    cfg: &RelayConfig,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<(), RelayError> {
    let attempt = || async {
        tokio::select! {
            r = session(cfg, &events) => r,
            r = guard(cfg, &events) => Err(r),
        }
    };
    let result = attempt
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(1))
                .with_max_delay(Duration::from_secs(10))
                .without_max_times(),
        )
        .when(|e| matches!(e, RelayError::Connection(_)))
        .notify(|e, after| {
            let _ = events.send(Event::Reconnecting {
                error: e.to_string(),
                after,
            });
        })
        .await;
    match result {
        Ok(()) => Ok(()),
        Err(RelayError::Divergence(m)) => {
            record(cfg, RelayState::Failed, &m).await;
            Err(RelayError::Divergence(m))
        }
        Err(RelayError::Stopped(m)) => {
            stop_slot(cfg).await;
            record(cfg, RelayState::Stopped, &m).await;
            Err(RelayError::Stopped(m))
        }
        Err(e) => Err(e),
    }
}

/// Watches the slot only (a native subscription consumes it): the same WAL guard as [`run`]'s,
/// which past the limit drops the slot and records `stopped` with its message on the
/// destination (where the tool's waits read it, [`progress`]).
///
/// # Errors
/// [`RelayError::Stopped`] once the slot was dropped; it never returns otherwise.
pub async fn watch(
    cfg: &RelayConfig,
    events: tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<(), RelayError> {
    let e = guard(cfg, &events).await;
    if let RelayError::Stopped(m) = &e {
        stop_slot(cfg).await;
        record(cfg, RelayState::Stopped, m).await;
    }
    Err(e)
}

fn connection(e: crate::providers::ProviderError) -> RelayError {
    RelayError::Connection(e.to_string())
}

/// One connection's life: reads where the destination stopped, streams from there.
async fn session(
    cfg: &RelayConfig,
    events: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> Result<(), RelayError> {
    let client = super::connect(&cfg.destination_url, cfg.destination)
        .await
        .map_err(connection)?;
    let mut applier = Applier::open(client, cfg.destination, &cfg.slot).await?;
    let mut stream = ReplicationStream::connect(&cfg.publisher_url, cfg.publisher)
        .await
        .map_err(connection)?;
    if let Err(e) = stream
        .start(&cfg.slot, &cfg.publication, applier.applied)
        .await
    {
        // 42704 undefined_object: the slot is gone (dropped by the guard, or by hand).
        return Err(match stream.last_sqlstate() {
            Some("42704") => {
                RelayError::Stopped(format!("replication slot {} is gone: {e}", cfg.slot))
            }
            _ => connection(e),
        });
    }
    let _ = events.send(Event::Started {
        from: format_lsn(applier.applied),
        replica_role: applier.replica_role,
    });
    // Ask for a keepalive at once: while nothing is in flight its WAL end is confirmed.
    stream
        .status(applier.applied, true)
        .await
        .map_err(connection)?;
    let mut skip = false;
    let mut silent = 0;
    let mut confirmed = applier.applied;
    let mut last_status = Instant::now();
    loop {
        let next = match tokio::time::timeout(IDLE, stream.next()).await {
            Err(_) => {
                silent += 1;
                if silent >= SILENT_LIMIT {
                    return Err(RelayError::Connection(format!(
                        "no message from the publisher for {:?}",
                        IDLE * SILENT_LIMIT
                    )));
                }
                stream.status(confirmed, true).await.map_err(connection)?;
                continue;
            }
            Ok(r) => r.map_err(connection)?,
        };
        silent = 0;
        match next {
            None => {
                return Err(RelayError::Connection(
                    "the publisher ended the stream".into(),
                ))
            }
            Some(WalMessage::Keepalive { end, reply }) => {
                let before = confirmed;
                if !applier.in_transaction() {
                    // Nothing in flight: everything the server sent before `end` is applied.
                    confirmed = confirmed.max(end);
                }
                // Confirmed at once when it moved: a wait for the publisher's last LSN (the
                // window's drain) ends as soon as the walsender passed it, not a second later.
                // The walsender sends such keepalives only while the confirmation lags what it
                // sent, so this adds no steady traffic.
                if reply || confirmed > before || last_status.elapsed() > Duration::from_secs(1) {
                    stream.status(confirmed, false).await.map_err(connection)?;
                    last_status = Instant::now();
                }
            }
            Some(WalMessage::XLogData { data, .. }) => {
                let message =
                    pgoutput::decode(data).map_err(|e| RelayError::Divergence(e.to_string()))?;
                tracing::trace!(?message, "relay: received");
                applier.handle(message, &mut skip).await?;
            }
        }
        // Between source transactions, the group is committed once nothing more is waiting
        // (or it is large): one destination transaction for a burst of small ones.
        if applier.between_transactions() && (!stream.buffered() || applier.open_changes >= GROUP) {
            if let Some(end) = applier.commit().await? {
                confirmed = confirmed.max(end);
                stream.status(confirmed, false).await.map_err(connection)?;
                last_status = Instant::now();
                let _ = events.send(Event::Applied {
                    lsn: format_lsn(end),
                    transactions: applier.transactions(),
                });
            }
        }
    }
}

/// What the guard reads of a slot: WAL retained (bytes) and the room the server says is left
/// before it invalidates the slot itself (`safe_wal_size`; `None` without
/// `max_slot_wal_keep_size`).
async fn retained(
    c: &tokio_postgres::Client,
    slot: &str,
) -> Result<Option<(u64, Option<i64>)>, tokio_postgres::Error> {
    let row = c
        .query_opt(
            "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint, safe_wal_size FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(row.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1))))
}

/// Watches the slot's retained WAL; returns (ending the relay) past the hard limit. Without a
/// budget or limit it never returns.
async fn guard(
    cfg: &RelayConfig,
    events: &tokio::sync::mpsc::UnboundedSender<Event>,
) -> RelayError {
    if cfg.wal_budget.is_none() && cfg.wal_limit.is_none() {
        return std::future::pending().await;
    }
    let mut warned = false;
    loop {
        if let Ok(c) = super::connect(&cfg.publisher_url, cfg.publisher).await {
            loop {
                match retained(&c, &cfg.slot).await {
                    Ok(Some((bytes, room))) => {
                        if let Some(budget) = cfg.wal_budget {
                            if bytes > budget && !warned {
                                warned = true;
                                let _ = events.send(Event::WalWarning {
                                    retained: bytes,
                                    budget,
                                    room,
                                });
                            }
                        }
                        if let Some(limit) = cfg.wal_limit {
                            if bytes > limit {
                                return RelayError::Stopped(format!(
                                    "replication slot {} on the {} retained {bytes} bytes of WAL, past the limit of {limit}: replication through it stopped and the slot was dropped so that the {}'s disk does not fill. Nothing more reaches the {}: restart the replication from a new copy (cutover rollback, or a new run of postgres.replicate)",
                                    cfg.slot, cfg.publisher, cfg.publisher, cfg.destination
                                ));
                            }
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
                tokio::time::sleep(cfg.guard_interval).await;
            }
        }
        tokio::time::sleep(cfg.guard_interval).await;
    }
}

/// Ends the slot's walsender and drops the slot, retrying while it is still active.
async fn stop_slot(cfg: &RelayConfig) {
    let Ok(c) = super::connect(&cfg.publisher_url, cfg.publisher).await else {
        return;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let _ = c
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[&cfg.slot],
            )
            .await;
        match c
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&cfg.slot],
            )
            .await
        {
            Ok(_) => return,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Records a final state in the progress row, best effort (the destination may be what failed).
/// Written directly: opening an [`Applier`] on a relay already `stopped` refuses.
async fn record(cfg: &RelayConfig, state: RelayState, message: &str) {
    if let Ok(client) = super::connect(&cfg.destination_url, cfg.destination).await {
        let _ = client.batch_execute(apply::PROGRESS_SQL).await;
        let _ = client
            .execute(
                "INSERT INTO cutover_relay.progress (slot, lsn, state, message) VALUES ($1, '0/0', $2, $3)
                 ON CONFLICT (slot) DO UPDATE SET state = excluded.state, message = excluded.message",
                &[&cfg.slot, &state.as_str(), &message],
            )
            .await;
    }
}

/// A relay's state as its progress row records it (`state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayState {
    /// Applying (or waiting for) changes; `streaming`.
    Streaming,
    /// Stopped because the servers would diverge; `failed`. Restarting it fails again until
    /// the cause is fixed.
    Failed,
    /// Stopped by the WAL guard, its slot dropped; `stopped`. It never resumes.
    Stopped,
}

impl RelayState {
    /// The column's text.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayState::Streaming => "streaming",
            RelayState::Failed => "failed",
            RelayState::Stopped => "stopped",
        }
    }

    /// The state of the column's text `s` (an unknown text reads as failed: a row this
    /// version did not write is not one to trust).
    pub fn parse(s: &str) -> RelayState {
        match s {
            "streaming" => RelayState::Streaming,
            "stopped" => RelayState::Stopped,
            _ => RelayState::Failed,
        }
    }

    /// True for `failed` and `stopped`: the relay applies nothing more.
    pub fn ended(self) -> bool {
        self != RelayState::Streaming
    }
}

/// One relay's progress as the destination records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// The end LSN of the last source transaction applied.
    pub lsn: String,
    /// Its state.
    pub state: RelayState,
    /// Why it failed or stopped.
    pub message: Option<String>,
    /// Source transactions applied.
    pub transactions: i64,
    /// Seconds since the last applied transaction.
    pub idle_seconds: f64,
}

/// Reads `slot`'s progress row on the destination (`None`: the relay never applied anything).
///
/// # Errors
/// The destination's error.
pub async fn progress(
    destination: &tokio_postgres::Client,
    side: Server,
    slot: &str,
) -> Result<Option<Progress>, crate::providers::ProviderError> {
    let exists: bool = destination
        .query_one(
            "SELECT to_regclass('cutover_relay.progress') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| super::pg(side, e))?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = destination
        .query_opt(
            "SELECT lsn::text, state, message, transactions, extract(epoch FROM now() - applied_at)::float8 FROM cutover_relay.progress WHERE slot = $1",
            &[&slot],
        )
        .await
        .map_err(|e| super::pg(side, e))?;
    Ok(row.map(|r| Progress {
        lsn: r.get(0),
        state: RelayState::parse(r.get(1)),
        message: r.get(2),
        transactions: r.get(3),
        idle_seconds: r.get(4),
    }))
}
