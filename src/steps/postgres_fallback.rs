//! `postgres.fallback`: turns replication around at the flip, so the legacy database stays a
//! fallback that holds every write the application makes on AWS (as RDS Blue/Green and
//! Instacart keep reverse replication). Runs inside the window, after the drain and the
//! in-window verify, before the Secret flip:
//!
//! 1. The forward replication retires: the source is frozen for the application and the target
//!    confirmed its last LSN, so nothing remains to send. The forward subscription (and with it
//!    its slot on the source), the change-tracking slot and the forward publication are dropped.
//! 2. The target publishes the same tables; a slot created on the target marks the flip LSN;
//!    from it the legacy database receives every change of the target, by one of two means,
//!    chosen per run (`replication: auto | native | relay`) and said in the plan, the outputs
//!    and the audit:
//!    - `native`: the source subscribes to the slot without copying (`copy_data = false`;
//!      `origin = none` where the source is PostgreSQL 16 or later), applying as the admin role,
//!      which the freeze of the source does not touch. Needs the legacy admin's right to
//!      `CREATE SUBSCRIPTION` and a route from the legacy host to the target.
//!    - `relay`: `cutover relay` runs as a Deployment in the target cluster ([`relay`]) and
//!      applies the slot's changes on the legacy database as its admin. Needs neither.
//!    - `auto` (the default): native when the legacy admin may subscribe to the target and the
//!      legacy server reaches it (tried, rolled back), else relay, with the reason.
//! 3. The target is opened: the application's roles, read-only there since
//!    `postgres.replicate`, may write again.
//!
//! Rollback (a failure after the flip, or `cutover rollback`): the target's application roles
//! are frozen and their sessions ended; the source applies the target up to its last LSN; the
//! source's sequences are set at least to the target's plus `margin`; the fallback subscription
//! and publication are dropped. The Secret, DNS and the source's freeze are undone by their own
//! steps. With `replication: false` there is no fallback: a rollback after the target took
//! application writes refuses before it changes anything (exit 4) and says how many rows it would
//! lose.

use super::postgres_freeze_writes::application_roles;
use super::postgres_replicate::{names, run_name};
use super::postgres_verify::tracking_slot;
use super::postgres_wait_lag::wait_confirmed;
use super::relay::{self, Means, Replication};
use super::{
    Applied, Change, Evidence, Kind, Literal, Plan, Restored, StepContext, StepError, WindowRole,
};
use crate::config::Side;
use crate::providers::postgres::database::{Database, Subscription};
use crate::providers::postgres::replication;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The `postgres.fallback` kind.
pub struct Fallback;

/// `with:` of `postgres.fallback`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// How the legacy database receives the target's changes from the flip: true or auto (default), native, relay; false: no fallback, and a rollback after the target took writes refuses (exit 4).
    #[serde(default = "auto")]
    replication: Replication,
    /// WAL the fallback slot on the target may retain before its relay (or, with a subscription, its WAL guard) warns (default 10GB).
    #[serde(default = "relay::default_budget")]
    wal_budget: String,
    /// WAL the fallback slot on the target may retain before its relay or WAL guard stops replication and drops the slot, so the target's disk does not fill (default 100GB).
    #[serde(default = "relay::default_limit")]
    wal_limit: String,
    /// The container image of the relay or WAL guard (default cutover:<this version>).
    #[serde(default)]
    relay_image: Option<String>,
    /// With the relay: the target cluster's namespace of its Deployment and Secret, created when missing; also where postgres.replicate's forward relay runs, which the flip deletes (default cutover).
    #[serde(default = "relay::default_namespace")]
    relay_namespace: String,
    /// On rollback, values added to each target sequence's last_value before it is set on the source (default 1000).
    #[serde(default = "default_margin")]
    margin: i64,
    /// The forward publication, as postgres.replicate names it (default cutover_<database>_<run>).
    #[serde(default)]
    publication: Option<String>,
    /// The forward subscription / slot, as postgres.replicate names it (default cutover_<database>_<run>).
    #[serde(default)]
    subscription: Option<String>,
}

