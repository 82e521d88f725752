//! The seam in front of the initial copy from the source to the target, as `postgres.replicate`
//! drives it: the preflight of both servers, the slot with an exported snapshot, the schema
//! and chunk plan under it, the parallel `COPY` and post-data, foreign key validation, the
//! progress schema on the target ([`super::copy`]), and the checks once replication runs.
//! [`PgInitialCopy`] implements it over the two servers' URLs; unit tests use a fake.
//!
//! Owns how each operation is done; must not decide whether to resume, restart, reset or
//! subscribe (that is the kind's). Publications, slots, subscriptions and roles go through
//! [`super::database::Database`].

use super::catalog::{Table, STATE_SCHEMA};
use super::copy::{self, Chunk, ChunkDone, Done, Options, State, Work};
use super::postdata::{self, Item};
use super::preflight::{self, Needs, Report};
use super::snapshot::{self, ExportedSlot};
use super::workers;
use super::Server;
use super::{connect, ownership, pg, ConnParts};
use crate::config::Side;
use crate::providers::ProviderError;
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;
use tokio_postgres::Client;

/// What the schema and chunk plan are made of ([`InitialCopy::prepare`]).
#[derive(Debug, Clone, Copy)]
pub struct Prepare<'a> {
    /// The run that starts the copy (recorded: a later run does not resume another's copy).
    pub run_id: &'a str,
    /// The slot and snapshot the copy reads under.
    pub slot: &'a ExportedSlot,
    /// The source's tables.
    pub tables: &'a [Table],
    /// Rows per chunk of a table with a key ([`copy::plan`]).
    pub chunk_rows: i64,
    /// Create the schema (pg_dump's pre-data section) on the target.
    pub create_schema: bool,
    /// Apply pg_dump's post-data section after the rows.
    pub post_data: bool,
    /// Add foreign keys `NOT VALID` and validate them once replication runs (else leave them
    /// `NOT VALID`).
    pub validate_foreign_keys: bool,
}

/// A subscription's state on the target: how many tables it carries, how many are still in
/// their initial synchronisation, and whether its apply worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionState {
    /// Tables in `pg_subscription_rel`.
    pub tables: i64,
    /// Of them, not yet `r` (ready) or `s` (synchronised).
    pub syncing: i64,
    /// Apply workers running (0 or 1).
    pub workers: i64,
}

