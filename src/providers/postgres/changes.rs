//! The keys of rows changed since a point in the source's WAL, read from a logical decoding slot
//! of our own (the change-tracking slot) through the SQL interface
//! (`pg_logical_slot_peek_binary_changes`) with the `pgoutput` plugin, as ghostferry's reverify
//! set is fed by the binlog: every INSERT, UPDATE (old and new key) and DELETE of a published
//! table since the slot was created, and the tables a TRUNCATE touched.
//!
//! The messages follow PostgreSQL's logical replication protocol, version 1 ("Logical
//! Replication Message Formats", PostgreSQL 15 documentation, section 55.9); only what names a
//! row is decoded. Owns the slot's decoding; must not compare rows or decide what a difference
//! means.

use super::pg;
use super::Server;
use crate::providers::ProviderError;
use futures_util::{pin_mut, TryStreamExt};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio_postgres::Client;

/// One table's changed rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableChanges {
    /// Key column names (unquoted) in the table's column order, as the relation message flags
    /// them (the replica identity); empty for `REPLICA IDENTITY FULL`.
    pub key_columns: Vec<String>,
    /// Key values (text form) of every changed row, old and new key of an UPDATE that changed it.
    pub keys: BTreeSet<Vec<String>>,
    /// A TRUNCATE, a keyless table or a row without its key: the whole table must be compared.
    pub whole_table: bool,
}

/// What a change-tracking slot holds, per table (`schema.table`).
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    /// Changed rows per table.
    pub tables: BTreeMap<String, TableChanges>,
    /// Row changes decoded (inserts, updates, deletes), for the audit.
    pub changes: u64,
    /// Bytes of protocol messages read from the slot.
    pub bytes: u64,
}

impl ChangeSet {
    /// Keys named in all, over every table.
    pub fn keys(&self) -> usize {
        self.tables.values().map(|t| t.keys.len()).sum()
    }
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The message ended before a field it announces.
    #[error("pgoutput message truncated at byte {0}")]
    Truncated(usize),
    /// A row change for a relation whose `R` message was not seen first.
    #[error("pgoutput change for relation {0} before its relation message")]
    UnknownRelation(u32),
    /// A column kind other than n, u, t (binary columns are never requested).
    #[error("pgoutput column kind {0:?} not understood")]
    ColumnKind(char),
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(DecodeError::Truncated(self.at))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(DecodeError::Truncated(self.at))?;
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let s = self.take(2)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let s = self.take(4)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let rest = self
            .b
            .get(self.at..)
            .ok_or(DecodeError::Truncated(self.at))?;
        let n = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(DecodeError::Truncated(self.b.len()))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.at += n + 1;
        Ok(s)
    }
    /// TupleData: per column `n` (null), `u` (unchanged TOAST) or `t` + length + text.
    fn tuple(&mut self) -> Result<Vec<Option<String>>, DecodeError> {
        let n = self.u16()?;
        let mut cols = Vec::with_capacity(n as usize);
        for _ in 0..n {
            match self.u8()? {
                b'n' | b'u' => cols.push(None),
                b't' => {
                    let len = self.u32()? as usize;
                    cols.push(Some(String::from_utf8_lossy(self.take(len)?).into_owned()));
                }
                other => return Err(DecodeError::ColumnKind(other as char)),
            }
        }
        Ok(cols)
    }
}

struct Relation {
    name: String,
    /// Positions of the key columns in the relation's column list.
    key_at: Vec<usize>,
    key_columns: Vec<String>,
}

/// Folds pgoutput messages into a [`ChangeSet`], one message at a time.
#[derive(Default)]
pub struct Decoder {
    relations: HashMap<u32, Relation>,
    set: ChangeSet,
}

impl Decoder {
    fn entry(&mut self, oid: u32) -> Result<(&Relation, &mut TableChanges), DecodeError> {
        let rel = self
            .relations
            .get(&oid)
            .ok_or(DecodeError::UnknownRelation(oid))?;
        let t = self.set.tables.entry(rel.name.clone()).or_default();
        if t.key_columns.is_empty() {
            t.key_columns = rel.key_columns.clone();
        }
        Ok((rel, t))
    }

    fn add_row(&mut self, oid: u32, tuple: &[Option<String>]) -> Result<(), DecodeError> {
        let (rel, t) = self.entry(oid)?;
        let key: Option<Vec<String>> = rel
            .key_at
            .iter()
            .map(|&i| tuple.get(i).cloned().flatten())
            .collect();
        match key {
            Some(k) if !rel.key_at.is_empty() => {
                t.keys.insert(k);
            }
            _ => t.whole_table = true,
        }
        Ok(())
    }

