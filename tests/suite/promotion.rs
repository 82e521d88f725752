//! The promotion gate of production and the exactness of its dry-run, against the sandbox.

use crate::common;

use common::{events, text, Sandbox};
use serde_json::Value;

#[test]
fn production_needs_rehearsals_of_the_same_runbook_and_its_dry_run_batches_are_the_real_ones() {
    let mut sb = Sandbox::start_first();
    sb.set_var("CUTOVER_APPROVER", "alice");

    // A break-glass run passes the gate and heads its audit with the reason and what was missing.
    let check = sb.extra_runbook(
        "gate-check",
        "name: gate-check\nphases:\n  - name: check\n    steps:\n      - { id: identity, kind: aws.assert_account }\n",
    );
    let refused = sb.cutover(&["execute", "production", "--runbook", &check]);
    assert_eq!(refused.status.code(), Some(3), "{}", text(&refused));
    let glass = sb.cutover(&[
        "execute",
        "production",
        "--runbook",
        &check,
        "--break-glass",
        "incident 42: restore service",
    ]);
    assert_eq!(glass.status.code(), Some(0), "{}", text(&glass));
    assert!(text(&glass).contains("BREAK-GLASS"));
    let run = sb.run_ids().pop().unwrap();
    let bypass = events(&sb.records(&run), "gate_bypassed")[0]["data"].clone();
    assert_eq!(bypass["reason"], "incident 42: restore service");
    assert_eq!(bypass["missing"].as_array().unwrap().len(), 2);
    let audit = text(&sb.cutover(&["audit", "show", &run]));
    let head: String = audit.lines().take(4).collect::<Vec<_>>().join("\n");
    assert!(
        head.contains("**BREAK-GLASS.**") && head.contains("incident 42: restore service"),
        "{head}"
    );

    // No rehearsal: refused, naming both environments.
    let out = sb.cutover(&["execute", "production"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let msg = text(&out);
    assert!(
        msg.contains("  - staging: no succeeded rehearsal")
            && msg.contains("  - dev: no succeeded rehearsal"),
        "{msg}"
    );

    let staging = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(staging.status.code(), Some(0), "{}", text(&staging));
    let out = sb.cutover(&["execute", "production"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        !text(&out).contains("  - staging:") && text(&out).contains("  - dev:"),
        "{}",
        text(&out)
    );

    let dev = sb.cutover(&["rehearse", "dev"]);
    assert_eq!(dev.status.code(), Some(0), "{}", text(&dev));
    // The gate passes; without a terminal the approval step needs --approve.
    let out = sb.cutover(&["execute", "production"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(text(&out).contains("--approve approve"), "{}", text(&out));

    // The dry-run's change batches ...
    let dry = sb.cutover(&["execute", "production", "--dry-run", "--output", "json"]);
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    let planned: Vec<Value> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["type"] == "step_planned" && r["step"] == "dns")
        .flat_map(|r| r["data"]["changes"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c.get("document").cloned())
        .collect();
    assert_eq!(
        planned.len(),
        4,
        "three stages and the TTL raise: {planned:?}"
    );
    // ... are exactly what the real execution then submits.
    let real = sb.cutover(&["execute", "production", "--approve", "approve"]);
    assert_eq!(real.status.code(), Some(0), "{}", text(&real));
    // The run id from the first line: `cutover execute production — runbook ..., run <id>`.
    let run = text(&real)
        .lines()
        .find(|l| l.starts_with("cutover execute production"))
        .and_then(|l| l.rsplit("run ").next())
        .unwrap()
        .trim()
        .to_string();
    let records = sb.records(&run);
    let applied = events(&records, "step_applied");
    let submitted = applied.iter().find(|r| r["step"] == "dns").unwrap()["data"]["outputs"]
        ["change_batches"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(planned, submitted);
    let approval =
        applied.iter().find(|r| r["step"] == "approve").unwrap()["data"]["outputs"].clone();
    assert_eq!(approval["approver"], "alice");
    assert_eq!(approval["via"], "--approve");

    // One step of the runbook changes: its digest changes, and the gate refuses again.
    let path = sb.project.path().join("runbooks/shop-cutover.yaml");
    let changed = std::fs::read_to_string(&path)
        .unwrap()
        .replace("samples: 6", "samples: 8");
    std::fs::write(&path, changed).unwrap();
    let out = sb.cutover(&["execute", "production", "--approve", "approve"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("  - staging: no succeeded rehearsal")
            && text(&out).contains("  - dev: no succeeded rehearsal")
    );
    sb.assert_no_secrets(&[]);
}
