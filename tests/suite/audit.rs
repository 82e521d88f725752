//! The audit of real sandbox runs: the printable HTML through headless Chromium and pdftotext,
//! the JUnit report through an independent JUnit parser (junitparser), `audit verify` against
//! every mutation of a signed log, `status` from a second process during a run, and a corpus of
//! secret values that must appear in no output format, log or file the tool writes.

use crate::common;

use base64::Engine as _;
use common::{run_with_timeout, text, Sandbox, SHOP_STEP_IDS as STEP_IDS};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// RFC 3986 percent-encoding of everything but unreserved characters.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The forms a secret could leak in: raw, base64 (padded and not), URL-encoded, JSON-escaped,
/// and for a multi-line value each distinctive line.
fn forms(secret: &str) -> Vec<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let b64np = base64::engine::general_purpose::STANDARD_NO_PAD;
    let mut v = vec![
        secret.to_string(),
        b64.encode(secret),
        b64np.encode(secret),
        urlencode(secret),
        serde_json::to_string(secret)
            .unwrap()
            .trim_matches('"')
            .to_string(),
    ];
    for line in secret.lines() {
        if line.len() >= 12 && !line.starts_with("-----") {
            v.push(line.to_string());
        }
    }
    v
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn cutover_ok(sb: &Sandbox, args: &[&str]) -> String {
    let out = sb.cutover(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "cutover {args:?}: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs junitparser over `xml`; returns `(suite, case, result)` per test case, where result is
/// `passed`, `failure`, `error` or `skipped`.
fn junit_cases(sb: &Sandbox, xml: &str) -> Vec<(String, String, String)> {
    let venv = std::env::var("CUTOVER_SANDBOX_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| common::repo().join(".sandbox/venv"));
    let file = sb.project.path().join("junit-read.xml");
    std::fs::write(&file, xml).unwrap();
    let script = r#"
import json, sys
from junitparser import JUnitXml, Failure, Error, Skipped
out = []
for suite in JUnitXml.fromfile(sys.argv[1]):
    for case in suite:
        kinds = [type(r).__name__.lower() for r in case.result]
        out.append([suite.name, case.name, kinds[0] if kinds else "passed"])
print(json.dumps(out))
"#;
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", script])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "junitparser: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn printed_signed_and_parsed_audits_of_real_runs_hold_and_leak_no_secret() {
    let mut sb = Sandbox::start_long();
    let project = sb.project.path().to_path_buf();
    let nonce = uuid::Uuid::new_v4().simple().to_string();

    // --- The secret corpus, put into the sandbox through the real paths. ---
    // 1. The application's database password on the target: URL-hostile characters, quotes,
    //    backslash, space, non-ASCII; reaches the Secret through `secrets.target_app_database_url`.
    let password = format!("Pw:{nonce}/?#@%&+= \"q'\\é✓");
    let app_url = sb.var("CUTOVER_STAGING_TARGET_APP_DATABASE_URL");
    let (scheme_user, rest) = app_url.rsplit_once('@').unwrap();
    let (scheme, userinfo) = scheme_user.split_once("://").unwrap();
    let user = userinfo.split(':').next().unwrap().to_string();
    sb.sql(
        &sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL"),
        &format!(
            "ALTER ROLE \"{user}\" PASSWORD '{}'",
            password.replace('\'', "''")
        ),
    );
    let new_app_url = format!("{scheme}://{user}:{}@{rest}", urlencode(&password));
    // It is read from moto's Secrets Manager (key `database_url` of a JSON secret), as the
    // committed environment says.
    let cfg = sb.aws("staging");
    let secret_json = serde_json::json!({"database_url": new_app_url, "note": "json-escaped"});
    common::block_on(async {
        aws_sdk_secretsmanager::Client::new(&cfg)
            .put_secret_value()
            .secret_id("shop-staging/app")
            .secret_string(secret_json.to_string())
            .send()
            .await
            .unwrap();
    });
    // 2. A multi-line token the runbook writes into the same Secret (`secrets.api_token`), read
    //    from an SSM SecureString parameter.
    let token = format!("-----BEGIN TOKEN-----\nline-one-{nonce}\t\"quoted\" \\ back\nzweite Zeile ✓ {nonce}-end\n-----END TOKEN-----");
    common::block_on(async {
        aws_sdk_ssm::Client::new(&cfg)
            .put_parameter()
            .name("/shop/staging/api-token")
            .value(&token)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .send()
            .await
            .unwrap();
    });
    let env_file = project.join("environments/staging.yaml");
    let env_text = std::fs::read_to_string(&env_file).unwrap().replace(
        "    key: database_url\n",
        "    key: database_url\n  api_token:\n    from_ssm: /shop/staging/api-token\n",
    );
    assert!(env_text.contains("/shop/staging/api-token"));
    std::fs::write(&env_file, env_text).unwrap();
    let rb_file = project.join("runbooks/shop-cutover.yaml");
    // The application's Secret gets the token after the pooler's flip (its database URL names
    // the pooler and never changes; the target's URL reaches the pooler's [databases] Secret).
    let rb_text = std::fs::read_to_string(&rb_file).unwrap().replace(
        "      - { id: health,",
        "      - { id: token, kind: k8s.flip_secret, with: { namespace: shop, secret: shop-db, data: { API_TOKEN: \"{{ secrets.api_token }}\" } } }\n      - { id: health,",
    );
    assert!(rb_text.contains("secrets.api_token"));
    std::fs::write(&rb_file, rb_text).unwrap();
    // 3. The signing key itself (multi-line PEM), passed in the environment.
    let (key, public) = common::ed25519_keypair(&project, "signing");
    let (_, other_public) = common::ed25519_keypair(&project, "other");
    let pem = std::fs::read_to_string(&key).unwrap();
    sb.set_var("CUTOVER_SIGNING_KEY", &pem);
    // The scan below looks for the URL-encoded form too: it finds the password in the URL.
    assert!(forms(&password)
        .iter()
        .any(|f| f.len() > 20 && new_app_url.contains(f.as_str())));
    let mut corpus = vec![
        password.clone(),
        new_app_url.clone(),
        token.clone(),
        pem.trim().to_string(),
        secret_json.to_string(),
    ];
    corpus.extend(sb.passwords());

    // --- A rehearsal with --output json, watched with `status` from a second process. ---
    let (mut child, out_path, err_path) =
        sb.spawn_logged(&["rehearse", "staging", "--output", "json"]);
    let started = Instant::now();
    let mut statuses = Vec::new();
    let mut saw_waiting = false;
    let code = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st.code();
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "rehearsal hung"
        );
        if let Some(run) = sb.run_ids().pop() {
            let st = sb.cutover(&["status", &run]);
            let t = text(&st);
            if t.contains(": running") && t.contains("▸ dns") && t.contains("now: waiting") {
                saw_waiting = true;
            }
            statuses.push(t);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(
        saw_waiting,
        "no status showed the dns step and what it awaits while running:\n{}",
        statuses.join("\n---\n")
    );
    // One JSON event per line; the first is run_started with the run id.
    let events: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(events[0]["type"], "run_started");
    let run = events[0]["data"]["run_id"].as_str().unwrap().to_string();
    assert!(events.iter().any(|e| e["type"] == "progress"));
    assert_eq!(events.last().unwrap()["type"], "run_finished");
    // The Secret really holds the corpus values (they went through the run, not around it).
    assert_eq!(
        sb.secret_value("staging", "shop-db", "API_TOKEN")
            .as_deref(),
        Some(token.as_str())
    );
    let pooler_file = sb
        .secret_value("staging", "pgbouncer-databases", "databases.ini")
        .unwrap();
    let entry = cutover::providers::pgbouncer::DatabasesFile::parse(&pooler_file)
        .unwrap()
        .get("shop_staging")
        .cloned();
    assert_eq!(
        entry,
        Some(cutover::providers::pgbouncer::Upstream::from_url(&new_app_url).unwrap())
    );

    // --- HTML printed to PDF by headless Chromium; pdftotext; the first page kept as PNG. ---
    let html = cutover_ok(&sb, &["audit", "show", &run, "--format", "html"]);
    // The picture of the run: the write outage window and one mark per DNS stage, each with its
    // weight and verdict.
    let svg = html
        .split("<svg class=\"timeline\"")
        .nth(1)
        .and_then(|rest| rest.split("</svg>").next())
        .expect("the audit has the timeline picture");
    assert_eq!(svg.matches("class=\"outage\"").count(), 1, "{svg}");
    assert_eq!(svg.matches("class=\"dns-stage\"").count(), 3, "{svg}");
    for (stage, weight) in [(1, 10), (2, 50), (3, 100)] {
        assert!(svg.contains(&format!("data-stage=\"{stage}\"")), "{svg}");
        assert!(svg.contains(&format!("DNS {weight}% pass")), "{svg}");
    }
    assert!(svg.contains("class=\"writes\""), "{svg}");
    assert!(!html.contains("<script"));
    let html_file = project.join("audit.html");
    std::fs::write(&html_file, &html).unwrap();
    let pdf = project.join("audit.pdf");
    let mut chrome = Command::new("chromium");
    chrome
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-pdf-header-footer",
        ])
        .arg(format!(
            "--user-data-dir={}",
            project.join("chromium-profile").display()
        ))
        .arg(format!("--print-to-pdf={}", pdf.display()))
        .arg(format!("file://{}", html_file.display()));
    let printed = run_with_timeout(chrome, 120);
    assert!(pdf.exists(), "chromium printed no PDF: {}", text(&printed));
    let pdftext = Command::new("pdftotext")
        .arg(&pdf)
        .arg("-")
        .output()
        .unwrap();
    assert!(pdftext.status.success());
    let pdftext = String::from_utf8_lossy(&pdftext.stdout).into_owned();
    assert!(
        pdftext.contains("write outage") && pdftext.contains("DNS 50% pass"),
        "the printed audit lacks the picture's labels:\n{pdftext}"
    );
    for step in STEP_IDS {
        assert!(
            pdftext.split_whitespace().any(|w| w == step),
            "the printed audit lacks step {step}"
        );
    }
    let records = sb.records(&run);
    let head = records.last().unwrap()["hash"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        pdftext.contains(&head),
        "the printed audit lacks the chain head {head}"
    );
    let artifacts = common::repo().join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let png_prefix = artifacts.join("audit-first-page");
    let ppm = Command::new("pdftoppm")
        .args(["-png", "-r", "80", "-f", "1", "-l", "1", "-singlefile"])
        .arg(&pdf)
        .arg(&png_prefix)
        .output()
        .unwrap();
    assert!(ppm.status.success(), "{}", text(&ppm));
    let png = std::fs::read(png_prefix.with_extension("png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // --- JUnit of the successful run: every step a case, none failed. ---
    let junit_ok = cutover_ok(&sb, &["audit", "show", &run, "--format", "junit"]);
    let cases = junit_cases(&sb, &junit_ok);
    // Every step of the shop runbook, and the token's flip this test added.
    assert_eq!(cases.len(), STEP_IDS.len() + 1, "{cases:?}");
    assert!(
        cases
            .iter()
            .all(|(_, _, r)| r == "passed" || r == "skipped"),
        "{cases:?}"
    );

    // --- A failed run: its failed step is a JUnit failure; the rest pass or are skipped. ---
    let failing = sb.extra_runbook(
        "failing",
        "name: failing\nphases:\n  - name: check\n    steps:\n      - { id: identity, kind: aws.assert_account }\n      - { id: unreachable, kind: http.check, with: { url: \"http://127.0.0.1:9/healthz\", interval: 200ms, consecutive: 1 }, timeout: 2s }\n      - { id: after, kind: aws.assert_account }\n",
    );
    let failed = sb.cutover(&["rehearse", "staging", "--runbook", &failing]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    let failed_run = sb
        .run_ids()
        .into_iter()
        .find(|r| *r != run && sb.records(r)[0]["data"]["runbook"] == "failing")
        .unwrap();
    let junit_failed = cutover_ok(&sb, &["audit", "show", &failed_run, "--format", "junit"]);
    let cases = junit_cases(&sb, &junit_failed);
    let result = |id: &str| {
        cases
            .iter()
            .find(|(_, c, _)| c == id)
            .map(|(_, _, r)| r.clone())
            .unwrap_or_else(|| panic!("no case {id}: {cases:?}"))
    };
    assert_eq!(result("identity"), "passed");
    assert_eq!(result("unreachable"), "failure");
    assert_eq!(result("after"), "skipped");

    // --- Regression (issue 14): SIGTERM, as a CI cancel sends, is handled like SIGINT: a
    // `run_interrupted` record naming the signal, exit 130, and `resume` can continue. ---
    let waiting = sb.extra_runbook(
        "waiting",
        "name: waiting\nphases:\n  - name: check\n    steps:\n      - { id: identity, kind: aws.assert_account }\n      - { id: unreachable, kind: http.check, with: { url: \"http://127.0.0.1:9/healthz\", interval: 200ms, consecutive: 1 }, timeout: 300s }\n",
    );
    let (mut child, _out, err) = sb.spawn_logged(&["rehearse", "staging", "--runbook", &waiting]);
    let start = std::time::Instant::now();
    let term_run = loop {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(120),
            "the waiting step never started: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        let found = sb.run_ids().into_iter().find(|r| {
            let recs = sb.records(r);
            // A log just created may hold no record yet.
            recs.first()
                .is_some_and(|first| first["data"]["runbook"] == "waiting")
                && recs
                    .iter()
                    .any(|x| x["type"] == "step_started" && x["step"] == "unreachable")
        });
        if let Some(r) = found {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(
        child.wait().unwrap().code(),
        Some(130),
        "{}",
        std::fs::read_to_string(&err).unwrap()
    );
    let recs = sb.records(&term_run);
    let last = recs.last().unwrap();
    assert_eq!(last["type"], "run_interrupted", "{last}");
    assert_eq!(last["data"]["signal"], "SIGTERM", "{last}");
    let rb = sb.cutover(&["rollback", &term_run]);
    assert_eq!(rb.status.code(), Some(1), "{}", text(&rb));

    // --- Every format, the procedure and status, for the secret scan. ---
    let mut texts = vec![
        stdout.clone(),
        stderr.clone(),
        html.clone(),
        junit_ok,
        junit_failed,
    ];
    for r in [&run, &failed_run] {
        for f in ["md", "json", "html", "junit"] {
            texts.push(cutover_ok(&sb, &["audit", "show", r, "--format", f]));
        }
        texts.push(cutover_ok(&sb, &["status", r]));
        texts.push(cutover_ok(&sb, &["status", r, "--output", "json"]));
    }
    let procedure = cutover_ok(
        &sb,
        &["runbook", "render", "shop-cutover", "--env", "staging"],
    );
    for step in STEP_IDS {
        assert!(
            procedure.contains(&format!("<code>{step}</code>")),
            "procedure lacks {step}"
        );
    }
    assert!(procedure.contains("Rollback") && procedure.contains("class=\"box\""));
    texts.push(procedure);
    texts.push(pdftext);
    texts.extend(statuses);

    // --- audit verify: the intact signed log passes; every mutation fails. ---
    let verify = |args: &[&str]| -> Option<i32> {
        let mut all = vec!["audit", "verify", &run];
        all.extend_from_slice(args);
        run_with_timeout(sb.command(&all), 60).status.code()
    };
    let pubkey = public.to_str().unwrap();
    assert_eq!(verify(&["--public-key", pubkey]), Some(0));
    assert_eq!(
        verify(&["--public-key", other_public.to_str().unwrap()]),
        Some(1),
        "a wrong public key passed"
    );
    let log = sb.log_path(&run);
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    let n = lines.len();
    let write = |ls: &[String]| std::fs::write(&log, ls.join("\n") + "\n").unwrap();
    let owned: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let mut caught = 0;
    for i in 0..n {
        // Edit: one digit of the record's timestamp.
        let mut edited = owned.clone();
        let pos = edited[i].find("\"ts\":\"").unwrap() + 6;
        let mut b = edited[i].clone().into_bytes();
        b[pos + 3] = if b[pos + 3] == b'6' { b'7' } else { b'6' };
        edited[i] = String::from_utf8(b).unwrap();
        write(&edited);
        assert_eq!(
            verify(&["--public-key", pubkey]),
            Some(1),
            "edit of record {i} not caught"
        );
        // Delete.
        let mut deleted = owned.clone();
        deleted.remove(i);
        write(&deleted);
        assert_eq!(
            verify(&["--public-key", pubkey]),
            Some(1),
            "deletion of record {i} not caught"
        );
        // Swap with the next one.
        if i + 1 < n {
            let mut swapped = owned.clone();
            swapped.swap(i, i + 1);
            write(&swapped);
            assert_eq!(
                verify(&["--public-key", pubkey]),
                Some(1),
                "swap of records {i} and {} not caught",
                i + 1
            );
        }
        // Truncate: keep only the first i records (0 = an empty log).
        write(&owned[..i].to_vec());
        assert_eq!(
            verify(&["--public-key", pubkey]),
            Some(1),
            "truncation to {i} records not caught"
        );
        caught += 1;
    }
    assert_eq!(caught, n);
    std::fs::write(&log, &original).unwrap();
    assert_eq!(verify(&["--public-key", pubkey]), Some(0));
    // An unsigned copy cannot pass for a signed one.
    let sig = log.with_file_name("signature.json");
    let sig_text = std::fs::read_to_string(&sig).unwrap();
    std::fs::remove_file(&sig).unwrap();
    assert_eq!(verify(&["--public-key", pubkey]), Some(1));
    std::fs::write(&sig, sig_text).unwrap();

    // --- A password whose `%` starts no valid escape, then a multi-byte character (issue 14:
    //     it once panicked in the URL decoder and printed the password): exit 2, and the scan
    //     below covers what it printed. ---
    let broken = format!("%a\u{e9}{nonce}-pct");
    let (head, tail) = sb
        .var("CUTOVER_STAGING_SOURCE_DATABASE_URL")
        .split_once('@')
        .map(|(h, t)| (h.to_string(), t.to_string()))
        .unwrap();
    let user_part = head.rsplit_once(':').unwrap().0.to_string();
    let mut bad = sb.command(&["execute", "staging", "--dry-run"]);
    bad.env(
        "CUTOVER_STAGING_SOURCE_DATABASE_URL",
        format!("{user_part}:{broken}@{tail}"),
    );
    let out = common::run_with_timeout(bad, 120);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    texts.push(text(&out));
    corpus.push(broken);

    // --- No secret in any output, format, log or file the tool wrote. ---
    texts.extend(sb.outputs.lock().unwrap().iter().cloned());
    let mut files = Vec::new();
    files_under(&project.join(".cutover"), &mut files);
    assert!(files.iter().any(|f| f.ends_with("signature.json")));
    for f in &files {
        texts.push(String::from_utf8_lossy(&std::fs::read(f).unwrap()).into_owned());
    }
    for secret in &corpus {
        for form in forms(secret) {
            for t in &texts {
                assert!(
                    !t.contains(&form),
                    "a secret leaked (form {:?}…) into:\n{}",
                    form.chars().take(6).collect::<String>(),
                    t.replace(&form, "<<SECRET>>")
                        .chars()
                        .take(4000)
                        .collect::<String>()
                );
            }
        }
    }
}
