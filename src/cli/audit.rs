//! `runs`, `status`, `audit show`, `audit verify`.

use super::{print_error, EXIT_FAILED, EXIT_INVALID, EXIT_OK};
use crate::engine::runs::RunState;
use crate::engine::{self, log, runs, signature, ui::OutputFormat};
use crate::report;
use crate::report::model::StepStatus;
use std::path::Path;

/// Audit output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditFormat {
    /// Markdown.
    Md,
    /// Self-contained printable HTML (print stylesheet for A4 and Letter).
    Html,
    /// JSON: the records, chain head and signature.
    Json,
    /// JUnit XML: one test case per step, failed steps as failures.
    Junit,
}

/// `cutover audit migration NAME --env ENV`: for each wave and each of its runs (resolved as
/// the migration command resolves them), the latest run on record with its outcome, write
/// outage and missing writes; `not run` for those without one.
pub fn migration(root: &Path, reference: &str, env: &str, format: AuditFormat) -> i32 {
    if !matches!(format, AuditFormat::Md | AuditFormat::Json) {
        print_error(
            "a migration's summary is rendered as md or json",
            Some("each run's own audit has every format: cutover audit show RUN_ID --format html"),
        );
        return EXIT_INVALID;
    }
    let (m, path, _) = match crate::config::load_migration(root, reference) {
        Ok(m) => m,
        Err(p) => {
            super::print_problems(&p);
            return EXIT_INVALID;
        }
    };
    let list = runs::list(&engine::state_dir(root), Some(env));
    let mut waves = Vec::new();
    for wave in &m.waves {
        let mut rows = Vec::new();
        for (rb, db) in wave.entries() {
            let plan = match crate::runbook::resolve_for(root, &rb, env, db.as_deref()) {
                Ok(p) => p,
                Err(p) => {
                    super::print_problems(&p);
                    return EXIT_INVALID;
                }
            };
            let r = engine::migration::latest(&list, &m.name, &plan.runbook_name, &plan.database);
            rows.push(serde_json::json!({
                "runbook": plan.runbook_name,
                "database": plan.database,
                "run_id": r.map(|r| r.id.clone()),
                "mode": r.and_then(|r| r.mode),
                "status": r.map(|r| r.status.as_str()).unwrap_or("not run"),
                "started_at": r.map(|r| r.started_at.clone()),
                "finished_at": r.and_then(|r| r.finished_at.clone()),
                "write_outage_ms": r.and_then(|r| r.write_outage_ms),
                "reload": r.and_then(|r| r.reload),
                "writes_missing": r.and_then(|r| r.writes_missing),
            }));
        }
        waves.push(serde_json::json!({"wave": wave.name, "on_failure": wave.on_failure.as_str(), "runs": rows}));
    }
    match format {
        AuditFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"migration": m.name, "file": path, "environment": env, "waves": waves}))
                .unwrap_or_default()
        ),
        AuditFormat::Md | AuditFormat::Html | AuditFormat::Junit => {
            println!("# Migration {} in {env}\n", m.name);
            println!("File: `{}`. Each run's own audit: `cutover audit show RUN_ID`.\n", path.display());
            for (i, w) in waves.iter().enumerate() {
                println!("## Wave {} of {}: {} (on failure: {})\n", i + 1, waves.len(), w["wave"].as_str().unwrap_or(""), w["on_failure"].as_str().unwrap_or(""));
                println!("| runbook | database | outcome | run | write outage | acknowledged writes missing |");
                println!("|---|---|---|---|---|---|");
                for r in w["runs"].as_array().into_iter().flatten() {
                    let cell = |k: &str| match &r[k] {
                        serde_json::Value::Null => "-".to_string(),
                        serde_json::Value::String(s) => s.replace('|', "\\|"),
                        v => v.to_string(),
                    };
                    let outage = match (r["write_outage_ms"].as_u64(), r["reload"].as_str()) {
                        (Some(ms), Some(mode)) => format!("{ms} ms (reload: {mode})"),
                        (Some(ms), None) => format!("{ms} ms"),
                        (None, _) => "-".into(),
                    };
                    println!("| {} | {} | {} | {} | {outage} | {} |", cell("runbook"), cell("database"), cell("status"), cell("run_id"), cell("writes_missing"));
                }
                println!();
            }
        }
    }
    EXIT_OK
}

