//! The checks of one runbook step against the environment and the steps before it: its id,
//! its kind and parameters, its template references, its timeout. Reports every problem into the
//! caller's list; reads no file and renders nothing.

use super::{template, PlanStep};
use crate::config::{self, Environment, Problem, Problems};
use crate::steps::{self, parse_duration, StepKind};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

/// The steps checked so far: id → (line, kind); `None` for a kind this build does not have
/// (already reported): references to its outputs cannot be checked against any kind.
pub(super) type Seen = HashMap<String, (u32, Option<&'static dyn StepKind>)>;

/// Checks step `s` of runbook file `rel` (problems pushed to `problems`) and records it in
/// `seen`; returns it resolved when its kind is known.
pub(super) fn check(
    rel: &Path,
    s: &config::SpannedStep,
    env_json: &Value,
    env: &Environment,
    vars: &BTreeMap<String, Value>,
    seen: &mut Seen,
    problems: &mut Problems,
) -> Option<PlanStep> {
    let step = &s.step;
    let at = |field: &str| s.line_of(field);
    if !step
        .id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        || step.id.is_empty()
    {
        problems.push(Problem::new(
            rel,
            Some(at("id")),
            format!("step id `{}` must match [a-z0-9_-]+", step.id),
        ));
    }
    if let Some((first, _)) = seen.get(&step.id) {
        problems.push(Problem::new(
            rel,
            Some(at("id")),
            format!(
                "duplicate step id `{}` (first defined on line {first})",
                step.id
            ),
        ));
    }
    let kind = steps::lookup(&step.kind);
    match kind {
        None => problems.push(
            Problem::new(
                rel,
                Some(at("kind")),
                format!("step `{}`: unknown kind `{}`", step.id, step.kind),
            )
            .hint(Some(config::choices_hint(
                &step.kind,
                "known kinds",
                &steps::kind_names(),
            )))
            .field("kind"),
        ),
        Some(k) => {
            for msg in k.validate(&step.params) {
                problems.push(Problem::new(
                    rel,
                    Some(at("with")),
                    format!("step `{}` ({}): {msg}", step.id, k.name()),
                ));
            }
            for p in k.literal_problems(&step.params) {
                let line = s
                    .node
                    .get("with")
                    .and_then(|w| w.value.line_of_keys(&p.path))
                    .unwrap_or(at("with"));
                problems.push(
                    Problem::new(
                        rel,
                        Some(line),
                        format!(
                            "step `{}` ({}): with.{}: {}",
                            step.id,
                            k.name(),
                            p.path.join("."),
                            p.message
                        ),
                    )
                    .field(format!("with.{}", p.path.join("."))),
                );
            }
        }
    }
    // Template references.
    let mut templates = Vec::new();
    template::templates_in(&Value::Object(step.params.clone()), &mut templates);
    if let Some(w) = &step.when {
        templates.push(w.clone());
    }
    for t in &templates {
        let field_line = if step.when.as_deref() == Some(t.as_str()) {
            at("when")
        } else {
            at("with")
        };
        match template::references(t) {
            Err(e) => problems.push(Problem::new(
                rel,
                Some(field_line),
                format!("step `{}`: template `{t}`: {e}", step.id),
            )),
            Ok(refs) => {
                for r in refs {
                    if let Some(msg) = check_reference(&r, env_json, env, vars, seen) {
                        problems.push(Problem::new(
                            rel,
                            Some(field_line),
                            format!("step `{}`: template `{t}`: {msg}", step.id),
                        ));
                    }
                }
            }
        }
    }
    let timeout = match &step.timeout {
        None => kind
            .map(|k| k.default_timeout())
            .unwrap_or(Duration::from_secs(300)),
        Some(t) => match parse_duration(t) {
            Ok(d) => d,
            Err(e) => {
                problems.push(Problem::new(
                    rel,
                    Some(at("timeout")),
                    format!("step `{}`: timeout {e}", step.id),
                ));
                Duration::from_secs(300)
            }
        },
    };
    seen.entry(step.id.clone()).or_insert((s.line, kind));
    kind.map(|k| PlanStep {
        id: step.id.clone(),
        kind: k,
        params: step.params.clone(),
        when: step.when.clone(),
        timeout,
        retries: step.retries,
        rollback: step.rollback,
        description: step.description.clone(),
        line: s.line,
    })
}

/// Checks one dotted reference; `None` when it can be satisfied.
fn check_reference(
    r: &str,
    env_json: &Value,
    env: &Environment,
    vars: &BTreeMap<String, Value>,
    earlier: &HashMap<String, (u32, Option<&'static dyn StepKind>)>,
) -> Option<String> {
    let parts: Vec<&str> = r.split('.').collect();
    match parts[0] {
        "env" => {
            let mut cur = env_json;
            for p in &parts[1..] {
                match cur.get(p) {
                    Some(v) => cur = v,
                    None => {
                        return Some(format!(
                            "undefined variable `{r}` (the environment has no `{p}` there)"
                        ))
                    }
                }
            }
            None
        }
        "vars" => match parts.get(1) {
            Some(v) if !vars.contains_key(*v) => Some(format!(
                "undefined variable `{r}` (runbook vars: {})",
                if vars.is_empty() {
                    "none".to_string()
                } else {
                    vars.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
            _ => None,
        },
        "secrets" => match parts.get(1) {
            Some(s) if !env.secrets.contains_key(*s) => Some(format!(
                "undefined variable `{r}` (secrets of environment {}: {})",
                env.name,
                if env.secrets.is_empty() {
                    "none".to_string()
                } else {
                    env.secrets.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            )),
            _ => None,
        },
        // Terraform outputs are known only once the root is planned or applied; a missing one
        // fails the step that renders it, naming the output.
        "tf" => None,
        "steps" => {
            let Some(id) = parts.get(1) else {
                return Some("`steps` needs a step id: steps.<id>.outputs.<name>".into());
            };
            match earlier.get(*id) {
                None => Some(format!(
                    "undefined variable `{r}`: no earlier step has id `{id}`"
                )),
                // Its unknown kind is reported on its own line; no kind stands in for it.
                Some((_, None)) => None,
                Some((_, Some(kind))) => {
                    if parts.get(2).is_some_and(|p| *p != "outputs") {
                        return Some(format!("`{r}`: use steps.{id}.outputs.<name>"));
                    }
                    match parts.get(3) {
                        Some(o)
                            if !kind.outputs().iter().any(|x| x == o)
                                && *o != steps::SUMMARY_OUTPUT =>
                        {
                            Some(format!(
                                "undefined variable `{r}`: {} has outputs {}",
                                kind.name(),
                                kind.outputs().join(", ")
                            ))
                        }
                        _ => None,
                    }
                }
            }
        }
        other => Some(format!(
            "undefined variable `{other}` (templates see env, tf, vars, secrets, steps)"
        )),
    }
}
