//! Resolution of a runbook and an environment into a validated [`Plan`]: every step's kind known,
//! parameters checked, every template reference checked, all problems reported at once; and the
//! digests rehearsals are recorded against.
//!
//! This module does no I/O beyond reading the two files; rendering against live values (Terraform
//! outputs, earlier steps' outputs, secrets) happens in the engine at run time.

pub mod order;
pub mod schema;
mod step;
pub mod template;

use crate::config::{self, Environment, Problem, Problems, RollbackPolicy};
use crate::steps::{self, StepKind};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A runbook resolved for one environment.
pub struct Plan {
    /// Runbook name.
    pub runbook_name: String,
    /// Runbook file.
    pub runbook_path: PathBuf,
    /// SHA-256 (hex) of the runbook file: what rehearsals are recorded against and production
    /// checks.
    pub runbook_digest: String,
    /// SHA-256 (hex) of the runbook digest and the environment's resolved non-secret settings.
    pub plan_digest: String,
    /// The environment as this run sees it: `env.database` is the database it acts on.
    pub env: Environment,
    /// That database's name in the environment (a key of its `databases:`, or the one
    /// `database:`'s name); empty for a runbook with no `postgres.*` step in an environment with
    /// several databases (it acts on none).
    pub database: String,
    /// `vars.*`.
    pub vars: BTreeMap<String, Value>,
    /// The rehearsal heartbeat writer, if the runbook configures one.
    pub heartbeat: Option<crate::config::Heartbeat>,
    /// Phases in order.
    pub phases: Vec<PlanPhase>,
    /// Orderings that cost users ([`order::check`]): what `cutover validate` warns about.
    pub warnings: Vec<crate::config::Problem>,
}

/// A phase of a plan.
pub struct PlanPhase {
    /// Phase name.
    pub name: String,
    /// Steps in order.
    pub steps: Vec<PlanStep>,
}

/// A step of a plan; parameters still unrendered.
pub struct PlanStep {
    /// Step id.
    pub id: String,
    /// The kind implementation.
    pub kind: &'static dyn StepKind,
    /// `with:` parameters (templates).
    pub params: Map<String, Value>,
    /// `when:` template.
    pub when: Option<String>,
    /// Deadline for apply + verify.
    pub timeout: Duration,
    /// Extra apply attempts.
    pub retries: u32,
    /// Rollback behaviour.
    pub rollback: RollbackPolicy,
    /// Free text.
    pub description: Option<String>,
    /// Line in the runbook.
    pub line: u32,
}

impl Plan {
    /// Every Terraform output the plan's templates read, as `(step id, step line, output name)`
    /// for each `tf.<name>` reference in a step's `with` or `when`.
    pub fn tf_references(&self) -> Vec<(String, u32, String)> {
        let mut out = Vec::new();
        for (_, step) in self.steps() {
            let mut templates = Vec::new();
            template::templates_in(&Value::Object(step.params.clone()), &mut templates);
            templates.extend(step.when.iter().cloned());
            for t in templates {
                for r in template::references(&t).unwrap_or_default() {
                    if let Some(name) = r.strip_prefix("tf.") {
                        let name = name.split('.').next().unwrap_or(name).to_string();
                        if !out.iter().any(|(s, _, n)| s == &step.id && n == &name) {
                            out.push((step.id.clone(), step.line, name));
                        }
                    }
                }
            }
        }
        out
    }

    /// Every step in execution order with its phase name.
    pub fn steps(&self) -> impl Iterator<Item = (&str, &PlanStep)> {
        self.phases
            .iter()
            .flat_map(|p| p.steps.iter().map(move |s| (p.name.as_str(), s)))
    }

