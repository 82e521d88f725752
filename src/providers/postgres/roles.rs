//! Freezing and unfreezing the application's roles in one database: `ALTER ROLE r IN DATABASE d
//! SET default_transaction_read_only = on` for new sessions, then termination of that role's
//! sessions in that database (they reconnect read-only). The admin role running the tool, the
//! replication roles and superusers are never frozen, so replication (a subscription's apply
//! worker runs as its owner) and the tool itself keep writing.
//!
//! The setting is the server's documented per-role-and-database default (`ALTER ROLE ... IN
//! DATABASE`); an application that itself issues `SET TRANSACTION READ WRITE` is not stopped by
//! it. Owns these statements; must not decide when to freeze.

use super::Server;
use super::{ident, pg};
use crate::providers::ProviderError;
use tokio_postgres::Client;

/// The login roles of the connected server that may write one of `tables` (quoted
/// `schema.table` names): every role with INSERT, UPDATE, DELETE or TRUNCATE on one of them (an
/// owner has all), except superusers, replication roles, `pg_*` roles and the connected role.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn writers(
    c: &Client,
    side: Server,
    tables: &[String],
) -> Result<Vec<String>, ProviderError> {
    let rows = c
        .query(
            "SELECT r.rolname FROM pg_roles r
             WHERE r.rolcanlogin AND NOT r.rolsuper AND NOT r.rolreplication
               AND r.rolname <> current_user AND r.rolname NOT LIKE 'pg\\_%'
               AND EXISTS (SELECT 1 FROM unnest($1::text[]) t
                           WHERE has_table_privilege(r.oid, t, 'INSERT, UPDATE, DELETE, TRUNCATE'))
             ORDER BY 1",
            &[&tables],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Of `roles`, those that exist on the connected server.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn existing(
    c: &Client,
    side: Server,
    roles: &[String],
) -> Result<Vec<String>, ProviderError> {
    let rows = c
        .query(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1",
            &[&roles],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The roles whose sessions in database `db` start read-only (`default_transaction_read_only =
/// on` set for that role in that database).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn frozen(c: &Client, side: Server, db: &str) -> Result<Vec<String>, ProviderError> {
    let rows = c
        .query(
            "SELECT r.rolname FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase
             JOIN pg_roles r ON r.oid = s.setrole
             WHERE d.datname = $1 AND 'default_transaction_read_only=on' = ANY(s.setconfig) ORDER BY 1",
            &[&db],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Freezes `roles` in `db`: new sessions start read-only, existing ones are terminated. Returns
/// the number of sessions terminated. Idempotent.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn freeze(
    c: &Client,
    side: Server,
    db: &str,
    roles: &[String],
) -> Result<u64, ProviderError> {
    if roles.is_empty() {
        return Ok(0);
    }
    c.batch_execute(&freeze_sql(db, roles))
        .await
        .map_err(|e| pg(side, e))?;
    terminate(c, side, db, roles).await
}

/// The statements that start `roles`' new sessions in `db` read-only (what [`freeze`] runs
/// before it ends their sessions; [`super::rights::try_freeze`] tries them).
pub fn freeze_sql(db: &str, roles: &[String]) -> String {
    roles
        .iter()
        .map(|r| {
            format!(
                "ALTER ROLE {} IN DATABASE {} SET default_transaction_read_only = on;",
                ident(r),
                ident(db)
            )
        })
        .collect()
}

/// Terminates the sessions of `roles` in `db`; returns how many.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn terminate(
    c: &Client,
    side: Server,
    db: &str,
    roles: &[String],
) -> Result<u64, ProviderError> {
    let rows = c
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND usename = ANY($2) AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            &[&db, &roles],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.len() as u64)
}

/// Unfreezes `roles` in `db` (`RESET default_transaction_read_only` for that role and
/// database), then terminates their sessions there: a session keeps the default it started
/// with, so one opened while the role was frozen would stay read-only until it reconnects.
/// Idempotent.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn unfreeze(
    c: &Client,
    side: Server,
    db: &str,
    roles: &[String],
) -> Result<(), ProviderError> {
    let sql: String = roles
        .iter()
        .map(|r| {
            format!(
                "ALTER ROLE {} IN DATABASE {} RESET default_transaction_read_only;",
                ident(r),
                ident(db)
            )
        })
        .collect();
    if sql.is_empty() {
        return Ok(());
    }
    c.batch_execute(&sql).await.map_err(|e| pg(side, e))?;
    terminate(c, side, db, roles).await.map(|_| ())
}
