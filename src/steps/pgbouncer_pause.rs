//! `pgbouncer.pause`: the first step of a pooler window. Every PgBouncer instance in front of
//! the application (`admin`: one admin console URL each) pauses the application's database
//! entry: transactions in flight finish, new statements wait in the pooler instead of failing,
//! and no server connection to the legacy database is left. The window's other steps (freeze
//! the other writers, drain, sequences, verify, fallback) then run while the application's
//! writes wait, and `pgbouncer.repoint` moves the entry to the target and resumes.
//!
//! The pause has a budget (`budget`, default 5 s): a transaction that holds a server connection
//! past it (a long report, a forgotten `BEGIN`) would make every write wait behind it. Then the
//! step resumes every instance it paused, names each server connection still busy (its backend
//! pid on the legacy server, role and when its last query was sent; never the query), and fails:
//! the run rolls back to before the window with nothing frozen and nothing lost.
//!
//! Rollback resumes the entry on every instance where it is paused. In a rollback it runs after
//! the steps after it were undone (the legacy database writable again), so the writes that
//! waited go to a database that takes them.

use super::{
    Action, Applied, Change, Kind, Literal, Plan, Restored, StepContext, StepError, WindowRole,
};
use crate::providers::pgbouncer::{valid_name, Console};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The `pgbouncer.pause` kind.
pub struct PgbouncerPause;

/// `with:` of `pgbouncer.pause`.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Admin console URL of every PgBouncer instance in front of the application (`postgres://ADMIN:PASSWORD@HOST:PORT/pgbouncer`), usually from a secret.
    admin: Vec<String>,
    /// The `[databases]` entry the application connects to.
    database: String,
    /// How long transactions in flight may take to finish before the window is abandoned (default 5s).
    #[serde(default = "default_budget", with = "super::duration_text")]
    #[schemars(with = "String")]
    budget: Duration,
    /// A file (relative to the project root) whose existence holds the run before the pause until it is removed.
    #[serde(default)]
    postpone_flag: Option<String>,
}

fn default_budget() -> Duration {
    Duration::from_secs(5)
}

/// What `pgbouncer.pause` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// When the last instance finished pausing (RFC 3339, milliseconds): the application's
    /// writes wait from about then until `pgbouncer.repoint` resumes.
    paused_at: String,
    /// The instances paused.
    instances: Vec<String>,
    /// Milliseconds the transactions in flight took to finish.
    waited_ms: u64,
    /// Seconds the postpone flag held the run before the pause.
    postponed_seconds: f64,
}

/// Connects to every console, in the order given.
pub(super) async fn consoles(admin: &[String]) -> Result<Vec<Console>, StepError> {
    if admin.is_empty() {
        return Err(StepError::Params(
            "`admin` lists no PgBouncer admin console".into(),
        ));
    }
    let mut out = Vec::with_capacity(admin.len());
    for url in admin {
        out.push(Console::connect(url).await?);
    }
    Ok(out)
}

/// Resumes `db` on every console where it is paused; returns the addresses resumed.
pub(super) async fn resume_all(consoles: &[Console], db: &str) -> Result<Vec<String>, StepError> {
    let mut resumed = Vec::new();
    for c in consoles {
        if c.resume(db).await? {
            resumed.push(c.address.clone());
        }
    }
    Ok(resumed)
}

/// Pauses `db` on every console at once within `budget`. On time: `Ok(milliseconds)`. Past it:
/// every console resumed, and the error names the server connections still busy.
pub(super) async fn pause_all(
    consoles: &[Console],
    db: &str,
    budget: Duration,
) -> Result<u64, StepError> {
    let started = std::time::Instant::now();
    let pauses = futures_util::future::join_all(consoles.iter().map(|c| c.pause(db)));
    match tokio::time::timeout(budget, pauses).await {
        Ok(results) => {
            if let Some(e) = results.into_iter().find_map(Result::err) {
                resume_all(consoles, db).await?;
                return Err(e.into());
            }
            Ok(started.elapsed().as_millis() as u64)
        }
        Err(_) => {
            // The consoles still wait for their PAUSE: ask what holds it, then RESUME (which
            // PgBouncer accepts while a PAUSE waits) over fresh connections.
            Err(StepError::Check(blocked(consoles, db, budget).await))
        }
    }
}

/// After a PAUSE past its budget: the busy server connections, then RESUME everywhere.
async fn blocked(consoles: &[Console], db: &str, budget: Duration) -> String {
    let mut busy = Vec::new();
    let mut failures = Vec::new();
    for c in consoles {
        // The connection whose PAUSE is pending answers nothing else: open another.
        match c.reconnect().await {
            Ok(fresh) => {
                match fresh.servers(db).await {
                    Ok(servers) => busy.extend(
                        servers
                            .into_iter()
                            .filter(|s| s.state == "active")
                            .map(|s| {
                                format!(
                                    "backend pid {} (role {}, last query sent {}) through {}",
                                    s.remote_pid, s.user, s.request_time, c.address
                                )
                            }),
                    ),
                    Err(e) => failures.push(e.to_string()),
                }
                if let Err(e) = fresh.resume(db).await {
                    failures.push(format!("RESUME {db} on {}: {e}", c.address));
                }
            }
            Err(e) => failures.push(format!("RESUME {db} on {}: {e}", c.address)),
        }
    }
    let mut msg = format!(
        "PAUSE {db} did not complete within its budget of {:.1} s: the window is abandoned and {db} resumed; a transaction kept a server connection busy: {}",
        budget.as_secs_f64(),
        if busy.is_empty() {
            "(none left by the time it was asked)".to_string()
        } else {
            busy.join("; ")
        }
    );
    if !failures.is_empty() {
        msg.push_str(&format!(
            "; RESUME must be checked by hand: {}",
            failures.join("; ")
        ));
    }
    msg
}

