//! `pgbouncer.repoint`: the flip of a pooler window. The application's database entry in
//! PgBouncer's `[databases]` configuration moves to the target (`upstream`, the application's
//! URL on RDS), every instance re-reads its configuration (`RELOAD`) until `SHOW DATABASES`
//! shows the new upstream, and the entry resumes: the writes that waited since
//! `pgbouncer.pause` go to the target. No pod restarts.
//!
//! How the configuration reaches the instances (docs/DESIGN.md, "The pooler path"): the
//! `[databases]` section is its own file, `%include`d by `pgbouncer.ini`, whose content is the
//! key `key` of the Kubernetes Secret `namespace/secret`; a sidecar in each PgBouncer pod
//! watches that Secret through the Kubernetes API and writes the file when it changes (as
//! kiwigrid's k8s-sidecar does for Grafana), in well under a second, not after the kubelet's
//! volume sync (up to a minute and more). The step never trusts the delivery: it repeats
//! `RELOAD` and reads `SHOW DATABASES` until every instance shows the new host, port, database
//! and user, within `within` (default 5 s), and only then resumes.
//!
//! The Secret's previous content is kept in a backup Secret `<secret>-backup-<run id>`.
//! Rollback pauses the entry again (writes wait), puts the previous entry back, reloads until
//! every instance shows it, and leaves the entry paused: `pgbouncer.pause`'s rollback resumes
//! it once the steps between them are undone (the fallback caught up, sequences back, the
//! legacy database writable again).

use super::pgbouncer_pause::{consoles, pause_all, resume_all};
use super::secret_backup::{self, backup_name, get_secret};
use super::{
    Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError, WindowRole,
};
use crate::providers::kube::{is_conflict, kube_err};
use crate::providers::pgbouncer::{valid_name, Console, DatabasesFile, Upstream};
use async_trait::async_trait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `pgbouncer.repoint` kind.
pub struct PgbouncerRepoint;

/// `with:` of `pgbouncer.repoint`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Admin console URL of every PgBouncer instance in front of the application, as for `pgbouncer.pause`.
    admin: Vec<String>,
    /// The `[databases]` entry the application connects to.
    database: String,
    /// The new upstream: the application's database URL on the target (a secret).
    upstream: String,
    /// Namespace of the Secret holding the pooler's `[databases]` file.
    namespace: String,
    /// The Secret holding the pooler's `[databases]` file (what its pods' sidecar writes to disk).
    secret: String,
    /// The Secret's key holding the file (default databases.ini).
    #[serde(default = "default_key")]
    key: String,
    /// How long every instance may take to show the new upstream after the Secret changed (default 5s).
    #[serde(default = "default_within", with = "super::duration_text")]
    #[schemars(with = "String")]
    within: Duration,
}

fn default_key() -> String {
    "databases.ini".into()
}

fn default_within() -> Duration {
    Duration::from_secs(5)
}

/// Rollback material: the entry before the run, as a fingerprint (its value is in the backup
/// Secret).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// `user@host:port/dbname` of the entry before the run.
    #[serde(default)]
    upstream: Option<String>,
    /// Fingerprint of the whole entry (password included).
    #[serde(default)]
    fingerprint: Option<String>,
}

/// What `pgbouncer.repoint` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The backup Secret holding the file before the run.
    backup: String,
    /// `user@host:port/dbname` of the new upstream.
    upstream: String,
    /// Fingerprint of the new entry (password included).
    upstream_fingerprint: String,
    /// The instances that show it and were resumed.
    instances: Vec<String>,
    /// Milliseconds from the Secret's change until every instance showed the new upstream.
    reload_ms: u64,
    /// When the entry was resumed on the last instance (RFC 3339, milliseconds).
    resumed_at: String,
}

/// The file held under `key` of Secret `s`.
fn file_of(s: &Secret, key: &str, what: &str) -> Result<DatabasesFile, StepError> {
    let text = s
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .ok_or_else(|| StepError::Check(format!("{what} has no key {key}")))?;
    DatabasesFile::parse(&text).map_err(|e| StepError::Check(format!("{what} key {key}: {e}")))
}

fn upstream(p: &Params) -> Result<Upstream, StepError> {
    Upstream::from_url(&p.upstream).map_err(|e| StepError::Params(format!("upstream: {e}")))
}

/// The pooler's `[databases]` Secret: its API, `secret NS/NAME` for messages, and the object.
///
/// # Errors
/// The Secret does not exist, or the API fails.
async fn pooler_secret(
    cx: &StepContext<'_>,
    p: &Params,
) -> Result<(Api<Secret>, String, Secret), StepError> {
    let client = cx.providers.kube().await?;
    let secrets: Api<Secret> = Api::namespaced(client, &p.namespace);
    let what = format!("secret {}/{}", p.namespace, p.secret);
    let s = get_secret(&secrets, &p.secret)
        .await?
        .ok_or_else(|| StepError::Check(format!("{what} does not exist")))?;
    Ok((secrets, what, s))
}

