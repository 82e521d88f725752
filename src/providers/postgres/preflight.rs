//! Preflight of a logical-replication copy: every reason it could not work, found at once and
//! before anything is created on either side.
//!
//! Owns the read-only checks; must not create, alter or drop anything.

use super::catalog::{self, Identity, Table};
use super::pg;
use crate::providers::ProviderError;
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// What the preflight needs to know besides the two databases.
#[derive(Debug, Clone)]
pub struct Needs {
    /// Replication slots the copy will create on the source (one per subscription).
    pub slots: i64,
    /// WAL senders it will use at once on the source (the snapshot holder and the subscription).
    pub senders: i64,
    /// A transaction open longer than this on the source is a problem (slot creation waits for
    /// it), seconds.
    pub max_transaction_age_secs: i64,
    /// A copy of this run is already under way: the target's tables may hold rows.
    pub resuming: bool,
    /// Major version of the local `pg_dump`, which must be at least the source's.
    pub pg_dump_major: Option<i32>,
    /// The target's tables may hold rows: the step empties them first (a non-production
    /// rehearsal run again).
    pub reset: bool,
    /// The target must publish too (`wal_level = logical`): the fallback replication from the
    /// flip needs it.
    pub target_logical: bool,
}

/// What the checks found.
#[derive(Debug, Clone)]
pub struct Report {
    /// One sentence per problem, each naming the object (table, setting, session).
    pub problems: Vec<String>,
    /// The source's tables.
    pub source_tables: Vec<Table>,
    /// The target's tables (empty before the schema is copied).
    pub target_tables: Vec<Table>,
}

async fn setting(c: &Client, side: &str, name: &str) -> Result<String, ProviderError> {
    Ok(c.query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(|e| pg(side, e))?
        .get(0))
}

async fn count(c: &Client, side: &str, sql: &str) -> Result<i64, ProviderError> {
    Ok(c.query_one(sql, &[]).await.map_err(|e| pg(side, e))?.get(0))
}

