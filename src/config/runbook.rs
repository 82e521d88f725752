//! `runbooks/<name>.yaml`: named phases of steps.
//!
//! ```yaml
//! name: shop-cutover
//! vars: { app: shop }
//! phases:
//!   - name: prepare
//!     steps:
//!       - { id: infra, kind: terraform.apply }
//!       - id: synced
//!         kind: postgres.wait_lag
//!         with: { max_lag_bytes: 0 }
//!         timeout: 10m
//! ```

use super::node::Node;
use super::problem::{from_yaml_error, Problem, Problems};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::Path;

/// The top of a runbook file, with each step still as a located node.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Runbook")]
pub(super) struct RawRunbookFile {
    /// The runbook's name, the same as its file name (`shop-cutover` in
    /// `runbooks/shop-cutover.yaml`).
    name: String,
    /// Free text shown in rendered procedures.
    #[serde(default)]
    description: Option<String>,
    /// Values available to templates as `vars.*`.
    #[serde(default)]
    vars: BTreeMap<String, serde_json::Value>,
    /// During a rehearsal, a writer through the application's Secret that measures the write
    /// outage and checks that no acknowledged write is lost.
    #[serde(default)]
    heartbeat: Option<Heartbeat>,
    /// The runbook whose successful run this one follows (e.g. a decommission after the
    /// cutover): it is never chosen by default, only with `--runbook`.
    #[serde(default)]
    follows: Option<String>,
    /// The environment's database this runbook acts on (a name under its `databases:`); needed
    /// only where the environment has several.
    #[serde(default)]
    database: Option<String>,
    /// Phases in order; each runs its steps in order.
    phases: Vec<RawPhaseFile>,
}

/// Whether the runbook file `path` declares `follows:` (runs only when named with `--runbook`).
/// A file that does not parse counts as not following (its errors are reported when loaded).
pub fn follows_another(path: &Path) -> bool {
    #[derive(Deserialize)]
    struct Top {
        #[serde(default)]
        follows: Option<String>,
    }
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| super::parse_yaml::<Top>(&t).ok())
        .is_some_and(|t| t.follows.is_some())
}

/// `heartbeat:` — during a rehearsal, a writer that reads its database URL from a Kubernetes
/// Secret and uses a new value when the application's pods would (`reload`), and writes
/// continuously, so that the run measures its own write outage, checks that no acknowledged
/// write is lost, and rolls back when the outage passes `max_write_outage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Namespace of the application's Secret.
    pub namespace: String,
    /// The Secret's name.
    pub secret: String,
    /// The key holding the database URL.
    pub key: String,
    /// Attempted writes per second (default 50).
    #[serde(default = "default_heartbeat_rate")]
    pub writes_per_second: f64,
    /// Heartbeat table, created in the application's database if missing (default
    /// `cutover_heartbeat`).
    #[serde(default = "default_heartbeat_table")]
    pub table: String,
    /// How often the writer reads the Secret (and, with `reload: restart`, the Deployments'
    /// rollouts), milliseconds (default 100). How soon it *uses* a new value is `reload`'s.
    #[serde(default = "default_heartbeat_reload")]
    pub reload_ms: u64,
    /// How the application's pods pick up a new value of the Secret, so the writer uses it when
    /// they would (default `restart`): `restart`, `volume` or `pooler`.
    #[serde(default)]
    pub reload: Reload,
    /// With `reload: volume`: how long after the Secret changes the pods see the new value
    /// (default 60s: the kubelet's default `syncFrequency` of one minute; its Secret cache can
    /// add up to its TTL).
    #[serde(
        default = "default_volume_delay",
        with = "super::duration::duration_text"
    )]
    #[schemars(with = "String")]
    pub volume_delay: std::time::Duration,
    /// With `reload: restart`: the Deployments whose pods read the Secret (default: every
    /// Deployment in `namespace` whose pod template reads it through `env`, `envFrom` or a
    /// volume).
    #[serde(default)]
    pub deployments: Option<Vec<String>>,
    /// The write outage the run accepts (default 30s): once any path that serves users has had
    /// no write acknowledged for longer, the step running fails at its next safe point and the
    /// run rolls back; at the end, the application must write again within it.
    #[serde(
        default = "default_max_write_outage",
        with = "super::duration::duration_text"
    )]
    #[schemars(with = "String")]
    pub max_write_outage: std::time::Duration,
    /// The legacy application's path, measured too: users whom DNS still sends to the legacy
    /// host write through it, so its outage counts while DNS (or an answer a resolver may still
    /// cache) names the legacy target.
    #[serde(default)]
    pub legacy: Option<LegacyPath>,
}

