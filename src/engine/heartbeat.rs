//! The rehearsal heartbeat: writers that stand for the application's users on every path that
//! serves them, started before the first step (and again for a rehearsal's `cutover rollback`):
//!
//! - `aws`: reads the application's database URL from its Kubernetes Secret and uses a new
//!   value when the application's pods would (`heartbeat.reload`, [`super::reload`]: after the
//!   rollout, after the kubelet's refresh, or never behind a pooler); its gaps always count.
//! - `legacy` (when the runbook's `heartbeat.legacy` is set): writes through the legacy
//!   application's own database URL; its gaps count only while DNS, or an answer a resolver may
//!   still cache (the record set's TTL), names the legacy target, i.e. while users are still
//!   sent there.
//!
//! When the run finishes, one `heartbeat` record says what they measured: the longest time any
//! path's writes were refused while it served users (the write outage users saw) and every
//! acknowledged write missing from the database the Secret names at the end.
//!
//! While steps run, the writers' live figures are the run's [`WriteWatch`]: an outage longer than
//! `heartbeat.max_write_outage` on a path that serves users fails the step at its next safe
//! point; after the last step, [`settle`] waits for every such path to write again.
//!
//! Owns the bridge between the runbook's `heartbeat:` section, the Kubernetes and Route 53
//! clients and the writers; must not interpret step results.

use super::event::{
    Event, HeartbeatFailed, HeartbeatRecord, HeartbeatStarted, LegacyPath, PathFigures, WriteOutage,
};
use super::executor::{EngineError, Executor};
use super::reload::{Observed, RestartAdoption, VolumeAdoption};
use crate::config::Reload;
use crate::providers::postgres::heartbeat::{
    self, Heartbeat, Options, Report, ServedSource, UrlSource,
};
use crate::providers::postgres::ConnParts;
use crate::runbook::template;
use crate::steps::context::Mode;
use crate::steps::context::WriteWatch;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

/// How long a write may wait for its acknowledgement behind a pooler before it counts as
/// failed: an application's statement timeout (30 s; PgBouncer's own `query_wait_timeout` is
/// 120 s by default).
const POOLER_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// One path's writer.
struct Path {
    /// `aws` or `legacy`.
    name: &'static str,
    writer: Heartbeat,
    /// The `writer` column value of its rows.
    id: String,
}

/// The writers running for this run.
pub struct Running {
    paths: Vec<Path>,
    table: String,
    /// `heartbeat.max_write_outage`.
    budget: Duration,
    /// How the application reloads and the budget, as the `heartbeat` record repeats them
    /// beside the outage.
    reload: ReloadFigures,
}

/// How the application reloads, as the `heartbeat` record repeats it.
struct ReloadFigures {
    reload: Reload,
    /// With `restart`: the Deployments that read the Secret.
    deployments: Option<Vec<String>>,
    /// With `volume`: the kubelet's delay, ms.
    volume_delay_ms: Option<u64>,
    /// `heartbeat.max_write_outage`, ms.
    max_write_outage_ms: u64,
}

impl Running {
    /// The first path whose write outage (open now, or closed earlier) passed the budget, as
    /// the record of it; `when` says where the run stood.
    fn outage(&self, when: &str) -> Option<WriteOutage> {
        let now = tokio::time::Instant::now();
        let budget_ms = self.budget.as_millis() as u64;
        self.paths.iter().find_map(|p| {
            let l = p.writer.live();
            let outage_ms = l.open_ms(now).max(l.longest_ms);
            (outage_ms > budget_ms).then(|| WriteOutage {
                path: p.name.to_string(),
                outage_ms,
                budget_ms,
                last_error: l.last_error.clone(),
                when: when.to_string(),
            })
        })
    }
}

impl WriteWatch for Running {
    fn over_budget(&self) -> Option<String> {
        self.outage("during the step").map(|o| o.reason())
    }
}

/// How a run's end stands with its application's writes ([`settle`]).
pub enum Settled {
    /// No heartbeat, or every path that serves users acknowledged a write again within the
    /// budget.
    Writing,
    /// The panic flag was raised while waiting (its reason).
    Panic(String),
    /// A path's outage passed the budget: the [`WriteOutage`] to record.
    OverBudget(WriteOutage),
}