    /// What a run of this plan acts on, as lock keys (sorted, each once): `runbook:<name>[@<db>]`,
    /// `database:<name>`,
    /// `secret:<namespace>/<name>` for the heartbeat's Secret and each Secret a step names
    /// (`namespace` and `secret` parameters), and `record:<name>` for each DNS record a step names
    /// (`record`). Parameters are rendered with `env` and `vars` only; one that needs run-time
    /// values (Terraform outputs, earlier steps) is left out, since the database and the
    /// literal names already tell two services apart.
    pub fn service_keys(&self) -> Vec<String> {
        let ctx = json!({"env": env_context(&self.env), "vars": self.vars});
        let render = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .and_then(|t| template::render_str(t, &ctx).ok())
                .filter(|r| !r.is_empty())
        };
        // The runbook on its database: two runs of it never overlap, even when it names nothing
        // else (one runbook applied to two databases is two services).
        let mut keys = vec![if self.database.is_empty() {
            format!("runbook:{}", self.runbook_name)
        } else {
            format!("runbook:{}@{}", self.runbook_name, self.database)
        }];
        if !self.database.is_empty() {
            keys.push(format!("database:{}", self.database));
        }
        if let Some(h) = &self.heartbeat {
            keys.push(format!("secret:{}/{}", h.namespace, h.secret));
        }
        for (_, step) in self.steps() {
            if let (Some(ns), Some(name)) = (
                render(step.params.get("namespace")),
                render(step.params.get("secret")),
            ) {
                keys.push(format!("secret:{ns}/{name}"));
            }
            if let Some(record) = render(step.params.get("record")) {
                keys.push(format!("record:{}", record.trim_end_matches('.')));
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }
}

/// The environment as templates see it (`env.*`): the file's settings, no secret values.
pub fn env_context(env: &Environment) -> Value {
    serde_json::to_value(env).unwrap_or(Value::Null)
}

/// Loads the environment and runbook and resolves them.
///
/// # Errors
/// Every problem in both files and in their combination.
pub fn resolve(root: &Path, runbook: &str, env_name: &str) -> Result<Plan, Problems> {
    resolve_for(root, runbook, env_name, None)
}

/// [`resolve`] for a run acting on the environment's database `database` (`--database`, or a
/// migration wave's entry); `None`: the runbook's `database:`, else the environment's only one.
///
/// # Errors
/// As [`resolve`]; also a database the environment does not have, or one that differs from the
/// runbook's own `database:`.
pub fn resolve_for(
    root: &Path,
    runbook: &str,
    env_name: &str,
    database: Option<&str>,
) -> Result<Plan, Problems> {
    let mut problems = Problems::default();
    let env = config::load_environment(root, env_name);
    let rb = config::load_runbook(root, runbook);
    let env = match env {
        Ok(e) => Some(e),
        Err(p) => {
            problems.extend(p);
            None
        }
    };
    let (raw, step_problems, text, rel) = match rb {
        Ok(r) => r,
        Err(p) => {
            problems.extend(p);
            return Err(problems);
        }
    };
    problems.extend(step_problems);
    let Some(env) = env else { return Err(problems) };
    let wanted = match (database, raw.database.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            problems.push(Problem::new(
                &rel,
                line_of_key(&text, "database"),
                format!("the run names database `{a}`, the runbook acts on `{b}`"),
            ));
            return Err(problems);
        }
        (Some(a), _) => Some(a),
        (None, b) => b,
    };
    // A runbook none of whose steps acts on a database needs none, even in an environment with
    // several: it runs with no database chosen.
    let acts_on_database = raw
        .phases
        .iter()
        .flat_map(|p| &p.steps)
        .any(|s| steps::lookup(&s.step.kind).is_some_and(|k| k.acts_on_database()));
    let (database, env) = match env.for_database(wanted) {
        Ok(x) => x,
        Err(_) if wanted.is_none() && !acts_on_database => {
            let mut none = env.clone();
            none.database = Default::default();
            none.databases.clear();
            (String::new(), none)
        }
        Err(m) => {
            // Reported with the rest: the steps are still checked against the environment.
            let line = raw.database.as_ref().and(line_of_key(&text, "database"));
            problems.push(Problem::new(&rel, line, m));
            (String::new(), env)
        }
    };

    let env_json = env_context(&env);
    let mut seen = step::Seen::new();
    let mut phases = Vec::new();
    for phase in &raw.phases {
        let mut steps_out = Vec::new();
        for s in &phase.steps {
            if let Some(step) = step::check(
                &rel,
                s,
                &env_json,
                &env,
                &raw.vars,
                &mut seen,
                &mut problems,
            ) {
                steps_out.push(step);
            }
        }
        phases.push(PlanPhase {
            name: phase.name.clone(),
            steps: steps_out,
        });
    }
    if !problems.is_empty() {
        problems
            .0
            .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        return Err(problems);
    }
    let (runbook_digest, plan_digest) = digests(&text, &env_json, &raw.vars);
    let mut plan = Plan {
        runbook_name: raw.name,
        runbook_path: rel,
        runbook_digest,
        plan_digest,
        env,
        database,
        heartbeat: raw.heartbeat,
        vars: raw.vars,
        phases,
        warnings: Vec::new(),
    };
    let (refused, warnings) = order::check(&plan, line_of_key(&text, "heartbeat"));
    if !refused.is_empty() {
        return Err(Problems(refused));
    }
    plan.warnings = warnings;
    Ok(plan)
}

/// The runbook's digest (SHA-256 of its text) and the plan's (of that digest and the
/// environment's non-secret settings and the runbook's `vars`), both hex.
fn digests(text: &str, env_json: &Value, vars: &BTreeMap<String, Value>) -> (String, String) {
    let runbook = hex::encode(Sha256::digest(text.as_bytes()));
    let mut h = Sha256::new();
    h.update(runbook.as_bytes());
    h.update(b"\n");
    h.update(
        serde_json::to_string(&json!({"env": env_json, "vars": vars}))
            .unwrap_or_default()
            .as_bytes(),
    );
    (runbook, hex::encode(h.finalize()))
}

/// The 1-based line of the first top-level `key:` in `text`.
fn line_of_key(text: &str, key: &str) -> Option<u32> {
    text.lines()
        .position(|l| l.starts_with(&format!("{key}:")))
        .map(|i| i as u32 + 1)
}
