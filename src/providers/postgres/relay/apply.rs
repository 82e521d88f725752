//! Applies decoded changes on the destination through tokio-postgres: one destination
//! transaction per group of source transactions, in commit order, the last applied commit's end
//! LSN written to `cutover_relay.progress` in that same transaction, so a restart applies
//! nothing twice and skips nothing.
//!
//! Statements are prepared once per table and shape and sent pipelined (tokio-postgres sends a
//! request when its future is first polled; the futures of a batch are polled in order).
//! Values travel as text and are cast with the destination column's type
//! (`$1::text::<type>`), which is PostgreSQL's input function: every type the copy supports.
//!
//! Owns: the destination's side of relayed changes and the progress record. Must not: read the
//! stream, or decide when to stop.

use super::pgoutput::{Message, Relation, Tuple, Value};
use super::wire::format_lsn;
use super::RelayError;
use crate::providers::postgres::{ident, Server};
use std::collections::HashMap;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

/// The schema of the relay's bookkeeping on the destination.
pub const PROGRESS_SCHEMA: &str = "cutover_relay";

/// Creates the progress table when missing.
pub const PROGRESS_SQL: &str = "CREATE SCHEMA IF NOT EXISTS cutover_relay;
CREATE TABLE IF NOT EXISTS cutover_relay.progress (
  slot text PRIMARY KEY,
  lsn pg_lsn NOT NULL,
  transactions bigint NOT NULL DEFAULT 0,
  changes bigint NOT NULL DEFAULT 0,
  applied_at timestamptz NOT NULL DEFAULT now(),
  state text NOT NULL DEFAULT 'streaming',
  message text
)";

/// Changes sent in one pipelined batch.
const BATCH: usize = 500;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Shape {
    Insert,
    /// Columns set (false: unchanged TOAST), and whether the row is found by its whole old
    /// image (REPLICA IDENTITY FULL) rather than its key.
    Update(Vec<bool>, bool),
    Delete(bool),
}

struct Table {
    relation: Relation,
    /// The destination's type of each of the relation's columns (`format_type`).
    types: Vec<String>,
    statements: HashMap<Shape, Statement>,
}

/// One statement with its text parameters, waiting to be sent; `check` asks for exactly one
/// row affected (updates and deletes), naming the change in the error otherwise.
struct Pending {
    statement: Statement,
    params: Vec<Option<String>>,
    check: Option<String>,
}

/// The destination side of one relay.
pub struct Applier {
    client: Client,
    side: Server,
    slot: String,
    tables: HashMap<u32, Table>,
    pending: Vec<Pending>,
    in_transaction: bool,
    /// The end LSN of the last source transaction committed on the destination.
    pub applied: u64,
    /// The end LSN of the last source transaction applied in the open destination transaction.
    grouped: Option<u64>,
    transactions: i64,
    changes: i64,
    /// Changes in the open destination transaction.
    pub open_changes: usize,
    /// Between a source transaction's Begin and its Commit.
    in_source: bool,
    /// The session runs with `session_replication_role = replica` (see [`super::Event`]).
    pub replica_role: bool,
}

fn pg(side: Server, e: tokio_postgres::Error) -> RelayError {
    RelayError::Connection(crate::providers::postgres::pg(side, e).to_string())
}

impl Applier {
    /// Prepares the progress table and reads where this slot's relay stopped (0 when it never
    /// ran). A relay stopped by the WAL guard stays stopped.
    ///
    /// # Errors
    /// [`RelayError::Connection`] when the destination fails; [`RelayError::Stopped`] when the
    /// guard stopped this slot's relay before.
    pub async fn open(client: Client, side: Server, slot: &str) -> Result<Applier, RelayError> {
        client
            .batch_execute(PROGRESS_SQL)
            .await
            .map_err(|e| pg(side, e))?;
        let row = client
            .query_opt(
                "SELECT lsn::text, state, coalesce(message, ''), transactions, changes FROM cutover_relay.progress WHERE slot = $1",
                &[&slot],
            )
            .await
            .map_err(|e| pg(side, e))?;
        // As a subscription's apply worker: the destination's triggers and foreign key checks
        // do not fire for replicated rows (the publisher's already did). Only where the role
        // may (superuser; rds_superuser on RDS); elsewhere ordinary triggers fire.
        let replica_role = client
            .batch_execute("SET session_replication_role = replica")
            .await
            .is_ok();
        let (applied, transactions, changes) = match row {
            Some(r) => {
                if super::RelayState::parse(r.get(1)) == super::RelayState::Stopped {
                    return Err(RelayError::Stopped(r.get(2)));
                }
                (
                    super::wire::parse_lsn(&r.get::<_, String>(0)).unwrap_or(0),
                    r.get(3),
                    r.get(4),
                )
            }
            None => (0, 0, 0),
        };
        Ok(Applier {
            client,
            side,
            slot: slot.to_string(),
            tables: HashMap::new(),
            pending: Vec::new(),
            in_transaction: false,
            applied,
            grouped: None,
            transactions,
            changes,
            open_changes: 0,
            in_source: false,
            replica_role,
        })
    }