/// `heartbeat.legacy:` — the legacy application's own database connection and the DNS record
/// whose answers send users to it. Both are templates (`env.*`, `secrets.*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LegacyPath {
    /// The database URL the legacy application uses (a secret, e.g.
    /// `{{ secrets.legacy_app_database_url }}`).
    pub url: String,
    /// The service's DNS record, e.g. `shop.{{ env.dns.domain }}`; the targets it names when the
    /// run starts are the legacy side.
    pub record: String,
    /// Its type (default `CNAME`).
    #[serde(default = "default_record_type", rename = "type")]
    pub rtype: String,
}

/// `heartbeat.reload`: how the application's pods pick up a new value of their Secret.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Reload {
    /// The Secret is read as environment variables: a running pod never sees a new value, only
    /// pods started after the change do. The writer uses the new value once the rollout of every
    /// Deployment that reads the Secret, started after the change, has completed (every old pod
    /// gone): until then old pods keep writing through the old value.
    #[default]
    Restart,
    /// The Secret is mounted as a volume: the kubelet refreshes it after its sync period and
    /// cache. The writer uses a new value `volume_delay` after it first saw it.
    Volume,
    /// The pods connect to a connection pooler and never reload: the writer keeps the value it
    /// started with (the pooler's upstream is what moves).
    Pooler,
}

impl Reload {
    /// `restart`, `volume` or `pooler`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reload::Restart => "restart",
            Reload::Volume => "volume",
            Reload::Pooler => "pooler",
        }
    }
}

fn default_volume_delay() -> std::time::Duration {
    std::time::Duration::from_secs(60)
}

fn default_max_write_outage() -> std::time::Duration {
    std::time::Duration::from_secs(30)
}

fn default_record_type() -> String {
    "CNAME".into()
}

fn default_heartbeat_rate() -> f64 {
    50.0
}
fn default_heartbeat_table() -> String {
    "cutover_heartbeat".into()
}
fn default_heartbeat_reload() -> u64 {
    100
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Phase")]
struct RawPhaseFile {
    /// Phase name (`prepare`, `cutover`, ...).
    #[schemars(with = "String")]
    name: Spanned<String>,
    /// Free text shown in rendered procedures.
    #[serde(default)]
    description: Option<String>,
    /// Steps in order.
    #[schemars(with = "Vec<RawStep>")]
    steps: Vec<Spanned<Node>>,
}

/// A parsed runbook: structure checked, steps typed; references not yet checked.
#[derive(Debug, Clone)]
pub struct RawRunbook {
    /// Runbook name.
    pub name: String,
    /// Free text shown in rendered procedures.
    pub description: Option<String>,
    /// Values available to templates as `vars.*`.
    pub vars: BTreeMap<String, serde_json::Value>,
    /// The rehearsal heartbeat writer, if configured.
    pub heartbeat: Option<Heartbeat>,
    /// The runbook this one follows (`follows:`): never chosen by default.
    pub follows: Option<String>,
    /// The environment's database this runbook acts on (`database:`, a name under the
    /// environment's `databases:`); `None`: the only one, or the one a run or wave names.
    pub database: Option<String>,
    /// Phases in order.
    pub phases: Vec<RawPhase>,
}

/// A named group of steps executed in order.
#[derive(Debug, Clone)]
pub struct RawPhase {
    /// Phase name (`prepare`, `cutover`, ...).
    pub name: String,
    /// 1-based line of the phase name.
    pub line: u32,
    /// Free text.
    pub description: Option<String>,
    /// Steps in order.
    pub steps: Vec<SpannedStep>,
}

/// A step with the lines of its fields, for located errors.
#[derive(Debug, Clone)]
pub struct SpannedStep {
    /// The typed step.
    pub step: RawStep,
    /// 1-based line where the step starts.
    pub line: u32,
    /// The step's node, for the lines of individual fields.
    pub node: Node,
}

impl SpannedStep {
    /// The line of field `name`, else the step's line.
    pub fn line_of(&self, name: &str) -> u32 {
        self.node.key_line(name).unwrap_or(self.line)
    }
}

/// What the engine does with a step when the run rolls back.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RollbackPolicy {
    /// Call the kind's rollback (the default).
    #[default]
    Auto,
    /// Leave the step's effect in place on rollback.
    Skip,
}

