//! `postgres.sync_sequences`: logical replication does not carry sequence values, so after the
//! freeze each target sequence is set to the source's `last_value` plus a safety margin, so the
//! first insert on the target cannot collide with a replicated key.

use super::{Applied, Change, Kind, Plan, StepContext, StepError};
use crate::config::Side;
use crate::providers::postgres::replication::to_advance as wanted;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The `postgres.sync_sequences` kind.
pub struct SyncSequences;

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Values added to each source `last_value` (default 0).
    #[serde(default)]
    margin: i64,
}

/// What `postgres.sync_sequences` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// Every target sequence (`schema.name`) and its `last_value` after the step (`null`: never
    /// used).
    sequences: std::collections::BTreeMap<String, Option<i64>>,
}

#[async_trait]
impl Kind for SyncSequences {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "postgres.sync_sequences";
    const PURPOSE: &'static str = "Set every target sequence to at least the source's value plus a margin (logical replication does not carry sequences)";
    const UNDO: &'static str =
        "Nothing to undo: sequences only move forward, and a higher value is harmless";
    const ACTS_ON_DATABASE: bool = true;

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), ()>, StepError> {
        let src = cx
            .providers
            .database(Side::Source)
            .await?
            .sequences()
            .await?;
        let tgt = cx
            .providers
            .database(Side::Target)
            .await?
            .sequences()
            .await?;
        let todo = wanted(&src, &tgt, p.margin);
        let mut changes: Vec<Change> = todo
            .iter()
            .map(|(n, now, goal)| {
                let was = match (tgt.contains_key(n), now) {
                    (false, _) => "absent on the target until its schema is copied".to_string(),
                    (true, None) => "never used".to_string(),
                    (true, Some(v)) => v.to_string(),
                };
                Change::new(
                    crate::steps::Action::Update,
                    format!("sequence {n} on target"),
                    format!("{was} → {goal}"),
                )
                .with_document(json!(format!(
                    "SELECT setval({}::regclass, {goal}, true)",
                    crate::providers::postgres::literal(n)
                )))
            })
            .collect();
        if changes.is_empty() {
            changes.push(Change::new(
                crate::steps::Action::None,
                "target sequences",
                format!("all {} at or above source + {}", src.len(), p.margin),
            ));
        }
        Ok(Plan::of(changes))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let src = cx
            .providers
            .database(Side::Source)
            .await?
            .sequences()
            .await?;
        let target = cx.providers.database(Side::Target).await?;
        let tgt = target.sequences().await?;
        let todo = wanted(&src, &tgt, p.margin);
        target.advance(&todo).await?;
        let after = target.sequences().await?;
        Ok(Applied::new(Outputs { sequences: after }).summary(format!(
            "{} of {} sequences advanced (margin {})",
            todo.len(),
            src.len(),
            p.margin
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::postgres::FakePostgres;
    use crate::steps::testing::Harness;
    use crate::steps::Action;

    #[tokio::test]
    async fn advances_target_sequences_past_the_source_once_and_never_back() {
        let pg = FakePostgres::new("shop_staging", "shop_staging");
        pg.server(Side::Source, |s| {
            s.sequences = [
                ("public.orders_id_seq".to_string(), Some(500)),
                ("public.users_id_seq".to_string(), Some(10)),
                ("public.unused_seq".to_string(), None),
            ]
            .into_iter()
            .collect();
        });
        pg.server(Side::Target, |s| {
            s.sequences = [
                ("public.orders_id_seq".to_string(), None),
                ("public.users_id_seq".to_string(), Some(9000)),
                ("public.unused_seq".to_string(), None),
            ]
            .into_iter()
            .collect();
        });
        let fake = pg.clone();
        let h = Harness::new(|p| fake.install(p));
        let cx = h.cx();
        let p = Params { margin: 100 };
        let plan = SyncSequences.plan(&cx, &p).await.unwrap();
        assert_eq!(plan.changes.len(), 1, "only orders_id_seq is behind");
        assert_eq!(plan.changes[0].action, Action::Update);
        assert_eq!(plan.changes[0].detail, "never used → 600");

        let first = SyncSequences.apply(&cx, &p, &()).await.unwrap();
        assert_eq!(first.outputs.sequences["public.orders_id_seq"], Some(600));
        assert_eq!(
            first.outputs.sequences["public.users_id_seq"],
            Some(9000),
            "a sequence ahead of the source is left where it is"
        );
        // A re-run after a crash has nothing left to move.
        let again = SyncSequences.apply(&cx, &p, &()).await.unwrap();
        assert_eq!(
            again.summary.as_deref(),
            Some("0 of 3 sequences advanced (margin 100)")
        );
        assert_eq!(
            SyncSequences.plan(&cx, &p).await.unwrap().changes[0].action,
            Action::None
        );
    }
}
