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
pub mod templates;
pub mod timeline;

pub use markdown::markdown;

use crate::engine::log::Record;
use serde_json::Value;

use crate::engine::lines::s;

pub use crate::engine::lines::{analysis_line, heartbeat_line, restored_lines, weights_text};

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
