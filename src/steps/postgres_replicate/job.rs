//! The copy's workers as a Kubernetes Indexed Job in the target environment's EKS cluster
//! (`workers: { run: job }`): `count` pods of the `cutover` image, each running
//! `cutover copy-worker` with its completion index as its name (`index-N`, from the
//! `JOB_COMPLETION_INDEX` the Job controller sets), claiming chunks from the plan on the target
//! until none is left, next to RDS instead of behind the operator's laptop.
//!
//! The manifests: a Secret with both servers' URLs (`envFrom`: never on a command line or in the
//! Job) and the Job: `completionMode: Indexed`, `completions` and `parallelism` both `count`
//! (every index exits 0 once the plan has no chunk left), `backoffLimit` (failed pods replaced
//! in all before the Job fails), `restartPolicy: Never`, and a `podFailurePolicy` that fails
//! the Job at once when a worker exits 2 (bad input: a retry cannot help). The plan and the
//! dry-run show the Job's manifest as it will be applied and the Secret's values as
//! fingerprints. Both are deleted when the copy ends and by rollback; the Job with
//! `propagationPolicy: Background`, since the API's default for a Job is to orphan its pods.
//!
//! Kubernetes rules followed: "Jobs" in the Kubernetes documentation (Indexed completion mode,
//! `JOB_COMPLETION_INDEX`, `backoffLimit`, pod failure policy, the `Complete` and `Failed`
//! terminal conditions).
//!
//! This module owns the manifests and reading the Job's state; it must not claim or copy
//! chunks (that is [`crate::providers::postgres::workers`]) nor decide when the copy runs.

use crate::config::EksSection;
use crate::providers::kube::{delete_if_exists, ensure_namespace, kube_err, opaque_secret, upsert};
use crate::secret::fingerprint;
use crate::steps::{StepContext, StepError};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{json, Value};

/// The environment variable names `cutover copy-worker` reads (the Secret's keys).
use crate::providers::postgres::workers::{
    SOURCE_URL_ENV as SOURCE_KEY, TARGET_URL_ENV as TARGET_KEY,
};

/// The container's name in the pod template (named by the pod failure policy).
const CONTAINER: &str = "copy-worker";

/// The exit code of `cutover copy-worker` for bad input, on which the Job fails at once.
const EXIT_INVALID: i32 = 2;

/// One copy Job, as it will be (or was) applied.
#[derive(Debug, Clone, PartialEq)]
pub struct CopyJob {
    /// Namespace of the Job and its Secret (the step's `relay_namespace`).
    pub namespace: String,
    /// Name of both: `copy-<slot>`, underscores as hyphens, at most 63 characters.
    pub name: String,
    /// The container image (`eks.image`, else `cutover:<this version>`).
    pub image: String,
    /// The pods' service account (`eks.service_account`); `None`: the namespace's default.
    pub service_account: Option<String>,
    /// Pods at once, and completion indexes (`workers.count`).
    pub count: usize,
    /// Failed pods replaced in all before the Job fails (`workers.backoff_limit`).
    pub backoff_limit: u32,
    /// The container's arguments (`copy-worker --lease ...`).
    pub args: Vec<String>,
}

/// The name of the copy Job and its Secret for slot `slot`.
pub fn name(slot: &str) -> String {
    let mut n = format!("copy-{}", slot.replace('_', "-"));
    n.truncate(63);
    n.trim_end_matches('-').to_string()
}

