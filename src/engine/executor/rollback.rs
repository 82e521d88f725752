//! The executor's way back: every started step undone newest first, after asking each whether
//! undoing it would lose acknowledged data (a refusal stops the whole rollback before anything
//! is undone), and the continuation of an interrupted rollback. Journals as the forward path
//! does; what a step's undo does is the kind's.

use super::*;

impl<'a> Executor<'a> {
    /// Rolls back every started step in reverse order, the failed one included.
    pub(in crate::engine) async fn rollback(
        &mut self,
        failed_step: &str,
        reason: &str,
    ) -> Result<Outcome, EngineError> {
        self.record(
            Event::RollbackStarted(RollbackStarted {
                failed_step: failed_step.to_string(),
                reason: reason.to_string(),
            }),
            None,
        )?;
        if let Some(outcome) = self.refusals(failed_step).await? {
            return Ok(outcome);
        }
        self.continue_rollback(failed_step, &HashSet::new()).await
    }

    /// What undoing `step` works with: its rendered parameters (secrets included: effects only),
    /// the rollback material of its first plan, its outputs if it applied, and what a person
    /// would do by hand.
    fn undo_material(
        &self,
        step: &PlanStep,
    ) -> (
        Map<String, Value>,
        Value,
        Option<Map<String, Value>>,
        Vec<String>,
    ) {
        let real =
            match template::render_value(&Value::Object(step.params.clone()), &self.context(false))
            {
                Ok(Value::Object(m)) => m,
                _ => step.params.clone(),
            };
        let before = self.before.get(&step.id).cloned().unwrap_or(Value::Null);
        let outputs = self.outputs.get(&step.id).cloned();
        let manual = step.kind.manual_undo(&real, &before, &self.run_id);
        (real, before, outputs, manual)
    }

    /// Asks every started step whether undoing it would lose acknowledged data
    /// ([`crate::steps::StepKind::rollback_refusal`]); when one says so, nothing is rolled
    /// back and the run ends `rollback-refused` (exit 4) with the reasons and what to do.
    async fn refusals(&mut self, failed_step: &str) -> Result<Option<Outcome>, EngineError> {
        let plan = self.plan;
        let mut refused = Vec::new();
        for id in self.started.iter().rev().cloned().collect::<Vec<_>>() {
            let Some((_, step)) = plan.steps().find(|(_, s)| s.id == id) else {
                continue;
            };
            let (real, before, outputs, manual) = self.undo_material(step);
            let progress = self.progress_for(&id);
            let fault = JournalFault::default();
            let journal = self.journal_for(&id, &fault);
            let deadline = tokio::time::Instant::now() + step.timeout;
            let answer = {
                let cx = self.step_context(step, real, &progress, &journal, deadline, true);
                tokio::time::timeout_at(
                    deadline,
                    step.kind.rollback_refusal(&cx, &before, outputs.as_ref()),
                )
                .await
                .unwrap_or_else(|_| Err(StepError::Timeout("the rollback check".into())))
            };
            Self::journal_fault(&fault)?;
            let reason = match answer {
                Ok(None) => continue,
                Ok(Some(r)) => r,
                Err(e) => format!("could not tell whether undoing it loses data: {e}"),
            };
            let reason = self.redactor.redact(&reason);
            let manual: Vec<String> = manual.iter().map(|m| self.redactor.redact(m)).collect();
            self.record(
                Event::RollbackRefused(RollbackRefused {
                    reason: reason.clone(),
                    manual: manual.clone(),
                }),
                Some(&id),
            )?;
            refused.push(Incomplete {
                step: id.clone(),
                kind: step.kind.name().to_string(),
                error: reason,
                manual,
            });
        }
        if refused.is_empty() {
            return Ok(None);
        }
        let todo = manual_todo(&refused);
        self.finish(
            RunStatus::RollbackRefused,
            Ending {
                failed_step: Some(failed_step.to_string()),
                incomplete: refused,
                ..Ending::default()
            },
        )
        .await?;
        Ok(Some(self.outcome(
            RunStatus::RollbackRefused,
            Outcome::RollbackIncomplete(todo),
        )))
    }

