//! Terraform: the `terraform` CLI run for one environment's root with that environment's
//! assumed-role credentials, its own data directory and its S3 backend.
//!
//! One root directory may serve several environments (the sandbox stack does), so each
//! environment gets its own `TF_DATA_DIR`; state is kept apart by the backend configuration.

use super::ProviderError;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// What a failed `terraform` command failed of. Terraform exits 1 for every error and its
/// machine-readable output (`-json`) carries the same diagnostic summaries as its text, so the
/// summary is what tells them apart: matched here, once, where the command ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `Saved plan is stale`: the state changed since the plan file was written; plan again.
    StalePlan,
    /// `Error acquiring the state lock`: another run holds the state.
    StateLocked,
    /// Anything else.
    Other,
}

impl Failure {
    /// Classifies a failed command by its stderr.
    pub fn of(stderr: &str) -> Failure {
        if stderr.contains("Saved plan is stale") {
            Failure::StalePlan
        } else if stderr.contains("Error acquiring the state lock") {
            Failure::StateLocked
        } else {
            Failure::Other
        }
    }
}

/// The Terraform operations a step makes on one environment's root, so `terraform.apply` can be
/// tested against a fake; [`Terraform`] runs the real CLI.
#[async_trait::async_trait]
pub trait Root: Send + Sync {
    /// `terraform init` with the backend's settings.
    ///
    /// # Errors
    /// [`ProviderError::Terraform`].
    async fn init(&self, backend: &BTreeMap<String, String>) -> Result<(), ProviderError>;
    /// Writes a plan to `plan_file` (`lock`: take the state lock); true when it changes
    /// anything.
    ///
    /// # Errors
    /// [`ProviderError::Terraform`].
    async fn plan(
        &self,
        vars: &BTreeMap<String, String>,
        plan_file: &Path,
        lock: bool,
    ) -> Result<bool, ProviderError>;
    /// The plan in `plan_file` as `terraform show -json` prints it.
    ///
    /// # Errors
    /// [`ProviderError::Terraform`].
    async fn show_plan(&self, plan_file: &Path) -> Result<Value, ProviderError>;
    /// Applies exactly the plan in `plan_file`.
    ///
    /// # Errors
    /// [`ProviderError::Terraform`], [`Failure::StalePlan`] when the state moved on since.
    async fn apply(&self, plan_file: &Path) -> Result<(), ProviderError>;
    /// The root module's outputs, name -> value (sensitive ones left out).
    ///
    /// # Errors
    /// [`ProviderError::Terraform`].
    async fn outputs(&self) -> Result<Map<String, Value>, ProviderError>;
}

#[async_trait::async_trait]
impl Root for Terraform {
    async fn init(&self, backend: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        Terraform::init(self, backend).await
    }
    async fn plan(
        &self,
        vars: &BTreeMap<String, String>,
        plan_file: &Path,
        lock: bool,
    ) -> Result<bool, ProviderError> {
        Terraform::plan(self, vars, plan_file, lock).await
    }
    async fn show_plan(&self, plan_file: &Path) -> Result<Value, ProviderError> {
        Terraform::show_plan(self, plan_file).await
    }
    async fn apply(&self, plan_file: &Path) -> Result<(), ProviderError> {
        Terraform::apply(self, plan_file).await
    }
    async fn outputs(&self) -> Result<Map<String, Value>, ProviderError> {
        Terraform::outputs(self).await
    }
}

/// A `terraform` invocation context for one environment.
pub struct Terraform {
    /// Root module directory.
    pub dir: PathBuf,
    /// `TF_DATA_DIR` for this environment.
    pub data_dir: PathBuf,
    /// Extra environment for the child (credentials, region); never printed.
    pub env: BTreeMap<String, String>,
}

/// Counts of planned resource actions, from `terraform show -json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanSummary {
    /// Resources to create.
    pub create: usize,
    /// Resources to update in place.
    pub update: usize,
    /// Resources to replace (delete and create).
    pub replace: usize,
    /// Resources to delete.
    pub delete: usize,
    /// Every resource that changes, recorded as `address: action`.
    pub resources: Vec<ResourceChange>,
}

