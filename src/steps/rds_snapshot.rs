//! `rds.snapshot`: a manual DB snapshot of the target RDS instance before the cutover, waited on
//! until `available`. Idempotent by snapshot identifier (derived from the run id). Rollback keeps
//! the snapshot: it is evidence and a restore point, never removed by the tool.

use super::{Applied, Change, Evidence, Kind, Plan, StepContext, StepError};
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
        let rds = cx.providers.rds().await?;
        rds.describe_instance(&p.instance).await?;
        let id = snapshot_id(cx, p);
        let changes = match rds.snapshot_status(&id).await? {
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
        let rds = cx.providers.rds().await?;
        let id = snapshot_id(cx, p);
        if rds.snapshot_status(&id).await?.is_none() {
            rds.create_snapshot(&p.instance, &id, cx.run_id).await?;
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
        let rds = cx.providers.rds().await?;
        let id = &outputs.snapshot_id;
        loop {
            let s = rds
                .snapshot_status(id)
                .await?
                .unwrap_or_else(|| "missing".into());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::rds::Rds;
    use crate::providers::ProviderError;
    use crate::steps::testing::Harness;
    use crate::steps::{Action, Restored};
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    /// One DB instance; snapshots by id with the statuses their next reads return (the last
    /// one for ever after). A created snapshot reads `creating` twice, then `available`.
    #[derive(Default)]
    struct FakeRds {
        instance: String,
        snapshots: Mutex<BTreeMap<String, Vec<String>>>,
        created: Mutex<Vec<(String, String, String)>>,
    }

    #[async_trait]
    impl Rds for FakeRds {
        async fn describe_instance(&self, instance: &str) -> Result<(), ProviderError> {
            if instance == self.instance {
                Ok(())
            } else {
                Err(ProviderError::Aws {
                    op: "rds:DescribeDBInstances".into(),
                    message: format!("DBInstanceNotFound: {instance}"),
                })
            }
        }
        async fn snapshot_status(&self, id: &str) -> Result<Option<String>, ProviderError> {
            let mut s = self.snapshots.lock().unwrap();
            Ok(s.get_mut(id).map(|states| {
                if states.len() > 1 {
                    states.remove(0)
                } else {
                    states[0].clone()
                }
            }))
        }
        async fn create_snapshot(
            &self,
            instance: &str,
            id: &str,
            run_id: &str,
        ) -> Result<(), ProviderError> {
            self.created
                .lock()
                .unwrap()
                .push((instance.into(), id.into(), run_id.into()));
            self.snapshots.lock().unwrap().insert(
                id.into(),
                vec!["creating".into(), "creating".into(), "available".into()],
            );
            Ok(())
        }
    }

    fn setup() -> (Harness, Arc<FakeRds>) {
        let rds = Arc::new(FakeRds {
            instance: "shop-staging".into(),
            ..Default::default()
        });
        let fake = rds.clone();
        (Harness::new(|p| p.with_rds(fake)), rds)
    }

    fn params(instance: &str) -> Params {
        Params {
            instance: instance.into(),
            snapshot: None,
        }
    }

    #[tokio::test]
    async fn plans_a_snapshot_takes_it_once_waits_for_it_and_rollback_keeps_it() {
        let (h, rds) = setup();
        let cx = h.cx();
        let p = params("shop-staging");
        let plan = RdsSnapshot.plan(&cx, &p).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Create);
        let id = plan.predicted.as_ref().unwrap().snapshot_id.clone();
        assert_eq!(id, "cutover-test-run-shop-staging");

        let first = RdsSnapshot.apply(&cx, &p, &()).await.unwrap();
        // A re-run after a crash finds the snapshot and does not take another.
        let again = RdsSnapshot.apply(&cx, &p, &()).await.unwrap();
        assert_eq!(first.outputs.snapshot_id, again.outputs.snapshot_id);
        assert_eq!(
            *rds.created.lock().unwrap(),
            vec![(
                "shop-staging".to_string(),
                id.clone(),
                "test-run".to_string()
            )]
        );
        // The first read said `creating`: verify waited (one 5 s poll) for `available`.
        let evidence = RdsSnapshot.verify(&cx, &p, &first.outputs).await.unwrap();
        assert_eq!(
            evidence.summary.as_deref(),
            Some(&*format!("snapshot {id} available"))
        );
        assert!(h
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("is creating")));

        let replanned = RdsSnapshot.plan(&cx, &p).await.unwrap();
        assert_eq!(replanned.changes[0].action, Action::None);
        let restored: Vec<Restored> = RdsSnapshot
            .rollback(&cx, &p, &(), Some(&first.outputs))
            .await
            .unwrap();
        assert!(restored.is_empty(), "a rollback deletes no snapshot");
        assert_eq!(rds.created.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_missing_instance_fails_the_plan_and_creates_nothing() {
        let (h, rds) = setup();
        let err = RdsSnapshot
            .plan(&h.cx(), &params("shop-prod"))
            .await
            .err()
            .expect("no such instance");
        assert!(err.to_string().contains("DBInstanceNotFound"), "{err}");
        assert!(rds.created.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn verify_gives_up_at_the_deadline_while_the_snapshot_is_not_available() {
        let (h, rds) = setup();
        rds.snapshots
            .lock()
            .unwrap()
            .insert("stuck".into(), vec!["creating".into()]);
        let mut cx = h.cx();
        // The deadline has passed: the first read that is not `available` ends the wait.
        cx.deadline = tokio::time::Instant::now();
        let outputs = Outputs {
            snapshot_id: "stuck".into(),
            instance: "shop-staging".into(),
        };
        let err = RdsSnapshot
            .verify(&cx, &params("shop-staging"), &outputs)
            .await
            .err()
            .expect("never available");
        assert!(matches!(err, StepError::Timeout(_)), "{err:?}");
    }
}
