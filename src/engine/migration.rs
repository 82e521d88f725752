//! Where a migration stands in an environment, from the runs on record: for each run of each
//! wave, whether it already succeeded (not repeated), was interrupted (resumed), or is still to
//! start; and whether a wave may start.
//!
//! Pure: it reads [`RunSummary`]s and decides; starting processes is the command line's.

use super::event::RunStatus;
use super::runs::{RunState, RunSummary};

/// What the migration command does with one `(runbook, database)` of a wave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A run of it in this migration succeeded: not repeated.
    Done {
        /// That run.
        run_id: String,
    },
    /// A run of it stopped part-way (interrupted or killed): `resume` continues it.
    Resume {
        /// That run.
        run_id: String,
    },
    /// A run of it could not finish its rollback: a person must, before the migration goes on.
    Blocked {
        /// That run.
        run_id: String,
    },
    /// No run of it, or the last one rolled back or was refused: a new run starts.
    Start,
}

/// The action for runbook `runbook` on database `database` of migration `migration`, from the
/// environment's runs (oldest first, as [`super::runs::list`] returns them): the latest run of
/// the same migration, runbook and database decides (dry-runs do not count).
pub fn action(runs: &[RunSummary], migration: &str, runbook: &str, database: &str) -> Action {
    match latest(runs, migration, runbook, database) {
        None => Action::Start,
        Some(r) => match r.status {
            RunState::Finished(RunStatus::Succeeded) => Action::Done {
                run_id: r.id.clone(),
            },
            RunState::Interrupted | RunState::Running => Action::Resume {
                run_id: r.id.clone(),
            },
            RunState::Finished(RunStatus::RollbackIncomplete) => Action::Blocked {
                run_id: r.id.clone(),
            },
            RunState::Finished(_) | RunState::Corrupt => Action::Start,
        },
    }
}

/// The latest run (not a dry-run) of runbook `runbook` on database `database` started by
/// migration `migration`, from `runs` oldest first.
pub fn latest<'a>(
    runs: &'a [RunSummary],
    migration: &str,
    runbook: &str,
    database: &str,
) -> Option<&'a RunSummary> {
    runs.iter().rev().find(|r| {
        r.acted()
            && r.runbook == runbook
            && r.database == database
            && r.migration.as_ref().is_some_and(|m| m.name == migration)
    })
}

/// How one run of a wave ended in this invocation, by its process's exit code (see the exit
/// code table of `crate::cli`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// 0, or already done before.
    Succeeded,
    /// 1: it failed and rolled back.
    RolledBack,
    /// 2 or 3: invalid or refused before it changed anything.
    Refused,
    /// 4: a person must finish its rollback.
    RollbackIncomplete,
    /// 130, or stopped by the wave's policy.
    Interrupted,
    /// Not started: an earlier failure of its wave stopped it.
    NotStarted,
}

impl Ended {
    /// From a child process's exit code (`None`: killed by a signal).
    pub fn from_exit(code: Option<i32>) -> Ended {
        match code {
            Some(0) => Ended::Succeeded,
            Some(1) => Ended::RolledBack,
            Some(2) | Some(3) => Ended::Refused,
            Some(4) => Ended::RollbackIncomplete,
            _ => Ended::Interrupted,
        }
    }

    /// One word for the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Succeeded => "succeeded",
            Ended::RolledBack => "rolled-back",
            Ended::Refused => "refused",
            Ended::RollbackIncomplete => "rollback-incomplete",
            Ended::Interrupted => "interrupted",
            Ended::NotStarted => "not-started",
        }
    }

    /// The migration's exit code when this is its worst outcome (4 over 130 over 1 over 3).
    pub fn exit_code(self) -> i32 {
        match self {
            Ended::Succeeded => 0,
            Ended::RolledBack => 1,
            Ended::Refused => 3,
            Ended::RollbackIncomplete => 4,
            Ended::Interrupted | Ended::NotStarted => 130,
        }
    }

    fn severity(self) -> u8 {
        match self {
            Ended::Succeeded => 0,
            Ended::NotStarted => 1,
            Ended::Refused => 2,
            Ended::RolledBack => 3,
            Ended::Interrupted => 4,
            Ended::RollbackIncomplete => 5,
        }
    }
}

