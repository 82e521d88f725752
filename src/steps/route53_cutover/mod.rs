//! `route53.cutover`: moves a record's traffic from its current (old) target to the new one in
//! weighted stages, e.g. 10, 50, 100 percent.
//!
//! 1. TTL guard: when the record's TTL was lowered (`ttl_lowered_at`, `previous_ttl`, from a
//!    `route53.set_ttl` step), answers cached under the old TTL may live until
//!    `lowered_at + previous_ttl`; before that the step refuses or waits (`on_ttl_pending`).
//! 2. Stage 1 replaces the simple record by a weighted pair in one change batch (`DELETE` the
//!    record, `CREATE` old and new members); later stages `UPSERT` the weights. Each batch is
//!    journaled before it is submitted and confirmed INSYNC before the stage's analysis window
//!    (see [`super::analysis`]) runs against the new target.
//! 3. A failed window, the panic flag or the deadline returns all weight to the old member
//!    (weights new 0 / old 100) before the step fails.
//! 4. After the last stage, the TTL goes back up to `restore_ttl`.
//!
//! Rollback restores the exact record sets observed by the run's first plan of this step.
//! CNAME and A/AAAA records are supported, with plain values or an alias target (an ALB).

use super::analysis::Analysis;
use super::dns::{restore, submit_and_wait, RecordBefore};
use super::journal::{
    AnalysisRecord, Insync, Journal, OldAnswersExpired, TrafficReturned, TrafficStage, TtlRestore,
    TtlWait,
};
use super::{
    Action, Applied, Change, Evidence, Kind, Literal, Plan, Restored, StepContext, StepError,
    WindowRole,
};
use crate::providers::route53::{
    self as r53p, batch_json, fqdn, ChangeStatus, RecordAction, RecordSet, Route53,
};
use crate::steps::context::Mode;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

mod pair;
use pair::{
    apply_locally, classify, moving_ttl, new_member, position, stage_changes, ttl_changes, weights,
    weights_text, Shape,
};

/// The `route53.cutover` kind.
pub struct Route53Cutover;

/// `with:` of `route53.cutover`.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Record name, e.g. shop.staging.example.com.
    record: String,
    /// The new target: a DNS name (CNAME, alias) or an address (A/AAAA).
    to: String,
    /// Record type: CNAME (default), A or AAAA.
    #[serde(default = "default_type", rename = "type")]
    rtype: String,
    /// Make the new member an alias record: {hosted_zone_id, evaluate_target_health (default true)}; type A or AAAA.
    #[serde(default)]
    alias: Option<AliasParams>,
    /// Percent of traffic on the new target per stage, ascending, ending at 100 (default [100]).
    #[serde(default = "default_stages")]
    stages: Vec<i64>,
    /// TTL in seconds of the weighted records while traffic moves (default: the record's current TTL).
    #[serde(default, deserialize_with = "super::rendered::opt_int")]
    ttl: Option<i64>,
    /// TTL in seconds set after the last stage passed (default: leave it).
    #[serde(default, deserialize_with = "super::rendered::opt_int")]
    restore_ttl: Option<i64>,
    /// RFC 3339 time the TTL was lowered (route53.set_ttl's lowered_at).
    #[serde(default, deserialize_with = "super::rendered::opt_text")]
    ttl_lowered_at: Option<String>,
    /// The TTL in seconds before it was lowered (route53.set_ttl's previous_ttl).
    #[serde(default, deserialize_with = "super::rendered::opt_int")]
    previous_ttl: Option<i64>,
    /// When the old TTL has not yet elapsed since the lowering: refuse (default) or wait.
    #[serde(default)]
    on_ttl_pending: OnTtlPending,
    /// Analysis window after each stage: HTTP probes {url, samples, interval, min_success_rate, max_p95_ms, consecutive, expect_status} and/or `metrics` (Prometheus, CloudWatch); required with more than one stage.
    #[serde(default)]
    analysis: Option<Analysis>,
    /// Set identifier of the old target's weighted record (default `legacy-<record>`: unique per record, so services sharing a hosted zone never share one; moto deletes a weighted set by its identifier across every name of the zone).
    #[serde(default)]
    old_id: String,
    /// Set identifier of the new target's weighted record (default `aws-<record>`).
    #[serde(default)]
    new_id: String,
    /// After the last stage, wait one stage TTL (seconds) so that no resolver still holds an answer naming the old target before the step completes (default false); put it before a database window so no user meets a frozen legacy database.
    #[serde(default)]
    wait_old_answers: bool,
}

