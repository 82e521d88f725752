//! The emulator's Job controller (`batch/v1` Jobs), as the Kubernetes documentation ("Jobs")
//! describes it, for what `cutover` applies: `completionMode: Indexed` or `NonIndexed`,
//! `completions`, `parallelism`, `backoffLimit` and a `podFailurePolicy` of `FailJob` rules on
//! exit codes, with `restartPolicy: Never` pods.
//!
//! - An Indexed Job keeps one pod per index not yet succeeded, at most `parallelism` at once;
//!   each pod's environment has `JOB_COMPLETION_INDEX` (as the controller sets it). A pod of the
//!   `cutover` image runs as a local process ([`crate::kubelet`]), which reports its exit code
//!   back ([`Store::pod_exited`]); any other image's pod is simulated and succeeds once ready.
//! - A failed pod counts in `status.failed` and is replaced after a back-off that doubles from
//!   the sandbox's pod start delay (10 s on a real cluster, capped at 6 min; here short, as the
//!   kubelet's); the Job fails (`BackoffLimitExceeded`) when `failed` exceeds `backoffLimit`,
//!   or at once (`PodFailurePolicy`) when an exit code matches a `FailJob` rule. A failing Job's
//!   remaining pods are killed.
//! - `status`: `startTime`, `active`, `ready`, `succeeded`, `failed`, `terminating`,
//!   `completedIndexes` (compressed, `0-2,4`), `completionTime`, and the conditions a v1.31
//!   controller writes: `SuccessCriteriaMet` then `Complete` (reason `CompletionsReached`), or
//!   `FailureTarget` then `Failed`, both added once the pods are gone.
//! - Deleting a Job with `propagationPolicy: Background` or `Foreground` deletes its pods; without
//!   one, the API's default for a Job is `Orphan`: the pods run on, unowned, until they exit.
//!
//! Sandbox only: not part of the `cutover` binary.

use super::{cutover_container, int_at, Key, LocalPod, Store};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::time::Instant;

/// One pod of a Job.
#[derive(Debug, Clone)]
pub(super) struct JobPod {
    id: u64,
    /// Its completion index (0 for a NonIndexed Job's pods).
    index: i64,
    env: BTreeMap<String, String>,
    /// The `cutover` container's arguments; `None`: simulated.
    run: Option<Vec<String>>,
    ready_at: Instant,
    /// Its exit code once it terminated.
    exit: Option<i32>,
}

/// What the controller keeps of one Job.
#[derive(Debug, Clone)]
pub(super) struct JobRun {
    uid: String,
    pods: Vec<JobPod>,
    succeeded: BTreeSet<i64>,
    /// Succeeded pods (NonIndexed Jobs count pods, not indexes).
    succeeded_pods: i64,
    failed: i64,
    start_time: String,
    next_create: Instant,
    terminal: Option<Terminal>,
}

#[derive(Debug, Clone, PartialEq)]
enum Terminal {
    Complete { at: String },
    Failed { reason: String, message: String },
}

