//! `route53.set_ttl`: lowers a record's TTL ahead of a cutover and records from what and when, so
//! `route53.cutover` can wait until resolvers can no longer hold an answer cached under the old
//! TTL. The lowering counts from the moment Route 53 reports the change INSYNC: from then on every
//! authoritative server answers with the new TTL, and an answer cached before expires within the
//! old TTL.
//!
//! Outputs: `ttl` (seconds now), `previous_ttl` (seconds before), `lowered_at` (RFC 3339, `null`
//! when this run did not lower it). Rollback puts the previous TTL back.

use super::dns::{restore, submit_and_wait, RecordBefore};
use super::{Action, Applied, Change, Kind, Plan, Restored, StepContext, StepError};
use crate::providers::route53::{batch_json, fqdn, RecordAction, RecordChange, RecordSet, Route53};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The `route53.set_ttl` kind.
pub struct SetTtl;

/// `with:` of `route53.set_ttl`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Record name, e.g. shop.staging.example.com.
    record: String,
    /// Record type: CNAME (default), A or AAAA.
    #[serde(default = "default_type", rename = "type")]
    rtype: String,
    /// The lowered TTL in seconds, e.g. 60.
    #[serde(deserialize_with = "super::rendered::opt_int")]
    ttl: Option<i64>,
}

fn default_type() -> String {
    "CNAME".into()
}

/// The highest TTL among `sets` (alias sets have none).
fn max_ttl(sets: &[RecordSet]) -> Option<i64> {
    sets.iter().filter_map(|s| s.ttl).max()
}

/// `UPSERT`s that bring every set with a TTL above `ttl` down to it.
fn lowering(sets: &[RecordSet], ttl: i64) -> Vec<RecordChange> {
    sets.iter()
        .filter(|s| s.ttl.is_some_and(|t| t > ttl))
        .map(|s| RecordChange {
            action: RecordAction::Upsert,
            set: RecordSet {
                ttl: Some(ttl),
                ..s.clone()
            },
        })
        .collect()
}

async fn observe(
    cx: &StepContext<'_>,
    p: &Params,
) -> Result<(i64, std::sync::Arc<dyn Route53>, String, Vec<RecordSet>), StepError> {
    let ttl = p
        .ttl
        .filter(|t| *t >= 0)
        .ok_or_else(|| StepError::Params("`ttl` must be a whole number of seconds".into()))?;
    let r53 = cx.providers.route53().await?;
    let zone = r53.zone_id(&cx.env.dns.domain).await?;
    let sets = r53.record_sets(&zone, &p.record, &p.rtype).await?;
    if sets.is_empty() {
        return Err(StepError::Check(format!(
            "no {} record {} in zone {zone}",
            p.rtype,
            fqdn(&p.record)
        )));
    }
    Ok((ttl, r53, zone, sets))
}

/// What `route53.set_ttl` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The record's TTL now, in seconds.
    ttl: i64,
    /// Its TTL before this run lowered it, in seconds (`route53.cutover`'s `previous_ttl`).
    previous_ttl: i64,
    /// When it was lowered, RFC 3339 (`null` when it needed no lowering).
    lowered_at: Option<String>,
    /// The record's fully qualified name.
    record: String,
    /// The Route 53 change batch submitted, when one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    change_batch: Option<Value>,
    /// Its change id, when one was submitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    change_id: Option<String>,
}

#[async_trait]
impl Kind for SetTtl {
    type Params = Params;
    type Outputs = Outputs;
    type Before = RecordBefore;
    type Predicted = Outputs;
    const NAME: &'static str = "route53.set_ttl";
    const PURPOSE: &'static str =
        "Lower a record's TTL ahead of the cutover and record from what and when";
    const UNDO: &'static str = "Raise the record's TTL back to the value it had before the run";

