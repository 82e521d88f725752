//! What the two Route 53 kinds (`route53.set_ttl`, `route53.cutover`) share: submitting a change
//! batch and waiting for INSYNC at safe points, reading record sets back from rollback
//! material, and a rollback that restores record sets and reports them by fingerprint.
//!
//! No kind lives here and nothing here decides what to change: the kinds pass the changes in.

use super::{Restored, StepContext, StepError};
use crate::providers::route53::{
    self as r53p, batch_json, fqdn, ChangeStatus, RecordAction, RecordChange, RecordSet, Route53,
};
use std::time::Duration;

/// Submits `changes` and polls GetChange every 2 s until INSYNC; each poll is a safe point
/// (deadline, panic flag). Returns the change id.
///
/// # Errors
/// The API error, or [`StepError::Timeout`]/[`StepError::Panic`] from the safe point.
pub(super) async fn submit_and_wait(
    cx: &StepContext<'_>,
    r53: &dyn Route53,
    zone: &str,
    changes: &[RecordChange],
    comment: &str,
) -> Result<String, StepError> {
    let id = r53.submit(zone, changes, comment).await?;
    loop {
        let status = r53.change_status(&id).await?;
        if status == ChangeStatus::Insync {
            return Ok(id);
        }
        let awaiting = format!("change {id} to be INSYNC (now {status})");
        cx.check_deadline(&awaiting)?;
        (cx.progress)(&format!(
            "change {id} is {status}; waiting for INSYNC up to {}s",
            cx.remaining().as_secs()
        ));
        cx.wait(Duration::from_secs(2), &awaiting).await?;
    }
}

/// Rollback material of a Route 53 kind: the record's sets as they were before the run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RecordBefore {
    /// The hosted zone's id.
    #[serde(default)]
    pub zone_id: String,
    /// Every set of the record's name and type.
    #[serde(default)]
    pub sets: Vec<RecordSet>,
}

impl RecordBefore {
    /// The aws CLI command that submits every set of `self` with `action` (`UPSERT`,
    /// `CREATE`): what a person runs when a rollback could not.
    pub fn cli_change(&self, action: RecordAction) -> String {
        let zone = if self.zone_id.is_empty() {
            "ZONE"
        } else {
            &self.zone_id
        };
        let changes: Vec<RecordChange> = self
            .sets
            .iter()
            .cloned()
            .map(|set| RecordChange { action, set })
            .collect();
        format!(
            "aws route53 change-resource-record-sets --hosted-zone-id {zone} --change-batch '{}'",
            batch_json(&changes)
        )
    }
}

/// A rollback's change: submits `changes` (nothing when empty), waits for INSYNC, reads the
/// record back and reports it with fingerprints of the sets before (`now`) and after;
/// `describe(now, after)` words the change.
///
/// # Errors
/// As [`submit_and_wait`].
pub(super) async fn restore(
    cx: &StepContext<'_>,
    (r53, zone): (&dyn Route53, &str),
    (record, rtype): (&str, &str),
    now: &[RecordSet],
    changes: &[RecordChange],
    comment: &str,
    describe: impl Fn(&[RecordSet], &[RecordSet]) -> String,
) -> Result<Vec<Restored>, StepError> {
    if changes.is_empty() {
        return Ok(vec![]);
    }
    let id = submit_and_wait(cx, r53, zone, changes, comment).await?;
    let after = r53.record_sets(zone, record, rtype).await?;
    Ok(vec![Restored {
        object: format!("{rtype} {}", fqdn(record)),
        before: r53p::fingerprint(now),
        after: r53p::fingerprint(&after),
        detail: format!("{} (change {id} INSYNC)", describe(now, &after)),
    }])
}