/// The initial copy between the environment's two servers.
///
/// Every method fails with [`ProviderError::Postgres`] naming the side, except where it says.
#[async_trait]
pub trait InitialCopy: Send + Sync {
    /// `user@host:port/db` of `side` (no password).
    fn display(&self, side: Side) -> String;
    /// How the connection to `side` is secured (`verify-full with CA ...`).
    fn tls(&self, side: Side) -> String;
    /// Every check before anything is created ([`preflight::check`]); the routes between the
    /// servers are tried for `publication` and `fallback_publication`.
    async fn preflight(
        &self,
        needs: Needs,
        publication: &str,
        fallback_publication: &str,
    ) -> Result<Report, ProviderError>;
    /// The progress record of a copy under way on the target, `None` without one.
    async fn state(&self) -> Result<Option<State>, ProviderError>;
    /// The planned chunks and those already copied.
    async fn progress(&self) -> Result<(Vec<Chunk>, Vec<ChunkDone>), ProviderError>;
    /// Whether `snapshot` can still be imported on the source (never an error: `false`).
    async fn snapshot_alive(&self, snapshot: &str) -> bool;
    /// Of `tables` (quoted names), those that hold a row on the target.
    async fn filled(&self, tables: &[String]) -> Result<Vec<String>, ProviderError>;
    /// Drops `tables` on the target (`CASCADE`: their owned sequences with them).
    async fn drop_tables(&self, tables: &[String]) -> Result<(), ProviderError>;
    /// Throws away a copy that cannot continue: the rows it copied and its progress schema.
    async fn discard(&self) -> Result<(), ProviderError>;
    /// Creates slot `slot` on the source with an exported snapshot, held by a process that
    /// outlives this one for at most `max_hold`; waits up to `wait` for the server.
    async fn export_snapshot(
        &self,
        slot: &str,
        max_hold: Duration,
        wait: Duration,
    ) -> Result<ExportedSlot, ProviderError>;
    /// Ends the snapshot's holder. Idempotent.
    fn release_snapshot(&self);
    /// Under the snapshot: the pre-data section (when asked), the chunk plan and the post-data
    /// plan, written with the progress record in one target transaction. Returns the chunks.
    async fn prepare(&self, p: Prepare<'_>) -> Result<usize, ProviderError>;
    /// pg_dump's session settings and the post-data items not applied yet.
    async fn pending_items(&self) -> Result<(String, Vec<Item>), ProviderError>;
    /// Copies `work` under `snapshot` with `opts.jobs` workers ([`copy::run`]), `on_done`
    /// after each commit.
    async fn copy(
        &self,
        snapshot: &str,
        tables: &[Table],
        work: Work,
        opts: &Options,
        on_done: &mut (dyn FnMut(Done) + Send),
    ) -> Result<(), ProviderError>;
    /// Copies every chunk not yet copied with local `cutover copy-worker` processes claiming
    /// chunks from the plan on the target ([`workers::run_processes`]), passing their lines to
    /// `on_line`; post-data is left to [`InitialCopy::copy`].
    async fn copy_by_processes(
        &self,
        p: &workers::Processes,
        on_line: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), ProviderError>;
    /// Makes the plan claimable by workers outside the run ([`workers::prepare`]) and returns
    /// the queue's counts ([`workers::Queue`]): how an Indexed Job's copy is followed.
    async fn work_queue(&self) -> Result<workers::Queue, ProviderError>;
    /// Records that every chunk and post-data item is in (`phase = 'post-data'`).
    async fn copied(&self) -> Result<(), ProviderError>;
    /// Applies validate items `jobs` at a time ([`copy::validate`]).
    async fn validate(
        &self,
        preamble: &str,
        items: Vec<Item>,
        jobs: usize,
        on_done: &mut (dyn FnMut(Done) + Send),
    ) -> Result<(), ProviderError>;
    /// Turns autovacuum back on for the tables the copy paused it on; their names.
    async fn resume_autovacuum(&self) -> Result<Vec<String>, ProviderError>;
    /// Drops the progress schema if it exists.
    async fn drop_progress(&self) -> Result<(), ProviderError>;
    /// The target's foreign keys that are `NOT VALID` (`schema.table.constraint`).
    async fn not_valid_foreign_keys(&self) -> Result<Vec<String>, ProviderError>;
    /// Subscription `name`'s state on the target.
    async fn subscription_state(&self, name: &str) -> Result<SubscriptionState, ProviderError>;
    /// Objects compared for owners and privileges, and those that differ between the servers
    /// ([`ownership::differences`]).
    async fn privilege_differences(&self) -> Result<(usize, Vec<String>), ProviderError>;
}

/// [`InitialCopy`] over the two servers: one admin connection to each, the URLs for the
/// workers, pg_dump and the snapshot holder.
pub struct PgInitialCopy {
    source_url: String,
    target_url: String,
    sp: ConnParts,
    tp: ConnParts,
    source: Client,
    target: Client,
    hold: PathBuf,
}

impl PgInitialCopy {
    /// Connects to both servers; the snapshot's holder stops when `hold` (a file) is removed.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] or [`ProviderError::BadUrl`].
    pub async fn connect(
        source_url: String,
        target_url: String,
        hold: PathBuf,
    ) -> Result<PgInitialCopy, ProviderError> {
        let sp = ConnParts::parse(&source_url, Server::Source)?;
        let tp = ConnParts::parse(&target_url, Server::Target)?;
        let (source, target) = tokio::try_join!(
            connect(&source_url, Server::Source),
            connect(&target_url, Server::Target)
        )?;
        source
            .batch_execute("SET default_transaction_read_only = off")
            .await
            .map_err(|e| pg(Server::Source, e))?;
        Ok(PgInitialCopy {
            source_url,
            target_url,
            sp,
            tp,
            source,
            target,
            hold,
        })
    }

    fn parts(&self, side: Side) -> &ConnParts {
        match side {
            Side::Source => &self.sp,
            Side::Target => &self.tp,
        }
    }
}

#[async_trait]
impl InitialCopy for PgInitialCopy {
    fn display(&self, side: Side) -> String {
        self.parts(side).display()
    }
    fn tls(&self, side: Side) -> String {
        self.parts(side).tls.describe()
    }