/// The copy Job of slot `slot`: `count` workers with a lease of `lease` seconds, each limited
/// to `rate_limit_mb` MB/s when set, from the image and service account of `eks`.
pub fn copy_job(
    eks: &EksSection,
    namespace: &str,
    slot: &str,
    count: usize,
    backoff_limit: u32,
    lease: u64,
    rate_limit_mb: Option<f64>,
) -> CopyJob {
    let mut args = vec![
        "copy-worker".to_string(),
        "--lease".into(),
        lease.to_string(),
    ];
    if let Some(r) = rate_limit_mb {
        args.push("--rate-limit-mb".into());
        args.push(format!("{r}"));
    }
    CopyJob {
        namespace: namespace.to_string(),
        name: name(slot),
        image: eks
            .image
            .clone()
            .unwrap_or_else(|| format!("cutover:{}", env!("CARGO_PKG_VERSION"))),
        service_account: eks.service_account.clone(),
        count,
        backoff_limit,
        args,
    }
}

fn labels(j: &CopyJob, run_id: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "cutover-copy-worker",
        "app.kubernetes.io/managed-by": "cutover",
        "app.kubernetes.io/instance": j.name,
        "cutover.dev/run": run_id.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>(),
    })
}

/// The Job's manifest, as applied and as the dry-run shows it.
pub fn manifest(j: &CopyJob, run_id: &str) -> Value {
    let labels = labels(j, run_id);
    let mut pod = json!({
        "restartPolicy": "Never",
        "containers": [{
            "name": CONTAINER,
            "image": j.image,
            "args": j.args,
            "envFrom": [{"secretRef": {"name": j.name}}],
            "resources": {"requests": {"cpu": "500m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}
        }]
    });
    if let Some(sa) = &j.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": j.name, "namespace": j.namespace, "labels": labels},
        "spec": {
            "completionMode": "Indexed",
            "completions": j.count,
            "parallelism": j.count,
            "backoffLimit": j.backoff_limit,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_INVALID]}
            }]},
            "template": {"metadata": {"labels": labels}, "spec": pod}
        }
    })
}

/// The Secret's manifest with both URLs (passwords included: never shown).
fn secret(j: &CopyJob, run_id: &str, source: &str, target: &str) -> Value {
    opaque_secret(
        &j.namespace,
        &j.name,
        labels(j, run_id),
        &[(SOURCE_KEY, source), (TARGET_KEY, target)],
    )
}

/// What the plan shows: the Job in one line, and the Secret's keys with their values'
/// fingerprints.
pub fn describe(j: &CopyJob, source: &str, target: &str) -> (String, String) {
    (
        format!(
            "Indexed, completions {n}, parallelism {n}, backoffLimit {}, image {}, service account {}; args: {}; each pod claims chunks from the plan on the target until none is left; deleted when the copy ends and by rollback",
            j.backoff_limit,
            j.image,
            j.service_account.as_deref().unwrap_or("default"),
            j.args.join(" "),
            n = j.count,
        ),
        format!(
            "{SOURCE_KEY} {} (the legacy database), {TARGET_KEY} {} (the target)",
            fingerprint(source),
            fingerprint(target)
        ),
    )
}

/// Where a Job stands, from its `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No terminal condition yet.
    Running,
    /// `Complete`: every index succeeded.
    Complete,
    /// `Failed`, with the condition's reason (`BackoffLimitExceeded`, `PodFailurePolicy`,
    /// `DeadlineExceeded`) and message.
    Failed {
        /// The condition's reason.
        reason: String,
        /// The condition's message.
        message: String,
    },
}

/// A Job's pods as its status counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobState {
    /// Pods running (`status.active`).
    pub active: i32,
    /// Of them, ready (`status.ready`).
    pub ready: i32,
    /// Pods that succeeded (`status.succeeded`).
    pub succeeded: i32,
    /// Pods that failed (`status.failed`).
    pub failed: i32,
    /// The indexes that succeeded, as the API compresses them (`0-2,4`).
    pub completed_indexes: String,
    /// Its terminal condition, if any.
    pub outcome: Outcome,
}

