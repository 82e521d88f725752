//! The sandbox's state file (`<dir>/state.json`): ports, process ids, account ids and the
//! generated passwords. It lives in the sandbox directory (ignored by git) and is the only place
//! the sandbox's secrets are kept.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environments the sandbox stands up, in order.
pub const ENVIRONMENTS: [&str; 3] = ["staging", "dev", "production"];

/// The AWS region used throughout.
pub const REGION: &str = "us-east-1";

/// Everything `up` created.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct State {
    /// The sandbox directory.
    pub dir: PathBuf,
    /// `up --native`: the legacy admin may subscribe and the target accepts the legacy server's
    /// connections (both directions can replicate natively); false: as managed databases are
    /// ([`crate::rights`]).
    #[serde(default)]
    pub native: bool,
    /// moto server port.
    pub moto_port: u16,
    /// moto server pid.
    pub moto_pid: u32,
    /// Legacy source PostgreSQL port.
    pub source_port: u16,
    /// Target ("RDS") PostgreSQL port.
    pub target_port: u16,
    /// Superuser password of the source cluster.
    pub source_password: String,
    /// Superuser password of the target cluster.
    pub target_password: String,
    /// Password of the source's admin `doadmin` (not a superuser; [`crate::rights`]).
    #[serde(default)]
    pub source_admin_password: String,
    /// Password of the target's master user `shop_admin` (not a superuser).
    #[serde(default)]
    pub target_admin_password: String,
    /// Password of the application roles `shop` and `letters` on both clusters.
    pub app_password: String,
    /// pid of `cutover-sandbox serve` (Kubernetes API emulator and the apps).
    pub serve_pid: u32,
    /// Kubernetes API port per environment.
    pub kube_ports: BTreeMap<String, u16>,
    /// AWS-side application port per environment.
    pub app_ports: BTreeMap<String, u16>,
    /// Legacy application port.
    pub legacy_app_port: u16,
    /// AWS account id per environment (assigned by moto's Organizations).
    pub accounts: BTreeMap<String, String>,
    /// EKS cluster ARN per environment.
    pub cluster_arns: BTreeMap<String, String>,
    /// The Organization's management account (moto's default account).
    #[serde(default)]
    pub management_account: String,
    /// Prometheus server port.
    #[serde(default)]
    pub prometheus_port: u16,
    /// Prometheus server pid.
    #[serde(default)]
    pub prometheus_pid: u32,
    /// The shop application's PgBouncer port per environment ([`crate::pooler`]).
    #[serde(default)]
    pub pooler_ports: BTreeMap<String, u16>,
    /// Its pid per environment.
    #[serde(default)]
    pub pooler_pids: BTreeMap<String, u32>,
    /// Password of the poolers' admin console role.
    #[serde(default)]
    pub pooler_admin_password: String,
    /// The legacy object storage's (`weed mini`, [`crate::spaces`]) ports: S3 first.
    #[serde(default)]
    pub spaces_ports: Vec<u16>,
    /// Its pid.
    #[serde(default)]
    pub spaces_pid: u32,
    /// Its access key id.
    #[serde(default)]
    pub spaces_access_key: String,
    /// Its secret access key.
    #[serde(default)]
    pub spaces_secret_key: String,
}

impl State {
    /// Every port this sandbox has given to one of its servers.
    pub fn assigned_ports(&self) -> Vec<u16> {
        let mut out = vec![
            self.moto_port,
            self.source_port,
            self.target_port,
            self.legacy_app_port,
            self.prometheus_port,
        ];
        out.extend(self.kube_ports.values());
        out.extend(self.app_ports.values());
        out.extend(self.pooler_ports.values());
        out.extend(&self.spaces_ports);
        out.retain(|p| *p != 0);
        out
    }