    /// Decodes one message (the `data` of one row of the slot's output).
    ///
    /// # Errors
    /// [`DecodeError`] when the bytes are not a protocol-1 message this decoder understands.
    pub fn message(&mut self, b: &[u8]) -> Result<(), DecodeError> {
        self.set.bytes += b.len() as u64;
        let mut r = Reader { b, at: 0 };
        match r.u8()? {
            b'R' => {
                let oid = r.u32()?;
                let namespace = r.cstr()?;
                let name = r.cstr()?;
                let _identity = r.u8()?;
                let ncols = r.u16()?;
                let (mut key_at, mut key_columns) = (Vec::new(), Vec::new());
                for i in 0..ncols as usize {
                    let flags = r.u8()?;
                    let col = r.cstr()?;
                    let _type_oid = r.u32()?;
                    let _typmod = r.u32()?;
                    if flags & 1 == 1 {
                        key_at.push(i);
                        key_columns.push(col);
                    }
                }
                let name = if namespace.is_empty() {
                    format!("pg_catalog.{name}")
                } else {
                    format!("{namespace}.{name}")
                };
                self.relations.insert(
                    oid,
                    Relation {
                        name,
                        key_at,
                        key_columns,
                    },
                );
            }
            b'I' => {
                let oid = r.u32()?;
                let _n = r.u8()?;
                let new = r.tuple()?;
                self.set.changes += 1;
                self.add_row(oid, &new)?;
            }
            b'U' => {
                let oid = r.u32()?;
                let mut kind = r.u8()?;
                if kind == b'K' || kind == b'O' {
                    let old = r.tuple()?;
                    self.add_row(oid, &old)?;
                    kind = r.u8()?;
                }
                debug_assert_eq!(kind, b'N');
                let new = r.tuple()?;
                self.set.changes += 1;
                self.add_row(oid, &new)?;
            }
            b'D' => {
                let oid = r.u32()?;
                let _k = r.u8()?;
                let old = r.tuple()?;
                self.set.changes += 1;
                self.add_row(oid, &old)?;
            }
            b'T' => {
                let n = r.u32()?;
                let _options = r.u8()?;
                for _ in 0..n {
                    let oid = r.u32()?;
                    let (_, t) = self.entry(oid)?;
                    t.whole_table = true;
                }
            }
            // Begin, Commit, Origin, Type, Message: nothing names a row.
            _ => {}
        }
        Ok(())
    }

    /// The changes decoded so far.
    pub fn finish(self) -> ChangeSet {
        self.set
    }
}

/// Creates the logical slot `slot` (pgoutput) on the connected server unless it exists; returns
/// the LSN from which it records changes (its `confirmed_flush_lsn`).
///
/// # Errors
/// [`ProviderError::Postgres`] (no free replication slot, no replication privilege).
pub async fn create_slot(c: &Client, side: Server, slot: &str) -> Result<String, ProviderError> {
    if let Some(row) = c
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| pg(side, e))?
    {
        return Ok(row.get::<_, Option<String>>(0).unwrap_or_default());
    }
    let row = c
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(row.get(0))
}

/// Whether slot `slot` exists on the connected server.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn slot_exists(c: &Client, side: Server, slot: &str) -> Result<bool, ProviderError> {
    Ok(c.query_opt(
        "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .map_err(|e| pg(side, e))?
    .is_some())
}

