//! Restarting Deployments and waiting for their rollouts, as `kubectl rollout restart` and
//! `kubectl rollout status` do, for the kinds that change what pods read at start
//! (`k8s.flip_secret`). Each restart is marked with `cutover.dev/restarted-for` on the pod
//! template, so a resumed run never restarts a Deployment twice for the same step.
//!
//! Owns the API calls and the wait; must not decide which Deployments to restart or when.

use super::{StepContext, StepError};
use crate::providers::kube::{kube_err, Rollout};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::time::Duration;

/// The pod-template annotation naming the run and step a restart was for.
const RESTART_MARK: &str = "cutover.dev/restarted-for";

/// Restarts a Deployment unless its pod template already carries `mark`.
pub(super) async fn restart(
    api: &Api<Deployment>,
    name: &str,
    mark: &str,
) -> Result<bool, StepError> {
    let d = api
        .get(name)
        .await
        .map_err(|e| kube_err(&format!("get deployment {name}"), e))?;
    let current = d
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTART_MARK));
    if current.map(String::as_str) == Some(mark) {
        return Ok(false);
    }
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": now, RESTART_MARK: mark}}}}});
    api.patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .map_err(|e| kube_err(&format!("restart deployment {name}"), e))?;
    Ok(true)
}

/// The `metadata.generation` of Deployment `name`.
pub(super) async fn generation(api: &Api<Deployment>, name: &str) -> Result<i64, StepError> {
    Ok(api
        .get(name)
        .await
        .map_err(|e| kube_err(&format!("get deployment {name}"), e))?
        .metadata
        .generation
        .unwrap_or(0))
}

/// Waits until every Deployment has rolled out, with `kubectl rollout status`'s conditions.
pub(super) async fn wait_rollouts(
    cx: &StepContext<'_>,
    api: &Api<Deployment>,
    names: &[String],
) -> Result<Vec<String>, StepError> {
    let mut evidence = Vec::new();
    for name in names {
        // Polled every 200 ms (the completion is seen promptly); shown when it changes.
        let mut shown = None;
        loop {
            let d = api
                .get(name)
                .await
                .map_err(|e| kube_err(&format!("get deployment {name}"), e))?;
            let state = crate::providers::kube::rollout(&d);
            match state {
                Rollout::DeadlineExceeded => {
                    return Err(StepError::Check(format!("deployment {name} {state}")))
                }
                Rollout::Complete { .. } => {
                    evidence.push(format!("deployment/{name} {state}"));
                    break;
                }
                _ => {}
            }
            if shown.as_ref() != Some(&state) {
                (cx.progress)(&format!(
                    "deployment/{name}: {state}; waiting up to {}s",
                    cx.remaining().as_secs()
                ));
                shown = Some(state.clone());
            }
            cx.wait(
                Duration::from_millis(200),
                &format!("deployment {name} rollout: {state}"),
            )
            .await?;
        }
    }
    Ok(evidence)
}
