//! `http.check`: the service answers on the new side. GETs the URL until `consecutive` answers in
//! a row have the expected status; fails at the step's deadline (no answer is a failure, never a
//! pass).

use super::{Applied, Kind, Plan, StepContext, StepError};
use crate::providers::http::{client, probe};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long one request may take before it counts as unanswered.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The `http.check` kind.
pub struct HttpCheck;

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// URL to GET.
    url: String,
    /// HTTP status that counts as healthy (default 200).
    #[serde(default = "default_status")]
    expect_status: u16,
    /// Healthy answers needed in a row (default 3).
    #[serde(default = "default_consecutive")]
    consecutive: u32,
    /// Pause between requests, e.g. 1s (default 1s).
    #[serde(default = "default_interval", with = "super::duration_text")]
    #[schemars(with = "String")]
    interval: Duration,
}

fn default_status() -> u16 {
    200
}
fn default_consecutive() -> u32 {
    3
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}

/// What `http.check` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The URL probed.
    url: String,
    /// Requests made.
    attempts: u32,
    /// Healthy answers in a row at the end.
    passes: u32,
    /// The last answer's HTTP status (`null` when it did not answer).
    last_status: Option<u16>,
}

#[async_trait]
impl Kind for HttpCheck {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "http.check";
    const PURPOSE: &'static str = "Confirm the service is healthy on the new side: N consecutive healthy answers before the deadline";
    const UNDO: &'static str = "Nothing to undo: the check is read-only";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    async fn plan(&self, _cx: &StepContext, p: &Params) -> Result<Plan<(), ()>, StepError> {
        let c = client()?;
        let now = probe(&c, &p.url, PROBE_TIMEOUT).await;
        let seen = match (now.status, now.error) {
            (Some(s), _) => format!("now answers {s}"),
            (None, Some(e)) => format!("now unreachable: {e}"),
            _ => "no answer".into(),
        };
        Ok(Plan::check(
            format!("GET {}", p.url),
            format!("{} × {} in a row; {seen}", p.consecutive, p.expect_status),
        ))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let c = client()?;
        let (mut attempts, mut streak) = (0u32, 0u32);
        let mut latencies = Vec::new();
        loop {
            attempts += 1;
            let r = cx
                .watched(
                    probe(&c, &p.url, PROBE_TIMEOUT),
                    &format!("{} to answer", p.url),
                )
                .await?;
            let ok = r.status == Some(p.expect_status);
            if ok {
                streak += 1;
                latencies.push(r.latency_ms);
            } else {
                streak = 0;
            }
            if streak >= p.consecutive.max(1) {
                latencies.sort_unstable();
                let summary = format!(
                    "{streak} × {} in a row from {} (max {} ms)",
                    p.expect_status,
                    p.url,
                    latencies.last().unwrap_or(&0)
                );
                return Ok(Applied::new(Outputs {
                    url: p.url.clone(),
                    attempts,
                    passes: streak,
                    last_status: r.status,
                })
                .summary(summary));
            }
            let last = match (r.status, &r.error) {
                (Some(s), _) => format!("HTTP {s}"),
                (None, Some(e)) => e.clone(),
                _ => "no answer".into(),
            };
            let unhealthy = || {
                StepError::Check(format!("{} unhealthy: {attempts} attempts, last answer {last}; needed {} × {} in a row", p.url, p.consecutive, p.expect_status))
            };
            if cx.remaining() < p.interval {
                return Err(unhealthy());
            }
            if !ok {
                (cx.progress)(&format!(
                    "{} answered {last}; retrying for up to {}s",
                    p.url,
                    cx.remaining().as_secs()
                ));
            }
            // The deadline may still pass during the pause (a loaded machine oversleeps): the
            // step then fails as unhealthy, naming the last answer, as it would have at the check.
            match cx
                .wait(p.interval, &format!("the next probe of {}", p.url))
                .await
            {
                Err(StepError::Timeout(_)) => return Err(unhealthy()),
                other => other?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::{http_statuses as server, Harness};

    fn params(url: &str) -> Params {
        Params {
            url: url.into(),
            expect_status: 200,
            consecutive: 3,
            interval: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn passes_after_the_needed_healthy_answers_in_a_row_and_changes_nothing() {
        let (url, served) = server(vec![200, 503, 200, 200, 200]).await;
        let h = Harness::new(|p| p);
        let cx = h.cx();
        let p = params(&url);
        let plan = HttpCheck.plan(&cx, &p).await.unwrap();
        assert!(
            plan.changes[0].detail.contains("now answers 200"),
            "{:?}",
            plan.changes
        );
        // The plan's probe was the first request; the 503 then breaks the first streak.
        let out = HttpCheck.apply(&cx, &p, &()).await.unwrap();
        assert_eq!(out.outputs.attempts, 4);
        assert_eq!(out.outputs.passes, 3);
        assert_eq!(out.outputs.last_status, Some(200));
        assert!(h
            .progress
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("HTTP 503")));
        // Run again (a resumed run): the same check, from scratch.
        let again = HttpCheck.apply(&cx, &p, &()).await.unwrap();
        assert_eq!(again.outputs.attempts, 3);
        assert_eq!(*served.lock().unwrap(), 8);
        assert!(HttpCheck
            .rollback(&cx, &p, &(), Some(&out.outputs))
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn an_unhealthy_service_fails_at_the_deadline_naming_the_last_answer() {
        let (url, _) = server(vec![503]).await;
        let h = Harness::new(|p| p);
        let mut cx = h.cx();
        cx.deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        let err = HttpCheck
            .apply(&cx, &params(&url), &())
            .await
            .err()
            .expect("unhealthy");
        let text = err.to_string();
        assert!(
            text.contains("unhealthy") && text.contains("HTTP 503"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn no_answer_is_a_failure_never_a_pass() {
        // A port nothing listens on: bound, then closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", l.local_addr().unwrap());
        drop(l);
        let h = Harness::new(|p| p);
        let mut cx = h.cx();
        cx.deadline = tokio::time::Instant::now() + Duration::from_millis(200);
        let plan = HttpCheck.plan(&cx, &params(&url)).await.unwrap();
        assert!(
            plan.changes[0].detail.contains("unreachable"),
            "{:?}",
            plan.changes
        );
        let err = HttpCheck.apply(&cx, &params(&url), &()).await;
        assert!(err.is_err());
    }
}
