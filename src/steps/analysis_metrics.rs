//! Metric checks of an analysis window: a query over the metrics of real traffic (Prometheus
//! PromQL, CloudWatch `GetMetricData`) measured `count` times, each measurement judged by a
//! success and/or failure condition, in the manner of Argo Rollouts' AnalysisTemplate metrics
//! (`successCondition`, `failureCondition`, `failureLimit`, `inconclusiveLimit`,
//! `consecutiveErrorLimit`, `initialDelay`, whose defaults are kept: 0, 0, 4, none).
//!
//! The rule this module owns: a metric passes only on evidence. No series, no datapoint, NaN or
//! an infinite value is inconclusive; a query that could not be run is an error; a metric with
//! no successful measurement is never successful. It neither moves traffic nor decides what a
//! failed window undoes.

use super::{StepContext, StepError};
use crate::providers::metrics::{self, CloudWatchMetric, Reading};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// One `metrics:` entry of an `analysis:` block.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MetricCheck {
    /// Name shown in progress and the audit, e.g. `error-rate`.
    pub name: String,
    /// A PromQL instant query: {address, query}.
    #[serde(default)]
    pub prometheus: Option<PrometheusQuery>,
    /// A CloudWatch metric: {namespace, metric_name, dimensions, stat, period, lookback}.
    #[serde(default)]
    pub cloudwatch: Option<CloudWatchQuery>,
    /// The measurement passes when this holds, e.g. `result < 0.05`.
    #[serde(default)]
    pub success: Option<String>,
    /// The measurement fails when this holds, e.g. `result > 0.5`. With both conditions, a
    /// measurement meeting neither is inconclusive.
    #[serde(default)]
    pub failure: Option<String>,
    /// Measurements per window (default 3).
    #[serde(default = "default_count")]
    pub count: u32,
    /// Pause between measurements (default 5s).
    #[serde(default = "default_interval", with = "super::duration_text")]
    #[schemars(with = "String")]
    pub interval: Duration,
    /// Wait before the first measurement, so that a rate window holds traffic of the new stage
    /// (default 0s).
    #[serde(default, with = "super::duration_text")]
    #[schemars(with = "String")]
    pub initial_delay: Duration,
    /// Failed measurements the metric tolerates (default 0).
    #[serde(default)]
    pub failure_limit: u32,
    /// Inconclusive measurements the metric tolerates (default 0): beyond it the window fails.
    #[serde(default)]
    pub inconclusive_limit: u32,
    /// Errors in a row (the query could not run) the metric tolerates (default 4).
    #[serde(default = "default_errors")]
    pub consecutive_error_limit: u32,
}

/// A Prometheus instant query.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusQuery {
    /// Server base URL, e.g. `http://prometheus.monitoring:9090`.
    pub address: String,
    /// PromQL returning one series or a scalar.
    pub query: String,
}

/// A CloudWatch metric read with `GetMetricData`.
#[derive(Debug, Clone, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CloudWatchQuery {
    /// e.g. `AWS/ApplicationELB`.
    pub namespace: String,
    /// e.g. `HTTPCode_Target_5XX_Count`.
    pub metric_name: String,
    /// Dimension name → value.
    #[serde(default)]
    pub dimensions: BTreeMap<String, String>,
    /// Statistic (default `Sum`): `Sum`, `Average`, `Maximum`, `Minimum`, `SampleCount`, `pNN`.
    #[serde(default = "default_stat")]
    pub stat: String,
    /// Period in seconds (default 60).
    #[serde(default = "default_period")]
    pub period: i32,
    /// How far back the latest datapoint may be (default 5m).
    #[serde(default = "default_lookback", with = "super::duration_text")]
    #[schemars(with = "String")]
    pub lookback: Duration,
}

fn default_count() -> u32 {
    3
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_errors() -> u32 {
    4
}
fn default_stat() -> String {
    "Sum".into()
}
fn default_period() -> i32 {
    60
}
fn default_lookback() -> Duration {
    Duration::from_secs(300)
}

/// A comparison of the measured value: `result OP NUMBER`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    op: Op,
    threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

/// The comparison operators a condition may use.
pub const OPERATORS: &str = "<, <=, >, >=, ==, !=";

impl Condition {
    /// Parses `result < 0.05` (spaces optional).
    ///
    /// # Errors
    /// A message showing the form and the valid operators.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let bad = || {
            format!("condition `{text}`: expected `result OP NUMBER` with OP one of {OPERATORS}")
        };
        let rest = text
            .trim()
            .strip_prefix("result")
            .ok_or_else(bad)?
            .trim_start();
        let (op, rest) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|r| (*op, r)))
        .ok_or_else(bad)?;
        let threshold: f64 = rest.trim().parse().map_err(|_| bad())?;
        if !threshold.is_finite() {
            return Err(bad());
        }
        Ok(Condition { op, threshold })
    }

    /// Whether `v` meets the condition.
    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            Op::Lt => v < self.threshold,
            Op::Le => v <= self.threshold,
            Op::Gt => v > self.threshold,
            Op::Ge => v >= self.threshold,
            Op::Eq => v == self.threshold,
            Op::Ne => v != self.threshold,
        }
    }
}