/// One step as written.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Step")]
pub struct RawStep {
    /// Unique within the runbook; `[a-z0-9_-]+`.
    pub id: String,
    /// Step kind, e.g. `postgres.replicate`; see `cutover schema` for the list.
    pub kind: String,
    /// Kind parameters; strings are minijinja templates.
    #[serde(default, rename = "with")]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Template; the step runs only when it renders to a true value.
    #[serde(default)]
    pub when: Option<String>,
    /// Deadline for apply + verify, e.g. `90s`, `10m`; default per kind.
    #[serde(default)]
    pub timeout: Option<String>,
    /// Extra attempts of apply after a failure (default 0).
    #[serde(default)]
    pub retries: u32,
    /// Rollback behaviour.
    #[serde(default)]
    pub rollback: RollbackPolicy,
    /// Free text shown in rendered procedures.
    #[serde(default)]
    pub description: Option<String>,
}

/// The fields a step may have, as the error hint lists them.
pub const STEP_FIELDS: &[&str] = &[
    "id",
    "kind",
    "with",
    "when",
    "timeout",
    "retries",
    "rollback",
    "description",
];

/// Parses a runbook, checking each step separately so that every step's problems are reported.
/// Returns the runbook without its invalid steps, and the problems found, so that later checks
/// (kinds, references, duplicate ids) still run on the valid steps.
///
/// # Errors
/// The YAML or top-level structure is unusable.
pub(super) fn parse(path: &Path, text: &str) -> Result<(RawRunbook, Problems), Problems> {
    let file: RawRunbookFile =
        super::parse_yaml(text).map_err(|e| Problems::one(from_yaml_error(path, &e)))?;
    let mut problems = Problems::default();
    let mut phases = Vec::new();
    for phase in file.phases {
        let mut steps = Vec::new();
        for spanned in phase.steps {
            let line = spanned.referenced.line() as u32;
            let node = spanned.value;
            if !matches!(node, Node::Map(_)) {
                problems.push(Problem::new(
                    path,
                    Some(line),
                    "a step must be a mapping with at least `id` and `kind`",
                ));
                continue;
            }
            let mut bad = false;
            for (key, kline) in node.keys() {
                if !STEP_FIELDS.contains(&key) {
                    bad = true;
                    let id = node.get("id").and_then(|v| match &v.value {
                        Node::Str(s) => Some(s.clone()),
                        _ => None,
                    });
                    let who = id
                        .map(|i| format!("step `{i}`"))
                        .unwrap_or_else(|| "step".into());
                    problems.push(
                        Problem::new(path, Some(kline), format!("{who}: unknown field `{key}`"))
                            .hint(Some(super::problem::choices_hint(
                                key,
                                "valid fields",
                                STEP_FIELDS,
                            )))
                            .field(key),
                    );
                }
            }
            if bad {
                continue;
            }
            match serde_json::from_value::<RawStep>(node.to_json()) {
                Ok(step) => steps.push(SpannedStep { step, line, node }),
                Err(e) => {
                    let msg = e.to_string();
                    let field_line = msg
                        .split('`')
                        .nth(1)
                        .and_then(|f| node.key_line(f))
                        .unwrap_or(line);
                    problems.push(Problem::new(path, Some(field_line), format!("step: {msg}")));
                }
            }
        }
        phases.push(RawPhase {
            name: phase.name.value,
            line: phase.name.referenced.line() as u32,
            description: phase.description,
            steps,
        });
    }
    Ok((
        RawRunbook {
            name: file.name,
            description: file.description,
            vars: file.vars,
            heartbeat: file.heartbeat,
            follows: file.follows,
            database: file.database,
            phases,
        },
        problems,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_and_flow_steps_keep_their_lines() {
        let text = "name: r\nphases:\n  - name: p\n    steps:\n      - { id: a, kind: http.check }\n      - id: b\n        kind: http.check\n        with: { url: x }\n";
        let (rb, problems) = parse(Path::new("r.yaml"), text).unwrap();
        assert!(problems.is_empty());
        let steps = &rb.phases[0].steps;
        assert_eq!(steps[0].line, 5);
        assert_eq!(steps[1].line_of("with"), 8);
        assert_eq!(steps[1].step.params["url"], "x");
    }

    #[test]
    fn unknown_fields_in_two_steps_are_both_reported_with_lines() {
        let text = "name: r\nphases:\n  - name: p\n    steps:\n      - { id: a, kind: k, colour: red }\n      - id: b\n        kind: k\n        retry: 3\n";
        let (_, err) = parse(Path::new("r.yaml"), text).unwrap();
        assert_eq!(err.0.len(), 2, "{err}");
        assert_eq!(err.0[0].line, Some(5));
        assert_eq!(err.0[1].line, Some(8));
        assert!(err.0[1].message.contains("`retry`"));
        assert!(err.0[1].hint.as_deref().unwrap().contains("retries"));
    }
}
