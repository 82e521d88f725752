//! The weighted pair `route53.cutover` manages, as pure functions of its parameters and the
//! record sets it reads: what shape the record is in (absent, simple, the pair), the members'
//! record sets, the change batch of each stage, the TTL changes, and the sets after a batch (to
//! predict later stages). No call to Route 53 here.

use super::Params;
use crate::providers::route53::{fqdn, Alias, RecordAction, RecordChange, RecordSet};
use crate::steps::StepError;

/// The record as the step found it: where traffic goes and how far it has moved.
pub(super) enum Shape {
    /// No record of this name and type.
    Absent,
    /// A simple record (no set identifier).
    Simple(RecordSet),
    /// The weighted pair this step manages: old member, new member's weight.
    Weighted { old: RecordSet, new_weight: i64 },
}

pub(super) fn classify(p: &Params, sets: &[RecordSet]) -> Result<Shape, StepError> {
    let label = format!("{} {}", p.rtype, fqdn(&p.record));
    match sets {
        [] => Ok(Shape::Absent),
        [one] if one.set_identifier.is_none() => Ok(Shape::Simple(one.clone())),
        _ => {
            let find = |id: &str| {
                sets.iter()
                    .find(|s| s.set_identifier.as_deref() == Some(id))
            };
            let others: Vec<String> = sets
                .iter()
                .filter(|s| {
                    s.set_identifier.as_deref() != Some(p.old_id.as_str())
                        && s.set_identifier.as_deref() != Some(p.new_id.as_str())
                })
                .map(|s| {
                    s.set_identifier
                        .clone()
                        .unwrap_or_else(|| "(simple)".into())
                })
                .collect();
            match (find(&p.old_id), find(&p.new_id)) {
                (Some(old), Some(new)) if others.is_empty() => {
                    if new.target() != new_member(p, 0, None).target() {
                        return Err(StepError::Check(format!(
                            "{label}: weighted member {} points at {}, not {}",
                            p.new_id,
                            new.target(),
                            p.to
                        )));
                    }
                    Ok(Shape::Weighted {
                        old: old.clone(),
                        new_weight: new.weight.unwrap_or(0),
                    })
                }
                _ => Err(StepError::Check(format!(
                    "{label} has record sets this step does not manage ({}); expected one simple record or the weighted pair {}/{}",
                    others.join(", "),
                    p.old_id,
                    p.new_id
                ))),
            }
        }
    }
}

/// The new target's weighted member.
pub(super) fn new_member(p: &Params, weight: i64, ttl: Option<i64>) -> RecordSet {
    let (values, alias, ttl) = match &p.alias {
        Some(a) => (
            vec![],
            Some(Alias {
                hosted_zone_id: a.hosted_zone_id.clone(),
                dns_name: p.to.clone(),
                evaluate_target_health: a.evaluate_target_health,
            }),
            None,
        ),
        None => (vec![p.to.clone()], None, ttl),
    };
    RecordSet {
        name: fqdn(&p.record),
        rtype: p.rtype.clone(),
        set_identifier: Some(p.new_id.clone()),
        weight: Some(weight),
        ttl,
        values,
        alias,
    }
}

/// The old target's weighted member, built from the record as it was.
pub(super) fn old_member(
    p: &Params,
    origin: &RecordSet,
    weight: i64,
    ttl: Option<i64>,
) -> RecordSet {
    RecordSet {
        set_identifier: Some(p.old_id.clone()),
        weight: Some(weight),
        ttl: if origin.alias.is_some() {
            None
        } else {
            ttl.or(origin.ttl)
        },
        ..origin.clone()
    }
}

/// The change batch that puts `new_weight` percent on the new target, from `now`.
pub(super) fn stage_changes(
    p: &Params,
    now: &[RecordSet],
    shape: &Shape,
    new_weight: i64,
    ttl: Option<i64>,
) -> Vec<RecordChange> {
    match shape {
        // No traffic to move: the record starts on the new target.
        Shape::Absent => vec![RecordChange {
            action: RecordAction::Create,
            set: RecordSet {
                set_identifier: None,
                weight: None,
                ..new_member(p, new_weight, ttl)
            },
        }],
        // UPSERT after the DELETE, not CREATE: Route 53 applies the batch in order either way,
        // and moto refuses a CREATE identical to one in its journal (a rehearsal run again)
        // while the name still has the simple record it is about to delete.
        Shape::Simple(origin) => vec![
            RecordChange {
                action: RecordAction::Delete,
                set: origin.clone(),
            },
            RecordChange {
                action: RecordAction::Upsert,
                set: old_member(p, origin, 100 - new_weight, ttl),
            },
            RecordChange {
                action: RecordAction::Upsert,
                set: new_member(p, new_weight, ttl),
            },
        ],
        Shape::Weighted { old, .. } => {
            let want = [
                old_member(p, old, 100 - new_weight, ttl),
                new_member(p, new_weight, ttl),
            ];
            want.into_iter()
                .filter(|w| !now.contains(w))
                .map(|set| RecordChange {
                    action: RecordAction::Upsert,
                    set,
                })
                .collect()
        }
    }
}

/// Percent of traffic already on the new target, and whether the record is simply on it (no
/// stage left to run).
pub(super) fn position(p: &Params, shape: &Shape) -> (i64, bool) {
    match shape {
        Shape::Simple(s) if s.target() == new_member(p, 0, None).target() => (100, true),
        Shape::Weighted { new_weight, .. } => (*new_weight, false),
        _ => (0, false),
    }
}

/// The TTL the records carry while traffic moves.
pub(super) fn moving_ttl(p: &Params, shape: &Shape) -> Option<i64> {
    p.ttl.or(match shape {
        Shape::Simple(s) => s.ttl,
        Shape::Weighted { old, .. } => old.ttl,
        Shape::Absent => Some(60),
    })
}

pub(super) fn weights_text(p: &Params, new_weight: i64) -> String {
    format!(
        "{} {} / {} {}",
        p.new_id,
        new_weight,
        p.old_id,
        100 - new_weight
    )
}

/// Weight per set identifier when the new target has `new` percent (the old one the rest).
pub(super) fn weights(p: &Params, new: i64) -> std::collections::BTreeMap<String, i64> {
    [(p.new_id.clone(), new), (p.old_id.clone(), 100 - new)]
        .into_iter()
        .collect()
}

/// `UPSERT`s that set every set's TTL to `ttl` (alias sets have none).
pub(super) fn ttl_changes(sets: &[RecordSet], ttl: i64) -> Vec<RecordChange> {
    sets.iter()
        .filter(|s| s.alias.is_none() && s.ttl != Some(ttl))
        .map(|s| RecordChange {
            action: RecordAction::Upsert,
            set: RecordSet {
                ttl: Some(ttl),
                ..s.clone()
            },
        })
        .collect()
}

/// `sets` after `changes`, as Route 53 would apply them (for predicting later stages).
pub(super) fn apply_locally(sets: &[RecordSet], changes: &[RecordChange]) -> Vec<RecordSet> {
    let mut out: Vec<RecordSet> = sets.to_vec();
    for c in changes {
        out.retain(|s| s.set_identifier != c.set.set_identifier);
        if c.action != RecordAction::Delete {
            out.push(c.set.clone());
        }
    }
    out.sort_by(|a, b| a.set_identifier.cmp(&b.set_identifier));
    out
}
