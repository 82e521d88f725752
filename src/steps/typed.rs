//! The typed step contract ([`Kind`]) and its one adapter to the engine's JSON boundary
//! ([`Typed`], which implements [`StepKind`]).
//!
//! A kind declares its parameters, outputs and rollback material as types and never sees the
//! JSON form: the adapter parses the rendered `with:` mapping into [`Kind::Params`] once per call,
//! serialises [`Kind::Outputs`] and [`Kind::Before`] into the event log's records, and parses
//! them back for verify, rollback and a resumed run. A record that no longer parses into the
//! kind's types is a [`StepError::Params`] naming the kind, never a panic.
//!
//! Owns the conversion between the typed contract and the event log's JSON; must not hold any
//! kind's logic.

use super::Record;
use super::{Change, ParamSpec, Planned, Restored, StepContext, StepError, StepKind, WindowRole};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// What `plan` observed and would do, typed: the changes, the rollback material, and the
/// outputs a dry-run can predict (so later steps' templates render), when it can.
#[derive(Debug, Clone)]
pub struct Plan<B, P> {
    /// The changes `apply` would make; empty or `none` entries when live state already matches.
    pub changes: Vec<Change>,
    /// Rollback material observed before any change (non-secret).
    pub before: B,
    /// Outputs a dry-run can already predict.
    pub predicted: Option<P>,
}

impl<B: Default, P> Plan<B, P> {
    /// A plan that changes nothing and reports one read-only check (`action: check`).
    pub fn check(target: impl Into<String>, detail: impl Into<String>) -> Self {
        Plan {
            changes: vec![Change::new(super::Action::Check, target, detail)],
            before: B::default(),
            predicted: None,
        }
    }

    /// A plan of `changes` with default rollback material and no prediction.
    pub fn of(changes: Vec<Change>) -> Self {
        Plan {
            changes,
            before: B::default(),
            predicted: None,
        }
    }
}

/// What `apply` returns: the kind's outputs and the one-line summary shown in progress and the
/// audit.
#[derive(Debug, Clone)]
pub struct Applied<O> {
    /// The step's outputs (recorded; referable as `steps.<id>.outputs.<name>`).
    pub outputs: O,
    /// One line, no secret.
    pub summary: Option<String>,
}

impl<O> Applied<O> {
    /// Outputs without a summary.
    pub fn new(outputs: O) -> Self {
        Applied {
            outputs,
            summary: None,
        }
    }

    /// The same with `summary`.
    pub fn summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }
}

/// Evidence `verify` records beside a completed step (non-secret), and its summary when the
/// check has a better one-liner than `apply`'s.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    /// Named observations (JSON values: numbers, text, small objects).
    pub facts: Vec<(String, Value)>,
    /// Replaces the step's summary when present.
    pub summary: Option<String>,
}