/// What a plan does to one resource (`resource_changes[].change.actions` of `terraform show
/// -json`, a replacement being `["delete", "create"]` or the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceAction {
    /// Created.
    Create,
    /// Updated in place.
    Update,
    /// Deleted and created again.
    Replace,
    /// Destroyed.
    Delete,
}

impl ResourceAction {
    /// Terraform's word for it (`replace` for a replacement).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceAction::Create => "create",
            ResourceAction::Update => "update",
            ResourceAction::Replace => "replace",
            ResourceAction::Delete => "delete",
        }
    }
}

/// One resource a plan changes. Recorded (reviews, `step_planned` records) as the text
/// `address: action`, the form earlier versions wrote, and read back from it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ResourceChange {
    /// The resource's address, e.g. `aws_lb.app`.
    pub address: String,
    /// What the plan does to it.
    pub action: ResourceAction,
}

impl From<ResourceChange> for String {
    fn from(r: ResourceChange) -> String {
        r.to_string()
    }
}

impl TryFrom<String> for ResourceChange {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let (address, action) = text
            .rsplit_once(": ")
            .ok_or_else(|| format!("`{text}` is not `address: action`"))?;
        let action = match action {
            "create" => ResourceAction::Create,
            "update" => ResourceAction::Update,
            "replace" => ResourceAction::Replace,
            "delete" => ResourceAction::Delete,
            other => {
                return Err(format!(
                    "`{other}` is not create, update, replace or delete"
                ))
            }
        };
        Ok(ResourceChange {
            address: address.to_string(),
            action,
        })
    }
}

impl std::fmt::Display for ResourceChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.address, self.action.as_str())
    }
}

impl Terraform {
    /// The context for `env`'s root: `<root>/<terraform.dir>`, data directory
    /// `<state_dir>/terraform/<env>`, and the assumed-role credentials of `session` (so state and
    /// resources land in the environment's account, which STS has confirmed).
    ///
    /// The credentials are renewed when less than a full session is left, so every `terraform`
    /// process starts with as long as IAM allows (it cannot renew what it is given).
    ///
    /// # Errors
    /// [`ProviderError::Aws`] when the role cannot be assumed again.
    pub async fn for_environment(
        root: &Path,
        state_dir: &Path,
        env: &crate::config::Environment,
        session: &super::aws::AwsSession,
    ) -> Result<Terraform, ProviderError> {
        let creds = session
            .credentials
            .valid_for(std::time::Duration::from_secs(
                super::aws::SESSION_SECONDS - 300,
            ))
            .await
            .map_err(|e| super::aws::err("sts:AssumeRole (renewal)", e))?;
        let mut vars = BTreeMap::new();
        vars.insert(
            "AWS_ACCESS_KEY_ID".to_string(),
            creds.access_key_id().to_string(),
        );
        vars.insert(
            "AWS_SECRET_ACCESS_KEY".to_string(),
            creds.secret_access_key().to_string(),
        );
        if let Some(t) = creds.session_token() {
            vars.insert("AWS_SESSION_TOKEN".to_string(), t.to_string());
        }
        vars.insert("AWS_REGION".to_string(), env.aws.region.clone());
        Ok(Terraform {
            dir: root.join(&env.terraform.dir),
            data_dir: state_dir.join("terraform").join(&env.name),
            env: vars,
        })
    }

