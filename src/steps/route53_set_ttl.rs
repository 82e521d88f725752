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
use crate::providers::route53::{self as r53p, batch_json, fqdn, RecordChange, RecordSet};
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
            action: "UPSERT",
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
) -> Result<(i64, aws_sdk_route53::Client, String, Vec<RecordSet>), StepError> {
    let ttl = p
        .ttl
        .filter(|t| *t >= 0)
        .ok_or_else(|| StepError::Params("`ttl` must be a whole number of seconds".into()))?;
    let r53 = crate::aws_client!(aws_sdk_route53, &cx.providers.aws().await?.config);
    let zone = r53p::zone_id(&r53, &cx.env.dns.domain).await?;
    let sets = r53p::record_sets(&r53, &zone, &p.record, &p.rtype).await?;
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
                &r53,
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
        let r53 = crate::aws_client!(aws_sdk_route53, &cx.providers.aws().await?.config);
        let zone = r53p::zone_id(&r53, &cx.env.dns.domain).await?;
        let now = r53p::record_sets(&r53, &zone, &p.record, &p.rtype).await?;
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
                    action: "UPSERT",
                    set: RecordSet {
                        ttl: o.ttl,
                        ..n.clone()
                    },
                })
            })
            .collect();
        restore(
            cx,
            (&r53, &zone),
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
        let upsert = before.cli_change("UPSERT");
        vec![format!("put the TTL of {} back: {upsert}", p.record)]
    }
}
