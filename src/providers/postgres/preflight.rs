//! Preflight of a logical-replication copy: every reason it could not work, found at once and
//! before anything is created on either side.
//!
//! Owns the read-only checks; must not create, alter or drop anything.

use super::catalog::{self, Identity, Table};
use super::pg;
use super::rights::{self, Finding, Outcome, Right};
use super::Server;
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
    /// How each server reaches the other, for the subscription trials; `None`: not tried.
    pub routes: Option<Routes>,
    /// The forward replication may run through the relay (`replication: auto | relay`): the
    /// target's right to subscribe to the source is then no problem when refused.
    pub forward_relay: bool,
}

/// The connections the two subscriptions will make, server to server.
#[derive(Debug, Clone)]
pub struct Routes {
    /// The source as the target's subscription connects to it (a conninfo with the password).
    pub source_conninfo: String,
    /// The source, `user@host:port/db`, for the table.
    pub source_display: String,
    /// The target as the legacy server's fallback subscription connects to it.
    pub target_conninfo: String,
    /// The target, `user@host:port/db`.
    pub target_display: String,
    /// The forward publication's name (it need not exist yet).
    pub publication: String,
    /// The fallback publication's name.
    pub fallback_publication: String,
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
    /// What each server lets the tool's role do and whether each reaches the other, in the
    /// order the run needs them ([`rights`]).
    pub rights: Vec<Finding>,
}

async fn setting(c: &Client, side: Server, name: &str) -> Result<String, ProviderError> {
    Ok(c.query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(|e| pg(side, e))?
        .get(0))
}

async fn count(c: &Client, side: Server, sql: &str) -> Result<i64, ProviderError> {
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
    let wal_level = setting(source, Server::Source, "wal_level").await?;
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
        let max: i64 = setting(source, Server::Source, name)
            .await?
            .parse()
            .unwrap_or(0);
        let free = max - count(source, Server::Source, in_use).await?;
        if free < needed {
            problems.push(format!(
                "source: {free} of {name} = {max} free, {needed} needed"
            ));
        }
    }
    if needs.target_logical {
        let level = setting(target, Server::Target, "wal_level").await?;
        if level != "logical" {
            problems.push(format!(
                "target: wal_level is {level}; the fallback replication from the flip (postgres.fallback) needs logical (on RDS: the parameter rds.logical_replication = 1); or set fallback: false on this step and replication: false on postgres.fallback"
            ));
        }
    }
    let workers: i64 = setting(target, Server::Target, "max_logical_replication_workers")
        .await?
        .parse()
        .unwrap_or(0);
    if workers < 1 {
        problems.push(
            "target: max_logical_replication_workers is 0; a subscription needs at least 1".into(),
        );
    }

    let source_tables = catalog::tables(source, Server::Source).await?;
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

    let target_tables = catalog::tables(target, Server::Target).await?;
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
                    Server::Target,
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
        .map_err(|e| pg(Server::Target, e))?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<std::collections::BTreeSet<_>>();
    for r in source
        .query(
            "SELECT extname, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg(Server::Source, e))?
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
    let roles = super::ownership::referenced_roles(source, Server::Source).await?;
    let (missing, not_member) =
        super::ownership::unusable_roles(target, Server::Target, &roles).await?;
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

    let src_major = catalog::major_version(source, Server::Source).await?;
    let tgt_major = catalog::major_version(target, Server::Target).await?;
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
        .map_err(|e| pg(Server::Source, e))?
    {
        let (pid, user, app, age): (i32, Option<String>, String, i64) = (r.get(0), r.get(1), r.get(2), r.get(3));
        problems.push(format!(
            "source: transaction of pid {pid} (user {}, application {app:?}) open for {age} s, longer than {} s; creating the replication slot would wait for it",
            user.unwrap_or_default(),
            needs.max_transaction_age_secs
        ));
    }

    let rights = survey(source, target, needs, &source_tables).await?;
    problems.extend(rights.iter().filter_map(problem));

    Ok(Report {
        problems,
        source_tables,
        target_tables,
        rights,
    })
}