/// `cutover runs [ENV]`.
pub fn runs(root: &Path, env: Option<&str>, output: OutputFormat) -> i32 {
    let list = runs::list(&engine::state_dir(root), env);
    match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        ),
        OutputFormat::Human => {
            if list.is_empty() {
                eprintln!("no runs on record");
            }
            if !list.is_empty() {
                println!(
                    "{:<24} {:<11} {:<9} {:<20} {:<18} {:<14} {:<10} {:<22} STARTED",
                    "RUN",
                    "ENV",
                    "MODE",
                    "STATUS",
                    "RUNBOOK",
                    "DIGEST",
                    "DATABASE",
                    "MIGRATION/WAVE"
                );
            }
            for r in list {
                let migration = r
                    .migration
                    .as_ref()
                    .map(|m| format!("{}/{}", m.name, m.wave))
                    .unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<11} {:<9} {:<20} {:<18} {:<14} {:<10} {:<22} {}",
                    r.id,
                    r.environment,
                    r.mode.map(|m| m.as_str()).unwrap_or("-"),
                    r.status,
                    r.runbook,
                    &r.runbook_digest.get(..12).unwrap_or(""),
                    if r.database.is_empty() {
                        "-"
                    } else {
                        &r.database
                    },
                    migration,
                    r.started_at
                );
            }
        }
    }
    EXIT_OK
}

fn load(root: &Path, run_id: &str) -> Result<Vec<log::Record>, i32> {
    let path = runs::log_path(&engine::state_dir(root), run_id);
    if !path.exists() {
        print_error(
            &format!("no run {run_id} on record"),
            Some("`cutover runs` lists the runs on record"),
        );
        return Err(EXIT_INVALID);
    }
    log::read_verified(&path).map_err(|e| {
        print_error(
            &format!("the event log of run {run_id} does not verify: {e}"),
            Some(&format!("file {}", path.display())),
        );
        EXIT_FAILED
    })
}