impl JobState {
    /// Reads a Job's status.
    pub fn of(job: &Job) -> JobState {
        let st = job.status.clone().unwrap_or_default();
        let condition = |kind: &str| {
            st.conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == kind && c.status == "True")
                .cloned()
        };
        let outcome = if condition("Complete").is_some() {
            Outcome::Complete
        } else if let Some(c) = condition("Failed") {
            Outcome::Failed {
                reason: c.reason.unwrap_or_default(),
                message: c.message.unwrap_or_default(),
            }
        } else {
            Outcome::Running
        };
        JobState {
            active: st.active.unwrap_or(0),
            ready: st.ready.unwrap_or(0),
            succeeded: st.succeeded.unwrap_or(0),
            failed: st.failed.unwrap_or(0),
            completed_indexes: st.completed_indexes.unwrap_or_default(),
            outcome,
        }
    }

    /// `2 active (2 ready), 0 succeeded, 1 failed`.
    pub fn pods(&self) -> String {
        format!(
            "{} active ({} ready), {} succeeded{}, {} failed",
            self.active,
            self.ready,
            self.succeeded,
            if self.completed_indexes.is_empty() {
                String::new()
            } else {
                format!(" (indexes {})", self.completed_indexes)
            },
            self.failed
        )
    }
}

/// The Job's state, `None` when it does not exist.
///
/// # Errors
/// [`StepError`] from the Kubernetes API.
pub async fn state(cx: &StepContext<'_>, j: &CopyJob) -> Result<Option<JobState>, StepError> {
    let client = cx.providers.kube().await?;
    let jobs: Api<Job> = Api::namespaced(client, &j.namespace);
    Ok(jobs
        .get_opt(&j.name)
        .await
        .map_err(|e| kube_err(&format!("get Job {}", j.name), e))?
        .map(|job| JobState::of(&job)))
}

/// Creates the namespace when missing, creates or replaces the Secret, and creates the Job.
/// A Job of that name left by an earlier attempt is kept while it runs or completed (its pods
/// claim from the same plan) and replaced when it failed. Returns whether a Job was created.
///
/// # Errors
/// [`StepError`] from the Kubernetes API (the message never holds the Secret's values).
pub async fn apply(
    cx: &StepContext<'_>,
    j: &CopyJob,
    source: &str,
    target: &str,
) -> Result<bool, StepError> {
    let client = cx.providers.kube().await?;
    ensure_namespace(&client, &j.namespace).await?;
    let s: Secret = serde_json::from_value(secret(j, cx.run_id, source, target))
        .map_err(|e| StepError::Check(e.to_string()))?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &j.namespace);
    upsert(&secrets, &j.name, s, "Secret").await?;
    let jobs: Api<Job> = Api::namespaced(client, &j.namespace);
    match state(cx, j).await? {
        Some(st) if !matches!(st.outcome, Outcome::Failed { .. }) => return Ok(false),
        Some(_) => {
            delete_if_exists(&jobs, &j.name, &DeleteParams::background(), "Job").await?;
        }
        None => {}
    }
    let job: Job = serde_json::from_value(manifest(j, cx.run_id))
        .map_err(|e| StepError::Check(e.to_string()))?;
    jobs.create(&PostParams::default(), &job)
        .await
        .map_err(|e| kube_err(&format!("create Job {}", j.name), e))?;
    Ok(true)
}