    /// Handles one decoded message. Changes of a transaction that was committed on the
    /// destination before (its commit LSN below [`Self::applied`]) are skipped; `skip` says so
    /// for the current transaction. A Commit adds the transaction to the open group, which
    /// [`Self::commit`] writes.
    ///
    /// # Errors
    /// [`RelayError::Divergence`] for a table that changed shape or a row that is not where the
    /// source says; [`RelayError::Connection`] when the destination fails.
    pub async fn handle(&mut self, message: Message, skip: &mut bool) -> Result<(), RelayError> {
        match message {
            Message::Begin { final_lsn, .. } => {
                self.in_source = true;
                *skip = final_lsn < self.applied || self.grouped.is_some_and(|g| final_lsn < g);
                if !*skip && !self.in_transaction {
                    self.client
                        .batch_execute("BEGIN")
                        .await
                        .map_err(|e| pg(self.side, e))?;
                    self.in_transaction = true;
                }
            }
            Message::Commit { end_lsn, .. } => {
                self.in_source = false;
                if !*skip {
                    // No round trip here: the group's statements go out BATCH at a time across
                    // source transactions and all are sent and checked before the destination
                    // commits ([`Self::commit`]), so a backlog of small transactions is not
                    // applied one round trip each.
                    self.grouped = Some(end_lsn);
                    self.transactions += 1;
                }
                *skip = false;
            }
            Message::Relation(r) => self.relation(r).await?,
            Message::Other(_) => {}
            change if *skip => drop(change),
            Message::Insert { relation, new } => {
                self.table(relation)?;
                let params = values(&new);
                let statement = self.statement(relation, Shape::Insert).await?;
                self.push(statement, params, None).await?;
            }
            Message::Update { relation, old, new } => {
                let full = self.table(relation)?.relation.replica_identity == b'f';
                let set: Vec<bool> = new.iter().map(|v| *v != Value::Unchanged).collect();
                let (mut params, name) = {
                    let t = self.table(relation)?;
                    let mut params: Vec<Option<String>> = new
                        .iter()
                        .filter(|v| **v != Value::Unchanged)
                        .map(value)
                        .collect();
                    params.extend(where_params(t, old.as_ref().unwrap_or(&new), full)?);
                    (params, t.relation.display())
                };
                let statement = self.statement(relation, Shape::Update(set, full)).await?;
                params.shrink_to_fit();
                self.push(statement, params, Some(format!("UPDATE of {name}")))
                    .await?;
            }
            Message::Delete { relation, old } => {
                let full = self.table(relation)?.relation.replica_identity == b'f';
                let (params, name) = {
                    let t = self.table(relation)?;
                    (where_params(t, &old, full)?, t.relation.display())
                };
                let statement = self.statement(relation, Shape::Delete(full)).await?;
                self.push(statement, params, Some(format!("DELETE from {name}")))
                    .await?;
            }
            Message::Truncate {
                cascade,
                restart_identity,
                relations,
            } => {
                self.flush().await?;
                let names: Result<Vec<String>, RelayError> = relations
                    .iter()
                    .map(|r| Ok(self.table(*r)?.relation.qualified()))
                    .collect();
                let sql = format!(
                    "TRUNCATE {}{}{}",
                    names?.join(", "),
                    if restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    },
                    if cascade { " CASCADE" } else { "" }
                );
                self.client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| self.failed("TRUNCATE", e))?;
                self.changes += 1;
                self.open_changes += 1;
            }
        }
        Ok(())
    }

    /// Commits the open destination transaction with the progress record of the last source
    /// transaction in it; returns that end LSN (what may be confirmed to the source).
    ///
    /// # Errors
    /// The destination's error (the transaction is then rolled back by the server).
    pub async fn commit(&mut self) -> Result<Option<u64>, RelayError> {
        let Some(end) = self.grouped.take() else {
            return Ok(None);
        };
        self.flush().await?;
        self.client
            .execute(
                "INSERT INTO cutover_relay.progress (slot, lsn, transactions, changes, applied_at, state, message)
                 VALUES ($1, $2::text::pg_lsn, $3, $4, now(), 'streaming', NULL)
                 ON CONFLICT (slot) DO UPDATE SET lsn = excluded.lsn, transactions = excluded.transactions,
                   changes = excluded.changes, applied_at = now(), state = 'streaming', message = NULL",
                &[&self.slot, &format_lsn(end), &self.transactions, &self.changes],
            )
            .await
            .map_err(|e| pg(self.side, e))?;
        self.client
            .batch_execute("COMMIT")
            .await
            .map_err(|e| pg(self.side, e))?;
        self.in_transaction = false;
        self.open_changes = 0;
        self.applied = end;
        Ok(Some(end))
    }

    /// Source transactions applied since the relay first ran on this slot.
    pub fn transactions(&self) -> i64 {
        self.transactions
    }

    /// True outside a source transaction (no Begin without its Commit), with source
    /// transactions applied in the open destination transaction.
    pub fn between_transactions(&self) -> bool {
        !self.in_source && self.grouped.is_some()
    }

    /// Whether a destination transaction is open.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    fn table(&self, relation: u32) -> Result<&Table, RelayError> {
        self.tables.get(&relation).ok_or_else(|| {
            RelayError::Divergence(format!(
                "a change for table OID {relation} arrived before its description (Relation message)"
            ))
        })
    }

    fn failed(&self, what: &str, e: tokio_postgres::Error) -> RelayError {
        match e.as_db_error() {
            // The server refused the change itself: applying on would diverge.
            Some(db) => {
                RelayError::Divergence(format!("the destination refused {what}: {}", db.message()))
            }
            None => pg(self.side, e),
        }
    }

    async fn relation(&mut self, r: Relation) -> Result<(), RelayError> {
        if let Some(known) = self.tables.get(&r.id) {
            if known.relation == r {
                return Ok(());
            }
            return Err(RelayError::Divergence(format!(
                "table {} changed on the publisher during replication (ALTER TABLE: columns were {}, now {}; replica identity {} → {}); the relay stops rather than apply changes of a shape the destination does not have: apply the same change to the destination's table, then restart the relay",
                r.display(),
                columns(&known.relation),
                columns(&r),
                known.relation.replica_identity as char,
                r.replica_identity as char
            )));
        }
        if r.replica_identity == b'n' {
            return Err(RelayError::Divergence(format!(
                "table {} has REPLICA IDENTITY NOTHING: its updates and deletes cannot be found on the destination; give it a primary key or REPLICA IDENTITY FULL",
                r.display()
            )));
        }
        // The destination's columns, and the source's builtin types as the destination names them.
        let rows = self
            .client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&r.qualified()],
            )
            .await
            .map_err(|e| pg(self.side, e))?;
        if rows.is_empty() {
            return Err(RelayError::Divergence(format!(
                "table {} is not on the destination",
                r.display()
            )));
        }
        let dest: HashMap<String, String> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        let source_names: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
        let missing: Vec<&str> = source_names
            .iter()
            .copied()
            .filter(|n| !dest.contains_key(*n))
            .collect();
        let extra: Vec<&String> = dest
            .keys()
            .filter(|n| !source_names.contains(&n.as_str()))
            .collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(RelayError::Divergence(format!(
                "table {} differs between the servers (ALTER TABLE on the publisher during replication?): the publisher has column(s) [{}] the destination lacks, the destination has [{}] the publisher lacks; the relay stops rather than diverge",
                r.display(),
                missing.join(", "),
                extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            )));
        }
        let mut types = Vec::with_capacity(r.columns.len());
        for c in &r.columns {
            let there = dest[&c.name].clone();
            // Builtin types have the same OIDs everywhere (below FirstNormalObjectId, 16384).
            if c.type_oid < 16384 {
                let here: String = self
                    .client
                    .query_one(
                        "SELECT format_type($1::oid, $2)",
                        &[&c.type_oid, &c.type_modifier],
                    )
                    .await
                    .map_err(|e| pg(self.side, e))?
                    .get(0);
                if here != there {
                    return Err(RelayError::Divergence(format!(
                        "table {} column {} is {here} on the publisher and {there} on the destination (ALTER TABLE on the publisher during replication?); the relay stops rather than diverge",
                        r.display(),
                        c.name
                    )));
                }
            }
            types.push(there);
        }
        self.tables.insert(
            r.id,
            Table {
                relation: r,
                types,
                statements: HashMap::new(),
            },
        );
        Ok(())
    }

    async fn statement(&mut self, relation: u32, shape: Shape) -> Result<Statement, RelayError> {
        let side = self.side;
        let t = self.tables.get_mut(&relation).expect("checked by table()");
        if let Some(s) = t.statements.get(&shape) {
            return Ok(s.clone());
        }
        let sql = sql_for(t, &shape);
        let n = sql.matches('$').count();
        let s = self
            .client
            .prepare_typed(&sql, &vec![Type::TEXT; n])
            .await
            .map_err(|e| pg(side, e))?;
        let t = self.tables.get_mut(&relation).expect("checked by table()");
        t.statements.insert(shape, s.clone());
        Ok(s)
    }

    async fn push(
        &mut self,
        statement: Statement,
        params: Vec<Option<String>>,
        check: Option<String>,
    ) -> Result<(), RelayError> {
        self.pending.push(Pending {
            statement,
            params,
            check,
        });
        self.changes += 1;
        self.open_changes += 1;
        if self.pending.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends the pending statements, pipelined, and checks each one's row count.
    async fn flush(&mut self) -> Result<(), RelayError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let refs: Vec<Vec<&(dyn ToSql + Sync)>> = pending
            .iter()
            .map(|p| p.params.iter().map(|v| v as &(dyn ToSql + Sync)).collect())
            .collect();
        let results = futures_util::future::join_all(
            pending
                .iter()
                .zip(&refs)
                .map(|(p, r)| self.client.execute(&p.statement, r)),
        )
        .await;
        for (p, r) in pending.iter().zip(results) {
            let what = p.check.as_deref().unwrap_or("INSERT");
            let n = r.map_err(|e| self.failed(what, e))?;
            if let Some(change) = &p.check {
                if n != 1 {
                    return Err(RelayError::Divergence(format!(
                        "{change}: the row is not on the destination (found {n}); the servers diverged before this change"
                    )));
                }
            }
        }
        Ok(())
    }
}