    async fn plan(
        &self,
        cx: &StepContext,
        p: &Params,
    ) -> Result<Plan<RecordBefore, Outputs>, StepError> {
        let (ttl, _r53, zone, sets) = observe(cx, p).await?;
        let label = format!("{} {}", p.rtype, fqdn(&p.record));
        let previous = max_ttl(&sets).unwrap_or(ttl);
        let changes = lowering(&sets, ttl);
        let change = if changes.is_empty() {
            Change::new(
                Action::None,
                label,
                format!("TTL already {previous}s ≤ {ttl}s"),
            )
        } else {
            Change::new(
                Action::Update,
                label,
                format!("TTL {previous}s → {ttl}s in zone {zone}; answers cached before it is INSYNC may live {previous}s more"),
            )
            .with_document(batch_json(&changes))
        };
        let predicted = Outputs {
            ttl,
            previous_ttl: previous,
            lowered_at: (!changes.is_empty()).then(|| chrono::Utc::now().to_rfc3339()),
            record: fqdn(&p.record),
            change_batch: None,
            change_id: None,
        };
        Ok(Plan {
            changes: vec![change],
            before: RecordBefore {
                zone_id: zone,
                sets,
            },
            predicted: Some(predicted),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        before: &RecordBefore,
    ) -> Result<Applied<Outputs>, StepError> {
        let (ttl, r53, zone, now) = observe(cx, p).await?;
        // `before` is the first observation of this run: after a crash between the submit and
        // its record, it still holds the TTL from before the lowering.
        let previous = max_ttl(&before.sets).or(max_ttl(&now)).unwrap_or(ttl);
        let changes = lowering(&now, ttl);
        let mut submitted = None;
        let lowered_at = if !changes.is_empty() {
            let id = submit_and_wait(
                cx,
                &*r53,
                &zone,
                &changes,
                &format!("cutover run {} step {}: lower TTL", cx.run_id, cx.step_id),
            )
            .await?;
            submitted = Some((id, batch_json(&changes)));
            Some(chrono::Utc::now().to_rfc3339())
        } else if previous > ttl {
            // Lowered by this run before a crash; when exactly is unknown, so count from now.
            Some(chrono::Utc::now().to_rfc3339())
        } else {
            None
        };
        let summary = if lowered_at.is_none() {
            format!("{} {} TTL already {previous}s", p.rtype, fqdn(&p.record))
        } else {
            format!(
                "{} {} TTL {previous}s → {ttl}s (INSYNC)",
                p.rtype,
                fqdn(&p.record)
            )
        };
        let (change_id, change_batch) = submitted.unzip();
        Ok(Applied::new(Outputs {
            ttl: ttl.min(previous),
            previous_ttl: previous,
            lowered_at,
            record: fqdn(&p.record),
            change_batch,
            change_id,
        })
        .summary(summary))
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        before: &RecordBefore,
        _outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let old = &before.sets;
        let r53 = cx.providers.route53().await?;
        let zone = r53.zone_id(&cx.env.dns.domain).await?;
        let now = r53.record_sets(&zone, &p.record, &p.rtype).await?;
        // Raise back only the sets that still exist as they were, with a lower TTL.
        let changes: Vec<RecordChange> = now
            .iter()
            .filter_map(|n| {
                let o = old.iter().find(|o| {
                    o.set_identifier == n.set_identifier
                        && o.values == n.values
                        && o.alias == n.alias
                })?;
                (o.ttl > n.ttl).then(|| RecordChange {
                    action: RecordAction::Upsert,
                    set: RecordSet {
                        ttl: o.ttl,
                        ..n.clone()
                    },
                })
            })
            .collect();
        restore(
            cx,
            (&*r53, &zone),
            (&p.record, &p.rtype),
            &now,
            &changes,
            &format!("cutover rollback of run {}: TTL", cx.run_id),
            |now, after| {
                format!(
                    "TTL {}s → {}s",
                    max_ttl(now).unwrap_or(0),
                    max_ttl(after).unwrap_or(0)
                )
            },
        )
        .await
    }

    fn manual_undo(&self, p: &Params, before: &RecordBefore, _run_id: &str) -> Vec<String> {
        let upsert = before.cli_change(RecordAction::Upsert);
        vec![format!("put the TTL of {} back: {upsert}", p.record)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::{FakeRoute53, Harness};

    const RECORD: &str = "shop.staging.example-shop.com";

    fn params(ttl: i64) -> Params {
        Params {
            record: RECORD.into(),
            rtype: "CNAME".into(),
            ttl: Some(ttl),
        }
    }

    fn setup(ttl: i64) -> (Harness, std::sync::Arc<FakeRoute53>) {
        let r53 = FakeRoute53::with(vec![FakeRoute53::cname(RECORD, "legacy.example.net", ttl)]);
        let fake = r53.clone();
        (Harness::new(|p| p.with_route53(fake)), r53)
    }

    fn ttl_now(r53: &FakeRoute53) -> Option<i64> {
        r53.sets.lock().unwrap()[0].ttl
    }

    #[tokio::test]
    async fn lowers_once_waits_for_insync_and_rollback_raises_it_back() {
        let (h, r53) = setup(300);
        let cx = h.cx();
        let p = params(60);
        let plan = SetTtl.plan(&cx, &p).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Update);
        assert_eq!(plan.before.sets[0].ttl, Some(300));
        assert_eq!(ttl_now(&*r53), Some(300), "the plan changes nothing");

        let first = SetTtl.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(ttl_now(&*r53), Some(60));
        assert_eq!((first.outputs.ttl, first.outputs.previous_ttl), (60, 300));
        assert!(first.outputs.lowered_at.is_some());
        assert_eq!(first.outputs.change_id.as_deref(), Some("C1"));
        // The change read PENDING once: apply waited for INSYNC.
        assert!(h
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("PENDING")));

        // Re-run after a crash: nothing submitted again, the previous TTL still 300 s.
        let again = SetTtl.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(r53.submitted.lock().unwrap().len(), 1);
        assert_eq!(again.outputs.previous_ttl, 300);
        assert!(again.outputs.lowered_at.is_some(), "counts from now");
        assert_eq!(again.outputs.change_id, None);

        let restored = SetTtl
            .rollback(&cx, &p, &plan.before, Some(&first.outputs))
            .await
            .unwrap();
        assert_eq!(ttl_now(&*r53), Some(300));
        assert_eq!(restored.len(), 1, "{restored:?}");
        assert_ne!(restored[0].before, restored[0].after);
    }

    #[tokio::test]
    async fn a_ttl_already_low_enough_is_left_alone() {
        let (h, r53) = setup(30);
        let cx = h.cx();
        let p = params(60);
        let plan = SetTtl.plan(&cx, &p).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::None);
        let out = SetTtl.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(out.outputs.lowered_at, None);
        assert_eq!((out.outputs.ttl, out.outputs.previous_ttl), (30, 30));
        assert!(r53.submitted.lock().unwrap().is_empty());
        let restored = SetTtl
            .rollback(&cx, &p, &plan.before, Some(&out.outputs))
            .await
            .unwrap();
        assert!(restored.is_empty(), "nothing to raise back: {restored:?}");
        assert!(r53.submitted.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_missing_record_fails_the_plan() {
        let (h, r53) = setup(300);
        r53.sets.lock().unwrap().clear();
        let err = SetTtl
            .plan(&h.cx(), &params(60))
            .await
            .err()
            .expect("no record");
        assert!(matches!(err, StepError::Check(_)), "{err:?}");
        assert!(err.to_string().contains(RECORD), "{err}");
    }

    #[test]
    fn manual_undo_names_the_ttl_to_put_back() {
        let before = RecordBefore {
            zone_id: "Z1".into(),
            sets: vec![FakeRoute53::cname(RECORD, "legacy.example.net", 300)],
        };
        let steps = SetTtl.manual_undo(&params(60), &before, "run");
        assert_eq!(steps.len(), 1);
        assert!(
            steps[0].contains("\"TTL\":300") || steps[0].contains("300"),
            "{steps:?}"
        );
    }
}
