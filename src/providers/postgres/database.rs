//! The seam in front of one PostgreSQL server as the step kinds that freeze, wait for, turn
//! around and retire replication see it: [`Database`], implemented over tokio-postgres by
//! [`PgDatabase`] (which calls the statements of [`super::replication`], [`super::roles`],
//! [`super::changes`] and [`super::catalog`]), and by an in-memory fake in unit tests.
//!
//! Owns the mapping of each operation to its statements; must not decide when to freeze, wait,
//! subscribe or drop (that is the step kinds'). The initial copy, the checksum comparison and
//! the heartbeat open their own connections by URL and are not behind this seam.

use super::catalog::Table;
use super::changes::ChangeSet;
use super::checksum::{self, TableResult};
use super::{catalog, changes, ident, literal, pg, replication, roles, ConnParts, Server};
use crate::config::Side;
use crate::providers::ProviderError;
use async_trait::async_trait;
use std::collections::BTreeMap;

/// A subscription that starts at an existing slot without copying
/// (`CREATE SUBSCRIPTION ... WITH (create_slot = false, copy_data = false)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// Subscription name, also the slot's on the publisher.
    pub name: String,
    /// The publication on the publisher.
    pub publication: String,
    /// `origin = none` (PostgreSQL 16 or later): changes that arrived by replication are not
    /// sent back.
    pub origin_none: bool,
}

/// Sequence values by `schema.name` (`None`: never used), as [`replication::sequences`] reads
/// them.
pub type Sequences = BTreeMap<String, Option<i64>>;

/// One side's PostgreSQL server, connected as the environment's admin role to the migrated
/// database. LSNs are text (`0/16B3748`); byte counts are bytes of WAL.
///
/// Every method fails with [`ProviderError::Postgres`] naming the side.
#[async_trait]
pub trait Database: Send + Sync {
    /// Which side this is (names it in errors and messages).
    fn side(&self) -> Side;
    /// The connected database's name.
    fn name(&self) -> &str;
    /// A libpq conninfo string another server uses to reach this one (it holds the password:
    /// it goes into a statement, never into a message).
    fn conninfo(&self) -> String;

    /// The server's current WAL LSN.
    async fn current_lsn(&self) -> Result<String, ProviderError>;
    /// Writes the lag probe ([`replication::PROBE_SQL`]); errors are ignored (it only speeds a
    /// wait up).
    async fn probe(&self);
    /// Flushes this subscriber's applied WAL ([`replication::FLUSH_SQL`]); errors are ignored.
    async fn flush(&self);
    /// How far slot `slot` is behind `goal`: `(confirmed_flush_lsn, bytes behind)`; `None`
    /// without that slot; `i64::MAX` bytes before its consumer's first confirmation.
    async fn behind(
        &self,
        slot: &str,
        goal: &str,
    ) -> Result<Option<(Option<String>, i64)>, ProviderError>;
    /// Bytes of WAL each `cutover_*` slot retains, by slot name.
    async fn retained(&self) -> Result<BTreeMap<String, i64>, ProviderError>;
    /// Whether slot `slot` exists.
    async fn slot_exists(&self, slot: &str) -> Result<bool, ProviderError>;
    /// The slots whose names start with `prefix` that a relay applies on this server (its
    /// progress rows in `cutover_relay.progress`), sorted.
    async fn relayed_slots(&self, prefix: &str) -> Result<Vec<String>, ProviderError>;
    /// Deletes the relay progress row of `slot` on this server, if any, and the
    /// `cutover_relay` schema with the last one.
    async fn forget_relay(&self, slot: &str) -> Result<(), ProviderError>;
    /// The progress row of the relay of `slot` applying on this server (`None`: no relay
    /// applied anything here yet).
    async fn relay_progress(
        &self,
        slot: &str,
    ) -> Result<Option<super::relay::Progress>, ProviderError>;
    /// Whether a consumer (a subscription's walsender, a relay) is attached to slot `slot` now.
    async fn slot_active(&self, slot: &str) -> Result<bool, ProviderError>;
    /// Creates the logical slot `slot` (pgoutput) unless it exists; returns the LSN from which
    /// it records changes.
    async fn create_slot(&self, slot: &str) -> Result<String, ProviderError>;
    /// Drops slot `slot` if it exists (waiting briefly for a consumer going away); returns
    /// whether it existed.
    async fn drop_slot(&self, slot: &str) -> Result<bool, ProviderError>;
    /// The changes slot `slot` holds for `publication` up to now, read without consuming them
    /// ([`changes::peek`]).
    async fn peek(&self, slot: &str, publication: &str) -> Result<ChangeSet, ProviderError>;
    /// Moves slot `slot` to `lsn`: the changes before it are no longer held.
    async fn advance_slot(&self, slot: &str, lsn: &str) -> Result<(), ProviderError>;
    /// The row hash of each row of `t` whose key is one of `keys`, by key
    /// ([`checksum::hashes_by_key`]); keys absent here are absent from the map.
    async fn hashes_by_key(
        &self,
        t: &Table,
        keys: &[Vec<String>],
    ) -> Result<BTreeMap<Vec<String>, String>, ProviderError>;

