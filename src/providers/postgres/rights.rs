//! Rights and routes: what each server lets the tool's role do, and whether each server reaches
//! the other, found by trying before anything changes.
//!
//! A managed database's admin is not a superuser (DigitalOcean's `doadmin`, the RDS master user
//! in `rds_superuser`), and what it may do differs by host and version: PostgreSQL 15 lets only
//! superusers create subscriptions, RDS lets `rds_superuser` do it too, PostgreSQL 16 adds
//! `pg_create_subscription`. Reading attributes cannot tell these apart, so the rights that
//! create something are tried: the statement the run will issue, inside a transaction that is
//! always rolled back. A subscription is tried with `connect = true`, which makes the server
//! itself open the connection the real subscription will open: the route between the servers is
//! tried with the right. Nothing a trial does outlives it (no slot is created; the subscription,
//! publication and role settings vanish with the rollback).
//!
//! Owns the trials and their findings; must not decide what a missing right means for a run
//! (the preflight and the steps do).

use super::Server;
use super::{ident, literal, pg, pg_text};
use crate::providers::ProviderError;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

/// One right or route, on one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Right {
    /// `CREATE PUBLICATION ... FOR TABLE` of the tables to move (ownership of each table).
    Publish,
    /// Logical replication slots and the walsender (`REPLICATION` or superuser).
    Replicate,
    /// `SELECT` on every table to move (the copy and the comparison read them all).
    ReadTables,
    /// `CREATE SUBSCRIPTION` here, and this server's connection to the publisher: tried.
    Subscribe {
        /// The publisher, `host:port/db`.
        publisher: String,
    },
    /// `ALTER ROLE r IN DATABASE d SET default_transaction_read_only`: the freeze of the
    /// application's roles.
    FreezeRoles,
    /// Ending the application roles' sessions (`pg_terminate_backend`: a member of the role or
    /// of `pg_signal_backend`).
    EndSessions,
    /// Giving the copied objects their source owners: PostgreSQL lets a non-superuser make a
    /// role the owner only when that role may create in the object's schema.
    KeepOwners,
}

impl Right {
    /// What the right is for, as the dry-run's table names it.
    pub fn describe(&self) -> String {
        match self {
            Right::Publish => "publish the tables (CREATE PUBLICATION ... FOR TABLE)".into(),
            Right::Replicate => "replication slots (REPLICATION)".into(),
            Right::ReadTables => "read every table (SELECT)".into(),
            Right::Subscribe { publisher } => {
                format!("subscribe, and reach the publisher {publisher} (CREATE SUBSCRIPTION)")
            }
            Right::FreezeRoles => {
                "freeze the application's roles (ALTER ROLE ... IN DATABASE ... SET)".into()
            }
            Right::EndSessions => "end the application's sessions (pg_terminate_backend)".into(),
            Right::KeepOwners => {
                "give the copied objects their owners (each owner may create in its schema)".into()
            }
        }
    }
}

/// Whether a right was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Granted; how it was established (`tried and rolled back`, `member of pg_signal_backend`).
    Granted(String),
    /// Refused, with the server's reason.
    Refused(String),
    /// This server could not reach the publisher (the right itself was granted or untested);
    /// the server's connection error.
    Unreachable(String),
}

impl Outcome {
    /// True for [`Outcome::Granted`].
    pub fn granted(&self) -> bool {
        matches!(self, Outcome::Granted(_))
    }
}

/// One row of the rights-and-routes table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Which server.
    pub side: Server,
    /// The role the tool connects as there.
    pub role: String,
    /// The right.
    pub right: Right,
    /// What the trial found.
    pub outcome: Outcome,
    /// The relay stands in where this right is missing: the legacy server's right to
    /// subscribe to the target (the fallback's `replication: auto | relay`), and the target's
    /// to subscribe to the legacy server where the runbook lets the forward replication relay.
    pub relay: bool,
}

