//! `postgres.replicate`: copies the schema to the target and starts PostgreSQL logical
//! replication from the legacy source: a publication for all tables on the source, a subscription
//! on the target (which creates the replication slot and copies the existing rows), then waits
//! until every table has finished its initial copy (`pg_subscription_rel` state `r`).
//!
//! Rollback drops the subscription (and with it the replication slot, so the source does not
//! retain WAL forever) and the publication. The target's copied rows stay: the target is not live
//! before the flip.

use super::{parse_params, Change, ParamSpec, Planned, StepContext, StepError, StepKind};
use crate::providers::postgres::{ident, literal, pg, ConnParts};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The `postgres.replicate` kind.
pub struct Replicate;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    publication: Option<String>,
    #[serde(default)]
    subscription: Option<String>,
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: "publication",
        required: false,
        doc: "publication name on the source (default cutover_<database>)",
    },
    ParamSpec {
        name: "subscription",
        required: false,
        doc: "subscription (and replication slot) name on the target (default cutover_<database>)",
    },
];

/// Publication and subscription names for these parameters.
pub(super) fn names(
    cx: &StepContext,
    publication: Option<&str>,
    subscription: Option<&str>,
) -> (String, String) {
    let default = format!("cutover_{}", cx.env.database.name.replace('-', "_"));
    (
        publication.unwrap_or(&default).to_string(),
        subscription.unwrap_or(&default).to_string(),
    )
}

