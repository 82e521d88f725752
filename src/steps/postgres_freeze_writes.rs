//! `postgres.freeze_writes`: stops writes on the legacy source so the target can catch up to a
//! final LSN: `ALTER DATABASE ... SET default_transaction_read_only = on` for new sessions, then
//! termination of the database's existing client sessions (they reconnect read-only). Replication
//! (walsender) sessions are not touched.
//!
//! Rollback resets the setting to what it was before the run.

use super::{Change, ParamSpec, Planned, StepContext, StepError, StepKind};
use crate::providers::postgres::{ident, pg};
use async_trait::async_trait;
use serde_json::{json, Map, Value};

/// The `postgres.freeze_writes` kind.
pub struct FreezeWrites;

async fn read_only_setting(c: &tokio_postgres::Client, db: &str) -> Result<bool, StepError> {
    let row = c
        .query_opt(
            "SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase \
             WHERE d.datname = $1 AND s.setrole = 0 AND 'default_transaction_read_only=on' = ANY(s.setconfig)",
            &[&db],
        )
        .await
        .map_err(|e| pg("source", e))?;
    Ok(row.is_some())
}

async fn sessions(c: &tokio_postgres::Client, db: &str) -> Result<i64, StepError> {
    let row = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'", &[&db])
        .await
        .map_err(|e| pg("source", e))?;
    Ok(row.get(0))
}

#[async_trait]
impl StepKind for FreezeWrites {
    fn name(&self) -> &'static str {
        "postgres.freeze_writes"
    }
    fn purpose(&self) -> &'static str {
        "Stop writes on the legacy database (read-only default, existing sessions terminated) so the target can catch up"
    }
    fn params(&self) -> &'static [ParamSpec] {
        &[]
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["terminated", "lsn"]
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let db = &cx.env.database.name;
        let source = cx.providers.source().await?;
        let frozen = read_only_setting(&source, db).await?;
        let n = sessions(&source, db).await?;
        let changes = if frozen {
            vec![Change::new(
                "none",
                format!("database {db} on source"),
                "already default_transaction_read_only = on",
            )]
        } else {
            vec![
                Change::new(
                    "update",
                    format!("database {db} on source"),
                    format!(
                        "ALTER DATABASE {} SET default_transaction_read_only = on",
                        ident(db)
                    ),
                ),
                Change::new(
                    "run",
                    format!("sessions on {db}"),
                    format!("terminate {n} client session(s) so they reconnect read-only"),
                ),
            ]
        };
        Ok(Planned {
            changes,
            before: json!({"read_only": frozen}),
            predicted: Map::new(),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let db = &cx.env.database.name;
        let source = cx.providers.source().await?;
        source
            .batch_execute(&format!(
                "ALTER DATABASE {} SET default_transaction_read_only = on",
                ident(db)
            ))
            .await
            .map_err(|e| pg("source", e))?;
        let rows = source
            .query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                &[db],
            )
            .await
            .map_err(|e| pg("source", e))?;
        let lsn: String = source
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| pg("source", e))?
            .get(0);
        let mut out = Map::new();
        out.insert("terminated".into(), json!(rows.len()));
        out.insert("lsn".into(), json!(lsn));
        out.insert(
            "summary".into(),
            json!(format!(
                "{db} read-only at LSN {lsn}; {} session(s) terminated",
                rows.len()
            )),
        );
        Ok(out)
    }

    async fn verify(
        &self,
        cx: &StepContext,
        _outputs: &Map<String, Value>,
    ) -> Result<Map<String, Value>, StepError> {
        // A fresh session must come up read-only.
        let c = crate::providers::postgres::connect(&cx.providers.source_url()?, "source").await?;
        let v: String = c
            .query_one("SHOW default_transaction_read_only", &[])
            .await
            .map_err(|e| pg("source", e))?
            .get(0);
        if v != "on" {
            return Err(StepError::Check(format!(
                "a new session on the source has default_transaction_read_only = {v}"
            )));
        }
        Ok(Map::new())
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        before: &Value,
        _outputs: Option<&Map<String, Value>>,
    ) -> Result<Vec<String>, StepError> {
        let db = &cx.env.database.name;
        if before.get("read_only").and_then(Value::as_bool) == Some(true) {
            return Ok(vec![format!(
                "database {db}: was read-only before the run; left read-only"
            )]);
        }
        let source = cx.providers.source().await?;
        if !read_only_setting(&source, db).await? {
            return Ok(vec![]);
        }
        source
            .batch_execute(&format!(
                "ALTER DATABASE {} RESET default_transaction_read_only",
                ident(db)
            ))
            .await
            .map_err(|e| pg("source", e))?;
        Ok(vec![format!("database {db} on source: default_transaction_read_only on → off (writes accepted again)")])
    }
}
