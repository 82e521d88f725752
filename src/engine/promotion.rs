//! The promotion gate as a pure function over run summaries: which required environments lack
//! a succeeded run (a rehearsal or an execution, never a dry-run) of the same runbook digest that
//! finished within the policy's `max_age`. The caller lists the runs; nothing here reads a file.

use super::runs::RunSummary;
use crate::config::PromotionPolicy;
use std::collections::BTreeMap;
use std::time::Duration;

/// One line per environment of `policy.requires` the gate finds missing, given each
/// environment's runs (`runs[env]`; an absent key is an environment without runs) at `now`.
/// An unreadable `max_age` counts as zero (validate reports it).
pub fn missing(
    policy: &PromotionPolicy,
    digest: &str,
    runs: &BTreeMap<String, Vec<RunSummary>>,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    let max_age = crate::config::duration::parse_duration(&policy.max_age).unwrap_or_default();
    let age = |r: &RunSummary| -> Option<Duration> {
        let t = chrono::DateTime::parse_from_rfc3339(r.finished_at.as_deref()?).ok()?;
        Some(
            (now - t.with_timezone(&chrono::Utc))
                .to_std()
                .unwrap_or_default(),
        )
    };
    let mut out = Vec::new();
    for env in &policy.requires {
        let good: Vec<&RunSummary> = runs
            .get(env)
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .filter(|r| r.acted() && r.status.succeeded() && r.runbook_digest == digest)
            .collect();
        if good.iter().any(|r| age(r).is_some_and(|a| a <= max_age)) {
            continue;
        }
        let short = digest.get(..12).unwrap_or(digest);
        out.push(match good.iter().filter_map(|r| age(r)).min() {
            Some(a) => format!(
                "{env}: the last succeeded run of this runbook finished {}h ago, older than max_age {}",
                a.as_secs() / 3600,
                policy.max_age
            ),
            None => format!("{env}: no succeeded rehearsal of this runbook (digest {short})"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(env: &str, mode: &str, status: &str, digest: &str, hours_ago: i64) -> RunSummary {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z").unwrap();
        RunSummary {
            id: format!("{env}-{hours_ago}"),
            environment: env.into(),
            mode: Some(match mode {
                "dry-run" => crate::steps::context::Mode::DryRun,
                "execute" => crate::steps::context::Mode::Execute,
                _ => crate::steps::context::Mode::Rehearse,
            }),
            status: crate::engine::runs::RunState::Finished(match status {
                "succeeded" => crate::engine::event::RunStatus::Succeeded,
                _ => crate::engine::event::RunStatus::RolledBack,
            }),
            runbook: "shop".into(),
            runbook_digest: digest.into(),
            database: "shop_staging".into(),
            migration: None,
            write_outage_ms: None,
            reload: None,
            writes_missing: None,
            writes_failed: None,
            started_at: String::new(),
            finished_at: Some((now - chrono::Duration::hours(hours_ago)).to_rfc3339()),
        }
    }

    #[test]
    fn the_gate_wants_a_fresh_succeeded_rehearsal_of_the_same_digest_in_every_required_env() {
        let policy = PromotionPolicy {
            requires: vec!["staging".into(), "dev".into()],
            max_age: "7d".into(),
            approvers: Vec::new(),
        };
        let d = "a".repeat(64);
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut runs = BTreeMap::new();
        runs.insert(
            "staging".to_string(),
            vec![run("staging", "rehearse", "succeeded", &d, 2)],
        );
        runs.insert(
            "dev".to_string(),
            vec![
                run("dev", "dry-run", "succeeded", &d, 1),
                run("dev", "rehearse", "rolled-back", &d, 1),
                run("dev", "rehearse", "succeeded", &"b".repeat(64), 1),
                run("dev", "rehearse", "succeeded", &d, 200),
            ],
        );
        let missing = missing(&policy, &d, &runs, now);
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(
            missing[0].starts_with("dev: the last succeeded run of this runbook finished 200h ago"),
            "{missing:?}"
        );
        runs.remove("staging");
        let missing = super::missing(&policy, &d, &runs, now);
        assert!(
            missing[0].starts_with("staging: no succeeded rehearsal"),
            "{missing:?}"
        );
    }
}
