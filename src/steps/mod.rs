//! Step kinds: one module per kind (a file, or a directory whose `mod.rs` is the kind and whose
//! children hold its long or pure parts, as `route53_cutover/pair.rs`), each implementing
//! [`StepKind`]; the helpers several kinds share (`dns`, `rollout`, `secret_owner`); and the
//! registry that maps a kind name (`postgres.replicate`) to its implementation.
//!
//! A kind owns what one step does to the world and how it is undone. It must not decide what runs
//! next, write the event log or read other steps' state except through its rendered parameters:
//! that is the engine's job (`crate::engine`).

pub mod analysis;
pub mod analysis_metrics;
mod analysis_run;
mod approval;
mod aws_assert_account;
mod dns;
mod http_check;
mod k8s_flip_secret;
pub mod objects;
mod pgbouncer_pause;
mod pgbouncer_repoint;
mod postgres_decommission;
mod postgres_fallback;
mod postgres_freeze_writes;
mod postgres_replicate;
mod postgres_sync_sequences;
mod postgres_verify;
mod postgres_wait_lag;
mod rds_snapshot;
pub mod relay;
mod rollout;
mod route53_cutover;
mod route53_set_ttl;
mod s3_fallback;
mod s3_replicate;
mod s3_sync;
mod secret_backup;
mod secret_owner;
mod terraform_apply;
mod wafv2_assert_association;

pub mod context;
pub mod journal;
pub mod params;
pub mod typed;

#[cfg(test)]
pub(crate) mod testing;

pub use context::{Action, Change, Planned, Restored, StepContext, StepError};
pub use typed::{Applied, Evidence, Kind, Literal, Plan, Typed};

use async_trait::async_trait;
use serde_json::Value;
use std::time::Duration;

/// A step's parameters, outputs or evidence in the form the event log records them and
/// templates read them (`steps.<id>.outputs.<name>`, `tf.<name>`): one JSON object. Only this
/// boundary (the [`StepKind`] trait, the [`Typed`] adapter) and the engine handle it; a kind
/// receives its typed `Params` and returns its typed `Outputs` ([`Kind`]).
pub type Record = serde_json::Map<String, Value>;

/// A parameter a kind accepts under `with:` (or an output it returns), read from the JSON
/// Schema of the kind's typed `Params` (or `Outputs`) by [`params::specs`]: the type is the
/// single source of the name, whether it is required and its doc comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// Key under `with:` (or under `steps.<id>.outputs`).
    pub name: String,
    /// Whether the step is invalid without it (for an output: always returned).
    pub required: bool,
    /// The field's doc comment: one sentence, with unit where there is one.
    pub doc: String,
}

/// The output key any kind may return besides its declared [`StepKind::outputs`]: the step's
/// one-line summary, shown in progress and the audit.
pub const SUMMARY_OUTPUT: &str = "summary";

/// What a step is in the database window ([`StepKind::window_role`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowRole {
    /// None of the below.
    Other,
    /// Replicates into the target and keeps the application's roles read-only there until a
    /// fallback opens them (`postgres.replicate`).
    Replicate,
    /// Moves users' traffic to the new side (`route53.cutover`).
    MoveTraffic,
    /// Freezes the application's writes on the legacy database: the window starts
    /// (`postgres.freeze_writes`).
    Freeze,
    /// Compares the databases (`postgres.verify`).
    Verify {
        /// Reads every row: its cost grows with the data.
        full: bool,
    },
    /// Opens the target to the application (`postgres.fallback`).
    Fallback {
        /// The legacy database subscribes to the target, so a rollback after the flip loses
        /// nothing.
        replication: bool,
    },
    /// Points the application at the target: `k8s.flip_secret` (`pooler: false`), or its
    /// pooler's upstream (`pgbouncer.repoint`, `pooler: true`).
    Flip {
        /// The flip moves a pooler's upstream and resumes it (the application does not reload).
        pooler: bool,
    },
    /// Makes the application's writes wait in its pooler: a pooler window starts
    /// (`pgbouncer.pause`).
    Pause,
}