    async fn preflight(
        &self,
        mut needs: Needs,
        publication: &str,
        fallback_publication: &str,
    ) -> Result<Report, ProviderError> {
        let bin = std::env::var("PG_DUMP").unwrap_or_else(|_| "pg_dump".into());
        needs.pg_dump_major = preflight::pg_dump_major(&bin).await;
        needs.routes = Some(preflight::Routes {
            source_conninfo: self.sp.conninfo(),
            source_display: self.sp.display(),
            target_conninfo: self.tp.conninfo(),
            target_display: self.tp.display(),
            publication: publication.to_string(),
            fallback_publication: fallback_publication.to_string(),
        });
        preflight::check(&self.source, &self.target, &needs).await
    }

    async fn state(&self) -> Result<Option<State>, ProviderError> {
        copy::load_state(&self.target).await
    }
    async fn progress(&self) -> Result<(Vec<Chunk>, Vec<ChunkDone>), ProviderError> {
        copy::progress(&self.target).await
    }
    async fn snapshot_alive(&self, snapshot: &str) -> bool {
        snapshot::alive(&self.source_url, snapshot).await
    }

    async fn filled(&self, tables: &[String]) -> Result<Vec<String>, ProviderError> {
        let mut out = Vec::new();
        for t in tables {
            let any = self
                .target
                .query_opt(&format!("SELECT 1 FROM {t} LIMIT 1"), &[])
                .await
                .map_err(|e| pg(Server::Target, e))?;
            if any.is_some() {
                out.push(t.clone());
            }
        }
        Ok(out)
    }
    async fn drop_tables(&self, tables: &[String]) -> Result<(), ProviderError> {
        if tables.is_empty() {
            return Ok(());
        }
        self.target
            .batch_execute(&format!("DROP TABLE {} CASCADE", tables.join(", ")))
            .await
            .map_err(|e| pg(Server::Target, e))
    }
    async fn discard(&self) -> Result<(), ProviderError> {
        let (_, done) = copy::progress(&self.target).await?;
        let mut tables: Vec<String> = done.iter().map(|d| d.chunk.table.clone()).collect();
        tables.sort();
        tables.dedup();
        let mut sql = String::from("BEGIN;\n");
        if !tables.is_empty() {
            sql.push_str(&format!("TRUNCATE {};\n", tables.join(", ")));
        }
        sql.push_str(&format!("DROP SCHEMA {STATE_SCHEMA} CASCADE;\nCOMMIT;"));
        self.target
            .batch_execute(&sql)
            .await
            .map_err(|e| pg(Server::Target, e))
    }

    async fn export_snapshot(
        &self,
        slot: &str,
        max_hold: Duration,
        wait: Duration,
    ) -> Result<ExportedSlot, ProviderError> {
        snapshot::create_slot(&self.sp, slot, &self.hold, max_hold, wait).await
    }
    fn release_snapshot(&self) {
        snapshot::release(&self.hold);
    }

