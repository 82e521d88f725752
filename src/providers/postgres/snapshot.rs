//! A logical replication slot created with an exported snapshot, held open by a process that
//! outlives this one, and the `pg_dump` sections read under it.
//!
//! tokio-postgres cannot open a replication connection, so the slot is created by `psql` over
//! one (`replication=database`): `CREATE_REPLICATION_SLOT ... LOGICAL pgoutput EXPORT_SNAPSHOT`.
//! The snapshot stays importable (`SET TRANSACTION SNAPSHOT`) while that connection stays idle,
//! so `psql` is fed by a shell loop that ends when a hold file is removed or the maximum hold time
//! passes. It runs in its own process group: a killed or interrupted run leaves it holding, and
//! `resume` copies the remaining chunks under the very same snapshot (as `pgcopydb snapshot` does).
//!
//! Owns the holder process and pg_dump invocations; must not decide what is copied.

use super::Server;
use super::{pg, ConnParts};
use crate::providers::ProviderError;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::Client;

/// A replication slot and the snapshot exported when it was created.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ExportedSlot {
    /// Slot name on the source.
    pub slot: String,
    /// The LSN from which the slot decodes: the snapshot shows every transaction committed
    /// before it and none after.
    pub consistent_lsn: String,
    /// The snapshot name for `SET TRANSACTION SNAPSHOT` and `pg_dump --snapshot`.
    pub snapshot: String,
}

fn err(message: impl Into<String>) -> ProviderError {
    ProviderError::Postgres {
        side: Server::Source,
        message: message.into(),
    }
}

/// Creates `slot` with an exported snapshot and leaves a holder process keeping the snapshot
/// alive until `hold_file` is removed or `max_hold` has passed. Files `snapshot.out` and
/// `snapshot.err` go next to `hold_file`.
///
/// # Errors
/// [`ProviderError::Postgres`] when psql cannot start, the server refuses (slot exists, no free
/// slot or sender) or nothing is printed within `wait` (slot creation waits for every
/// transaction running on the source to finish).
pub async fn create_slot(
    source: &ConnParts,
    slot: &str,
    hold_file: &Path,
    max_hold: Duration,
    wait: Duration,
) -> Result<ExportedSlot, ProviderError> {
    let dir = hold_file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    std::fs::create_dir_all(&dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    std::fs::write(
        hold_file,
        b"remove this file to release the exported snapshot\n",
    )
    .map_err(|e| err(format!("{}: {e}", hold_file.display())))?;
    let out_path = dir.join("snapshot.out");
    let err_path = dir.join("snapshot.err");
    let _ = std::fs::remove_file(&out_path);
    let out = std::fs::File::create(&out_path).map_err(|e| err(e.to_string()))?;
    let errf = std::fs::File::create(&err_path).map_err(|e| err(e.to_string()))?;
    let psql = std::env::var("PSQL").unwrap_or_else(|_| "psql".into());
    // Slot names are [a-z0-9_] (checked by the server), so plain interpolation is safe.
    let script = r#"printf '%s\n' "CREATE_REPLICATION_SLOT \"$CUTOVER_SLOT\" LOGICAL pgoutput EXPORT_SNAPSHOT;"
i=0
while [ -e "$CUTOVER_HOLD" ] && [ "$i" -lt "$CUTOVER_MAX_HOLD" ]; do sleep 1; i=$((i+1)); done"#;
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "( {script} ) | \"$CUTOVER_PSQL\" -X -q -At -F ' ' -v ON_ERROR_STOP=1 replication=database"
        ))
        .env("CUTOVER_SLOT", slot)
        .env("CUTOVER_HOLD", hold_file)
        .env("CUTOVER_MAX_HOLD", max_hold.as_secs().to_string())
        .env("CUTOVER_PSQL", &psql)
        .envs(source.libpq_env())
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(errf);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| err(format!("cannot run {psql}: {e}")))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.split(' ').count() >= 4) {
            let f: Vec<&str> = line.split(' ').collect();
            // Reap the holder in the background when it ends; it must not become a zombie.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            return Ok(ExportedSlot {
                slot: f[0].to_string(),
                consistent_lsn: f[1].to_string(),
                snapshot: f[2].to_string(),
            });
        }
        // psql stops at an error while the shell loop keeps the pipeline alive: watch stderr.
        let e = std::fs::read_to_string(&err_path).unwrap_or_default();
        if e.contains("ERROR") || e.contains("error:") || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = std::fs::remove_file(hold_file);
            let _ = child.kill();
            return Err(err(format!(
                "CREATE_REPLICATION_SLOT {slot} failed: {}",
                e.trim()
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = std::fs::remove_file(hold_file);
            let _ = child.kill();
            return Err(err(format!(
                "CREATE_REPLICATION_SLOT {slot} did not finish within {} s (it waits for every open transaction on the source)",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Ends the holder: removes the hold file (the holder exits within a second and the snapshot
/// with it). Idempotent.
pub fn release(hold_file: &Path) {
    let _ = std::fs::remove_file(hold_file);
}

/// Opens a `REPEATABLE READ READ ONLY` transaction on `c` that sees `snapshot`.
///
/// # Errors
/// [`ProviderError::Postgres`] naming the snapshot when it is no longer importable (its holder
/// ended).
pub async fn import(c: &Client, snapshot: &str) -> Result<(), ProviderError> {
    c.batch_execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        super::literal(snapshot)
    ))
    .await
    .map_err(|e| pg(Server::Source, e))
}

/// True when `snapshot` can still be imported on the source.
pub async fn alive(source_url: &str, snapshot: &str) -> bool {
    let Ok(c) = super::connect(source_url, Server::Source).await else {
        return false;
    };
    import(&c, snapshot).await.is_ok()
}

/// A section of the schema by `pg_dump --schema-only --section=SECTION` (`pre-data`:
/// types, tables, sequences, functions; `post-data`: indexes, constraints, triggers), read under
/// `snapshot` when given. psql meta-commands are dropped. Owners and privileges (`OWNER TO`,
/// `GRANT`, default privileges) come along, by role name, so the application's roles own on the
/// target what they own on the source (the preflight checks those roles exist there);
/// publications and subscriptions do not. The connection (password and TLS settings included)
/// travels in the `PG*` environment variables.
///
/// # Errors
/// [`ProviderError::Postgres`] with pg_dump's message.
pub async fn dump_section(
    source: &ConnParts,
    section: &str,
    snapshot: Option<&str>,
) -> Result<String, ProviderError> {
    let bin = std::env::var("PG_DUMP").unwrap_or_else(|_| "pg_dump".into());
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.args([
        "--schema-only",
        &format!("--section={section}"),
        "--no-publications",
        "--no-subscriptions",
        // A relay's bookkeeping on this server (a fallback of an earlier run) is not the
        // application's.
        &format!("--exclude-schema={}", super::relay::apply::PROGRESS_SCHEMA),
    ])
    .envs(source.libpq_env())
    .env("PGCONNECT_TIMEOUT", "10")
    .kill_on_drop(true);
    if let Some(s) = snapshot {
        cmd.arg(format!("--snapshot={s}"));
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| err(format!("cannot run {bin}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "pg_dump --section={section} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('\\'))
        .collect::<Vec<_>>()
        .join("\n"))
}