    /// The publications whose names start with `prefix`, sorted.
    async fn publications(&self, prefix: &str) -> Result<Vec<String>, ProviderError>;
    /// Whether publication `name` exists.
    async fn has_publication(&self, name: &str) -> Result<bool, ProviderError> {
        Ok(self.publications(name).await?.iter().any(|p| p == name))
    }
    /// The tables publication `name` carries, as quoted `schema.table` names.
    async fn publication_tables(&self, name: &str) -> Result<Vec<String>, ProviderError>;
    /// Creates publication `name` for `tables` (quoted names) unless it exists.
    async fn create_publication(&self, name: &str, tables: &[String]) -> Result<(), ProviderError>;
    /// Drops publication `name` if it exists; returns whether it existed.
    async fn drop_publication(&self, name: &str) -> Result<bool, ProviderError>;

    /// The subscriptions of the connected database whose names start with `prefix`, sorted.
    async fn subscriptions(&self, prefix: &str) -> Result<Vec<String>, ProviderError>;
    /// Whether the connected database has subscription `name`.
    async fn has_subscription(&self, name: &str) -> Result<bool, ProviderError> {
        Ok(self.subscriptions(name).await?.iter().any(|s| s == name))
    }
    /// Whether subscription `name` has a running apply worker.
    async fn subscription_running(&self, name: &str) -> Result<bool, ProviderError>;
    /// Subscribes to `publisher`'s publication `sub.publication` through its slot `sub.name`, starting at the slot's
    /// position without copying. The statement holds the publisher's password: an error carries
    /// only the server's message.
    async fn subscribe(
        &self,
        sub: &Subscription,
        publisher: &dyn Database,
    ) -> Result<(), ProviderError>;
    /// Drops subscription `name` (and with it its slot on the publisher) if it exists; returns
    /// whether it existed.
    async fn drop_subscription(&self, name: &str) -> Result<bool, ProviderError>;
    /// Whether this server's admin may subscribe to `publisher`'s publication `publication` and
    /// this server reaches the publisher: `CREATE SUBSCRIPTION` tried with a connection, in a
    /// transaction that is rolled back ([`super::rights::try_subscribe`]).
    async fn may_subscribe(
        &self,
        publisher: &dyn Database,
        publication: &str,
    ) -> Result<super::rights::Outcome, ProviderError>;

    /// Every sequence with its `last_value`.
    async fn sequences(&self) -> Result<Sequences, ProviderError>;
    /// Sets each sequence of `todo` (`(name, value now, goal)`, [`replication::to_advance`]).
    async fn advance(&self, todo: &[(String, Option<i64>, i64)]) -> Result<(), ProviderError>;

