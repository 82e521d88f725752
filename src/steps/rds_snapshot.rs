//! `rds.snapshot`: a manual DB snapshot of the target RDS instance before the cutover, waited on
//! until `available`. Idempotent by snapshot identifier (derived from the run id). Rollback keeps
//! the snapshot: it is evidence and a restore point, never removed by the tool.

use super::{Applied, Change, Evidence, Kind, Plan, StepContext, StepError};
use crate::providers::aws::err;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// The `rds.snapshot` kind.
pub struct RdsSnapshot;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// DB instance identifier.
    instance: String,
    /// Snapshot identifier (default cutover-<run id>-<instance>).
    #[serde(default)]
    snapshot: Option<String>,
}

/// What `rds.snapshot` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The snapshot's identifier.
    snapshot_id: String,
    /// The DB instance snapshotted.
    instance: String,
}

fn snapshot_id(cx: &StepContext, p: &Params) -> String {
    p.snapshot.clone().unwrap_or_else(|| {
        let raw = format!("cutover-{}-{}", cx.run_id, p.instance);
        let mut id: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .collect();
        while id.contains("--") {
            id = id.replace("--", "-");
        }
        id.trim_end_matches('-').chars().take(255).collect()
    })
}

async fn status(rds: &aws_sdk_rds::Client, id: &str) -> Result<Option<String>, StepError> {
    match rds
        .describe_db_snapshots()
        .db_snapshot_identifier(id)
        .send()
        .await
    {
        Ok(out) => Ok(out
            .db_snapshots()
            .first()
            .map(|s| s.status().unwrap_or("unknown").to_string())),
        Err(e) => {
            let code = e
                .as_service_error()
                .map(|s| s.is_db_snapshot_not_found_fault())
                .unwrap_or(false);
            if code {
                Ok(None)
            } else {
                Err(err("rds:DescribeDBSnapshots", e).into())
            }
        }
    }
}

#[async_trait]
impl Kind for RdsSnapshot {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = Outputs;
    const NAME: &'static str = "rds.snapshot";
    const PURPOSE: &'static str =
        "Take a manual snapshot of the RDS instance as a restore point before any data moves";
    const UNDO: &'static str = "The snapshot is kept as the restore point; nothing is deleted";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), Outputs>, StepError> {
        let rds = crate::aws_client!(aws_sdk_rds, &cx.providers.aws().await?.config);
        rds.describe_db_instances()
            .db_instance_identifier(&p.instance)
            .send()
            .await
            .map_err(|e| err("rds:DescribeDBInstances", e))?;
        let id = snapshot_id(cx, p);
        let changes = match status(&rds, &id).await? {
            Some(s) => vec![Change::new(
                crate::steps::Action::None,
                format!("snapshot {id}"),
                format!("exists ({s})"),
            )],
            None => vec![Change::new(
                crate::steps::Action::Create,
                format!("snapshot {id}"),
                format!("of instance {}", p.instance),
            )],
        };
        Ok(Plan {
            changes,
            before: (),
            predicted: Some(Outputs {
                snapshot_id: id,
                instance: p.instance.clone(),
            }),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let rds = crate::aws_client!(aws_sdk_rds, &cx.providers.aws().await?.config);
        let id = snapshot_id(cx, p);
        if status(&rds, &id).await?.is_none() {
            rds.create_db_snapshot()
                .db_instance_identifier(&p.instance)
                .db_snapshot_identifier(&id)
                .tags(
                    aws_sdk_rds::types::Tag::builder()
                        .key("cutover:run-id")
                        .value(cx.run_id)
                        .build(),
                )
                .send()
                .await
                .map_err(|e| err("rds:CreateDBSnapshot", e))?;
        }
        Ok(Applied::new(Outputs {
            snapshot_id: id,
            instance: p.instance.clone(),
        }))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        _p: &Params,
        outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let rds = crate::aws_client!(aws_sdk_rds, &cx.providers.aws().await?.config);
        let id = &outputs.snapshot_id;
        loop {
            let s = status(&rds, &id).await?.unwrap_or_else(|| "missing".into());
            if s == "available" {
                return Ok(Evidence {
                    facts: vec![("status".into(), json!(s))],
                    summary: Some(format!("snapshot {id} available")),
                });
            }
            let awaiting = format!("snapshot {id} to become available (now {s})");
            cx.check_deadline(&awaiting)?;
            (cx.progress)(&format!(
                "snapshot {id} is {s}; waiting up to {}s",
                cx.remaining().as_secs()
            ));
            cx.wait(Duration::from_secs(5), &awaiting).await?;
        }
    }
}