/// The step contract (see DESIGN.md): validate, plan, apply, verify, rollback.
///
/// Outputs returned by `apply` are recorded in the event log and are the only state later steps
/// and rollback see; they must never contain a secret (use [`crate::secret::fingerprint`]).
#[async_trait]
pub trait StepKind: Send + Sync {
    /// The kind's name as written in runbooks.
    fn name(&self) -> &'static str;
    /// One sentence: what the step achieves (shown in dry-runs and rendered procedures).
    fn purpose(&self) -> &'static str;
    /// One sentence: what `rollback` does (shown in rendered procedures).
    fn undo(&self) -> &'static str;
    /// Parameters under `with:`, from the kind's typed `Params` ([`Typed`]).
    fn params(&self) -> Vec<ParamSpec>;
    /// The JSON Schema of the kind's `with:` mapping (its typed `Params`), with the definitions
    /// it refers to added to `generator` ([`Typed`]); `cutover schema runbook` puts one per
    /// kind into the step's schema.
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema;
    /// The outputs `apply` returns, referable as `steps.<id>.outputs.<name>`: the fields of
    /// the kind's typed `Outputs` ([`Typed`]), besides [`SUMMARY_OUTPUT`], which any kind
    /// may return.
    fn output_specs(&self) -> Vec<ParamSpec>;
    /// The names of [`StepKind::output_specs`].
    fn outputs(&self) -> Vec<String> {
        self.output_specs().into_iter().map(|s| s.name).collect()
    }
    /// Deadline for apply + verify when the step sets no `timeout`.
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(300)
    }

    /// The Terraform outputs a step of this kind published (`tf.<name>` in later templates),
    /// read from its recorded or predicted `outputs`; `None` for kinds that publish none.
    fn terraform_outputs(&self, _outputs: &Record) -> Option<Record> {
        None
    }

    /// True for a kind that waits for a person's approval (`approval`): a run without a
    /// terminal refuses to start unless `--approve <step>` names each such step.
    fn asks_approval(&self) -> bool {
        false
    }

    /// True for a kind that acts on the environment's database (the `postgres.*` kinds): a
    /// runbook with none of them runs with no database chosen.
    fn acts_on_database(&self) -> bool {
        false
    }

    /// What the step is in the database window, from its unrendered parameters (a parameter
    /// given as a template counts as its default): what `cutover validate`'s ordering checks
    /// read ([`crate::runbook::order`]).
    fn window_role(&self, _params: &Record) -> WindowRole {
        WindowRole::Other
    }

    /// Static checks of the unrendered parameters; no I/O. The default checks unknown and
    /// missing parameters against [`StepKind::params`]. Returns one message per problem.
    fn validate(&self, params: &Record) -> Vec<String> {
        check_param_names(&self.params(), params)
    }

    /// The literal values of `params` parsed into the kind's typed `Params` (see
    /// [`params::literal_problems`]): wrong types, ranges, durations and nested unknown keys,
    /// each with its path under `with:`. No I/O. Every kind implements it with its own
    /// `Params`; the default (for a kind without parameters) finds nothing.
    fn literal_problems(&self, _params: &Record) -> Vec<params::ParamProblem> {
        Vec::new()
    }

    /// Read-only: observes live state and returns what `apply` would change (the dry-run), the
    /// rollback material (`before`) and the outputs a dry-run can predict.
    ///
    /// # Errors
    /// A [`StepError`] when live state cannot be read or makes the step impossible.
    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError>;

    /// Makes the change. Idempotent: re-running after a crash finds the change done and does not
    /// repeat it. Returns the step's outputs.
    ///
    /// # Errors
    /// A [`StepError`]; the engine retries per `retries`, then rolls the run back.
    async fn apply(&self, cx: &StepContext, planned: &Planned) -> Result<Record, StepError>;

    /// Polls until the desired state is observed or `cx.deadline` passes. Returns evidence to
    /// record (non-secret). The default observes nothing more than `apply` did.
    ///
    /// # Errors
    /// [`StepError::Timeout`] at the deadline, or the observed mismatch.
    async fn verify(&self, _cx: &StepContext, _outputs: &Record) -> Result<Record, StepError> {
        Ok(Record::new())
    }

    /// Undoes the step. Tolerates `apply` never having run (`outputs` is `None`) or having
    /// half-run. `before` is the rollback material from the first plan of this step in the run.
    /// Returns one entry per restored object, with fingerprints instead of secret values.
    ///
    /// # Errors
    /// A [`StepError`] when the undo could not be completed; the run then needs a human (exit 4).
    async fn rollback(
        &self,
        _cx: &StepContext,
        _before: &Value,
        _outputs: Option<&Record>,
    ) -> Result<Vec<Restored>, StepError> {
        Ok(Vec::new())
    }

    /// Asked for every started step before a rollback changes anything: `Some(reason)` when
    /// undoing this step would lose acknowledged data (writes a database took that nothing
    /// carries back). The engine then refuses the whole rollback (exit 4) with the reason and
    /// [`StepKind::manual_undo`]. Read-only. The default never refuses.
    ///
    /// # Errors
    /// A [`StepError`] when the state cannot be read; the engine treats it as a refusal.
    async fn rollback_refusal(
        &self,
        _cx: &StepContext,
        _before: &Value,
        _outputs: Option<&Record>,
    ) -> Result<Option<String>, StepError> {
        Ok(None)
    }

    /// What a person must do, object by object, when [`StepKind::rollback`] could not finish:
    /// concrete commands where there are some. No I/O; `params` are the rendered parameters
    /// (read only their non-secret fields). Empty when the kind changes nothing.
    fn manual_undo(&self, _params: &Record, _before: &Value, _run_id: &str) -> Vec<String> {
        Vec::new()
    }
}