fn auto() -> Replication {
    Replication::Auto
}

/// Chooses the fallback's means for `p.replication` (`None` with `false`), and says why: the
/// legacy server's `CREATE SUBSCRIPTION ... connect = true` to the target is tried (rolled back)
/// unless the runbook says `relay` or `false`.
///
/// # Errors
/// [`StepError::Check`] when `native` is required and the legacy server may not subscribe to the
/// target or cannot reach it.
async fn choose(
    p: &Params,
    source: &dyn Database,
    target: &dyn Database,
    fb: &str,
) -> Result<Option<(Means, String)>, StepError> {
    use crate::providers::postgres::rights::Outcome;
    let tried = match p.replication {
        Replication::Auto | Replication::Native => source.may_subscribe(target, fb).await?,
        Replication::Relay | Replication::Off => Outcome::Granted("not tried".into()),
    };
    relay::choose(p.replication, &tried, "the legacy admin", "the target")
}

/// Where the fallback's relay runs.
fn settings(p: &Params) -> relay::Settings {
    relay::Settings {
        namespace: p.relay_namespace.clone(),
        image: p.relay_image.clone(),
        wal_budget: p.wal_budget.clone(),
        wal_limit: p.wal_limit.clone(),
    }
}

fn default_margin() -> i64 {
    1000
}

/// The fallback publication, slot and subscription of this run: `<run name>_fb`.
pub(super) fn fallback_name(cx: &StepContext) -> String {
    format!("{}_fb", run_name(cx))
}

/// The application's roles that exist on the target.
async fn target_roles(
    source: &dyn Database,
    target: &dyn Database,
) -> Result<Vec<String>, StepError> {
    let app = application_roles(source, None).await?;
    Ok(target.existing_roles(&app).await?)
}

/// The source and target servers.
async fn servers(
    cx: &StepContext<'_>,
) -> Result<(Arc<dyn Database>, Arc<dyn Database>), StepError> {
    Ok((
        cx.providers.database(Side::Source).await?,
        cx.providers.database(Side::Target).await?,
    ))
}

/// What `postgres.fallback` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The fallback's publication, slot and subscription name (`null` with `replication: false`).
    #[serde(default)]
    fallback: Option<String>,
    /// How the legacy database receives the target's changes (`null` with `replication: false`).
    #[serde(default)]
    means: Option<Means>,
    /// Why that means was chosen.
    #[serde(default)]
    means_reason: Option<String>,
    /// With the relay: its Deployment, `namespace/name`, in the target cluster.
    #[serde(default)]
    relay: Option<String>,
    /// With a subscription: the Deployment, `namespace/name`, of the fallback slot's WAL guard
    /// (the relay guards its own slot).
    #[serde(default)]
    guard: Option<String>,
    /// The target's WAL position the fallback starts from (the flip).
    flip_lsn: String,
    /// Whether the forward subscription was retired by this run.
    forward_retired: bool,
    /// The application roles opened for writes on the target.
    roles_opened: Vec<String>,
    /// The target's write count when it opened (the rollback checks the fallback carried every
    /// later one).
    target_writes_at_open: i64,
}

#[async_trait]
impl Kind for Fallback {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "postgres.fallback";
    const PURPOSE: &'static str = "Retire the forward replication and make the legacy database a fallback that receives every change of the target from the flip LSN (a subscription, or cutover relay where it cannot subscribe); open the target to the application";
    const UNDO: &'static str = "Freeze the application on the target, let the legacy database apply the target's last LSN, carry sequences back, drop the fallback replication (with replication: false, refuse when the target took writes)";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
    const ACTS_ON_DATABASE: bool = true;

