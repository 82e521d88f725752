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
