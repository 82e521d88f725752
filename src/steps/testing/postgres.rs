//! A source and a target PostgreSQL server in memory behind
//! [`crate::providers::postgres::database::Database`], for unit tests of the kinds that freeze,
//! wait for, turn around and retire replication.
//!
//! What it keeps of PostgreSQL's documented behaviour: a WAL position that every write and every
//! probe advances; logical slots that record from their creation LSN and are confirmed by the
//! subscription that uses them (a subscription applies at once unless the test stalls it);
//! dropping a subscription drops its slot on the publisher; per-role read-only defaults that end
//! the role's open sessions; sequences that only a `setval` moves. Rows are kept as a hash per
//! key (`id`), enough to compare both sides, track changes by key and replicate them.

use crate::config::Side;
use crate::providers::postgres::catalog::KeyRange;
use crate::providers::postgres::catalog::{Identity, Table};
use crate::providers::postgres::changes::{ChangeSet, TableChanges};
use crate::providers::postgres::checksum::TableResult;
use crate::providers::postgres::copy::{Chunk, ChunkDone, Done, Options, State, Work};
use crate::providers::postgres::database::{Checksums, Database, Sequences, Subscription};
use crate::providers::postgres::initial_copy::{InitialCopy, Prepare, SubscriptionState};
use crate::providers::postgres::postdata::Item;
use crate::providers::postgres::preflight::{Needs, Report};
use crate::providers::postgres::snapshot::ExportedSlot;
use crate::providers::postgres::Server as PgServer;
use crate::providers::ProviderError;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A logical replication slot.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The position its consumer confirmed (`None` before the first confirmation).
    pub confirmed: Option<u64>,
    /// Row changes it holds: `(lsn, table, key, value)` (`None`: deleted).
    pub changes: Vec<Change>,
}

/// A row change a slot holds: `(lsn, table, key, value)` (`None`: deleted).
pub type Change = (u64, String, Vec<String>, Option<String>);

/// A row value by key, per table.
pub type Rows = BTreeMap<String, BTreeMap<Vec<String>, String>>;

/// One server's state; tests read and change it through [`FakePostgres::server`].
#[derive(Debug, Clone)]
pub struct Server {
    /// Database name.
    pub name: String,
    /// Major version.
    pub major: i32,
    /// Current WAL position, in bytes.
    pub lsn: u64,
    /// Quoted `schema.table` names of the ordinary tables (keyed by `id bigint`).
    pub tables: Vec<String>,
    /// Tables without a key.
    pub keyless: BTreeSet<String>,
    /// Their rows.
    pub rows: Rows,
    /// Login roles that may write the tables.
    pub writers: Vec<String>,
    /// Every role.
    pub roles: BTreeSet<String>,
    /// Roles read-only in this database.
    pub frozen: BTreeSet<String>,
    /// Open sessions per role.
    pub sessions: BTreeMap<String, u64>,
    /// Logical slots by name.
    pub slots: BTreeMap<String, Slot>,
    /// Publications by name, with their tables.
    pub publications: BTreeMap<String, Vec<String>>,
    /// Subscriptions by name (each uses the publisher's slot of the same name).
    pub subscriptions: BTreeSet<String>,
    /// Slots a relay applies on this server (its progress rows).
    pub relays: BTreeSet<String>,
    /// Relays that ended, by slot: their state and message (the rest stream).
    pub relays_ended: BTreeMap<String, (crate::providers::postgres::relay::RelayState, String)>,
    /// Why this server may not subscribe to the other (`None`: it may).
    pub subscribe_refused: Option<String>,
    /// Sequences and their last values.
    pub sequences: Sequences,
    /// Row writes the statistics count.
    pub row_writes: i64,
}

impl Server {
    fn new(name: &str) -> Server {
        Server {
            name: name.to_string(),
            major: 16,
            lsn: 0x1600_0000,
            tables: Vec::new(),
            keyless: BTreeSet::new(),
            rows: Rows::new(),
            writers: Vec::new(),
            roles: BTreeSet::new(),
            frozen: BTreeSet::new(),
            sessions: BTreeMap::new(),
            slots: BTreeMap::new(),
            publications: BTreeMap::new(),
            subscriptions: BTreeSet::new(),
            subscribe_refused: None,
            relays: BTreeSet::new(),
            relays_ended: BTreeMap::new(),
            sequences: Sequences::new(),
            row_writes: 0,
        }
    }
}

#[derive(Debug)]
struct Pair {
    source: Server,
    target: Server,
    /// While above 0, subscriptions hold what they receive and each read of a slot's position
    /// counts one down (replication catching up); [`STALLED`] never counts down.
    lag_reads: u32,
    /// Row changes received and not applied yet: `(subscriber, table, key, value)`.
    pending: Vec<(Side, String, Vec<String>, Option<String>)>,
    /// The initial copy's state.
    copy: CopyState,
}

