//! The audit as JUnit XML for CI test reports (quick-junit): one test suite per phase, one test
//! case per step. A failed step is a `<failure>`; a step whose rollback failed is an `<error>`
//! (a person must act); skipped steps and steps the run never reached are `<skipped>`; an
//! unfinished step (interrupted run) is an `<error>`. Evidence goes to `<system-out>`.
//!
//! Renders [`super::model::Audit`] only; must not read files or contact services.

use super::model::{Audit, StepStatus};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
use std::time::Duration;

/// The run as a JUnit XML document.
pub fn render(a: &Audit) -> String {
    let field = |label: &str| {
        a.header
            .iter()
            .find(|(k, _)| k == label)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mut report = Report::new(format!(
        "cutover {} {} {}",
        field("Mode"),
        field("Environment"),
        field("Runbook")
    ));
    let mut total_ms = 0;
    for (phase, steps) in &a.phases {
        let mut suite = TestSuite::new(format!("{} / {phase}", field("Runbook")));
        suite.add_property(("run_id", a.run_id.as_str()));
        suite.add_property(("environment", field("Environment").as_str()));
        suite.add_property(("outcome", a.outcome.as_str()));
        suite.add_property(("chain_head", a.chain_head.as_str()));
        for st in steps {
            let status = match (st.status, &st.rollback) {
                (_, Some(rb)) if rb.error.is_some() => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_message(format!(
                        "rollback failed: {}",
                        rb.error.clone().unwrap_or_default()
                    ));
                    s.set_type("rollback-incomplete");
                    s.set_description(rb.manual.join("\n"));
                    s
                }
                (StepStatus::Failed, _) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                    s.set_message(st.summary.clone());
                    s.set_type("step-failed");
                    s.set_description(
                        st.events
                            .iter()
                            .map(|(ts, t)| format!("{ts} {t}"))
                            .collect::<Vec<_>>()
                            .join("\n"),
                    );
                    s
                }
                (StepStatus::Unfinished, _) => {
                    let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                    s.set_message(
                        "started but has no outcome: the run was interrupted or is still running",
                    );
                    s.set_type("unfinished");
                    s
                }
                (StepStatus::Skipped, _) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message(format!("skipped: {}", st.summary));
                    s
                }
                (StepStatus::NotRun, _) => {
                    let mut s = TestCaseStatus::skipped();
                    s.set_message("not run: the run stopped before this step");
                    s
                }
                (StepStatus::Completed | StepStatus::Planned, _) => TestCaseStatus::success(),
            };
            let mut case = TestCase::new(st.id.clone(), status);
            case.set_classname(format!("{}.{}", field("Runbook"), phase));
            if let Some(ms) = st.duration_ms {
                case.set_time(Duration::from_millis(ms));
                total_ms += ms;
            }
            case.add_property(("kind", st.kind.as_str()));
            let mut out = Vec::new();
            if !st.summary.is_empty() {
                out.push(st.summary.clone());
            }
            out.extend(st.evidence.iter().map(|(k, v)| format!("{k}: {v}")));
            if let Some(rb) = &st.rollback {
                out.extend(rb.restored.iter().map(|x| {
                    format!(
                        "rolled back {}: {} -> {} ({})",
                        x.object, x.before, x.after, x.detail
                    )
                }));
            }
            if !out.is_empty() {
                case.set_system_out(out.join("\n"));
            }
            suite.add_test_case(case);
        }
        report.add_test_suite(suite);
    }
    report.set_time(Duration::from_millis(total_ms));
    report
        .to_string()
        .unwrap_or_else(|e| format!("<!-- JUnit serialisation failed: {e} -->\n"))
}
