//! `postgres.wait_lag`: waits until the target has confirmed the source's WAL up to the LSN
//! current when the wait began (minus `max_lag_bytes`). After a freeze, that LSN is the last
//! write: reaching it with lag 0 means the target holds every acknowledged write.
//!
//! Lag is read from the replication slot's `confirmed_flush_lsn` on the source
//! (`pg_replication_slots`), which the subscriber advances as it applies and flushes. When the
//! source is idle, the tail of its WAL is often a record that is not a commit (a running-xacts
//! snapshot), which the subscriber only confirms at the next keepalive, tens of seconds later; so
//! the wait first writes a transactional logical message (`pg_logical_emit_message`, applied by
//! no one, changes no table) whose commit the subscriber confirms at once, and repeats it every
//! second while waiting.

use super::postgres_replicate::names;
use super::{Applied, Kind, Plan, StepContext, StepError};
use crate::config::Side;
use crate::providers::postgres::database::{nudge, Database};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The `postgres.wait_lag` kind.
pub struct WaitLag;

/// `with:` of `postgres.wait_lag`.
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Bytes of WAL; a count, so never negative.
    #[serde(default)]
    max_lag_bytes: u64,
    /// Subscription / replication slot name (default cutover_<database>_<run>, the run id's suffix).
    #[serde(default)]
    subscription: Option<String>,
}

/// `(current WAL LSN, slot's confirmed_flush_lsn, lag in bytes)`; lag is `None` without a slot
/// or before its consumer's first confirmation.
async fn lag(
    c: &dyn Database,
    slot: &str,
) -> Result<(String, Option<String>, Option<i64>), StepError> {
    let lsn = c.current_lsn().await?;
    Ok(match c.behind(slot, &lsn).await? {
        Some((Some(confirmed), bytes)) => (lsn, Some(confirmed), Some(bytes)),
        _ => (lsn, None, None),
    })
}

/// What `postgres.wait_lag` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The source's WAL position the target had to reach.
    lsn: String,
    /// The subscription's confirmed flush position on the source slot.
    confirmed_flush_lsn: Option<String>,
    /// WAL between the two, in bytes.
    lag_bytes: i64,
    /// Time waited, in milliseconds.
    waited_ms: u64,
}

