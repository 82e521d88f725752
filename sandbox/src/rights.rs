//! The admin roles of the sandbox's servers, with the rights managed databases give and no more.
//!
//! - Legacy (source) server: `doadmin`, as DigitalOcean Managed PostgreSQL makes it: not a
//!   superuser; LOGIN, CREATEDB, CREATEROLE, REPLICATION; a member of the application's roles
//!   (`GRANT shop, letters TO doadmin`, which a team runs before migrating, so the admin may read
//!   and publish their tables and end their sessions). By default it may not subscribe, as
//!   DigitalOcean's `doadmin` on PostgreSQL 15 may not; `cutover-sandbox up --native` makes it a
//!   member of `sandbox_create_subscription`, which stands for PostgreSQL 16's
//!   `pg_create_subscription` (or a self-hosted legacy server's superuser): the right the native
//!   fallback needs.
//! - The route: by default the target refuses the legacy server's own connections (those
//!   presenting the legacy host's client certificate), as a private RDS cannot be reached from
//!   the legacy host; `--native` opens it. The tool's connections reach both.
//! - Target (RDS) server: `shop_admin`, as RDS makes its master user: not a superuser; LOGIN,
//!   CREATEDB, CREATEROLE, REPLICATION (RDS: `rds_replication`); a member of `rds_superuser`
//!   (itself a member of `pg_signal_backend` and `pg_monitor`) and of the application's roles.
//! - Both keep the superuser `postgres`, which only the sandbox itself (seeding) and the tests
//!   that must do what only a superuser can use.
//!
//! PostgreSQL 15 lets only superusers create subscriptions; RDS lets `rds_superuser` do it too.
//! The servers load `sandbox/pg/cutover_sandbox_rights.c` (compiled here against PostgreSQL
//! 15's server headers), which lets the members of one role (`rds_superuser` on the target,
//! `sandbox_create_subscription` on the source) run CREATE, ALTER and DROP SUBSCRIPTION, and
//! nothing else, as the bootstrap superuser.

use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};

/// The legacy server's admin role.
pub const SOURCE_ADMIN: &str = "doadmin";
/// The target server's admin role (the RDS module's `master_username` default).
pub const TARGET_ADMIN: &str = "shop_admin";
/// The role whose members may manage subscriptions on the source.
pub const SOURCE_SUBSCRIBERS: &str = "sandbox_create_subscription";
/// The role whose members may manage subscriptions on the target.
pub const TARGET_SUBSCRIBERS: &str = "rds_superuser";

/// The module's source, compiled into this binary.
const MODULE_SOURCE: &str = include_str!("../pg/cutover_sandbox_rights.c");

/// The SQL that makes the legacy server's admin, run as the superuser after the application's
/// roles exist.
pub fn source_admin_sql(password: &str) -> String {
    format!(
        "CREATE ROLE {SOURCE_SUBSCRIBERS} NOLOGIN;
         CREATE ROLE {SOURCE_ADMIN} LOGIN CREATEDB CREATEROLE REPLICATION PASSWORD '{}';
         GRANT shop, letters TO {SOURCE_ADMIN};",
        password.replace('\'', "''")
    )
}

/// The SQL that makes the target server's master user, run as the superuser after the
/// application's roles exist.
pub fn target_admin_sql(password: &str) -> String {
    format!(
        "CREATE ROLE {TARGET_SUBSCRIBERS} NOLOGIN CREATEDB CREATEROLE;
         GRANT pg_signal_backend, pg_monitor TO {TARGET_SUBSCRIBERS};
         CREATE ROLE {TARGET_ADMIN} LOGIN CREATEDB CREATEROLE REPLICATION PASSWORD '{}' IN ROLE {TARGET_SUBSCRIBERS};
         GRANT shop, letters TO {TARGET_ADMIN};",
        password.replace('\'', "''")
    )
}

/// Where PostgreSQL 15's server headers are: `pg_config --includedir-server` when Debian's
/// postgresql-server-dev-15 is installed, else the copy `scripts/install-deps` extracts from
/// that package (headers only: its dependencies, clang and LLVM, are for JIT bitcode).
fn server_headers() -> Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--includedir-server")
        .output()
    {
        candidates.push(PathBuf::from(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ));
    }
    candidates.push(PathBuf::from("/usr/include/postgresql/15/server"));
    let extracted = "pg15-server/usr/include/postgresql/15/server";
    candidates.push(Path::new("/opt/cutover").join(extracted));
    if let Ok(home) = std::env::var("HOME") {
        candidates.push(
            Path::new(&home)
                .join(".local/share/cutover")
                .join(extracted),
        );
    }
    candidates
        .iter()
        .find(|p| p.join("postgres.h").exists())
        .cloned()
        .ok_or_else(|| {
            anyhow!(
                "PostgreSQL 15's server headers are not installed (looked in {}); run scripts/install-deps",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Compiles the module into `<dir>/pg/rights/` (once) and returns the shared library's path,
/// readable by the servers' user.
pub fn module(dir: &Path) -> Result<PathBuf> {
    let out_dir = dir.join("pg/rights");
    let so = out_dir.join("cutover_sandbox_rights.so");
    let src = out_dir.join("cutover_sandbox_rights.c");
    if so.exists() && std::fs::read_to_string(&src).ok().as_deref() == Some(MODULE_SOURCE) {
        return Ok(so);
    }
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(&src, MODULE_SOURCE)?;
    let headers = server_headers()?;
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let tmp = out_dir.join("cutover_sandbox_rights.so.tmp");
    let out = std::process::Command::new(&cc)
        .args(["-O2", "-fPIC", "-shared", "-Wall"])
        .arg("-I")
        .arg(&headers)
        .arg("-o")
        .arg(&tmp)
        .arg(&src)
        .output()
        .with_context(|| format!("running {cc}"))?;
    if !out.status.success() {
        bail!(
            "compiling {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &so)?;
    crate::procs::chown_tree(&out_dir)?;
    Ok(so)
}

/// The common name of the client certificate the legacy server's own outgoing connections
/// present (its fallback subscription's), which the target refuses unless the sandbox is
/// `--native` (`cutover_sandbox.refuse_peer_cn`).
pub const LEGACY_HOST_CN: &str = "legacy-host";

/// The SQL, run as the superuser on the legacy server at every `up`, that gives `doadmin` the
/// right to subscribe (`native`: a self-hosted legacy server's admin, or PostgreSQL 16's
/// `pg_create_subscription`) or takes it away (the default: DigitalOcean's `doadmin` on
/// PostgreSQL 15).
pub fn source_subscribe_sql(native: bool) -> String {
    if native {
        format!("GRANT {SOURCE_SUBSCRIBERS} TO {SOURCE_ADMIN}")
    } else {
        format!("REVOKE {SOURCE_SUBSCRIBERS} FROM {SOURCE_ADMIN}")
    }
}

/// The target's postgresql.conf lines for the route from the legacy host: it asks clients for
/// a certificate signed by the sandbox CA (`ssl_ca_file`; none is required) and, unless
/// `native`, refuses the legacy server's ([`LEGACY_HOST_CN`]).
pub fn route_conf(ca: &Path, native: bool) -> String {
    format!(
        "ssl_ca_file = '{}'
cutover_sandbox.refuse_peer_cn = '{}'
",
        ca.display(),
        if native { "" } else { LEGACY_HOST_CN }
    )
}

/// The postgresql.conf lines that load the module and name the role it serves.
pub fn conf(module: &Path, subscribers: &str) -> String {
    format!(
        "shared_preload_libraries = '{}'\ncutover_sandbox.subscription_role = '{subscribers}'\n",
        module.display()
    )
}
