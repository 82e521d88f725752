//! Metric queries for analysis windows: Prometheus's HTTP API (`GET /api/v1/query`, an instant
//! query) and CloudWatch `GetMetricData` (read with the environment's assumed role).
//!
//! A query yields one number or says why it cannot: no series or datapoint ([`Reading::NoData`],
//! which an analysis treats as inconclusive, never as a pass), or a failure to ask
//! ([`ProviderError`]). Judging the number is the analysis's business, not this module's.

use super::aws::{err, AwsSession};
use super::ProviderError;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long one Prometheus query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What one query returned.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reading {
    /// One value (may be NaN or infinite, as PromQL's division by zero gives).
    Value(f64),
    /// The query matched no series, or the metric has no datapoint in the period.
    NoData,
}

/// Runs the PromQL instant query `query` against the server at `address` (e.g.
/// `http://prometheus:9090`). A vector result must hold at most one series (aggregate with
/// `sum`, `max`, ...); a scalar is taken as is.
///
/// # Errors
/// [`ProviderError::Http`] when the server cannot be reached, answers an error
/// (`status: error`, with its `errorType` and `error`), or returns several series or a result
/// type other than vector or scalar.
pub async fn prometheus(
    client: &reqwest::Client,
    address: &str,
    query: &str,
) -> Result<Reading, ProviderError> {
    let url = reqwest::Url::parse_with_params(
        &format!("{}/api/v1/query", address.trim_end_matches('/')),
        &[("query", query)],
    )
    .map_err(|e| ProviderError::Http(format!("Prometheus address {address}: {e}")))?;
    let resp = client
        .get(url)
        .timeout(QUERY_TIMEOUT)
        .send()
        .await
        .map_err(|e| ProviderError::Http(format!("Prometheus {address}: {}", e.without_url())))?;
    let code = resp.status();
    let body: Value = resp
        .json()
        .await
        .map_err(|e| ProviderError::Http(format!("Prometheus {address}: HTTP {code}: {e}")))?;
    parse_prometheus(&body).map_err(|m| ProviderError::Http(format!("Prometheus {address}: {m}")))
}

/// The reading of a Prometheus `/api/v1/query` response body.
///
/// # Errors
/// A message for an error response, several series, or an unexpected shape.
pub fn parse_prometheus(body: &Value) -> Result<Reading, String> {
    if body["status"] != "success" {
        return Err(format!(
            "{}: {}",
            body["errorType"].as_str().unwrap_or("error"),
            body["error"].as_str().unwrap_or("no message")
        ));
    }
    let number = |v: &Value| -> Result<f64, String> {
        v.get(1)
            .and_then(Value::as_str)
            .ok_or("a sample without a value".to_string())?
            .parse::<f64>()
            .map_err(|e| format!("sample value: {e}"))
    };
    match body.pointer("/data/resultType").and_then(Value::as_str) {
        Some("scalar") => Ok(Reading::Value(number(&body["data"]["result"])?)),
        Some("vector") => {
            let series = body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            match series.len() {
                0 => Ok(Reading::NoData),
                1 => Ok(Reading::Value(number(&series[0]["value"])?)),
                n => Err(format!(
                    "the query returned {n} series; aggregate it to one (sum, max, ...)"
                )),
            }
        }
        other => Err(format!(
            "result type {} is not vector or scalar",
            other.unwrap_or("(none)")
        )),
    }
}

/// A CloudWatch metric, as `GetMetricData`'s `MetricStat` names it.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudWatchMetric {
    /// e.g. `AWS/ApplicationELB`.
    pub namespace: String,
    /// e.g. `HTTPCode_Target_5XX_Count`.
    pub metric_name: String,
    /// Dimension name → value, e.g. `LoadBalancer` → `app/shop/0123`.
    pub dimensions: BTreeMap<String, String>,
    /// Statistic: `Sum`, `Average`, `Maximum`, `p95`, ...
    pub stat: String,
    /// Period in seconds (a multiple of 60, or 1, 5, 10, 30 for high-resolution metrics).
    pub period_s: i32,
}

/// The latest datapoint of `metric` within the last `lookback`.
///
/// # Errors
/// [`ProviderError::Aws`] when `GetMetricData` fails or reports the query's status as an error.
pub async fn cloudwatch(
    aws: &AwsSession,
    metric: &CloudWatchMetric,
    lookback: Duration,
) -> Result<Reading, ProviderError> {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, Metric, MetricDataQuery, MetricStat, ScanBy};
    let mut m = Metric::builder()
        .namespace(&metric.namespace)
        .metric_name(&metric.metric_name);
    for (k, v) in &metric.dimensions {
        m = m.dimensions(Dimension::builder().name(k).value(v).build());
    }
    let query = MetricDataQuery::builder()
        .id("m")
        .metric_stat(
            MetricStat::builder()
                .metric(m.build())
                .period(metric.period_s)
                .stat(&metric.stat)
                .build(),
        )
        .return_data(true)
        .build();
    let now = std::time::SystemTime::now();
    let out = aws_sdk_cloudwatch::Client::new(&aws.config)
        .get_metric_data()
        .metric_data_queries(query)
        .start_time(DateTime::from(now - lookback))
        .end_time(DateTime::from(now + Duration::from_secs(1)))
        .scan_by(ScanBy::TimestampDescending)
        .send()
        .await
        .map_err(|e| err("cloudwatch:GetMetricData", e))?;
    let result = out.metric_data_results().first();
    if let Some(r) = result {
        if r.status_code().map(|s| s.as_str()) == Some("InternalError") {
            return Err(ProviderError::Aws {
                op: "cloudwatch:GetMetricData".into(),
                message: r
                    .messages()
                    .iter()
                    .filter_map(|m| m.value())
                    .collect::<Vec<_>>()
                    .join("; "),
            });
        }
    }
    // The newest datapoint: CloudWatch returns them newest first with TimestampDescending;
    // take the one with the greatest timestamp either way (moto does not order them).
    let latest = result.and_then(|r| {
        r.timestamps()
            .iter()
            .zip(r.values())
            .max_by(|a, b| {
                a.0.secs()
                    .cmp(&b.0.secs())
                    .then(a.0.subsec_nanos().cmp(&b.0.subsec_nanos()))
            })
            .map(|(_, v)| *v)
    });
    Ok(latest.map_or(Reading::NoData, Reading::Value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prometheus_answers_read_as_one_value_no_data_or_an_error() {
        let one = json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.7e9, "0.25"]}]}});
        assert_eq!(parse_prometheus(&one), Ok(Reading::Value(0.25)));
        let none = json!({"status": "success", "data": {"resultType": "vector", "result": []}});
        assert_eq!(parse_prometheus(&none), Ok(Reading::NoData));
        let nan = json!({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1.7e9, "NaN"]}]}});
        assert!(matches!(parse_prometheus(&nan), Ok(Reading::Value(v)) if v.is_nan()));
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1.7e9, "3"]}});
        assert_eq!(parse_prometheus(&scalar), Ok(Reading::Value(3.0)));
        let two = json!({"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "1"]}, {"value": [1, "2"]}]}});
        assert!(parse_prometheus(&two).unwrap_err().contains("2 series"));
        let bad =
            json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"});
        assert_eq!(
            parse_prometheus(&bad),
            Err("bad_data: parse error at char 5".into())
        );
        let matrix = json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(parse_prometheus(&matrix).is_err());
    }
}