fn columns(r: &Relation) -> String {
    r.columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn value(v: &Value) -> Option<String> {
    match v {
        Value::Text(t) => Some(t.clone()),
        Value::Null | Value::Unchanged => None,
    }
}

fn values(t: &Tuple) -> Vec<Option<String>> {
    t.iter().map(value).collect()
}

/// The values that find the row: its key columns' (from the old key or, when the key did not
/// change, the new row), or every column of the old image for REPLICA IDENTITY FULL.
fn where_params(t: &Table, image: &Tuple, full: bool) -> Result<Vec<Option<String>>, RelayError> {
    let mut out = Vec::new();
    for (c, v) in t.relation.columns.iter().zip(image) {
        if !(full || c.key) {
            continue;
        }
        match v {
            Value::Unchanged => {
                return Err(RelayError::Divergence(format!(
                    "table {}: column {} of the row's old image arrived without its value",
                    t.relation.display(),
                    c.name
                )))
            }
            v => out.push(value(v)),
        }
    }
    Ok(out)
}

/// The SQL of one statement shape.
fn sql_for(t: &Table, shape: &Shape) -> String {
    let r = &t.relation;
    let name = r.qualified();
    let mut n = 0;
    let mut next = || {
        n += 1;
        n
    };
    let cast = |i: usize, p: usize| format!("${p}::text::{}", t.types[i]);
    let find = |full: bool, next: &mut dyn FnMut() -> usize| -> String {
        let mut conds = Vec::new();
        for (i, c) in r.columns.iter().enumerate() {
            if full {
                conds.push(format!(
                    "{}::text IS NOT DISTINCT FROM ${}::text",
                    ident(&c.name),
                    next()
                ));
            } else if c.key {
                conds.push(format!("{} = {}", ident(&c.name), cast(i, next())));
            }
        }
        if full {
            // The first row matching the whole old image, as the apply worker takes it.
            format!(
                "ctid = (SELECT ctid FROM {name} WHERE {} LIMIT 1)",
                conds.join(" AND ")
            )
        } else {
            conds.join(" AND ")
        }
    };
    match shape {
        Shape::Insert => {
            let cols: Vec<String> = r.columns.iter().map(|c| ident(&c.name)).collect();
            let vals: Vec<String> = (0..r.columns.len()).map(|i| cast(i, next())).collect();
            format!(
                "INSERT INTO {name} ({}) VALUES ({})",
                cols.join(", "),
                vals.join(", ")
            )
        }
        Shape::Update(set, full) => {
            let sets: Vec<String> = r
                .columns
                .iter()
                .enumerate()
                .filter(|(i, _)| set[*i])
                .map(|(i, c)| format!("{} = {}", ident(&c.name), cast(i, next())))
                .collect();
            let cond = find(*full, &mut next);
            if sets.is_empty() {
                // Only unchanged TOAST values: the row still has to exist.
                format!(
                    "UPDATE {name} SET {0} = {0} WHERE {cond}",
                    ident(&r.columns[0].name)
                )
            } else {
                format!("UPDATE {name} SET {} WHERE {cond}", sets.join(", "))
            }
        }
        Shape::Delete(full) => format!("DELETE FROM {name} WHERE {}", find(*full, &mut next)),
    }
}

#[cfg(test)]
mod tests {
    use super::super::pgoutput::Column;
    use super::*;

    fn table(ident_kind: u8) -> Table {
        let col = |key, name: &str| Column {
            key,
            name: name.into(),
            type_oid: 23,
            type_modifier: -1,
        };
        Table {
            relation: Relation {
                id: 1,
                schema: "public".into(),
                name: "orders".into(),
                replica_identity: ident_kind,
                columns: vec![col(true, "id"), col(false, "note"), col(false, "doc")],
            },
            types: vec!["integer".into(), "text".into(), "jsonb".into()],
            statements: HashMap::new(),
        }
    }

    #[test]
    fn statements_cast_text_to_the_destinations_types_and_skip_unchanged_toast() {
        let t = table(b'd');
        assert_eq!(
            sql_for(&t, &Shape::Insert),
            "INSERT INTO \"public\".\"orders\" (\"id\", \"note\", \"doc\") VALUES ($1::text::integer, $2::text::text, $3::text::jsonb)"
        );
        assert_eq!(
            sql_for(&t, &Shape::Update(vec![true, true, false], false)),
            "UPDATE \"public\".\"orders\" SET \"id\" = $1::text::integer, \"note\" = $2::text::text WHERE \"id\" = $3::text::integer"
        );
        assert_eq!(
            sql_for(&t, &Shape::Delete(false)),
            "DELETE FROM \"public\".\"orders\" WHERE \"id\" = $1::text::integer"
        );
    }

    #[test]
    fn replica_identity_full_finds_one_row_by_its_whole_old_image() {
        let t = table(b'f');
        let sql = sql_for(&t, &Shape::Delete(true));
        assert_eq!(
            sql,
            "DELETE FROM \"public\".\"orders\" WHERE ctid = (SELECT ctid FROM \"public\".\"orders\" WHERE \"id\"::text IS NOT DISTINCT FROM $1::text AND \"note\"::text IS NOT DISTINCT FROM $2::text AND \"doc\"::text IS NOT DISTINCT FROM $3::text LIMIT 1)"
        );
        let old = vec![
            Value::Text("1".into()),
            Value::Null,
            Value::Text("{}".into()),
        ];
        assert_eq!(
            where_params(&t, &old, true).unwrap(),
            vec![Some("1".into()), None, Some("{}".into())]
        );
    }

    #[test]
    fn a_key_without_its_value_is_an_error_naming_the_table() {
        let t = table(b'd');
        let img = vec![Value::Unchanged, Value::Null, Value::Null];
        let e = where_params(&t, &img, false).unwrap_err();
        assert!(e.to_string().contains("public.orders"), "{e}");
        assert_eq!(
            where_params(
                &t,
                &vec![Value::Text("5".into()), Value::Unchanged, Value::Null],
                false
            )
            .unwrap(),
            vec![Some("5".into())]
        );
    }
}