#[async_trait]
impl Kind for WaitLag {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "postgres.wait_lag";
    const PURPOSE: &'static str = "Wait until the target has applied the source's WAL up to the current LSN (replication lag within bound)";
    const UNDO: &'static str = "Nothing to undo: the wait is read-only";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
    const ACTS_ON_DATABASE: bool = true;

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), ()>, StepError> {
        let (_, slot) = names(cx, None, p.subscription.as_deref());
        let source = cx.providers.database(Side::Source).await?;
        let (lsn, confirmed, bytes) = lag(&*source, &slot).await?;
        let detail = match (confirmed, bytes) {
            (Some(c), Some(b)) => format!("source at {lsn}, slot confirmed {c}: lag {b} bytes; wait until ≤ {} bytes", p.max_lag_bytes),
            _ => format!("slot {slot} does not exist yet (created by postgres.replicate); wait until lag ≤ {} bytes", p.max_lag_bytes),
        };
        Ok(Plan::check(
            format!("replication lag of slot {slot}"),
            detail,
        ))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let (_, slot) = names(cx, None, p.subscription.as_deref());
        let source = cx.providers.database(Side::Source).await?;
        // The subscriber's side, to flush what it applied (see database::nudge).
        let target = cx.providers.database(Side::Target).await.ok();
        let started = Instant::now();
        source.probe().await;
        let goal = source.current_lsn().await?;
        // The first report (and the relay's check) at once.
        let mut last_probe = Instant::now() - Duration::from_secs(1);
        let mut last_nudge = Instant::now() - Duration::from_secs(1);
        loop {
            let row = source.behind(&slot, &goal).await?;
            let Some(row) = row else {
                return Err(StepError::Check(format!(
                    "replication slot {slot} does not exist on the source"
                )));
            };
            let (confirmed, behind) = row;
            if behind <= i64::try_from(p.max_lag_bytes).unwrap_or(i64::MAX) {
                let summary = format!(
                    "target confirmed {} ≥ {goal} (lag {} bytes)",
                    confirmed.clone().unwrap_or_default(),
                    behind.max(0)
                );
                return Ok(Applied::new(Outputs {
                    lsn: goal.clone(),
                    confirmed_flush_lsn: confirmed,
                    lag_bytes: behind.max(0),
                    waited_ms: started.elapsed().as_millis() as u64,
                })
                .summary(summary));
            }
            cx.check_deadline(&format!(
                "replication slot {slot} to reach {goal} ({behind} bytes behind)"
            ))?;
            // Every 50 ms: flush the target's applied WAL and wake its apply worker, so the
            // confirmation comes in tens of milliseconds instead of at the WAL writer's pace.
            if last_nudge.elapsed() >= Duration::from_millis(50) {
                nudge(&*source, target.as_deref()).await;
                last_nudge = Instant::now();
            }
            if last_probe.elapsed() >= Duration::from_secs(1) {
                last_probe = Instant::now();
                if let Some(t) = target.as_deref() {
                    relay_alive(t, &slot, &goal).await?;
                }
                (cx.progress)(&format!(
                    "lag {behind} bytes behind {goal}; waiting up to {}s",
                    cx.remaining().as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Waits until slot `slot` on the publisher `c` confirmed `goal` (at most `limit`, and never
/// past the step's deadline or the panic flag), nudging the subscriber every 50 ms
/// ([`nudge`]); returns the wait in milliseconds.
///
/// # Errors
/// [`StepError::Check`] when the slot does not exist, [`StepError::Timeout`] at the limit.
pub(super) async fn wait_confirmed(
    cx: &StepContext<'_>,
    c: &dyn Database,
    subscriber: Option<&dyn Database>,
    slot: &str,
    goal: &str,
    limit: Duration,
) -> Result<u64, StepError> {
    let started = Instant::now();
    let mut last_probe = Instant::now() - Duration::from_secs(1);
    // The first report (and the relay's check) at once.
    let mut last_report = Instant::now() - Duration::from_secs(1);
    let side = c.side().as_str();
    loop {
        match c.behind(slot, goal).await? {
            None => {
                return Err(StepError::Check(format!(
                    "replication slot {slot} does not exist on the {side}"
                )))
            }
            Some((_, b)) if b <= 0 => return Ok(started.elapsed().as_millis() as u64),
            Some((_, b)) => {
                cx.check_deadline(&format!(
                    "replication slot {slot} to reach {goal} ({b} bytes behind)"
                ))?;
                if started.elapsed() >= limit {
                    return Err(StepError::Timeout(format!(
                        "slot {slot} on the {side} to confirm {goal} ({b} bytes behind)"
                    )));
                }
                if last_probe.elapsed() >= Duration::from_millis(50) {
                    nudge(c, subscriber).await;
                    last_probe = Instant::now();
                }
                if last_report.elapsed() >= Duration::from_secs(1) {
                    last_report = Instant::now();
                    if let Some(s) = subscriber {
                        relay_alive(s, slot, goal).await?;
                    }
                    (cx.progress)(&format!(
                        "waiting for {slot} to confirm {goal}: {b} bytes behind"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Fails when a relay applies slot `slot` on `subscriber` and has ended (it failed, or its
/// guard stopped it): the slot will confirm nothing more, so a wait for `goal` ends at once
/// with the relay's own message instead of at its deadline.
///
/// # Errors
/// [`StepError::Check`] naming the relay's state and message.
pub(super) async fn relay_alive(
    subscriber: &dyn Database,
    slot: &str,
    goal: &str,
) -> Result<(), StepError> {
    match subscriber.relay_progress(slot).await? {
        Some(p) if p.state.ended() => Err(StepError::Check(format!(
            "the relay of slot {slot} {} at {} and will confirm nothing more, so {goal} cannot be reached: {}",
            p.state.as_str(),
            p.lsn,
            p.message.unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::postgres::database::Subscription;
    use crate::steps::testing::postgres::FakePostgres;
    use crate::steps::testing::Harness;

    /// Forward replication of this run: publication and slot on the source, the subscription
    /// on the target.
    async fn replicating() -> (Harness, FakePostgres, String) {
        let pg = FakePostgres::new("shop_staging", "shop_staging");
        let fake = pg.clone();
        let h = Harness::new(|p| fake.install(p));
        let (_, slot) = names(&h.cx(), None, None);
        let source = pg.database(Side::Source);
        source.create_publication(&slot, &[]).await.unwrap();
        source.create_slot(&slot).await.unwrap();
        pg.database(Side::Target)
            .subscribe(
                &Subscription {
                    publication: slot.clone(),
                    name: slot.clone(),
                    origin_none: true,
                },
                &*source,
            )
            .await
            .unwrap();
        (h, pg, slot)
    }

    #[tokio::test]
    async fn returns_once_the_target_confirmed_the_last_write_and_again_after_a_crash() {
        let (h, pg, slot) = replicating().await;
        let cx = h.cx();
        pg.stall(true);
        pg.write(Side::Source, 20);
        let plan = WaitLag.plan(&cx, &Params::default()).await.unwrap();
        assert!(
            plan.changes[0].detail.contains("lag 2000 bytes"),
            "{}",
            plan.changes[0].detail
        );
        pg.stall(false);
        let first = WaitLag.apply(&cx, &Params::default(), &()).await.unwrap();
        assert_eq!(first.outputs.lag_bytes, 0);
        assert_eq!(
            first.outputs.confirmed_flush_lsn.as_deref(),
            Some(&*first.outputs.lsn)
        );
        let again = WaitLag.apply(&cx, &Params::default(), &()).await.unwrap();
        assert_eq!(again.outputs.lag_bytes, 0);
        assert!(pg.server(Side::Source, |s| s.slots.contains_key(&slot)));
    }

    #[tokio::test]
    async fn a_stalled_subscription_ends_at_the_deadline_and_a_missing_slot_is_a_failed_check() {
        let (h, pg, slot) = replicating().await;
        let mut cx = h.cx();
        pg.stall(true);
        pg.write(Side::Source, 1);
        cx.deadline = tokio::time::Instant::now();
        let err = WaitLag
            .apply(&cx, &Params::default(), &())
            .await
            .err()
            .expect("stalled");
        assert!(matches!(err, StepError::Timeout(_)), "{err:?}");
        // Within the bound: no wait.
        let within = Params {
            max_lag_bytes: 1 << 20,
            subscription: None,
        };
        assert!(WaitLag.apply(&cx, &within, &()).await.is_ok());

        pg.server(Side::Source, |s| s.slots.remove(&slot));
        let err = WaitLag
            .apply(&h.cx(), &Params::default(), &())
            .await
            .err()
            .expect("no slot");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains(&slot)),
            "{err:?}"
        );
        let plan = WaitLag.plan(&h.cx(), &Params::default()).await.unwrap();
        assert!(plan.changes[0].detail.contains("does not exist yet"));
    }

    #[tokio::test]
    async fn a_relay_that_ended_fails_the_wait_at_once_with_its_message() {
        use crate::providers::postgres::relay::RelayState;
        let (h, pg, slot) = replicating().await;
        let cx = h.cx();
        pg.stall(true);
        pg.write(Side::Source, 3);
        pg.server(Side::Target, |s| {
            s.relays.insert(slot.clone());
            s.relays_ended.insert(
                slot.clone(),
                (
                    RelayState::Failed,
                    "table public.orders changed on the publisher".into(),
                ),
            );
        });
        let err = WaitLag
            .apply(&cx, &Params::default(), &())
            .await
            .err()
            .expect("the relay ended");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("failed") && m.contains("public.orders changed")),
            "{err:?}"
        );
        // A relay that streams is waited for as a subscription is.
        pg.server(Side::Target, |s| s.relays_ended.clear());
        pg.stall(false);
        assert!(WaitLag.apply(&cx, &Params::default(), &()).await.is_ok());
    }
}
