//! `postgres.decommission`: ends the fallback once the operator is satisfied with the target.
//! Drops, on both servers, every subscription, publication and replication slot that a cutover
//! run created for this database (names `cutover_<database>_<run>`, `..._track`, `..._fb`): the
//! fallback subscription on the legacy database first (with it, its slot on the target), then
//! whatever is left. Until then a slot retains WAL (`cutover status` warns with the bytes).
//!
//! Run it from its own runbook (`runbooks/shop-decommission.yaml`) after the cutover run
//! succeeded; the environment lock keeps it from running beside a cutover. After it, a rollback
//! of the cutover run can no longer carry the target's writes back: the step says so in its plan.
//! Nothing to undo: what it drops is not recreated.
//!
//! A fallback that runs through a relay (its progress row on the legacy database names its
//! slot) has its Deployment and Secret deleted from the target cluster first, then its slot and
//! publication dropped, then its progress row deleted.

use super::{Action, Applied, Change, Evidence, Kind, Plan, StepContext, StepError};
use crate::config::Side;
use crate::providers::postgres::database::Database;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `postgres.decommission` kind.
pub struct Decommission;

/// `with:` of `postgres.decommission`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The target cluster's namespace of the fallback's relay or WAL guard, as postgres.fallback's relay_namespace (default cutover).
    #[serde(default = "super::relay::default_namespace")]
    relay_namespace: String,
}

/// What `postgres.decommission` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// Each object dropped, as `slot NAME (side)`, `subscription NAME (side)`, ...
    dropped: Vec<String>,
    /// WAL the dropped slots retained, in bytes.
    retained_bytes_freed: i64,
}

/// The cutover objects of this database on one server.
#[derive(Debug, Default)]
struct Objects {
    subscriptions: Vec<String>,
    publications: Vec<String>,
    /// Slot name → bytes of WAL it retains.
    slots: BTreeMap<String, i64>,
}

/// The prefix every run's objects for this database share: `cutover_<database>_`.
fn prefix(cx: &StepContext) -> String {
    format!("cutover_{}_", super::postgres_replicate::db_token(cx))
}

async fn objects(c: &dyn Database, prefix: &str) -> Result<Objects, StepError> {
    let subscriptions = c.subscriptions(prefix).await?;
    let publications = c.publications(prefix).await?;
    let slots = c
        .retained()
        .await?
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    Ok(Objects {
        subscriptions,
        publications,
        slots,
    })
}

