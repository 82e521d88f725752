//! Step kinds: one file per kind, each implementing [`StepKind`], and the registry that maps a
//! kind name (`postgres.replicate`) to its implementation.
//!
//! A kind owns what one step does to the world and how it is undone. It must not decide what runs
//! next, write the event log or read other steps' state except through its rendered parameters:
//! that is the engine's job (`crate::engine`).

mod aws_assert_account;
mod http_check;
mod k8s_flip_secret;
mod postgres_freeze_writes;
mod postgres_replicate;
mod postgres_sync_sequences;
mod postgres_verify;
mod postgres_wait_lag;
mod rds_snapshot;
mod route53_cutover;
mod terraform_apply;
mod wafv2_assert_association;

pub mod context;

pub use context::{Change, Planned, StepContext, StepError};

use async_trait::async_trait;
use serde_json::{Map, Value};
use std::time::Duration;

/// A parameter a kind accepts under `with:`.
#[derive(Debug, Clone, Copy)]
pub struct ParamSpec {
    /// Key under `with:`.
    pub name: &'static str,
    /// Whether the step is invalid without it.
    pub required: bool,
    /// One sentence, with unit where there is one.
    pub doc: &'static str,
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
    /// Parameters under `with:`.
    fn params(&self) -> &'static [ParamSpec];
    /// Names of the outputs `apply` returns, referable as `steps.<id>.outputs.<name>`.
    fn outputs(&self) -> &'static [&'static str];
    /// Deadline for apply + verify when the step sets no `timeout`.
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(300)
    }

    /// Static checks of the unrendered parameters; no I/O. The default checks unknown and
    /// missing parameters against [`StepKind::params`]. Returns one message per problem.
    fn validate(&self, params: &Map<String, Value>) -> Vec<String> {
        check_param_names(self.params(), params)
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
    async fn apply(
        &self,
        cx: &StepContext,
        planned: &Planned,
    ) -> Result<Map<String, Value>, StepError>;

    /// Polls until the desired state is observed or `cx.deadline` passes. Returns evidence to
    /// record (non-secret). The default observes nothing more than `apply` did.
    ///
    /// # Errors
    /// [`StepError::Timeout`] at the deadline, or the observed mismatch.
    async fn verify(
        &self,
        _cx: &StepContext,
        _outputs: &Map<String, Value>,
    ) -> Result<Map<String, Value>, StepError> {
        Ok(Map::new())
    }

    /// Undoes the step. Tolerates `apply` never having run (`outputs` is `None`) or having
    /// half-run. `before` is the rollback material from the first plan of this step in the run.
    /// Returns one line per restored object, with fingerprints instead of secret values.
    ///
    /// # Errors
    /// A [`StepError`] when the undo could not be completed; the run then needs a human (exit 4).
    async fn rollback(
        &self,
        _cx: &StepContext,
        _before: &Value,
        _outputs: Option<&Map<String, Value>>,
    ) -> Result<Vec<String>, StepError> {
        Ok(Vec::new())
    }
}

/// Every kind this build knows, in the order `cutover schema` lists them.
pub fn registry() -> Vec<&'static dyn StepKind> {
    vec![
        &terraform_apply::TerraformApply,
        &aws_assert_account::AssertAccount,
        &rds_snapshot::RdsSnapshot,
        &postgres_replicate::Replicate,
        &postgres_wait_lag::WaitLag,
        &postgres_freeze_writes::FreezeWrites,
        &postgres_sync_sequences::SyncSequences,
        &postgres_verify::Verify,
        &k8s_flip_secret::FlipSecret,
        &wafv2_assert_association::AssertAssociation,
        &route53_cutover::Route53Cutover,
        &http_check::HttpCheck,
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
pub fn check_param_names(specs: &[ParamSpec], params: &Map<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    let valid: Vec<&str> = specs.iter().map(|s| s.name).collect();
    for key in params.keys() {
        if !valid.contains(&key.as_str()) {
            let list = if valid.is_empty() {
                "(none)".to_string()
            } else {
                valid.join(", ")
            };
            out.push(format!("unknown parameter `{key}` (valid: {list})"));
        }
    }
    for s in specs.iter().filter(|s| s.required) {
        if !params.contains_key(s.name) {
            out.push(format!("missing required parameter `{}`", s.name));
        }
    }
    out
}

/// Parses rendered parameters into a kind's typed parameter struct.
///
/// # Errors
/// [`StepError::Params`] naming the field serde rejected.
pub fn parse_params<T: serde::de::DeserializeOwned>(
    params: &Map<String, Value>,
) -> Result<T, StepError> {
    serde_json::from_value(Value::Object(params.clone()))
        .map_err(|e| StepError::Params(e.to_string()))
}

/// Parses `"90s"`, `"10m"`, `"1h"`, `"1m30s"` or a bare number of seconds.
///
/// # Errors
/// A message naming the text when it is not such a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for ch in t.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: u64 = num
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like 90s, 10m or 1h"))?;
        num.clear();
        total += match ch {
            's' => n,
            'm' => n * 60,
            'h' => n * 3600,
            _ => return Err(format!("`{text}` is not a duration like 90s, 10m or 1h")),
        };
    }
    if !num.is_empty() {
        return Err(format!("`{text}` is not a duration like 90s, 10m or 1h"));
    }
    Ok(Duration::from_secs(total))
}

/// Serde helper: a duration written as text (`"30s"`) or seconds.
pub mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Deserializes a [`Duration`] from `"30s"`/`"10m"` or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Duration::from_secs(n)),
            Raw::S(s) => super::parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_forms_runbooks_use() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn every_kind_name_is_unique_and_dotted() {
        let names = kind_names();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        assert!(names.iter().all(|n| n.contains('.')));
    }

    #[test]
    fn param_check_lists_valid_choices() {
        let specs = [ParamSpec {
            name: "url",
            required: true,
            doc: "",
        }];
        let mut p = Map::new();
        p.insert("uri".into(), Value::from("x"));
        let errs = check_param_names(&specs, &p);
        assert_eq!(errs.len(), 2);
        assert!(errs[0].contains("valid: url"));
    }
}