/// A pod whose Job was deleted without cascading (`Orphan`): it runs until it exits.
#[derive(Debug, Clone)]
pub(super) struct Orphan {
    namespace: String,
    job: String,
    pod: JobPod,
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// `0-2,4`: sorted indexes with runs compressed, as `status.completedIndexes` shows them.
pub fn compress(indexes: &BTreeSet<i64>) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut run: Option<(i64, i64)> = None;
    for &i in indexes {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                out.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        out.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    out.join(",")
}

/// Validates a Job being created and sets the API server's defaults (`backoffLimit` 6,
/// `completionMode` NonIndexed, `parallelism` 1, `completions` 1 for NonIndexed).
///
/// # Errors
/// The message of a 422 Invalid, as the API server words it.
pub(super) fn admit(obj: &mut Value) -> Result<(), String> {
    let restart = obj
        .pointer("/spec/template/spec/restartPolicy")
        .and_then(Value::as_str)
        .unwrap_or("Always");
    if restart != "Never" && restart != "OnFailure" {
        return Err(format!(
            "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\" (got \"{restart}\")"
        ));
    }
    if obj.pointer("/spec/podFailurePolicy").is_some() && restart != "Never" {
        return Err("spec.podFailurePolicy: Invalid value: only allowed when spec.template.spec.restartPolicy is Never".into());
    }
    let spec = &mut obj["spec"];
    let indexed = spec["completionMode"] == "Indexed";
    if indexed && spec.get("completions").and_then(Value::as_i64).is_none() {
        return Err("spec.completions: Required value: when completion mode is Indexed".into());
    }
    for (field, default) in [
        ("backoffLimit", json!(6)),
        ("completionMode", json!("NonIndexed")),
        ("parallelism", json!(1)),
        ("completions", json!(1)),
        ("suspend", json!(false)),
    ] {
        if spec.get(field).is_none() {
            spec[field] = default;
        }
    }
    Ok(())
}

impl Store {
    /// Records that pod `id` (a Job's, run by the kubelet) exited with `code`; an orphan is
    /// forgotten.
    pub fn pod_exited(&mut self, id: u64, code: i32) {
        // The Job controller wakes on it as on a write (a pod's status update, on a cluster).
        self.changes.send_replace(self.next_rv);
        for run in self.jobs.values_mut() {
            if let Some(p) = run.pods.iter_mut().find(|p| p.id == id) {
                p.exit = Some(code);
                return;
            }
        }
        self.orphans.retain(|o| o.pod.id != id);
    }

    /// The Job pods the sandbox runs as local processes (never restarted: a Job's pods are
    /// `restartPolicy: Never`), orphans included.
    pub(super) fn job_local_pods(&self) -> Vec<LocalPod> {
        let owned = self.jobs.iter().flat_map(|((_, ns, name), run)| {
            run.pods
                .iter()
                .map(move |p| (ns.as_str(), name.as_str(), p))
        });
        let orphans = self
            .orphans
            .iter()
            .map(|o| (o.namespace.as_str(), o.job.as_str(), &o.pod));
        owned
            .chain(orphans)
            .filter(|(_, _, p)| p.exit.is_none())
            .filter_map(|(ns, name, p)| {
                Some(LocalPod {
                    id: p.id,
                    namespace: ns.to_string(),
                    owner: format!("{name}-{}", p.index),
                    args: p.run.clone()?,
                    env: p.env.clone(),
                    restart: false,
                })
            })
            .collect()
    }

    /// When each Job's pods become ready and when its back-off ends ([`Store::next_deadline`]).
    pub(super) fn job_deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.jobs.values().flat_map(|run| {
            run.pods
                .iter()
                .map(|p| p.ready_at)
                .chain(std::iter::once(run.next_create))
        })
    }

    /// A Job was deleted: its pods go with it (`cascade`) or run on as orphans.
    pub(super) fn job_deleted(&mut self, key: &Key, cascade: bool) {
        if let Some(run) = self.jobs.remove(key) {
            if !cascade {
                self.orphans.extend(
                    run.pods
                        .into_iter()
                        .filter(|p| p.exit.is_none())
                        .map(|pod| Orphan {
                            namespace: key.1.clone(),
                            job: key.2.clone(),
                            pod,
                        }),
                );
            }
        }
    }
}

/// Whether exit code `code` of a pod matches one of the Job's `FailJob` rules.
fn fails_job(job: &Value, code: i32) -> bool {
    let rules = job
        .pointer("/spec/podFailurePolicy/rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    rules.iter().any(|r| {
        let values: Vec<i64> = r
            .pointer("/onExitCodes/values")
            .and_then(Value::as_array)
            .map(|v| v.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let hit = values.contains(&(code as i64));
        r["action"] == "FailJob"
            && match r.pointer("/onExitCodes/operator").and_then(Value::as_str) {
                Some("In") => hit,
                Some("NotIn") => !hit,
                _ => false,
            }
    })
}

