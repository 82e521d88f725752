//! `postgres.freeze_writes`: stops the application's writes on the legacy source so the target
//! can catch up to a final LSN. It freezes the application's roles, not the database: each role
//! starts its sessions in this database read-only (`ALTER ROLE ... IN DATABASE ... SET
//! default_transaction_read_only = on`) and its open sessions are terminated (they reconnect
//! read-only). The admin role running the tool, replication roles and superusers keep writing,
//! so replication, and later a fallback subscription applying on the source, go on.
//!
//! The roles are `roles:` when given, else every login role that may write one of the source's
//! tables ([`roles::writers`]). A postpone flag (`postpone_flag`, a file path relative to the
//! project root, as gh-ost's `--postpone-cut-over-flag-file`) holds the run at the last safe
//! point before the freeze: while the file exists nothing is frozen and replication keeps the
//! target current; removing it lets the freeze proceed. The wait does not count against the
//! step's timeout.
//!
//! Rollback unfreezes the roles this run froze (not those read-only before the run).

use super::{
    Action, Applied, Change, Evidence, Kind, Literal, Plan, Restored, StepContext, StepError,
    WindowRole,
};
use crate::config::Side;
use crate::providers::postgres::database::Database;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The `postgres.freeze_writes` kind.
pub struct FreezeWrites;

/// `with:` of `postgres.freeze_writes`.
#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// A file (relative to the project root) whose existence holds the run before the freeze until it is removed.
    #[serde(default)]
    postpone_flag: Option<String>,
    /// The application's roles to freeze (default: every login role that may write a replicated table, never superusers, replication roles or the admin role).
    #[serde(default)]
    roles: Option<Vec<String>>,
}

/// Waits while the postpone flag exists; returns how long the run was held, in seconds. The hold
/// is not bounded by the step's deadline (an operator holds the run as long as needed), but the
/// panic flag and the write budget are honoured while it lasts.
///
/// # Errors
/// [`StepError::Panic`] or [`StepError::WriteOutage`].
pub(super) async fn hold_while_postponed(
    cx: &StepContext<'_>,
    flag: &std::path::Path,
) -> Result<f64, StepError> {
    let started = std::time::Instant::now();
    let mut last = None::<std::time::Instant>;
    while flag.exists() {
        if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
            last = Some(std::time::Instant::now());
            (cx.progress)(&format!(
                "postponed before the freeze: remove {} to proceed (held {} s; replication keeps the target current)",
                flag.display(),
                started.elapsed().as_secs()
            ));
        }
        if let Some(reason) = cx.panic_flag.and_then(super::context::panic_reason) {
            return Err(StepError::Panic(reason));
        }
        if let Some(why) = cx.writes.and_then(|w| w.over_budget()) {
            return Err(StepError::WriteOutage(why));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The roles to freeze on the source: `roles:` or every application writer of its tables.
pub(super) async fn application_roles(
    source: &dyn Database,
    given: Option<&[String]>,
) -> Result<Vec<String>, StepError> {
    if let Some(r) = given {
        return Ok(r.to_vec());
    }
    let tables = source.table_names().await?;
    Ok(source.writers(&tables).await?)
}

/// Rollback material: the roles already read-only on the source before the run (a rollback
/// leaves them so).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Before {
    /// Roles read-only in the database before the run.
    #[serde(default)]
    frozen: Vec<String>,
}

/// What `postgres.freeze_writes` returns.
#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The application roles made read-only on the source.
    roles: Vec<String>,
    /// Their sessions terminated (they reconnect read-only).
    terminated: u64,
    /// The source's WAL position right after the freeze: the target must reach it.
    lsn: String,
    /// Seconds the postpone flag held the run before the freeze.
    postponed_seconds: f64,
}

#[async_trait]
impl Kind for FreezeWrites {
    type Params = Params;
    type Outputs = Outputs;
    type Before = Before;
    type Predicted = ();
    const NAME: &'static str = "postgres.freeze_writes";
    const PURPOSE: &'static str = "Stop the application's writes on the legacy database (its roles start read-only, their sessions terminated) so the target can catch up; replication and the admin role keep writing";
    const UNDO: &'static str =
        "Make the application's roles writable again on the legacy database (those this run froze)";
    const ACTS_ON_DATABASE: bool = true;

    fn window_role(&self, _params: Option<&Literal<Params>>) -> WindowRole {
        WindowRole::Freeze
    }