impl Finding {
    /// `granted` / `REFUSED` / `UNREACHABLE` and the reason, for the table.
    pub fn verdict(&self) -> String {
        match &self.outcome {
            Outcome::Granted(how) => format!("granted ({how})"),
            Outcome::Refused(why) | Outcome::Unreachable(why) if self.relay => format!(
                "{}: {why} → {} runs through cutover relay ({}, replication: auto or relay)",
                if matches!(self.outcome, Outcome::Refused(_)) {
                    "REFUSED"
                } else {
                    "UNREACHABLE"
                },
                if self.side == Server::Source {
                    "the fallback"
                } else {
                    "the forward replication"
                },
                if self.side == Server::Source {
                    "postgres.fallback"
                } else {
                    "postgres.replicate"
                },
            ),
            Outcome::Refused(why) => format!("REFUSED: {why}"),
            Outcome::Unreachable(why) => format!("UNREACHABLE: {why}"),
        }
    }
}

/// The connected role's name.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn current_role(c: &Client, side: Server) -> Result<String, ProviderError> {
    Ok(c.query_one("SELECT current_user::text", &[])
        .await
        .map_err(|e| pg(side, e))?
        .get(0))
}

/// Runs `statement` inside a transaction that is rolled back whatever happens; the server's
/// error when it refused.
async fn try_rolled_back(
    c: &Client,
    side: Server,
    statement: &str,
) -> Result<Result<(), tokio_postgres::Error>, ProviderError> {
    c.batch_execute("BEGIN").await.map_err(|e| pg(side, e))?;
    let tried = c.batch_execute(statement).await;
    c.batch_execute("ROLLBACK").await.map_err(|e| pg(side, e))?;
    Ok(tried)
}

/// Tries `CREATE PUBLICATION ... FOR TABLE tables` (quoted names); rolled back.
///
/// # Errors
/// [`ProviderError::Postgres`] when the transaction itself cannot be opened or closed.
pub async fn try_publish(
    c: &Client,
    side: Server,
    tables: &[String],
) -> Result<Outcome, ProviderError> {
    if tables.is_empty() {
        return Ok(Outcome::Granted("no table to publish".into()));
    }
    let sql = format!(
        "CREATE PUBLICATION cutover_rights_trial FOR TABLE {}",
        tables.join(", ")
    );
    Ok(match try_rolled_back(c, side, &sql).await? {
        Ok(()) => Outcome::Granted(format!("tried on {} table(s), rolled back", tables.len())),
        Err(e) => Outcome::Refused(pg_text(e)),
    })
}

/// Tries `CREATE SUBSCRIPTION` to `publisher_conninfo` with `connect = true` (the server
/// connects to the publisher as the real subscription will) and no slot, disabled, inside a
/// rolled-back transaction. `publication` need not exist yet.
///
/// # Errors
/// [`ProviderError::Postgres`] when the transaction itself cannot be opened or closed.
pub async fn try_subscribe(
    c: &Client,
    side: Server,
    publisher_conninfo: &str,
    publication: &str,
) -> Result<Outcome, ProviderError> {
    // A route that does not answer must not hold the preflight for the system's TCP timeout.
    let conninfo = format!("{publisher_conninfo} connect_timeout=10");
    let sql = format!(
        "CREATE SUBSCRIPTION cutover_rights_trial CONNECTION {} PUBLICATION {} WITH (connect = true, enabled = false, create_slot = false, slot_name = NONE, copy_data = false)",
        literal(&conninfo),
        ident(publication)
    );
    Ok(match try_rolled_back(c, side, &sql).await? {
        Ok(()) => Outcome::Granted("tried with a connection to the publisher, rolled back".into()),
        Err(e) if e.code() == Some(&SqlState::CONNECTION_FAILURE) => {
            Outcome::Unreachable(pg_text(e))
        }
        Err(e) => Outcome::Refused(pg_text(e)),
    })
}

