//! Seeding the stand-ins: the shop and letters databases on the legacy source, empty databases
//! and the application roles on the target, and in moto an Organization whose member accounts are the
//! three environments, each with its Terraform state bucket, hosted zone and legacy record, RDS
//! instance, EKS cluster and WAF web ACL associated with the environment's load balancer.

use crate::state::{alb_arn, State, ENVIRONMENTS, REGION};
use anyhow::{anyhow, Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_sts::config::Credentials;
use cutover::providers::postgres::Server;

/// Rows of the example `shop` database: customers, orders, order_items.
pub const CUSTOMERS: i64 = 10_000;
/// Orders on the source (the issue asks for at least 100,000).
pub const ORDERS: i64 = 100_000;
/// Order items on the source.
pub const ORDER_ITEMS: i64 = 200_000;

/// Connects over TLS, verified with the sandbox's CA (the URL's `sslmode` and `sslrootcert`),
/// through the same client code `cutover` uses.
async fn connect(url: &str, side: Server) -> Result<tokio_postgres::Client> {
    cutover::providers::postgres::connect(url, side)
        .await
        .context("connect")
}

/// Creates the legacy `shop` databases (one per environment) and the target's empty ones.
pub async fn databases(s: &State) -> Result<()> {
    let src_admin = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres{}",
        s.source_password,
        s.source_port,
        s.tls_query()
    );
    let tgt_admin = format!(
        "postgres://postgres:{}@127.0.0.1:{}/postgres{}",
        s.target_password,
        s.target_port,
        s.tls_query()
    );
    let src = connect(&src_admin, Server::Source).await?;
    src.batch_execute(&format!(
        "CREATE ROLE shop LOGIN PASSWORD '{}'",
        s.app_password
    ))
    .await?;
    src.batch_execute("CREATE DATABASE shop_seed OWNER shop")
        .await?;
    let seed = connect(
        &format!(
            "postgres://shop:{}@127.0.0.1:{}/shop_seed{}",
            s.app_password,
            s.source_port,
            s.tls_query()
        ),
        Server::Source,
    )
    .await?;
    seed.batch_execute(&format!(
        "CREATE TABLE customers (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL, created_at timestamptz NOT NULL);
         CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id), status text NOT NULL, total_cents bigint NOT NULL, created_at timestamptz NOT NULL);
         CREATE TABLE order_items (id bigserial PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders(id), sku text NOT NULL, quantity int NOT NULL, price_cents bigint NOT NULL);
         CREATE INDEX orders_customer_id ON orders (customer_id);
         CREATE INDEX order_items_order_id ON order_items (order_id);
         INSERT INTO customers (email, name, created_at)
           SELECT 'customer' || g || '@example.com', 'Customer ' || g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, {CUSTOMERS}) g;
         INSERT INTO orders (customer_id, status, total_cents, created_at)
           SELECT 1 + (g % {CUSTOMERS}), (ARRAY['paid','shipped','refunded'])[1 + g % 3], 100 + (g * 37) % 50000, timestamptz '2024-01-01 00:00:00+00' + g * interval '20 seconds' FROM generate_series(1, {ORDERS}) g;
         INSERT INTO order_items (order_id, sku, quantity, price_cents)
           SELECT 1 + (g % {ORDERS}), 'SKU-' || (g % 500), 1 + g % 4, 100 + (g * 13) % 9000 FROM generate_series(1, {ORDER_ITEMS}) g;
         ANALYZE;"
    ))
    .await
    .context("seeding shop")?;
    drop(seed);
    let tgt = connect(&tgt_admin, Server::Target).await?;
    tgt.batch_execute(&format!(
        "CREATE ROLE shop LOGIN PASSWORD '{}'",
        s.app_password
    ))
    .await?;
    for env in ENVIRONMENTS {
        let db = State::database(env);
        // The seed database may still have the seeding session's backend exiting.
        let mut tries = 0;
        loop {
            match src
                .batch_execute(&format!(
                    "CREATE DATABASE {db} TEMPLATE shop_seed OWNER shop"
                ))
                .await
            {
                Ok(()) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context(format!("CREATE DATABASE {db}")),
            }
        }
        // Empty, as a new RDS database is: the copy brings the tables with their owners and
        // privileges as on the source (the application's role owns them there).
        tgt.batch_execute(&format!("CREATE DATABASE {db} OWNER shop"))
            .await?;
    }
    src.batch_execute("DROP DATABASE shop_seed").await?;
    letters(s, &src, &tgt).await?;
    src.batch_execute(&crate::rights::source_admin_sql(&s.source_admin_password))
        .await
        .context("the legacy server's admin")?;
    tgt.batch_execute(&crate::rights::target_admin_sql(&s.target_admin_password))
        .await
        .context("the target's master user")
}

