//! The shop's users and what the applications' metrics say about them: a steady stream of
//! requests (10 per second per environment) that follows the `shop.<domain>` record's weights
//! in moto as resolvers would (weighted records split by weight, a simple record all one way),
//! each answered by the side it reaches; both sides count their requests by status and time
//! them in a histogram, exposed on `/metrics` in Prometheus's text format for the sandbox's
//! Prometheus server to scrape.
//!
//! Faults are injected on the AWS side through `POST /_sandbox/faults` (`{"error_rate": 0.3,
//! "latency_ms": 0}`): that share of its requests answers 503, spread evenly.

use aws_config::SdkConfig;
use axum::extract::{Query, State as AxState};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 9] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Requests per second each environment's users make: at a 10 % stage, one a second reaches
/// the new side, enough for an analysis window of a few seconds (a sandbox runs for every test,
/// dozens at a time in the suite, so its idle load is kept low).
pub const USERS_RPS: u64 = 10;

#[derive(Default)]
struct Series {
    by_code: BTreeMap<u16, u64>,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Every side's counters, keyed by `(env, side)`.
#[derive(Default, Clone)]
pub struct Metrics(Arc<Mutex<BTreeMap<(String, String), Series>>>);

impl Metrics {
    /// Counters with every environment's series of both sides present at zero from the start,
    /// as Prometheus's instrumentation guidelines advise: a rate over a window is then known
    /// as soon as requests arrive, not only once a new series has two samples.
    pub fn new(envs: &[&str]) -> Metrics {
        let m = Metrics::default();
        {
            let mut map = m.0.lock().unwrap_or_else(|p| p.into_inner());
            for env in envs {
                for side in ["aws", "legacy"] {
                    let s = map.entry((env.to_string(), side.to_string())).or_default();
                    s.by_code.insert(200, 0);
                    s.by_code.insert(503, 0);
                }
            }
        }
        m
    }

    fn record(&self, env: &str, side: &str, code: u16, secs: f64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let s = m.entry((env.to_string(), side.to_string())).or_default();
        *s.by_code.entry(code).or_default() += 1;
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                s.buckets[i] += 1;
            }
        }
        s.count += 1;
        s.sum += secs;
    }

    /// The exposition of the series whose side is `side` (and env `env`, when given).
    pub fn render(&self, side: &str, env: Option<&str>) -> String {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::from(
            "# HELP shop_http_requests_total Requests the shop answered, by status.\n# TYPE shop_http_requests_total counter\n",
        );
        let mine = || {
            m.iter()
                .filter(|((e, s), _)| s == side && env.is_none_or(|x| x == e))
        };
        for ((e, s), series) in mine() {
            for (code, n) in &series.by_code {
                out.push_str(&format!(
                    "shop_http_requests_total{{env=\"{e}\",side=\"{s}\",code=\"{code}\"}} {n}\n"
                ));
            }
        }
        out.push_str("# HELP shop_http_request_duration_seconds Time to answer.\n# TYPE shop_http_request_duration_seconds histogram\n");
        for ((e, s), series) in mine() {
            for (i, le) in BUCKETS.iter().enumerate() {
                out.push_str(&format!(
                    "shop_http_request_duration_seconds_bucket{{env=\"{e}\",side=\"{s}\",le=\"{le}\"}} {}\n",
                    series.buckets[i]
                ));
            }
            out.push_str(&format!(
                "shop_http_request_duration_seconds_bucket{{env=\"{e}\",side=\"{s}\",le=\"+Inf\"}} {}\n",
                series.count
            ));
            out.push_str(&format!(
                "shop_http_request_duration_seconds_sum{{env=\"{e}\",side=\"{s}\"}} {}\n",
                series.sum
            ));
            out.push_str(&format!(
                "shop_http_request_duration_seconds_count{{env=\"{e}\",side=\"{s}\"}} {}\n",
                series.count
            ));
        }
        out
    }
}

/// A fault injected into one environment's AWS side.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct Fault {
    /// Share of requests answered 503 (0–1).
    #[serde(default)]
    pub error_rate: f64,
    /// Extra latency of every request, in milliseconds.
    #[serde(default)]
    pub latency_ms: u64,
}

/// What one environment's AWS-side page handler shares.
#[derive(Clone)]
pub struct Side {
    /// The environment.
    pub env: String,
    /// The counters.
    pub metrics: Metrics,
    /// The injected fault and the number of requests answered so far.
    pub fault: Arc<Mutex<(Fault, u64)>>,
}

/// Simulated work of one request: 2–8 ms, varying with the request number.
fn work(n: u64) -> Duration {
    Duration::from_millis(2 + (n * 7919) % 7)
}

/// `GET /shop` on the AWS side: the user's page, 503 for the injected share.
pub async fn aws_page(AxState(side): AxState<Side>) -> (StatusCode, Json<Value>) {
    let start = Instant::now();
    let (fault, n) = {
        let mut f = side.fault.lock().unwrap_or_else(|p| p.into_inner());
        f.1 += 1;
        (f.0, f.1)
    };
    tokio::time::sleep(work(n) + Duration::from_millis(fault.latency_ms)).await;
    // Evenly spread: request n fails when ⌊n·rate⌋ grows.
    let fails = (n as f64 * fault.error_rate).floor() > ((n - 1) as f64 * fault.error_rate).floor();
    let code = if fails { 503 } else { 200 };
    side.metrics
        .record(&side.env, "aws", code, start.elapsed().as_secs_f64());
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        Json(json!({"side": "aws"})),
    )
}