/// Runs every check on `source` and `target` and returns all problems found.
///
/// Checks, from pgcopydb's and AWS DMS's prerequisites: `wal_level = logical`; free replication
/// slots and WAL senders; a replication privilege; every table has a primary key or a replica
/// identity index (offenders named); the target holds no rows in those tables and, where it
/// already has them, the same columns and types; every source extension is available on the
/// target; the target's major version is at least the source's and `pg_dump` is at least the
/// source's; no transaction on the source is older than the limit; every role the source's
/// objects name (owners, grantees, default privileges) exists on the target and the target's
/// connecting role can act as it.
///
/// # Errors
/// [`ProviderError::Postgres`] when a catalog query fails (a problem is not an error).
pub async fn check(
    source: &Client,
    target: &Client,
    needs: &Needs,
) -> Result<Report, ProviderError> {
    let mut problems = Vec::new();
    let wal_level = setting(source, "source", "wal_level").await?;
    if wal_level != "logical" {
        problems.push(format!(
            "source: wal_level is {wal_level}; logical replication needs wal_level = logical (restart required)"
        ));
    }
    for (name, in_use, needed) in [
        (
            "max_replication_slots",
            "SELECT count(*) FROM pg_replication_slots",
            needs.slots,
        ),
        (
            "max_wal_senders",
            "SELECT count(*) FROM pg_stat_replication",
            needs.senders,
        ),
    ] {
        let max: i64 = setting(source, "source", name).await?.parse().unwrap_or(0);
        let free = max - count(source, "source", in_use).await?;
        if free < needed {
            problems.push(format!(
                "source: {free} of {name} = {max} free, {needed} needed"
            ));
        }
    }
    let can_replicate = count(
        source,
        "source",
        "SELECT count(*) FROM pg_roles WHERE rolname = current_user AND (rolreplication OR rolsuper)",
    )
    .await?;
    if can_replicate == 0 {
        problems.push("source: the connecting role has neither REPLICATION nor superuser (on RDS: rds_replication)".into());
    }
    if needs.target_logical {
        let level = setting(target, "target", "wal_level").await?;
        if level != "logical" {
            problems.push(format!(
                "target: wal_level is {level}; the fallback replication from the flip (postgres.fallback) needs logical (on RDS: the parameter rds.logical_replication = 1); or set fallback: false on this step and replication: false on postgres.fallback"
            ));
        }
    }
    let workers: i64 = setting(target, "target", "max_logical_replication_workers")
        .await?
        .parse()
        .unwrap_or(0);
    if workers < 1 {
        problems.push(
            "target: max_logical_replication_workers is 0; a subscription needs at least 1".into(),
        );
    }

    let source_tables = catalog::tables(source, "source").await?;
    for t in &source_tables {
        match t.identity {
            Identity::PrimaryKey | Identity::Index => {}
            Identity::Full => problems.push(format!(
                "source: table {} has REPLICA IDENTITY FULL and no primary key: add a primary key (rows need a key to be copied in ranges and verified)",
                t.display
            )),
            Identity::Missing => problems.push(format!(
                "source: table {} has no primary key and no replica identity index: UPDATE and DELETE cannot be replicated; add a primary key or REPLICA IDENTITY USING INDEX",
                t.display
            )),
        }
    }

    let target_tables = catalog::tables(target, "target").await?;
    let by_name: BTreeMap<&str, &Table> =
        target_tables.iter().map(|t| (t.name.as_str(), t)).collect();
    if !target_tables.is_empty() {
        for t in &source_tables {
            match by_name.get(t.name.as_str()) {
                None => problems.push(format!(
                    "target: table {} is missing while the target already has tables; the schema is copied only into an empty target",
                    t.display
                )),
                Some(tt) if tt.column_defs != t.column_defs => problems.push(format!(
                    "target: table {} has columns ({}) where the source has ({})",
                    t.display,
                    tt.column_defs.join(", "),
                    t.column_defs.join(", ")
                )),
                _ => {}
            }
        }
        if !needs.resuming && !needs.reset {
            for t in &target_tables {
                let rows = count(
                    target,
                    "target",
                    &format!("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT 1) x", t.name),
                )
                .await?;
                if rows > 0 {
                    problems.push(format!(
                        "target: table {} already holds rows; the copy needs empty tables (a target that is live must not be overwritten; to rehearse again on a non-production environment: `cutover rollback RUN_ID` of the earlier run returns the application to the legacy database, then postgres.replicate with reset_target empties the target's copy)",
                        t.display
                    ));
                }
            }
        }
    }

    let missing_ext = target
        .query("SELECT name FROM pg_available_extensions", &[])
        .await
        .map_err(|e| pg("target", e))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<std::collections::BTreeSet<_>>();
    for r in source
        .query(
            "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg("source", e))?
    {
        let (name, version): (String, String) = (r.get(0), r.get(1));
        if !missing_ext.contains(&name) {
            problems.push(format!(
                "target: extension {name} (version {version} on the source) is not available"
            ));
        }
    }

    // Ownership and privileges are copied by role name: every role the source's objects name
    // must exist on the target, and the target's connecting role must be able to act as it.
    let roles = super::ownership::referenced_roles(source, "source").await?;
    let (missing, not_member) = super::ownership::unusable_roles(target, "target", &roles).await?;
    for r in missing {
        problems.push(format!(
            "target: role {r} owns or holds privileges on objects of the source database but does not exist on the target; create it (CREATE ROLE {r} ...) so owners and grants are kept"
        ));
    }
    for r in not_member {
        problems.push(format!(
            "target: the connecting role is not a superuser and not a member of role {r}, so it cannot make {r} the owner of what {r} owns on the source; GRANT {r} TO the connecting role (on RDS the master user is not a superuser)"
        ));
    }

    let src_major = catalog::major_version(source, "source").await?;
    let tgt_major = catalog::major_version(target, "target").await?;
    if tgt_major < src_major {
        problems.push(format!(
            "target: PostgreSQL {tgt_major} is older than the source's {src_major}; migrate to the same or a newer major version"
        ));
    }
    if let Some(d) = needs.pg_dump_major {
        if d < src_major {
            problems.push(format!(
                "pg_dump {d} is older than the source's PostgreSQL {src_major}; install pg_dump {src_major} or newer"
            ));
        }
    }

    for r in source
        .query(
            "SELECT pid, usename, coalesce(application_name, ''), extract(epoch FROM now() - xact_start)::bigint \
             FROM pg_stat_activity WHERE xact_start < now() - make_interval(secs => $1::bigint) \
               AND pid <> pg_backend_pid() AND backend_type = 'client backend' ORDER BY xact_start",
            &[&needs.max_transaction_age_secs],
        )
        .await
        .map_err(|e| pg("source", e))?
    {
        let (pid, user, app, age): (i32, Option<String>, String, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        problems.push(format!(
            "source: transaction of pid {pid} (user {}, application {app:?}) open for {age} s, longer than {} s; creating the replication slot would wait for it",
            user.unwrap_or_default(),
            needs.max_transaction_age_secs
        ));
    }

    Ok(Report {
        problems,
        source_tables,
        target_tables,
    })
}

/// Major version of a `pg_dump` binary (`pg_dump (PostgreSQL) 15.8` → 15); `None` when it cannot
/// be run.
pub async fn pg_dump_major(bin: &str) -> Option<i32> {
    let out = tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .last()?
        .split('.')
        .next()?
        .parse()
        .ok()
}