/// `alias:` of `route53.cutover`.
#[derive(Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AliasParams {
    /// The hosted zone of the alias target (the load balancer's canonical zone).
    hosted_zone_id: String,
    /// Whether Route 53 evaluates the target's health (default true).
    #[serde(default = "yes")]
    evaluate_target_health: bool,
}

fn default_type() -> String {
    "CNAME".into()
}
fn default_stages() -> Vec<i64> {
    vec![100]
}
/// What `route53.cutover` does when the record's old TTL has not yet elapsed since it was
/// lowered (answers cached under it may still name the old target).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnTtlPending {
    /// Fail the step: nothing moves (start the run later).
    #[default]
    Refuse,
    /// Wait until the old TTL has elapsed, then move.
    Wait,
}
/// Fills the default set identifiers from the record's name (without the final dot).
fn with_default_ids(mut p: Params) -> Params {
    let name = p.record.trim_end_matches('.').to_string();
    if p.old_id.is_empty() {
        p.old_id = format!("legacy-{name}");
    }
    if p.new_id.is_empty() {
        p.new_id = format!("aws-{name}");
    }
    p
}
fn yes() -> bool {
    true
}

const TYPES: &[&str] = &["CNAME", "A", "AAAA"];

/// Seconds until answers cached under the old TTL have expired (0 when they have, or when no
/// lowering is on record).
fn ttl_pending(p: &Params) -> Result<i64, StepError> {
    let (Some(at), Some(prev)) = (&p.ttl_lowered_at, p.previous_ttl) else {
        return Ok(0);
    };
    let at = chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
        StepError::Params(format!(
            "ttl_lowered_at `{at}` is not an RFC 3339 time: {e}"
        ))
    })?;
    let until = at.with_timezone(&chrono::Utc) + chrono::Duration::seconds(prev);
    // Whole seconds, rounded up: 0.4 s still to wait is 1 s, never 0.
    let ms = (until - chrono::Utc::now()).num_milliseconds().max(0);
    Ok((ms + 999) / 1000)
}

/// `p` with its default set identifiers, checked.
fn prepared(p: &Params) -> Result<Params, StepError> {
    let p = with_default_ids(p.clone());
    let problems = check(&p);
    if problems.is_empty() {
        Ok(p)
    } else {
        Err(StepError::Params(problems.join("; ")))
    }
}

/// Whether `to` can be the value of a record of type `rtype` without `alias:` (RFC 1035 §3.4.1:
/// an A record holds an IPv4 address; RFC 3596: AAAA an IPv6 address; a CNAME holds a name).
fn value_problem(rtype: &str, to: &str) -> Option<String> {
    let to = to.trim();
    match rtype {
        "A" if to.parse::<std::net::Ipv4Addr>().is_err() => Some(format!(
            "type A needs an IPv4 address, not `{to}`; for a load balancer's host name use `type: CNAME`, or `alias:` with its hosted zone id"
        )),
        "AAAA" if to.parse::<std::net::Ipv6Addr>().is_err() => Some(format!(
            "type AAAA needs an IPv6 address, not `{to}`; for a load balancer's host name use `type: CNAME`, or `alias:` with its hosted zone id"
        )),
        "CNAME" if to.parse::<std::net::IpAddr>().is_ok() => Some(format!(
            "type CNAME needs a host name, not the address `{to}`; use `type: A` or `AAAA`"
        )),
        _ => None,
    }
}

/// Range and consistency checks of typed parameters.
fn check(p: &Params) -> Vec<String> {
    let mut out = Vec::new();
    if !TYPES.contains(&p.rtype.as_str()) {
        out.push(format!(
            "type `{}` is not supported (valid: {})",
            p.rtype,
            TYPES.join(", ")
        ));
    }
    if p.alias.is_some() && p.rtype == "CNAME" {
        out.push("an alias target needs type A or AAAA".into());
    }
    if p.alias.is_none() {
        out.extend(value_problem(&p.rtype, &p.to));
    }
    out.extend(check_stages(&p.stages));
    if p.stages.len() > 1 && p.analysis.is_none() {
        out.push(
            "stages need an `analysis` window: traffic moves to the next stage only on evidence"
                .into(),
        );
    }
    if let Some(a) = &p.analysis {
        out.extend(a.problems());
    }
    if p.old_id == p.new_id {
        out.push("old_id and new_id must differ".into());
    }
    out
}