/// `GET /metrics` on the AWS side of one environment.
pub async fn aws_metrics(AxState(side): AxState<Side>) -> String {
    side.metrics.render("aws", Some(&side.env))
}

/// `POST /_sandbox/faults`: sets the AWS side's fault; answers it.
pub async fn set_fault(AxState(side): AxState<Side>, Json(f): Json<Fault>) -> Json<Fault> {
    side.fault.lock().unwrap_or_else(|p| p.into_inner()).0 = f;
    Json(f)
}

/// `GET /shop?env=ENV` on the legacy side.
pub async fn legacy_page(
    AxState(metrics): AxState<Metrics>,
    Query(q): Query<BTreeMap<String, String>>,
) -> (StatusCode, Json<Value>) {
    let start = Instant::now();
    tokio::time::sleep(work(start.elapsed().subsec_nanos() as u64)).await;
    let env = q.get("env").cloned().unwrap_or_else(|| "production".into());
    metrics.record(&env, "legacy", 200, start.elapsed().as_secs_f64());
    (StatusCode::OK, Json(json!({"side": "legacy"})))
}

/// `GET /metrics` on the legacy side.
pub async fn legacy_metrics(AxState(metrics): AxState<Metrics>) -> String {
    metrics.render("legacy", None)
}

/// The shop record's weights `(aws, legacy)` in `zone`, as resolvers split traffic.
async fn weights(r53: &aws_sdk_route53::Client, zone: &str, record: &str) -> Option<(i64, i64)> {
    let sets = r53
        .list_resource_record_sets()
        .hosted_zone_id(zone)
        .send()
        .await
        .ok()?;
    let (mut aws, mut legacy) = (0, 0);
    for s in sets.resource_record_sets() {
        if s.name() != record {
            continue;
        }
        let value = s
            .resource_records()
            .first()
            .map(|r| r.value().to_string())
            .or_else(|| s.alias_target().map(|a| a.dns_name().to_string()))
            .unwrap_or_default();
        let w = if s.set_identifier().is_some() {
            s.weight().unwrap_or(0)
        } else {
            100
        };
        if value.contains("elb.amazonaws.com") {
            aws += w;
        } else {
            legacy += w;
        }
    }
    (aws + legacy > 0).then_some((aws, legacy))
}

/// Runs one environment's users forever.
pub async fn users(env: String, domain: String, aws: SdkConfig, aws_port: u16, legacy_port: u16) {
    let r53 = aws_sdk_route53::Client::new(&aws);
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
    {
        Ok(c) => c,
        Err(_) => return,
    };
    let record = format!("shop.{domain}.");
    // Resolvers' view of the record, refreshed every second apart from the requests, so a slow
    // moto never holds the users back.
    let split = Arc::new(Mutex::new((0i64, 100i64)));
    let view = split.clone();
    tokio::spawn(async move {
        let mut zone = None;
        loop {
            if zone.is_none() {
                zone = r53
                    .list_hosted_zones_by_name()
                    .dns_name(&domain)
                    .send()
                    .await
                    .ok()
                    .and_then(|z| z.hosted_zones().first().map(|z| z.id().to_string()));
            }
            if let Some(z) = &zone {
                if let Some(w) = weights(&r53, z.trim_start_matches("/hostedzone/"), &record).await
                {
                    *view.lock().unwrap_or_else(|p| p.into_inner()) = w;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut credit = 0i64;
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / USERS_RPS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let split = *split.lock().unwrap_or_else(|p| p.into_inner());
        // Smooth weighted round robin: exactly the weights' shares, evenly spread.
        let total = split.0 + split.1;
        credit += split.0;
        let url = if total > 0 && credit >= total {
            credit -= total;
            format!("http://127.0.0.1:{aws_port}/shop")
        } else {
            format!("http://127.0.0.1:{legacy_port}/shop?env={env}")
        };
        let c = client.clone();
        tokio::spawn(async move {
            let _ = c.get(url).send().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_counts_by_status_and_fills_cumulative_buckets() {
        let m = Metrics::default();
        m.record("staging", "aws", 200, 0.004);
        m.record("staging", "aws", 503, 0.02);
        m.record("dev", "aws", 200, 0.004);
        let text = m.render("aws", Some("staging"));
        let fresh = Metrics::new(&["staging"]).render("aws", Some("staging"));
        assert!(fresh.contains("code=\"503\"} 0\n"), "{fresh}");
        assert!(fresh.contains("le=\"+Inf\"} 0\n"), "{fresh}");
        assert!(text
            .contains("shop_http_requests_total{env=\"staging\",side=\"aws\",code=\"200\"} 1\n"));
        assert!(text.contains("code=\"503\"} 1\n"));
        assert!(!text.contains("env=\"dev\""));
        assert!(text.contains("le=\"0.005\"} 1\n"));
        assert!(text.contains("le=\"0.025\"} 2\n"));
        assert!(text.contains("le=\"+Inf\"} 2\n"));
    }
}