#[async_trait]
impl Kind for PgbouncerPause {
    type Params = Params;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "pgbouncer.pause";
    const PURPOSE: &'static str = "Start a pooler window: PgBouncer pauses the application's database, so its writes wait instead of failing while the database moves";
    const UNDO: &'static str = "RESUME the database on every PgBouncer instance where it is paused";
    const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    fn window_role(&self, _params: Option<&Literal<Params>>) -> WindowRole {
        WindowRole::Pause
    }

    fn check(&self, params: &Literal<Params>) -> Vec<String> {
        let mut problems = Vec::new();
        if params.known("database") && !valid_name(&params.params.database) {
            problems.push(format!(
                "database `{}`: PgBouncer's console takes letters, digits and _ only",
                params.params.database
            ));
        }
        if params.known("admin") && params.params.admin.is_empty() {
            problems.push("admin: list one admin console URL per PgBouncer instance".into());
        }
        problems
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<(), ()>, StepError> {
        let consoles = consoles(&p.admin).await?;
        let mut changes = Vec::new();
        if let Some(f) = &p.postpone_flag {
            changes.push(Change::new(
                Action::Check,
                format!("postpone flag {f}"),
                if cx.root.join(f).exists() {
                    "present: the run will hold here, before the pause, until it is removed"
                } else {
                    "absent: no hold (create it to hold the run before the pause)"
                },
            ));
        }
        for c in &consoles {
            let target = format!("PgBouncer {} database {}", c.address, p.database);
            let state = c.database(&p.database).await?;
            let mode = c.setting("pool_mode").await?.unwrap_or_default();
            if mode == "session" {
                changes.push(Change::new(
                    Action::Check,
                    &target,
                    "WOULD FAIL: pool_mode is session: PAUSE would wait for every client to disconnect; the pooler path needs pool_mode = transaction",
                ));
                continue;
            }
            changes.push(if state.paused {
                Change::new(Action::None, &target, "already paused")
            } else {
                Change::new(
                    Action::Update,
                    &target,
                    format!(
                        "PAUSE {}: new statements wait; transactions in flight get {:.1} s to finish, else the window is abandoned (upstream now {}:{}/{})",
                        p.database,
                        p.budget.as_secs_f64(),
                        state.host,
                        state.port,
                        state.database
                    ),
                )
            });
        }
        Ok(Plan::of(changes))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let postponed_seconds = match &p.postpone_flag {
            Some(f) => {
                super::postgres_freeze_writes::hold_while_postponed(cx, &cx.root.join(f)).await?
            }
            None => 0.0,
        };
        let consoles = consoles(&p.admin).await?;
        for c in &consoles {
            if c.setting("pool_mode").await?.as_deref() == Some("session") {
                return Err(StepError::Check(format!(
                    "PgBouncer {} runs pool_mode = session: PAUSE would wait for every client to disconnect; the pooler path needs pool_mode = transaction",
                    c.address
                )));
            }
        }
        let waited_ms = pause_all(&consoles, &p.database, p.budget).await?;
        let instances: Vec<String> = consoles.iter().map(|c| c.address.clone()).collect();
        let summary = format!(
            "{} paused on {} PgBouncer instance(s) ({}) after {waited_ms} ms: the application's writes wait",
            p.database,
            instances.len(),
            instances.join(", ")
        );
        Ok(Applied::new(Outputs {
            paused_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            instances,
            waited_ms,
            postponed_seconds,
        })
        .summary(summary))
    }

    async fn rollback(
        &self,
        _cx: &StepContext,
        p: &Params,
        _before: &(),
        _outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let consoles = consoles(&p.admin).await?;
        let resumed = resume_all(&consoles, &p.database).await?;
        Ok(consoles
            .iter()
            .map(|c| {
                let was = resumed.contains(&c.address);
                Restored::new(
                    format!("PgBouncer {} database {}", c.address, p.database),
                    Some(if was { "paused" } else { "running" }),
                    Some("running"),
                    if was { "RESUME" } else { "not paused" },
                )
            })
            .collect())
    }

    fn manual_undo(&self, _p: &Params, _before: &(), _run_id: &str) -> Vec<String> {
        vec!["on every PgBouncer instance in front of the application: `psql -h HOST -p PORT -U ADMIN pgbouncer -c 'RESUME <database>'` (SHOW DATABASES shows paused = 1 where it is needed)".into()]
    }
}
