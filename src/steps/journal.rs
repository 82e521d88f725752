//! What step kinds journal: the records a step appends while it runs, each an intent fsynced
//! before its side effect or an observation after it (`StepContext::journal`).
//!
//! On disk a journal record is an event-log record like the engine's own: `type` is the
//! variant's snake_case name, `data` its fields, `step` the journaling step. This module owns the
//! shapes; it must not know about the log's chain, files or the engine's records
//! (`engine::event`).

use super::analysis::Verdict;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// One record a step journals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum Journal {
    /// `route53.cutover` waits for answers cached under the TTL before it was lowered.
    TtlWait(TtlWait),
    /// `route53.cutover` is about to submit a weighted stage (intent: before the change batch).
    TrafficStage(TrafficStage),
    /// The stage's change is INSYNC; the record sets as read back.
    TrafficStageInsync(Insync),
    /// The analysis window after a stage, with its verdict.
    Analysis(AnalysisRecord),
    /// All weight is about to return to the old target (intent: before the change batch).
    TrafficReturned(TrafficReturned),
    /// The return is INSYNC; the record sets as read back.
    TrafficReturnedInsync(Insync),
    /// One TTL passed after the last stage: no cached answer names the old target any more.
    TrafficOldAnswersExpired(OldAnswersExpired),
    /// The record's TTL is about to go back up (intent: before the change batch).
    TrafficTtlRestore(TtlRestore),
}

/// [`Journal::TtlWait`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtlWait {
    /// The record's fully qualified name.
    pub record: String,
    /// The TTL before it was lowered, in seconds.
    pub previous_ttl: i64,
    /// When it was lowered (RFC 3339).
    pub lowered_at: String,
    /// Seconds to wait.
    pub wait_s: i64,
}

/// [`Journal::TrafficStage`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficStage {
    /// 1-based stage number.
    pub stage: usize,
    /// Number of stages.
    pub of: usize,
    /// Weight per set identifier after the stage (percent).
    pub weights: BTreeMap<String, i64>,
    /// The Route 53 change batch, as submitted.
    pub change_batch: Value,
}

/// [`Journal::TrafficStageInsync`] and [`Journal::TrafficReturnedInsync`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Insync {
    /// 1-based stage number.
    pub stage: usize,
    /// The Route 53 change id.
    pub change_id: String,
    /// The record sets read back after INSYNC.
    pub observed: Value,
}

/// [`Journal::Analysis`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRecord {
    /// 1-based stage number; 0 for a window that is not a traffic stage's (`analysis.run`).
    pub stage: usize,
    /// Number of stages; 0 for a window that is not a traffic stage's.
    pub of: usize,
    /// The URL probed.
    pub url: String,
    /// The window's judgement.
    pub verdict: Verdict,
}

/// [`Journal::TrafficReturned`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficReturned {
    /// The stage at which traffic returns (1-based).
    pub stage: usize,
    /// Why it returns.
    pub reason: String,
    /// Weight per set identifier after the return (percent).
    pub weights: BTreeMap<String, i64>,
    /// The Route 53 change batch, as submitted.
    pub change_batch: Value,
}

/// [`Journal::TrafficOldAnswersExpired`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OldAnswersExpired {
    /// The TTL waited, in seconds.
    pub ttl: u64,
}

/// [`Journal::TrafficTtlRestore`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TtlRestore {
    /// The TTL restored, in seconds.
    pub ttl: i64,
    /// The Route 53 change batch, as submitted.
    pub change_batch: Value,
}