/// One tick of the Job controller over every Job of the store.
pub fn reconcile_jobs(s: &mut Store) {
    let now = Instant::now();
    let keys = s.keys_of("jobs");
    s.jobs.retain(|k, _| keys.contains(k));
    // A simulated orphan has no process to outlive its Job: it ends at once; the kubelet
    // reports the exits of the others.
    s.orphans.retain(|o| o.pod.run.is_some());
    for k in keys {
        let Some(job) = s.objects.get(&k).cloned() else {
            continue;
        };
        let uid = job
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if s.jobs.get(&k).is_none_or(|r| r.uid != uid) {
            s.jobs.insert(
                k.clone(),
                JobRun {
                    uid,
                    pods: Vec::new(),
                    succeeded: BTreeSet::new(),
                    succeeded_pods: 0,
                    failed: 0,
                    start_time: now_rfc3339(),
                    next_create: now,
                    terminal: None,
                },
            );
        }
        let indexed = job["spec"]["completionMode"] == "Indexed";
        let completions = int_at(&job, "/spec/completions", 1);
        let parallelism = int_at(&job, "/spec/parallelism", 1);
        let backoff_limit = int_at(&job, "/spec/backoffLimit", 6);
        let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
        let delay = s.pod_ready;
        let mut run = s.jobs.remove(&k).expect("inserted above");
        // Pods that ended: simulated ones once ready, local ones as the kubelet reported.
        for p in run.pods.iter_mut() {
            if p.run.is_none() && p.exit.is_none() && p.ready_at <= now {
                p.exit = Some(0);
            }
        }
        let (ended, running): (Vec<JobPod>, Vec<JobPod>) =
            run.pods.drain(..).partition(|p| p.exit.is_some());
        run.pods = running;
        for p in ended {
            let code = p.exit.unwrap_or(0);
            if code == 0 {
                run.succeeded.insert(p.index);
                run.succeeded_pods += 1;
            } else {
                run.failed += 1;
                let backoff = delay
                    .saturating_mul(1 << (run.failed - 1).min(4))
                    .min(Duration::from_secs(10));
                run.next_create = now + backoff;
                if run.terminal.is_none() && fails_job(&job, code) {
                    run.terminal = Some(Terminal::Failed {
                        reason: "PodFailurePolicy".into(),
                        message: format!(
                            "Container {} for pod {}/{}-{} failed with exit code {code} matching FailJob rule at index 0",
                            template.pointer("/spec/containers/0/name").and_then(Value::as_str).unwrap_or("main"),
                            k.1, k.2, p.index
                        ),
                    });
                }
            }
        }
        let done = if indexed {
            run.succeeded.len() as i64
        } else {
            run.succeeded_pods
        };
        if run.terminal.is_none() && run.failed > backoff_limit {
            run.terminal = Some(Terminal::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into(),
            });
        }
        if run.terminal.is_none() && done >= completions {
            run.terminal = Some(Terminal::Complete { at: now_rfc3339() });
        }
        match run.terminal {
            // A failed Job's pods are killed; a complete one has none left.
            Some(_) => run.pods.clear(),
            None if now >= run.next_create => {
                let env = s.resolve_env(&k.1, &template);
                let cmd = cutover_container(&template);
                let wanted: Vec<i64> = if indexed {
                    (0..completions)
                        .filter(|i| !run.succeeded.contains(i))
                        .filter(|i| !run.pods.iter().any(|p| p.index == *i))
                        .collect()
                } else {
                    let left = completions - done - run.pods.len() as i64;
                    vec![0; left.max(0) as usize]
                };
                for index in wanted {
                    if run.pods.len() as i64 >= parallelism {
                        break;
                    }
                    let mut env = env.clone();
                    if indexed {
                        env.insert("JOB_COMPLETION_INDEX".into(), index.to_string());
                    }
                    s.uid_counter += 1;
                    run.pods.push(JobPod {
                        id: s.uid_counter,
                        index,
                        env,
                        run: cmd.clone(),
                        ready_at: now + delay,
                        exit: None,
                    });
                }
            }
            None => {}
        }
        let ready = run.pods.iter().filter(|p| p.ready_at <= now).count();
        let condition = |kind: &str, reason: &str, message: &str| json!({"type": kind, "status": "True", "reason": reason, "message": message});
        let mut status = json!({
            "startTime": run.start_time,
            "active": run.pods.len(),
            "ready": ready,
            "succeeded": run.succeeded_pods,
            "failed": run.failed,
            "terminating": 0,
            "uncountedTerminatedPods": {},
        });
        if indexed {
            status["completedIndexes"] = json!(compress(&run.succeeded));
        }
        match &run.terminal {
            Some(Terminal::Complete { at }) => {
                status["completionTime"] = json!(at);
                status["conditions"] = json!([
                    condition(
                        "SuccessCriteriaMet",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods"
                    ),
                    condition(
                        "Complete",
                        "CompletionsReached",
                        "Reached expected number of succeeded pods"
                    ),
                ]);
            }
            Some(Terminal::Failed { reason, message }) => {
                status["conditions"] = json!([
                    condition("FailureTarget", reason, message),
                    condition("Failed", reason, message),
                ]);
            }
            None => {}
        }
        s.jobs.insert(k.clone(), run);
        if job.get("status") == Some(&status) {
            continue;
        }
        let mut job = job;
        job["status"] = status;
        job["metadata"]["resourceVersion"] = json!(s.bump());
        s.objects.insert(k, job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(job: Value) -> Store {
        let mut s = Store {
            pod_ready: Duration::from_millis(20),
            ..Store::default()
        };
        s.seed("namespaces", "", json!({"metadata": {"name": "cutover"}}));
        let mut job = job;
        admit(&mut job).unwrap();
        s.seed("jobs", "cutover", job);
        s
    }

    fn worker_job(completions: i64, backoff_limit: i64) -> Value {
        json!({"metadata": {"name": "copy-x"}, "spec": {
            "completionMode": "Indexed", "completions": completions, "parallelism": completions,
            "backoffLimit": backoff_limit,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"containerName": "copy-worker", "operator": "In", "values": [2]}}]},
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "copy-worker", "image": "cutover:0.1.0", "args": ["copy-worker"]}]}}}})
    }

    fn status(s: &Store) -> Value {
        s.get("jobs", "cutover", "copy-x").unwrap()["status"].clone()
    }

    fn condition_types(st: &Value) -> Vec<String> {
        st["conditions"]
            .as_array()
            .map(|c| {
                c.iter()
                    .map(|c| c["type"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (with a deadline) until the controller has created the Job's pods again.
    fn pods_when_created(s: &mut Store, n: usize) -> Vec<LocalPod> {
        let started = std::time::Instant::now();
        loop {
            reconcile_jobs(s);
            let pods = s.job_local_pods();
            if pods.len() == n {
                return pods;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{} pod(s), not {n}",
                pods.len()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn an_indexed_job_runs_one_pod_per_index_replaces_a_failed_one_and_completes() {
        let mut s = store_with(worker_job(2, 6));
        let pods = pods_when_created(&mut s, 2);
        let mut indexes: Vec<&str> = pods
            .iter()
            .map(|p| p.env["JOB_COMPLETION_INDEX"].as_str())
            .collect();
        indexes.sort();
        assert_eq!(indexes, ["0", "1"]);
        assert!(pods.iter().all(|p| !p.restart && p.args == ["copy-worker"]));
        assert_eq!(status(&s)["active"], 2);
        // Index 0 fails (killed): it is replaced; index 1 succeeds.
        let by_index = |pods: &[LocalPod], i: &str| {
            pods.iter()
                .find(|p| p.env["JOB_COMPLETION_INDEX"] == i)
                .unwrap()
                .id
        };
        s.pod_exited(by_index(&pods, "0"), 137);
        s.pod_exited(by_index(&pods, "1"), 0);
        reconcile_jobs(&mut s);
        let st = status(&s);
        assert_eq!(
            (st["failed"].as_i64(), st["succeeded"].as_i64()),
            (Some(1), Some(1))
        );
        assert_eq!(st["completedIndexes"], "1");
        assert!(condition_types(&st).is_empty(), "{st}");
        let again = pods_when_created(&mut s, 1);
        assert_eq!(again[0].env["JOB_COMPLETION_INDEX"], "0");
        assert_ne!(again[0].id, by_index(&pods, "0"));
        s.pod_exited(again[0].id, 0);
        reconcile_jobs(&mut s);
        let st = status(&s);
        assert_eq!(st["completedIndexes"], "0-1");
        assert_eq!(st["succeeded"], 2);
        assert_eq!(st["active"], 0);
        assert_eq!(condition_types(&st), ["SuccessCriteriaMet", "Complete"]);
        assert!(st["completionTime"].is_string());
        assert!(s.job_local_pods().is_empty());
    }

    #[test]
    fn failures_past_the_backoff_limit_or_a_fail_job_exit_code_fail_the_job_and_kill_its_pods() {
        let mut s = store_with(worker_job(2, 1));
        let pods = pods_when_created(&mut s, 2);
        s.pod_exited(pods[0].id, 1);
        reconcile_jobs(&mut s);
        let again = pods_when_created(&mut s, 2);
        let replaced = again.iter().find(|p| p.id != pods[1].id).unwrap();
        s.pod_exited(replaced.id, 1);
        reconcile_jobs(&mut s);
        let st = status(&s);
        assert_eq!(st["failed"], 2);
        assert_eq!(condition_types(&st), ["FailureTarget", "Failed"]);
        assert_eq!(st["conditions"][1]["reason"], "BackoffLimitExceeded");
        assert!(
            s.job_local_pods().is_empty(),
            "the other index's pod is killed"
        );

        let mut s = store_with(worker_job(2, 6));
        let pods = pods_when_created(&mut s, 2);
        s.pod_exited(pods[0].id, 2);
        reconcile_jobs(&mut s);
        let st = status(&s);
        assert_eq!(st["conditions"][1]["reason"], "PodFailurePolicy", "{st}");
        assert!(s.job_local_pods().is_empty());
    }

    #[test]
    fn deleting_a_job_orphans_its_pods_unless_propagation_cascades() {
        let mut s = store_with(worker_job(2, 6));
        pods_when_created(&mut s, 2);
        let k: Key = ("jobs".into(), "cutover".into(), "copy-x".into());
        s.objects.remove(&k);
        s.job_deleted(&k, false);
        reconcile_jobs(&mut s);
        let orphans = s.job_local_pods();
        assert_eq!(
            orphans.len(),
            2,
            "the API's default for a Job orphans its pods"
        );
        s.pod_exited(orphans[0].id, 0);
        assert_eq!(s.job_local_pods().len(), 1);

        let mut s = store_with(worker_job(2, 6));
        pods_when_created(&mut s, 2);
        s.objects.remove(&k);
        s.job_deleted(&k, true);
        reconcile_jobs(&mut s);
        assert!(s.job_local_pods().is_empty());
    }

    #[test]
    fn a_job_whose_pods_may_restart_is_refused_and_defaults_are_set() {
        let mut j = json!({"spec": {"template": {"spec": {"containers": []}}}});
        let e = admit(&mut j).unwrap_err();
        assert!(e.contains("restartPolicy"), "{e}");
        let mut j = json!({"spec": {"completionMode": "Indexed", "template": {"spec": {"restartPolicy": "Never"}}}});
        assert!(admit(&mut j).unwrap_err().contains("spec.completions"));
        let mut j = json!({"spec": {"template": {"spec": {"restartPolicy": "Never"}}}});
        admit(&mut j).unwrap();
        assert_eq!(j["spec"]["backoffLimit"], 6);
        assert_eq!(j["spec"]["completionMode"], "NonIndexed");
    }

    #[test]
    fn completed_indexes_are_compressed_as_the_api_shows_them() {
        let set = |v: &[i64]| v.iter().copied().collect::<BTreeSet<i64>>();
        assert_eq!(compress(&set(&[0, 1, 2, 4, 6, 7])), "0-2,4,6-7");
        assert_eq!(compress(&set(&[])), "");
    }
}