/// Sets entry `db` of the file in Secret `name` to `to` (re-read and retried on 409 Conflict).
async fn write_entry(
    api: &Api<Secret>,
    name: &str,
    key: &str,
    db: &str,
    to: &Upstream,
) -> Result<(), StepError> {
    for _ in 0..5 {
        let Some(mut s) = get_secret(api, name).await? else {
            return Err(StepError::Check(format!("secret {name} does not exist")));
        };
        let mut file = file_of(&s, key, &format!("secret {name}"))?;
        if file.get(db) == Some(to) {
            return Ok(());
        }
        file.set(db, to.clone());
        s.data
            .get_or_insert_with(BTreeMap::new)
            .insert(key.to_string(), ByteString(file.render().into_bytes()));
        match api.replace(name, &PostParams::default(), &s).await {
            Ok(_) => return Ok(()),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(kube_err(&format!("replace secret {name}"), e).into()),
        }
    }
    Err(StepError::Check(format!(
        "secret {name} kept changing (409 Conflict five times)"
    )))
}

/// Repeats RELOAD on every console until each shows `to` for `db`, within `within`; returns
/// the milliseconds it took.
async fn reload_until_shown(
    consoles: &[Console],
    db: &str,
    to: &Upstream,
    within: Duration,
) -> Result<u64, StepError> {
    let started = std::time::Instant::now();
    let mut pending: Vec<&Console> = consoles.iter().collect();
    loop {
        let mut still = Vec::new();
        for c in pending {
            c.reload().await?;
            if !to.shown_by(&c.database(db).await?) {
                still.push(c);
            }
        }
        if still.is_empty() {
            return Ok(started.elapsed().as_millis() as u64);
        }
        if started.elapsed() >= within {
            return Err(StepError::Timeout(format!(
                "PgBouncer {} to show {db} at {} after RELOAD (within {:.1} s): is the sidecar that writes the [databases] file from its Secret running?",
                still.iter().map(|c| c.address.as_str()).collect::<Vec<_>>().join(", "),
                to.describe(),
                within.as_secs_f64()
            )));
        }
        pending = still;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[async_trait]
impl Kind for PgbouncerRepoint {
    type Params = Params;
    type Outputs = Outputs;
    type Before = Before;
    type Predicted = ();
    const NAME: &'static str = "pgbouncer.repoint";
    const PURPOSE: &'static str = "Move the application's database entry in PgBouncer to the target (its [databases] Secret, RELOAD until every instance shows it) and RESUME: the writes that waited go to the target; no pod restarts";
    const UNDO: &'static str = "PAUSE the entry again, put the previous upstream back (from the backup Secret) and RELOAD until every instance shows it; pgbouncer.pause's rollback resumes";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    fn window_role(&self, _params: Option<&Literal<Params>>) -> WindowRole {
        WindowRole::Flip { pooler: true }
    }

    fn check(&self, params: &Literal<Params>) -> Vec<String> {
        let mut problems = Vec::new();
        if params.known("database") && !valid_name(&params.params.database) {
            problems.push(format!(
                "database `{}`: PgBouncer's console takes letters, digits and _ only",
                params.params.database
            ));
        }
        if params.known("upstream") {
            if let Err(e) = Upstream::from_url(&params.params.upstream) {
                problems.push(format!("upstream: {e}"));
            }
        }
        problems
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<Before, ()>, StepError> {
        let to = upstream(p)?;
        let consoles = consoles(&p.admin).await?;
        let (_, what, s) = pooler_secret(cx, p).await?;
        if let Some(why) =
            super::secret_owner::refusal(&super::secret_owner::owner_of(&s.metadata), &what)
        {
            return Err(StepError::Gate(why));
        }
        let file = file_of(&s, &p.key, &what)?;
        let current = file.get(&p.database).cloned();
        let mut changes = Vec::new();
        let entry = format!("{what} key {} entry {}", p.key, p.database);
        match &current {
            Some(c) if *c == to => changes.push(Change::new(
                Action::None,
                &entry,
                format!("already {}", to.describe()),
            )),
            Some(c) => changes.push(Change::new(
                Action::Update,
                &entry,
                format!(
                    "{} ({}) → {} ({}); previous file kept in secret {}",
                    c.describe(),
                    c.fingerprint(),
                    to.describe(),
                    to.fingerprint(),
                    backup_name(&p.secret, cx.run_id)
                ),
            )),
            None => changes.push(Change::new(
                Action::Check,
                &entry,
                format!("WOULD FAIL: the file has no entry {}", p.database),
            )),
        }
        for c in &consoles {
            let state = c.database(&p.database).await?;
            changes.push(Change::new(
                Action::Update,
                format!("PgBouncer {} database {}", c.address, p.database),
                format!(
                    "RELOAD until SHOW DATABASES shows {}:{}/{} (now {}:{}/{}, within {:.1} s), then RESUME",
                    to.host,
                    to.port,
                    to.dbname,
                    state.host,
                    state.port,
                    state.database,
                    p.within.as_secs_f64()
                ),
            ));
        }
        Ok(Plan {
            changes,
            before: Before {
                upstream: current.as_ref().map(Upstream::describe),
                fingerprint: current.as_ref().map(Upstream::fingerprint),
            },
            predicted: None,
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
    ) -> Result<Applied<Outputs>, StepError> {
        let to = upstream(p)?;
        let consoles = consoles(&p.admin).await?;
        let (secrets, what, s) = pooler_secret(cx, p).await?;
        let backup = backup_name(&p.secret, cx.run_id);
        if get_secret(&secrets, &backup).await?.is_none() {
            secret_backup::create(
                &secrets,
                &s,
                &p.secret,
                &backup,
                cx.run_id,
                s.data.clone().unwrap_or_default(),
                BTreeMap::new(),
            )
            .await?;
        }
        write_entry(&secrets, &p.secret, &p.key, &p.database, &to).await?;
        let reload_ms = reload_until_shown(&consoles, &p.database, &to, p.within).await?;
        resume_all(&consoles, &p.database).await?;
        let instances: Vec<String> = consoles.iter().map(|c| c.address.clone()).collect();
        let summary = format!(
            "{} → {} on {} PgBouncer instance(s) (shown {reload_ms} ms after {what} changed), resumed; backup {backup}",
            p.database,
            to.describe(),
            instances.len()
        );
        Ok(Applied::new(Outputs {
            backup,
            upstream: to.describe(),
            upstream_fingerprint: to.fingerprint(),
            instances,
            reload_ms,
            resumed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        })
        .summary(summary))
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
        outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let client = cx.providers.kube().await?;
        let secrets: Api<Secret> = Api::namespaced(client, &p.namespace);
        let backup = outputs
            .map(|o| o.backup.clone())
            .unwrap_or_else(|| backup_name(&p.secret, cx.run_id));
        let Some(b) = get_secret(&secrets, &backup).await? else {
            // The step never reached its change: nothing to put back.
            return Ok(Vec::new());
        };
        let previous = file_of(&b, &p.key, &format!("backup secret {backup}"))?
            .get(&p.database)
            .cloned()
            .ok_or_else(|| {
                StepError::Check(format!(
                    "backup secret {backup} has no entry {}",
                    p.database
                ))
            })?;
        let what = format!("secret {}/{}", p.namespace, p.secret);
        let now = get_secret(&secrets, &p.secret)
            .await?
            .ok_or_else(|| StepError::Check(format!("{what} does not exist")))?;
        let now_entry = file_of(&now, &p.key, &what)?.get(&p.database).cloned();
        let consoles = consoles(&p.admin).await?;
        // Writes wait from here until pgbouncer.pause's rollback resumes them.
        pause_all(&consoles, &p.database, p.within).await?;
        write_entry(&secrets, &p.secret, &p.key, &p.database, &previous).await?;
        let ms = reload_until_shown(&consoles, &p.database, &previous, p.within).await?;
        let mut restored = vec![Restored::new(
            format!("{what} key {} entry {}", p.key, p.database),
            now_entry.as_ref().map(Upstream::entry).as_deref(),
            Some(&previous.entry()),
            format!("{} again, from backup secret {backup}", previous.describe()),
        )];
        for c in &consoles {
            restored.push(Restored::new(
                format!("PgBouncer {} database {}", c.address, p.database),
                now_entry.as_ref().map(Upstream::describe).as_deref(),
                Some(&previous.describe()),
                format!(
                    "paused, RELOAD shows it after {ms} ms; resumed by pgbouncer.pause's rollback"
                ),
            ));
        }
        Ok(restored)
    }

    fn manual_undo(&self, p: &Params, _before: &Before, run_id: &str) -> Vec<String> {
        let (ns, secret) = (&p.namespace, &p.secret);
        let backup = backup_name(secret, run_id);
        vec![
            format!(
                "put the previous [databases] file back: kubectl -n {ns} get secret {backup} -o json | jq '.metadata = {{name: \"{secret}\", namespace: \"{ns}\"}}' | kubectl apply -f -"
            ),
            format!(
                "on every PgBouncer instance: RELOAD, check SHOW DATABASES shows the legacy host for {}, then RESUME {} once the legacy database is writable",
                p.database, p.database
            ),
        ]
    }
}
