//! The printable procedure of a runbook for one environment, for the change board before the
//! run (`cutover runbook render`): each step's purpose, what it will change (its parameters as
//! written, templates unrendered, since Terraform outputs and earlier steps' outputs exist only
//! at run time), the evidence the run will record, what rollback does, and sign-off boxes.
//!
//! Renders a resolved [`Plan`] only; must not contact services or read secrets (parameters are
//! shown as written, so a secret appears as its `{{ secrets.NAME }}` reference).

use super::html::STYLE;
use super::templates::{render, TemplateError};
use crate::config::RollbackPolicy;
use crate::runbook::{Plan, PlanStep};
use crate::steps::WindowRole;
use serde_json::{json, Value};
use std::fmt::Write;
use std::path::Path;

fn header(plan: &Plan) -> Vec<(String, String)> {
    let env = &plan.env;
    let promotion = match &env.promotion {
        Some(p) => format!(
            "requires successful rehearsals in {} within {}{}",
            p.requires.join(", "),
            p.max_age,
            if p.approvers.is_empty() {
                String::new()
            } else {
                format!("; approvers: {}", p.approvers.join(", "))
            }
        ),
        None if env.tier == crate::config::Tier::Production => {
            "default: successful rehearsals in every staging and dev environment within 7d".into()
        }
        None => "none (not production)".into(),
    };
    vec![
        ("Runbook".into(), plan.runbook_name.clone()),
        (
            "Runbook file".into(),
            plan.runbook_path.display().to_string(),
        ),
        ("Runbook digest".into(), plan.runbook_digest.clone()),
        ("Plan digest".into(), plan.plan_digest.clone()),
        (
            "Environment".into(),
            format!("{} ({})", env.name, env.tier.as_str()),
        ),
        ("AWS account".into(), env.aws.account_id.clone()),
        ("Region".into(), env.aws.region.clone()),
        ("Promotion gate".into(), promotion),
        ("Steps".into(), plan.steps().count().to_string()),
    ]
}

fn params_text(step: &PlanStep) -> String {
    if step.params.is_empty() {
        return String::new();
    }
    serde_json::to_string_pretty(&step.params).unwrap_or_default()
}

fn rollback_text(step: &PlanStep) -> String {
    match step.rollback {
        RollbackPolicy::Auto => step.kind.undo().to_string(),
        RollbackPolicy::Skip => format!(
            "Left in place (rollback: skip). Without it the kind would: {}",
            step.kind.undo()
        ),
    }
}

fn evidence_text(step: &PlanStep) -> String {
    let outputs = step.kind.outputs();
    if outputs.is_empty() {
        "the outcome and its timing".into()
    } else {
        outputs.join(", ")
    }
}

/// The steps of the write outage: from the step that freezes writes (`postgres.freeze_writes`)
/// to the first step after it that points the application at the target (`k8s.flip_secret`),
/// as (phase, step) in run order; empty when the runbook has no such pair.
fn window_steps(plan: &Plan) -> Vec<(&str, &PlanStep)> {
    let all: Vec<(&str, &PlanStep)> = plan
        .phases
        .iter()
        .flat_map(|p| p.steps.iter().map(move |s| (p.name.as_str(), s)))
        .collect();
    let Some(first) = all
        .iter()
        .position(|(_, s)| s.kind.window_role(&s.params) == WindowRole::Freeze)
    else {
        return Vec::new();
    };
    match all[first..]
        .iter()
        .position(|(_, s)| matches!(s.kind.window_role(&s.params), WindowRole::Flip { .. }))
    {
        Some(n) => all[first..=first + n].to_vec(),
        None => Vec::new(),
    }
}