    /// Every ordinary table with its key, size and row estimate ([`catalog::tables`]).
    async fn tables(&self) -> Result<Vec<Table>, ProviderError>;
    /// The quoted `schema.table` names of every ordinary table.
    async fn table_names(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self.tables().await?.into_iter().map(|t| t.name).collect())
    }
    /// The server's major version (`16`).
    async fn major_version(&self) -> Result<i32, ProviderError>;
    /// Row writes (inserts + updates + deletes) counted by the statistics over every table.
    async fn row_writes(&self) -> Result<i64, ProviderError>;

    /// The login roles that may write one of `tables` ([`roles::writers`]).
    async fn writers(&self, tables: &[String]) -> Result<Vec<String>, ProviderError>;
    /// Of `names`, the roles that exist.
    async fn existing_roles(&self, names: &[String]) -> Result<Vec<String>, ProviderError>;
    /// The roles whose sessions in this database start read-only.
    async fn frozen(&self) -> Result<Vec<String>, ProviderError>;
    /// Makes `roles` start read-only in this database and ends their sessions; returns how many
    /// sessions ended.
    async fn freeze(&self, roles: &[String]) -> Result<u64, ProviderError>;
    /// Lets `roles` write in this database again and ends their sessions (which started
    /// read-only).
    async fn unfreeze(&self, roles: &[String]) -> Result<(), ProviderError>;
}

/// [`Database`] over a tokio-postgres connection.
pub struct PgDatabase {
    client: tokio_postgres::Client,
    side: Side,
    parts: ConnParts,
}

impl PgDatabase {
    /// Connects to `url` as `side` ([`super::connect`]). The session is read-write even where
    /// the database default is read-only (a frozen source), since this tool's own statements
    /// must still run.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] or [`ProviderError::BadUrl`].
    pub async fn connect(url: &str, side: Side) -> Result<PgDatabase, ProviderError> {
        let parts = ConnParts::parse(url, side.into())?;
        let client = super::connect(url, side.into()).await?;
        client
            .batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| pg(side.into(), e))?;
        Ok(PgDatabase {
            client,
            side,
            parts,
        })
    }

    fn s(&self) -> Server {
        self.side.into()
    }
}

#[async_trait]
impl Database for PgDatabase {
    fn side(&self) -> Side {
        self.side
    }
    fn name(&self) -> &str {
        &self.parts.dbname
    }
    fn conninfo(&self) -> String {
        self.parts.conninfo()
    }