fn check_stages(stages: &[i64]) -> Vec<String> {
    let mut out = Vec::new();
    if stages.last() != Some(&100) {
        out.push(format!("stages {stages:?} must end at 100"));
    }
    if stages.iter().any(|s| !(1..=100).contains(s)) || stages.windows(2).any(|w| w[0] >= w[1]) {
        out.push(format!(
            "stages {stages:?} must rise strictly, each between 1 and 100"
        ));
    }
    out
}

async fn client(cx: &StepContext<'_>) -> Result<(std::sync::Arc<dyn Route53>, String), StepError> {
    let r53 = cx.providers.route53().await?;
    let zone = r53.zone_id(&cx.env.dns.domain).await?;
    Ok((r53, zone))
}

/// Puts all weight back on the old member after a failed stage; journals the batch first.
async fn return_to_old(
    cx: &StepContext<'_>,
    p: &Params,
    r53: &dyn Route53,
    zone: &str,
    stage: usize,
    why: &str,
) -> Result<Value, StepError> {
    let now = r53.record_sets(zone, &p.record, &p.rtype).await?;
    let shape = classify(p, &now)?;
    let ttl = moving_ttl(p, &shape);
    let changes = match &shape {
        Shape::Weighted { .. } => stage_changes(p, &now, &shape, 0, ttl),
        _ => vec![],
    };
    if changes.is_empty() {
        return Ok(json!(null));
    }
    (cx.journal)(Journal::TrafficReturned(TrafficReturned {
        stage,
        reason: why.to_string(),
        weights: weights(p, 0),
        change_batch: batch_json(&changes),
    }))?;
    let id = r53
        .submit(
            zone,
            &changes,
            &format!("cutover run {}: return traffic to {}", cx.run_id, p.old_id),
        )
        .await?;
    // The deadline may have passed already: wait for INSYNC without the safe point's checks.
    for _ in 0..60 {
        if r53.change_status(&id).await? == ChangeStatus::Insync {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let after = r53.record_sets(zone, &p.record, &p.rtype).await?;
    (cx.journal)(Journal::TrafficReturnedInsync(Insync {
        stage,
        change_id: id.clone(),
        observed: json!(after),
    }))?;
    Ok(json!(id))
}

/// What a dry-run predicts of [`Outputs`].
#[derive(serde::Serialize)]
pub struct Predicted {
    /// The hosted zone.
    zone_id: String,
    /// The record's fully qualified name.
    record: String,
    /// The new target.
    value: String,
}

/// What `route53.cutover` returns.
#[derive(serde::Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// Every change batch submitted, in order (stages, then the TTL's restore).
    change_batches: Vec<Value>,
    /// The stages (percent of traffic on the new target) this run moved through.
    stages: Vec<i64>,
    /// The hosted zone.
    zone_id: String,
    /// The record's fully qualified name.
    record: String,
    /// The new target.
    value: String,
}

#[async_trait]
impl Kind for Route53Cutover {
    type Params = Params;
    type Outputs = Outputs;
    /// `None` when the step never planned (nothing observed, nothing to restore).
    type Before = Option<RecordBefore>;
    type Predicted = Predicted;
    const NAME: &'static str = "route53.cutover";
    const PURPOSE: &'static str = "Move the service's DNS to the AWS target in weighted stages, each INSYNC and analysed, returning all weight on failure";
    const UNDO: &'static str = "Restore the exact record sets observed before the run in one change batch and wait for INSYNC";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(900);

    fn window_role(&self, _params: Option<&Literal<Params>>) -> WindowRole {
        WindowRole::MoveTraffic
    }

    fn check(&self, l: &Literal<Params>) -> Vec<String> {
        let p = &l.params;
        let mut out = Vec::new();
        if l.known("stages") {
            out.extend(check_stages(&p.stages));
            if p.stages.len() > 1 && p.analysis.is_none() {
                out.push("stages need an `analysis` window: traffic moves to the next stage only on evidence".into());
            }
        }
        if l.known("type") && !TYPES.contains(&p.rtype.as_str()) {
            out.push(format!(
                "type `{}` is not supported (valid: {})",
                p.rtype,
                TYPES.join(", ")
            ));
        }
        if l.known("type") && l.known("to") && p.alias.is_none() {
            out.extend(value_problem(&p.rtype, &p.to));
        }
        out
    }

    async fn plan(
        &self,
        cx: &StepContext,
        p: &Params,
    ) -> Result<Plan<Option<RecordBefore>, Predicted>, StepError> {
        let p = prepared(p)?;
        let (r53, zone) = client(cx).await?;
        let live = r53.record_sets(&zone, &p.record, &p.rtype).await?;
        // A dry-run predicts the record as the earlier steps leave it: a `route53.set_ttl` before
        // this step (named by `ttl_lowered_at`) will have lowered its TTL to `ttl`.
        let mut now = live.clone();
        if cx.mode == Mode::DryRun && p.ttl_lowered_at.is_some() {
            if let Some(t) = p.ttl {
                for s in now.iter_mut() {
                    s.ttl = s.ttl.map(|x| x.min(t));
                }
            }
        }
        let label = format!("{} {}", p.rtype, fqdn(&p.record));
        let mut shape = classify(&p, &now)?;
        let ttl = moving_ttl(&p, &shape);
        let mut changes = Vec::new();
        let pending = ttl_pending(&p)?;
        if p.previous_ttl.is_some() && p.ttl_lowered_at.is_some() {
            changes.push(Change::new(
                Action::Check,
                format!("{label} old TTL"),
                if pending == 0 {
                    format!("answers cached under the old TTL ({}s) have expired", p.previous_ttl.unwrap_or(0))
                } else if p.on_ttl_pending == OnTtlPending::Wait {
                    format!("would wait {pending}s for answers cached under the old TTL ({}s) to expire", p.previous_ttl.unwrap_or(0))
                } else {
                    format!("WOULD REFUSE if started now: answers cached under the old TTL ({}s) live {pending}s more", p.previous_ttl.unwrap_or(0))
                },
            ));
        }
        let (current, finished) = position(&p, &shape);
        let mut sets = now.clone();
        for (i, &stage) in p.stages.iter().enumerate() {
            if stage < current || finished {
                continue;
            }
            if stage > current {
                let batch = stage_changes(&p, &sets, &shape, stage, ttl);
                changes.push(
                    Change::new(
                        Action::Update,
                        label.clone(),
                        format!(
                            "stage {}/{}: {} (TTL {}s) in zone {zone}",
                            i + 1,
                            p.stages.len(),
                            weights_text(&p, stage),
                            ttl.unwrap_or(0)
                        ),
                    )
                    .with_document(batch_json(&batch)),
                );
                sets = apply_locally(&sets, &batch);
                shape = classify(&p, &sets)?;
                if matches!(shape, Shape::Simple(_)) {
                    break; // created on the new target: nothing to shift
                }
            }
            if let Some(a) = &p.analysis {
                changes.push(Change::new(
                    Action::Check,
                    format!("stage {}/{} analysis", i + 1, p.stages.len()),
                    a.describe(),
                ));
            }
        }
        if let Some(restore) = p.restore_ttl {
            let raise = ttl_changes(&sets, restore);
            if !raise.is_empty() {
                changes.push(
                    Change::new(
                        Action::Update,
                        label.clone(),
                        format!(
                            "after the last stage: TTL {}s → {restore}s",
                            ttl.unwrap_or(0)
                        ),
                    )
                    .with_document(batch_json(&raise)),
                );
            }
        }
        if !changes.iter().any(|c| c.action == Action::Update) {
            changes.push(Change::new(
                Action::None,
                label,
                format!("already on {}", p.to),
            ));
        }
        Ok(Plan {
            changes,
            before: Some(RecordBefore {
                zone_id: zone.clone(),
                sets: live,
            }),
            predicted: Some(Predicted {
                zone_id: zone,
                record: fqdn(&p.record),
                value: p.to.clone(),
            }),
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Option<RecordBefore>,
    ) -> Result<Applied<Outputs>, StepError> {
        let p = prepared(p)?;
        let (r53, zone) = client(cx).await?;
        let label = format!("{} {}", p.rtype, fqdn(&p.record));

        let mut pending = ttl_pending(&p)?;
        if pending > 0 {
            let prev = p.previous_ttl.unwrap_or(0);
            let at = p.ttl_lowered_at.clone().unwrap_or_default();
            if p.on_ttl_pending != OnTtlPending::Wait {
                return Err(StepError::Gate(format!(
                    "refused: the TTL of {label} was lowered from {prev}s at {at}; answers cached before then live {pending}s more (set on_ttl_pending: wait, or start later)"
                )));
            }
            if pending as u64 > cx.remaining().as_secs() {
                return Err(StepError::Gate(format!(
                    "refused: answers cached under the old TTL ({prev}s, lowered at {at}) live {pending}s more, beyond this step's deadline ({}s left); raise its `timeout`",
                    cx.remaining().as_secs()
                )));
            }
            (cx.journal)(Journal::TtlWait(TtlWait {
                record: fqdn(&p.record),
                previous_ttl: prev,
                lowered_at: at.clone(),
                wait_s: pending,
            }))?;
            while pending > 0 {
                cx.check_deadline("answers cached under the old TTL to expire")?;
                (cx.progress)(&format!("waiting {pending}s more for answers cached under the old TTL ({prev}s) to expire"));
                cx.wait(
                    Duration::from_secs(pending.min(5) as u64),
                    "answers cached under the old TTL to expire",
                )
                .await?;
                pending = ttl_pending(&p)?;
            }
        }

        let mut now = r53.record_sets(&zone, &p.record, &p.rtype).await?;
        let mut shape = classify(&p, &now)?;
        let ttl = moving_ttl(&p, &shape);
        let (mut current, finished) = position(&p, &shape);
        let mut batches = Vec::new();
        let mut stages_done = Vec::new();
        let n = p.stages.len();
        for (i, &stage) in p.stages.iter().enumerate() {
            if stage < current || finished || matches!(shape, Shape::Simple(_)) && current == 100 {
                continue;
            }
            let name = format!("stage {}/{n} ({stage}%)", i + 1);
            if stage > current {
                let changes = stage_changes(&p, &now, &shape, stage, ttl);
                let batch = batch_json(&changes);
                (cx.journal)(Journal::TrafficStage(TrafficStage {
                    stage: i + 1,
                    of: n,
                    weights: weights(&p, stage),
                    change_batch: batch.clone(),
                }))?;
                let submitted = submit_and_wait(
                    cx,
                    &*r53,
                    &zone,
                    &changes,
                    &format!("cutover run {} step {}: {name}", cx.run_id, cx.step_id),
                )
                .await;
                let id = match submitted {
                    Ok(id) => id,
                    Err(e) => {
                        return_to_old(cx, &p, &*r53, &zone, i + 1, &e.to_string()).await?;
                        return Err(e);
                    }
                };
                now = r53.record_sets(&zone, &p.record, &p.rtype).await?;
                (cx.journal)(Journal::TrafficStageInsync(Insync {
                    stage: i + 1,
                    change_id: id.clone(),
                    observed: json!(now),
                }))?;
                batches.push(batch);
                shape = classify(&p, &now)?;
                current = if matches!(shape, Shape::Simple(_)) {
                    100
                } else {
                    stage
                };
            }
            if let Some(a) = &p.analysis {
                let verdict = match a.run(cx, &name).await {
                    Ok(v) => v,
                    Err(e) => {
                        return_to_old(cx, &p, &*r53, &zone, i + 1, &e.to_string()).await?;
                        return Err(e);
                    }
                };
                (cx.journal)(Journal::Analysis(AnalysisRecord {
                    stage: i + 1,
                    of: n,
                    url: a.url.clone().unwrap_or_default(),
                    verdict: verdict.clone(),
                }))?;
                if !verdict.passed {
                    let why = format!("{name} analysis failed: {}", verdict.reasons.join("; "));
                    return_to_old(cx, &p, &*r53, &zone, i + 1, &why).await?;
                    return Err(StepError::Check(format!(
                        "{why}; all weight returned to {}",
                        p.old_id
                    )));
                }
            }
            stages_done.push(stage);
        }
        if p.wait_old_answers && !stages_done.is_empty() {
            // Answers cached before the last stage name the old target for at most one TTL.
            let ttl = p.ttl.unwrap_or(60).max(0) as u64;
            let until = tokio::time::Instant::now() + Duration::from_secs(ttl);
            let mut last = None::<tokio::time::Instant>;
            while tokio::time::Instant::now() < until {
                cx.check_deadline("answers naming the old target to expire")?;
                if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    last = Some(tokio::time::Instant::now());
                    (cx.progress)(&format!(
                        "waiting {} s more for answers naming {} to expire (TTL {ttl} s)",
                        until
                            .saturating_duration_since(tokio::time::Instant::now())
                            .as_secs(),
                        p.old_id
                    ));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (cx.journal)(Journal::TrafficOldAnswersExpired(OldAnswersExpired { ttl }))?;
        }
        if let Some(restore) = p.restore_ttl {
            let raise = ttl_changes(&now, restore);
            if !raise.is_empty() {
                let batch = batch_json(&raise);
                (cx.journal)(Journal::TrafficTtlRestore(TtlRestore {
                    ttl: restore,
                    change_batch: batch.clone(),
                }))?;
                submit_and_wait(
                    cx,
                    &*r53,
                    &zone,
                    &raise,
                    &format!(
                        "cutover run {} step {}: TTL back to {restore}s",
                        cx.run_id, cx.step_id
                    ),
                )
                .await?;
                batches.push(batch);
            }
        }
        let summary = if batches.is_empty() {
            format!("{label} already on {}", p.to)
        } else {
            format!(
                "{label} → {} in stages {:?}, each INSYNC{}",
                p.to,
                stages_done,
                if p.analysis.is_some() {
                    " and analysed"
                } else {
                    ""
                }
            )
        };
        Ok(Applied::new(Outputs {
            change_batches: batches,
            stages: stages_done,
            zone_id: zone,
            record: fqdn(&p.record),
            value: p.to.clone(),
        })
        .summary(summary))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        p: &Params,
        _outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let p = prepared(p)?;
        let (r53, zone) = client(cx).await?;
        let now = r53.record_sets(&zone, &p.record, &p.rtype).await?;
        let target = new_member(&p, 0, None).target();
        let on_new = now
            .iter()
            .any(|s| s.target() == target && (s.set_identifier.is_none() || s.weight == Some(100)))
            && now
                .iter()
                .all(|s| s.target() == target || s.weight == Some(0));
        if !on_new {
            return Err(StepError::Check(format!(
                "{} {} does not send all traffic to {}: {}",
                p.rtype,
                fqdn(&p.record),
                p.to,
                now.iter()
                    .map(|s| format!(
                        "{}={}",
                        s.set_identifier.as_deref().unwrap_or("simple"),
                        s.target()
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Evidence {
            facts: vec![("observed".into(), json!(now))],
            summary: None,
        })
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        before: &Option<RecordBefore>,
        _outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let p = with_default_ids(p.clone());
        let Some(before) = before else {
            return Ok(vec![]);
        };
        let old = before.sets.clone();
        let (r53, zone) = client(cx).await?;
        let now = r53.record_sets(&zone, &p.record, &p.rtype).await?;
        let changes = r53p::diff(&now, &old);
        let show = |sets: &[RecordSet]| {
            if sets.is_empty() {
                return "(none)".to_string();
            }
            sets.iter()
                .map(|s| match (&s.set_identifier, s.weight) {
                    (Some(id), Some(w)) => format!("{id} {w} → {}", s.target()),
                    _ => format!("{} TTL {}s", s.target(), s.ttl.unwrap_or(0)),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        restore(
            cx,
            (&*r53, &zone),
            (&p.record, &p.rtype),
            &now,
            &changes,
            &format!("cutover rollback of run {}", cx.run_id),
            |now, after| format!("{} ⇒ {}", show(now), show(after)),
        )
        .await
    }

    fn manual_undo(&self, p: &Params, before: &Option<RecordBefore>, _run_id: &str) -> Vec<String> {
        let before = before.clone().unwrap_or_default();
        let zone = if before.zone_id.is_empty() {
            "ZONE"
        } else {
            before.zone_id.as_str()
        };
        let record = &p.record;
        let create = before.cli_change(RecordAction::Create);
        vec![
            format!("list what {record} holds now: aws route53 list-resource-record-sets --hosted-zone-id {zone} --query \"ResourceRecordSets[?Name=='{}']\"", fqdn(record)),
            format!("delete those sets, then create exactly the sets from before the run, in one change batch: {create} (prepend a DELETE for each set listed above)"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(v: Value) -> Params {
        with_default_ids(serde_json::from_value(v).unwrap())
    }

    fn simple() -> RecordSet {
        RecordSet {
            name: "shop.example.com.".into(),
            rtype: "CNAME".into(),
            set_identifier: None,
            weight: None,
            ttl: Some(60),
            values: vec!["legacy.example.net".into()],
            alias: None,
        }
    }

    #[test]
    fn stages_move_a_simple_record_into_a_weighted_pair_then_upsert_weights() {
        let p = params(
            json!({"record": "shop.example.com", "to": "alb.example.net", "stages": [10, 50, 100], "analysis": {"url": "http://x"}}),
        );
        let now = vec![simple()];
        let shape = classify(&p, &now).unwrap();
        let first = stage_changes(&p, &now, &shape, 10, Some(60));
        let actions: Vec<&str> = first.iter().map(|c| c.action.as_str()).collect();
        assert_eq!(actions, ["DELETE", "UPSERT", "UPSERT"]);
        assert_eq!(first[1].set.weight, Some(90));
        assert_eq!(first[2].set.weight, Some(10));
        let after = apply_locally(&now, &first);
        let shape = classify(&p, &after).unwrap();
        assert!(matches!(shape, Shape::Weighted { new_weight: 10, .. }));
        let second = stage_changes(&p, &after, &shape, 50, Some(60));
        assert!(second.iter().all(|c| c.action == RecordAction::Upsert));
        assert_eq!(
            second
                .iter()
                .map(|c| c.set.weight.unwrap())
                .collect::<Vec<_>>(),
            [50, 50]
        );
    }

    #[test]
    fn stage_lists_must_rise_to_100() {
        assert!(check_stages(&[10, 50, 100]).is_empty());
        assert_eq!(check_stages(&[10, 50]).len(), 1);
        assert_eq!(check_stages(&[50, 10, 100]).len(), 1);
        assert_eq!(check_stages(&[0, 100]).len(), 1);
        let p = params(json!({"record": "r", "to": "t", "stages": [10, 100]}));
        assert!(check(&p).iter().any(|m| m.contains("analysis")));
    }

    #[test]
    fn the_ttl_guard_counts_from_the_lowering() {
        let at = (chrono::Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
        let p =
            params(json!({"record": "r", "to": "t", "ttl_lowered_at": at, "previous_ttl": "300"}));
        let left = ttl_pending(&p).unwrap();
        assert!((298..=299).contains(&left), "{left}");
        // Less than a second left is still a second to wait (rounded up, never down to 0).
        let at = (chrono::Utc::now() - chrono::Duration::milliseconds(44_600)).to_rfc3339();
        let p =
            params(json!({"record": "r", "to": "t", "ttl_lowered_at": at, "previous_ttl": "45"}));
        assert_eq!(ttl_pending(&p).unwrap(), 1);
        let p = params(
            json!({"record": "r", "to": "t", "ttl_lowered_at": "none", "previous_ttl": "300"}),
        );
        assert_eq!(ttl_pending(&p).unwrap(), 0);
    }

    #[test]
    fn an_alias_member_has_no_ttl_and_the_old_member_keeps_its_values() {
        let p = params(
            json!({"record": "shop.example.com", "to": "dualstack.alb.example.net", "type": "A", "alias": {"hosted_zone_id": "Z35SXDOTRQ7X7K"}}),
        );
        let origin = RecordSet {
            rtype: "A".into(),
            values: vec!["203.0.113.7".into()],
            ..simple()
        };
        let shape = Shape::Simple(origin);
        let c = stage_changes(&p, &[], &shape, 100, Some(60));
        assert_eq!(c[1].set.values, ["203.0.113.7"]);
        assert_eq!(c[1].set.weight, Some(0));
        assert!(c[2].set.alias.is_some() && c[2].set.ttl.is_none());
    }
}

/// The kind's plan, apply (twice), rollback and failed analysis against a Route 53 in memory
/// and a local HTTP server as the new target's health endpoint.
#[cfg(test)]
mod against_fakes {
    use super::*;
    use crate::steps::testing::{http_statuses, FakeRoute53, Harness};
    use std::sync::Arc;

    const RECORD: &str = "shop.staging.example-shop.com";

    /// A health endpoint that answers every request with `status`.
    async fn health(status: u16) -> String {
        http_statuses(vec![status]).await.0
    }

    fn params(url: &str) -> Params {
        serde_json::from_value(json!({
            "record": RECORD,
            "to": "shop-staging.us-east-1.elb.amazonaws.com",
            "stages": [50, 100],
            "ttl": 1,
            "analysis": {"url": url, "samples": 2, "interval": "10ms", "consecutive": 1},
        }))
        .unwrap()
    }

    fn setup() -> (Harness, Arc<FakeRoute53>) {
        let r53 = FakeRoute53::insync(vec![FakeRoute53::cname(RECORD, "legacy.example.net", 1)]);
        let fake = r53.clone();
        (Harness::new(|p| p.with_route53(fake)), r53)
    }

    /// Weight per set identifier now (a simple record as `simple`).
    fn weights_now(r53: &FakeRoute53) -> Vec<(String, Option<i64>)> {
        let mut w: Vec<_> = r53
            .sets
            .lock()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s.set_identifier.clone().unwrap_or_else(|| "simple".into()),
                    s.weight,
                )
            })
            .collect();
        w.sort();
        w
    }

    #[tokio::test]
    async fn moves_traffic_in_analysed_stages_once_and_rollback_restores_the_record() {
        let (h, r53) = setup();
        let cx = h.cx();
        let p = params(&health(200).await);
        let plan = Route53Cutover.plan(&cx, &p).await.unwrap();
        assert!(!plan.changes.is_empty());
        let before = plan.before.clone();
        assert_eq!(before.as_ref().unwrap().sets.len(), 1);
        assert!(
            r53.submitted.lock().unwrap().is_empty(),
            "a plan changes nothing"
        );

        let first = Route53Cutover.apply(&cx, &p, &before).await.unwrap();
        assert_eq!(first.outputs.stages, vec![50, 100]);
        let new_id = format!("aws-{RECORD}");
        let old_id = format!("legacy-{RECORD}");
        assert_eq!(
            weights_now(&r53),
            vec![(new_id.clone(), Some(100)), (old_id.clone(), Some(0))]
        );
        let batches = r53.submitted.lock().unwrap().len();
        assert_eq!(batches, 2, "one batch per stage");
        let journal = h.journal.lock().unwrap().clone();
        let stages = journal
            .iter()
            .filter(|j| matches!(j, Journal::TrafficStage(_)))
            .count();
        assert_eq!(stages, 2, "{journal:?}");

        // A re-run after a crash finds all weight moved: nothing is submitted again.
        let again = Route53Cutover.apply(&cx, &p, &before).await.unwrap();
        assert_eq!(r53.submitted.lock().unwrap().len(), batches);
        assert_eq!(again.outputs.zone_id, "Z1");

        let restored = Route53Cutover
            .rollback(&cx, &p, &before, Some(&first.outputs))
            .await
            .unwrap();
        assert_eq!(restored.len(), 1, "{restored:?}");
        assert_eq!(weights_now(&r53), vec![("simple".to_string(), None)]);
        assert_eq!(
            r53.sets.lock().unwrap()[0].values,
            vec!["legacy.example.net".to_string()]
        );
    }

    #[tokio::test]
    async fn a_failed_analysis_returns_all_weight_to_the_old_target_and_fails_the_step() {
        let (h, r53) = setup();
        let cx = h.cx();
        let p = params(&health(503).await);
        let plan = Route53Cutover.plan(&cx, &p).await.unwrap();
        let err = Route53Cutover
            .apply(&cx, &p, &plan.before)
            .await
            .err()
            .expect("the analysis fails");
        assert!(err.to_string().contains("503"), "{err}");
        let new_id = format!("aws-{RECORD}");
        let old_id = format!("legacy-{RECORD}");
        assert_eq!(
            weights_now(&r53),
            vec![(new_id, Some(0)), (old_id, Some(100))]
        );
        let journal = h.journal.lock().unwrap().clone();
        assert!(
            journal
                .iter()
                .any(|j| matches!(j, Journal::TrafficReturned(r) if r.stage == 1)),
            "{journal:?}"
        );
    }
}