/// Every kind this build knows, in the order `cutover schema` lists them.
pub fn registry() -> Vec<&'static dyn StepKind> {
    vec![
        &Typed(terraform_apply::TerraformApply),
        &Typed(aws_assert_account::AssertAccount),
        &Typed(rds_snapshot::RdsSnapshot),
        &Typed(postgres_replicate::Replicate),
        &Typed(postgres_wait_lag::WaitLag),
        &Typed(postgres_freeze_writes::FreezeWrites),
        &Typed(postgres_sync_sequences::SyncSequences),
        &Typed(postgres_verify::Verify),
        &Typed(postgres_fallback::Fallback),
        &Typed(postgres_decommission::Decommission),
        &Typed(k8s_flip_secret::FlipSecret),
        &Typed(pgbouncer_pause::PgbouncerPause),
        &Typed(pgbouncer_repoint::PgbouncerRepoint),
        &Typed(wafv2_assert_association::AssertAssociation),
        &Typed(route53_set_ttl::SetTtl),
        &Typed(approval::Approval),
        &Typed(route53_cutover::Route53Cutover),
        &Typed(http_check::HttpCheck),
        &Typed(analysis_run::AnalysisRun),
        &Typed(s3_replicate::S3Replicate),
        &Typed(s3_sync::S3Sync),
        &Typed(s3_fallback::S3Fallback),
    ]
}

/// The kind named `name`, if this build has it.
pub fn lookup(name: &str) -> Option<&'static dyn StepKind> {
    registry().into_iter().find(|k| k.name() == name)
}

/// Names of every kind, for error hints.
pub fn kind_names() -> Vec<&'static str> {
    registry().iter().map(|k| k.name()).collect()
}

