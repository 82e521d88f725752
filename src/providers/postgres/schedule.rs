//! The order of the initial copy's work, as a pure state machine the copy's workers ask what to
//! do next and tell what ended: a table's post-data builds as soon as its last chunk commits,
//! then chunks (largest table first), each table's `ANALYZE` once its rows and builds are in,
//! and the finish transaction when nothing else runs.
//!
//! Owns the ordering rules; must not run anything (no I/O).

use super::catalog::Table;
use super::copy::Chunk;
use super::postdata::{Item, Stage};
use std::collections::{HashMap, VecDeque};

/// One unit of the copy's work.
#[derive(Debug, Clone)]
pub(super) enum Task {
    /// A chunk to copy.
    Chunk(Chunk),
    /// A post-data item to apply.
    Item(Item),
    /// Every finish item, in one transaction.
    Finish(Vec<Item>),
}

/// What a worker should do next.
#[derive(Debug)]
pub(super) enum Next {
    /// Run this task.
    Run(Task),
    /// Nothing is ready but something runs: wait for it.
    Wait,
    /// Nothing is left.
    Done,
}

/// The order of the copy's work (pure; the workers ask it what to do and tell it what ended):
/// a table's build items as soon as its last chunk is in, then chunks (largest table first, so
/// its index builds overlap the smaller tables' copies), then each table's `ANALYZE` once its
/// rows and builds are in, and the finish transaction when everything else has ended.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    chunks: VecDeque<Chunk>,
    /// Per table: chunks not yet committed (queued or running).
    chunks_left: HashMap<String, usize>,
    builds: Vec<Item>,
    /// Per table: build items not yet committed.
    builds_left: HashMap<String, usize>,
    analyzes: Vec<Item>,
    finish: Vec<Item>,
    running: usize,
    pub(super) failed: bool,
}

impl Schedule {
    pub(super) fn new(mut chunks: Vec<Chunk>, tables: &[Table], items: Vec<Item>) -> Schedule {
        let bytes = |name: &str| {
            tables
                .iter()
                .find(|t| t.name == name)
                .map_or(0, |t| t.bytes)
        };
        chunks.sort_by(|a, b| {
            bytes(&b.table)
                .cmp(&bytes(&a.table))
                .then_with(|| a.table.cmp(&b.table))
                .then_with(|| a.index.cmp(&b.index))
        });
        let mut s = Schedule::default();
        for c in &chunks {
            *s.chunks_left.entry(c.table.clone()).or_default() += 1;
        }
        s.chunks = chunks.into();
        for i in items {
            match i.stage {
                Stage::Build => {
                    if let Some(t) = &i.table {
                        *s.builds_left.entry(t.clone()).or_default() += 1;
                    }
                    s.builds.push(i);
                }
                Stage::Analyze => s.analyzes.push(i),
                Stage::Finish => s.finish.push(i),
                Stage::Validate => {}
            }
        }
        s
    }

    fn rows_in(&self, table: &Option<String>) -> bool {
        table
            .as_ref()
            .map_or(true, |t| self.chunks_left.get(t).copied().unwrap_or(0) == 0)
    }

    pub(super) fn next(&mut self) -> Next {
        if self.failed {
            return Next::Done;
        }
        let task = if let Some(at) = self.builds.iter().position(|i| self.rows_in(&i.table)) {
            Some(Task::Item(self.builds.remove(at)))
        } else if let Some(c) = self.chunks.pop_front() {
            Some(Task::Chunk(c))
        } else if let Some(at) = self.analyzes.iter().position(|i| {
            self.rows_in(&i.table)
                && i.table
                    .as_ref()
                    .map_or(true, |t| self.builds_left.get(t).copied().unwrap_or(0) == 0)
        }) {
            Some(Task::Item(self.analyzes.remove(at)))
        } else if self.builds.is_empty()
            && self.analyzes.is_empty()
            && self.running == 0
            && !self.finish.is_empty()
        {
            Some(Task::Finish(std::mem::take(&mut self.finish)))
        } else {
            None
        };
        match task {
            Some(t) => {
                self.running += 1;
                Next::Run(t)
            }
            None if self.running == 0 && self.builds.is_empty() && self.analyzes.is_empty() => {
                Next::Done
            }
            None => Next::Wait,
        }
    }