/// Mailboxes of the second service, `letters`.
pub const MAILBOXES: i64 = 1_000;
/// Letters on its source.
pub const LETTERS: i64 = 20_000;

/// The second service's databases: a schema unlike shop's (a composite primary key, a standalone
/// sequence as a column default, a foreign key), owned by its own role, on the same servers.
async fn letters(
    s: &State,
    src: &tokio_postgres::Client,
    tgt: &tokio_postgres::Client,
) -> Result<()> {
    for c in [src, tgt] {
        c.batch_execute(&format!(
            "CREATE ROLE letters LOGIN PASSWORD '{}'",
            s.app_password
        ))
        .await?;
    }
    for env in ENVIRONMENTS {
        let db = State::letters_database(env);
        src.batch_execute(&format!("CREATE DATABASE {db} OWNER letters"))
            .await?;
        tgt.batch_execute(&format!("CREATE DATABASE {db} OWNER letters"))
            .await?;
        let c = connect(&s.letters_url(env, "letters", false), Server::Source).await?;
        c.batch_execute(&format!(
            "CREATE SEQUENCE letter_number START 1000;
             CREATE TABLE mailboxes (id bigint PRIMARY KEY, address text NOT NULL UNIQUE);
             CREATE TABLE letters (mailbox_id bigint NOT NULL REFERENCES mailboxes(id), number bigint NOT NULL DEFAULT nextval('letter_number'), subject text NOT NULL, body text NOT NULL, sent_at timestamptz NOT NULL, PRIMARY KEY (mailbox_id, number));
             INSERT INTO mailboxes SELECT g, 'box' || g || '@letters.example.com' FROM generate_series(1, {MAILBOXES}) g;
             INSERT INTO letters (mailbox_id, subject, body, sent_at)
               SELECT 1 + g % {MAILBOXES}, 'letter ' || g, repeat('dear reader ', 1 + g % 20), timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute' FROM generate_series(1, {LETTERS}) g;
             ANALYZE;"
        ))
        .await
        .context("seeding letters")?;
    }
    Ok(())
}

fn base_config(s: &State, creds: Credentials) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .endpoint_url(format!("http://127.0.0.1:{}", s.moto_port))
        .credentials_provider(aws_sdk_sts::config::SharedCredentialsProvider::new(creds))
        .build()
}

async fn assume(s: &State, mgmt: &SdkConfig, account: &str) -> Result<SdkConfig> {
    let out = aws_sdk_sts::Client::new(mgmt)
        .assume_role()
        .role_arn(format!(
            "arn:aws:iam::{account}:role/OrganizationAccountAccessRole"
        ))
        .role_session_name("cutover-sandbox-seed")
        .send()
        .await
        .context("sts:AssumeRole")?;
    let c = out.credentials().ok_or_else(|| anyhow!("no credentials"))?;
    Ok(base_config(
        s,
        Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            None,
            "seed",
        ),
    ))
}

/// An SDK configuration with the role of `env`'s account assumed, as `cutover` would have it.
pub async fn account_config(s: &State, env: &str) -> Result<SdkConfig> {
    let mgmt = base_config(
        s,
        Credentials::new("sandbox", "sandbox", None, None, "sandbox"),
    );
    let account = s
        .accounts
        .get(env)
        .ok_or_else(|| anyhow!("no account for {env}"))?
        .clone();
    assume(s, &mgmt, &account).await
}