/// A measurement's or a metric's result, as Argo Rollouts names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// The success condition held (or the failure condition did not).
    Successful,
    /// The failure condition held (or the success condition did not).
    Failed,
    /// No data, NaN, or neither condition held.
    Inconclusive,
    /// The query could not run.
    Error,
}

/// One measurement, recorded in the audit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    /// When it was taken (RFC 3339).
    pub at: String,
    /// The value; `null` with no data or an error.
    pub value: Option<f64>,
    /// Its result.
    pub phase: Phase,
    /// Why it is not successful (no data, NaN, the error, the unmet condition).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// A metric's judgement in one window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricVerdict {
    /// The metric's name.
    pub name: String,
    /// `prometheus: QUERY` or `cloudwatch: NAMESPACE/METRIC STAT`.
    pub query: String,
    /// Each measurement in order.
    pub measurements: Vec<Measurement>,
    /// The metric's result.
    pub phase: Phase,
    /// Why it is not successful.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

impl MetricCheck {
    /// Problems of the entry: exactly one provider, at least one condition, each parseable,
    /// a count of at least 1.
    pub fn problems(&self) -> Vec<String> {
        let at = format!("analysis.metrics[{}]", self.name);
        let mut out = Vec::new();
        match (&self.prometheus, &self.cloudwatch) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => out.push(format!(
                "{at}: exactly one of `prometheus` and `cloudwatch` is required"
            )),
        }
        if self.success.is_none() && self.failure.is_none() {
            out.push(format!(
                "{at}: a `success` or `failure` condition is required"
            ));
        }
        for c in self.success.iter().chain(&self.failure) {
            if let Err(e) = Condition::parse(c) {
                out.push(format!("{at}: {e}"));
            }
        }
        if self.count == 0 {
            out.push(format!("{at}: count must be at least 1"));
        }
        out
    }

    /// `prometheus: QUERY` or `cloudwatch: NAMESPACE/METRIC STAT over PERIODs`.
    pub fn describe_query(&self) -> String {
        match (&self.prometheus, &self.cloudwatch) {
            (Some(p), _) => format!("prometheus: {}", p.query),
            (_, Some(c)) => format!(
                "cloudwatch: {}/{} {} over {}s",
                c.namespace, c.metric_name, c.stat, c.period
            ),
            _ => "no query".into(),
        }
    }

    /// A one-line description for dry-runs.
    pub fn describe(&self) -> String {
        let cond = [
            self.success.as_ref().map(|s| format!("pass if {s}")),
            self.failure.as_ref().map(|f| format!("fail if {f}")),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        format!(
            "{}: {} × {} every {}s ({cond}; failures ≤ {}, inconclusive ≤ {})",
            self.name,
            self.count,
            self.describe_query(),
            self.interval.as_secs_f64(),
            self.failure_limit,
            self.inconclusive_limit
        )
    }

    /// The phase of one reading: conditions applied as Argo Rollouts applies them.
    pub fn judge(&self, reading: &Reading) -> (Phase, String) {
        let v = match reading {
            Reading::NoData => return (Phase::Inconclusive, "no data".into()),
            Reading::Value(v) if !v.is_finite() => {
                return (Phase::Inconclusive, format!("value {v} is not a number"))
            }
            Reading::Value(v) => *v,
        };
        let parse = |c: &Option<String>| c.as_deref().and_then(|c| Condition::parse(c).ok());
        match (parse(&self.success), parse(&self.failure)) {
            (Some(s), Some(f)) => {
                if f.holds(v) {
                    (
                        Phase::Failed,
                        format!("{v} meets `{}`", self.failure.as_deref().unwrap_or("")),
                    )
                } else if s.holds(v) {
                    (Phase::Successful, String::new())
                } else {
                    (Phase::Inconclusive, format!("{v} meets neither condition"))
                }
            }
            (Some(s), None) if s.holds(v) => (Phase::Successful, String::new()),
            (Some(_), None) => (
                Phase::Failed,
                format!(
                    "{v} does not meet `{}`",
                    self.success.as_deref().unwrap_or("")
                ),
            ),
            (None, Some(f)) if f.holds(v) => (
                Phase::Failed,
                format!("{v} meets `{}`", self.failure.as_deref().unwrap_or("")),
            ),
            (None, Some(_)) => (Phase::Successful, String::new()),
            (None, None) => (Phase::Inconclusive, "no condition".into()),
        }
    }

    /// The metric's phase from its measurements, with the reasons it is not successful.
    pub fn conclude(&self, ms: &[Measurement]) -> (Phase, Vec<String>) {
        let count = |p: Phase| ms.iter().filter(|m| m.phase == p).count() as u32;
        let (failed, inconclusive, ok) = (
            count(Phase::Failed),
            count(Phase::Inconclusive),
            count(Phase::Successful),
        );
        let mut run = 0u32;
        let mut worst_run = 0u32;
        for m in ms {
            run = if m.phase == Phase::Error { run + 1 } else { 0 };
            worst_run = worst_run.max(run);
        }
        let mut reasons = Vec::new();
        let name = &self.name;
        if failed > self.failure_limit {
            reasons.push(format!(
                "{name}: {failed} failed measurement(s) > failure limit {}",
                self.failure_limit
            ));
            return (Phase::Failed, reasons);
        }
        if worst_run > self.consecutive_error_limit {
            reasons.push(format!(
                "{name}: {worst_run} errors in a row > consecutive error limit {}",
                self.consecutive_error_limit
            ));
            return (Phase::Error, reasons);
        }
        if inconclusive > self.inconclusive_limit {
            reasons.push(format!(
                "{name}: {inconclusive} inconclusive measurement(s) > inconclusive limit {}",
                self.inconclusive_limit
            ));
            return (Phase::Inconclusive, reasons);
        }
        if ok == 0 {
            reasons.push(format!("{name}: no successful measurement"));
            return (Phase::Inconclusive, reasons);
        }
        (Phase::Successful, reasons)
    }

    /// Measures the metric `count` times, `interval` apart after `initial_delay`, stopping
    /// early once its verdict cannot be successful. Each wait is a safe point.
    ///
    /// # Errors
    /// [`StepError::Timeout`] or [`StepError::Panic`] from the safe points; a query that fails
    /// is an `error` measurement, not an `Err`.
    pub async fn run(&self, cx: &StepContext<'_>, label: &str) -> Result<MetricVerdict, StepError> {
        let http = crate::providers::http::client()?;
        let mut ms: Vec<Measurement> = Vec::new();
        sleep_checked(cx, self.initial_delay, label).await?;
        for i in 0..self.count {
            if i > 0 {
                sleep_checked(cx, self.interval, label).await?;
            }
            cx.check_deadline(&format!("the {label} analysis ({})", self.name))?;
            let reading = match (&self.prometheus, &self.cloudwatch) {
                (Some(p), _) => metrics::prometheus(&http, &p.address, &p.query).await,
                (_, Some(c)) => match cx.providers.aws().await {
                    Ok(session) => {
                        let m = CloudWatchMetric {
                            namespace: c.namespace.clone(),
                            metric_name: c.metric_name.clone(),
                            dimensions: c.dimensions.clone(),
                            stat: c.stat.clone(),
                            period_s: c.period,
                        };
                        metrics::cloudwatch(session, &m, c.lookback).await
                    }
                    Err(e) => Err(e),
                },
                _ => Err(crate::providers::ProviderError::Http("no query".into())),
            };
            let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            let m = match reading {
                Ok(r) => {
                    let (phase, message) = self.judge(&r);
                    Measurement {
                        at,
                        value: match r {
                            Reading::Value(v) if v.is_finite() => Some(v),
                            _ => None,
                        },
                        phase,
                        message,
                    }
                }
                Err(e) => Measurement {
                    at,
                    value: None,
                    phase: Phase::Error,
                    message: e.to_string(),
                },
            };
            (cx.progress)(&format!(
                "{label}: {} measurement {}/{}: {} {}",
                self.name,
                i + 1,
                self.count,
                m.value.map_or("—".to_string(), |v| format!("{v}")),
                serde_json::to_value(m.phase)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            ));
            ms.push(m);
            if self.conclude_early(&ms) {
                break;
            }
        }
        let (phase, reasons) = self.conclude(&ms);
        Ok(MetricVerdict {
            name: self.name.clone(),
            query: self.describe_query(),
            measurements: ms,
            phase,
            reasons,
        })
    }

    /// Whether the measurements so far already decide that the metric is not successful: more
    /// failures, inconclusive results or errors in a row than its limits allow.
    fn conclude_early(&self, ms: &[Measurement]) -> bool {
        let count = |p: Phase| ms.iter().filter(|m| m.phase == p).count() as u32;
        let errors_in_a_row = ms
            .iter()
            .rev()
            .take_while(|m| m.phase == Phase::Error)
            .count() as u32;
        count(Phase::Failed) > self.failure_limit
            || count(Phase::Inconclusive) > self.inconclusive_limit
            || errors_in_a_row > self.consecutive_error_limit
    }
}