/// The initial copy as [`InitialCopy`] keeps it: the progress record, the exported snapshot
/// (its name and the source's rows it shows) and what a test injects.
#[derive(Debug, Default)]
pub struct CopyState {
    /// The progress record and chunk plan on the target, with the chunks copied.
    pub progress: Option<(State, Vec<Chunk>, Vec<ChunkDone>)>,
    /// The exported snapshot while its holder runs.
    pub snapshot: Option<(String, Rows)>,
    /// The copy fails (a connection lost) before this many more chunks are in.
    pub fail_after: Option<usize>,
    /// What the preflight reports.
    pub problems: Vec<String>,
    /// Objects whose owners or privileges differ.
    pub privilege_differences: Vec<String>,
}

/// [`Pair::lag_reads`] of a subscription that applies nothing.
const STALLED: u32 = u32::MAX;

impl Pair {
    fn get(&mut self, side: Side) -> &mut Server {
        match side {
            Side::Source => &mut self.source,
            Side::Target => &mut self.target,
        }
    }
    /// The confirmed position of `slot` on `side`: a subscription on the other side applies
    /// everything at once unless stalled.
    fn confirmed(&mut self, side: Side, slot: &str) -> Option<Option<u64>> {
        let mut consumed = self.get(other(side)).subscriptions.contains(slot);
        if consumed && self.lag_reads != STALLED && self.lag_reads > 0 {
            self.lag_reads -= 1;
        }
        consumed &= self.lag_reads == 0;
        if consumed {
            self.apply_pending();
        }
        let server = self.get(side);
        let lsn = server.lsn;
        let s = server.slots.get_mut(slot)?;
        if consumed {
            s.confirmed = Some(lsn);
        }
        Some(s.confirmed)
    }
}

impl Pair {
    fn apply_pending(&mut self) {
        for (side, table, key, value) in std::mem::take(&mut self.pending) {
            let rows = self.get(side).rows.entry(table).or_default();
            match value {
                Some(v) => rows.insert(key, v),
                None => rows.remove(&key),
            };
        }
    }

    /// Writes a row on `side` as the application does: the WAL moves, every slot there holds
    /// the change, a subscriber on the other side receives it.
    fn write_row(&mut self, side: Side, table: &str, key: Vec<String>, value: Option<String>) {
        let subscribed = {
            let s = self.get(side);
            s.lsn += 100;
            s.row_writes += 1;
            let lsn = s.lsn;
            for slot in s.slots.values_mut() {
                slot.changes
                    .push((lsn, table.to_string(), key.clone(), value.clone()));
            }
            let rows = s.rows.entry(table.to_string()).or_default();
            match &value {
                Some(v) => rows.insert(key.clone(), v.clone()),
                None => rows.remove(&key),
            };
            s.slots.keys().cloned().collect::<Vec<_>>()
        };
        let to = other(side);
        if subscribed
            .iter()
            .any(|slot| self.get(to).subscriptions.contains(slot))
        {
            self.pending.push((to, table.to_string(), key, value));
            if self.lag_reads == 0 {
                self.apply_pending();
            }
        }
    }
}

/// The catalog's view of `s`'s tables: key `id bigint` unless keyless, size 100 bytes a row.
fn tables_of(s: &Server) -> Vec<Table> {
    s.tables
        .iter()
        .map(|name| {
            let keyless = s.keyless.contains(name);
            let rows = s.rows.get(name).map_or(0, |r| r.len() as i64);
            Table {
                name: name.clone(),
                display: name.clone(),
                columns: vec!["id".into(), "v".into()],
                column_defs: vec!["id bigint".into(), "v text".into()],
                key: if keyless {
                    vec![]
                } else {
                    vec![("id".into(), "bigint".into())]
                },
                identity: if keyless {
                    Identity::Full
                } else {
                    Identity::PrimaryKey
                },
                bytes: rows * 100,
                est_rows: rows,
                column_types: vec![],
            }
        })
        .collect()
}

fn other(side: Side) -> Side {
    match side {
        Side::Source => Side::Target,
        Side::Target => Side::Source,
    }
}

