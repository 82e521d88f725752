//! Analysis windows, in the manner of Argo Rollouts' and Flagger's analysis between traffic
//! steps: HTTP probes (a fixed number of requests against the new target, judged on success
//! rate, latency p95 and a closing run of consecutive passes) and metric checks over the real
//! traffic ([`super::analysis_metrics`]: Prometheus, CloudWatch), run side by side; the window
//! passes only when every part passes.
//!
//! The rule this module owns: a window passes only on evidence. No answer, too few samples or a
//! metric that could not be computed (a p95 with no successful request) fails the window; nothing
//! defaults to a pass. It does not move traffic or decide what a failure undoes: the step does.

use super::analysis_metrics::{MetricCheck, MetricVerdict, Phase};
use super::{StepContext, StepError};
use crate::providers::http::{client, probe};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// An `analysis:` block of a step's parameters.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// URL to GET on the new target (directly, not through the record being moved); absent:
    /// no HTTP probes, the metrics alone judge.
    #[serde(default)]
    pub url: Option<String>,
    /// Metric checks over the real traffic, each judged on its own; all must succeed.
    #[serde(default)]
    pub metrics: Vec<MetricCheck>,
    /// Requests per window (default 10); a window that collects fewer fails.
    #[serde(default = "default_samples")]
    pub samples: u32,
    /// Pause between requests (default 1s).
    #[serde(default = "default_interval", with = "super::duration_text")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Minimum share of answers with `expect_status`, in percent (default 100).
    #[serde(default = "default_rate")]
    pub min_success_rate: f64,
    /// Maximum 95th-percentile latency of the successful answers, in milliseconds (default 1000).
    #[serde(default = "default_p95")]
    pub max_p95_ms: u64,
    /// The window's last this-many answers must all pass (default 3).
    #[serde(default = "default_consecutive")]
    pub consecutive: u32,
    /// HTTP status that counts as a pass (default 200).
    #[serde(default = "default_status")]
    pub expect_status: u16,
}

fn default_samples() -> u32 {
    10
}
fn default_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_rate() -> f64 {
    100.0
}
fn default_p95() -> u64 {
    1000
}
fn default_consecutive() -> u32 {
    3
}
fn default_status() -> u16 {
    200
}

/// One request of a window.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// Whether the answer had the expected status.
    pub ok: bool,
    /// Time to response headers, in milliseconds.
    pub latency_ms: u64,
    /// `HTTP 503`, the transport error, or `HTTP 200`.
    pub answer: String,
}

/// The judgement of one window, recorded in the event log as the stage's evidence.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Verdict {
    /// Requests made.
    pub samples: u32,
    /// Requests that passed.
    pub passes: u32,
    /// Passes in percent of requests (`null` with no request).
    pub success_rate: Option<f64>,
    /// 95th-percentile latency of the passes by the nearest-rank method, in milliseconds
    /// (`null` with no pass).
    pub p95_ms: Option<u64>,
    /// Passes in a row at the end of the window.
    pub closing_passes: u32,
    /// Whether the window passed.
    pub passed: bool,
    /// Why it failed, one entry per unmet criterion.
    pub reasons: Vec<String>,
    /// Each metric check's measurements and result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<MetricVerdict>,
}