/// At the end of the run's steps: waits until every path that serves users has acknowledged a
/// write after this moment (the application writes again), at most the budget; the panic flag
/// is honoured while waiting.
pub async fn settle(ex: &Executor<'_>) -> Settled {
    let Some(run) = &ex.heartbeat else {
        return Settled::Writing;
    };
    let start: Vec<(u64, bool)> = run
        .paths
        .iter()
        .map(|p| {
            let l = p.writer.live();
            (l.acknowledged, l.serving)
        })
        .collect();
    let began = tokio::time::Instant::now();
    loop {
        if let Some(reason) = crate::steps::context::panic_reason(&ex.panic_flag) {
            return Settled::Panic(reason);
        }
        if let Some(o) = run.outage("after the last step") {
            return Settled::OverBudget(o);
        }
        let writing = run.paths.iter().zip(&start).all(|(p, (acked, serving))| {
            let l = p.writer.live();
            !serving || !l.serving || l.acknowledged > *acked
        });
        if writing {
            return Settled::Writing;
        }
        if began.elapsed() > run.budget {
            // The first path that served users then and has not written since.
            let silent = run
                .paths
                .iter()
                .zip(&start)
                .find(|(p, (acked, serving))| {
                    let l = p.writer.live();
                    *serving && l.serving && l.acknowledged <= *acked
                })
                .map_or(&run.paths[0], |(p, _)| p);
            let l = silent.writer.live();
            let waited = began.elapsed().as_millis() as u64;
            return Settled::OverBudget(WriteOutage {
                path: silent.name.to_string(),
                outage_ms: l.open_ms(tokio::time::Instant::now()).max(waited),
                budget_ms: run.budget.as_millis() as u64,
                last_error: l.last_error,
                when: "after the last step".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Between steps: the [`WriteOutage`] to record when a path's outage passed the budget.
pub fn over_budget_between(ex: &Executor<'_>) -> Option<WriteOutage> {
    ex.heartbeat.as_ref()?.outage("before the step started")
}

/// The application's database URL as its pods use it under `cfg.reload`, read from its Secret
/// (and, for `restart`, the rollouts of the Deployments that read it), and those Deployments.
async fn app_urls(
    client: kube::Client,
    cfg: &crate::config::Heartbeat,
) -> Result<(UrlSource, Vec<String>), String> {
    let (ns, name, key) = (cfg.namespace.clone(), cfg.secret.clone(), cfg.key.clone());
    let read = {
        let client = client.clone();
        move || {
            let (client, ns, name, key) = (client.clone(), ns.clone(), name.clone(), key.clone());
            async move {
                crate::providers::kube::secret_value(client, &ns, &name, &key)
                    .await
                    .map_err(|e| e.to_string())
            }
        }
    };
    let first = read().await?;
    match cfg.reload {
        Reload::Pooler => {
            let urls: UrlSource = Arc::new(move || {
                let u = first.clone();
                Box::pin(async move { Ok(u) })
            });
            Ok((urls, Vec::new()))
        }
        Reload::Volume => {
            let state = Arc::new(Mutex::new(VolumeAdoption::new(first, cfg.volume_delay)));
            let urls: UrlSource = Arc::new(move || {
                let (read, state) = (read.clone(), state.clone());
                Box::pin(async move {
                    let now = read().await?;
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    Ok(s.observe(&now, tokio::time::Instant::now()).to_string())
                })
            });
            Ok((urls, Vec::new()))
        }
        Reload::Restart => {
            let readers = match &cfg.deployments {
                Some(d) => d.clone(),
                None => crate::providers::kube::secret_readers(
                    client.clone(),
                    &cfg.namespace,
                    &cfg.secret,
                )
                .await
                .map_err(|e| e.to_string())?,
            };
            let state = Arc::new(Mutex::new(RestartAdoption::new(first)));
            let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
                kube::Api::namespaced(client, &cfg.namespace);
            let names = readers.clone();
            let urls: UrlSource = Arc::new(move || {
                let (read, state, api, names) =
                    (read.clone(), state.clone(), api.clone(), names.clone());
                Box::pin(async move {
                    let now = read().await?;
                    let mut seen = BTreeMap::new();
                    for n in &names {
                        let d = api.get(n).await.map_err(|e| e.to_string())?;
                        let complete = matches!(
                            crate::providers::kube::rollout(&d),
                            crate::providers::kube::Rollout::Complete { .. }
                        );
                        seen.insert(
                            n.clone(),
                            Observed {
                                generation: d.metadata.generation.unwrap_or(0),
                                complete,
                            },
                        );
                    }
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    Ok(s.observe(&now, &seen).to_string())
                })
            });
            Ok((urls, readers))
        }
    }
}

/// The legacy path's "served" source: the targets `record` names when the run starts (or
/// `known`, those its first process recorded, when it resumes) are the legacy side; while any
/// set naming one of them has weight (or is a simple record), users are sent there for at least
/// that set's TTL.
async fn legacy_served(
    ex: &Executor<'_>,
    record: &str,
    rtype: &str,
    known: Option<Vec<String>>,
) -> Result<(ServedSource, Vec<String>), String> {
    let r53 = ex.providers.route53().await.map_err(|e| e.to_string())?;
    let zone = r53
        .zone_id(&ex.plan.env.dns.domain)
        .await
        .map_err(|e| e.to_string())?;
    let sets = r53
        .record_sets(&zone, record, rtype)
        .await
        .map_err(|e| e.to_string())?;
    let legacy: Vec<String> = known.unwrap_or_else(|| {
        sets.iter()
            .filter(|s| s.weight.is_none_or(|w| w > 0))
            .map(|s| s.target())
            .collect()
    });
    if legacy.is_empty() {
        return Err(format!("no {rtype} record {record} names a target"));
    }
    let (record, rtype, targets) = (record.to_string(), rtype.to_string(), legacy.clone());
    let served: ServedSource = Arc::new(move || {
        let (r53, zone, record, rtype, targets) = (
            r53.clone(),
            zone.clone(),
            record.clone(),
            rtype.clone(),
            targets.clone(),
        );
        Box::pin(async move {
            match r53.record_sets(&zone, &record, &rtype).await {
                Ok(sets) => sets
                    .iter()
                    .filter(|s| s.weight.is_none_or(|w| w > 0) && targets.contains(&s.target()))
                    .map(|s| Duration::from_secs(s.ttl.unwrap_or(60).max(0) as u64))
                    .max(),
                // Cannot tell: count it as serving users (never under-report an outage).
                Err(_) => Some(Duration::from_secs(60)),
            }
        })
    });
    Ok((served, legacy))
}

/// Starts the writers when the run is a rehearsal and the runbook configures a heartbeat; a
/// writer that cannot start is recorded (`heartbeat_failed`) and the run goes on.
/// `legacy_targets`: the legacy side as the run's first process recorded it (a resumed run;
/// DNS may have moved since), `None` to read it from DNS now.
///
/// # Errors
/// [`EngineError::Log`] when the record cannot be written.
pub async fn start(
    ex: &mut Executor<'_>,
    attempt: usize,
    legacy_targets: Option<Vec<String>>,
) -> Result<(), EngineError> {
    let Some(cfg) = ex.plan.heartbeat.clone() else {
        return Ok(());
    };
    if ex.mode != Mode::Rehearse {
        return Ok(());
    }
    let started = match ex.providers.kube().await {
        Ok(client) => app_urls(client, &cfg).await,
        Err(e) => Err(e.to_string()),
    };
    let (urls, readers) = match started {
        Ok(u) => u,
        Err(e) => {
            let reason = ex.redactor.redact(&e);
            ex.record(
                Event::HeartbeatFailed(HeartbeatFailed {
                    path: None,
                    error: reason,
                }),
                None,
            )?;
            return Ok(());
        }
    };
    let id = if attempt == 0 {
        ex.run_id.clone()
    } else {
        format!("{}#{attempt}", ex.run_id)
    };
    let opts = |writer: String, served: Option<ServedSource>| Options {
        table: cfg.table.clone(),
        writer,
        rate: cfg.writes_per_second,
        reload: Duration::from_millis(cfg.reload_ms.max(10)),
        served,
        // Behind a pooler a write waits while the pooler is paused (a bounded window, seconds):
        // it fails only past an application's statement timeout. Reaching the database
        // directly, a write that takes a second is an outage.
        write_timeout: match cfg.reload {
            Reload::Pooler => POOLER_WRITE_TIMEOUT,
            Reload::Restart | Reload::Volume => Duration::from_secs(1),
        },
    };
    let mut paths = vec![Path {
        name: "aws",
        writer: Heartbeat::start(urls, opts(id.clone(), None)).await,
        id: id.clone(),
    }];
    let mut legacy_info = None;
    if let Some(l) = &cfg.legacy {
        let ctx = ex.context(false);
        let rendered = template::render_str(&l.url, &ctx)
            .and_then(|u| template::render_str(&l.record, &ctx).map(|r| (u, r)));
        let started = match rendered {
            Err(e) => Err(format!("heartbeat.legacy: {e}")),
            Ok((url, record)) => match legacy_served(ex, &record, &l.rtype, legacy_targets).await {
                Err(e) => Err(format!("heartbeat.legacy: {e}")),
                Ok((served, targets)) => Ok((url, record, served, targets)),
            },
        };
        match started {
            Ok((url, record, served, targets)) => {
                ex.redactor.add(&url);
                let fixed: UrlSource = Arc::new(move || {
                    let u = url.clone();
                    Box::pin(async move { Ok(u) })
                });
                let lid = format!("{id}/legacy");
                paths.push(Path {
                    name: "legacy",
                    writer: Heartbeat::start(fixed, opts(lid.clone(), Some(served))).await,
                    id: lid,
                });
                legacy_info = Some(LegacyPath {
                    record,
                    rtype: l.rtype.clone(),
                    legacy_targets: targets,
                });
            }
            Err(e) => {
                let reason = ex.redactor.redact(&e);
                ex.record(
                    Event::HeartbeatFailed(HeartbeatFailed {
                        path: Some("legacy".into()),
                        error: reason,
                    }),
                    None,
                )?;
            }
        }
    }
    let started = HeartbeatStarted {
        writer: id.clone(),
        writes_per_second: cfg.writes_per_second,
        secret: format!("{}/{}", cfg.namespace, cfg.secret),
        key: cfg.key.clone(),
        table: cfg.table.clone(),
        reload_ms: cfg.reload_ms,
        reload: Some(cfg.reload),
        deployments: (cfg.reload == Reload::Restart).then(|| readers.clone()),
        volume_delay_ms: (cfg.reload == Reload::Volume)
            .then(|| cfg.volume_delay.as_millis() as u64),
        max_write_outage_ms: Some(cfg.max_write_outage.as_millis() as u64),
        legacy: legacy_info,
    };
    let reload = ReloadFigures {
        reload: cfg.reload,
        deployments: (cfg.reload == Reload::Restart).then(|| readers.clone()),
        volume_delay_ms: (cfg.reload == Reload::Volume)
            .then(|| cfg.volume_delay.as_millis() as u64),
        max_write_outage_ms: cfg.max_write_outage.as_millis() as u64,
    };
    ex.record(Event::HeartbeatStarted(started), None)?;
    ex.heartbeat = Some(Running {
        paths,
        table: cfg.table,
        budget: cfg.max_write_outage,
        reload,
    });
    Ok(())
}

/// One path's figures as recorded.
fn path_figures(name: &str, id: &str, r: &Report, missing: Option<&[i64]>) -> PathFigures {
    PathFigures {
        acked_per_second: r.acked_per_second.clone(),
        acknowledged: r.acknowledged,
        attempted: r.attempted,
        connections: r.connections,
        error: r.error.clone(),
        failed: r.failed,
        gap_from: r.gap_from,
        gap_to: r.gap_to,
        longest_gap_ms: r.longest_gap_ms,
        missing: missing.map(|m| m.len() as u64),
        missing_seqs: missing.map(|m| m.iter().take(20).copied().collect()),
        open_at_end: r.open_at_end,
        path: name.to_string(),
        started_at: r.started_at,
        url_changes: r.url_changes,
        wait_max_ms: r.wait_max_ms,
        wait_p99_ms: r.wait_p99_ms,
        writer: id.to_string(),
        writing_ms: r.writing_ms,
    }
}

/// Stops the writers, checks their acknowledged writes against the database the Secret names
/// at the end and records a `heartbeat` event: the `aws` path's `{writer, attempted,
/// acknowledged, connections, url_changes, database, error}`, the run's write outage as
/// `longest_gap_ms` / `gap_from` / `gap_to` / `gap_path` (the longest over every path),
/// `missing` (over every path), `missing_seqs` and per path the same figures under `paths`.
/// Returns `(missing, database)` when acknowledged writes are missing.
///
/// # Errors
/// [`EngineError::Log`] when the record cannot be written.
pub async fn finish(ex: &mut Executor<'_>) -> Result<Option<(u64, String)>, EngineError> {
    let Some(run) = ex.heartbeat.take() else {
        return Ok(None);
    };
    let mut reports = Vec::new();
    for p in run.paths {
        reports.push((p.name, p.id, p.writer.stop().await));
    }
    let final_url = reports[0].2.final_url.clone();
    let aws_failed = reports[0].2.error.is_some();
    let db = ConnParts::parse(&final_url, crate::providers::postgres::Server::Application)
        .map(|p| p.display())
        .unwrap_or_default();
    let mut paths = Vec::new();
    let mut missing_total = 0u64;
    let mut missing_seqs: Vec<i64> = Vec::new();
    let mut check_error = None;
    // The run's write outage: the longest gap over every path that ran.
    let mut longest: Option<&PathFigures> = None;
    for (name, id, report) in &reports {
        let missing = if report.error.is_none() && !aws_failed {
            match heartbeat::missing(&final_url, &run.table, id, &report.acked).await {
                Ok(m) => Some(m),
                Err(e) => {
                    check_error = Some(e.to_string());
                    None
                }
            }
        } else {
            None
        };
        if let Some(m) = &missing {
            missing_total += m.len() as u64;
            missing_seqs.extend(m.iter().take(20));
        }
        paths.push(path_figures(name, id, report, missing.as_deref()));
    }
    for p in &paths {
        if p.error.is_none() && longest.is_none_or(|l| p.longest_gap_ms >= l.longest_gap_ms) {
            longest = Some(p);
        }
    }
    let aws = &paths[0];
    let mut data = HeartbeatRecord {
        acked_per_second: aws.acked_per_second.clone(),
        acknowledged: aws.acknowledged,
        attempted: aws.attempted,
        connections: aws.connections,
        error: aws.error.clone(),
        gap_from: longest.and_then(|l| l.gap_from),
        gap_path: Some(longest.map_or("aws", |l| l.path.as_str()).to_string()),
        gap_to: longest.and_then(|l| l.gap_to),
        longest_gap_ms: longest.map_or(0, |l| l.longest_gap_ms),
        open_at_end: longest.is_some_and(|l| l.open_at_end),
        started_at: aws.started_at,
        url_changes: aws.url_changes,
        writer: aws.writer.clone(),
        writing_ms: aws.writing_ms,
        missing: aws.missing,
        missing_seqs: aws.missing_seqs.clone(),
        reload: Some(run.reload.reload),
        deployments: run.reload.deployments.clone(),
        volume_delay_ms: run.reload.volume_delay_ms,
        max_write_outage_ms: Some(run.reload.max_write_outage_ms),
        ..Default::default()
    };
    let mut lost = None;
    if !aws_failed {
        data.database = Some(db.clone());
        match check_error {
            Some(e) if missing_total == 0 => data.missing_check_error = Some(e),
            _ => {
                data.missing = Some(missing_total);
                data.missing_seqs = Some(missing_seqs.iter().take(20).copied().collect());
                if missing_total > 0 {
                    lost = Some((missing_total, db.clone()));
                }
            }
        }
    }
    data.paths = paths;
    ex.record(Event::Heartbeat(Box::new(data)), None)?;
    Ok(lost)
}