/// The worst of `ended` (the migration's outcome); `Succeeded` when empty.
pub fn worst(ended: &[Ended]) -> Ended {
    ended
        .iter()
        .copied()
        .max_by_key(|e| e.severity())
        .unwrap_or(Ended::Succeeded)
}

#[cfg(test)]
mod tests {
    use super::super::event::MigrationTag;
    use super::*;

    fn run(id: &str, runbook: &str, db: &str, status: &str, migration: Option<&str>) -> RunSummary {
        RunSummary {
            id: id.into(),
            environment: "staging".into(),
            mode: Some(crate::steps::context::Mode::Rehearse),
            status: match status {
                "running" => RunState::Running,
                "interrupted" => RunState::Interrupted,
                "succeeded" => RunState::Finished(RunStatus::Succeeded),
                "rollback-incomplete" => RunState::Finished(RunStatus::RollbackIncomplete),
                _ => RunState::Finished(RunStatus::RolledBack),
            },
            runbook: runbook.into(),
            runbook_digest: "d".into(),
            database: db.into(),
            migration: migration.map(|m| MigrationTag {
                name: m.into(),
                wave: "w".into(),
            }),
            write_outage_ms: None,
            reload: None,
            writes_missing: None,
            writes_failed: None,
            started_at: id.into(),
            finished_at: None,
        }
    }

    #[test]
    fn the_latest_run_of_the_same_migration_runbook_and_database_decides() {
        let runs = vec![
            run("1", "shop", "shop", "rolled-back", Some("m")),
            run("2", "shop", "shop", "succeeded", Some("m")),
            run("3", "letters", "letters", "succeeded", Some("m")),
            run("4", "letters", "letters", "interrupted", Some("m")),
            run("5", "shop", "other", "succeeded", Some("m")),
            run("6", "shop", "shop", "rolled-back", None),
            run("7", "shop", "shop", "rolled-back", Some("another")),
        ];
        assert_eq!(
            action(&runs, "m", "shop", "shop"),
            Action::Done { run_id: "2".into() }
        );
        assert_eq!(
            action(&runs, "m", "letters", "letters"),
            Action::Resume { run_id: "4".into() }
        );
        assert_eq!(action(&runs, "m", "letters", "third"), Action::Start);
        assert_eq!(action(&runs, "another", "shop", "shop"), Action::Start);
        let mut blocked = runs.clone();
        blocked.push(run("8", "shop", "shop", "rollback-incomplete", Some("m")));
        assert_eq!(
            action(&blocked, "m", "shop", "shop"),
            Action::Blocked { run_id: "8".into() }
        );
    }

    #[test]
    fn dry_runs_do_not_count_as_progress() {
        let mut r = run("1", "shop", "shop", "planned", Some("m"));
        r.mode = Some(crate::steps::context::Mode::DryRun);
        assert_eq!(action(&[r], "m", "shop", "shop"), Action::Start);
    }

    #[test]
    fn the_worst_outcome_decides_the_exit_code() {
        assert_eq!(worst(&[]), Ended::Succeeded);
        assert_eq!(worst(&[Ended::Succeeded, Ended::RolledBack]).exit_code(), 1);
        assert_eq!(
            worst(&[
                Ended::RolledBack,
                Ended::RollbackIncomplete,
                Ended::Interrupted
            ])
            .exit_code(),
            4
        );
        assert_eq!(Ended::from_exit(Some(130)), Ended::Interrupted);
        assert_eq!(Ended::from_exit(None), Ended::Interrupted);
        assert_eq!(Ended::from_exit(Some(3)), Ended::Refused);
    }
}