    /// Rollback of the started steps not in `already`, newest first.
    pub(in crate::engine) async fn continue_rollback(
        &mut self,
        failed_step: &str,
        already: &HashSet<String>,
    ) -> Result<Outcome, EngineError> {
        let plan = self.plan;
        let mut incomplete = Vec::new();
        let order: Vec<String> = self.started.iter().rev().cloned().collect();
        for id in order {
            if already.contains(&id) {
                continue;
            }
            let Some((_, step)) = plan.steps().find(|(_, s)| s.id == id) else {
                continue;
            };
            if step.rollback == RollbackPolicy::Skip {
                self.record(
                    Event::RollbackStepCompleted(RollbackStepCompleted {
                        aws_calls: Vec::new(),
                        restored: vec![],
                        note: Some("rollback: skip".into()),
                    }),
                    Some(&id),
                )?;
                continue;
            }
            self.record(
                Event::RollbackStepStarted(RollbackStepStarted {
                    kind: step.kind.name().to_string(),
                }),
                Some(&id),
            )?;
            let (real, before, outputs, manual) = self.undo_material(step);
            let progress = self.progress_for(&id);
            let fault = JournalFault::default();
            let journal = self.journal_for(&id, &fault);
            // A rollback step gets at least 120 s, whatever the forward timeout.
            let deadline =
                tokio::time::Instant::now() + step.timeout.max(std::time::Duration::from_secs(120));
            let result = {
                let cx = self.step_context(step, real, &progress, &journal, deadline, true);
                tokio::time::timeout_at(
                    deadline,
                    step.kind.rollback(&cx, &before, outputs.as_ref()),
                )
                .await
                .unwrap_or_else(|_| Err(StepError::Timeout("rollback".into())))
            };
            Self::journal_fault(&fault)?;
            match result {
                Ok(restored) => {
                    self.record(
                        Event::RollbackStepCompleted(RollbackStepCompleted {
                            aws_calls: Vec::new(),
                            restored,
                            note: None,
                        }),
                        Some(&id),
                    )?;
                }
                Err(e) => {
                    let stop = matches!(e, StepError::Gate(_));
                    let msg = self.redactor.redact(&e.to_string());
                    let mut manual: Vec<String> =
                        manual.iter().map(|m| self.redactor.redact(m)).collect();
                    if manual.is_empty() {
                        manual.push(format!("find why the rollback failed ({msg}), fix it, then `cutover rollback {}` continues where it stopped", self.run_id));
                    }
                    incomplete.push(Incomplete {
                        step: id.clone(),
                        kind: step.kind.name().to_string(),
                        error: msg.clone(),
                        manual: manual.clone(),
                    });
                    self.record(
                        Event::RollbackStepFailed(RollbackStepFailed {
                            aws_calls: Vec::new(),
                            error: msg,
                            manual,
                            stopped: stop,
                        }),
                        Some(&id),
                    )?;
                    // A step whose undo would lose data if the earlier ones went on (a
                    // fallback that has not caught up) stops the rollback where it is.
                    if stop {
                        break;
                    }
                }
            }
        }
        let failed_step = Some(failed_step.to_string());
        if incomplete.is_empty() {
            self.finish(
                RunStatus::RolledBack,
                Ending {
                    failed_step,
                    ..Ending::default()
                },
            )
            .await?;
            Ok(self.outcome(RunStatus::RolledBack, Outcome::RolledBack))
        } else {
            let todo = manual_todo(&incomplete);
            self.finish(
                RunStatus::RollbackIncomplete,
                Ending {
                    failed_step,
                    incomplete,
                    ..Ending::default()
                },
            )
            .await?;
            Ok(self.outcome(
                RunStatus::RollbackIncomplete,
                Outcome::RollbackIncomplete(todo),
            ))
        }
    }
}
