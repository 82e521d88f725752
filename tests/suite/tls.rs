//! TLS to PostgreSQL as managed databases require it (issue 26): the sandbox's servers accept
//! TLS only, with certificates from the sandbox's own CA; the tool honours libpq's `sslmode` and
//! `sslrootcert`, reads a CA from a secret source (`source_ca`), verifies by default, and
//! explains each refusal without a secret in it.

use crate::common::{text, Sandbox};
use std::path::Path;

/// A CA the sandbox's servers were not signed by, in `dir` (PEM); returns its certificate file.
fn other_ca(dir: &Path) -> std::path::PathBuf {
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
            "-days",
            "30",
            "-subj",
            "/CN=another CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("other.crt")
}

#[test]
fn certificates_are_verified_plaintext_is_refused_and_every_failure_says_what_to_change() {
    let mut sb = Sandbox::start();
    let url = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let port = sb.port("/source_port");
    let (base, query) = url
        .split_once('?')
        .expect("the sandbox's URLs carry TLS settings");
    assert!(query.contains("sslmode=verify-full"), "{query}");
    let mut errors = Vec::new();
    let mut fails = |u: String| {
        let e = sb.try_sql(&u, "SELECT 1").expect_err(&format!(
            "connected with {}",
            u.split_once('?').map(|x| x.1).unwrap_or("")
        ));
        errors.push(e.clone());
        e
    };

    // The sandbox's own URL: verify-full against its CA, and the session is encrypted.
    let rows = sb.sql(
        &url,
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert_eq!(rows, vec![vec![Some("true".to_string())]]);

    // Plaintext is refused by the server, and the error says which sslmode to use.
    let e = fails(format!("{base}?sslmode=disable"));
    assert!(
        e.contains(&format!("127.0.0.1:{port} refuses connections without TLS")),
        "{e}"
    );
    assert!(e.contains("sslmode=verify-full"), "{e}");

    // A certificate signed by another CA fails verify-full and verify-ca, naming the server.
    let dir = tempfile::tempdir().unwrap();
    let other = other_ca(dir.path());
    for mode in ["verify-full", "verify-ca"] {
        let e = fails(format!(
            "{base}?sslmode={mode}&sslrootcert={}",
            other.display()
        ));
        assert!(
            e.contains(&format!(
                "the certificate of 127.0.0.1:{port} is not signed by a CA trusted here"
            )),
            "{mode}: {e}"
        );
        assert!(e.contains(&format!("sslmode={mode}")), "{mode}: {e}");
    }

    // No sslmode: verified by default against the system's CAs, which do not know the sandbox's
    // CA; the error says so and names sslmode.
    let e = fails(base.to_string());
    assert!(
        e.contains("no sslmode in the URL, so cutover verifies (verify-full)"),
        "{e}"
    );
    assert!(
        e.contains("sslrootcert=<file>") && e.contains("sslmode=require"),
        "{e}"
    );

    // A mode libpq does not know is refused before any connection, listing the six.
    let e = fails(format!("{base}?sslmode=verify"));
    assert!(
        e.contains("disable, allow, prefer, require, verify-ca, verify-full"),
        "{e}"
    );

    // require without a CA: encrypted, the certificate not checked.
    let rows = sb.sql(
        &format!("{base}?sslmode=require"),
        "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    assert_eq!(rows, vec![vec![Some("true".to_string())]]);
    // verify-ca with the right CA.
    let ca = sb.var("CUTOVER_STAGING_DB_CA_FILE");
    sb.sql(
        &format!("{base}?sslmode=verify-ca&sslrootcert={ca}"),
        "SELECT 1",
    );

    // Through the tool: the dry-run with a source URL without sslmode stops on the source
    // connection with the same explanation, and changes nothing.
    sb.set_var("CUTOVER_STAGING_SOURCE_DATABASE_URL", base);
    let out = sb.cutover(&["execute", "staging", "--dry-run"]);
    let t = text(&out);
    assert_ne!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains("no sslmode in the URL, so cutover verifies (verify-full)"),
        "{t}"
    );
    assert!(t.contains(&format!("127.0.0.1:{port}")), "{t}");

    // The CA from a secret source: the environment's `source_ca` reads it from Secrets Manager
    // (where a team keeps DigitalOcean's per-cluster CA), and the same URL without sslmode is
    // then verified against it.
    let put_ca = |pem: &str| {
        let cfg = sb.aws("staging");
        crate::common::block_on(async {
            let sm = aws_sdk_secretsmanager::Client::new(&cfg);
            if sm
                .put_secret_value()
                .secret_id("shop-staging/legacy-ca")
                .secret_string(pem)
                .send()
                .await
                .is_err()
            {
                sm.create_secret()
                    .name("shop-staging/legacy-ca")
                    .secret_string(pem)
                    .send()
                    .await
                    .unwrap();
            }
        });
    };
    put_ca(&std::fs::read_to_string(&ca).unwrap());
    let env_file = sb.project.path().join("environments/staging.yaml");
    let env_text = std::fs::read_to_string(&env_file).unwrap();
    let with_ca = env_text.replacen(
        "    name: shop_staging\n",
        "    name: shop_staging\n    source_ca: { from_secrets_manager: shop-staging/legacy-ca }\n",
        1,
    );
    assert_ne!(with_ca, env_text);
    std::fs::write(&env_file, with_ca).unwrap();
    let dry = [
        "execute",
        "staging",
        "--dry-run",
        "--runbook",
        "shop-cutover",
    ];
    let out = sb.cutover(&dry);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(
            "secret source_ca read from Secrets Manager secret shop-staging/legacy-ca: sha256:"
        ),
        "{t}"
    );
    let route = t
        .lines()
        .find(|l| l.contains("route: this machine → source"))
        .unwrap_or_else(|| panic!("no route row:\n{t}"));
    assert!(
        route.contains("sslmode=verify-full against CA ") && route.contains("cutover-ca"),
        "{route}"
    );
    // Another CA in the secret: the source's certificate does not verify, and the error names
    // the server.
    put_ca(&std::fs::read_to_string(&other).unwrap());
    let out = sb.cutover(&dry);
    let t = text(&out);
    assert_ne!(out.status.code(), Some(0), "{t}");
    assert!(
        t.contains(&format!(
            "the certificate of 127.0.0.1:{port} is not signed by a CA trusted here"
        )),
        "{t}"
    );
    sb.assert_no_secrets(&errors);
}
