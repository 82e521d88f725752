//! Unit-test scaffolding for step kinds (compiled only for tests): a [`StepContext`] over the
//! repository's staging environment, with providers whose services a test replaces by fakes
//! (`Providers::with_waf`, ...). Nothing here reaches a network: a fake is installed for every
//! service a test's kind calls, and a service without one fails on first use.

use super::context::{Mode, StepContext};
use super::journal::Journal;
use super::StepError;
use crate::config::Environment;
use crate::providers::Providers;
use std::sync::{Arc, Mutex};

/// What a kind under test may use, and what it reported.
pub struct Harness {
    dir: tempfile::TempDir,
    env: Environment,
    providers: Providers,
    /// Progress lines the kind printed.
    pub progress: Arc<Mutex<Vec<String>>>,
    /// Records the kind journaled.
    pub journal: Arc<Mutex<Vec<Journal>>>,
    on_progress: Box<dyn Fn(&str) + Send + Sync>,
    on_journal: Box<dyn Fn(Journal) -> Result<(), StepError> + Send + Sync>,
}

impl Harness {
    /// The staging environment, its providers passed through `fakes` to install test doubles.
    pub fn new(fakes: impl FnOnce(Providers) -> Providers) -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::create_dir_all(dir.path().join("environments")).expect("environments/");
        std::fs::write(
            dir.path().join("environments/staging.yaml"),
            include_str!("../../environments/staging.yaml"),
        )
        .expect("environments/staging.yaml");
        let env = crate::config::load_environment(dir.path(), "staging")
            .expect("the repository's staging environment loads");
        let providers = fakes(Providers::new(env.clone(), "test-run", Default::default()));
        let progress = Arc::new(Mutex::new(Vec::new()));
        let journal = Arc::new(Mutex::new(Vec::new()));
        let (p, j) = (progress.clone(), journal.clone());
        Harness {
            dir,
            env,
            providers,
            progress,
            journal,
            on_progress: Box::new(move |line: &str| {
                p.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.to_string())
            }),
            on_journal: Box::new(move |r: Journal| {
                j.lock().unwrap_or_else(|e| e.into_inner()).push(r);
                Ok(())
            }),
        }
    }

    /// A rehearsal's context for step `step` with a 60 s deadline.
    pub fn cx(&self) -> StepContext<'_> {
        StepContext {
            run_id: "test-run",
            step_id: "step",
            mode: Mode::Rehearse,
            env: &self.env,
            params: Default::default(),
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
            providers: &self.providers,
            run_dir: self.dir.path(),
            root: self.dir.path(),
            progress: &*self.on_progress,
            journal: &*self.on_journal,
            panic_flag: None,
            approved: &[],
            writes: None,
        }
    }
}