/// Tries the freeze's `ALTER ROLE r IN DATABASE current SET default_transaction_read_only = on`
/// for each of `roles`; rolled back.
///
/// # Errors
/// [`ProviderError::Postgres`] when the transaction itself cannot be opened or closed, or the
/// database's name cannot be read.
pub async fn try_freeze(
    c: &Client,
    side: Server,
    roles: &[String],
) -> Result<Outcome, ProviderError> {
    if roles.is_empty() {
        return Ok(Outcome::Granted("no application role writes here".into()));
    }
    let db: String = c
        .query_one("SELECT current_database()::text", &[])
        .await
        .map_err(|e| pg(side, e))?
        .get(0);
    let sql = super::roles::freeze_sql(&db, roles);
    Ok(match try_rolled_back(c, side, &sql).await? {
        Ok(()) => Outcome::Granted(format!("tried for {}, rolled back", roles.join(", "))),
        Err(e) => Outcome::Refused(pg_text(e)),
    })
}

/// Whether the connected role may end the sessions of each of `roles` (PostgreSQL's rule for
/// `pg_terminate_backend`: a superuser, a member of the session's role, or a member of
/// `pg_signal_backend` for a non-superuser's session).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn can_end_sessions(
    c: &Client,
    side: Server,
    roles: &[String],
) -> Result<Outcome, ProviderError> {
    let rows = c
        .query(
            "SELECT r.rolname::text,
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS su,
                    pg_has_role(current_user, r.oid, 'MEMBER') AS member,
                    pg_has_role(current_user, 'pg_signal_backend', 'MEMBER') AND NOT r.rolsuper AS signal
             FROM pg_roles r WHERE r.rolname = ANY($1) ORDER BY 1",
            &[&roles],
        )
        .await
        .map_err(|e| pg(side, e))?;
    let mut how = Vec::new();
    let mut refused = Vec::new();
    for r in &rows {
        let (name, su, member, signal): (String, bool, bool, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        match (su, member, signal) {
            (true, _, _) => how.push(format!("{name}: superuser")),
            (_, true, _) => how.push(format!("{name}: member of the role")),
            (_, _, true) => how.push(format!("{name}: member of pg_signal_backend")),
            _ => refused.push(name),
        }
    }
    Ok(if refused.is_empty() {
        Outcome::Granted(if how.is_empty() {
            "no application role writes here".into()
        } else {
            how.join("; ")
        })
    } else {
        Outcome::Refused(format!(
            "not a member of {} nor of pg_signal_backend: GRANT pg_signal_backend TO the connecting role",
            refused.join(", ")
        ))
    })
}

/// Whether the connected role may read each of `tables` (quoted names).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn can_read(
    c: &Client,
    side: Server,
    tables: &[String],
) -> Result<Outcome, ProviderError> {
    let unreadable: Vec<String> = c
        .query(
            "SELECT t FROM unnest($1::text[]) t WHERE NOT has_table_privilege(t, 'SELECT') ORDER BY 1",
            &[&tables],
        )
        .await
        .map_err(|e| pg(side, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(if unreadable.is_empty() {
        Outcome::Granted(format!("SELECT on {} table(s)", tables.len()))
    } else {
        Outcome::Refused(format!(
            "no SELECT on {}: GRANT SELECT, or GRANT the owning role TO the connecting role",
            unreadable.join(", ")
        ))
    })
}

/// The `(schema, owner)` pairs of the objects a copy brings over from the connected (source)
/// database: tables, sequences, views.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn owners_by_schema(
    c: &Client,
    side: Server,
) -> Result<Vec<(String, String)>, ProviderError> {
    Ok(c.query(
        "SELECT DISTINCT n.nspname::text, pg_get_userbyid(c.relowner)::text
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
            AND n.nspname NOT IN ('pg_catalog', 'information_schema')
            AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname NOT LIKE 'cutover\\_%'
          ORDER BY 1, 2",
        &[],
    )
    .await
    .map_err(|e| pg(side, e))?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Whether, on the connected (target) server, each `(schema, owner)` of `pairs` may be given:
/// `ALTER ... OWNER TO owner` by a non-superuser needs the owner to have CREATE on the schema.
/// A schema or role the target lacks is left to the other checks (the schema is created by the
/// copy; a missing role is its own problem).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn owners_may_create(
    c: &Client,
    side: Server,
    pairs: &[(String, String)],
) -> Result<Outcome, ProviderError> {
    let superuser: bool = c
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| pg(side, e))?
        .get(0);
    if superuser {
        return Ok(Outcome::Granted("superuser".into()));
    }
    let (schemas, owners): (Vec<String>, Vec<String>) = pairs.iter().cloned().unzip();
    let refused: Vec<String> = c
        .query(
            "SELECT format('GRANT CREATE ON SCHEMA %I TO %I', s, o)
               FROM unnest($1::text[], $2::text[]) AS p(s, o)
              WHERE EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = s)
                AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = o)
                AND NOT has_schema_privilege(o, s, 'CREATE')
              ORDER BY 1",
            &[&schemas, &owners],
        )
        .await
        .map_err(|e| pg(side, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(if refused.is_empty() {
        Outcome::Granted(format!(
            "{} owner(s) may create in their schemas",
            pairs.len()
        ))
    } else {
        Outcome::Refused(format!(
            "an owner that may not create in its schema cannot be given its objects by a role that is not a superuser: {}",
            refused.join("; ")
        ))
    })
}

/// Whether the connected role may create replication slots and stream from them.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn can_replicate(c: &Client, side: Server) -> Result<Outcome, ProviderError> {
    let row = c
        .query_one(
            "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(match (row.get::<_, bool>(0), row.get::<_, bool>(1)) {
        (true, _) => Outcome::Granted("superuser".into()),
        (_, true) => Outcome::Granted("REPLICATION".into()),
        _ => Outcome::Refused(
            "the role has neither REPLICATION nor superuser (on RDS: GRANT rds_replication; on DigitalOcean: doadmin has it)".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_say_granted_refused_or_unreachable_with_the_reason() {
        let f = |outcome| Finding {
            side: Server::Target,
            role: "shop_admin".into(),
            right: Right::Subscribe {
                publisher: "10.0.0.5:5432/shop".into(),
            },
            outcome,
            relay: false,
        };
        assert_eq!(
            f(Outcome::Granted("tried".into())).verdict(),
            "granted (tried)"
        );
        assert_eq!(
            f(Outcome::Refused(
                "must be superuser to create subscriptions".into()
            ))
            .verdict(),
            "REFUSED: must be superuser to create subscriptions"
        );
        assert!(f(Outcome::Unreachable("timeout".into()))
            .verdict()
            .starts_with("UNREACHABLE: "));
        assert!(!f(Outcome::Unreachable("x".into())).outcome.granted());
        // The legacy server's right to subscribe is the native fallback's: the relay stands in.
        let legacy = Finding {
            side: Server::Source,
            role: "doadmin".into(),
            right: Right::Subscribe {
                publisher: "shop.rds:5432/shop".into(),
            },
            outcome: Outcome::Refused("must be superuser to create subscriptions".into()),
            relay: true,
        };
        assert_eq!(
            legacy.verdict(),
            "REFUSED: must be superuser to create subscriptions → the fallback runs through cutover relay (postgres.fallback, replication: auto or relay)"
        );
        let forward = Finding {
            relay: true,
            ..f(Outcome::Unreachable("no route to host".into()))
        };
        assert_eq!(
            forward.verdict(),
            "UNREACHABLE: no route to host → the forward replication runs through cutover relay (postgres.replicate, replication: auto or relay)"
        );
        assert!(f(Outcome::Granted("x".into())).outcome.granted());
        assert!(f(Outcome::Granted("x".into()))
            .right
            .describe()
            .contains("10.0.0.5:5432/shop"));
    }
}
