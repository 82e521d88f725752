//! One lock per environment, so two runs cannot act on it at once.
//!
//! An advisory `flock` on `.cutover/locks/<env>.lock`, held for the life of the run. The kernel
//! releases it when the process dies, even by SIGKILL, so a crashed run never leaves a stale lock;
//! the file's content names the holder for the refusal message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;

/// A held environment lock; released on drop.
pub struct EnvLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("environment {env} is locked by {holder}")]
    Held {
        /// The environment.
        env: String,
        /// Who holds it (run id, pid, host, since), as the holder wrote it.
        holder: String,
    },
    /// The lock file cannot be opened.
    #[error("lock file {0}: {1}")]
    Io(String, String),
}

impl EnvLock {
    /// Takes the lock for `env` under `state_dir` (`.cutover`) without waiting, and records
    /// `holder` in the file.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder when another run has it.
    pub fn acquire(state_dir: &Path, env: &str, holder: &str) -> Result<EnvLock, LockError> {
        let dir = state_dir.join("locks");
        let path = dir.join(format!("{env}.lock"));
        let io = |e: std::io::Error| LockError::Io(path.display().to_string(), e.to_string());
        std::fs::create_dir_all(&dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = if text.trim().is_empty() {
                    "another process".to_string()
                } else {
                    text.trim().to_string()
                };
                return Err(LockError::Held {
                    env: env.to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(holder.as_bytes()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(EnvLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_naming_the_holder_until_the_first_drops() {
        let d = tempfile::tempdir().unwrap();
        let first = EnvLock::acquire(d.path(), "staging", "run r1 (pid 1)").unwrap();
        match EnvLock::acquire(d.path(), "staging", "run r2") {
            Err(LockError::Held { holder, .. }) => assert!(holder.contains("r1")),
            _ => panic!("second lock was granted"),
        }
        assert!(EnvLock::acquire(d.path(), "dev", "run r3").is_ok());
        drop(first);
        assert!(EnvLock::acquire(d.path(), "staging", "run r2").is_ok());
    }
}
