//! The backup Secret a step keeps before it changes a Secret: `<secret>-backup-<run id>` in the
//! same namespace, labelled as cutover's and annotated with what it backs up and for which run,
//! created once (a resumed step finds it and leaves it as it is). Used by `k8s.flip_secret` and
//! `pgbouncer.repoint`.
//!
//! Owns the backup's name, its creation and reading a Secret that may be absent; must not decide
//! what a kind changes or restores.

use super::StepError;
use crate::providers::kube::{is_conflict, is_not_found, kube_err};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use std::collections::BTreeMap;

/// `<secret>-backup-<run id>`, cut to Kubernetes' 253 characters.
pub(super) fn backup_name(secret: &str, run_id: &str) -> String {
    let mut n = format!("{secret}-backup-{run_id}");
    n.truncate(253);
    n
}

/// Secret `name`, or `None` when there is none.
///
/// # Errors
/// [`StepError::Provider`] for any other API error.
pub(super) async fn get_secret(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, StepError> {
    match api.get(name).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(kube_err(&format!("get secret {name}"), e).into()),
    }
}

/// Creates backup Secret `backup` of Secret `of` (named `secret`) for run `run_id`, holding
/// `data` (the Secret's own data, and whatever else the kind keeps there) and the extra
/// `annotations`; an existing backup (409 AlreadyExists) is left as it is.
///
/// # Errors
/// [`StepError::Provider`] when the API refuses otherwise.
pub(super) async fn create(
    api: &Api<Secret>,
    of: &Secret,
    secret: &str,
    backup: &str,
    run_id: &str,
    data: BTreeMap<String, ByteString>,
    annotations: BTreeMap<String, String>,
) -> Result<(), StepError> {
    let mut copy = Secret {
        data: Some(data),
        type_: of.type_.clone(),
        ..Default::default()
    };
    copy.metadata.name = Some(backup.to_string());
    copy.metadata.labels = Some(
        [(
            "app.kubernetes.io/managed-by".to_string(),
            "cutover".to_string(),
        )]
        .into(),
    );
    let mut all: BTreeMap<String, String> = [
        ("cutover.dev/backup-of".to_string(), secret.to_string()),
        ("cutover.dev/run-id".to_string(), run_id.to_string()),
    ]
    .into();
    all.extend(annotations);
    copy.metadata.annotations = Some(all);
    match api.create(&PostParams::default(), &copy).await {
        Ok(_) => Ok(()),
        Err(e) if is_conflict(&e) => Ok(()),
        Err(e) => Err(kube_err(&format!("create backup secret {backup}"), e).into()),
    }
}
