//! A decoder of pgoutput's logical replication messages, protocol version 1 (values in text
//! format): Begin, Commit, Relation, Insert, Update, Delete, Truncate, and the Origin, Type and
//! Message messages it may interleave. Pure: bytes in, [`Message`] out.
//!
//! Format: <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.

use bytes::{Buf, Bytes};

/// One column of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL (`n`).
    Null,
    /// A TOASTed value the change did not touch (`u`): sent without its content, so the
    /// destination must keep what it has.
    Unchanged,
    /// The value in PostgreSQL's text format (`t`).
    Text(String),
}

/// A row image: one [`Value`] per column of the relation, in the relation's order.
pub type Tuple = Vec<Value>;

/// One column of a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (the key a row is found by; every column for
    /// `REPLICA IDENTITY FULL`).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// Type OID on the publisher.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

/// A Relation message: the publisher's description of a table, sent before its first change
/// on a connection and again after any change to its definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// Publisher's OID of the table.
    pub id: u32,
    /// Schema name.
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: `d` default (primary key), `n` nothing, `f` full, `i` index.
    pub replica_identity: u8,
    /// Columns, in the publisher's order.
    pub columns: Vec<Column>,
}

impl Relation {
    /// `"schema"."table"`, quoted for SQL.
    pub fn qualified(&self) -> String {
        format!(
            "{}.{}",
            super::super::ident(&self.schema),
            super::super::ident(&self.name)
        )
    }

    /// `schema.table`, for messages.
    pub fn display(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A transaction starts; `final_lsn` is its commit record's position.
    Begin {
        /// The commit record's LSN.
        final_lsn: u64,
        /// Transaction id on the publisher.
        xid: u32,
    },
    /// The transaction commits; `end_lsn` is the position just after its commit record (what
    /// a subscriber confirms).
    Commit {
        /// The commit record's LSN.
        commit_lsn: u64,
        /// The end of the commit record.
        end_lsn: u64,
    },
    /// A table's description.
    Relation(Relation),
    /// A new row.
    Insert {
        /// The table's OID.
        relation: u32,
        /// The row.
        new: Tuple,
    },
    /// A changed row: `old` is its replica identity before (present when the key changed, or
    /// every column with `REPLICA IDENTITY FULL`), `new` the row after.
    Update {
        /// The table's OID.
        relation: u32,
        /// The old key (`K`) or old row (`O`), when sent.
        old: Option<Tuple>,
        /// The new row; [`Value::Unchanged`] where a TOASTed value kept its content.
        new: Tuple,
    },
    /// A deleted row, by its old key or old row.
    Delete {
        /// The table's OID.
        relation: u32,
        /// The old key or row.
        old: Tuple,
    },
    /// TRUNCATE of one or more tables.
    Truncate {
        /// `CASCADE` was given.
        cascade: bool,
        /// `RESTART IDENTITY` was given.
        restart_identity: bool,
        /// The tables' OIDs.
        relations: Vec<u32>,
    },
    /// Origin, Type and logical decoding messages: nothing to apply.
    Other(u8),
}

/// A message this decoder cannot read: its tag and what was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pgoutput message {tag:?}: {problem}")]
pub struct DecodeError {
    /// The message's tag byte, as a character.
    pub tag: char,
    /// What was wrong.
    pub problem: String,
}

struct Reader {
    tag: u8,
    buf: Bytes,
}

impl Reader {
    fn fail(&self, problem: impl Into<String>) -> DecodeError {
        DecodeError {
            tag: self.tag as char,
            problem: problem.into(),
        }
    }
    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.remaining() < n {
            Err(self.fail(format!(
                "truncated: {} byte(s) left, {n} needed",
                self.buf.remaining()
            )))
        } else {
            Ok(())
        }
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_i32())
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn cstr(&mut self) -> Result<String, DecodeError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| self.fail("unterminated string"))?;
        let s = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 1);
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let n = self.u16()?;
        let mut t = Vec::with_capacity(n as usize);
        for _ in 0..n {
            t.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    self.need(len)?;
                    let v = self.buf.split_to(len);
                    Value::Text(
                        String::from_utf8(v.to_vec())
                            .map_err(|_| self.fail("a text value is not UTF-8"))?,
                    )
                }
                other => {
                    return Err(self.fail(format!(
                        "column kind {:?} (binary values need protocol 2; this relay asks for 1)",
                        other as char
                    )))
                }
            });
        }
        Ok(t)
    }
}