async fn sleep_checked(cx: &StepContext<'_>, d: Duration, label: &str) -> Result<(), StepError> {
    cx.wait(d, &format!("the {label} analysis")).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(success: Option<&str>, failure: Option<&str>) -> MetricCheck {
        serde_json::from_value(serde_json::json!({
            "name": "error-rate",
            "prometheus": {"address": "http://p", "query": "up"},
            "success": success, "failure": failure, "count": 3
        }))
        .unwrap()
    }

    fn m(phase: Phase) -> Measurement {
        Measurement {
            at: String::new(),
            value: None,
            phase,
            message: String::new(),
        }
    }

    #[test]
    fn conditions_parse_with_their_operators_and_bad_ones_list_the_choices() {
        assert!(Condition::parse("result < 0.05").unwrap().holds(0.01));
        assert!(!Condition::parse("result<0.05").unwrap().holds(0.05));
        assert!(Condition::parse("result <= 0.05").unwrap().holds(0.05));
        assert!(Condition::parse("result >= 1").unwrap().holds(1.0));
        assert!(Condition::parse("result == 0").unwrap().holds(0.0));
        assert!(Condition::parse("result != 0").unwrap().holds(1.0));
        let e = Condition::parse("rate < 1").unwrap_err();
        assert!(e.contains("<, <=, >, >=, ==, !="), "{e}");
        assert!(Condition::parse("result ~ 1").is_err());
        assert!(Condition::parse("result < NaN").is_err());
    }

    #[test]
    fn no_data_and_nan_are_inconclusive_never_a_pass() {
        let c = check(Some("result < 0.05"), None);
        assert_eq!(c.judge(&Reading::NoData).0, Phase::Inconclusive);
        assert_eq!(c.judge(&Reading::Value(f64::NAN)).0, Phase::Inconclusive);
        assert_eq!(
            c.judge(&Reading::Value(f64::INFINITY)).0,
            Phase::Inconclusive
        );
        assert_eq!(c.judge(&Reading::Value(0.01)).0, Phase::Successful);
        assert_eq!(c.judge(&Reading::Value(0.3)).0, Phase::Failed);
        let both = check(Some("result < 0.05"), Some("result > 0.2"));
        assert_eq!(both.judge(&Reading::Value(0.1)).0, Phase::Inconclusive);
        assert_eq!(both.judge(&Reading::Value(0.3)).0, Phase::Failed);
        let fail_only = check(None, Some("result > 0.2"));
        assert_eq!(fail_only.judge(&Reading::Value(0.1)).0, Phase::Successful);
    }

    #[test]
    fn limits_decide_the_metric_and_nothing_defaults_to_success() {
        let mut c = check(Some("result < 0.05"), None);
        use Phase::*;
        assert_eq!(c.conclude(&[m(Successful), m(Successful)]).0, Successful);
        assert_eq!(c.conclude(&[m(Successful), m(Failed)]).0, Failed);
        assert_eq!(
            c.conclude(&[m(Successful), m(Inconclusive)]).0,
            Inconclusive
        );
        assert_eq!(c.conclude(&[]).0, Inconclusive);
        c.inconclusive_limit = 1;
        assert_eq!(c.conclude(&[m(Successful), m(Inconclusive)]).0, Successful);
        // Within the limit, but not one success: still never a pass.
        assert_eq!(c.conclude(&[m(Inconclusive)]).0, Inconclusive);
        c.failure_limit = 1;
        assert_eq!(c.conclude(&[m(Failed), m(Successful)]).0, Successful);
        c.consecutive_error_limit = 1;
        assert_eq!(
            c.conclude(&[m(Error), m(Successful), m(Error)]).0,
            Successful
        );
        let (p, why) = c.conclude(&[m(Successful), m(Error), m(Error)]);
        assert_eq!(p, Error);
        assert!(why[0].contains("2 errors in a row"), "{why:?}");
    }

    #[test]
    fn an_entry_needs_one_provider_and_a_condition() {
        let mut c = check(None, None);
        assert!(c.problems().iter().any(|p| p.contains("condition")));
        c.success = Some("result < x".into());
        assert!(c
            .problems()
            .iter()
            .any(|p| p.contains("expected `result OP NUMBER`")));
        c.success = Some("result < 1".into());
        c.prometheus = None;
        assert!(c.problems().iter().any(|p| p.contains("exactly one of")));
    }
}