/// The step contract as types (see DESIGN.md): validate, plan, apply, verify, rollback.
///
/// Outputs are recorded in the event log and are the only state later steps and rollback see;
/// they must never contain a secret (use [`crate::secret::fingerprint`]).
#[async_trait]
pub trait Kind: Send + Sync + 'static {
    /// The rendered `with:` mapping (`deny_unknown_fields`; doc comments are the parameter docs).
    type Params: DeserializeOwned + schemars::JsonSchema + Send + Sync;
    /// What `apply` returns (doc comments are the output docs).
    type Outputs: Serialize + DeserializeOwned + schemars::JsonSchema + Send + Sync;
    /// Rollback material `plan` observes before any change.
    type Before: Serialize + DeserializeOwned + Default + Send + Sync;
    /// What a dry-run can predict of the outputs (often [`Kind::Outputs`] itself).
    type Predicted: Serialize + Send + Sync;

    /// The kind's name as written in runbooks.
    const NAME: &'static str;
    /// One sentence: what the step achieves.
    const PURPOSE: &'static str;
    /// One sentence: what `rollback` does.
    const UNDO: &'static str;
    /// Deadline for apply + verify when the step sets no `timeout`.
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

    /// True for a kind that waits for a person's approval ([`StepKind::asks_approval`]).
    const ASKS_APPROVAL: bool = false;
    /// True for a kind that acts on the environment's database
    /// ([`StepKind::acts_on_database`]).
    const ACTS_ON_DATABASE: bool = false;

    /// What the step is in the database window, from its literal parameters (`None` when they
    /// do not parse; a templated value counts as its default, see [`Literal::known`]).
    fn window_role(&self, _params: Option<&Literal<Self::Params>>) -> WindowRole {
        WindowRole::Other
    }

    /// The Terraform outputs this step publishes to later templates as `tf.<name>`
    /// (`terraform.apply`); `None` for every other kind.
    fn terraform_outputs(&self, _outputs: &Self::Outputs) -> Option<Record> {
        None
    }

    /// Checks across parameters that serde cannot express, on the literal values before the
    /// run; a value known only at run time ([`Literal::known`] false) is not judged. One
    /// message per problem.
    fn check(&self, _params: &Literal<Self::Params>) -> Vec<String> {
        Vec::new()
    }

    /// Read-only: observes live state and returns what `apply` would change.
    ///
    /// # Errors
    /// A [`StepError`] when live state cannot be read or makes the step impossible.
    async fn plan(
        &self,
        cx: &StepContext,
        p: &Self::Params,
    ) -> Result<Plan<Self::Before, Self::Predicted>, StepError>;

    /// Makes the change. Idempotent: re-running after a crash finds the change done and does
    /// not repeat it. `before` is the first plan's rollback material of this run.
    ///
    /// # Errors
    /// A [`StepError`]; the engine retries per `retries`, then rolls the run back.
    async fn apply(
        &self,
        cx: &StepContext,
        p: &Self::Params,
        before: &Self::Before,
    ) -> Result<Applied<Self::Outputs>, StepError>;

    /// Polls until the desired state is observed or `cx.deadline` passes.
    ///
    /// # Errors
    /// [`StepError::Timeout`] at the deadline, or the observed mismatch.
    async fn verify(
        &self,
        _cx: &StepContext,
        _p: &Self::Params,
        _outputs: &Self::Outputs,
    ) -> Result<Evidence, StepError> {
        Ok(Evidence::default())
    }

    /// Undoes the step; tolerates `apply` never having run (`outputs` is `None`) or half-run.
    ///
    /// # Errors
    /// A [`StepError`] when the undo could not be completed (the run then needs a human).
    async fn rollback(
        &self,
        _cx: &StepContext,
        _p: &Self::Params,
        _before: &Self::Before,
        _outputs: Option<&Self::Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        Ok(Vec::new())
    }

    /// `Some(reason)` when undoing this step would lose acknowledged data. Read-only.
    ///
    /// # Errors
    /// A [`StepError`] when the state cannot be read; the engine treats it as a refusal.
    async fn rollback_refusal(
        &self,
        _cx: &StepContext,
        _p: &Self::Params,
        _before: &Self::Before,
        _outputs: Option<&Self::Outputs>,
    ) -> Result<Option<String>, StepError> {
        Ok(None)
    }

    /// What a person must do, object by object, when `rollback` could not finish. No I/O.
    fn manual_undo(&self, _p: &Self::Params, _before: &Self::Before, _run_id: &str) -> Vec<String> {
        Vec::new()
    }
}

/// A kind's parameters as `cutover validate` reads them before the run: the literal values,
/// with a probe value (that parses) in place of each templated one.
#[derive(Debug, Clone)]
pub struct Literal<P> {
    /// The parsed values.
    pub params: P,
    templated: BTreeSet<String>,
}

impl<P> Literal<P> {
    /// False when the top-level parameter `key` holds a template (its value in
    /// [`Literal::params`] is a probe, not the runbook's).
    pub fn known(&self, key: &str) -> bool {
        !self.templated.contains(key)
    }

    /// Literal values with nothing templated (for tests).
    pub fn of(params: P) -> Self {
        Literal {
            params,
            templated: BTreeSet::new(),
        }
    }
}

/// The adapter: a typed [`Kind`] as the engine's [`StepKind`].
pub struct Typed<K>(pub K);

fn parse<T: DeserializeOwned>(kind: &str, what: &str, v: Value) -> Result<T, StepError> {
    serde_json::from_value(v).map_err(|e| StepError::Params(format!("{kind}: {what}: {e}")))
}

fn to_value<T: Serialize>(kind: &str, what: &str, t: &T) -> Result<Value, StepError> {
    serde_json::to_value(t).map_err(|e| StepError::Params(format!("{kind}: {what}: {e}")))
}

fn to_map<T: Serialize>(kind: &str, what: &str, t: &T) -> Result<Record, StepError> {
    match to_value(kind, what, t)? {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(Map::new()),
        other => Err(StepError::Params(format!(
            "{kind}: {what} is not a mapping: {other}"
        ))),
    }
}

impl<K: Kind> Typed<K> {
    fn typed_params(&self, params: &Record) -> Result<K::Params, StepError> {
        serde_json::from_value(Value::Object(params.clone()))
            .map_err(|e| StepError::Params(e.to_string()))
    }