/// The OU tree and SCPs of the shop Organization, as the environment files expect them:
/// Root/Workloads/{NonProd (staging, dev), Prod (production)}; DenyLeaveOrganization and
/// DenyRootUser on Workloads, ProtectProductionData on Prod. Fills `s.management_account`.
async fn organization_units(org: &aws_sdk_organizations::Client, s: &mut State) -> Result<()> {
    use aws_sdk_organizations::types::PolicyType;
    let described = org.describe_organization().send().await?;
    s.management_account = described
        .organization()
        .and_then(|o| o.master_account_id())
        .unwrap_or_default()
        .to_string();
    let roots = org
        .list_roots()
        .send()
        .await
        .context("organizations:ListRoots")?;
    let root_id = roots
        .roots()
        .first()
        .and_then(|r| r.id())
        .ok_or_else(|| anyhow!("no organization root"))?
        .to_string();
    let _ = org
        .enable_policy_type()
        .root_id(&root_id)
        .policy_type(PolicyType::ServiceControlPolicy)
        .send()
        .await;
    let ou = |parent: String, name: &'static str| async move {
        org.create_organizational_unit()
            .parent_id(parent)
            .name(name)
            .send()
            .await
            .context("organizations:CreateOrganizationalUnit")
            .map(|o| {
                o.organizational_unit()
                    .and_then(|u| u.id())
                    .unwrap_or_default()
                    .to_string()
            })
    };
    let workloads = ou(root_id.clone(), "Workloads").await?;
    let nonprod = ou(workloads.clone(), "NonProd").await?;
    let prod = ou(workloads.clone(), "Prod").await?;
    for (name, target) in [
        ("DenyLeaveOrganization", &workloads),
        ("DenyRootUser", &workloads),
        ("ProtectProductionData", &prod),
    ] {
        let content = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Action": ["organizations:LeaveOrganization"], "Resource": "*"}]
        });
        let policy = org
            .create_policy()
            .name(name)
            .description(format!("sandbox SCP {name}"))
            .r#type(PolicyType::ServiceControlPolicy)
            .content(content.to_string())
            .send()
            .await
            .context("organizations:CreatePolicy")?;
        let id = policy
            .policy()
            .and_then(|p| p.policy_summary())
            .and_then(|p| p.id())
            .unwrap_or_default()
            .to_string();
        org.attach_policy()
            .policy_id(id)
            .target_id(target)
            .send()
            .await
            .context("organizations:AttachPolicy")?;
    }
    for env in ENVIRONMENTS {
        let dest = if env == "production" { &prod } else { &nonprod };
        org.move_account()
            .account_id(&s.accounts[env])
            .source_parent_id(&root_id)
            .destination_parent_id(dest)
            .send()
            .await
            .context("organizations:MoveAccount")?;
    }
    Ok(())
}

/// Seeds moto; fills `s.accounts`, `s.cluster_arns` and `s.management_account`.
pub async fn aws(s: &mut State) -> Result<()> {
    let mgmt = base_config(
        s,
        Credentials::new("sandbox", "sandbox", None, None, "sandbox"),
    );
    let org = aws_sdk_organizations::Client::new(&mgmt);
    org.create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .context("organizations:CreateOrganization")?;
    for env in ENVIRONMENTS {
        let req = org
            .create_account()
            .email(format!("aws+{env}@example-shop.com"))
            .account_name(format!("shop-{env}"))
            .send()
            .await
            .context("organizations:CreateAccount")?;
        let id = req
            .create_account_status()
            .and_then(|c| c.id())
            .ok_or_else(|| anyhow!("no create-account id"))?
            .to_string();
        let status = org
            .describe_create_account_status()
            .create_account_request_id(id)
            .send()
            .await?;
        let account = status
            .create_account_status()
            .and_then(|c| c.account_id())
            .ok_or_else(|| anyhow!("no account id"))?
            .to_string();
        s.accounts.insert(env.to_string(), account);
    }
    organization_units(&org, s).await?;
    // The three accounts are independent: seeded at once, a sandbox comes up sooner when several
    // start together.
    let state: &State = s;
    let arns = futures_util::future::try_join_all(
        ENVIRONMENTS
            .iter()
            .map(|env| seed_account(state, &mgmt, env)),
    )
    .await?;
    for (env, arn) in ENVIRONMENTS.iter().zip(arns) {
        s.cluster_arns.insert(env.to_string(), arn);
    }
    Ok(())
}

