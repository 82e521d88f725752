//! Replication mechanics shared by the steps that wait for, retire and reverse logical
//! replication: how far a slot's consumer has confirmed, the lag probe, sequence values, the
//! tables a publication carries, and dropping a subscription or slot that may still be in use.
//!
//! Owns these statements; must not decide when to wait, retire or reverse.

use super::Server;
use super::{ident, pg};
use crate::providers::ProviderError;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::Client;

/// A transactional logical message whose commit a subscriber confirms at once, so an idle
/// publisher's last LSN is confirmed without waiting for a keepalive (changes no table).
pub const PROBE_SQL: &str = "SELECT pg_logical_emit_message(true, 'cutover', 'lag probe')";

/// A transactional logical message committed with `synchronous_commit = on` on a subscriber:
/// its commit flushes the subscriber's WAL, and with it every transaction the apply worker
/// committed before (an apply worker commits asynchronously, so it only reports a position as
/// flushed after the WAL writer's next round, up to `wal_writer_delay`, 200 ms by default).
pub const FLUSH_SQL: &str =
    "SET synchronous_commit = on; SELECT pg_logical_emit_message(true, 'cutover', 'flush')";

/// The connected server's current WAL LSN, as text (`0/16B3748`).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn current_lsn(c: &Client, side: Server) -> Result<String, ProviderError> {
    Ok(c.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| pg(side, e))?
        .get(0))
}

/// How far slot `slot` of the connected server is behind `goal`: `(confirmed_flush_lsn, bytes
/// behind)`; `None` when the slot does not exist; bytes are `i64::MAX` before the consumer's
/// first confirmation.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn behind(
    c: &Client,
    side: Server,
    slot: &str,
    goal: &str,
) -> Result<Option<(Option<String>, i64)>, ProviderError> {
    let row = c
        .query_opt(
            "SELECT confirmed_flush_lsn::text, pg_wal_lsn_diff($2::text::pg_lsn, confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot, &goal],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(row.map(|r| {
        let b: Option<i64> = r.get(1);
        (r.get(0), b.unwrap_or(i64::MAX))
    }))
}

/// Bytes of WAL each `cutover_*` replication slot of the connected server retains
/// (`pg_current_wal_lsn() - restart_lsn`), by slot name.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn retained(c: &Client, side: Server) -> Result<BTreeMap<String, i64>, ProviderError> {
    let rows = c
        .query(
            "SELECT slot_name::text, coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint
             FROM pg_replication_slots WHERE slot_name LIKE 'cutover\\_%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Every sequence of the connected database with its `last_value` (`None` before first use).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn sequences(
    c: &Client,
    side: Server,
) -> Result<BTreeMap<String, Option<i64>>, ProviderError> {
    let rows = c
        .query("SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences ORDER BY 1", &[])
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The sequences `to` must advance so each is at least `from`'s value plus `margin`:
/// `(name, value on to, goal)`. Sequences only move forward.
pub fn to_advance(
    from: &BTreeMap<String, Option<i64>>,
    to: &BTreeMap<String, Option<i64>>,
    margin: i64,
) -> Vec<(String, Option<i64>, i64)> {
    from.iter()
        .filter_map(|(name, v)| {
            let goal = (*v)?.saturating_add(margin);
            let now = to.get(name).copied().flatten();
            (now.unwrap_or(i64::MIN) < goal).then(|| (name.clone(), now, goal))
        })
        .collect()
}

/// Sets each sequence of `todo` ([`to_advance`]) on `c`.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn advance(
    c: &Client,
    side: Server,
    todo: &[(String, Option<i64>, i64)],
) -> Result<(), ProviderError> {
    for (name, _, goal) in todo {
        c.query("SELECT setval($1::text::regclass, $2, true)", &[name, goal])
            .await
            .map_err(|e| pg(side, e))?;
    }
    Ok(())
}

/// The tables publication `publication` carries, as quoted `schema.table` names.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn publication_tables(
    c: &Client,
    side: Server,
    publication: &str,
) -> Result<Vec<String>, ProviderError> {
    let rows = c
        .query(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&publication],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether the connected database has subscription `name`.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn has_subscription(c: &Client, side: Server, name: &str) -> Result<bool, ProviderError> {
    Ok(c
        .query_opt(
            "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&name],
        )
        .await
        .map_err(|e| pg(side, e))?
        .is_some())
}

/// Creates publication `name` for `tables` (quoted names; none: an empty publication) unless
/// it exists. Idempotent.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn create_publication(
    c: &Client,
    side: Server,
    name: &str,
    tables: &[String],
) -> Result<(), ProviderError> {
    if has_publication(c, side, name).await? {
        return Ok(());
    }
    let sql = if tables.is_empty() {
        format!("CREATE PUBLICATION {}", ident(name))
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            ident(name),
            tables.join(", ")
        )
    };
    c.batch_execute(&sql).await.map_err(|e| pg(side, e))
}

/// Whether the connected database has publication `name`.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn has_publication(c: &Client, side: Server, name: &str) -> Result<bool, ProviderError> {
    Ok(
        c.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&name])
            .await
            .map_err(|e| pg(side, e))?
            .is_some(),
    )
}

/// Drops replication slot `slot` if it exists, waiting up to 10 s for a walsender still using it
/// (a consumer that is going away) to end.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn drop_slot(c: &Client, side: Server, slot: &str) -> Result<bool, ProviderError> {
    for tries in 0.. {
        match c
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
        {
            Ok(rows) => return Ok(!rows.is_empty()),
            Err(e)
                if tries < 50
                    && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(pg(side, e)),
        }
    }
    unreachable!("the loop returns")
}

/// Drops subscription `name` of the connected database if it exists (and with it, on its
/// publisher, the slot it uses). Returns whether it existed.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn drop_subscription(
    c: &Client,
    side: Server,
    name: &str,
) -> Result<bool, ProviderError> {
    if !has_subscription(c, side, name).await? {
        return Ok(false);
    }
    c.batch_execute(&format!("DROP SUBSCRIPTION {}", ident(name)))
        .await
        .map_err(|e| pg(side, e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_only_move_forward_by_the_margin() {
        let from: BTreeMap<String, Option<i64>> = [
            ("a".into(), Some(10)),
            ("b".into(), None),
            ("c".into(), Some(5)),
        ]
        .into();
        let to: BTreeMap<String, Option<i64>> =
            [("a".into(), Some(3)), ("c".into(), Some(500))].into();
        assert_eq!(
            to_advance(&from, &to, 100),
            vec![("a".to_string(), Some(3), 110)]
        );
        assert!(to_advance(&from, &from, 0).is_empty());
    }
}