    async fn current_lsn(&self) -> Result<String, ProviderError> {
        replication::current_lsn(&self.client, self.s()).await
    }
    async fn probe(&self) {
        let _ = self.client.batch_execute(replication::PROBE_SQL).await;
    }
    async fn flush(&self) {
        let _ = self.client.batch_execute(replication::FLUSH_SQL).await;
    }
    async fn behind(
        &self,
        slot: &str,
        goal: &str,
    ) -> Result<Option<(Option<String>, i64)>, ProviderError> {
        replication::behind(&self.client, self.s(), slot, goal).await
    }
    async fn retained(&self) -> Result<BTreeMap<String, i64>, ProviderError> {
        replication::retained(&self.client, self.s()).await
    }
    async fn slot_exists(&self, slot: &str) -> Result<bool, ProviderError> {
        changes::slot_exists(&self.client, self.s(), slot).await
    }
    async fn relayed_slots(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
        let exists: bool = self
            .client
            .query_one(
                "SELECT to_regclass('cutover_relay.progress') IS NOT NULL",
                &[],
            )
            .await
            .map_err(|e| pg(self.s(), e))?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        Ok(self
            .client
            .query(
                "SELECT slot FROM cutover_relay.progress WHERE starts_with(slot, $1) ORDER BY slot",
                &[&prefix],
            )
            .await
            .map_err(|e| pg(self.s(), e))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
    async fn relay_progress(
        &self,
        slot: &str,
    ) -> Result<Option<super::relay::Progress>, ProviderError> {
        super::relay::progress(&self.client, self.s(), slot).await
    }
    async fn forget_relay(&self, slot: &str) -> Result<(), ProviderError> {
        if self.relayed_slots(slot).await?.is_empty() {
            return Ok(());
        }
        self.client
            .execute(
                "DELETE FROM cutover_relay.progress WHERE slot = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg(self.s(), e))?;
        Ok(())
    }
    async fn slot_active(&self, slot: &str) -> Result<bool, ProviderError> {
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&slot],
            )
            .await
            .map_err(|e| pg(self.s(), e))?
            .is_some())
    }
    async fn create_slot(&self, slot: &str) -> Result<String, ProviderError> {
        changes::create_slot(&self.client, self.s(), slot).await
    }
    async fn drop_slot(&self, slot: &str) -> Result<bool, ProviderError> {
        replication::drop_slot(&self.client, self.s(), slot).await
    }
    async fn peek(&self, slot: &str, publication: &str) -> Result<ChangeSet, ProviderError> {
        changes::peek(&self.client, self.s(), slot, publication).await
    }
    async fn advance_slot(&self, slot: &str, lsn: &str) -> Result<(), ProviderError> {
        self.client
            .query(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&slot, &lsn],
            )
            .await
            .map_err(|e| pg(self.s(), e))
            .map(|_| ())
    }
    async fn hashes_by_key(
        &self,
        t: &Table,
        keys: &[Vec<String>],
    ) -> Result<BTreeMap<Vec<String>, String>, ProviderError> {
        checksum::hashes_by_key(&self.client, self.s(), t, keys).await
    }

    async fn publications(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
        let rows = self
            .client
            .query(
                "SELECT pubname::text FROM pg_publication WHERE pubname LIKE $1 ORDER BY 1",
                &[&like_prefix(prefix)],
            )
            .await
            .map_err(|e| pg(self.s(), e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
    async fn has_publication(&self, name: &str) -> Result<bool, ProviderError> {
        replication::has_publication(&self.client, self.s(), name).await
    }
    async fn publication_tables(&self, name: &str) -> Result<Vec<String>, ProviderError> {
        replication::publication_tables(&self.client, self.s(), name).await
    }
    async fn create_publication(&self, name: &str, tables: &[String]) -> Result<(), ProviderError> {
        replication::create_publication(&self.client, self.s(), name, tables).await
    }
    async fn drop_publication(&self, name: &str) -> Result<bool, ProviderError> {
        if !self.has_publication(name).await? {
            return Ok(false);
        }
        self.client
            .batch_execute(&format!("DROP PUBLICATION {}", ident(name)))
            .await
            .map_err(|e| pg(self.s(), e))?;
        Ok(true)
    }

    async fn subscriptions(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
        let rows = self
            .client
            .query(
                "SELECT subname::text FROM pg_subscription WHERE subdbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND subname LIKE $1 ORDER BY 1",
                &[&like_prefix(prefix)],
            )
            .await
            .map_err(|e| pg(self.s(), e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
    async fn has_subscription(&self, name: &str) -> Result<bool, ProviderError> {
        replication::has_subscription(&self.client, self.s(), name).await
    }
    async fn subscription_running(&self, name: &str) -> Result<bool, ProviderError> {
        Ok(self
            .client
            .query_opt(
                "SELECT 1 FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                &[&name],
            )
            .await
            .map_err(|e| pg(self.s(), e))?
            .is_some())
    }
    async fn subscribe(
        &self,
        sub: &Subscription,
        publisher: &dyn Database,
    ) -> Result<(), ProviderError> {
        let sql = format!(
            "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (create_slot = false, slot_name = {}, copy_data = false{})",
            ident(&sub.name),
            literal(&publisher.conninfo()),
            ident(&sub.publication),
            literal(&sub.name),
            if sub.origin_none { ", origin = none" } else { "" }
        );
        // pg() reports the server's message only, never the statement.
        self.client
            .batch_execute(&sql)
            .await
            .map_err(|e| pg(self.s(), e))
    }
    async fn may_subscribe(
        &self,
        publisher: &dyn Database,
        publication: &str,
    ) -> Result<super::rights::Outcome, ProviderError> {
        super::rights::try_subscribe(&self.client, self.s(), &publisher.conninfo(), publication)
            .await
    }
    async fn drop_subscription(&self, name: &str) -> Result<bool, ProviderError> {
        replication::drop_subscription(&self.client, self.s(), name).await
    }

    async fn sequences(&self) -> Result<Sequences, ProviderError> {
        replication::sequences(&self.client, self.s()).await
    }
    async fn advance(&self, todo: &[(String, Option<i64>, i64)]) -> Result<(), ProviderError> {
        replication::advance(&self.client, self.s(), todo).await
    }

    async fn tables(&self) -> Result<Vec<Table>, ProviderError> {
        catalog::tables(&self.client, self.s()).await
    }
    async fn major_version(&self) -> Result<i32, ProviderError> {
        catalog::major_version(&self.client, self.s()).await
    }
    async fn row_writes(&self) -> Result<i64, ProviderError> {
        Ok(self
            .client
            .query_one(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables",
                &[],
            )
            .await
            .map_err(|e| pg(self.s(), e))?
            .get(0))
    }

    async fn writers(&self, tables: &[String]) -> Result<Vec<String>, ProviderError> {
        roles::writers(&self.client, self.s(), tables).await
    }
    async fn existing_roles(&self, names: &[String]) -> Result<Vec<String>, ProviderError> {
        roles::existing(&self.client, self.s(), names).await
    }
    async fn frozen(&self) -> Result<Vec<String>, ProviderError> {
        roles::frozen(&self.client, self.s(), &self.parts.dbname).await
    }
    async fn freeze(&self, names: &[String]) -> Result<u64, ProviderError> {
        roles::freeze(&self.client, self.s(), &self.parts.dbname, names).await
    }
    async fn unfreeze(&self, names: &[String]) -> Result<(), ProviderError> {
        roles::unfreeze(&self.client, self.s(), &self.parts.dbname, names).await
    }
}

/// The comparison of every row of both servers, chunk by chunk in parallel
/// ([`checksum::compare`]): a seam of its own, since it opens its own connections to both.
#[async_trait]
pub trait Checksums: Send + Sync {
    /// Compares `tables` (as the source's catalog describes them) with `jobs` connection
    /// pairs, in chunks of about `chunk_rows` rows (`Some(0)`: one per table, row counts
    /// only), naming at most `limit` keys per table; `on_chunk(done, all)` after each chunk.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] when a query fails (a difference is a result).
    async fn compare(
        &self,
        tables: &[Table],
        jobs: usize,
        chunk_rows: Option<i64>,
        limit: usize,
        on_chunk: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<TableResult>, ProviderError>;
}

/// [`Checksums`] over the two servers' URLs.
pub struct PgChecksums {
    /// The source's admin URL (a secret).
    pub source_url: String,
    /// The target's admin URL (a secret).
    pub target_url: String,
}

#[async_trait]
impl Checksums for PgChecksums {
    async fn compare(
        &self,
        tables: &[Table],
        jobs: usize,
        chunk_rows: Option<i64>,
        limit: usize,
        on_chunk: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<TableResult>, ProviderError> {
        checksum::compare(
            &self.source_url,
            &self.target_url,
            tables,
            jobs,
            chunk_rows,
            limit,
            on_chunk,
        )
        .await
    }
}

/// A `LIKE` pattern matching names that start with `prefix` (its `_` and `%` literal).
fn like_prefix(prefix: &str) -> String {
    format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    )
}

/// Hurries a subscriber's confirmation: flushes the subscriber's applied WAL
/// ([`replication::FLUSH_SQL`]), then writes a probe on the publisher ([`replication::PROBE_SQL`]),
/// whose arrival wakes the apply worker to report the flushed position. Both only speed a wait
/// up, so their errors are ignored.
pub async fn nudge(publisher: &dyn Database, subscriber: Option<&dyn Database>) {
    if let Some(s) = subscriber {
        s.flush().await;
    }
    publisher.probe().await;
}

#[cfg(test)]
mod tests {
    use super::like_prefix;

    #[test]
    fn a_prefix_matches_its_underscores_literally() {
        assert_eq!(like_prefix("cutover_shop_"), "cutover\\_shop\\_%");
        assert_eq!(like_prefix("a%b"), "a\\%b%");
    }
}
