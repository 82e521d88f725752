//! The sandbox's kubelet for `cutover` containers: a pod of a Deployment or a Job whose
//! container runs the `cutover` image (a relay, a WAL guard, a copy worker) runs here as a
//! local process of the `cutover` binary built beside this one, with the container's arguments
//! and only the environment the pod spec gives it (`env`, `envFrom` Secrets, read when the pod
//! was created; a Job's `JOB_COMPLETION_INDEX`). A Deployment's process that exits is started
//! again after a back-off that doubles from 1 s to 10 s (`restartPolicy: Always`, a
//! CrashLoopBackOff capped short for the sandbox); a Job's is not (`Never`): its exit code goes
//! to the Job controller. A pod a controller removes (scale down, Deployment or Job deleted, a
//! failed Job) has its process killed.
//!
//! Each process writes to `<dir>/pods/<env>/<namespace>.<owner>.log` and its pid to
//! `<namespace>.<owner>.pid` there (the owner is the Deployment, or `<job>-<index>`), where
//! tests find it (to kill it, to read what it said).
//! Processes are in the serve process's group and die with it (`PR_SET_PDEATHSIG`).
//!
//! Sandbox only: not part of the `cutover` binary. The application's pods stay simulated by the
//! deployment controller ([`crate::kube::reconcile`]).

use crate::kube::{Cluster, LocalPod};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;

struct Running {
    child: Option<tokio::process::Child>,
    restarts: u32,
    next_start: Instant,
    /// A pod that is never restarted has exited (its controller drops it next).
    ended: bool,
}

/// The `cutover` binary pods run: `$CUTOVER_SANDBOX_CUTOVER_BIN`, else `cutover` beside this
/// executable (both are built into the same target directory).
pub fn cutover_bin() -> PathBuf {
    std::env::var("CUTOVER_SANDBOX_CUTOVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("cutover")))
                .unwrap_or_else(|| PathBuf::from("cutover"))
        })
}

/// Where environment `env`'s pod logs and pid files are.
pub fn pods_dir(dir: &Path, env: &str) -> PathBuf {
    dir.join("pods").join(env)
}

fn start(pod: &LocalPod, dir: &Path) -> Option<tokio::process::Child> {
    let base = format!("{}.{}", pod.namespace, pod.owner);
    let _ = std::fs::create_dir_all(dir);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{base}.log")))
        .ok()?;
    let err = log.try_clone().ok()?;
    let mut cmd = tokio::process::Command::new(cutover_bin());
    cmd.args(&pod.args)
        .env_clear()
        .envs(&pod.env)
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(err)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the child when its
    // parent (the serve process) dies, so a killed sandbox leaves no relay behind.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().ok()?;
    if let Some(pid) = child.id() {
        let _ = std::fs::write(dir.join(format!("{base}.pid")), pid.to_string());
    }
    Some(child)
}

/// Runs the `cutover` pods of `cluster` (environment `env`) as processes, forever; one look
/// every 200 ms.
pub async fn run(cluster: Cluster, env: &'static str, dir: PathBuf) {
    let dir = pods_dir(&dir, env);
    let mut running: BTreeMap<u64, Running> = BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let want = {
            let s = cluster.lock().unwrap_or_else(|p| p.into_inner());
            s.local_pods()
        };
        let ids: Vec<u64> = want.iter().map(|p| p.id).collect();
        running.retain(|id, r| {
            let keep = ids.contains(id);
            if !keep {
                if let Some(c) = r.child.as_mut() {
                    let _ = c.start_kill();
                }
            }
            keep
        });
        let now = Instant::now();
        for pod in &want {
            let r = running.entry(pod.id).or_insert(Running {
                child: None,
                restarts: 0,
                next_start: now,
                ended: false,
            });
            if r.ended {
                continue;
            }
            let exit = match r.child.as_mut() {
                None => None,
                Some(c) => match c.try_wait() {
                    Ok(None) => continue,
                    // Killed by a signal: 128 + its number, as a container runtime reports it.
                    Ok(Some(st)) => Some(st.code().unwrap_or_else(|| {
                        use std::os::unix::process::ExitStatusExt;
                        128 + st.signal().unwrap_or(9)
                    })),
                    Err(_) => Some(-1),
                },
            };
            if let (Some(code), false) = (exit, pod.restart) {
                // restartPolicy: Never: the Job controller learns the exit code; no restart.
                r.child = None;
                r.ended = true;
                let mut s = cluster.lock().unwrap_or_else(|p| p.into_inner());
                s.pod_exited(pod.id, code);
                continue;
            }
            if r.child.take().is_some() {
                // Back off before the next start, as the kubelet does.
                r.restarts += 1;
                let wait = Duration::from_secs(1 << r.restarts.min(4)).min(Duration::from_secs(10));
                r.next_start = now + wait;
            }
            if now >= r.next_start {
                r.child = start(pod, &dir);
            }
        }
    }
}
