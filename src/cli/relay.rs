//! `cutover relay`: runs one relay (replication through the tool) until it is stopped; what
//! `postgres.replicate` and `postgres.fallback` start where a server cannot subscribe natively,
//! as a Deployment in the target cluster (one process in the sandbox). With `--guard-only`, the
//! WAL guard alone, for a slot a native subscription consumes. Reads both servers' URLs from
//! its environment (a Secret's keys in a pod), never from its command line.

use super::{print_error, EXIT_FAILED, EXIT_INVALID};
use crate::providers::postgres::relay::{self, Event, RelayConfig, RelayError};
use crate::providers::postgres::Server;
use std::time::Duration;

/// The environment variable with the publisher's URL.
pub const PUBLISHER_URL: &str = "CUTOVER_RELAY_PUBLISHER_URL";
/// The environment variable with the destination's URL.
pub const DESTINATION_URL: &str = "CUTOVER_RELAY_DESTINATION_URL";

/// Parses a byte size: a number with an optional unit (`kB`, `MB`, `GB`, `TB`: powers of 1024,
/// as PostgreSQL's memory and WAL settings read them), e.g. `512MB`.
fn bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let k = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(k)
}

/// Runs the relay; returns the exit code (2 for bad input, 1 when the servers would diverge).
/// A relay stopped by its WAL guard stays up, idle, so that a Deployment does not restart it.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    slot: String,
    publication: String,
    publisher: Server,
    wal_budget: Option<String>,
    wal_limit: Option<String>,
    guard_interval: Duration,
    guard_only: bool,
) -> i32 {
    let mut problems = Vec::new();
    let mut size = |flag: &str, v: Option<String>| match v {
        None => None,
        Some(v) => match bytes(&v) {
            Some(b) => Some(b),
            None => {
                problems.push(format!(
                    "--{flag} `{v}` is not a size (a number with kB, MB, GB or TB)"
                ));
                None
            }
        },
    };
    let wal_budget = size("wal-budget", wal_budget);
    let wal_limit = size("wal-limit", wal_limit);
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (publisher_url, destination_url) = (env(PUBLISHER_URL), env(DESTINATION_URL));
    for (name, v) in [
        (PUBLISHER_URL, &publisher_url),
        (DESTINATION_URL, &destination_url),
    ] {
        if v.is_none() {
            problems.push(format!(
                "{name} is not set: the relay reads both servers' URLs from its environment"
            ));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            print_error(&format!("cutover relay: {p}"), None);
        }
        return EXIT_INVALID;
    }
    let destination = match publisher {
        Server::Source => Server::Target,
        _ => Server::Source,
    };
    let cfg = RelayConfig {
        slot,
        publication,
        publisher_url: publisher_url.unwrap_or_default(),
        publisher,
        destination_url: destination_url.unwrap_or_default(),
        destination,
        wal_budget,
        wal_limit,
        guard_interval,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut last_applied = std::time::Instant::now() - Duration::from_secs(60);
        while let Some(e) = rx.recv().await {
            let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ");
            match e {
                Event::Started { from, replica_role } => eprintln!(
                    "{now} relay: streaming from {from}{}",
                    if replica_role {
                        " (session_replication_role = replica: the destination's triggers do not fire for relayed rows)"
                    } else {
                        " (session_replication_role may not be set by this role: the destination's ordinary triggers and foreign key checks fire for relayed rows)"
                    }
                ),
                Event::Applied { lsn, transactions } => {
                    // One line per 10 s at most: the progress row holds every commit.
                    if last_applied.elapsed() >= Duration::from_secs(10) {
                        eprintln!("{now} relay: applied up to {lsn} ({transactions} transaction(s) in all)");
                        last_applied = std::time::Instant::now();
                    }
                }
                Event::Reconnecting { error, after } => {
                    eprintln!("{now} relay: {error}; reconnecting in {after:?}")
                }
                Event::WalWarning {
                    retained,
                    budget,
                    room,
                } => eprintln!(
                    "{now} relay: WARNING: the slot retains {retained} bytes of WAL, past the budget of {budget}; its consumer is not keeping up (see cutover status); {}",
                    match room {
                        Some(r) => format!("the server invalidates the slot after {r} more bytes (max_slot_wal_keep_size)"),
                        None => "the server sets no max_slot_wal_keep_size: only the disk limits it".into(),
                    }
                ),
            }
        }
    });
    let result = if guard_only {
        eprintln!(
            "relay: guarding slot {} on the {} (a native subscription consumes it)",
            cfg.slot, cfg.publisher
        );
        relay::watch(&cfg, tx).await
    } else {
        eprintln!(
            "relay: slot {} publication {} from the {} to the {}",
            cfg.slot, cfg.publication, cfg.publisher, cfg.destination
        );
        relay::run(&cfg, tx).await
    };
    let _ = printer.await;
    match result {
        Ok(()) => 0,
        Err(e @ RelayError::Stopped(_)) => {
            eprintln!("relay: {e}");
            // Stay up, idle: a Deployment would restart a process that exits.
            std::future::pending::<()>().await;
            0
        }
        Err(e) => {
            print_error(&format!("relay: {e}"), None);
            EXIT_FAILED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn sizes_read_as_postgresql_reads_them() {
        assert_eq!(bytes("512MB"), Some(512 << 20));
        assert_eq!(bytes("1 GB"), Some(1 << 30));
        assert_eq!(bytes("100"), Some(100));
        assert_eq!(bytes("10 parsecs"), None);
        assert_eq!(bytes(""), None);
    }
}