#[async_trait]
impl Kind for Decommission {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "postgres.decommission";
    const PURPOSE: &'static str = "End the fallback: stop its relay or WAL guard, drop every subscription, publication and replication slot cutover runs created for this database, on both servers";
    const UNDO: &'static str = "Nothing to undo: the fallback is not recreated (a later rollback of the cutover run no longer carries the target's writes back)";
    const ACTS_ON_DATABASE: bool = true;

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), ()>, StepError> {
        let pre = prefix(cx);
        let mut changes = Vec::new();
        for slot in cx
            .providers
            .database(Side::Source)
            .await?
            .relayed_slots(&pre)
            .await?
        {
            changes.push(Change::new(
                Action::Delete,
                format!(
                    "Deployment {}/{} and its Secret in the target cluster",
                    p.relay_namespace,
                    super::relay::name(&slot)
                ),
                format!("the relay of slot {slot} stops"),
            ));
        }
        for c in [
            cx.providers.database(Side::Source).await?,
            cx.providers.database(Side::Target).await?,
        ] {
            let side = c.side().as_str();
            let o = objects(&*c, &pre).await?;
            for s in &o.subscriptions {
                changes.push(Change::new(
                    Action::Delete,
                    format!("subscription {s} on {side}"),
                    "replication stops; its slot on the publisher goes with it",
                ));
            }
            for p in &o.publications {
                changes.push(Change::new(
                    Action::Delete,
                    format!("publication {p} on {side}"),
                    "no longer published",
                ));
            }
            for (s, bytes) in &o.slots {
                let guard = super::relay::guard_name(s);
                if super::relay::exists_named(cx, &p.relay_namespace, &guard).await? {
                    changes.push(Change::new(
                        Action::Delete,
                        format!(
                            "Deployment {}/{guard} and its Secret in the target cluster",
                            p.relay_namespace
                        ),
                        format!("the WAL guard of slot {s} stops"),
                    ));
                }
                changes.push(Change::new(
                    Action::Delete,
                    format!("replication slot {s} on {side}"),
                    format!("retains {bytes} bytes of WAL"),
                ));
            }
        }
        if changes.is_empty() {
            changes.push(Change::new(
                Action::None,
                format!("replication objects {pre}* on both servers"),
                "none left",
            ));
        } else {
            changes.push(Change::new(Action::Check, "fallback", "after this, a rollback of the cutover run can no longer carry the target's writes back to the legacy database"));
        }
        Ok(Plan::of(changes))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let pre = prefix(cx);
        let both = [
            cx.providers.database(Side::Source).await?,
            cx.providers.database(Side::Target).await?,
        ];
        let mut dropped = Vec::new();
        let mut freed = 0i64;
        // Relays first: their slots can be dropped once nothing holds them.
        let relayed = both[0].relayed_slots(&pre).await?;
        for slot in &relayed {
            let name = super::relay::name(slot);
            if super::relay::delete_named(cx, &p.relay_namespace, &name).await? {
                dropped.push(format!(
                    "relay {}/{name} (target cluster)",
                    p.relay_namespace
                ));
            }
        }
        // The WAL guards of slots native subscriptions consume: each slot's, on both sides.
        for c in &both {
            for slot in objects(&**c, &pre).await?.slots.keys() {
                let name = super::relay::guard_name(slot);
                if super::relay::delete_named(cx, &p.relay_namespace, &name).await? {
                    dropped.push(format!(
                        "WAL guard {}/{name} (target cluster)",
                        p.relay_namespace
                    ));
                }
            }
        }
        // Subscriptions first (each drops its slot on its publisher), on both sides.
        for c in &both {
            let side = c.side().as_str();
            for s in objects(&**c, &pre).await?.subscriptions {
                c.drop_subscription(&s).await?;
                dropped.push(format!("subscription {s} ({side})"));
            }
        }
        for c in &both {
            let side = c.side().as_str();
            let o = objects(&**c, &pre).await?;
            for (s, bytes) in o.slots {
                c.drop_slot(&s).await?;
                freed += bytes;
                dropped.push(format!(
                    "replication slot {s} ({side}, {bytes} bytes of WAL)"
                ));
            }
            for p in o.publications {
                c.drop_publication(&p).await?;
                dropped.push(format!("publication {p} ({side})"));
            }
        }
        for slot in &relayed {
            both[0].forget_relay(slot).await?;
        }
        // A guard that stopped replication recorded why on the subscriber: gone with the rest.
        for c in &both {
            for slot in c.relayed_slots(&pre).await? {
                c.forget_relay(&slot).await?;
            }
        }
        let summary = if dropped.is_empty() {
            format!("no replication object {pre}* left on either server")
        } else {
            format!(
                "dropped {}; {freed} bytes of retained WAL freed",
                dropped.join(", ")
            )
        };
        Ok(Applied::new(Outputs {
            dropped,
            retained_bytes_freed: freed,
        })
        .summary(summary))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        _p: &Params,
        _outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let pre = prefix(cx);
        let mut left = Vec::new();
        for c in [
            cx.providers.database(Side::Source).await?,
            cx.providers.database(Side::Target).await?,
        ] {
            let side = c.side().as_str();
            let o = objects(&*c, &pre).await?;
            left.extend(
                o.subscriptions
                    .iter()
                    .map(|s| format!("subscription {s} ({side})")),
            );
            left.extend(
                o.publications
                    .iter()
                    .map(|s| format!("publication {s} ({side})")),
            );
            left.extend(o.slots.keys().map(|s| format!("slot {s} ({side})")));
        }
        if !left.is_empty() {
            return Err(StepError::Check(format!(
                "still present after the decommission: {}",
                left.join(", ")
            )));
        }
        Ok(Evidence::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            relay_namespace: crate::steps::relay::default_namespace(),
        }
    }
    use crate::providers::postgres::database::Subscription;
    use crate::steps::testing::postgres::FakePostgres;
    use crate::steps::testing::Harness;

    /// What a finished cutover leaves: the fallback (publication and slot `..._fb` on the
    /// target, its subscription on the source), an old run's tracking slot on the source, and
    /// another database's slot that is not this runbook's.
    async fn after_cutover() -> (Harness, FakePostgres) {
        let pg = FakePostgres::new("shop_staging", "shop_staging");
        let (source, target) = (pg.database(Side::Source), pg.database(Side::Target));
        let fb = "cutover_shop_staging_run_fb";
        target.create_publication(fb, &[]).await.unwrap();
        target.create_slot(fb).await.unwrap();
        source
            .subscribe(
                &Subscription {
                    publication: fb.into(),
                    name: fb.into(),
                    origin_none: true,
                },
                &*target,
            )
            .await
            .unwrap();
        source
            .create_slot("cutover_shop_staging_old_track")
            .await
            .unwrap();
        source
            .create_slot("cutover_letters_staging_x")
            .await
            .unwrap();
        pg.write(Side::Source, 7);
        let fake = pg.clone();
        let kube = crate::steps::testing::kube::FakeKube::default();
        (
            Harness::new(|p| fake.install(p).with_kube(kube.client())),
            pg,
        )
    }

    #[tokio::test]
    async fn drops_this_databases_replication_on_both_servers_once() {
        let (h, pg) = after_cutover().await;
        let cx = h.cx();
        let plan = Decommission.plan(&cx, &params()).await.unwrap();
        let targets: Vec<&str> = plan.changes.iter().map(|c| c.target.as_str()).collect();
        assert_eq!(
            targets,
            vec![
                "subscription cutover_shop_staging_run_fb on source",
                "replication slot cutover_shop_staging_old_track on source",
                "publication cutover_shop_staging_run_fb on target",
                "replication slot cutover_shop_staging_run_fb on target",
                "fallback",
            ]
        );
        let applied = Decommission.apply(&cx, &params(), &()).await.unwrap();
        assert_eq!(
            applied.outputs.dropped,
            vec![
                "subscription cutover_shop_staging_run_fb (source)",
                "replication slot cutover_shop_staging_old_track (source, 700 bytes of WAL)",
                "publication cutover_shop_staging_run_fb (target)",
            ]
        );
        assert_eq!(applied.outputs.retained_bytes_freed, 700);
        Decommission
            .verify(&cx, &params(), &applied.outputs)
            .await
            .unwrap();
        assert!(
            pg.server(Side::Source, |s| s
                .slots
                .contains_key("cutover_letters_staging_x")),
            "another database's slot is not this runbook's"
        );
        // A re-run after a crash finds nothing left.
        let again = Decommission.apply(&cx, &params(), &()).await.unwrap();
        assert!(again.outputs.dropped.is_empty());
        let replanned = Decommission.plan(&cx, &params()).await.unwrap();
        assert_eq!(replanned.changes[0].action, Action::None);
    }

    #[tokio::test]
    async fn verify_names_what_is_still_there() {
        let (h, pg) = after_cutover().await;
        let cx = h.cx();
        let applied = Decommission.apply(&cx, &params(), &()).await.unwrap();
        pg.server(Side::Target, |s| {
            s.publications
                .insert("cutover_shop_staging_late".into(), vec![])
        });
        let err = Decommission
            .verify(&cx, &params(), &applied.outputs)
            .await
            .err()
            .expect("a publication is left");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("publication cutover_shop_staging_late (target)")),
            "{err:?}"
        );
    }
}