    /// The literal parameters, templated values replaced by probes.
    fn literal(&self, params: &Record) -> Option<Literal<K::Params>> {
        super::params::literal_parse::<K::Params>(params)
            .map(|(params, templated)| Literal { params, templated })
    }

    fn before(&self, before: &Value) -> Result<K::Before, StepError> {
        if before.is_null() {
            return Ok(K::Before::default());
        }
        parse(K::NAME, "rollback material", before.clone())
    }

    fn outputs(&self, outputs: &Record) -> Result<K::Outputs, StepError> {
        let mut m = outputs.clone();
        m.remove(super::SUMMARY_OUTPUT);
        parse(K::NAME, "outputs", Value::Object(m))
    }
}

#[async_trait]
impl<K: Kind> StepKind for Typed<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }
    fn purpose(&self) -> &'static str {
        K::PURPOSE
    }
    fn undo(&self) -> &'static str {
        K::UNDO
    }
    fn default_timeout(&self) -> Duration {
        K::DEFAULT_TIMEOUT
    }
    fn asks_approval(&self) -> bool {
        K::ASKS_APPROVAL
    }
    fn acts_on_database(&self) -> bool {
        K::ACTS_ON_DATABASE
    }
    fn params(&self) -> Vec<ParamSpec> {
        super::params::specs::<K::Params>()
    }
    fn literal_problems(&self, params: &Record) -> Vec<super::params::ParamProblem> {
        super::params::literal_problems::<K::Params>(&StepKind::params(self), params)
    }
    fn output_specs(&self) -> Vec<ParamSpec> {
        super::params::specs::<K::Outputs>()
    }
    fn params_schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<K::Params>()
    }
    fn window_role(&self, params: &Record) -> WindowRole {
        self.0.window_role(self.literal(params).as_ref())
    }
    fn terraform_outputs(&self, outputs: &Record) -> Option<Record> {
        let o = self.outputs(outputs).ok()?;
        self.0.terraform_outputs(&o)
    }
    fn validate(&self, params: &Record) -> Vec<String> {
        let mut out = super::check_param_names(&StepKind::params(self), params);
        if let Some(p) = self.literal(params) {
            out.extend(self.0.check(&p));
        }
        out
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let p = self.typed_params(&cx.params)?;
        let plan = self.0.plan(cx, &p).await?;
        Ok(Planned {
            changes: plan.changes,
            before: to_value(K::NAME, "rollback material", &plan.before)?,
            predicted: match &plan.predicted {
                Some(pr) => to_map(K::NAME, "predicted outputs", pr)?,
                None => Map::new(),
            },
        })
    }

    async fn apply(&self, cx: &StepContext, planned: &Planned) -> Result<Record, StepError> {
        let p = self.typed_params(&cx.params)?;
        let before = self.before(&planned.before)?;
        let applied = self.0.apply(cx, &p, &before).await?;
        let mut out = to_map(K::NAME, "outputs", &applied.outputs)?;
        if let Some(s) = applied.summary {
            out.insert(super::SUMMARY_OUTPUT.into(), Value::String(s));
        }
        Ok(out)
    }

    async fn verify(&self, cx: &StepContext, outputs: &Record) -> Result<Record, StepError> {
        let p = self.typed_params(&cx.params)?;
        let o = self.outputs(outputs)?;
        let ev = self.0.verify(cx, &p, &o).await?;
        let mut out: Record = ev.facts.into_iter().collect();
        if let Some(s) = ev.summary {
            out.insert(super::SUMMARY_OUTPUT.into(), Value::String(s));
        }
        Ok(out)
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        before: &Value,
        outputs: Option<&Record>,
    ) -> Result<Vec<Restored>, StepError> {
        let p = self.typed_params(&cx.params)?;
        let b = self.before(before)?;
        let o = outputs.map(|o| self.outputs(o)).transpose()?;
        self.0.rollback(cx, &p, &b, o.as_ref()).await
    }

    async fn rollback_refusal(
        &self,
        cx: &StepContext,
        before: &Value,
        outputs: Option<&Record>,
    ) -> Result<Option<String>, StepError> {
        let p = self.typed_params(&cx.params)?;
        let b = self.before(before)?;
        let o = outputs.map(|o| self.outputs(o)).transpose()?;
        self.0.rollback_refusal(cx, &p, &b, o.as_ref()).await
    }

    fn manual_undo(&self, params: &Record, before: &Value, run_id: &str) -> Vec<String> {
        match (self.typed_params(params), self.before(before)) {
            (Ok(p), Ok(b)) => self.0.manual_undo(&p, &b, run_id),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    /// `with:` of the test kind.
    #[derive(Debug, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    pub struct P {
        /// A name.
        name: String,
        /// A count.
        #[serde(default)]
        count: u32,
        /// Whether to act.
        #[serde(default)]
        act: bool,
    }

    /// Outputs of the test kind.
    #[derive(Debug, Serialize, Deserialize, schemars::JsonSchema, PartialEq)]
    pub struct O {
        /// What was made.
        made: String,
    }

    /// Rollback material of the test kind.
    #[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
    pub struct B {
        /// Existed before.
        existed: bool,
    }

    struct K;

    #[async_trait]
    impl Kind for K {
        type Params = P;
        type Outputs = O;
        type Before = B;
        type Predicted = O;
        const NAME: &'static str = "test.kind";
        const PURPOSE: &'static str = "test";
        const UNDO: &'static str = "test";

        fn window_role(&self, p: Option<&Literal<P>>) -> WindowRole {
            match p {
                Some(l) if l.known("act") && l.params.act => WindowRole::Flip { pooler: false },
                _ => WindowRole::Other,
            }
        }
        fn check(&self, p: &Literal<P>) -> Vec<String> {
            let mut out = Vec::new();
            if p.known("count") && p.params.count > 3 {
                out.push(format!("count {} is more than 3", p.params.count));
            }
            out
        }
        async fn plan(&self, _cx: &StepContext, _p: &P) -> Result<Plan<B, O>, StepError> {
            Ok(Plan::of(Vec::new()))
        }
        async fn apply(&self, _cx: &StepContext, p: &P, _b: &B) -> Result<Applied<O>, StepError> {
            Ok(Applied::new(O {
                made: p.name.clone(),
            }))
        }
        fn manual_undo(&self, p: &P, b: &B, run_id: &str) -> Vec<String> {
            vec![format!("{} {} {run_id}", p.name, b.existed)]
        }
    }

    fn map(v: Value) -> Record {
        match v {
            Value::Object(m) => m,
            _ => unreachable!("an object"),
        }
    }

    #[test]
    fn checks_and_roles_read_literal_values_and_skip_templated_ones() {
        let k = Typed(K);
        let literal = map(json!({"name": "a", "count": 5, "act": true}));
        assert_eq!(k.validate(&literal), vec!["count 5 is more than 3"]);
        assert_eq!(k.window_role(&literal), WindowRole::Flip { pooler: false });
        // Templated values are not judged and count as their default.
        let templated =
            map(json!({"name": "{{ vars.n }}", "count": "{{ vars.c }}", "act": "{{ vars.a }}"}));
        assert!(k.validate(&templated).is_empty());
        assert_eq!(k.window_role(&templated), WindowRole::Other);
        // Unknown and missing keys are named with the valid list.
        let bad = map(json!({"nmae": "a"}));
        let problems = k.validate(&bad);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("unknown parameter `nmae`")
                    && p.contains("valid: act, count, name")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("missing required parameter `name`")),
            "{problems:?}"
        );
    }

    #[test]
    fn outputs_and_rollback_material_cross_the_log_boundary_typed() {
        let k = Typed(K);
        // The summary is the adapter's, not the kind's outputs.
        let o = k
            .outputs(&map(json!({"made": "x", "summary": "made x"})))
            .unwrap();
        assert_eq!(o, O { made: "x".into() });
        // A record that no longer fits the kind's types is an error naming the kind.
        let e = k.outputs(&map(json!({"made": 3}))).unwrap_err().to_string();
        assert!(e.contains("test.kind: outputs"), "{e}");
        // Absent rollback material is the default.
        assert_eq!(k.before(&Value::Null).unwrap(), B::default());
        assert_eq!(
            k.before(&json!({"existed": true})).unwrap(),
            B { existed: true }
        );
        assert_eq!(
            StepKind::manual_undo(
                &k,
                &map(json!({"name": "n"})),
                &json!({"existed": true}),
                "r1"
            ),
            vec!["n true r1"]
        );
        // Parameters that do not parse give no guess at an undo.
        assert!(StepKind::manual_undo(&k, &map(json!({"name": 1})), &Value::Null, "r1").is_empty());
    }

    #[test]
    fn specs_come_from_the_types() {
        let k = Typed(K);
        let names: Vec<String> = StepKind::params(&k).into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["act", "count", "name"]);
        assert_eq!(StepKind::outputs(&k), vec!["made".to_string()]);
    }
}