/// Reads (without consuming) every change slot `slot` holds for `publication` up to the
/// server's current LSN, streaming the rows so memory grows with the changed keys only.
///
/// # Errors
/// [`ProviderError::Postgres`]; a message that does not decode is reported as one too.
pub async fn peek(
    c: &Client,
    side: Server,
    slot: &str,
    publication: &str,
) -> Result<ChangeSet, ProviderError> {
    let stream = c
        .query_raw(
            "SELECT data FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)",
            [slot, publication],
        )
        .await
        .map_err(|e| pg(side, e))?;
    pin_mut!(stream);
    let mut d = Decoder::default();
    while let Some(row) = stream.try_next().await.map_err(|e| pg(side, e))? {
        let data: &[u8] = row.get(0);
        d.message(data).map_err(|e| ProviderError::Postgres {
            side,
            message: format!("change-tracking slot {slot}: {e}"),
        })?;
    }
    Ok(d.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cstr(v: &mut Vec<u8>, s: &str) {
        v.extend_from_slice(s.as_bytes());
        v.push(0);
    }
    fn relation(oid: u32, cols: &[(&str, bool)]) -> Vec<u8> {
        let mut v = vec![b'R'];
        v.extend_from_slice(&oid.to_be_bytes());
        cstr(&mut v, "public");
        cstr(&mut v, "orders");
        v.push(b'd');
        v.extend_from_slice(&(cols.len() as u16).to_be_bytes());
        for (name, key) in cols {
            v.push(u8::from(*key));
            cstr(&mut v, name);
            v.extend_from_slice(&20u32.to_be_bytes());
            v.extend_from_slice(&u32::MAX.to_be_bytes());
        }
        v
    }
    fn tuple(v: &mut Vec<u8>, cols: &[Option<&str>]) {
        v.extend_from_slice(&(cols.len() as u16).to_be_bytes());
        for c in cols {
            match c {
                None => v.push(b'n'),
                Some(t) => {
                    v.push(b't');
                    v.extend_from_slice(&(t.len() as u32).to_be_bytes());
                    v.extend_from_slice(t.as_bytes());
                }
            }
        }
    }

    #[test]
    fn inserts_updates_deletes_and_truncates_name_their_keys() {
        let mut d = Decoder::default();
        d.message(&relation(
            7,
            &[("tenant", true), ("note", false), ("id", true)],
        ))
        .unwrap();
        let mut ins = vec![b'I'];
        ins.extend_from_slice(&7u32.to_be_bytes());
        ins.push(b'N');
        tuple(&mut ins, &[Some("a"), Some("hello 'x'"), Some("1")]);
        d.message(&ins).unwrap();
        // An update that changed the key carries the old key first.
        let mut upd = vec![b'U'];
        upd.extend_from_slice(&7u32.to_be_bytes());
        upd.push(b'K');
        tuple(&mut upd, &[Some("a"), None, Some("2")]);
        upd.push(b'N');
        tuple(&mut upd, &[Some("b"), Some("x"), Some("2")]);
        d.message(&upd).unwrap();
        let mut del = vec![b'D'];
        del.extend_from_slice(&7u32.to_be_bytes());
        del.push(b'K');
        tuple(&mut del, &[Some("c"), None, Some("9")]);
        d.message(&del).unwrap();
        d.message(b"B\0\0\0\0\0\0\0\0").unwrap();
        let set = d.finish();
        let t = &set.tables["public.orders"];
        assert_eq!(t.key_columns, vec!["tenant", "id"]);
        let keys: Vec<Vec<&str>> = t
            .keys
            .iter()
            .map(|k| k.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(
            keys,
            vec![
                vec!["a", "1"],
                vec!["a", "2"],
                vec!["b", "2"],
                vec!["c", "9"]
            ]
        );
        assert!(!t.whole_table);
        assert_eq!(set.changes, 3);

        let mut d = Decoder::default();
        d.message(&relation(8, &[("id", true)])).unwrap();
        let mut tr = vec![b'T'];
        tr.extend_from_slice(&1u32.to_be_bytes());
        tr.push(0);
        tr.extend_from_slice(&8u32.to_be_bytes());
        d.message(&tr).unwrap();
        assert!(d.finish().tables["public.orders"].whole_table);
    }

    #[test]
    fn a_keyless_table_or_a_missing_key_asks_for_the_whole_table() {
        let mut d = Decoder::default();
        d.message(&relation(9, &[("a", false)])).unwrap();
        let mut ins = vec![b'I'];
        ins.extend_from_slice(&9u32.to_be_bytes());
        ins.push(b'N');
        tuple(&mut ins, &[Some("x")]);
        d.message(&ins).unwrap();
        assert!(d.finish().tables["public.orders"].whole_table);
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let mut d = Decoder::default();
        assert_eq!(
            d.message(b"I\0\0\0\x07N\0\0"),
            Err(DecodeError::UnknownRelation(7))
        );
        assert!(matches!(
            d.message(b"R\0\0"),
            Err(DecodeError::Truncated(_))
        ));
        d.message(&relation(7, &[("id", true)])).unwrap();
        let mut ins = vec![b'I'];
        ins.extend_from_slice(&7u32.to_be_bytes());
        ins.push(b'N');
        ins.extend_from_slice(&1u16.to_be_bytes());
        ins.push(b'b');
        assert_eq!(d.message(&ins), Err(DecodeError::ColumnKind('b')));
        let mut long = vec![b'I'];
        long.extend_from_slice(&7u32.to_be_bytes());
        long.push(b'N');
        long.extend_from_slice(&1u16.to_be_bytes());
        long.push(b't');
        long.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(d.message(&long), Err(DecodeError::Truncated(_))));
    }
}
