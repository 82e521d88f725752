//! `analysis.run`: one analysis window on its own, where a runbook wants the verdict of real
//! traffic's metrics (Prometheus, CloudWatch) or HTTP probes in `http.check`'s place, e.g. after
//! the flip. It passes only on evidence ([`super::analysis`]); a failed or inconclusive window
//! fails the step (and the run rolls back). Every measurement is in the step's outputs.

use super::analysis::{Analysis, Verdict};
use super::journal::{AnalysisRecord, Journal};
use super::{Applied, Kind, Literal, Plan, StepContext, StepError};
use async_trait::async_trait;

/// The `analysis.run` kind.
pub struct AnalysisRun;

/// What `analysis.run` returns.
#[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct Outputs {
    /// The window's verdict: HTTP figures and each metric's measurements.
    #[schemars(with = "serde_json::Value")]
    verdict: Verdict,
}

#[async_trait]
impl Kind for AnalysisRun {
    type Params = Analysis;
    type Outputs = Outputs;
    type Before = ();
    type Predicted = ();
    const NAME: &'static str = "analysis.run";
    const PURPOSE: &'static str = "Judge the new side on evidence: metric queries over real traffic (Prometheus, CloudWatch) and/or HTTP probes, each measurement recorded";
    const UNDO: &'static str = "Nothing to undo: the analysis is read-only";

    fn check(&self, a: &Literal<Analysis>) -> Vec<String> {
        a.params.problems()
    }

    async fn plan(&self, _cx: &StepContext, a: &Analysis) -> Result<Plan<(), ()>, StepError> {
        let problems = a.problems();
        if !problems.is_empty() {
            return Err(StepError::Params(problems.join("; ")));
        }
        Ok(Plan::check("analysis window", a.describe()))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        a: &Analysis,
        _before: &(),
    ) -> Result<Applied<Outputs>, StepError> {
        let verdict = a.run(cx, cx.step_id).await?;
        // Recorded before the verdict acts, so a failed window's measurements are in the audit.
        (cx.journal)(Journal::Analysis(AnalysisRecord {
            stage: 0,
            of: 0,
            url: a.url.clone().unwrap_or_default(),
            verdict: verdict.clone(),
        }))?;
        if !verdict.passed {
            return Err(StepError::Check(format!(
                "analysis failed: {}",
                verdict.reasons.join("; ")
            )));
        }
        let summary = verdict
            .metrics
            .iter()
            .map(|m| {
                format!(
                    "{} [{}]",
                    m.name,
                    m.measurements
                        .iter()
                        .map(|x| x.value.map_or("—".into(), |v| format!("{v:.4}")))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        Ok(Applied::new(Outputs { verdict }).summary(format!("analysis passed: {summary}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::testing::{http_statuses, Harness};

    fn window(url: &str) -> Analysis {
        serde_json::from_value(serde_json::json!({
            "url": url, "samples": 3, "interval": "10ms", "consecutive": 2, "max_p95_ms": 5000,
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn a_healthy_window_passes_on_every_run_and_records_its_measurements() {
        let (url, served) = http_statuses(vec![200]).await;
        let h = Harness::new(|p| p);
        let cx = h.cx();
        let a = window(&url);
        let plan = AnalysisRun.plan(&cx, &a).await.unwrap();
        assert_eq!(plan.changes[0].target, "analysis window");
        assert_eq!(*served.lock().unwrap(), 0, "the plan sends no request");
        for run in 1..=2 {
            let out = AnalysisRun.apply(&cx, &a, &()).await.unwrap();
            assert!(out.outputs.verdict.passed);
            assert_eq!(*served.lock().unwrap(), 3 * run);
        }
        let recorded = h.journal.lock().unwrap().clone();
        assert_eq!(recorded.len(), 2, "one analysis record per window");
        assert!(AnalysisRun
            .rollback(&cx, &a, &(), None)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn a_failing_window_fails_the_step_after_recording_why() {
        let (url, _) = http_statuses(vec![200, 503, 503]).await;
        let h = Harness::new(|p| p);
        let err = AnalysisRun
            .apply(&h.cx(), &window(&url), &())
            .await
            .err()
            .expect("a failed window");
        assert!(matches!(err, StepError::Check(_)), "{err:?}");
        let recorded = h.journal.lock().unwrap().clone();
        match &recorded[..] {
            [Journal::Analysis(r)] => assert!(!r.verdict.passed),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_window_without_probes_or_metrics_is_refused_in_the_plan() {
        let h = Harness::new(|p| p);
        let empty: Analysis = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(matches!(
            AnalysisRun.plan(&h.cx(), &empty).await,
            Err(StepError::Params(_))
        ));
    }
}
