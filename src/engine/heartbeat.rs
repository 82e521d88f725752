//! The rehearsal heartbeat: starts the runbook's heartbeat writer (reading the application's
//! database URL from its Kubernetes Secret) before the first step and, when the run finishes,
//! records what it measured: the longest gap between acknowledged writes and every acknowledged
//! write missing from the database the Secret names at the end.
//!
//! Owns the bridge between the runbook's `heartbeat:` section, the Kubernetes client and the
//! writer; must not interpret step results.

use super::executor::{EngineError, Executor};
use crate::providers::postgres::heartbeat::{self, Heartbeat, Options, UrlSource};
use crate::providers::postgres::ConnParts;
use crate::steps::context::Mode;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// A writer running for this run.
pub struct Running {
    writer: Heartbeat,
    /// The `writer` column value of this attempt's rows.
    id: String,
    table: String,
}

/// Starts the writer when the run is a rehearsal and the runbook configures one; a writer that
/// cannot start is recorded (`heartbeat_failed`) and the run goes on.
///
/// # Errors
/// [`EngineError::Log`] when the record cannot be written.
pub async fn start(ex: &mut Executor<'_>, attempt: usize) -> Result<(), EngineError> {
    let Some(cfg) = ex.plan.heartbeat.clone() else {
        return Ok(());
    };
    if ex.mode != Mode::Rehearse {
        return Ok(());
    }
    let client = match ex.providers.kube().await {
        Ok(c) => c,
        Err(e) => {
            let reason = ex.redactor.redact(&e.to_string());
            ex.record("heartbeat_failed", None, json!({"error": reason}))?;
            return Ok(());
        }
    };
    let (ns, name, key) = (cfg.namespace.clone(), cfg.secret.clone(), cfg.key.clone());
    let urls: UrlSource = Arc::new(move || {
        let (client, ns, name, key) = (client.clone(), ns.clone(), name.clone(), key.clone());
        Box::pin(async move {
            crate::providers::kube::secret_value(client, &ns, &name, &key)
                .await
                .map_err(|e| e.to_string())
        })
    });
    let id = if attempt == 0 {
        ex.run_id.clone()
    } else {
        format!("{}#{attempt}", ex.run_id)
    };
    let writer = Heartbeat::start(
        urls,
        Options {
            table: cfg.table.clone(),
            writer: id.clone(),
            rate: cfg.writes_per_second,
            reload: Duration::from_millis(cfg.reload_ms.max(10)),
        },
    )
    .await;
    ex.record(
        "heartbeat_started",
        None,
        json!({"writer": id, "writes_per_second": cfg.writes_per_second, "secret": format!("{}/{}", cfg.namespace, cfg.secret), "key": cfg.key, "table": cfg.table, "reload_ms": cfg.reload_ms}),
    )?;
    ex.heartbeat = Some(Running {
        writer,
        id,
        table: cfg.table,
    });
    Ok(())
}

/// Stops the writer, checks the acknowledged writes against the final database and records a
/// `heartbeat` event: `{writer, attempted, acknowledged, longest_gap_ms, gap_from, gap_to,
/// connections, url_changes, database, missing, missing_seqs (first 20), error}`.
///
/// # Errors
/// [`EngineError::Log`] when the record cannot be written.
pub async fn finish(ex: &mut Executor<'_>) -> Result<(), EngineError> {
    let Some(run) = ex.heartbeat.take() else {
        return Ok(());
    };
    let report = run.writer.stop().await;
    let mut data = serde_json::to_value(&report).unwrap_or_default();
    data["writer"] = json!(run.id);
    if report.error.is_none() {
        let db = ConnParts::parse(&report.final_url, "heartbeat")
            .map(|p| p.display())
            .unwrap_or_default();
        data["database"] = json!(db);
        match heartbeat::missing(&report.final_url, &run.table, &run.id, &report.acked).await {
            Ok(m) => {
                data["missing"] = json!(m.len());
                data["missing_seqs"] = json!(m.iter().take(20).collect::<Vec<_>>());
            }
            Err(e) => data["missing_check_error"] = json!(e.to_string()),
        }
    }
    ex.record("heartbeat", None, data)?;
    Ok(())
}