    async fn prepare(&self, p: Prepare<'_>) -> Result<usize, ProviderError> {
        let snap = connect(&self.source_url, Server::Source).await?;
        snapshot::import(&snap, &p.slot.snapshot).await?;
        let chunks = copy::plan(&snap, p.tables, p.chunk_rows).await?;
        let pre = if p.create_schema {
            snapshot::dump_section(&self.sp, "pre-data", Some(&p.slot.snapshot)).await?
        } else {
            String::new()
        };
        // The post-data plan, read under the same snapshot as the schema.
        let (preamble, entries) = if p.post_data {
            postdata::parse(
                &snapshot::dump_section(&self.sp, "post-data", Some(&p.slot.snapshot)).await?,
            )
        } else {
            (String::new(), Vec::new())
        };
        let catalog = if entries.is_empty() {
            postdata::Catalog::default()
        } else {
            postdata::catalog(&snap, Server::Source).await?
        };
        let names: Vec<String> = p.tables.iter().map(|t| t.name.clone()).collect();
        let paused = copy::autovacuum_pausable(&snap, &names).await?;
        let (mut items, _) = postdata::plan(&entries, &catalog, &names, p.validate_foreign_keys);
        postdata::resume_autovacuum(&mut items, &paused);
        // Schema and progress appear together or not at all.
        self.target
            .batch_execute(&format!(
                "BEGIN;\n{pre};\n{}COMMIT;",
                copy::state_sql(
                    p.run_id,
                    p.slot,
                    &chunks,
                    p.post_data,
                    &preamble,
                    &items,
                    &paused
                )
            ))
            .await
            .map_err(|e| pg(Server::Target, e))?;
        Ok(chunks.len())
    }
    async fn pending_items(&self) -> Result<(String, Vec<Item>), ProviderError> {
        copy::pending_items(&self.target).await
    }
    async fn copy(
        &self,
        snapshot: &str,
        tables: &[Table],
        work: Work,
        opts: &Options,
        on_done: &mut (dyn FnMut(Done) + Send),
    ) -> Result<(), ProviderError> {
        copy::run(
            &self.source_url,
            &self.target_url,
            snapshot,
            tables,
            work,
            opts,
            on_done,
        )
        .await
    }
    async fn copy_by_processes(
        &self,
        p: &workers::Processes,
        on_line: &mut (dyn FnMut(String) + Send),
    ) -> Result<(), ProviderError> {
        workers::prepare(&self.target).await?;
        workers::run_processes(&self.source_url, &self.target_url, p, on_line).await?;
        let q = workers::queue(&self.target).await?;
        if q.left > 0 {
            return Err(ProviderError::Worker(format!(
                "the workers ended with {} of {} chunks not copied",
                q.left, q.chunks
            )));
        }
        Ok(())
    }
    async fn work_queue(&self) -> Result<workers::Queue, ProviderError> {
        workers::prepare(&self.target).await?;
        workers::queue(&self.target).await
    }
    async fn copied(&self) -> Result<(), ProviderError> {
        self.target
            .batch_execute("UPDATE cutover_copy.run SET phase = 'post-data'")
            .await
            .map_err(|e| pg(Server::Target, e))
    }
    async fn validate(
        &self,
        preamble: &str,
        items: Vec<Item>,
        jobs: usize,
        on_done: &mut (dyn FnMut(Done) + Send),
    ) -> Result<(), ProviderError> {
        copy::validate(&self.target_url, preamble, items, jobs, on_done).await
    }
    async fn resume_autovacuum(&self) -> Result<Vec<String>, ProviderError> {
        copy::resume_autovacuum(&self.target).await
    }
    async fn drop_progress(&self) -> Result<(), ProviderError> {
        self.target
            .batch_execute(&format!("DROP SCHEMA IF EXISTS {STATE_SCHEMA} CASCADE"))
            .await
            .map_err(|e| pg(Server::Target, e))
    }

    async fn not_valid_foreign_keys(&self) -> Result<Vec<String>, ProviderError> {
        let rows = self
            .target
            .query(
                "SELECT format('%I.%I.%I', n.nspname, t.relname, c.conname) FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace WHERE c.contype = 'f' AND NOT c.convalidated ORDER BY 1",
                &[],
            )
            .await
            .map_err(|e| pg(Server::Target, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
    async fn subscription_state(&self, name: &str) -> Result<SubscriptionState, ProviderError> {
        let row = self
            .target
            .query_one(
                "SELECT count(*), count(*) FILTER (WHERE r.srsubstate NOT IN ('r','s')), \
                        (SELECT count(*) FROM pg_stat_subscription st JOIN pg_subscription s2 ON s2.oid = st.subid WHERE s2.subname = $1 AND st.pid IS NOT NULL) \
                 FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
                &[&name],
            )
            .await
            .map_err(|e| pg(Server::Target, e))?;
        Ok(SubscriptionState {
            tables: row.get(0),
            syncing: row.get(1),
            workers: row.get(2),
        })
    }
    async fn privilege_differences(&self) -> Result<(usize, Vec<String>), ProviderError> {
        let on_source = ownership::privileges(&self.source, Server::Source).await?;
        let on_target = ownership::privileges(&self.target, Server::Target).await?;
        Ok((
            on_source.len(),
            ownership::differences(&on_source, &on_target),
        ))
    }
}