/// Seeds one member account: its Terraform state bucket, hosted zone and legacy records, RDS
/// instance, secrets, EKS cluster and web ACL. Returns the EKS cluster's ARN.
async fn seed_account(s: &State, mgmt: &SdkConfig, env: &str) -> Result<String> {
    let account = s.accounts[env].clone();
    let cfg = assume(s, mgmt, &account).await?;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&cfg)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket(format!("shop-tfstate-{account}"))
        .send()
        .await
        .context("s3:CreateBucket")?;
    // The uploads bucket terraform/modules/storage makes (terraform/sandbox names it alike).
    s3.create_bucket()
        .bucket(format!("shop-uploads-{env}-{account}"))
        .send()
        .await
        .context("s3:CreateBucket")?;

    let r53 = aws_sdk_route53::Client::new(&cfg);
    let domain = State::domain(env);
    let zone = r53
        .create_hosted_zone()
        .name(&domain)
        .caller_reference(format!("cutover-sandbox-{env}-{account}"))
        .send()
        .await
        .context("route53:CreateHostedZone")?;
    let zone_id = zone
        .hosted_zone()
        .map(|z| z.id().to_string())
        .unwrap_or_default();
    use aws_sdk_route53::types::{
        Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
    };
    let set = ResourceRecordSet::builder()
        .name(format!("shop.{domain}."))
        .r#type(RrType::Cname)
        .ttl(crate::state::SEED_TTL)
        .resource_records(
            ResourceRecord::builder()
                .value(format!("shop-legacy-{env}.droplets.example.net"))
                .build()?,
        )
        .build()?;
    let letters = ResourceRecordSet::builder()
        .name(format!("letters.{domain}."))
        .r#type(RrType::Cname)
        .ttl(crate::state::SEED_TTL)
        .resource_records(
            ResourceRecord::builder()
                .value(format!("letters-legacy-{env}.droplets.example.net"))
                .build()?,
        )
        .build()?;
    r53.change_resource_record_sets()
        .hosted_zone_id(zone_id.trim_start_matches("/hostedzone/"))
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(set)
                        .build()?,
                )
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(letters)
                        .build()?,
                )
                .build()?,
        )
        .send()
        .await
        .context("route53:ChangeResourceRecordSets")?;

    let rds = aws_sdk_rds::Client::new(&cfg);
    rds.create_db_instance()
        .db_instance_identifier(format!("shop-{env}"))
        .db_instance_class("db.t3.micro")
        .engine("postgres")
        .engine_version("15.8")
        .master_username("postgres")
        .master_user_password("sandbox-not-used")
        .allocated_storage(20)
        .send()
        .await
        .context("rds:CreateDBInstance")?;

    secrets(s, env, &cfg).await?;

    let eks = aws_sdk_eks::Client::new(&cfg);
    let cluster = eks
        .create_cluster()
        .name(format!("shop-{env}"))
        .role_arn(format!(
            "arn:aws:iam::{account}:role/shop-{env}-eks-cluster"
        ))
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .subnet_ids("subnet-0a1")
                .subnet_ids("subnet-0b2")
                .build(),
        )
        .send()
        .await
        .context("eks:CreateCluster")?;
    let arn = cluster
        .cluster()
        .and_then(|c| c.arn())
        .ok_or_else(|| anyhow!("no cluster arn"))?
        .to_string();

    let waf = aws_sdk_wafv2::Client::new(&cfg);
    use aws_sdk_wafv2::types::{AllowAction, DefaultAction, Scope, VisibilityConfig};
    let acl = waf
        .create_web_acl()
        .name(format!("shop-{env}"))
        .scope(Scope::Regional)
        .default_action(
            DefaultAction::builder()
                .allow(AllowAction::builder().build())
                .build(),
        )
        .visibility_config(
            VisibilityConfig::builder()
                .sampled_requests_enabled(false)
                .cloud_watch_metrics_enabled(false)
                .metric_name(format!("shop-{env}"))
                .build()?,
        )
        .send()
        .await
        .context("wafv2:CreateWebACL")?;
    let acl_arn = acl
        .summary()
        .and_then(|a| a.arn())
        .ok_or_else(|| anyhow!("no web ACL arn"))?
        .to_string();
    waf.associate_web_acl()
        .web_acl_arn(acl_arn)
        .resource_arn(alb_arn(env, &account))
        .send()
        .await
        .context("wafv2:AssociateWebACL")?;
    Ok(arn)
}

/// The target's credentials where teams on AWS keep them, so no target password has to be in
/// the process environment: in Secrets Manager the target's master credentials in the shape of
/// an RDS-managed master secret (`{"username", "password"}` only, named as RDS names them,
/// `rds!db-...`), the shop application's URL as a JSON key and the letters Secret's upstream
/// (what an ExternalSecret copies); in SSM Parameter Store the letters application's target URL
/// as a `SecureString`.
async fn secrets(s: &State, env: &str, cfg: &SdkConfig) -> Result<()> {
    let sm = aws_sdk_secretsmanager::Client::new(cfg);
    sm.create_secret()
        .name(State::master_secret_name(env))
        .secret_string(
            serde_json::json!({"username": crate::rights::TARGET_ADMIN, "password": s.target_admin_password}).to_string(),
        )
        .send()
        .await
        .context("secretsmanager:CreateSecret (master)")?;
    sm.create_secret()
        .name(State::app_secret_name(env))
        .secret_string(serde_json::json!({"database_url": s.target_app_url(env)}).to_string())
        .send()
        .await
        .context("secretsmanager:CreateSecret (application)")?;
    // The letters Secret's upstream: the External Secrets Operator copies its `DATABASE_URL`
    // property into Secret letters/letters-db (see `serve`).
    sm.create_secret()
        .name(State::letters_upstream_name(env))
        .secret_string(
            serde_json::json!({"DATABASE_URL": s.letters_url(env, "letters", false)}).to_string(),
        )
        .send()
        .await
        .context("secretsmanager:CreateSecret (letters upstream)")?;
    aws_sdk_ssm::Client::new(cfg)
        .put_parameter()
        .name(State::letters_parameter_name(env))
        .value(s.letters_url(env, "letters", true))
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .context("ssm:PutParameter")?;
    Ok(())
}