/// Seconds from RFC 3339 `ts` to now (0 when unparsable).
fn age_s(ts: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(ts)
        .map(|t| (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds())
        .unwrap_or(0)
}

/// `cutover status RUN_ID`: the run's state from its log, safe to call from another terminal
/// while the run is in progress (it only reads): every step with its outcome, and for the
/// step in progress what it is waiting for (the run's latest progress line).
pub fn status(root: &Path, run_id: &str, output: OutputFormat) -> i32 {
    let records = match load(root, run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let s = runs::summarize(run_id, &records);
    let audit = report::model::build(&records, None);
    let dir = runs::run_dir(&engine::state_dir(root), run_id);
    let progress: Option<serde_json::Value> =
        std::fs::read_to_string(dir.join(runs::PROGRESS_FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
    let last = records.last();
    if output == OutputFormat::Json {
        let steps: Vec<serde_json::Value> = audit
            .steps()
            .map(|st| serde_json::json!({"id": st.id, "kind": st.kind, "phase": st.phase, "status": st.status.label(), "started": st.started, "finished": st.finished, "duration_ms": st.duration_ms, "summary": st.summary}))
            .collect();
        let doc = serde_json::json!({
            "run": s,
            "steps": steps,
            "last_record": last.map(|r| serde_json::json!({"type": r.event, "step": r.step, "ts": r.ts})),
            "progress": if s.status == RunState::Running { progress } else { None },
            "pooler_paused_since": pooler_paused_since(&audit),
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return EXIT_OK;
    }
    println!(
        "run {} ({} {}): {}{}",
        s.id,
        s.mode.map(|m| m.as_str()).unwrap_or("-"),
        s.environment,
        s.status,
        last.filter(|_| s.status == RunState::Running)
            .map(|r| format!(" (last record {} s ago)", age_s(&r.ts)))
            .unwrap_or_default()
    );
    println!(
        "runbook {} (digest {}), started {}",
        s.runbook,
        s.runbook_digest.get(..12).unwrap_or(""),
        s.started_at
    );
    for st in audit.steps() {
        let mark = match st.status {
            StepStatus::Completed | StepStatus::Planned => "✓",
            StepStatus::Failed => "✗",
            StepStatus::Skipped => "-",
            StepStatus::Unfinished => "▸",
            StepStatus::NotRun => "·",
        };
        let detail = match st.status {
            StepStatus::Unfinished => format!(
                "in progress for {} s",
                st.started.as_deref().map(age_s).unwrap_or(0)
            ),
            StepStatus::NotRun => "not yet run".into(),
            _ => format!(
                "{}{}",
                st.duration_ms
                    .map(|ms| format!("{:.1}s  ", ms as f64 / 1000.0))
                    .unwrap_or_default(),
                st.summary
            ),
        };
        println!("  {mark} {:<12} {:<26} {detail}", st.id, st.kind);
        if st.status == StepStatus::Unfinished && s.status == RunState::Running {
            if let Some(p) = progress
                .as_ref()
                .filter(|p| p.get("step").and_then(|v| v.as_str()) == Some(st.id.as_str()))
            {
                let ts = p.get("ts").and_then(|v| v.as_str()).unwrap_or("");
                println!(
                    "      now: {} ({} s ago)",
                    p.get("message").and_then(|v| v.as_str()).unwrap_or(""),
                    age_s(ts)
                );
            }
        }
    }
    let spark = report::timeline::sparkline(&audit.picture, 60);
    if !spark.is_empty() {
        let outage = audit
            .picture
            .outage
            .map(|(a, b)| format!(", write outage {:.0} ms", (b - a) * 1000.0))
            .unwrap_or_default();
        println!(
            "acked writes/s  {spark}  ({} s{outage})",
            audit
                .picture
                .writes
                .as_ref()
                .map(|w| w.1.len())
                .unwrap_or(0)
        );
    }
    if let Some(since) = pooler_paused_since(&audit) {
        println!(
            "pooler paused since {since}: the application's writes wait; `cutover resume {}` finishes the window, `cutover rollback {}` resumes it on the legacy database",
            s.id, s.id
        );
    }
    if let Some(r) = last {
        println!(
            "last record: {} {} at {}",
            r.event,
            r.step.as_deref().unwrap_or(""),
            r.ts
        );
    }
    EXIT_OK
}

/// When the run left its application's pooler paused: the start of its `pgbouncer.pause`
/// step (a [`WindowRole::Pause`] kind) when that step completed or was cut off (a run killed
/// while paused), not rolled back, and no pooler flip ([`WindowRole::Flip`] `pooler: true`)
/// completed after it without being rolled back. A pause step that failed resumed before it
/// failed.
fn pooler_paused_since(audit: &report::model::Audit) -> Option<String> {
    use crate::steps::WindowRole;
    let role = |kind: &str| {
        crate::steps::lookup(kind).map(|k| k.window_role(&crate::steps::Record::new()))
    };
    let mut since = None;
    for st in audit.steps() {
        let undone = st.rollback.as_ref().is_some_and(|r| r.error.is_none());
        match role(&st.kind) {
            Some(WindowRole::Pause) => {
                since = matches!(st.status, StepStatus::Completed | StepStatus::Unfinished)
                    .then(|| st.started.clone())
                    .flatten()
                    .filter(|_| !undone);
            }
            Some(WindowRole::Flip { pooler: true })
                if st.status == StepStatus::Completed && !undone =>
            {
                since = None
            }
            _ => {}
        }
    }
    since
}

/// `cutover audit show RUN_ID --format md|html|json|junit`: the report on stdout.
pub fn show(root: &Path, run_id: &str, format: AuditFormat, template: Option<&Path>) -> i32 {
    let records = match load(root, run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let path = runs::signature_path(&engine::state_dir(root), run_id);
    let sig = match signature::read(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("warning: {e}; the report shows the run as unsigned");
            None
        }
    };
    match format {
        AuditFormat::Md => print!("{}", report::markdown(&records, sig.as_ref())),
        AuditFormat::Html => {
            match report::html::render(&report::model::build(&records, sig.as_ref()), template) {
                Ok(html) => print!("{html}"),
                Err(e) => {
                    print_error(&e.to_string(), None);
                    return EXIT_INVALID;
                }
            }
        }
        AuditFormat::Junit => print!(
            "{}",
            report::junit::render(&report::model::build(&records, sig.as_ref()))
        ),
        AuditFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report::json(&records, sig.as_ref())).unwrap_or_default()
        ),
    }
    EXIT_OK
}

/// `cutover audit verify RUN_ID [--public-key FILE]`: the hash chain, then the signature of its
/// head. Exit 0 when both hold (or the run is unsigned and no key was given, with a warning),
/// 1 when anything was changed, cut off or signed by another key, 2 when the run or key file is
/// missing or unreadable.
pub fn verify(root: &Path, run_id: &str, public_key: Option<&Path>) -> i32 {
    let trusted = match public_key.map(signature::read_public_key).transpose() {
        Ok(k) => k,
        Err(e) => {
            print_error(&e.to_string(), None);
            return EXIT_INVALID;
        }
    };
    let records = match load(root, run_id) {
        Ok(r) => r,
        Err(c) => return c,
    };
    let head = records.last().map(|r| r.hash.as_str()).unwrap_or("");
    let count = records.len() as u64;
    let path = runs::signature_path(&engine::state_dir(root), run_id);
    let file = match signature::read(&path) {
        Ok(f) => f,
        Err(e) => {
            print_error(&e.to_string(), None);
            return EXIT_FAILED;
        }
    };
    let Some(file) = file else {
        if trusted.is_some() {
            print_error(
                &format!("run {run_id} is not signed: no {}", path.display()),
                Some("a run is signed when CUTOVER_SIGNING_KEY or CUTOVER_SIGNING_KEY_FILE holds a key; without a signature a log cut short cannot be told from a complete one"),
            );
            return EXIT_FAILED;
        }
        println!("run {run_id}: {count} records verified; chain head {head}; unsigned");
        eprintln!(
            "warning: run {run_id} is unsigned, so records cut off its end would not be detected"
        );
        return EXIT_OK;
    };
    match signature::check(&file, &path, run_id, count, head, trusted.as_ref()) {
        Ok(c) => {
            println!(
                "run {run_id}: {count} records verified; chain head {head}; signed {} by key {}",
                c.signed_at, c.fingerprint
            );
            if !c.trusted {
                eprintln!("warning: checked against the key the signature file carries; pass --public-key FILE to check who signed");
            }
            EXIT_OK
        }
        Err(e) => {
            print_error(
                &format!("run {run_id}: {e}"),
                Some(&format!("file {}", path.display())),
            );
            EXIT_FAILED
        }
    }
}

/// Warnings for `cutover status RUN_ID`: each replication slot of this run still on the source
/// or target server, with the WAL it retains (bytes), and how to end it. Best effort: a server
/// that cannot be reached gives no warning.
pub async fn slot_warnings(root: &Path, run_id: &str) -> Vec<String> {
    let Ok(records) = load(root, run_id) else {
        return Vec::new();
    };
    let s = runs::summarize(run_id, &records);
    let Ok(env) = crate::config::load_environment(root, &s.environment) else {
        return Vec::new();
    };
    let chosen = (!s.database.is_empty()).then_some(s.database.as_str());
    let Ok((_, env)) = env.for_database(chosen) else {
        return Vec::new();
    };
    let suffix: String = run_id
        .rsplit('-')
        .next()
        .unwrap_or(run_id)
        .to_ascii_lowercase();
    let mut out = Vec::new();
    let providers = crate::providers::Providers::new(env.clone(), run_id, Default::default());
    let _ = providers.read_database_urls().await;
    use crate::providers::postgres::Server;
    let mut clients = Vec::new();
    for (side, url) in [
        (Server::Source, providers.source_url()),
        (Server::Target, providers.target_url()),
    ] {
        let Ok(url) = url else {
            continue;
        };
        let Ok(c) = crate::providers::postgres::connect(&url, side).await else {
            continue;
        };
        let Ok(slots) = crate::providers::postgres::replication::retained(&c, side).await else {
            continue;
        };
        for (name, bytes) in slots
            .iter()
            .filter(|(n, _)| n.contains(&format!("_{suffix}")))
        {
            out.push(format!(
                "replication slot {name} on the {side} retains {bytes} bytes of WAL; once the target is trusted, end the fallback with `cutover execute {} --runbook shop-decommission` (postgres.decommission)",
                s.environment
            ));
        }
        clients.push((side, c, slots));
    }
    // Each relay of the run: its progress on the destination, its lag as the publisher's slot
    // confirms it. The fallback's (`_fb`) publishes on the target; the forward one on the
    // legacy database.
    for (publisher, destination) in [
        (Server::Target, Server::Source),
        (Server::Source, Server::Target),
    ] {
        let on = |side: Server| clients.iter().find(|(s, _, _)| *s == side);
        let (Some((_, pc, slots)), Some((_, dc, _))) = (on(publisher), on(destination)) else {
            continue;
        };
        for name in slots.keys().filter(|n| {
            n.contains(&format!("_{suffix}")) && n.ends_with("_fb") == (publisher == Server::Target)
        }) {
            let Ok(Some(p)) =
                crate::providers::postgres::relay::progress(dc, destination, name).await
            else {
                continue;
            };
            let behind: Option<i64> = pc
                .query_opt(
                    "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                    &[name],
                )
                .await
                .ok()
                .flatten()
                .and_then(|r| r.get(0));
            out.push(format!(
                "relay of slot {name} ({}): {}, last applied LSN {} ({} transaction(s), the last {:.0} s ago), lag {} byte(s){}",
                if publisher == Server::Target { "the fallback to the legacy database" } else { "the forward replication to the target" },
                p.state.as_str(),
                p.lsn,
                p.transactions,
                p.idle_seconds,
                behind.map_or("unknown".to_string(), |b| b.to_string()),
                p.message.map(|m| format!(": {m}")).unwrap_or_default()
            ));
        }
    }
    out
}