    /// Runs `terraform <args>` in the root with `-chdir`, returning stdout.
    ///
    /// # Errors
    /// [`ProviderError::Terraform`] when it cannot start or exits with a status not in `ok_codes`.
    pub async fn run(
        &self,
        args: &[&str],
        ok_codes: &[i32],
    ) -> Result<(i32, String), ProviderError> {
        let sub = args.first().copied().unwrap_or("").to_string();
        let mut cmd = Command::new(terraform_bin());
        cmd.arg(format!("-chdir={}", self.dir.display()))
            .args(args)
            .env("TF_DATA_DIR", &self.data_dir)
            .env("TF_IN_AUTOMATION", "1")
            .env("TF_INPUT", "0")
            .env_remove("AWS_PROFILE")
            .kill_on_drop(true);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().await.map_err(|e| ProviderError::Terraform {
            command: sub.clone(),
            message: format!("cannot run `{}`: {e}", terraform_bin()),
            failure: Failure::Other,
        })?;
        let code = out.status.code().unwrap_or(-1);
        if !ok_codes.contains(&code) {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let from_error = stderr
                .find("Error:")
                .map(|i| &stderr[i..])
                .unwrap_or(&stderr);
            let lines: Vec<&str> = from_error
                .lines()
                .map(|l| l.trim_start_matches(['│', '╷', '╵', ' ']))
                .filter(|l| !l.trim().is_empty())
                .collect();
            let tail = lines[..lines.len().min(12)].join(" ");
            return Err(ProviderError::Terraform {
                command: sub,
                message: format!("exit {code}: {tail}"),
                failure: Failure::of(&stderr),
            });
        }
        Ok((code, String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// `terraform init -reconfigure` with `-backend-config` pairs.
    pub async fn init(&self, backend: &BTreeMap<String, String>) -> Result<(), ProviderError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| ProviderError::Terraform {
            command: "init".into(),
            message: e.to_string(),
            failure: Failure::Other,
        })?;
        let mut args: Vec<String> = vec![
            "init".into(),
            "-input=false".into(),
            "-reconfigure".into(),
            "-no-color".into(),
        ];
        for (k, v) in backend {
            args.push(format!("-backend-config={k}={v}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        self.run(&refs, &[0]).await.map(|_| ())
    }

    /// `terraform plan -detailed-exitcode -out=<plan_file>`; true when there are changes.
    pub async fn plan(
        &self,
        vars: &BTreeMap<String, String>,
        plan_file: &Path,
        lock: bool,
    ) -> Result<bool, ProviderError> {
        let mut args: Vec<String> = vec![
            "plan".into(),
            "-input=false".into(),
            "-no-color".into(),
            "-detailed-exitcode".into(),
            format!("-out={}", plan_file.display()),
            format!("-lock={lock}"),
        ];
        for (k, v) in vars {
            args.push(format!("-var={k}={v}"));
        }
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _) = self.run(&refs, &[0, 2]).await?;
        Ok(code == 2)
    }

    /// `terraform show -json <plan_file>`.
    pub async fn show_plan(&self, plan_file: &Path) -> Result<Value, ProviderError> {
        let file = plan_file.display().to_string();
        let (_, out) = self
            .run(&["show", "-json", "-no-color", &file], &[0])
            .await?;
        serde_json::from_str(&out).map_err(|e| ProviderError::Terraform {
            command: "show".into(),
            message: e.to_string(),
            failure: Failure::Other,
        })
    }

    /// `terraform apply <plan_file>`: applies exactly the reviewed plan.
    pub async fn apply(&self, plan_file: &Path) -> Result<(), ProviderError> {
        let file = plan_file.display().to_string();
        self.run(
            &["apply", "-input=false", "-no-color", "-auto-approve", &file],
            &[0],
        )
        .await
        .map(|_| ())
    }

    /// `terraform output -json`, as name -> value; sensitive outputs are left out.
    pub async fn outputs(&self) -> Result<Map<String, Value>, ProviderError> {
        let (_, out) = self.run(&["output", "-json", "-no-color"], &[0]).await?;
        let v: Value = serde_json::from_str(&out).map_err(|e| ProviderError::Terraform {
            command: "output".into(),
            message: e.to_string(),
            failure: Failure::Other,
        })?;
        Ok(outputs_from(&v, false))
    }
}

/// The `terraform` executable: `$TERRAFORM` or `terraform` on PATH.
pub fn terraform_bin() -> String {
    std::env::var("TERRAFORM")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "terraform".to_string())
}

/// Name -> value from `terraform output -json` (`planned = false`) or from a plan's
/// `planned_values.outputs` (`planned = true`); sensitive and unknown values are left out.
pub fn outputs_from(v: &Value, planned: bool) -> Map<String, Value> {
    let outputs = if planned {
        v.pointer("/planned_values/outputs")
    } else {
        Some(v)
    };
    let mut map = Map::new();
    if let Some(Value::Object(o)) = outputs {
        for (name, entry) in o {
            if entry.get("sensitive").and_then(Value::as_bool) == Some(true) {
                continue;
            }
            if let Some(value) = entry.get("value") {
                map.insert(name.clone(), value.clone());
            }
        }
    }
    map
}

/// Counts the actions in a `terraform show -json` plan.
pub fn summarize(plan: &Value) -> PlanSummary {
    let mut s = PlanSummary::default();
    for rc in plan
        .get("resource_changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let address = rc.get("address").and_then(Value::as_str).unwrap_or("?");
        let actions: Vec<&str> = rc
            .pointer("/change/actions")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let action = match actions.as_slice() {
            ["create"] => ResourceAction::Create,
            ["update"] => ResourceAction::Update,
            ["delete"] => ResourceAction::Delete,
            ["delete", "create"] | ["create", "delete"] => ResourceAction::Replace,
            _ => continue,
        };
        match action {
            ResourceAction::Create => s.create += 1,
            ResourceAction::Update => s.update += 1,
            ResourceAction::Delete => s.delete += 1,
            ResourceAction::Replace => s.replace += 1,
        }
        s.resources.push(ResourceChange {
            address: address.to_string(),
            action,
        });
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_changes_are_recorded_as_address_and_action_and_read_back() {
        let plan = serde_json::json!({"resource_changes": [
            {"address": "aws_lb.app", "change": {"actions": ["create"]}},
            {"address": "aws_db_instance.db", "change": {"actions": ["delete", "create"]}},
            {"address": "aws_s3_bucket.logs", "change": {"actions": ["no-op"]}},
        ]});
        let s = summarize(&plan);
        assert_eq!((s.create, s.replace, s.update, s.delete), (1, 1, 0, 0));
        assert_eq!(s.resources[1].action, ResourceAction::Replace);
        let recorded = serde_json::to_value(&s).unwrap();
        assert_eq!(
            recorded["resources"],
            serde_json::json!(["aws_lb.app: create", "aws_db_instance.db: replace"])
        );
        let back: PlanSummary = serde_json::from_value(recorded).unwrap();
        assert_eq!(back, s);
        let bad = serde_json::json!({"create": 0, "update": 0, "replace": 0, "delete": 0,
            "resources": ["aws_lb.app: recreate"]});
        let err = serde_json::from_value::<PlanSummary>(bad).unwrap_err();
        assert!(err.to_string().contains("recreate"), "{err}");
    }

    #[test]
    fn failures_are_told_apart_by_terraforms_diagnostic_summary() {
        let stale = "\n│ Error: Saved plan is stale\n│ \n│ The given plan file can no longer be applied because the state was changed\n";
        assert_eq!(Failure::of(stale), Failure::StalePlan);
        let locked = "╷\n│ Error: Error acquiring the state lock\n│ \n│ Error message: ConditionalCheckFailedException\n";
        assert_eq!(Failure::of(locked), Failure::StateLocked);
        assert_eq!(
            Failure::of("│ Error: Invalid provider configuration"),
            Failure::Other
        );
        let e = ProviderError::Terraform {
            command: "apply".into(),
            message: "exit 1: Error: Saved plan is stale".into(),
            failure: Failure::of(stale),
        };
        assert_eq!(e.terraform_failure(), Some(Failure::StalePlan));
        assert_eq!(ProviderError::Http("x".into()).terraform_failure(), None);
    }
    use serde_json::json;

    #[test]
    fn summary_counts_replacements_apart() {
        let plan = json!({"resource_changes": [
            {"address": "a", "change": {"actions": ["create"]}},
            {"address": "b", "change": {"actions": ["delete", "create"]}},
            {"address": "c", "change": {"actions": ["no-op"]}},
            {"address": "d", "change": {"actions": ["delete"]}}
        ]});
        let s = summarize(&plan);
        assert_eq!((s.create, s.update, s.replace, s.delete), (1, 0, 1, 1));
        let shown: Vec<String> = s.resources.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["a: create", "b: replace", "d: delete"]);
    }

    #[test]
    fn sensitive_outputs_are_left_out() {
        let v =
            json!({"a": {"value": 1, "sensitive": false}, "b": {"value": "pw", "sensitive": true}});
        let m = outputs_from(&v, false);
        assert_eq!(m.len(), 1);
        assert_eq!(m["a"], 1);
    }
}