    pub(super) fn ended(&mut self, task: &Task) {
        self.running = self.running.saturating_sub(1);
        let dec = |m: &mut HashMap<String, usize>, t: &str| {
            if let Some(n) = m.get_mut(t) {
                *n = n.saturating_sub(1);
            }
        };
        match task {
            Task::Chunk(c) => dec(&mut self.chunks_left, &c.table),
            Task::Item(i) if i.stage == Stage::Build => {
                if let Some(t) = &i.table {
                    dec(&mut self.builds_left, t);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::postgres::catalog::KeyRange;

    fn chunk(table: &str, index: i32) -> Chunk {
        Chunk {
            table: table.into(),
            index,
            of: 2,
            range: KeyRange::default(),
            est_bytes: 1,
        }
    }

    fn item(id: i32, stage: Stage, table: Option<&str>) -> Item {
        Item {
            id,
            stage,
            table: table.map(str::to_string),
            label: format!("item {id}"),
            sql: String::new(),
        }
    }

    fn table(name: &str, bytes: i64) -> Table {
        Table {
            name: name.into(),
            display: name.into(),
            columns: vec![],
            column_defs: vec![],
            key: vec![],
            identity: super::super::catalog::Identity::PrimaryKey,
            bytes,
            est_rows: 0,
            column_types: vec![],
        }
    }

    fn take(s: &mut Schedule) -> Task {
        match s.next() {
            Next::Run(t) => t,
            other => panic!("expected a task, got {other:?}"),
        }
    }

    fn name(t: &Task) -> String {
        match t {
            Task::Chunk(c) => format!("{}#{}", c.table, c.index),
            Task::Item(i) => i.label.clone(),
            Task::Finish(items) => format!("finish {}", items.len()),
        }
    }

    #[test]
    fn builds_wait_for_their_tables_rows_analyze_for_builds_finish_for_everything() {
        let tables = [table("small", 10), table("big", 1000)];
        let chunks = vec![chunk("small", 0), chunk("big", 0), chunk("big", 1)];
        let items = vec![
            item(0, Stage::Build, Some("big")),
            item(1, Stage::Build, Some("small")),
            item(2, Stage::Finish, None),
            item(3, Stage::Finish, None),
            item(4, Stage::Analyze, Some("big")),
            item(5, Stage::Analyze, Some("small")),
            item(6, Stage::Validate, Some("big")),
            // A partitioned parent has no rows of its own: its index is ready at once.
            item(7, Stage::Build, Some("parent")),
        ];
        let mut s = Schedule::new(chunks, &tables, items);
        // Two workers. The parent's index first, then the largest table's chunks.
        let a = take(&mut s);
        assert_eq!(name(&a), "item 7");
        let b = take(&mut s);
        assert_eq!(name(&b), "big#0");
        s.ended(&a);
        let c = take(&mut s);
        assert_eq!(name(&c), "big#1");
        s.ended(&b);
        // big#1 still runs: big's index waits; the small table's chunk goes ahead.
        let d = take(&mut s);
        assert_eq!(name(&d), "small#0");
        assert!(matches!(s.next(), Next::Wait));
        s.ended(&c);
        // big's rows are in: its index, while small's chunk still copies.
        let e = take(&mut s);
        assert_eq!(name(&e), "item 0");
        s.ended(&d);
        let f = take(&mut s);
        assert_eq!(name(&f), "item 1");
        // Neither table's ANALYZE may start before its own index is in.
        assert!(matches!(s.next(), Next::Wait));
        s.ended(&f);
        let g = take(&mut s);
        assert_eq!(name(&g), "item 5");
        assert!(matches!(s.next(), Next::Wait));
        s.ended(&e);
        let h = take(&mut s);
        assert_eq!(name(&h), "item 4");
        // The finish waits until nothing else runs.
        assert!(matches!(s.next(), Next::Wait));
        s.ended(&g);
        assert!(matches!(s.next(), Next::Wait));
        s.ended(&h);
        let i = take(&mut s);
        assert_eq!(name(&i), "finish 2");
        assert!(matches!(s.next(), Next::Wait));
        s.ended(&i);
        // Validate items are not the copy's: nothing is left.
        assert!(matches!(s.next(), Next::Done));
    }

    #[test]
    fn a_failure_stops_handing_out_work() {
        let mut s = Schedule::new(vec![chunk("t", 0), chunk("t", 1)], &[], vec![]);
        let a = take(&mut s);
        s.ended(&a);
        s.failed = true;
        assert!(matches!(s.next(), Next::Done));
    }
}
