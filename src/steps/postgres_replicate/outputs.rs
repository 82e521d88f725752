//! What `postgres.replicate` records: its rollback material, its outputs and the copy's
//! figures.

use crate::providers::postgres::copy;
use crate::steps::Applied;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Rollback material: what the target held before the run.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// Tables on the target before the run.
    #[serde(default)]
    pub(super) target_tables: usize,
    /// The application roles already read-only on the target (a rollback leaves them so).
    #[serde(default)]
    pub(super) target_frozen: Vec<String>,
}

/// One table's copy in [`Copied`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TableCopy {
    /// Chunks copied.
    pub(super) chunks: u64,
    /// Rows copied.
    pub(super) rows: u64,
    /// Bytes of COPY data.
    pub(super) bytes: u64,
    /// The COPY format: `binary` or `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) format: Option<copy::Format>,
    /// Why text, when text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) text_because: Option<String>,
}

/// What `postgres.replicate` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The publication on the source.
    pub(super) publication: String,
    /// The subscription on the target.
    pub(super) subscription: String,
    /// The replication slot on the source (named as the subscription).
    pub(super) slot: String,
    /// The source database, `user@host:port/db` (no password).
    pub(super) source: String,
    /// The target database, likewise.
    pub(super) target: String,
    /// Tables replicated.
    pub(super) tables: usize,
    /// The application roles kept read-only on the target until the flip.
    pub(super) target_frozen_roles: Vec<String>,
    /// How the target receives the legacy database's changes (absent in records of earlier
    /// versions: a subscription).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) means: Option<crate::steps::relay::Means>,
    /// Why that means was chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) means_reason: Option<String>,
    /// With the relay: its Deployment, `namespace/name`, in the target cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) relay: Option<String>,
    /// With a subscription: the Deployment, `namespace/name`, of the slot's WAL guard (the
    /// relay guards its own slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) guard: Option<String>,
    /// The slot's consistent point: the copy's snapshot, replication's start (absent when the
    /// subscription existed already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) consistent_lsn: Option<String>,
    /// The copy's figures (absent when the subscription existed already).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub(super) copied: Option<Copied>,
}

/// The figures of [`Outputs`]' copy.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Copied {
    /// Chunks the tables were split into.
    pub(super) chunks: usize,
    /// Chunks this attempt copied.
    pub(super) chunks_copied: usize,
    /// Chunks an earlier attempt had copied (not copied again).
    pub(super) chunks_resumed: usize,
    /// Rows copied.
    pub(super) rows_copied: u64,
    /// Bytes copied (COPY text).
    pub(super) bytes_copied: u64,
    /// Wall time of the copy and its post-data (indexes, constraints, ANALYZE), in seconds.
    pub(super) copy_seconds: f64,
    /// Post-data statements this attempt applied (index builds, ANALYZE, the finish
    /// transaction's statements, foreign key validations excluded).
    pub(super) post_data_applied: usize,
    /// Foreign keys validated on the target after replication started (`table.constraint`).
    pub(super) foreign_keys_validated: Vec<String>,
    /// Foreign keys left NOT VALID on the target, each with why.
    pub(super) foreign_keys_not_validated: Vec<NotValidated>,
    /// Wall time of each part of this attempt, in seconds: `preflight`, `slot`,
    /// `schema_and_plan`, `copy_and_post_data`, `subscription`, `foreign_key_validation`.
    pub(super) seconds: BTreeMap<String, f64>,
    /// Per table: rows, bytes and chunks copied, the COPY format (`binary` or `text`) and,
    /// for text, why (`text_because`).
    pub(super) copy: BTreeMap<String, TableCopy>,
}

/// A foreign key the copy left `NOT VALID`.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct NotValidated {
    /// `table.constraint`.
    pub(super) constraint: String,
    /// Why: the runbook said so, or it is `NOT VALID` on the source too.
    pub(super) reason: String,
}

impl Outputs {
    pub(super) fn new(
        publication: &str,
        subscription: &str,
        source: String,
        target: String,
    ) -> Outputs {
        Outputs {
            publication: publication.to_string(),
            subscription: subscription.to_string(),
            slot: subscription.to_string(),
            source,
            target,
            tables: 0,
            target_frozen_roles: Vec::new(),
            means: None,
            means_reason: None,
            relay: None,
            guard: None,
            consistent_lsn: None,
            copied: None,
        }
    }

    pub(super) fn with_summary(self, summary: String) -> Applied<Outputs> {
        Applied::new(self).summary(summary)
    }
}