/// Checks `params` against `specs`: one message per unknown key (with the valid list) and per
/// missing required key.
pub fn check_param_names(specs: &[ParamSpec], params: &Record) -> Vec<String> {
    let mut out = Vec::new();
    let valid: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    for key in params.keys() {
        if !valid.contains(&key.as_str()) {
            let list = if valid.is_empty() {
                "(none)".to_string()
            } else {
                valid.join(", ")
            };
            let near = crate::config::did_you_mean(key, valid.iter().copied())
                .map(|s| format!(" {s}"))
                .unwrap_or_default();
            out.push(format!("unknown parameter `{key}`{near} (valid: {list})"));
        }
    }
    for s in specs.iter().filter(|s| s.required) {
        if !params.contains_key(&s.name) {
            out.push(format!("missing required parameter `{}`", s.name));
        }
    }
    out
}

pub use crate::config::duration::{duration_text, parse_duration};

/// Serde helpers for values that a template renders into text: an optional integer given as a
/// number or as text (`"60"`), where `""`, `none` and `null` (a rendered absent output) are
/// absent; and the same for optional text.
pub mod rendered {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(i64),
        S(String),
    }

    fn absent(s: &str) -> bool {
        matches!(s.trim().to_ascii_lowercase().as_str(), "" | "none" | "null")
    }

    /// An `Option<i64>` from `60`, `"60"`, `""`, `"none"` or `null`.
    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(Raw::N(n)) => Ok(Some(n)),
            Some(Raw::S(s)) if absent(&s) => Ok(None),
            Some(Raw::S(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a whole number"))),
        }
    }

    /// A `bool` from `true`/`false` or the text a template renders (`"true"`, `"True"`,
    /// `"false"`, `"False"`; absent values are false).
    pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum B {
            B(bool),
            S(String),
        }
        match Option::<B>::deserialize(d)? {
            None => Ok(false),
            Some(B::B(b)) => Ok(b),
            Some(B::S(s)) if absent(&s) => Ok(false),
            Some(B::S(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(serde::de::Error::custom(format!(
                    "`{s}` is not true or false"
                ))),
            },
        }
    }

    /// An `Option<String>` where `""`, `"none"` and `"null"` are absent.
    pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<String>::deserialize(d)?.filter(|s| !absent(s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_name_is_unique_and_provider_dotted_except_approval() {
        let names = kind_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert!(names.iter().all(|n| n.contains('.') || *n == "approval"));
    }

    #[test]
    fn every_kind_documents_every_parameter_and_output() {
        for k in registry() {
            for (what, specs) in [("parameter", k.params()), ("output", k.output_specs())] {
                for s in specs {
                    assert!(
                        !s.doc.trim().is_empty(),
                        "{} {what} `{}` has no doc comment",
                        k.name(),
                        s.name
                    );
                }
            }
        }
    }

    #[test]
    fn flattened_output_groups_are_listed_with_their_fields() {
        let outputs = |k: &str| lookup(k).unwrap().outputs();
        for name in [
            "chunks",
            "copy_seconds",
            "consistent_lsn",
            "target_frozen_roles",
        ] {
            assert!(
                outputs("postgres.replicate").iter().any(|o| o == name),
                "{name}"
            );
        }
        for name in [
            "rows",
            "tracking_from_lsn",
            "rows_compared",
            "tables_compared_whole",
        ] {
            assert!(
                outputs("postgres.verify").iter().any(|o| o == name),
                "{name}"
            );
        }
        // Parameters named by `rename` keep their YAML name.
        assert!(lookup("route53.cutover")
            .unwrap()
            .params()
            .iter()
            .any(|p| p.name == "type" && !p.required));
    }

    #[test]
    fn param_check_lists_valid_choices() {
        let specs = [ParamSpec {
            name: "url".into(),
            required: true,
            doc: String::new(),
        }];
        let mut p = Record::new();
        p.insert("uri".into(), Value::from("x"));
        let errs = check_param_names(&specs, &p);
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("valid: url"));
    }
}