    /// Path of the state file in `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("state.json")
    }

    /// Reads the state of the sandbox in `dir`, if there is one.
    pub fn load(dir: &Path) -> Option<State> {
        serde_json::from_str(&std::fs::read_to_string(Self::path(dir)).ok()?).ok()
    }

    /// Writes the state (mode 0600) atomically: readers (the `serve` process) never see a
    /// half-written file.
    pub fn save(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = self.dir.join("state.json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(&mut f, serde_json::to_string_pretty(self)?.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, Self::path(&self.dir))?;
        Ok(())
    }

    /// Database name of an environment.
    pub fn database(env: &str) -> String {
        if env == "production" {
            "shop".into()
        } else {
            format!("shop_{env}")
        }
    }

    /// Database name of the second service, `letters`, in an environment.
    pub fn letters_database(env: &str) -> String {
        if env == "production" {
            "letters".into()
        } else {
            format!("letters_{env}")
        }
    }

    /// A URL of the `letters` service's database: as `role` (`letters`, or `admin` for the
    /// server's admin role, [`crate::rights`]) on the source or the target server.
    pub fn letters_url(&self, env: &str, role: &str, target: bool) -> String {
        let (role, password, port) = match (role, target) {
            ("admin", false) => (
                crate::rights::SOURCE_ADMIN,
                &self.source_admin_password,
                self.source_port,
            ),
            ("admin", true) => (
                crate::rights::TARGET_ADMIN,
                &self.target_admin_password,
                self.target_port,
            ),
            (_, false) => (role, &self.app_password, self.source_port),
            (_, true) => (role, &self.app_password, self.target_port),
        };
        format!(
            "postgres://{role}:{password}@127.0.0.1:{port}/{}{}",
            Self::letters_database(env),
            self.tls_query()
        )
    }

    /// What every URL of the sandbox's databases ends with: `sslmode=verify-full` and the
    /// sandbox's CA (`crate::tls`), since the servers refuse plaintext.
    pub fn tls_query(&self) -> String {
        crate::tls::url_query(&self.dir)
    }

    /// DNS zone of an environment.
    pub fn domain(env: &str) -> String {
        if env == "production" {
            "example-shop.com".into()
        } else {
            format!("{env}.example-shop.com")
        }
    }

    /// The legacy application's connection URL (what the Secret holds before the cutover).
    pub fn legacy_app_url(&self, env: &str) -> String {
        format!(
            "postgres://shop:{}@127.0.0.1:{}/{}{}",
            self.app_password,
            self.source_port,
            Self::database(env),
            self.tls_query()
        )
    }

    /// The shop application's URL through its pooler in `env`'s cluster: what its Secret holds
    /// from the start (the pooler's upstream moves instead).
    pub fn pooler_app_url(&self, env: &str) -> String {
        format!(
            "postgres://shop:{}@127.0.0.1:{}/{}{}",
            self.app_password,
            self.pooler_ports.get(env).copied().unwrap_or(0),
            Self::database(env),
            self.tls_query()
        )
    }

    /// The admin console URL of the pooler in `env`'s cluster.
    pub fn pooler_admin_url(&self, env: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/pgbouncer{}",
            crate::pooler::ADMIN_USER,
            self.pooler_admin_password,
            self.pooler_ports.get(env).copied().unwrap_or(0),
            self.tls_query()
        )
    }

    /// The AWS-side application's connection URL (what the Secret must hold after the cutover).
    pub fn target_app_url(&self, env: &str) -> String {
        format!(
            "postgres://shop:{}@127.0.0.1:{}/{}{}",
            self.app_password,
            self.target_port,
            Self::database(env),
            self.tls_query()
        )
    }

    /// The admin URL of the source database of `env`: as `doadmin`, not a superuser.
    pub fn source_admin_url(&self, env: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}{}",
            crate::rights::SOURCE_ADMIN,
            self.source_admin_password,
            self.source_port,
            Self::database(env),
            self.tls_query()
        )
    }

    /// The admin URL of the target database of `env`: as the master user `shop_admin`, not a
    /// superuser.
    pub fn target_admin_url(&self, env: &str) -> String {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/{}{}",
            crate::rights::TARGET_ADMIN,
            self.target_admin_password,
            self.target_port,
            Self::database(env),
            self.tls_query()
        )
    }

    /// Name of the Secrets Manager secret holding the target's master credentials of `env`.
    pub fn master_secret_name(env: &str) -> String {
        format!("rds!db-shop-{env}")
    }

    /// Name of the Secrets Manager secret holding the shop application's target URL (key
    /// `database_url`).
    pub fn app_secret_name(env: &str) -> String {
        format!("shop-{env}/app")
    }

    /// Name of the Secrets Manager secret the letters Secret's ExternalSecret reads (property
    /// `DATABASE_URL`).
    pub fn letters_upstream_name(env: &str) -> String {
        format!("letters-{env}/db")
    }

    /// Name of the SSM parameter holding the letters application's target URL.
    pub fn letters_parameter_name(env: &str) -> String {
        format!("/letters/{env}/database-url")
    }

    /// The `export` lines a shell evaluates to point `cutover` at this sandbox.
    pub fn exports(&self) -> Vec<(String, String)> {
        let moto = format!("http://127.0.0.1:{}", self.moto_port);
        let mut v = vec![
            ("AWS_ENDPOINT_URL".to_string(), moto.clone()),
            ("AWS_ENDPOINT_URL_S3".to_string(), moto.clone()),
            ("AWS_ENDPOINT_URL_STS".to_string(), moto.clone()),
            ("AWS_ACCESS_KEY_ID".to_string(), "sandbox".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "sandbox".to_string()),
            ("AWS_REGION".to_string(), REGION.to_string()),
            ("AWS_DEFAULT_REGION".to_string(), REGION.to_string()),
            (
                "KUBECONFIG".to_string(),
                self.dir.join("kubeconfig").display().to_string(),
            ),
            (
                "TF_CLI_ARGS_init".to_string(),
                "-backend-config=use_path_style=true".to_string(),
            ),
        ];
        v.push((
            "CUTOVER_MANAGEMENT_ACCOUNT_ID".to_string(),
            self.management_account.clone(),
        ));
        for env in ENVIRONMENTS {
            let up = env.to_uppercase();
            v.push((
                format!("CUTOVER_{up}_TERRAFORM_DIR"),
                "terraform/sandbox".to_string(),
            ));
            v.push((
                format!("CUTOVER_{up}_ACCOUNT_ID"),
                self.accounts.get(env).cloned().unwrap_or_default(),
            ));
            v.push((
                format!("CUTOVER_{up}_SOURCE_DATABASE_URL"),
                self.source_admin_url(env),
            ));
            v.push((
                format!("CUTOVER_{up}_TARGET_DATABASE_URL"),
                self.target_admin_url(env),
            ));
            if !self.spaces_ports.is_empty() {
                for (name, value) in [
                    ("SPACES_ENDPOINT", crate::spaces::endpoint(self)),
                    ("SPACES_REGION", crate::spaces::REGION.to_string()),
                    ("SPACES_BUCKET", crate::spaces::bucket(env)),
                    ("SPACES_ACCESS_KEY_ID", self.spaces_access_key.clone()),
                    ("SPACES_SECRET_ACCESS_KEY", self.spaces_secret_key.clone()),
                ] {
                    v.push((format!("CUTOVER_{up}_{name}"), value));
                }
            }
            v.push((
                format!("CUTOVER_{up}_TARGET_APP_DATABASE_URL"),
                self.target_app_url(env),
            ));
            v.push((
                format!("CUTOVER_{up}_LEGACY_APP_DATABASE_URL"),
                self.legacy_app_url(env),
            ));
            v.push((
                format!("CUTOVER_{up}_POOLER_ADMIN_URL"),
                self.pooler_admin_url(env),
            ));
            for (name, role, target) in [
                ("SOURCE_DATABASE_URL", "admin", false),
                ("TARGET_DATABASE_URL", "admin", true),
                ("TARGET_APP_DATABASE_URL", "letters", true),
                ("LEGACY_APP_DATABASE_URL", "letters", false),
            ] {
                v.push((
                    format!("CUTOVER_{up}_LETTERS_{name}"),
                    self.letters_url(env, role, target),
                ));
            }
            // The environment's Prometheus (one server scrapes every environment's sides).
            v.push((
                format!("CUTOVER_{up}_PROMETHEUS_URL"),
                format!("http://127.0.0.1:{}", self.prometheus_port),
            ));
            // The target's endpoint: not a secret; its credentials are in Secrets Manager.
            v.push((format!("CUTOVER_{up}_DB_HOST"), "127.0.0.1".to_string()));
            v.push((
                format!("CUTOVER_{up}_DB_PORT"),
                self.target_port.to_string(),
            ));
            // The CA that signed the servers' certificates (what RDS's global bundle is to RDS).
            let ca = crate::tls::ca_file(&self.dir);
            v.push((
                format!("CUTOVER_{up}_DB_CA_FILE"),
                std::fs::canonicalize(&ca)
                    .unwrap_or(ca)
                    .display()
                    .to_string(),
            ));
            // The seeded record's TTL is SEED_TTL (10 s) so a rehearsal's wait for answers cached
            // under it stays short; lowering it to 3 s keeps the lowering real.
            v.push((format!("CUTOVER_{up}_DNS_CUTOVER_TTL"), "3".to_string()));
            // Prometheus scrapes every 500 ms here: the analyses' rate windows hold a new stage's
            // requests sooner than on a real server, so they may measure sooner and more often.
            v.push((
                format!("CUTOVER_{up}_ANALYSIS_INITIAL_DELAY"),
                "3s".to_string(),
            ));
            v.push((format!("CUTOVER_{up}_ANALYSIS_INTERVAL"), "1s".to_string()));
            v.push((
                format!("CUTOVER_{up}_APP_URL"),
                format!(
                    "http://127.0.0.1:{}",
                    self.app_ports.get(env).copied().unwrap_or(0)
                ),
            ));
        }
        // The servers' superuser, which cutover's configuration never names: for what only a
        // superuser may do to the sandbox itself (the tests' set-ups), database `postgres`.
        for (name, password, port) in [
            ("SOURCE", &self.source_password, self.source_port),
            ("TARGET", &self.target_password, self.target_port),
        ] {
            v.push((
                format!("CUTOVER_SANDBOX_{name}_SUPERUSER_URL"),
                format!(
                    "postgres://postgres:{password}@127.0.0.1:{port}/postgres{}",
                    self.tls_query()
                ),
            ));
        }
        v
    }
}

/// TTL in seconds of the legacy `shop.<domain>` CNAME the sandbox seeds: short, so that a
/// rehearsal that lowers it waits seconds, not minutes, for answers cached under it to expire.
pub const SEED_TTL: i64 = 10;

/// First 16 hex digits of SHA-256 of `text` (the ALB id both the seed and the Terraform sandbox
/// stack derive: `substr(sha256("shop-<env>-<account>"), 0, 16)`).
pub fn short_hash(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// The ALB ARN of an environment's account, as the Terraform stack outputs it.
pub fn alb_arn(env: &str, account: &str) -> String {
    format!(
        "arn:aws:elasticloadbalancing:{REGION}:{account}:loadbalancer/app/shop-{env}/{}",
        short_hash(&format!("shop-{env}-{account}"))
    )
}