/// Decodes one pgoutput message.
///
/// # Errors
/// [`DecodeError`] for a truncated message, an unknown tuple kind or a non-UTF-8 text value.
pub fn decode(data: Bytes) -> Result<Message, DecodeError> {
    let Some(&tag) = data.first() else {
        return Err(DecodeError {
            tag: '?',
            problem: "empty message".into(),
        });
    };
    let mut r = Reader {
        tag,
        buf: data.slice(1..),
    };
    Ok(match tag {
        b'B' => {
            let final_lsn = r.u64()?;
            let _commit_time = r.u64()?;
            let xid = r.u32()?;
            Message::Begin { final_lsn, xid }
        }
        b'C' => {
            let _flags = r.u8()?;
            let commit_lsn = r.u64()?;
            let end_lsn = r.u64()?;
            Message::Commit {
                commit_lsn,
                end_lsn,
            }
        }
        b'R' => {
            let id = r.u32()?;
            let schema = r.cstr()?;
            let name = r.cstr()?;
            let replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.cstr()?;
                let type_oid = r.u32()?;
                let type_modifier = r.i32()?;
                columns.push(Column {
                    key: flags & 1 == 1,
                    name,
                    type_oid,
                    type_modifier,
                });
            }
            Message::Relation(Relation {
                id,
                schema,
                name,
                replica_identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'N' => Message::Insert {
                    relation,
                    new: r.tuple()?,
                },
                other => return Err(r.fail(format!("expected N, found {:?}", other as char))),
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut kind = r.u8()?;
            let mut old = None;
            if kind == b'K' || kind == b'O' {
                old = Some(r.tuple()?);
                kind = r.u8()?;
            }
            if kind != b'N' {
                return Err(r.fail(format!("expected N, found {:?}", kind as char)));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            match r.u8()? {
                b'K' | b'O' => Message::Delete {
                    relation,
                    old: r.tuple()?,
                },
                other => return Err(r.fail(format!("expected K or O, found {:?}", other as char))),
            }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let mut relations = Vec::with_capacity(n as usize);
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                cascade: options & 1 == 1,
                restart_identity: options & 2 == 2,
                relations,
            }
        }
        b'O' | b'Y' | b'M' => Message::Other(tag),
        other => {
            return Err(DecodeError {
                tag: other as char,
                problem: "unknown message (streamed or two-phase messages need protocol 2 or later; this relay asks for 1)".into(),
            })
        }
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    /// Encoders for the tests (here and in `apply`): the publisher's side of the format.
    pub(crate) fn tuple(b: &mut BytesMut, values: &[Value]) {
        b.put_u16(values.len() as u16);
        for v in values {
            match v {
                Value::Null => b.put_u8(b'n'),
                Value::Unchanged => b.put_u8(b'u'),
                Value::Text(t) => {
                    b.put_u8(b't');
                    b.put_u32(t.len() as u32);
                    b.put_slice(t.as_bytes());
                }
            }
        }
    }

    pub(crate) fn relation(r: &Relation) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'R');
        b.put_u32(r.id);
        b.put_slice(r.schema.as_bytes());
        b.put_u8(0);
        b.put_slice(r.name.as_bytes());
        b.put_u8(0);
        b.put_u8(r.replica_identity);
        b.put_u16(r.columns.len() as u16);
        for c in &r.columns {
            b.put_u8(u8::from(c.key));
            b.put_slice(c.name.as_bytes());
            b.put_u8(0);
            b.put_u32(c.type_oid);
            b.put_i32(c.type_modifier);
        }
        b.freeze()
    }

    pub(crate) fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    #[test]
    fn begin_and_commit_carry_their_positions() {
        let mut b = BytesMut::new();
        b.put_u8(b'B');
        b.put_u64(0x1_0000_0010);
        b.put_u64(777);
        b.put_u32(42);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Begin {
                final_lsn: 0x1_0000_0010,
                xid: 42
            }
        );
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_u8(0);
        b.put_u64(100);
        b.put_u64(160);
        b.put_u64(777);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Commit {
                commit_lsn: 100,
                end_lsn: 160
            }
        );
    }

    #[test]
    fn a_relation_round_trips_with_its_key_flags() {
        let r = Relation {
            id: 16384,
            schema: "public".into(),
            name: "orders".into(),
            replica_identity: b'd',
            columns: vec![
                Column {
                    key: true,
                    name: "id".into(),
                    type_oid: 20,
                    type_modifier: -1,
                },
                Column {
                    key: false,
                    name: "note".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
        };
        assert_eq!(decode(relation(&r)).unwrap(), Message::Relation(r.clone()));
        assert_eq!(r.qualified(), "\"public\".\"orders\"");
    }

    #[test]
    fn an_update_keeps_unchanged_toast_and_its_old_key() {
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(7);
        b.put_u8(b'K');
        tuple(&mut b, &[text("1"), Value::Null]);
        b.put_u8(b'N');
        tuple(&mut b, &[text("2"), Value::Unchanged]);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Update {
                relation: 7,
                old: Some(vec![text("1"), Value::Null]),
                new: vec![text("2"), Value::Unchanged],
            }
        );
        // Without an old key (the key did not change).
        let mut b = BytesMut::new();
        b.put_u8(b'U');
        b.put_u32(7);
        b.put_u8(b'N');
        tuple(&mut b, &[text("2"), text("x")]);
        assert!(matches!(
            decode(b.freeze()).unwrap(),
            Message::Update { old: None, .. }
        ));
    }

    #[test]
    fn truncate_reads_its_options_and_relations() {
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_u32(2);
        b.put_u8(3);
        b.put_u32(7);
        b.put_u32(8);
        assert_eq!(
            decode(b.freeze()).unwrap(),
            Message::Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![7, 8]
            }
        );
    }

    #[test]
    fn truncated_and_unknown_messages_are_errors_not_panics() {
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(7);
        b.put_u8(b'N');
        b.put_u16(1);
        b.put_u8(b't');
        b.put_u32(10);
        b.put_slice(b"abc");
        let e = decode(b.freeze()).unwrap_err();
        assert!(e.problem.starts_with("truncated"), "{e}");
        assert_eq!(decode(Bytes::from_static(b"S")).unwrap_err().tag, 'S');
        assert_eq!(decode(Bytes::new()).unwrap_err().tag, '?');
        // Binary values are refused by name.
        let mut b = BytesMut::new();
        b.put_u8(b'I');
        b.put_u32(7);
        b.put_u8(b'N');
        b.put_u16(1);
        b.put_u8(b'b');
        assert!(decode(b.freeze()).unwrap_err().problem.contains("binary"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_or_fail_without_panicking(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = decode(Bytes::from(data));
        }
    }
}
