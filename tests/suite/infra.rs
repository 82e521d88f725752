//! Acceptance tests of the infrastructure side on the sandbox: `cutover infra` per account, the
//! plan policy, the account and Organization guards, and the shared S3 run store. Real moto,
//! real Terraform, real PostgreSQL; nothing faked.

use crate::common;

use common::{copy_project, text, Sandbox};
use std::path::Path;

fn replace_in(path: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, s.replacen(from, to, 1)).unwrap();
}

fn code(o: &std::process::Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

#[test]
fn infra_plans_every_account_applies_reviewed_plans_and_enforces_the_policy() {
    let sb = Sandbox::start_long();
    let project = sb.project.path();

    // Apply without a reviewed plan is refused.
    let o = sb.cutover(&["infra", "apply", "staging"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains("no reviewed plan for staging"),
        "{}",
        text(&o)
    );

    // plan --all: the three environments, each in its own account.
    let o = sb.cutover(&["infra", "plan", "--all"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let out = text(&o);
    for env in ["staging", "dev", "production"] {
        let account = sb.var(&format!("CUTOVER_{}_ACCOUNT_ID", env.to_uppercase()));
        assert!(
            out.contains(&format!("{env} (account {account}): 4 to add")),
            "{out}"
        );
        assert!(project
            .join(format!(".cutover/plans/{env}.tfplan"))
            .exists());
    }

    // Two applies of staging at once: exactly one applies, the other is refused naming the holder.
    let a = sb.spawn(&["infra", "apply", "staging"]);
    let b = sb.spawn(&["infra", "apply", "staging"]);
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut codes = [code(&a), code(&b)];
    codes.sort();
    assert_eq!(codes, [0, 3], "a: {}\nb: {}", text(&a), text(&b));
    let refused = if code(&a) == 3 { &a } else { &b };
    assert!(
        text(refused).contains("environment staging is locked by infra apply"),
        "{}",
        text(refused)
    );
    for env in ["dev", "production"] {
        let o = sb.cutover(&["infra", "apply", env]);
        assert_eq!(code(&o), 0, "{}", text(&o));
    }

    // Each state object is in its own account's bucket, and only there.
    for env in ["staging", "dev", "production"] {
        let account = sb.var(&format!("CUTOVER_{}_ACCOUNT_ID", env.to_uppercase()));
        let keys = sb.s3_keys(env, &format!("shop-tfstate-{account}"));
        assert_eq!(
            keys,
            vec![format!("shop/{env}/terraform.tfstate")],
            "bucket of {env}"
        );
    }
    let o = sb.cutover(&["infra", "output", "production"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let outputs: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(outputs["db_instance_id"], "shop-production");

    // A change that replaces the RDS instance's stand-in: refused in production, naming the
    // address; the same change proceeds on staging.
    replace_in(
        &project.join("terraform/sandbox/main.tf"),
        "resource \"terraform_data\" \"rds\" {\n",
        "resource \"terraform_data\" \"rds\" {\n  triggers_replace = \"storage-v2\"\n",
    );
    let o = sb.cutover(&["infra", "plan", "production"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains(
            "REFUSED: plan policy refuses this change in production: replace terraform_data.rds"
        ),
        "{}",
        text(&o)
    );
    assert!(!project.join(".cutover/plans/production.tfplan").exists());
    let o = sb.cutover(&["infra", "apply", "production"]);
    assert_eq!(code(&o), 3, "{}", text(&o));

    let o = sb.cutover(&["infra", "plan", "staging"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(
        text(&o).contains("terraform_data.rds: replace"),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("note: replace terraform_data.rds would be refused in production")
            || !text(&o).contains("REFUSED"),
        "{}",
        text(&o)
    );
    let o = sb.cutover(&["infra", "apply", "staging"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("1 replaced"), "{}", text(&o));

    // The production environment file may allow exactly that address.
    replace_in(
        &project.join("environments/production.yaml"),
        "allow_destroy: []",
        "allow_destroy: [terraform_data.rds]",
    );
    let o = sb.cutover(&["infra", "plan", "production"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    sb.assert_no_secrets(&[]);
}

#[test]
fn wrong_account_or_placement_is_refused_before_any_mutation() {
    let sb = Sandbox::start();
    let project = sb.project.path();
    let dev_account = sb.var("CUTOVER_DEV_ACCOUNT_ID");
    let staging_account = sb.var("CUTOVER_STAGING_ACCOUNT_ID");
    let snapshot = || {
        (
            sb.dns_records("staging"),
            sb.dns_records("dev"),
            sb.rds_snapshots("staging"),
            // The objects only: a list's resourceVersion is the cluster's, which the External
            // Secrets operator moves on every refresh.
            sb.kube_get("staging", "/api/v1/namespaces/shop/secrets")["items"].clone(),
            sb.kube_get("staging", "/apis/apps/v1/namespaces/shop/deployments")["items"].clone(),
            sb.table_fingerprints(&sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL")),
            sb.table_fingerprints(&sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL")),
            sb.s3_keys("staging", &format!("shop-tfstate-{staging_account}")),
            sb.s3_keys("dev", &format!("shop-tfstate-{dev_account}")),
        )
    };
    let before = snapshot();

    // staging's file names a role in the dev account.
    let staging = project.join("environments/staging.yaml");
    let original = std::fs::read_to_string(&staging).unwrap();
    replace_in(
        &staging,
        "role_arn: \"arn:aws:iam::${CUTOVER_STAGING_ACCOUNT_ID:-111111111111}:role/",
        "role_arn: \"arn:aws:iam::${CUTOVER_DEV_ACCOUNT_ID:-222222222222}:role/",
    );
    let o = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    let expected =
        format!("wrong AWS account: expected {staging_account}, STS reports {dev_account}");
    assert!(text(&o).contains(&expected), "{}", text(&o));
    let o = sb.cutover(&["infra", "plan", "staging"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(text(&o).contains(&expected), "{}", text(&o));

    // The right account in the wrong OU, and an SCP that is not in effect.
    std::fs::write(&staging, &original).unwrap();
    replace_in(
        &staging,
        "ou_path: Root/Workloads/NonProd",
        "ou_path: Root/Workloads/Prod",
    );
    replace_in(
        &staging,
        "scps: [DenyLeaveOrganization, DenyRootUser]",
        "scps: [DenyLeaveOrganization, ProtectProductionData]",
    );
    let o = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    assert!(
        text(&o).contains(&format!(
            "account {staging_account} is in OU Root/Workloads/NonProd, expected Root/Workloads/Prod"
        )),
        "{}",
        text(&o)
    );
    assert!(
        text(&o).contains("expected SCPs ProtectProductionData not in effect"),
        "{}",
        text(&o)
    );

    let after = snapshot();
    assert!(
        before == after,
        "state changed although the run was refused"
    );
    // The refusals are on record, and no step started.
    for run in sb.run_ids() {
        let events: Vec<String> = sb
            .records(&run)
            .iter()
            .map(|r| r["type"].as_str().unwrap().to_string())
            .collect();
        assert!(events.contains(&"run_refused".to_string()), "{events:?}");
        assert!(!events.iter().any(|e| e.starts_with("step_")), "{events:?}");
    }

    // Restored, the same rehearsal passes the guards.
    std::fs::write(&staging, &original).unwrap();
    let o = sb.cutover(&["execute", "staging", "--dry-run"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
}

#[test]
fn s3_store_shares_runs_between_clones_and_grants_the_lock_once() {
    let mut sb = Sandbox::start_first();
    sb.set_var("CUTOVER_STORE", "s3");
    // Runs are signed: the signature travels through the bucket with the log.
    let (key, public) = common::ed25519_keypair(sb.project.path(), "signing");
    sb.set_var("CUTOVER_SIGNING_KEY_FILE", key.to_str().unwrap());
    let second = tempfile::tempdir().unwrap();
    copy_project(second.path());

    let o = sb.cutover(&["rehearse", "staging"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let run = sb.run_ids().pop().unwrap();
    let o = common::run_with_timeout(
        sb.command_in(second.path(), &["runs", "--output", "json"]),
        120,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], run.as_str());
    assert_eq!(listed[0]["status"], "succeeded");
    let o = common::run_with_timeout(
        sb.command_in(
            second.path(),
            &[
                "audit",
                "verify",
                &run,
                "--public-key",
                public.to_str().unwrap(),
            ],
        ),
        60,
    );
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert!(text(&o).contains("signed"), "{}", text(&o));

    // A short runbook that holds the lock for about two seconds.
    let app = sb.var("CUTOVER_STAGING_APP_URL");
    let hold = sb.project.path().join("runbooks/hold.yaml");
    std::fs::write(
        &hold,
        format!(
            "name: hold\nphases:\n  - name: hold\n    steps:\n      - {{ id: health, kind: http.check, with: {{ url: \"{app}/healthz\", consecutive: 3, interval: 1s }}, timeout: 30s }}\n"
        ),
    )
    .unwrap();
    // Twenty races: each pair starts together, one holds the lock about two seconds, and the
    // other must be refused, never both proceed.
    let mut proceeded = 0;
    for trial in 0..20 {
        let a = sb.spawn(&["rehearse", "staging", "--runbook", "hold"]);
        let b = sb.spawn(&["rehearse", "staging", "--runbook", "hold"]);
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let mut codes = [code(&a), code(&b)];
        codes.sort();
        assert_eq!(
            codes,
            [0, 3],
            "trial {trial}\na: {}\nb: {}",
            text(&a),
            text(&b)
        );
        let refused = if code(&a) == 3 { &a } else { &b };
        assert!(
            text(refused).contains("environment staging (runbook hold) is locked by run"),
            "{}",
            text(refused)
        );
        proceeded += 1;
    }
    assert_eq!(proceeded, 20);
    // The lock object is gone after the last run, and every run's log is in the bucket.
    let account = sb.var("CUTOVER_STAGING_ACCOUNT_ID");
    let keys = sb.s3_keys("staging", &format!("shop-tfstate-{account}"));
    assert!(!keys.iter().any(|k| k.ends_with(".lock")), "{keys:?}");
    for file in ["/events.jsonl", "/signature.json"] {
        assert_eq!(
            keys.iter()
                .filter(|k| k.starts_with("cutover/runs/") && k.ends_with(file))
                .count(),
            21,
            "{keys:?}"
        );
    }
}