impl Analysis {
    /// Checks the parameters' ranges; one message per problem.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.url.is_none() && self.metrics.is_empty() {
            out.push("analysis needs a `url` (HTTP probes) or `metrics`".into());
        }
        for m in &self.metrics {
            out.extend(m.problems());
        }
        if self.samples == 0 {
            out.push("analysis.samples must be at least 1".into());
        }
        if !(0.0..=100.0).contains(&self.min_success_rate) {
            out.push(format!(
                "analysis.min_success_rate is a percentage (0–100), got {}",
                self.min_success_rate
            ));
        }
        if self.consecutive > self.samples {
            out.push(format!(
                "analysis.consecutive ({}) exceeds analysis.samples ({})",
                self.consecutive, self.samples
            ));
        }
        out
    }

    /// A one-line description for dry-runs: `10 × GET url every 1s: ≥100% 200, p95 ≤ 1000 ms,
    /// last 3 pass`, then each metric's.
    pub fn describe(&self) -> String {
        let http = self.url.as_ref().map(|url| {
            format!(
                "{} × GET {} every {}s: ≥{}% {}, p95 ≤ {} ms, last {} pass",
                self.samples,
                url,
                self.interval.as_secs_f64(),
                self.min_success_rate,
                self.expect_status,
                self.max_p95_ms,
                self.consecutive
            )
        });
        http.into_iter()
            .chain(self.metrics.iter().map(MetricCheck::describe))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Largest number of failed requests a window can hold and still pass.
    fn allowed_failures(&self) -> u32 {
        let needed = (self.min_success_rate / 100.0 * f64::from(self.samples)).ceil() as u32;
        self.samples.saturating_sub(needed)
    }

    /// Judges `samples` against the criteria. Pure: the rule the windows apply.
    pub fn judge(&self, samples: &[Sample]) -> Verdict {
        let n = samples.len() as u32;
        let passes = samples.iter().filter(|s| s.ok).count() as u32;
        let mut lat: Vec<u64> = samples
            .iter()
            .filter(|s| s.ok)
            .map(|s| s.latency_ms)
            .collect();
        lat.sort_unstable();
        // Nearest rank: the ceil(0.95 × n)-th smallest value.
        let p95 =
            (!lat.is_empty()).then(|| lat[((lat.len() as f64 * 0.95).ceil() as usize).max(1) - 1]);
        let rate = (n > 0).then(|| f64::from(passes) * 100.0 / f64::from(n));
        let closing = samples.iter().rev().take_while(|s| s.ok).count() as u32;
        let mut reasons = Vec::new();
        if n < self.samples {
            reasons.push(format!("too few samples: {n} of {}", self.samples));
        }
        match rate {
            None => reasons.push("no measurement: no request was answered".into()),
            Some(r) if r < self.min_success_rate => reasons.push(format!(
                "success rate {r:.1}% < {}% ({passes} of {n} answered {})",
                self.min_success_rate, self.expect_status
            )),
            _ => {}
        }
        match p95 {
            None => reasons.push("latency p95 missing: no successful request".into()),
            Some(p) if p > self.max_p95_ms => {
                reasons.push(format!("latency p95 {p} ms > {} ms", self.max_p95_ms))
            }
            _ => {}
        }
        if closing < self.consecutive {
            let last = samples.last().map(|s| s.answer.as_str()).unwrap_or("none");
            reasons.push(format!(
                "only {closing} passes in a row at the end, {} needed (last answer {last})",
                self.consecutive
            ));
        }
        Verdict {
            samples: n,
            passes,
            success_rate: rate,
            p95_ms: p95,
            closing_passes: closing,
            passed: reasons.is_empty(),
            reasons,
            metrics: Vec::new(),
        }
    }

    /// The window's verdict from its HTTP part (`None` without a `url`) and its metrics: passed
    /// only when every part passed. Pure.
    pub fn combine(http: Option<Verdict>, metrics: Vec<MetricVerdict>) -> Verdict {
        let mut v = http.unwrap_or(Verdict {
            samples: 0,
            passes: 0,
            success_rate: None,
            p95_ms: None,
            closing_passes: 0,
            passed: true,
            reasons: Vec::new(),
            metrics: Vec::new(),
        });
        for m in &metrics {
            if m.phase != Phase::Successful {
                v.passed = false;
                v.reasons.extend(m.reasons.iter().cloned());
            }
        }
        v.metrics = metrics;
        v
    }

    /// Runs one window: `samples` requests `interval` apart, ending early once more requests have
    /// failed than the success rate allows. Each wait is a safe point (deadline and panic flag).
    ///
    /// # Errors
    /// [`StepError::Timeout`] or [`StepError::Panic`] from the safe points; the verdict itself
    /// (pass or fail) is the `Ok` value.
    pub async fn run(&self, cx: &StepContext<'_>, label: &str) -> Result<Verdict, StepError> {
        let http = async {
            match &self.url {
                Some(url) => self.run_http(cx, label, url).await.map(Some),
                None => Ok(None),
            }
        };
        let metrics = futures_util::future::join_all(self.metrics.iter().map(|m| m.run(cx, label)));
        let (http, metrics) = tokio::join!(http, metrics);
        let metrics = metrics.into_iter().collect::<Result<Vec<_>, _>>()?;
        Ok(Self::combine(http?, metrics))
    }

    /// The HTTP part of a window.
    async fn run_http(
        &self,
        cx: &StepContext<'_>,
        label: &str,
        url: &str,
    ) -> Result<Verdict, StepError> {
        let c = client()?;
        let timeout = Duration::from_secs(5).min(self.interval.max(Duration::from_secs(2)));
        let mut samples = Vec::new();
        let allowed = self.allowed_failures();
        for i in 0..self.samples {
            let awaiting = format!("the {label} analysis window");
            if i > 0 {
                cx.wait(self.interval, &awaiting).await?;
            }
            cx.check_deadline(&awaiting)?;
            let r = cx.watched(probe(&c, url, timeout), &awaiting).await?;
            let ok = r.status == Some(self.expect_status);
            let answer = match (r.status, &r.error) {
                (Some(s), _) => format!("HTTP {s}"),
                (None, Some(e)) => e.clone(),
                _ => "no answer".into(),
            };
            samples.push(Sample {
                ok,
                latency_ms: r.latency_ms,
                answer,
            });
            let failed = samples.iter().filter(|s| !s.ok).count() as u32;
            (cx.progress)(&format!(
                "{label}: sample {}/{} {} ({} ms)",
                i + 1,
                self.samples,
                samples.last().map(|s| s.answer.as_str()).unwrap_or(""),
                r.latency_ms
            ));
            if failed > allowed {
                break;
            }
        }
        Ok(self.judge(&samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a() -> Analysis {
        serde_json::from_value(serde_json::json!({"url": "http://x/healthz", "samples": 5, "consecutive": 3, "max_p95_ms": 100})).unwrap()
    }

    fn s(ok: bool, ms: u64) -> Sample {
        Sample {
            ok,
            latency_ms: ms,
            answer: if ok {
                "HTTP 200".into()
            } else {
                "HTTP 503".into()
            },
        }
    }

    #[test]
    fn no_samples_is_a_failure_never_a_pass() {
        let v = a().judge(&[]);
        assert!(!v.passed);
        assert!(v
            .reasons
            .iter()
            .any(|r| r.contains("too few samples: 0 of 5")));
        assert!(v.reasons.iter().any(|r| r.contains("no measurement")));
        assert!(v.reasons.iter().any(|r| r.contains("p95 missing")));
    }

    #[test]
    fn too_few_samples_fail_even_when_all_passed() {
        let v = a().judge(&[s(true, 5), s(true, 5), s(true, 5)]);
        assert!(!v.passed);
        assert_eq!(v.reasons, vec!["too few samples: 3 of 5".to_string()]);
    }

    #[test]
    fn a_full_healthy_window_passes_with_its_figures() {
        let v = a().judge(&[s(true, 5), s(true, 9), s(true, 7), s(true, 50), s(true, 6)]);
        assert!(v.passed, "{:?}", v.reasons);
        assert_eq!(v.p95_ms, Some(50));
        assert_eq!(v.success_rate, Some(100.0));
        assert_eq!(v.closing_passes, 5);
    }

    #[test]
    fn slow_answers_and_a_failing_tail_fail_with_each_reason() {
        let v = a().judge(&[
            s(true, 500),
            s(true, 500),
            s(true, 500),
            s(true, 500),
            s(false, 1),
        ]);
        assert!(!v.passed);
        assert_eq!(v.reasons.len(), 3, "{:?}", v.reasons);
        assert!(v.reasons[0].starts_with("success rate 80.0%"));
        assert!(v.reasons[1].starts_with("latency p95 500 ms"));
        assert!(v.reasons[2].contains("last answer HTTP 503"));
    }

    #[test]
    fn allowed_failures_follow_the_success_rate() {
        let mut x = a();
        assert_eq!(x.allowed_failures(), 0);
        x.samples = 20;
        x.min_success_rate = 90.0;
        assert_eq!(x.allowed_failures(), 2);
    }
}
