//! Seeded clusters kept for the next sandbox: with `CUTOVER_SANDBOX_TEMPLATE_DIR` set, the first
//! `up` keeps a copy of its two PostgreSQL clusters, stopped, right after seeding them, and later
//! `up`s start from a copy of that instead of running `initdb` twice and seeding 330,000 rows
//! (most of a sandbox's start: about 8 of its 14 CPU-seconds, measured with process accounting).
//!
//! A copy is the same clusters with other passwords: each `up` sets its own fresh ones through the
//! local socket (trusted, as `initdb --auth-local=trust` made it) before anything else connects.
//! Templates are keyed by the sandbox binary (its size and modification time) and PostgreSQL's
//! binaries, so a rebuilt sandbox with other seed data never starts from an old template. The
//! test suite sets the variable (the tests start dozens of sandboxes); the README's main job does
//! not need it.
//!
//! What this module must not do: change what a sandbox holds. A sandbox from a template and one
//! seeded afresh differ only in passwords, ports and system identifiers.

use crate::procs;
use anyhow::{Context, Result};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

/// The variable naming the directory templates are kept in.
pub const DIR_VAR: &str = "CUTOVER_SANDBOX_TEMPLATE_DIR";

/// The clusters a template holds, by their directory names under `<sandbox>/pg`.
const CLUSTERS: [&str; 2] = ["source", "target"];

/// Where this binary's template lives (`$CUTOVER_SANDBOX_TEMPLATE_DIR/<key>`), or `None` when
/// the variable is unset.
///
/// # Errors
/// When this executable's or PostgreSQL's metadata cannot be read.
pub fn location() -> Result<Option<PathBuf>> {
    let Some(base) = std::env::var_os(DIR_VAR).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [std::env::current_exe()?, procs::pg_bin()?.join("postgres")] {
        let m = std::fs::metadata(&path).with_context(|| format!("{}", path.display()))?;
        path.hash(&mut h);
        m.len().hash(&mut h);
        m.modified()?.hash(&mut h);
    }
    Ok(Some(
        PathBuf::from(base).join(format!("{:016x}", h.finish())),
    ))
}

/// Whether a complete template is at `template`.
pub fn exists(template: &Path) -> bool {
    template.join("complete").exists()
}

/// Copies the template's clusters into `pg` (`pg/source`, `pg/target`); false when there is no
/// complete template at `template`.
///
/// # Errors
/// When a copy fails.
pub fn restore(template: &Path, pg: &Path) -> Result<bool> {
    if !exists(template) {
        return Ok(false);
    }
    for c in CLUSTERS {
        copy(&template.join(c), &pg.join(c))?;
    }
    Ok(true)
}

/// Keeps a copy of the stopped clusters in `pg` as the template at `template`. Several sandboxes
/// may save at once: each copies into its own directory and the first rename wins.
///
/// # Errors
/// When a copy fails.
pub fn save(pg: &Path, template: &Path) -> Result<()> {
    let parent = template.parent().context("template directory")?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}-{}",
        template.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    for c in CLUSTERS {
        copy(&pg.join(c), &tmp.join(c))?;
    }
    std::fs::write(tmp.join("complete"), "")?;
    // PostgreSQL's user must reach the copies it will be started from.
    use std::os::unix::fs::PermissionsExt;
    for d in [parent, tmp.as_path()] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
    }
    if std::fs::rename(&tmp, template).is_err() {
        // Another sandbox saved first.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// `cp -a`: keeps owners (PostgreSQL's user when the sandbox runs as root) and the 0700 mode
/// PostgreSQL requires of a data directory.
fn copy(from: &Path, to: &Path) -> Result<()> {
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "cp -a {} {}: {}",
        from.display(),
        to.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Holds the WAL of the cluster whose socket is in `data` to two segments while it is seeded
/// for a template ([`keep_wal_small`] until [`default_wal_sizes`]): seeding writes hundreds of
/// megabytes of WAL, which checkpoints would otherwise keep as recycled segments that every
/// sandbox copies from the template.
///
/// # Errors
/// When the cluster cannot be reached.
pub async fn keep_wal_small(data: &Path, port: u16) -> Result<()> {
    run_each(
        data,
        port,
        &[
            "ALTER SYSTEM SET min_wal_size = '32MB'",
            "ALTER SYSTEM SET max_wal_size = '32MB'",
            "SELECT pg_reload_conf()",
        ],
    )
    .await
}

/// After seeding: a checkpoint under the small sizes, then the default sizes again in the saved
/// configuration (they take effect when a sandbox starts from the template).
///
/// # Errors
/// When the cluster cannot be reached.
pub async fn default_wal_sizes(data: &Path, port: u16) -> Result<()> {
    run_each(
        data,
        port,
        &[
            "CHECKPOINT",
            "ALTER SYSTEM RESET min_wal_size",
            "ALTER SYSTEM RESET max_wal_size",
        ],
    )
    .await
}

/// Runs each statement on its own (ALTER SYSTEM cannot run inside a transaction block).
async fn run_each(data: &Path, port: u16, statements: &[&str]) -> Result<()> {
    let client = socket_client(data, port).await?;
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("{}: {sql}", data.display()))?;
    }
    Ok(())
}

/// A connection as `postgres` through the socket in `data` (local connections are trusted).
async fn socket_client(data: &Path, port: u16) -> Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(data)
        .port(port)
        .user("postgres")
        .dbname("postgres");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting through the socket in {}", data.display()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Runs `sql` as the superuser on the cluster in `data` (its local socket).
///
/// # Errors
/// When the connection or the statement fails.
pub async fn run_sql(data: &Path, port: u16, sql: &str) -> Result<()> {
    let client = socket_client(data, port).await?;
    client
        .batch_execute(sql)
        .await
        .with_context(|| format!("running {sql}"))
}

/// Sets each role's password on the cluster whose socket is in `data`, through that socket as
/// `postgres` (local connections are trusted).
///
/// # Errors
/// When the cluster cannot be reached or a role is missing.
pub async fn set_passwords(data: &Path, port: u16, roles: &[(&str, &str)]) -> Result<()> {
    let client = socket_client(data, port).await?;
    for (role, password) in roles {
        client
            .batch_execute(&format!(
                "ALTER ROLE \"{}\" PASSWORD '{}'",
                role.replace('"', "\"\""),
                password.replace('\'', "''")
            ))
            .await
            .with_context(|| format!("setting the password of {role}"))?;
    }
    Ok(())
}