/// Deletes the Job with its pods (`propagationPolicy: Background`: the API's default for a
/// Job orphans them) and its Secret; returns whether the Job existed.
///
/// # Errors
/// [`StepError`] from the Kubernetes API (404s are not errors).
pub async fn delete(cx: &StepContext<'_>, j: &CopyJob) -> Result<bool, StepError> {
    let client = cx.providers.kube().await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &j.namespace);
    let existed = delete_if_exists(&jobs, &j.name, &DeleteParams::background(), "Job").await?;
    let secrets: Api<Secret> = Api::namespaced(client, &j.namespace);
    delete_if_exists(&secrets, &j.name, &DeleteParams::default(), "Secret").await?;
    Ok(existed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eks(image: Option<&str>, sa: Option<&str>) -> EksSection {
        EksSection {
            cluster: "shop-staging".into(),
            image: image.map(String::from),
            service_account: sa.map(String::from),
        }
    }

    #[test]
    fn the_job_is_indexed_with_one_worker_per_index_and_its_urls_only_in_the_secret() {
        let e = eks(
            Some("111111111111.dkr.ecr.us-east-1.amazonaws.com/cutover:0.1.0"),
            Some("cutover-copy"),
        );
        let j = copy_job(&e, "cutover", "cutover_shop_ab12", 3, 6, 30, Some(20.0));
        assert_eq!(j.name, "copy-cutover-shop-ab12");
        let m = manifest(&j, "staging-20261206T091700Z-ab12");
        let spec = &m["spec"];
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(spec["completions"], 3);
        assert_eq!(spec["parallelism"], 3);
        assert_eq!(spec["backoffLimit"], 6);
        assert_eq!(
            spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"][0],
            2
        );
        let pod = &spec["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["serviceAccountName"], "cutover-copy");
        let c = &pod["containers"][0];
        assert_eq!(c["name"], CONTAINER);
        assert_eq!(
            c["image"],
            "111111111111.dkr.ecr.us-east-1.amazonaws.com/cutover:0.1.0"
        );
        assert_eq!(
            c["args"],
            json!(["copy-worker", "--lease", "30", "--rate-limit-mb", "20"])
        );
        assert_eq!(c["envFrom"][0]["secretRef"]["name"], j.name);
        // The manifest deserialises as the API's Job.
        let job: Job = serde_json::from_value(m.clone()).unwrap();
        assert_eq!(job.spec.unwrap().completions, Some(3));
        let text = m.to_string();
        assert!(!text.contains("postgres://"));
        let (line, keys) = describe(&j, "postgres://a:pw@s/db", "postgres://b:pw@t/db");
        assert!(line.contains("service account cutover-copy"), "{line}");
        assert!(!keys.contains("pw@") && keys.contains("sha256:"), "{keys}");
        // Without eks.image and eks.service_account: this version's image, the default account.
        let j = copy_job(&eks(None, None), "cutover", "s", 2, 6, 30, None);
        let m = manifest(&j, "run");
        assert!(m["spec"]["template"]["spec"]
            .get("serviceAccountName")
            .is_none());
        assert!(j.image.starts_with("cutover:"));
    }

    #[test]
    fn a_long_slot_name_gives_a_job_name_of_at_most_63_characters() {
        let n = name(&"x_".repeat(40));
        assert!(n.len() <= 63 && !n.ends_with('-'), "{n}");
    }

    #[test]
    fn the_state_reads_counts_and_the_terminal_condition() {
        let job = |status: Value| -> Job {
            serde_json::from_value(json!({"metadata": {"name": "copy-x"}, "status": status}))
                .unwrap()
        };
        let st = JobState::of(&job(json!({"active": 2, "ready": 1, "failed": 1})));
        assert_eq!(st.outcome, Outcome::Running);
        assert_eq!(st.pods(), "2 active (1 ready), 0 succeeded, 1 failed");
        let st = JobState::of(&job(json!({"succeeded": 2, "completedIndexes": "0-1",
            "conditions": [{"type": "SuccessCriteriaMet", "status": "True"}, {"type": "Complete", "status": "True"}]})));
        assert_eq!(st.outcome, Outcome::Complete);
        assert!(st.pods().contains("2 succeeded (indexes 0-1)"));
        // FailureTarget alone is not terminal: the controller adds Failed once pods are gone.
        let st = JobState::of(&job(
            json!({"conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}]}),
        ));
        assert_eq!(st.outcome, Outcome::Running);
        let st = JobState::of(&job(json!({"failed": 7, "conditions": [
            {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
            {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]})));
        assert_eq!(
            st.outcome,
            Outcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into()
            }
        );
    }
}
