//! The printable procedure of a runbook for one environment, for the change board before the
//! run (`cutover runbook render`): each step's purpose, what it will change (its parameters as
//! written, templates unrendered, since Terraform outputs and earlier steps' outputs exist only
//! at run time), the evidence the run will record, what rollback does, and sign-off boxes.
//!
//! Renders a resolved [`Plan`] only; must not contact services or read secrets (parameters are
//! shown as written, so a secret appears as its `{{ secrets.NAME }}` reference).

use super::html::{escape, open, rows_table};
use crate::config::RollbackPolicy;
use crate::runbook::{Plan, PlanStep};
use std::fmt::Write;

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

/// The procedure as a printable HTML document (same stylesheet as the audit; a page per phase).
pub fn html(plan: &Plan) -> String {
    let title = format!(
        "Cutover procedure: {} on {}",
        plan.runbook_name, plan.env.name
    );
    let mut out = open(&title);
    let _ = writeln!(out, "<h1>{}</h1>", escape(&title));
    out.push_str(&rows_table(&header(plan)));
    out.push_str("<p>Each step is journaled before it acts; if any step fails, every step that ran is rolled back, newest first, as its <em>Rollback</em> line says. Check a box when the step's evidence is seen in the run's output or audit.</p>\n");
    out.push_str("<h2>Change board</h2>\n<p><span class=\"box\"></span>Go <span class=\"box\"></span>No-go &nbsp; Window: ______________________</p>\n<div class=\"sign\"><div>Approved by (name, role)</div><div>Signature</div><div>Date</div></div>\n<div class=\"sign\"><div>Operator</div><div>Signature</div><div>Date</div></div>\n");
    for phase in &plan.phases {
        let _ = writeln!(
            out,
            "<section class=\"phase\">\n<h2>Phase {}</h2>",
            escape(&phase.name)
        );
        for (i, step) in phase.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "<div class=\"step\" id=\"step-{}\">\n<h3>{}. <code>{}</code> — {}</h3>",
                escape(&step.id),
                i + 1,
                escape(&step.id),
                escape(step.kind.name())
            );
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
            out.push_str(&rows_table(&rows));
            let p = params_text(step);
            if !p.is_empty() {
                let _ = writeln!(
                    out,
                    "<p><strong>What it will change</strong> (parameters as written):</p><pre>{}</pre>",
                    escape(&p)
                );
            }
            out.push_str("<p><span class=\"box\"></span>Started <span class=\"box\"></span>Evidence seen <span class=\"box\"></span>Rolled back &nbsp; Initials ______ &nbsp; Time (UTC) ________</p>\n</div>\n");
        }
        out.push_str("</section>\n");
    }
    out.push_str("<section class=\"pagebreak\">\n<h2>Close-out</h2>\n<p><span class=\"box\"></span>Audit printed (<code>cutover audit show RUN_ID --format html</code>) <span class=\"box\"></span>Audit verified (<code>cutover audit verify RUN_ID --public-key KEY.pub.pem</code>)</p>\n<p>Run id: ______________________ &nbsp; Chain head: ____________________________________</p>\n<div class=\"sign\"><div>Closed by</div><div>Signature</div><div>Date</div></div>\n</section>\n</body>\n</html>\n");
    out
}

/// The procedure as markdown (for a pull request or a wiki page).
pub fn markdown(plan: &Plan) -> String {
    let mut out = format!(
        "# Cutover procedure: {} on {}\n\n| | |\n|---|---|\n",
        plan.runbook_name, plan.env.name
    );
    for (k, v) in header(plan) {
        let _ = writeln!(out, "| {k} | {} |", v.replace('|', "\\|"));
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
