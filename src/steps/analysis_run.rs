//! `analysis.run`: one analysis window on its own, where a runbook wants the verdict of real
//! traffic's metrics (Prometheus, CloudWatch) or HTTP probes in `http.check`'s place, e.g. after
//! the flip. It passes only on evidence ([`super::analysis`]); a failed or inconclusive window
//! fails the step (and the run rolls back). Every measurement is in the step's outputs.

use super::analysis::{Analysis, Verdict};
use super::journal::{AnalysisRecord, Journal};
use super::{parse_params, Planned, StepContext, StepError, StepKind};
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The `analysis.run` kind.
pub struct AnalysisRun;

/// What `analysis.run` returns.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Outputs {
    /// The window's verdict: HTTP figures and each metric's measurements.
    #[schemars(with = "serde_json::Value")]
    verdict: Verdict,
}

#[async_trait]
impl StepKind for AnalysisRun {
    fn name(&self) -> &'static str {
        "analysis.run"
    }
    fn purpose(&self) -> &'static str {
        "Judge the new side on evidence: metric queries over real traffic (Prometheus, CloudWatch) and/or HTTP probes, each measurement recorded"
    }

    fn undo(&self) -> &'static str {
        "Nothing to undo: the analysis is read-only"
    }
    super::typed_io!(Analysis, Outputs);
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(300)
    }

    fn validate(&self, params: &Map<String, Value>) -> Vec<String> {
        let mut out = super::check_param_names(&self.params(), params);
        if let Ok(a) = serde_json::from_value::<Analysis>(Value::Object(params.clone())) {
            out.extend(a.problems());
        }
        out
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let a: Analysis = parse_params(&cx.params)?;
        let problems = a.problems();
        if !problems.is_empty() {
            return Err(StepError::Params(problems.join("; ")));
        }
        Ok(Planned::check("analysis window", a.describe()))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let a: Analysis = parse_params(&cx.params)?;
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
        let mut out = super::outputs_map(&Outputs { verdict });
        out.insert(
            super::SUMMARY_OUTPUT.into(),
            json!(format!("analysis passed: {summary}")),
        );
        Ok(out)
    }
}
