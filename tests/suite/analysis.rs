//! Analysis windows judged by the metrics of real traffic, against the sandbox's real stand-ins:
//! Debian's Prometheus scraping both sides' `/metrics` while the sandbox's users follow the
//! record's weights, and CloudWatch metrics put into moto.

use crate::common;

use common::{block_on, events, text, Sandbox};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Sets the AWS side's injected fault in staging.
fn fault(sb: &Sandbox, error_rate: f64) {
    let url = format!("{}/_sandbox/faults", sb.var("CUTOVER_STAGING_APP_URL"));
    block_on(async {
        let r = reqwest::Client::new()
            .post(url)
            .json(&json!({"error_rate": error_rate}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    });
}

#[test]
fn the_aws_side_failing_30_percent_of_requests_in_stage_2_fails_the_prometheus_analysis_and_returns_all_weight(
) {
    let sb = Sandbox::start();
    let legacy = sb.shop_record("staging");
    // The committed shop runbook: its stages are judged by the AWS side's error rate and p95 in
    // Prometheus besides the health probes.
    let shop = std::fs::read_to_string(common::repo().join("runbooks/shop-cutover.yaml")).unwrap();
    assert!(shop.contains("name: error-rate") && shop.contains("name: latency-p95"));
    let rb = sb.extra_runbook(
        "shop-cutover-metrics",
        &shop.replace("name: shop-cutover\n", "name: shop-cutover-metrics\n"),
    );
    let (child, out_file, err_file) = sb.spawn_logged(&["rehearse", "staging", "--runbook", &rb]);
    // The fault starts once stage 2 (50 %) is in place: stage 1 passed on healthy traffic.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(300), "no stage 2");
        if sb.shop_weights("staging") == Some((50, 50)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    fault(&sb, 0.3);
    let (code, out) = sb.finish(child, 300);
    fault(&sb, 0.0);
    assert_eq!(code, Some(1), "{out}");
    let run = sb.run_ids().pop().unwrap();
    let records = sb.records(&run);
    let windows = events(&records, "analysis");
    assert_eq!(windows.len(), 2, "{windows:?}");
    let first = &windows[0]["data"]["verdict"];
    assert_eq!(first["passed"], true, "{first}");
    let second = &windows[1]["data"];
    assert_eq!(second["stage"], 2);
    let v = &second["verdict"];
    assert_eq!(v["passed"], false, "{v}");
    // The six health probes alone pass: only the real requests' metrics show the fault.
    assert_eq!(v["passes"], 6, "{v}");
    let rate = v["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "error-rate")
        .unwrap();
    assert_eq!(rate["phase"], "failed", "{rate}");
    let measured = rate["measurements"][0]["value"].as_f64().unwrap();
    assert!(measured > 0.05 && measured <= 0.35, "{rate}");
    assert!(rate["query"].as_str().unwrap().starts_with("prometheus: "));
    let shown =
        std::fs::read_to_string(&out_file).unwrap() + &std::fs::read_to_string(&err_file).unwrap();
    assert!(
        shown.contains("analysis of stage 2/3") && shown.contains("error-rate failed"),
        "{shown}"
    );
    // All weight went back to the legacy host and the run rolled back.
    assert!(!events(&records, "traffic_returned").is_empty());
    assert_eq!(sb.shop_record("staging"), legacy);
    assert_eq!(
        events(&records, "run_finished").last().unwrap()["data"]["status"],
        "rolled-back"
    );
    common::heartbeat_without_loss(&records);
}

/// A runbook of one `analysis.run` step with one metric check `metric` (YAML flow mapping).
fn window(name: &str, metric: &str) -> String {
    format!(
        "name: {name}\nphases:\n  - name: check\n    steps:\n      - id: window\n        kind: analysis.run\n        with:\n          metrics:\n            - {metric}\n"
    )
}

/// The newest run's final status, its window's verdict (as journaled) and the step's error.
fn verdict_of(sb: &Sandbox, before: &[String]) -> (String, Value, String) {
    // Run ids of the same second sort in any order: the new one is the one not seen before.
    let run = sb
        .run_ids()
        .into_iter()
        .find(|r| !before.contains(r))
        .expect("a new run");
    let records = sb.records(&run);
    let status = events(&records, "run_finished").last().unwrap()["data"]["status"]
        .as_str()
        .unwrap()
        .to_string();
    let verdict = events(&records, "analysis")
        .last()
        .map(|r| r["data"]["verdict"].clone())
        .unwrap_or(Value::Null);
    let error = events(&records, "step_failed")
        .first()
        .and_then(|r| r["data"]["error"].as_str().map(str::to_string))
        .unwrap_or_default();
    (status, verdict, error)
}

#[test]
fn a_query_with_no_series_is_inconclusive_and_cloudwatch_metrics_pass_and_fail_a_window() {
    let sb = Sandbox::start();
    let prom = sb.var("CUTOVER_STAGING_PROMETHEUS_URL");

    // No series: inconclusive, and the limit decides how it is reported; never a pass.
    let none = format!("{{name: orders, prometheus: {{address: \"{prom}\", query: \"sum(rate(no_such_metric_total[10s]))\"}}, success: \"result < 1\", count: 2, interval: 1s}}");
    let rb = sb.extra_runbook("no-series", &window("no-series", &none));
    let before = sb.run_ids();
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (status, v, e) = verdict_of(&sb, &before);
    assert_eq!(status, "rolled-back");
    assert!(
        e.contains("orders: 1 inconclusive measurement(s) > inconclusive limit 0"),
        "{e}"
    );
    let m = &v["metrics"][0];
    assert_eq!(m["phase"], "inconclusive", "{v}");
    assert_eq!(m["measurements"][0]["message"], "no data", "{m}");
    let tolerant = none.replace("count: 2", "count: 2, inconclusive_limit: 5");
    let rb = sb.extra_runbook(
        "no-series-tolerant",
        &window("no-series-tolerant", &tolerant),
    );
    let before = sb.run_ids();
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (_, v, e) = verdict_of(&sb, &before);
    assert!(e.contains("orders: no successful measurement"), "{e}");
    assert_eq!(
        v["metrics"][0]["measurements"].as_array().unwrap().len(),
        2,
        "{v}"
    );

    // The legacy side's real traffic exists: the same kind of query passes.
    let live = format!("{{name: legacy-traffic, prometheus: {{address: \"{prom}\", query: \"sum(rate(shop_http_requests_total{{env=\\\"staging\\\",side=\\\"legacy\\\"}}[30s]))\"}}, success: \"result > 0.5\", count: 3, interval: 1s, inconclusive_limit: 2}}");
    let rb = sb.extra_runbook("live", &window("live", &live));
    let before = sb.run_ids();
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, v, _) = verdict_of(&sb, &before);
    let m = &v["metrics"][0];
    assert_eq!(m["phase"], "successful", "{v}");
    assert!(m["measurements"][0]["value"].as_f64().unwrap() > 0.5, "{m}");

    // CloudWatch: the load balancer's 5xx count, put into moto.
    let lb = "app/shop-staging/0123456789abcdef";
    let put = |value: f64| {
        let cfg = sb.aws("staging");
        block_on(async {
            use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};
            aws_sdk_cloudwatch::Client::new(&cfg)
                .put_metric_data()
                .namespace("AWS/ApplicationELB")
                .metric_data(
                    MetricDatum::builder()
                        .metric_name("HTTPCode_Target_5XX_Count")
                        .dimensions(Dimension::builder().name("LoadBalancer").value(lb).build())
                        .value(value)
                        .unit(StandardUnit::Count)
                        .timestamp(aws_sdk_cloudwatch::primitives::DateTime::from(
                            std::time::SystemTime::now(),
                        ))
                        .build(),
                )
                .send()
                .await
                .unwrap();
        });
    };
    let cw = format!("{{name: alb-5xx, cloudwatch: {{namespace: AWS/ApplicationELB, metric_name: HTTPCode_Target_5XX_Count, dimensions: {{LoadBalancer: \"{lb}\"}}, stat: Sum, period: 60, lookback: 5m}}, success: \"result < 5\", count: 1}}");
    let rb = sb.extra_runbook("cloudwatch", &window("cloudwatch", &cw));
    // No datapoint yet: inconclusive.
    let before = sb.run_ids();
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (_, v, _) = verdict_of(&sb, &before);
    assert_eq!(v["metrics"][0]["phase"], "inconclusive", "{v}");
    put(1.0);
    let before = sb.run_ids();
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (_, v, _) = verdict_of(&sb, &before);
    assert_eq!(v["metrics"][0]["measurements"][0]["value"], 1.0, "{v}");
    put(40.0);
    let before = sb.run_ids();
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let (_, v, e) = verdict_of(&sb, &before);
    assert!(
        e.contains("alb-5xx: 1 failed measurement(s) > failure limit 0"),
        "{e}"
    );
    assert_eq!(v["metrics"][0]["measurements"][0]["phase"], "failed", "{v}");
}