    fn window_role(&self, p: Option<&Literal<Params>>) -> WindowRole {
        WindowRole::Fallback {
            // A templated value counts as its default (true).
            replication: p
                .filter(|l| l.known("replication"))
                .is_none_or(|l| l.params.replication.on()),
        }
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), ()>, StepError> {
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let fb = fallback_name(cx);
        let (source, target) = servers(cx).await?;
        let tdb = target.name();
        let mut ch = Vec::new();
        let forward_relay = relay::name(&sub);
        ch.push(if target.has_subscription(&sub).await? {
            Change::new(super::Action::Delete, format!("subscription {sub} on target"), "the forward replication retires: the source is frozen and drained, nothing remains to send (its slot on the source goes with it)")
        } else if source.slot_exists(&sub).await?
            && relay::exists_named(cx, &p.relay_namespace, &forward_relay).await?
        {
            Change::new(super::Action::Delete, format!("Deployment and Secret {}/{forward_relay} in the target cluster, slot {sub} on source", p.relay_namespace), "the forward relay retires once the target confirmed the source's last LSN: the source is frozen and drained, nothing remains to send")
        } else {
            Change::new(super::Action::None, format!("subscription {sub} on target"), "absent (created by postgres.replicate, or already retired)")
        });
        ch.push(Change::new(
            super::Action::Delete,
            format!(
                "replication slot {} and publication {publ} on source",
                tracking_slot(cx)
            ),
            "change tracking and the forward publication, no longer needed",
        ));
        match choose(p, &*source, &*target, &fb).await? {
            Some((means, why)) => {
                ch.push(Change::new(
                    super::Action::Create,
                    format!("publication {fb} on target"),
                    "FOR TABLE the forward publication's tables",
                ));
                ch.push(Change::new(
                    super::Action::Create,
                    format!("replication slot {fb} on target"),
                    "pgoutput; its LSN is the flip LSN",
                ));
                ch.push(Change::new(
                    super::Action::Check,
                    "fallback replication",
                    format!("{} ({why})", means.as_str()),
                ));
                if means == Means::Native {
                    let major = source.major_version().await?;
                    ch.push(Change::new(super::Action::Create, format!("subscription {fb} on source"), format!(
                        "PUBLICATION {fb} WITH (create_slot = false, slot_name = {fb}, copy_data = false{}): every write on the target from the flip reaches the legacy database",
                        if major >= 16 { ", origin = none" } else { "" }
                    )));
                    let g = relay::guard(&settings(p), &fb, Side::Target);
                    ch.push(Change::new(
                        super::Action::Create,
                        format!("Deployment and Secret {}/{} in the target cluster", g.namespace, g.name),
                        format!("the WAL guard of slot {fb} on the target: warns past {}, drops the slot past {} (image {})", p.wal_budget, p.wal_limit, g.image),
                    ));
                } else {
                    let r = relay::relay(&settings(p), &fb, &fb, Side::Target);
                    let (deploy, keys) = relay::describe(&r, &target.conninfo(), &source.conninfo());
                    ch.push(Change::new(
                        super::Action::Create,
                        format!("Secret {}/{} in the target cluster", r.namespace, r.name),
                        keys,
                    ));
                    ch.push(Change::new(
                        super::Action::Create,
                        format!("Deployment {}/{} in the target cluster", r.namespace, r.name),
                        format!("{deploy}: every write on the target from the flip reaches the legacy database through the relay"),
                    ));
                }
            }
            None => ch.push(Change::new(super::Action::Check, "fallback replication", "disabled (replication: false): a rollback after the target took writes will refuse and say what it would lose")),
        }
        let app = target_roles(&*source, &*target).await?;
        for r in &app {
            ch.push(Change::new(
                super::Action::Update,
                format!("role {r} in {tdb} on target"),
                "read-only → read-write: the application may write once the Secret flips",
            ));
        }
        Ok(Plan::of(ch))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let (publ, sub) = names(cx, p.publication.as_deref(), p.subscription.as_deref());
        let fb = fallback_name(cx);
        let (source, target) = servers(cx).await?;
        // The forward replication must have delivered the source's last write.
        let mut retired = false;
        if source.slot_exists(&sub).await? {
            let goal = source.current_lsn().await?;
            source.probe().await;
            wait_confirmed(cx, &*source, Some(&*target), &sub, &goal, cx.remaining()).await?;
        }
        let tables: Vec<String> = if source.has_publication(&publ).await? {
            source.publication_tables(&publ).await?
        } else {
            source.table_names().await?
        };
        if target.drop_subscription(&sub).await? {
            retired = true;
        } else if source.slot_exists(&sub).await? {
            // The forward replication ran through a relay: it stops before its slot goes.
            let forward = relay::name(&sub);
            if relay::delete_named(cx, &p.relay_namespace, &forward).await? {
                (cx.progress)(&format!(
                    "forward relay {}/{forward} deleted: the target holds the legacy database's last write",
                    p.relay_namespace
                ));
                retired = true;
            }
        }
        // The forward slot's WAL guard, where a subscription consumed it.
        relay::delete_named(cx, &p.relay_namespace, &relay::guard_name(&sub)).await?;
        source.drop_slot(&sub).await?;
        target.forget_relay(&sub).await?;
        source.drop_slot(&tracking_slot(cx)).await?;
        source.drop_publication(&publ).await?;
        let chosen = choose(p, &*source, &*target, &fb).await?;
        let mut relay_name = None;
        let mut guard_name = None;
        let (fallback, flip_lsn) = match &chosen {
            Some((means, _)) => {
                target.create_publication(&fb, &tables).await?;
                let flip_lsn = target.create_slot(&fb).await?;
                match means {
                    Means::Native => {
                        if !source.has_subscription(&fb).await? {
                            let sub = Subscription {
                                publication: fb.clone(),
                                name: fb.clone(),
                                origin_none: source.major_version().await? >= 16,
                            };
                            source.subscribe(&sub, &*target).await?;
                        }
                        let g = relay::guard(&settings(p), &fb, Side::Target);
                        relay::apply(cx, &g, &target.conninfo(), &source.conninfo()).await?;
                        guard_name = Some(format!("{}/{}", g.namespace, g.name));
                    }
                    Means::Relay => {
                        let r = relay::relay(&settings(p), &fb, &fb, Side::Target);
                        relay::apply(cx, &r, &target.conninfo(), &source.conninfo()).await?;
                        // Running: the relay's replication connection holds the slot.
                        let hint = format!(
                            "its log is the pod's: kubectl logs -n {} deploy/{}",
                            r.namespace, r.name
                        );
                        while !target.slot_active(&fb).await? {
                            cx.check_deadline(&format!(
                                "the relay {}/{} to attach to slot {fb} ({hint})",
                                r.namespace, r.name
                            ))?;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        // Consuming: the slot confirms the flip LSN.
                        wait_confirmed(cx, &*target, None, &fb, &flip_lsn, cx.remaining())
                            .await
                            .map_err(|e| {
                                StepError::Check(format!(
                                    "the relay {}/{} did not confirm slot {fb} ({e}); {hint}",
                                    r.namespace, r.name
                                ))
                            })?;
                        relay_name = Some(format!("{}/{}", r.namespace, r.name));
                    }
                }
                (Some(fb.clone()), flip_lsn)
            }
            None => (None, target.current_lsn().await?),
        };
        let app = target_roles(&*source, &*target).await?;
        let target_writes_at_open = target.row_writes().await?;
        target.unfreeze(&app).await?;
        let summary = if let Some((means, why)) = &chosen {
            let how = match (means, &relay_name) {
                (Means::Relay, Some(r)) => format!("receives the target's changes from {flip_lsn} through the relay {r} (slot {fb}; {why})"),
                _ => format!("subscribes to the target from {flip_lsn} through {fb} ({why})"),
            };
            format!("forward replication {sub} retired; the legacy database {how}; role(s) {} may write on the target", app.join(", "))
        } else {
            format!("forward replication {sub} retired; NO fallback replication; role(s) {} may write on the target", app.join(", "))
        };
        Ok(Applied::new(Outputs {
            fallback,
            means: chosen.as_ref().map(|c| c.0.clone()),
            means_reason: chosen.map(|c| c.1),
            relay: relay_name,
            guard: guard_name,
            flip_lsn,
            forward_retired: retired,
            roles_opened: app,
            target_writes_at_open,
        })
        .summary(summary))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        p: &Params,
        outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let Some(fb) = outputs.fallback.as_deref() else {
            return Ok(Evidence::default());
        };
        if outputs.means == Some(Means::Relay) {
            let r = relay::relay(&settings(p), fb, fb, Side::Target);
            let running = relay::exists(cx, &r).await?;
            return Ok(Evidence {
                facts: vec![
                    ("means".into(), json!("relay")),
                    ("relay_deployment".into(), json!(format!("{}/{}", r.namespace, r.name))),
                    ("relay_deployed".into(), json!(running)),
                ],
                summary: Some(format!(
                    "the legacy database receives the target's changes through the relay {}/{} ({})",
                    r.namespace,
                    r.name,
                    outputs.means_reason.as_deref().unwrap_or("relay")
                )),
            });
        }
        // Not waited for inside the window: the target's slot holds every change from the flip
        // LSN until the worker applies it (it starts within wal_retrieve_retry_interval); a
        // rollback waits for it to catch up.
        let running = cx
            .providers
            .database(Side::Source)
            .await?
            .subscription_running(fb)
            .await?;
        Ok(Evidence {
            facts: vec![("apply_worker_running".into(), json!(running))],
            summary: Some(format!(
                "the legacy database subscribes to the target through {fb} (apply worker {}{})",
                if running { "running" } else { "starting" },
                outputs
                    .means_reason
                    .as_deref()
                    .map(|r| format!("; {r}"))
                    .unwrap_or_default()
            )),
        })
    }

    async fn rollback_refusal(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
        outputs: Option<&Outputs>,
    ) -> Result<Option<String>, StepError> {
        let Some(out) = outputs else { return Ok(None) };
        if p.replication.on() {
            return Ok(None);
        }
        let at_open = out.target_writes_at_open;
        let now = cx
            .providers
            .database(Side::Target)
            .await?
            .row_writes()
            .await?;
        Ok((now > at_open).then(|| format!(
            "the target took {} row write(s) since it was opened at {} and this runbook has no fallback replication (postgres.fallback with replication: false): rolling back would lose them",
            now - at_open,
            out.flip_lsn
        )))
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
        outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let fb = fallback_name(cx);
        let (source, target) = servers(cx).await?;
        let tdb = target.name();
        let mut done = Vec::new();
        // Nothing more is written on the target from here on: the roles this step opened (or,
        // when it never finished, the application's roles it would have opened).
        let opened: Option<Vec<String>> = outputs.map(|o| o.roles_opened.clone());
        let app = match opened {
            Some(r) => r,
            None => target_roles(&*source, &*target).await?,
        };
        let was_frozen = target.frozen().await?;
        let ended = target.freeze(&app).await?;
        for r in app.iter().filter(|r| !was_frozen.contains(r)) {
            done.push(Restored::new(
                format!("role {r} in database {tdb} on the target"),
                Some("default_transaction_read_only=off"),
                Some("default_transaction_read_only=on"),
                format!("read-write → read-only; {ended} session(s) ended"),
            ));
        }
        let r = relay::relay(&settings(p), &fb, &fb, Side::Target);
        let relayed = outputs.is_some_and(|o| o.means == Some(Means::Relay))
            || (outputs.is_none() && relay::exists(cx, &r).await?);
        // Still carrying writes: the relay (deleted only once it applied the target's last LSN,
        // so an earlier attempt that deleted it had waited already) or the subscription.
        let live = if relayed {
            relay::exists(cx, &r).await? && target.slot_exists(&fb).await?
        } else {
            source.has_subscription(&fb).await?
        };
        let by = if relayed {
            format!("relay {}/{}", r.namespace, r.name)
        } else {
            format!("subscription {fb} (source)")
        };
        if live {
            target.probe().await;
            let goal = target.current_lsn().await?;
            let limit = cx.remaining().max(Duration::from_secs(60));
            let waited = wait_confirmed(cx, &*target, Some(&*source), &fb, &goal, limit)
                .await
                .map_err(|e| StepError::Gate(format!(
                    "the legacy database did not apply the target's last writes ({e}); the rollback stops here so that nothing written on AWS is lost: the target stays frozen, the legacy database stays frozen for the application"
                )))?;
            done.push(Restored::new(
                by.clone(),
                None,
                Some(&goal),
                format!("the legacy database applied every write of the target up to {goal} ({waited} ms)"),
            ));
            let todo = replication::to_advance(
                &target.sequences().await?,
                &source.sequences().await?,
                p.margin,
            );
            source.advance(&todo).await?;
            if !todo.is_empty() {
                done.push(Restored::new(
                    "sequences (source)",
                    None,
                    None,
                    format!(
                        "{} sequence(s) set at least to the target's value + {}",
                        todo.len(),
                        p.margin
                    ),
                ));
            }
            if !relayed {
                source.drop_subscription(&fb).await?;
                done.push(Restored::new(
                    by.clone(),
                    Some(&fb),
                    None,
                    "dropped with its slot on the target",
                ));
            }
        }
        if relayed {
            if relay::delete(cx, &r).await? {
                done.push(Restored::new(
                    by,
                    Some(&fb),
                    None,
                    "Deployment and its Secret deleted; the slot on the target is dropped next",
                ));
            }
            source.forget_relay(&fb).await?;
        }
        let g = relay::guard_name(&fb);
        if relay::delete_named(cx, &p.relay_namespace, &g).await? {
            done.push(Restored::new(
                format!("WAL guard {}/{g}", p.relay_namespace),
                Some(&fb),
                None,
                "Deployment and its Secret deleted",
            ));
        }
        target.drop_slot(&fb).await?;
        if target.drop_publication(&fb).await? {
            done.push(Restored::new(
                format!("publication {fb} (target)"),
                Some(&fb),
                None,
                "dropped",
            ));
        }
        Ok(done)
    }

    fn manual_undo(&self, _p: &Params, _before: &(), run_id: &str) -> Vec<String> {
        vec![
            "keep the application frozen on both databases until the legacy database holds every write of the target".to_string(),
            format!("check the fallback on the legacy database: its subscription (SELECT * FROM pg_stat_subscription WHERE subname LIKE 'cutover\\_%\\_fb') or its relay's progress (SELECT * FROM cutover_relay.progress; the relay's log: kubectl logs -n cutover deploy/relay-...); then `cutover rollback {run_id}` continues"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::postgres::FakePostgres;
    use crate::steps::testing::Harness;
    use crate::steps::Action;

    /// Inside the window, before the flip: forward replication of this run (publication and
    /// slot on the source, subscription on the target) and its tracking slot; the application
    /// role `app` frozen on both servers; sequences that moved on the target after the flip.
    async fn at_the_flip() -> (Harness, FakePostgres, String) {
        let pg = FakePostgres::new("shop_staging", "shop_staging");
        for side in [Side::Source, Side::Target] {
            pg.server(side, |s| {
                s.tables = vec!["public.orders".into(), "public.users".into()];
                s.writers = vec!["app".into()];
                s.roles = ["app".to_string()].into_iter().collect();
                s.frozen.insert("app".into());
                s.sequences = [("public.orders_id_seq".to_string(), Some(40))]
                    .into_iter()
                    .collect();
            });
        }
        let fake = pg.clone();
        let kube = crate::steps::testing::kube::FakeKube::default();
        let h = Harness::new(|p| fake.install(p).with_kube(kube.client()));
        let forward = run_name(&h.cx());
        let (source, target) = (pg.database(Side::Source), pg.database(Side::Target));
        source
            .create_publication(&forward, &["public.orders".into()])
            .await
            .unwrap();
        source.create_slot(&forward).await.unwrap();
        source.create_slot(&tracking_slot(&h.cx())).await.unwrap();
        target
            .subscribe(
                &Subscription {
                    publication: forward.clone(),
                    name: forward.clone(),
                    origin_none: true,
                },
                &*source,
            )
            .await
            .unwrap();
        pg.write(Side::Source, 3);
        (h, pg, forward)
    }

    fn params(replication: bool) -> Params {
        serde_json::from_value(json!({ "replication": replication })).unwrap()
    }

    #[tokio::test]
    async fn turns_replication_around_once_and_rollback_carries_the_targets_writes_back() {
        let (h, pg, forward) = at_the_flip().await;
        let cx = h.cx();
        let fb = fallback_name(&cx);
        let p = params(true);
        let plan = Fallback.plan(&cx, &p).await.unwrap();
        assert_eq!(plan.changes[0].action, Action::Delete);
        assert!(plan.changes[4]
            .detail
            .starts_with("native (auto: the legacy admin may subscribe"));
        assert!(plan.changes[5].detail.contains("origin = none"));
        assert_eq!(
            plan.changes.last().unwrap().target,
            "role app in shop_staging on target"
        );

        let first = Fallback.apply(&cx, &p, &()).await.unwrap();
        assert!(first.outputs.forward_retired);
        assert_eq!(first.outputs.fallback.as_deref(), Some(&*fb));
        assert_eq!(first.outputs.roles_opened, vec!["app"]);
        pg.server(Side::Source, |s| {
            assert!(
                s.slots.is_empty(),
                "forward and tracking slots dropped: {:?}",
                s.slots
            );
            assert!(s.publications.is_empty());
            assert!(s.subscriptions.contains(&fb));
        });
        pg.server(Side::Target, |s| {
            assert!(!s.subscriptions.contains(&forward));
            assert_eq!(s.publications[&fb], vec!["public.orders".to_string()]);
            assert!(
                s.frozen.is_empty(),
                "the application may write on the target"
            );
        });
        // A re-run after a crash finds the fallback in place and changes nothing.
        let again = Fallback.apply(&cx, &p, &()).await.unwrap();
        assert!(!again.outputs.forward_retired);
        assert_eq!(again.outputs.flip_lsn, first.outputs.flip_lsn);
        let evidence = Fallback.verify(&cx, &p, &again.outputs).await.unwrap();
        assert_eq!(evidence.facts[0].1, json!(true));

        // The application writes on AWS, then a check fails.
        pg.write(Side::Target, 50);
        pg.server(Side::Target, |s| {
            s.sequences.insert("public.orders_id_seq".into(), Some(90))
        });
        assert_eq!(
            Fallback
                .rollback_refusal(&cx, &p, &(), Some(&again.outputs))
                .await
                .unwrap(),
            None,
            "with the fallback nothing is lost"
        );
        let restored = Fallback
            .rollback(&cx, &p, &(), Some(&again.outputs))
            .await
            .unwrap();
        let objects: Vec<&str> = restored.iter().map(|r| r.object.as_str()).collect();
        assert_eq!(
            objects,
            vec![
                "role app in database shop_staging on the target",
                &*format!("subscription {fb} (source)"),
                "sequences (source)",
                &*format!("subscription {fb} (source)"),
                &*format!("WAL guard cutover/guard-{}", fb.replace('_', "-")),
                &*format!("publication {fb} (target)"),
            ]
        );
        pg.server(Side::Source, |s| {
            assert_eq!(s.sequences["public.orders_id_seq"], Some(1090));
            assert!(s.subscriptions.is_empty());
        });
        pg.server(Side::Target, |s| {
            assert!(s.frozen.contains("app"));
            assert!(s.slots.is_empty() && s.publications.is_empty());
        });
    }

    #[tokio::test]
    async fn without_the_right_to_subscribe_the_plan_relays_and_says_why_unless_native_is_required()
    {
        let (h, pg, _) = at_the_flip().await;
        let cx = h.cx();
        pg.server(Side::Source, |s| {
            s.subscribe_refused = Some("must be superuser to create subscriptions".into())
        });
        let plan = Fallback.plan(&cx, &params(true)).await.unwrap();
        let targets: Vec<&str> = plan.changes.iter().map(|c| c.target.as_str()).collect();
        let fb = fallback_name(&cx);
        let name = format!("relay-{}", fb.replace('_', "-"));
        assert!(
            targets.contains(&&*format!(
                "Deployment cutover/{name} in the target cluster"
            )),
            "{targets:?}"
        );
        assert!(
            targets.contains(&&*format!("Secret cutover/{name} in the target cluster")),
            "{targets:?}"
        );
        assert!(!targets
            .iter()
            .any(|t| t.starts_with("subscription") && t.ends_with("on source")));
        let why = plan
            .changes
            .iter()
            .find(|c| c.target == "fallback replication")
            .unwrap();
        assert_eq!(why.detail, "relay (auto: the legacy admin may not create a subscription to the target (must be superuser to create subscriptions))");
        let secret = plan
            .changes
            .iter()
            .find(|c| c.target.starts_with("Secret"))
            .unwrap();
        assert!(
            secret.detail.contains("sha256:") && !secret.detail.contains("fake-secret"),
            "{}",
            secret.detail
        );
        // Required native: refused before anything changes.
        let native: Params = serde_json::from_value(json!({"replication": "native"})).unwrap();
        let err = Fallback
            .plan(&cx, &native)
            .await
            .err()
            .expect("native is impossible");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("replication: native, but the legacy admin cannot subscribe to the target")),
            "{err:?}"
        );
        // A value outside the choices names them.
        let bad = serde_json::from_value::<Params>(json!({"replication": "sometimes"}))
            .err()
            .unwrap();
        assert!(
            bad.to_string()
                .contains("true, false, auto, native or relay"),
            "{bad}"
        );
    }

    #[tokio::test]
    async fn a_rollback_stops_when_the_legacy_database_did_not_apply_the_targets_writes() {
        let (h, pg, _) = at_the_flip().await;
        let mut cx = h.cx();
        let p = params(true);
        let applied = Fallback.apply(&cx, &p, &()).await.unwrap();
        pg.stall(true);
        pg.write(Side::Target, 5);
        // The step's deadline has passed: the wait's first look finds the target unconfirmed.
        cx.deadline = tokio::time::Instant::now();
        let err = Fallback
            .rollback(&cx, &p, &(), Some(&applied.outputs))
            .await
            .err()
            .expect("the fallback stalled");
        assert!(
            matches!(&err, StepError::Gate(m) if m.contains("nothing written on AWS is lost")),
            "{err:?}"
        );
        pg.server(Side::Source, |s| {
            assert!(
                !s.subscriptions.is_empty(),
                "the fallback is kept for the operator"
            );
        });
    }

    #[tokio::test]
    async fn without_replication_a_rollback_after_target_writes_refuses_and_says_how_many() {
        let (h, pg, _) = at_the_flip().await;
        let cx = h.cx();
        let p = params(false);
        let plan = Fallback.plan(&cx, &p).await.unwrap();
        assert!(plan
            .changes
            .iter()
            .any(|c| c.action == Action::Check && c.detail.starts_with("disabled")));
        let applied = Fallback.apply(&cx, &p, &()).await.unwrap();
        assert_eq!(applied.outputs.fallback, None);
        assert!(pg.server(Side::Source, |s| s.subscriptions.is_empty()));
        assert_eq!(
            Fallback
                .rollback_refusal(&cx, &p, &(), Some(&applied.outputs))
                .await
                .unwrap(),
            None
        );
        pg.write(Side::Target, 12);
        let refusal = Fallback
            .rollback_refusal(&cx, &p, &(), Some(&applied.outputs))
            .await
            .unwrap()
            .expect("writes would be lost");
        assert!(refusal.contains("took 12 row write(s)"), "{refusal}");
    }
}