/// Tries every right the run needs on both servers ([`rights`]), in the order the run uses them.
async fn survey(
    source: &Client,
    target: &Client,
    needs: &Needs,
    source_tables: &[Table],
) -> Result<Vec<Finding>, ProviderError> {
    let names: Vec<String> = source_tables.iter().map(|t| t.name.clone()).collect();
    let (src_role, tgt_role) = (
        rights::current_role(source, Server::Source).await?,
        rights::current_role(target, Server::Target).await?,
    );
    let writers = super::roles::writers(source, Server::Source, &names).await?;
    let target_writers = super::roles::existing(target, Server::Target, &writers).await?;
    let mut found = Vec::new();
    let mut add = |side: Server, role: &str, right: Right, outcome: Outcome| {
        let relay = matches!(right, Right::Subscribe { .. })
            && (side == Server::Source || needs.forward_relay);
        found.push(Finding {
            side,
            role: role.into(),
            right,
            outcome,
            relay,
        })
    };
    add(
        Server::Source,
        &src_role,
        Right::ReadTables,
        rights::can_read(source, Server::Source, &names).await?,
    );
    add(
        Server::Source,
        &src_role,
        Right::Replicate,
        rights::can_replicate(source, Server::Source).await?,
    );
    add(
        Server::Source,
        &src_role,
        Right::Publish,
        rights::try_publish(source, Server::Source, &names).await?,
    );
    add(
        Server::Source,
        &src_role,
        Right::FreezeRoles,
        rights::try_freeze(source, Server::Source, &writers).await?,
    );
    add(
        Server::Source,
        &src_role,
        Right::EndSessions,
        rights::can_end_sessions(source, Server::Source, &writers).await?,
    );
    let owners = rights::owners_by_schema(source, Server::Source).await?;
    add(
        Server::Target,
        &tgt_role,
        Right::KeepOwners,
        rights::owners_may_create(target, Server::Target, &owners).await?,
    );
    add(
        Server::Target,
        &tgt_role,
        Right::FreezeRoles,
        rights::try_freeze(target, Server::Target, &target_writers).await?,
    );
    add(
        Server::Target,
        &tgt_role,
        Right::EndSessions,
        rights::can_end_sessions(target, Server::Target, &target_writers).await?,
    );
    if let Some(r) = &needs.routes {
        add(
            Server::Target,
            &tgt_role,
            Right::Subscribe {
                publisher: r.source_display.clone(),
            },
            rights::try_subscribe(target, Server::Target, &r.source_conninfo, &r.publication)
                .await?,
        );
        if needs.target_logical {
            add(
                Server::Target,
                &tgt_role,
                Right::Replicate,
                rights::can_replicate(target, Server::Target).await?,
            );
            add(
                Server::Source,
                &src_role,
                Right::Subscribe {
                    publisher: r.target_display.clone(),
                },
                rights::try_subscribe(
                    source,
                    Server::Source,
                    &r.target_conninfo,
                    &r.fallback_publication,
                )
                .await?,
            );
        }
    }
    Ok(found)
}

/// The problem a refused right makes, with what would grant it; `None` when granted.
fn problem(f: &Finding) -> Option<String> {
    let (side, role) = (&f.side, &f.role);
    let why = match &f.outcome {
        Outcome::Granted(_) => return None,
        Outcome::Refused(why) | Outcome::Unreachable(why) => why,
    };
    Some(match (&f.right, &f.outcome, *side) {
        // Native replication is not possible in this direction: the relay stands in (the
        // steps' plans say so, and refuse where the runbook requires native).
        (Right::Subscribe { .. }, _, _) if f.relay => return None,
        (Right::Subscribe { publisher }, Outcome::Unreachable(_), _) => format!(
            "{side}: the {side} server cannot reach {publisher} ({why}); its subscription connects from the {side} server itself: open the route (security groups, the legacy host's trusted sources, a CA path that exists on that server)"
        ),
        (Right::Subscribe { .. }, _, _) => format!(
            "{side}: role {role} may not create subscriptions ({why}); on RDS the master user may (rds_superuser); PostgreSQL 16+: GRANT pg_create_subscription"
        ),
        (Right::Publish, _, _) => format!(
            "{side}: role {role} cannot publish the tables ({why}); a per-table publication needs the role to own each table or be a member of its owner: GRANT <owner> TO {role}"
        ),
        (Right::Replicate, _, _) => format!("{side}: role {role}: {why}"),
        (Right::ReadTables, _, _) => format!("{side}: role {role} cannot read every table: {why}"),
        (Right::FreezeRoles, _, _) => format!(
            "{side}: role {role} cannot freeze the application's roles ({why}); it needs CREATEROLE (PostgreSQL 16+: ADMIN OPTION on each role) or to be their owner"
        ),
        (Right::EndSessions, _, _) => format!("{side}: role {role} cannot end the application's sessions: {why}"),
        (Right::KeepOwners, _, _) => format!("{side}: role {role} cannot give the copied objects their owners: {why}"),
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