/// The procedure as a printable HTML document (same stylesheet as the audit; a page per phase),
/// from `procedure.html` in `template_dir` when it holds one, else the built-in template.
///
/// # Errors
/// [`TemplateError`] when the team's template cannot be read or fails.
pub fn html(plan: &Plan, template_dir: Option<&Path>) -> Result<String, TemplateError> {
    let title = format!(
        "Cutover procedure: {} on {}",
        plan.runbook_name, plan.env.name
    );
    let window = window_steps(plan);
    let in_window = |s: &PlanStep| window.iter().any(|(_, w)| std::ptr::eq(*w, s));
    let mut number = 0;
    let mut order = Vec::new();
    let mut phases = Vec::new();
    for phase in &plan.phases {
        let mut steps = Vec::new();
        for step in &phase.steps {
            number += 1;
            order.push(json!({
                "number": number, "phase": phase.name, "id": step.id, "kind": step.kind.name(),
                "deadline_s": step.timeout.as_secs(), "in_window": in_window(step),
            }));
            let mut rows = vec![("Purpose".to_string(), step.kind.purpose().to_string())];
            if let Some(d) = &step.description {
                rows.push(("Notes".into(), d.trim().to_string()));
            }
            if let Some(w) = &step.when {
                rows.push(("Runs only when".into(), w.clone()));
            }
            rows.push((
                "Deadline".into(),
                format!(
                    "{} s{}",
                    step.timeout.as_secs(),
                    if step.retries > 0 {
                        format!(", {} retries", step.retries)
                    } else {
                        String::new()
                    }
                ),
            ));
            rows.push(("Expected evidence".into(), evidence_text(step)));
            rows.push(("Rollback".into(), rollback_text(step)));
            steps.push(json!({
                "number": number, "id": step.id, "kind": step.kind.name(), "rows": rows,
                "params": params_text(step),
            }));
        }
        phases.push(json!({ "name": phase.name, "steps": steps }));
    }
    let window = match (window.first(), window.last()) {
        (Some((_, first)), Some((_, last))) => json!({
            "first": first.id, "last": last.id,
            "steps": window.iter().map(|(_, s)| s.id.clone()).collect::<Vec<_>>(),
            "budget_s": window.iter().map(|(_, s)| s.timeout.as_secs()).sum::<u64>(),
        }),
        _ => Value::Null,
    };
    let ctx = minijinja::context! {
        title => title,
        style => minijinja::Value::from_safe_string(STYLE.to_string()),
        header => minijinja::Value::from(minijinja::value::Serde(header(plan))),
        order => minijinja::Value::from(minijinja::value::Serde(order)),
        window => minijinja::Value::from(minijinja::value::Serde(window)),
        phases => minijinja::Value::from(minijinja::value::Serde(phases)),
    };
    render("procedure.html", template_dir, ctx)
}

/// The procedure as markdown (for a pull request or a wiki page).
pub fn markdown(plan: &Plan) -> String {
    let mut out = format!(
        "# Cutover procedure: {} on {}\n\n| | |\n|---|---|\n",
        plan.runbook_name, plan.env.name
    );
    for (k, v) in header(plan) {
        let _ = writeln!(
            out,
            "| {} | {} |",
            super::markdown::cell(&k),
            super::markdown::cell(&v)
        );
    }
    out.push_str("\n- [ ] Go  - [ ] No-go — approved by ____________ date ________\n");
    for phase in &plan.phases {
        let _ = writeln!(out, "\n## Phase {}\n", phase.name);
        for (i, step) in phase.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "### {}. `{}` ({})\n\n- Purpose: {}",
                i + 1,
                step.id,
                step.kind.name(),
                step.kind.purpose()
            );
            if let Some(d) = &step.description {
                let _ = writeln!(out, "- Notes: {}", d.trim());
            }
            if let Some(w) = &step.when {
                let _ = writeln!(out, "- Runs only when: `{w}`");
            }
            let _ = writeln!(out, "- Expected evidence: {}", evidence_text(step));
            let _ = writeln!(out, "- Rollback: {}", rollback_text(step));
            let p = params_text(step);
            if !p.is_empty() {
                let _ = writeln!(out, "- What it will change:\n\n```json\n{p}\n```");
            }
            out.push_str(
                "\n- [ ] Started  - [ ] Evidence seen  - [ ] Rolled back — initials ______\n",
            );
        }
    }
    out
}
