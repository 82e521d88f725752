//! `postgres.freeze_writes`: stops writes on the legacy source so the target can catch up to a
//! final LSN: `ALTER DATABASE ... SET default_transaction_read_only = on` for new sessions, then
//! termination of the database's existing client sessions (they reconnect read-only). Replication
//! (walsender) sessions are not touched.
//!
//! A postpone flag (`postpone_flag`, a file path relative to the project root, as gh-ost's
//! `--postpone-cut-over-flag-file`) holds the run at the last safe point before the freeze:
//! while the file exists nothing is frozen and replication keeps the target current; removing it
//! lets the freeze proceed. The wait does not count against the step's timeout.
//!
//! Rollback resets the setting to what it was before the run.

use super::{parse_params, Change, ParamSpec, Planned, Restored, StepContext, StepError, StepKind};
use crate::providers::postgres::{ident, pg};
use async_trait::async_trait;
use serde_json::{json, Map, Value};

/// The `postgres.freeze_writes` kind.
pub struct FreezeWrites;

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    postpone_flag: Option<String>,
}

const PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "postpone_flag",
    required: false,
    doc: "a file (relative to the project root) whose existence holds the run before the freeze until it is removed",
}];

/// Waits while the postpone flag exists; returns how long the run was held, in seconds.
async fn hold_while_postponed(cx: &StepContext<'_>, flag: &std::path::Path) -> f64 {
    let started = std::time::Instant::now();
    let mut last = None::<std::time::Instant>;
    while flag.exists() {
        if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
            last = Some(std::time::Instant::now());
            (cx.progress)(&format!(
                "postponed before the freeze: remove {} to proceed (held {} s; replication keeps the target current)",
                flag.display(),
                started.elapsed().as_secs()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    started.elapsed().as_secs_f64()
}

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

    fn undo(&self) -> &'static str {
        "Make the legacy database writable again (default_transaction_read_only back to its old value)"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["terminated", "lsn", "postponed_seconds"]
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let db = &cx.env.database.name;
        let source = cx.providers.source().await?;
        let frozen = read_only_setting(&source, db).await?;
        let n = sessions(&source, db).await?;
        let p: Params = parse_params(&cx.params)?;
        let mut changes = Vec::new();
        if let Some(f) = &p.postpone_flag {
            let path = cx.root.join(f);
            changes.push(Change::new(
                "check",
                format!("postpone flag {f}"),
                if path.exists() {
                    "present: the run will hold here until it is removed".to_string()
                } else {
                    "absent: no hold (create it to hold the run before the freeze)".to_string()
                },
            ));
        }
        changes.extend(if frozen {
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
        });
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
        let p: Params = parse_params(&cx.params)?;
        let postponed = match &p.postpone_flag {
            Some(f) => hold_while_postponed(cx, &cx.root.join(f)).await,
            None => 0.0,
        };
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
            "postponed_seconds".into(),
            json!((postponed * 10.0).round() / 10.0),
        );
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
    ) -> Result<Vec<Restored>, StepError> {
        let db = &cx.env.database.name;
        if before.get("read_only").and_then(Value::as_bool) == Some(true) {
            // Read-only before the run: left as it was.
            return Ok(vec![]);
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
        Ok(vec![Restored::new(
            format!("database {db} on the source"),
            Some("default_transaction_read_only=on"),
            Some("default_transaction_read_only=off"),
            "default_transaction_read_only on → off: writes accepted again",
        )])
    }
}