async fn user_tables(c: &tokio_postgres::Client, side: &str) -> Result<Vec<String>, StepError> {
    let rows = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg(side, e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn exists(
    c: &tokio_postgres::Client,
    side: &str,
    sql: &str,
    name: &str,
) -> Result<bool, StepError> {
    Ok(c.query_opt(sql, &[&name])
        .await
        .map_err(|e| pg(side, e))?
        .is_some())
}

const PUB_SQL: &str = "SELECT 1 FROM pg_publication WHERE pubname = $1";
const SUB_SQL: &str = "SELECT 1 FROM pg_subscription WHERE subname = $1 AND subdbid = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Runs `pg_dump --schema-only` against the source; the password goes through `PGPASSWORD`.
async fn dump_schema(source: &ConnParts) -> Result<String, StepError> {
    let bin = std::env::var("PG_DUMP").unwrap_or_else(|_| "pg_dump".into());
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args([
        "--schema-only",
        "--no-owner",
        "--no-privileges",
        "--no-publications",
        "--no-subscriptions",
    ])
    .args([
        "-h",
        &source.host,
        "-p",
        &source.port.to_string(),
        "-U",
        &source.user,
        "-d",
        &source.dbname,
    ])
    .env("PGCONNECT_TIMEOUT", "10")
    .kill_on_drop(true);
    if let Some(pw) = &source.password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| StepError::Check(format!("cannot run {bin}: {e}")))?;
    if !out.status.success() {
        return Err(StepError::Check(format!(
            "pg_dump --schema-only failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    // psql meta-commands (`\restrict`, `\connect`) are not SQL; the statements around them are.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n"))
}

#[async_trait]
impl StepKind for Replicate {
    fn name(&self) -> &'static str {
        "postgres.replicate"
    }
    fn purpose(&self) -> &'static str {
        "Copy the schema to the target and replicate every table from the legacy database by logical replication"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &[
            "publication",
            "subscription",
            "slot",
            "tables",
            "source",
            "target",
        ]
    }
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(3600)
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let source = cx.providers.source().await?;
        let target = cx.providers.target().await?;
        let wal_level: String = source
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| pg("source", e))?
            .get(0);
        let src_tables = user_tables(&source, "source").await?;
        let tgt_tables = user_tables(&target, "target").await?;
        let sp = ConnParts::parse(&cx.providers.source_url()?, "source")?;
        let tp = ConnParts::parse(&cx.providers.target_url()?, "target")?;
        let mut changes = Vec::new();
        if wal_level != "logical" {
            changes.push(Change::new(
                "check",
                format!("source {}", sp.display()),
                format!("WOULD FAIL: wal_level is {wal_level}, logical replication needs logical"),
            ));
        }
        if tgt_tables.is_empty() {
            changes.push(Change::new(
                "create",
                format!("schema on target {}", tp.display()),
                format!(
                    "{} tables from pg_dump --schema-only: {}",
                    src_tables.len(),
                    src_tables.join(", ")
                ),
            ));
        } else {
            changes.push(Change::new(
                "none",
                format!("schema on target {}", tp.display()),
                format!("{} tables present", tgt_tables.len()),
            ));
        }
        if exists(&source, "source", PUB_SQL, &publ).await? {
            changes.push(Change::new(
                "none",
                format!("publication {publ} on source"),
                "exists",
            ));
        } else {
            changes.push(Change::new(
                "create",
                format!("publication {publ} on source"),
                format!("CREATE PUBLICATION {} FOR ALL TABLES", ident(&publ)),
            ));
        }
        if exists(&target, "target", SUB_SQL, &sub).await? {
            changes.push(Change::new(
                "none",
                format!("subscription {sub} on target"),
                "exists",
            ));
        } else {
            changes.push(Change::new(
                "create",
                format!("subscription {sub} on target"),
                format!("CREATE SUBSCRIPTION {} CONNECTION '<source conninfo>' PUBLICATION {} WITH (copy_data = true); creates replication slot {sub} on the source", ident(&sub), ident(&publ)),
            ));
        }
        let mut predicted = Map::new();
        predicted.insert("publication".into(), json!(publ));
        predicted.insert("subscription".into(), json!(sub));
        predicted.insert("slot".into(), json!(sub));
        predicted.insert("tables".into(), json!(src_tables.len()));
        predicted.insert("source".into(), json!(sp.display()));
        predicted.insert("target".into(), json!(tp.display()));
        Ok(Planned {
            changes,
            before: json!({"target_tables": tgt_tables.len()}),
            predicted,
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let source = cx.providers.source().await?;
        let target = cx.providers.target().await?;
        let wal_level: String = source
            .query_one("SHOW wal_level", &[])
            .await
            .map_err(|e| pg("source", e))?
            .get(0);
        if wal_level != "logical" {
            return Err(StepError::Check(format!(
                "source wal_level is {wal_level}; logical replication needs wal_level = logical"
            )));
        }
        let sp = ConnParts::parse(&cx.providers.source_url()?, "source")?;
        let tp = ConnParts::parse(&cx.providers.target_url()?, "target")?;
        let src_tables = user_tables(&source, "source").await?;
        if user_tables(&target, "target").await?.is_empty() {
            (cx.progress)(&format!(
                "copying schema of {} tables to the target",
                src_tables.len()
            ));
            let ddl = dump_schema(&sp).await?;
            target
                .batch_execute(&ddl)
                .await
                .map_err(|e| pg("target", e))?;
        }
        if !exists(&source, "source", PUB_SQL, &publ).await? {
            source
                .batch_execute(&format!(
                    "CREATE PUBLICATION {} FOR ALL TABLES",
                    ident(&publ)
                ))
                .await
                .map_err(|e| pg("source", e))?;
        }
        if !exists(&target, "target", SUB_SQL, &sub).await? {
            (cx.progress)(&format!(
                "creating subscription {sub} (initial copy of every table)"
            ));
            let sql = format!(
                "CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} WITH (copy_data = true)",
                ident(&sub),
                literal(&sp.conninfo()),
                ident(&publ)
            );
            // The statement holds the source password: report only the server's message.
            target
                .batch_execute(&sql)
                .await
                .map_err(|e| pg("target", e))?;
        }
        let mut out = Map::new();
        out.insert("publication".into(), json!(publ));
        out.insert("subscription".into(), json!(sub));
        out.insert("slot".into(), json!(sub));
        out.insert("tables".into(), json!(src_tables.len()));
        out.insert("source".into(), json!(sp.display()));
        out.insert("target".into(), json!(tp.display()));
        Ok(out)
    }

    async fn verify(
        &self,
        cx: &StepContext,
        outputs: &Map<String, Value>,
    ) -> Result<Map<String, Value>, StepError> {
        let sub = outputs
            .get("subscription")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let target = cx.providers.target().await?;
        loop {
            let row = target
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE r.srsubstate NOT IN ('r','s')) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = $1",
                    &[&sub],
                )
                .await
                .map_err(|e| pg("target", e))?;
            let (total, copying): (i64, i64) = (row.get(0), row.get(1));
            if total > 0 && copying == 0 {
                let mut ev = Map::new();
                ev.insert("tables_ready".into(), json!(total));
                ev.insert(
                    "summary".into(),
                    json!(format!("{total} tables replicating through {sub}")),
                );
                return Ok(ev);
            }
            cx.check_deadline(&format!(
                "initial copy of subscription {sub} ({copying} of {total} tables still copying)"
            ))?;
            (cx.progress)(&format!(
                "initial copy: {copying} of {total} tables still copying; waiting up to {}s",
                cx.remaining().as_secs()
            ));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        _before: &Value,
        _outputs: Option<&Map<String, Value>>,
    ) -> Result<Vec<String>, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let mut lines = Vec::new();
        let target = cx.providers.target().await?;
        if exists(&target, "target", SUB_SQL, &sub).await? {
            target
                .batch_execute(&format!("DROP SUBSCRIPTION {}", ident(&sub)))
                .await
                .map_err(|e| pg("target", e))?;
            lines.push(format!(
                "subscription {sub} dropped on the target (with its replication slot)"
            ));
        }
        let source = cx.providers.source().await?;
        if source
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
                &[&sub],
            )
            .await
            .map_err(|e| pg("source", e))?
            .is_some()
        {
            source
                .query("SELECT pg_drop_replication_slot($1)", &[&sub])
                .await
                .map_err(|e| pg("source", e))?;
            lines.push(format!("replication slot {sub} dropped on the source"));
        }
        if exists(&source, "source", PUB_SQL, &publ).await? {
            source
                .batch_execute(&format!("DROP PUBLICATION {}", ident(&publ)))
                .await
                .map_err(|e| pg("source", e))?;
            lines.push(format!("publication {publ} dropped on the source"));
        }
        Ok(lines)
    }
}
