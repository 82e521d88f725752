//! How the application's pods pick up a new value of their Secret, for the rehearsal heartbeat
//! (`heartbeat.reload`): which value the application uses at a given moment, given what the
//! Secret and the Deployments that read it say then.
//!
//! - `restart` ([`RestartAdoption`]): environment variables are resolved when a container
//!   starts, so a new value is used once the rollout of every reading Deployment, started after
//!   the value changed, has completed (every old pod gone; until then old pods still take part
//!   of the traffic through the old value).
//! - `volume` ([`VolumeAdoption`]): the kubelet refreshes a mounted Secret after its sync period
//!   and cache, so a new value is used a fixed delay after it was first seen.
//! - `pooler`: the value never changes in the pods (the pooler's upstream moves instead).
//!
//! Owns these rules; must not call Kubernetes (the caller observes and passes what it saw).

use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// One Deployment as the adoption rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// `metadata.generation`.
    pub generation: i64,
    /// Its rollout is complete ([`crate::providers::kube::Rollout::Complete`]).
    pub complete: bool,
}

/// `reload: restart`: the value the pods use, following the rollouts of the Deployments that
/// read the Secret.
#[derive(Debug, Clone)]
pub struct RestartAdoption {
    in_use: String,
    /// A value not in use yet, with each Deployment's generation from before it was seen: a
    /// rollout counts only at a later generation (one started after the change).
    pending: Option<(String, BTreeMap<String, i64>)>,
    /// Generations seen at the previous observation.
    last: BTreeMap<String, i64>,
}

impl RestartAdoption {
    /// Starts with the value the pods use now.
    pub fn new(in_use: String) -> Self {
        RestartAdoption {
            in_use,
            pending: None,
            last: BTreeMap::new(),
        }
    }

    /// Takes one observation of the Secret's value and the reading Deployments, and returns the
    /// value the pods use now. With no reading Deployment, no pod ever picks a new value up.
    pub fn observe(&mut self, secret: &str, deployments: &BTreeMap<String, Observed>) -> &str {
        if secret == self.in_use {
            self.pending = None;
        } else if self.pending.as_ref().is_none_or(|(v, _)| v != secret) {
            self.pending = Some((secret.to_string(), self.last.clone()));
        }
        if let Some((value, before)) = &self.pending {
            let rolled = !deployments.is_empty()
                && deployments.iter().all(|(name, d)| {
                    d.complete && before.get(name).is_none_or(|g| d.generation > *g)
                });
            if rolled {
                self.in_use = value.clone();
                self.pending = None;
            }
        }
        self.last = deployments
            .iter()
            .map(|(n, d)| (n.clone(), d.generation))
            .collect();
        &self.in_use
    }
}

/// `reload: volume`: the value the pods use, a fixed delay after the Secret changed.
#[derive(Debug, Clone)]
pub struct VolumeAdoption {
    in_use: String,
    pending: Option<(String, Instant)>,
    delay: Duration,
}

impl VolumeAdoption {
    /// Starts with the value the pods use now; a new one is used `delay` after it is first seen.
    pub fn new(in_use: String, delay: Duration) -> Self {
        VolumeAdoption {
            in_use,
            pending: None,
            delay,
        }
    }

    /// Takes the Secret's value seen at `now`; returns the value the pods use.
    pub fn observe(&mut self, secret: &str, now: Instant) -> &str {
        if secret == self.in_use {
            self.pending = None;
        } else if self.pending.as_ref().is_none_or(|(v, _)| v != secret) {
            self.pending = Some((secret.to_string(), now));
        }
        if let Some((v, seen)) = &self.pending {
            if now.saturating_duration_since(*seen) >= self.delay {
                self.in_use = v.clone();
                self.pending = None;
            }
        }
        &self.in_use
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(list: &[(&str, i64, bool)]) -> BTreeMap<String, Observed> {
        list.iter()
            .map(|(n, g, c)| {
                (
                    n.to_string(),
                    Observed {
                        generation: *g,
                        complete: *c,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn restart_uses_a_new_value_only_once_every_reader_rolled_out_after_the_change() {
        let mut a = RestartAdoption::new("legacy".into());
        assert_eq!(
            a.observe("legacy", &deps(&[("api", 1, true), ("worker", 1, true)])),
            "legacy"
        );
        // The Secret flips; the rollouts have not started: old pods keep the old value.
        assert_eq!(
            a.observe("rds", &deps(&[("api", 1, true), ("worker", 1, true)])),
            "legacy"
        );
        // One Deployment rolled out, the other is still rolling.
        assert_eq!(
            a.observe("rds", &deps(&[("api", 2, true), ("worker", 2, false)])),
            "legacy"
        );
        assert_eq!(
            a.observe("rds", &deps(&[("api", 2, true), ("worker", 2, true)])),
            "rds"
        );
    }

    #[test]
    fn restart_seen_in_the_same_observation_as_the_change_still_counts() {
        let mut a = RestartAdoption::new("legacy".into());
        a.observe("legacy", &deps(&[("api", 1, true)]));
        // Secret and restart both happened between two observations.
        assert_eq!(a.observe("rds", &deps(&[("api", 2, false)])), "legacy");
        assert_eq!(a.observe("rds", &deps(&[("api", 2, true)])), "rds");
    }

    #[test]
    fn restart_ignores_a_rollout_from_before_the_change_and_a_secret_no_one_reads() {
        let mut a = RestartAdoption::new("legacy".into());
        a.observe("legacy", &deps(&[("api", 3, true)]));
        // Complete, but at the generation from before the change: no pod restarted since.
        for _ in 0..3 {
            assert_eq!(a.observe("rds", &deps(&[("api", 3, true)])), "legacy");
        }
        let mut none = RestartAdoption::new("legacy".into());
        assert_eq!(none.observe("rds", &BTreeMap::new()), "legacy");
    }

    #[test]
    fn restart_flipped_back_before_the_rollout_keeps_the_old_value() {
        let mut a = RestartAdoption::new("legacy".into());
        a.observe("legacy", &deps(&[("api", 1, true)]));
        a.observe("rds", &deps(&[("api", 2, false)]));
        assert_eq!(a.observe("legacy", &deps(&[("api", 3, false)])), "legacy");
        assert_eq!(a.observe("legacy", &deps(&[("api", 3, true)])), "legacy");
    }

    #[test]
    fn volume_uses_a_new_value_after_the_delay() {
        let t0 = Instant::now();
        let mut v = VolumeAdoption::new("legacy".into(), Duration::from_secs(60));
        assert_eq!(v.observe("rds", t0), "legacy");
        assert_eq!(v.observe("rds", t0 + Duration::from_secs(59)), "legacy");
        assert_eq!(v.observe("rds", t0 + Duration::from_secs(60)), "rds");
        // A value changed again restarts the delay.
        assert_eq!(v.observe("other", t0 + Duration::from_secs(61)), "rds");
        assert_eq!(v.observe("other", t0 + Duration::from_secs(100)), "rds");
        assert_eq!(v.observe("other", t0 + Duration::from_secs(121)), "other");
    }
}