/// `0/16B3748` for a position.
pub fn lsn_text(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

fn parse_lsn(text: &str) -> Result<u64, ProviderError> {
    let bad = || ProviderError::Postgres {
        side: PgServer::Source,
        message: format!("invalid input syntax for type pg_lsn: \"{text}\""),
    };
    let (hi, lo) = text.split_once('/').ok_or_else(bad)?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
    Ok((hi << 32) | lo)
}

/// The two servers of one environment, sharing their state.
#[derive(Clone)]
pub struct FakePostgres {
    pair: Arc<Mutex<Pair>>,
}

impl FakePostgres {
    /// Two empty servers holding databases `source_db` and `target_db`.
    pub fn new(source_db: &str, target_db: &str) -> FakePostgres {
        FakePostgres {
            pair: Arc::new(Mutex::new(Pair {
                source: Server::new(source_db),
                target: Server::new(target_db),
                lag_reads: 0,
                pending: Vec::new(),
                copy: CopyState::default(),
            })),
        }
    }

    /// Reads or changes `side`'s state.
    pub fn server<T>(&self, side: Side, f: impl FnOnce(&mut Server) -> T) -> T {
        f(self.lock().get(side))
    }

    /// Stops (true) or resumes (false) every subscription's apply.
    pub fn stall(&self, stalled: bool) {
        let mut p = self.lock();
        p.lag_reads = if stalled { STALLED } else { 0 };
        if !stalled {
            p.apply_pending();
        }
    }

    /// Subscriptions hold what they receive until their slot's position was read `reads`
    /// times (replication lagging, then catching up).
    pub fn lag(&self, reads: u32) {
        self.lock().lag_reads = reads;
    }

    /// The application sets row `id` of `table` on `side` to `value` (`None` deletes it).
    pub fn write_row(&self, side: Side, table: &str, id: i64, value: Option<&str>) {
        self.lock()
            .write_row(side, table, vec![id.to_string()], value.map(String::from));
    }

    /// Rows set directly on `side` (a copy, or a corruption), bypassing WAL and replication.
    pub fn set_rows(&self, side: Side, table: &str, rows: &[(i64, &str)]) {
        self.server(side, |s| {
            s.rows.insert(
                table.to_string(),
                rows.iter()
                    .map(|(k, v)| (vec![k.to_string()], v.to_string()))
                    .collect(),
            );
        });
    }

    /// The application writes `rows` rows on `side` (the WAL advances by 100 bytes a row).
    pub fn write(&self, side: Side, rows: i64) {
        let mut p = self.lock();
        let s = p.get(side);
        s.lsn += 100 * rows.unsigned_abs();
        s.row_writes += rows;
    }

    /// `side` behind the seam.
    pub fn database(&self, side: Side) -> Arc<dyn Database> {
        Arc::new(FakeServer {
            side,
            name: self.server(side, |s| s.name.clone()),
            pair: self.pair.clone(),
        })
    }

    /// Installs both servers, the comparison of their rows and the copy between them in
    /// `providers`.
    pub fn install(&self, providers: crate::providers::Providers) -> crate::providers::Providers {
        providers
            .with_database(Side::Source, self.database(Side::Source))
            .with_database(Side::Target, self.database(Side::Target))
            .with_checksums(Arc::new(self.clone()))
            .with_initial_copy(Arc::new(self.clone()))
    }

    /// Reads or changes the initial copy's state.
    pub fn copy_state<T>(&self, f: impl FnOnce(&mut CopyState) -> T) -> T {
        f(&mut self.lock().copy)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pair> {
        self.pair.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct FakeServer {
    side: Side,
    name: String,
    pair: Arc<Mutex<Pair>>,
}

impl FakeServer {
    fn with<T>(&self, f: impl FnOnce(&mut Pair, Side) -> T) -> T {
        f(
            &mut self.pair.lock().unwrap_or_else(|e| e.into_inner()),
            self.side,
        )
    }
    fn me<T>(&self, f: impl FnOnce(&mut Server) -> T) -> T {
        self.with(|p, side| f(p.get(side)))
    }
    fn missing(&self, what: String) -> ProviderError {
        ProviderError::Postgres {
            side: self.side.into(),
            message: what,
        }
    }
}

fn with_prefix<'a>(names: impl Iterator<Item = &'a String>, prefix: &str) -> Vec<String> {
    names.filter(|n| n.starts_with(prefix)).cloned().collect()
}

#[async_trait]
impl Database for FakeServer {
    fn side(&self) -> Side {
        self.side
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn conninfo(&self) -> String {
        format!(
            "host={} dbname={} password=fake-secret",
            self.side.as_str(),
            self.name
        )
    }

    async fn current_lsn(&self) -> Result<String, ProviderError> {
        Ok(self.me(|s| lsn_text(s.lsn)))
    }
    async fn probe(&self) {
        self.me(|s| s.lsn += 0x38);
    }
    async fn flush(&self) {}
    async fn behind(
        &self,
        slot: &str,
        goal: &str,
    ) -> Result<Option<(Option<String>, i64)>, ProviderError> {
        let goal = parse_lsn(goal)?;
        Ok(self.with(|p, side| {
            p.confirmed(side, slot).map(|c| match c {
                Some(c) => (Some(lsn_text(c)), goal as i64 - c as i64),
                None => (None, i64::MAX),
            })
        }))
    }
    async fn retained(&self) -> Result<BTreeMap<String, i64>, ProviderError> {
        Ok(self.with(|p, side| {
            let names: Vec<String> = p.get(side).slots.keys().cloned().collect();
            names
                .into_iter()
                .filter(|n| n.starts_with("cutover_"))
                .map(|n| {
                    let c = p.confirmed(side, &n).flatten().unwrap_or(0);
                    let lsn = p.get(side).lsn;
                    (n, lsn.saturating_sub(c) as i64)
                })
                .collect()
        }))
    }
    async fn slot_exists(&self, slot: &str) -> Result<bool, ProviderError> {
        Ok(self.me(|s| s.slots.contains_key(slot)))
    }
    async fn relayed_slots(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
        Ok(self.me(|s| {
            s.relays
                .iter()
                .filter(|r| r.starts_with(prefix))
                .cloned()
                .collect()
        }))
    }
    async fn relay_progress(
        &self,
        slot: &str,
    ) -> Result<Option<crate::providers::postgres::relay::Progress>, ProviderError> {
        use crate::providers::postgres::relay::{Progress, RelayState};
        Ok(self.me(|s| {
            s.relays.contains(slot).then(|| {
                let (state, message) = s
                    .relays_ended
                    .get(slot)
                    .map(|(st, m)| (*st, Some(m.clone())))
                    .unwrap_or((RelayState::Streaming, None));
                Progress {
                    lsn: "0/0".into(),
                    state,
                    message,
                    transactions: 0,
                    idle_seconds: 0.0,
                }
            })
        }))
    }
    async fn forget_relay(&self, slot: &str) -> Result<(), ProviderError> {
        self.me(|s| s.relays.remove(slot));
        Ok(())
    }
    async fn slot_active(&self, slot: &str) -> Result<bool, ProviderError> {
        // The fake's consumers are attached from their creation.
        Ok(self.me(|s| s.slots.contains_key(slot)))
    }
    async fn create_slot(&self, slot: &str) -> Result<String, ProviderError> {
        Ok(self.with(|p, side| {
            let s = p.get(side);
            let lsn = s.lsn;
            let slot = s.slots.entry(slot.to_string()).or_insert(Slot {
                confirmed: Some(lsn),
                changes: Vec::new(),
            });
            lsn_text(slot.confirmed.unwrap_or(lsn))
        }))
    }
    async fn drop_slot(&self, slot: &str) -> Result<bool, ProviderError> {
        self.with(|p, side| {
            if p.get(other(side)).subscriptions.contains(slot) {
                return Err(ProviderError::Postgres {
                    side: side.into(),
                    message: format!("replication slot \"{slot}\" is active"),
                });
            }
            Ok(p.get(side).slots.remove(slot).is_some())
        })
    }

    async fn publications(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
        Ok(self.me(|s| with_prefix(s.publications.keys(), prefix)))
    }
    async fn publication_tables(&self, name: &str) -> Result<Vec<String>, ProviderError> {
        Ok(self.me(|s| s.publications.get(name).cloned().unwrap_or_default()))
    }
    async fn create_publication(&self, name: &str, tables: &[String]) -> Result<(), ProviderError> {
        self.me(|s| {
            s.publications
                .entry(name.to_string())
                .or_insert_with(|| tables.to_vec());
        });
        Ok(())
    }
    async fn drop_publication(&self, name: &str) -> Result<bool, ProviderError> {
        Ok(self.me(|s| s.publications.remove(name).is_some()))
    }

    async fn subscriptions(&self, prefix: &str) -> Result<Vec<String>, ProviderError> {
        Ok(self.me(|s| with_prefix(s.subscriptions.iter(), prefix)))
    }
    async fn subscription_running(&self, name: &str) -> Result<bool, ProviderError> {
        Ok(self.with(|p, side| p.lag_reads != STALLED && p.get(side).subscriptions.contains(name)))
    }
    async fn may_subscribe(
        &self,
        _publisher: &dyn Database,
        _publication: &str,
    ) -> Result<crate::providers::postgres::rights::Outcome, ProviderError> {
        use crate::providers::postgres::rights::Outcome;
        Ok(self.with(|p, side| match &p.get(side).subscribe_refused {
            None => Outcome::Granted("tried, rolled back".into()),
            Some(why) => Outcome::Refused(why.clone()),
        }))
    }
    async fn subscribe(
        &self,
        sub: &Subscription,
        publisher: &dyn Database,
    ) -> Result<(), ProviderError> {
        if publisher.side() == self.side {
            return Err(self.missing("a server does not subscribe to itself".into()));
        }
        self.with(|p, side| {
            let publ = p.get(other(side));
            if !publ.publications.contains_key(&sub.publication) {
                return Err(ProviderError::Postgres {
                    side: side.into(),
                    message: format!("publication \"{}\" does not exist", sub.publication),
                });
            }
            let Some(slot) = publ.slots.get(&sub.name) else {
                return Err(ProviderError::Postgres {
                    side: side.into(),
                    message: format!("replication slot \"{}\" does not exist", sub.name),
                });
            };
            // The subscription receives what the slot holds from its confirmed position on.
            let from = slot.confirmed.unwrap_or(0);
            let held: Vec<_> = slot
                .changes
                .iter()
                .filter(|(at, ..)| *at > from)
                .map(|(_, t, k, v)| (side, t.clone(), k.clone(), v.clone()))
                .collect();
            if !p.get(side).subscriptions.insert(sub.name.clone()) {
                return Err(ProviderError::Postgres {
                    side: side.into(),
                    message: format!("subscription \"{}\" already exists", sub.name),
                });
            }
            p.pending.extend(held);
            if p.lag_reads == 0 {
                p.apply_pending();
            }
            Ok(())
        })
    }
    async fn drop_subscription(&self, name: &str) -> Result<bool, ProviderError> {
        Ok(self.with(|p, side| {
            let existed = p.get(side).subscriptions.remove(name);
            if existed {
                p.get(other(side)).slots.remove(name);
            }
            existed
        }))
    }

    async fn sequences(&self) -> Result<Sequences, ProviderError> {
        Ok(self.me(|s| s.sequences.clone()))
    }
    async fn advance(&self, todo: &[(String, Option<i64>, i64)]) -> Result<(), ProviderError> {
        self.with(|p, side| {
            let s = p.get(side);
            for (name, _, goal) in todo {
                let Some(v) = s.sequences.get_mut(name) else {
                    return Err(ProviderError::Postgres {
                        side: side.into(),
                        message: format!("relation \"{name}\" does not exist"),
                    });
                };
                *v = Some(*goal);
            }
            Ok(())
        })
    }

    async fn tables(&self) -> Result<Vec<Table>, ProviderError> {
        Ok(self.me(|s| tables_of(s)))
    }
    async fn peek(&self, slot: &str, _publication: &str) -> Result<ChangeSet, ProviderError> {
        self.me(|s| {
            let keyless = s.keyless.clone();
            let Some(slot) = s.slots.get(slot) else {
                return Err(ProviderError::Postgres {
                    side: PgServer::Source,
                    message: format!("replication slot \"{slot}\" does not exist"),
                });
            };
            let mut set = ChangeSet::default();
            for (_, table, key, _) in &slot.changes {
                set.changes += 1;
                let tc = set
                    .tables
                    .entry(table.clone())
                    .or_insert_with(|| TableChanges {
                        key_columns: vec!["id".into()],
                        ..Default::default()
                    });
                if keyless.contains(table) {
                    tc.whole_table = true;
                    tc.key_columns.clear();
                } else {
                    tc.keys.insert(key.clone());
                }
            }
            Ok(set)
        })
    }
    async fn advance_slot(&self, slot: &str, lsn: &str) -> Result<(), ProviderError> {
        let to = parse_lsn(lsn)?;
        self.me(|s| {
            if let Some(slot) = s.slots.get_mut(slot) {
                slot.changes.retain(|(at, ..)| *at > to);
                slot.confirmed = Some(to);
            }
        });
        Ok(())
    }
    async fn hashes_by_key(
        &self,
        t: &Table,
        keys: &[Vec<String>],
    ) -> Result<BTreeMap<Vec<String>, String>, ProviderError> {
        Ok(self.me(|s| {
            let rows = s.rows.get(&t.name).cloned().unwrap_or_default();
            keys.iter()
                .filter_map(|k| rows.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        }))
    }
    async fn major_version(&self) -> Result<i32, ProviderError> {
        Ok(self.me(|s| s.major))
    }
    async fn row_writes(&self) -> Result<i64, ProviderError> {
        Ok(self.me(|s| s.row_writes))
    }

    async fn writers(&self, tables: &[String]) -> Result<Vec<String>, ProviderError> {
        Ok(self.me(|s| {
            if tables.iter().any(|t| s.tables.contains(t)) {
                s.writers.clone()
            } else {
                Vec::new()
            }
        }))
    }
    async fn existing_roles(&self, names: &[String]) -> Result<Vec<String>, ProviderError> {
        Ok(self.me(|s| {
            let mut found: Vec<String> = names
                .iter()
                .filter(|n| s.roles.contains(*n))
                .cloned()
                .collect();
            found.sort();
            found
        }))
    }
    async fn frozen(&self) -> Result<Vec<String>, ProviderError> {
        Ok(self.me(|s| s.frozen.iter().cloned().collect()))
    }
    async fn freeze(&self, names: &[String]) -> Result<u64, ProviderError> {
        let side = self.side;
        self.me(|s| {
            let mut ended = 0;
            for r in names {
                if !s.roles.contains(r) {
                    return Err(ProviderError::Postgres {
                        side: side.into(),
                        message: format!("role \"{r}\" does not exist"),
                    });
                }
                s.frozen.insert(r.clone());
                ended += s.sessions.insert(r.clone(), 0).unwrap_or(0);
            }
            Ok(ended)
        })
    }
    async fn unfreeze(&self, names: &[String]) -> Result<(), ProviderError> {
        self.me(|s| {
            for r in names {
                s.frozen.remove(r);
                s.sessions.insert(r.clone(), 0);
            }
        });
        Ok(())
    }
}

/// The comparison of both servers' rows, table by table (one chunk each).
#[async_trait]
impl Checksums for FakePostgres {
    async fn compare(
        &self,
        tables: &[Table],
        _jobs: usize,
        chunk_rows: Option<i64>,
        limit: usize,
        on_chunk: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<Vec<TableResult>, ProviderError> {
        let mut out = Vec::new();
        for (i, t) in tables.iter().enumerate() {
            let (a, b) = {
                let mut p = self.lock();
                (
                    p.get(Side::Source)
                        .rows
                        .get(&t.name)
                        .cloned()
                        .unwrap_or_default(),
                    p.get(Side::Target)
                        .rows
                        .get(&t.name)
                        .cloned()
                        .unwrap_or_default(),
                )
            };
            let by_key = !t.key.is_empty() && chunk_rows != Some(0);
            let mut differing: Vec<Vec<String>> = a
                .keys()
                .chain(b.keys())
                .filter(|k| a.get(*k) != b.get(*k))
                .cloned()
                .collect();
            differing.sort();
            differing.dedup();
            let differs = if by_key {
                !differing.is_empty()
            } else {
                a.len() != b.len()
            };
            if !by_key {
                differing.clear();
            }
            differing.truncate(limit);
            out.push(TableResult {
                table: t.display.clone(),
                rows: a.len() as i64,
                chunks: 1,
                target_rows: b.len() as i64,
                differing_keys: differing.iter().map(|k| format!("id={}", k[0])).collect(),
                differing,
                differs,
                settled_chunks: 0,
            });
            on_chunk(i + 1, tables.len());
        }
        Ok(out)
    }
}

/// The initial copy between the two servers: one chunk per table, copied from the rows the
/// exported snapshot shows; no post-data (the fake keeps no indexes).
#[async_trait]
impl InitialCopy for FakePostgres {
    fn display(&self, side: Side) -> String {
        format!(
            "admin@{}:5432/{}",
            side.as_str(),
            self.server(side, |s| s.name.clone())
        )
    }
    fn tls(&self, _side: Side) -> String {
        "verify-full, the test's CA".into()
    }
    async fn preflight(
        &self,
        _needs: Needs,
        _publication: &str,
        _fallback_publication: &str,
    ) -> Result<Report, ProviderError> {
        let mut p = self.lock();
        Ok(Report {
            problems: p.copy.problems.clone(),
            source_tables: tables_of(p.get(Side::Source)),
            target_tables: tables_of(p.get(Side::Target)),
            rights: vec![],
        })
    }
    async fn state(&self) -> Result<Option<State>, ProviderError> {
        Ok(self.lock().copy.progress.as_ref().map(|(s, ..)| s.clone()))
    }
    async fn progress(&self) -> Result<(Vec<Chunk>, Vec<ChunkDone>), ProviderError> {
        Ok(self
            .lock()
            .copy
            .progress
            .as_ref()
            .map(|(_, all, done)| (all.clone(), done.clone()))
            .unwrap_or_default())
    }
    async fn snapshot_alive(&self, snapshot: &str) -> bool {
        self.lock()
            .copy
            .snapshot
            .as_ref()
            .is_some_and(|(name, _)| name == snapshot)
    }
    async fn filled(&self, tables: &[String]) -> Result<Vec<String>, ProviderError> {
        Ok(self.server(Side::Target, |s| {
            tables
                .iter()
                .filter(|t| s.rows.get(*t).is_some_and(|r| !r.is_empty()))
                .cloned()
                .collect()
        }))
    }
    async fn drop_tables(&self, tables: &[String]) -> Result<(), ProviderError> {
        self.server(Side::Target, |s| {
            s.tables.retain(|t| !tables.contains(t));
            for t in tables {
                s.rows.remove(t);
            }
        });
        Ok(())
    }
    async fn discard(&self) -> Result<(), ProviderError> {
        let mut p = self.lock();
        if let Some((_, _, done)) = p.copy.progress.take() {
            for d in done {
                p.get(Side::Target).rows.remove(&d.chunk.table);
            }
        }
        Ok(())
    }
    async fn export_snapshot(
        &self,
        slot: &str,
        _max_hold: Duration,
        _wait: Duration,
    ) -> Result<ExportedSlot, ProviderError> {
        let mut p = self.lock();
        let source = p.get(Side::Source);
        if source.slots.contains_key(slot) {
            return Err(ProviderError::Postgres {
                side: PgServer::Source,
                message: format!("replication slot \"{slot}\" already exists"),
            });
        }
        let lsn = source.lsn;
        source.slots.insert(
            slot.to_string(),
            Slot {
                confirmed: Some(lsn),
                changes: Vec::new(),
            },
        );
        let name = format!("00000003-{lsn:08X}-1");
        let rows = source.rows.clone();
        p.copy.snapshot = Some((name.clone(), rows));
        Ok(ExportedSlot {
            slot: slot.to_string(),
            consistent_lsn: lsn_text(lsn),
            snapshot: name,
        })
    }
    fn release_snapshot(&self) {
        self.lock().copy.snapshot = None;
    }
    async fn prepare(&self, prep: Prepare<'_>) -> Result<usize, ProviderError> {
        let mut p = self.lock();
        if prep.create_schema {
            let (tables, keyless) = {
                let s = p.get(Side::Source);
                (s.tables.clone(), s.keyless.clone())
            };
            let t = p.get(Side::Target);
            t.tables = tables;
            t.keyless = keyless;
        }
        let chunks: Vec<Chunk> = prep
            .tables
            .iter()
            .map(|t| Chunk {
                table: t.name.clone(),
                index: 0,
                of: 1,
                range: KeyRange::default(),
                est_bytes: t.bytes,
            })
            .collect();
        let state = State {
            run_id: prep.run_id.to_string(),
            slot: prep.slot.clone(),
            phase: "copying".into(),
            post_data: prep.post_data,
        };
        let n = chunks.len();
        p.copy.progress = Some((state, chunks, Vec::new()));
        Ok(n)
    }
    async fn pending_items(&self) -> Result<(String, Vec<Item>), ProviderError> {
        Ok((String::new(), Vec::new()))
    }
    async fn copy(
        &self,
        snapshot: &str,
        _tables: &[Table],
        work: Work,
        _opts: &Options,
        on_done: &mut (dyn FnMut(Done) + Send),
    ) -> Result<(), ProviderError> {
        for chunk in work.chunks {
            let done = {
                let mut p = self.lock();
                let lost = || ProviderError::Postgres {
                    side: PgServer::Target,
                    message: "server closed the connection unexpectedly".into(),
                };
                match p.copy.fail_after {
                    Some(0) => {
                        p.copy.fail_after = None;
                        return Err(lost());
                    }
                    Some(n) => p.copy.fail_after = Some(n - 1),
                    None => {}
                }
                let Some((name, rows)) = p.copy.snapshot.clone() else {
                    return Err(ProviderError::Postgres {
                        side: PgServer::Source,
                        message: format!("invalid snapshot identifier: \"{snapshot}\""),
                    });
                };
                if name != snapshot {
                    return Err(ProviderError::Postgres {
                        side: PgServer::Source,
                        message: format!("invalid snapshot identifier: \"{snapshot}\""),
                    });
                }
                let rows = rows.get(&chunk.table).cloned().unwrap_or_default();
                let n = rows.len() as u64;
                p.get(Side::Target).rows.insert(chunk.table.clone(), rows);
                let done = ChunkDone {
                    chunk,
                    rows: n,
                    bytes: n * 100,
                };
                if let Some((_, _, copied)) = p.copy.progress.as_mut() {
                    copied.push(done.clone());
                }
                done
            };
            on_done(Done::Chunk(done));
        }
        Ok(())
    }
    async fn copy_by_processes(
        &self,
        p: &crate::providers::postgres::workers::Processes,
        on_line: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), ProviderError> {
        // The fake's workers: every chunk not yet copied, shared out in turn among `count`
        // named workers, each copied as the in-process fake copies it.
        let (snapshot, pending) = {
            let g = self.lock();
            let Some((state, chunks, copied)) = g.copy.progress.as_ref() else {
                return Ok(());
            };
            let pending: Vec<_> = chunks
                .iter()
                .filter(|c| {
                    !copied
                        .iter()
                        .any(|d| d.chunk.table == c.table && d.chunk.index == c.index)
                })
                .cloned()
                .collect();
            (state.slot.snapshot.clone(), pending)
        };
        let count = p.count.max(1);
        let mut n = 0usize;
        let mut lines = Vec::new();
        let work = Work {
            chunks: pending,
            items: Vec::new(),
            preamble: String::new(),
        };
        let opts = Options {
            same_major: true,
            jobs: 1,
            rate_limit: None,
            attempt: "fake".into(),
        };
        self.copy(&snapshot, &[], work, &opts, &mut |d| {
            if let Done::Chunk(d) = d {
                lines.push(format!(
                    "copy-worker process-{}.1: copied {} chunk {}/{} ({} rows, {} bytes)",
                    n % count,
                    d.chunk.table,
                    d.chunk.index + 1,
                    d.chunk.of,
                    d.rows,
                    d.bytes
                ));
                n += 1;
            }
        })
        .await?;
        for l in lines {
            on_line(l);
        }
        Ok(())
    }
    async fn work_queue(
        &self,
    ) -> Result<crate::providers::postgres::workers::Queue, ProviderError> {
        let g = self.lock();
        let (chunks, copied) = g
            .copy
            .progress
            .as_ref()
            .map_or((0, 0), |(_, c, d)| (c.len() as i64, d.len() as i64));
        Ok(crate::providers::postgres::workers::Queue {
            chunks,
            left: chunks - copied,
            leased: 0,
            by_worker: Vec::new(),
        })
    }
    async fn copied(&self) -> Result<(), ProviderError> {
        if let Some((state, ..)) = self.lock().copy.progress.as_mut() {
            state.phase = "post-data".into();
        }
        Ok(())
    }
    async fn validate(
        &self,
        _preamble: &str,
        _items: Vec<Item>,
        _jobs: usize,
        _on_done: &mut (dyn FnMut(Done) + Send),
    ) -> Result<(), ProviderError> {
        Ok(())
    }
    async fn resume_autovacuum(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
    async fn drop_progress(&self) -> Result<(), ProviderError> {
        self.lock().copy.progress = None;
        Ok(())
    }
    async fn not_valid_foreign_keys(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }
    async fn subscription_state(&self, name: &str) -> Result<SubscriptionState, ProviderError> {
        let mut p = self.lock();
        let running = p.lag_reads != STALLED;
        let t = p.get(Side::Target);
        Ok(if t.subscriptions.contains(name) {
            SubscriptionState {
                tables: t.tables.len() as i64,
                syncing: 0,
                workers: i64::from(running),
            }
        } else {
            SubscriptionState {
                tables: 0,
                syncing: 0,
                workers: 0,
            }
        })
    }
    async fn privilege_differences(&self) -> Result<(usize, Vec<String>), ProviderError> {
        let mut p = self.lock();
        let compared = p.get(Side::Source).tables.len();
        Ok((compared, p.copy.privilege_differences.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_read_back_as_postgres_prints_them() {
        assert_eq!(lsn_text(0x1_016B_3748), "1/16B3748");
        assert_eq!(parse_lsn("1/16B3748").unwrap(), 0x1_016B_3748);
        assert!(parse_lsn("16B3748").is_err());
    }

    #[tokio::test]
    async fn a_subscription_confirms_its_slot_and_takes_it_when_dropped() {
        let pg = FakePostgres::new("shop", "shop");
        let (source, target) = (pg.database(Side::Source), pg.database(Side::Target));
        source.create_publication("s", &[]).await.unwrap();
        let from = source.create_slot("s").await.unwrap();
        pg.write(Side::Source, 10);
        let goal = source.current_lsn().await.unwrap();
        assert_eq!(source.behind("s", &goal).await.unwrap().unwrap().1, 1000);
        target
            .subscribe(
                &Subscription {
                    publication: "s".into(),
                    name: "s".into(),
                    origin_none: true,
                },
                &*source,
            )
            .await
            .unwrap();
        assert_eq!(source.behind("s", &goal).await.unwrap().unwrap().1, 0);
        assert_ne!(from, goal);
        assert!(source.drop_slot("s").await.is_err(), "a slot in use");
        assert!(target.drop_subscription("s").await.unwrap());
        assert!(!source.slot_exists("s").await.unwrap());
    }
}