    async fn plan(&self, cx: &StepContext, p: &Params) -> Result<Plan<Before, ()>, StepError> {
        let source = cx.providers.database(Side::Source).await?;
        let db = source.name().to_string();
        let wanted = application_roles(&*source, p.roles.as_deref()).await?;
        let frozen = source.frozen().await?;
        let mut changes = Vec::new();
        if let Some(f) = &p.postpone_flag {
            let path = cx.root.join(f);
            changes.push(Change::new(
                Action::Check,
                format!("postpone flag {f}"),
                if path.exists() {
                    "present: the run will hold here until it is removed".to_string()
                } else {
                    "absent: no hold (create it to hold the run before the freeze)".to_string()
                },
            ));
        }
        if wanted.is_empty() {
            changes.push(Change::new(
                Action::Check,
                format!("roles in {db} on source"),
                "WOULD FAIL: no application role may write the source's tables; name them with roles:",
            ));
        }
        for r in &wanted {
            changes.push(if frozen.contains(r) {
                Change::new(
                    Action::None,
                    format!("role {r} in {db} on source"),
                    "already read-only",
                )
            } else {
                Change::new(
                    Action::Update,
                    format!("role {r} in {db} on source"),
                    "read-only for new sessions; its open sessions terminated",
                )
                .with_document(json!(format!(
                    "ALTER ROLE {} IN DATABASE {} SET default_transaction_read_only = on",
                    crate::providers::postgres::ident(r),
                    crate::providers::postgres::ident(&db)
                )))
            });
        }
        Ok(Plan {
            changes,
            before: Before { frozen },
            predicted: None,
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        p: &Params,
        _before: &Before,
    ) -> Result<Applied<Outputs>, StepError> {
        let postponed = match &p.postpone_flag {
            Some(f) => hold_while_postponed(cx, &cx.root.join(f)).await?,
            None => 0.0,
        };
        let source = cx.providers.database(Side::Source).await?;
        let db = source.name().to_string();
        let wanted = application_roles(&*source, p.roles.as_deref()).await?;
        if wanted.is_empty() {
            return Err(StepError::Check(format!(
                "no application role may write the tables of {db} on the source: name the roles to freeze with `roles:`"
            )));
        }
        let terminated = source.freeze(&wanted).await?;
        let lsn = source.current_lsn().await?;
        let summary = format!(
            "role(s) {} read-only in {db} at LSN {lsn}; {terminated} session(s) terminated",
            wanted.join(", ")
        );
        Ok(Applied::new(Outputs {
            roles: wanted,
            terminated,
            lsn,
            postponed_seconds: (postponed * 10.0).round() / 10.0,
        })
        .summary(summary))
    }

    async fn verify(
        &self,
        cx: &StepContext,
        _p: &Params,
        outputs: &Outputs,
    ) -> Result<Evidence, StepError> {
        let source = cx.providers.database(Side::Source).await?;
        let db = source.name();
        let frozen = source.frozen().await?;
        let open: Vec<&String> = outputs
            .roles
            .iter()
            .filter(|r| !frozen.contains(r))
            .collect();
        if !open.is_empty() {
            return Err(StepError::Check(format!(
                "role(s) {} still start read-write sessions in {db} on the source",
                open.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Evidence::default())
    }

    async fn rollback(
        &self,
        cx: &StepContext,
        _p: &Params,
        before: &Before,
        _outputs: Option<&Outputs>,
    ) -> Result<Vec<Restored>, StepError> {
        let was = &before.frozen;
        let source = cx.providers.database(Side::Source).await?;
        let db = source.name();
        // The roles this run froze: read-only now and not before the run.
        let frozen = source.frozen().await?;
        let to_open: Vec<String> = frozen.into_iter().filter(|r| !was.contains(r)).collect();
        if to_open.is_empty() {
            return Ok(vec![]);
        }
        source.unfreeze(&to_open).await?;
        Ok(to_open
            .iter()
            .map(|r| {
                Restored::new(
                    format!("role {r} in database {db} on the source"),
                    Some("default_transaction_read_only=on"),
                    Some("default_transaction_read_only=off"),
                    "read-only → read-write: the application's writes accepted again",
                )
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::postgres::FakePostgres;
    use crate::steps::testing::Harness;
    use crate::steps::StepError;

    /// A source whose `app` and `worker` may write `public.orders`; `reporting` is read-only
    /// before the run; `app` has 3 open sessions.
    fn setup() -> (Harness, FakePostgres) {
        let pg = FakePostgres::new("shop_staging", "shop_staging");
        pg.server(Side::Source, |s| {
            s.tables = vec!["public.orders".into()];
            s.writers = vec!["app".into(), "worker".into()];
            s.roles = ["app", "worker", "reporting"]
                .map(String::from)
                .into_iter()
                .collect();
            s.frozen.insert("reporting".into());
            s.sessions.insert("app".into(), 3);
        });
        let fake = pg.clone();
        (Harness::new(|p| fake.install(p)), pg)
    }

    #[tokio::test]
    async fn freezes_the_writers_once_and_rollback_opens_only_what_it_froze() {
        let (h, pg) = setup();
        let cx = h.cx();
        let p = Params {
            roles: Some(vec!["app".into(), "worker".into(), "reporting".into()]),
            ..Default::default()
        };
        let plan = FreezeWrites.plan(&cx, &p).await.unwrap();
        let actions: Vec<(Action, &str)> = plan
            .changes
            .iter()
            .map(|c| (c.action, c.target.as_str()))
            .collect();
        assert_eq!(
            actions,
            vec![
                (Action::Update, "role app in shop_staging on source"),
                (Action::Update, "role worker in shop_staging on source"),
                (Action::None, "role reporting in shop_staging on source"),
            ]
        );
        assert_eq!(plan.before.frozen, vec!["reporting".to_string()]);

        let first = FreezeWrites.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(first.outputs.terminated, 3);
        assert_eq!(
            pg.server(Side::Source, |s| s.frozen.len()),
            3,
            "every named role starts read-only"
        );
        // A re-run after a crash finds them frozen: nothing more to end, the same roles.
        let again = FreezeWrites.apply(&cx, &p, &plan.before).await.unwrap();
        assert_eq!(again.outputs.terminated, 0);
        assert_eq!(again.outputs.roles, first.outputs.roles);
        FreezeWrites.verify(&cx, &p, &again.outputs).await.unwrap();

        let restored = FreezeWrites
            .rollback(&cx, &p, &plan.before, Some(&again.outputs))
            .await
            .unwrap();
        assert_eq!(restored.len(), 2);
        assert_eq!(
            pg.server(Side::Source, |s| s
                .frozen
                .iter()
                .cloned()
                .collect::<Vec<_>>()),
            vec!["reporting".to_string()],
            "a role read-only before the run stays so"
        );
    }

    #[tokio::test]
    async fn without_roles_it_freezes_every_writer_of_the_tables_and_reports_the_lsn() {
        let (h, pg) = setup();
        let cx = h.cx();
        let p = Params::default();
        pg.write(Side::Source, 5);
        let want = pg.server(Side::Source, |s| {
            crate::steps::testing::postgres::lsn_text(s.lsn)
        });
        let applied = FreezeWrites
            .apply(&cx, &p, &Before::default())
            .await
            .unwrap();
        assert_eq!(applied.outputs.roles, vec!["app", "worker"]);
        assert_eq!(applied.outputs.lsn, want);
        assert_eq!(
            pg.server(Side::Source, |s| s
                .frozen
                .iter()
                .cloned()
                .collect::<Vec<_>>()),
            vec!["app", "reporting", "worker"]
        );
    }

    #[tokio::test]
    async fn verify_fails_when_a_role_writes_again_and_no_writer_is_a_failed_check() {
        let (h, pg) = setup();
        let cx = h.cx();
        let applied = FreezeWrites
            .apply(&cx, &Params::default(), &Before::default())
            .await
            .unwrap();
        pg.server(Side::Source, |s| s.frozen.remove("worker"));
        let err = FreezeWrites
            .verify(&cx, &Params::default(), &applied.outputs)
            .await
            .err()
            .expect("worker writes");
        assert!(
            matches!(&err, StepError::Check(m) if m.contains("worker")),
            "{err:?}"
        );

        pg.server(Side::Source, |s| s.writers.clear());
        let plan = FreezeWrites.plan(&cx, &Params::default()).await.unwrap();
        assert!(plan.changes[0].detail.starts_with("WOULD FAIL"));
        let err = FreezeWrites
            .apply(&cx, &Params::default(), &Before::default())
            .await
            .err()
            .expect("nothing to freeze");
        assert!(matches!(err, StepError::Check(_)), "{err:?}");
    }
}
