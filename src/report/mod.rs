//! Audit rendering: a run's event log as markdown and printable HTML (for people), JSON and
//! JUnit (for machines), and the printable procedure of a runbook before it runs.
//!
//! Reports are pure functions of the verified records (and the signature file) or of a plan;
//! they never contact a service and never see a secret (the log holds none).

pub mod html;
pub mod junit;
mod markdown;
pub mod model;
pub mod procedure;

pub use markdown::markdown;

use crate::engine::log::Record;
use serde_json::Value;

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

/// The `restored` entries of a `rollback_step_completed` record as lines
/// `object: before → after (what)`.
pub fn restored_lines(d: &Value) -> Vec<String> {
    d.get("restored")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|x| {
            format!(
                "{}: {} → {} ({})",
                s(x, "object"),
                s(x, "before"),
                s(x, "after"),
                s(x, "detail")
            )
        })
        .collect()
}

/// Weights of a traffic stage, `{"aws": 10, "legacy": 90}`, as `aws 10% / legacy 90%`.
pub fn weights_text(w: Option<&Value>) -> String {
    w.and_then(Value::as_object)
        .map(|m| {
            let mut parts: Vec<(i64, String)> = m
                .iter()
                .map(|(k, v)| (v.as_i64().unwrap_or(0), k.clone()))
                .collect();
            parts.sort_by(|a, b| a.1.cmp(&b.1));
            parts
                .into_iter()
                .map(|(v, k)| format!("{k} {v}%"))
                .collect::<Vec<_>>()
                .join(" / ")
        })
        .unwrap_or_default()
}

/// One line for an `analysis` record: stage, verdict and its figures.
pub fn analysis_line(d: &Value) -> String {
    let v = d.get("verdict").cloned().unwrap_or_default();
    let passed = v.get("passed").and_then(Value::as_bool) == Some(true);
    let fig = |k: &str| match v.get(k) {
        Some(Value::Null) | None => "—".to_string(),
        Some(x) => x.to_string(),
    };
    let mut line = format!(
        "analysis of stage {}/{} on {}: {} — {} of {} passed, success {}%, p95 {} ms, {} in a row at the end",
        d.get("stage").cloned().unwrap_or_default(),
        d.get("of").cloned().unwrap_or_default(),
        s(d, "url"),
        if passed { "passed" } else { "FAILED" },
        fig("passes"),
        fig("samples"),
        fig("success_rate"),
        fig("p95_ms"),
        fig("closing_passes")
    );
    if !passed {
        let reasons: Vec<&str> = v
            .get("reasons")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        line.push_str(&format!(": {}", reasons.join("; ")));
    }
    line
}

/// One line summarising a `heartbeat` record: writes acknowledged, the longest gap between
/// two of them (the write outage, milliseconds) and acknowledged writes missing at the end.
pub fn heartbeat_line(d: &Value) -> String {
    let n = |k: &str| d.get(k).and_then(Value::as_u64).unwrap_or(0);
    if let Some(e) = d.get("error").and_then(Value::as_str) {
        return format!("  heartbeat did not run: {e}");
    }
    let missing = match d.get("missing").and_then(Value::as_u64) {
        Some(0) => "no acknowledged write missing".to_string(),
        Some(m) => format!(
            "{m} ACKNOWLEDGED WRITE(S) MISSING (seq {})",
            d.get("missing_seqs").cloned().unwrap_or_default()
        ),
        None => format!(
            "missing writes not checked: {}",
            s(d, "missing_check_error")
        ),
    };
    let legacy = d
        .get("paths")
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| p.get("path").and_then(Value::as_str) == Some("legacy"))
        })
        .map(|p| {
            format!(
                "; legacy path: {} acknowledged, longest gap {} ms while DNS sent users there",
                p.get("acknowledged").and_then(Value::as_u64).unwrap_or(0),
                p.get("longest_gap_ms").and_then(Value::as_u64).unwrap_or(0)
            )
        })
        .unwrap_or_default();
    format!(
        "  heartbeat: {} of {} writes acknowledged; longest gap {} ms ({} → {}){legacy}; {missing} in {}",
        n("acknowledged"),
        n("attempted"),
        n("longest_gap_ms"),
        s(d, "gap_from"),
        if d.get("open_at_end").and_then(Value::as_bool) == Some(true) && d.get("gap_to").is_none_or(Value::is_null) {
            "still open at the end"
        } else {
            s(d, "gap_to")
        },
        s(d, "database")
    )
}

/// The records as one JSON document: `{"run_id", "records": [...], "chain_head", "signature"}`
/// (`signature` is the signature file's content, or null for an unsigned run).
pub fn json(
    records: &[Record],
    signature: Option<&crate::engine::signature::SignatureFile>,
) -> Value {
    let run_id = records
        .first()
        .map(|r| s(&r.data, "run_id").to_string())
        .unwrap_or_default();
    serde_json::json!({"run_id": run_id, "records": records, "chain_head": records.last().map(|r| r.hash.clone()), "signature": signature})
}
