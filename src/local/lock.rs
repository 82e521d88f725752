//! Locks of an environment, so two runs cannot act on the same thing at once.
//!
//! Advisory `flock`s under `.cutover/locks/`, held for the life of the run. The kernel releases
//! them when the process dies, even by SIGKILL, so a crashed run never leaves a stale lock; each
//! file's content names its holder for the refusal message.
//!
//! - `<env>.lock` is the environment's: `infra apply` holds it exclusively; every run holds it
//!   shared, so runs do not exclude each other through it, but no run starts during an apply and
//!   no apply during a run.
//! - `<env>/<key>.lock`, one per thing a run acts on ([`service_lock_file`]: its database, each
//!   Kubernetes Secret and DNS record it names), held exclusively by the run: two runs of
//!   different services run at once; two on the same service do not.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Held locks; released on drop.
pub struct EnvLock {
    /// Held exclusively: their holder text is this process's, cleared on drop.
    owned: Vec<File>,
    /// Held shared (the environment's file under a run): never written.
    _shared: Vec<File>,
}

impl Drop for EnvLock {
    /// Clears the holder text of each exclusively held file before the kernel releases it, so
    /// a later refusal never names a holder that has gone.
    fn drop(&mut self) {
        for f in &mut self.owned {
            let _ = f.set_len(0);
        }
    }
}

/// How long a refused process waits for a new holder to write its name (it does so right
/// after taking the lock) before it says "another process".
const HOLDER_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("environment {env} is locked by {holder}")]
    Held {
        /// The environment (and, for a service's lock, the thing locked: `staging (database shop)`).
        env: String,
        /// Who holds it (run id, pid, host, since), as the holder wrote it.
        holder: String,
    },
    /// The lock file cannot be opened.
    #[error("lock file {0}: {1}")]
    Io(String, String),
}

/// The file name part of a service lock key: `database:shop` -> `database-shop`, every byte
/// outside `[a-z0-9._-]` replaced by `-`.
pub fn service_lock_file(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' => b as char,
            b'A'..=b'Z' => (b + 32) as char,
            _ => '-',
        })
        .collect()
}

fn open(path: &Path) -> Result<File, LockError> {
    let io = |e: std::io::Error| LockError::Io(path.display().to_string(), e.to_string());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)
}

/// The holder text of a held lock file; `None` while it is empty.
fn read_holder(file: &mut File) -> Option<String> {
    let mut text = String::new();
    let _ = file.rewind();
    let _ = file.read_to_string(&mut text);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// Polls `read` (every 20 ms, at most [`HOLDER_WAIT`]) until it names the holder: the holder
/// takes the lock first and writes its name just after, so a refusal in between would
/// otherwise see an empty file.
fn wait_for_holder(mut read: impl FnMut() -> Option<String>) -> String {
    let until = std::time::Instant::now() + HOLDER_WAIT;
    loop {
        if let Some(h) = read() {
            return h;
        }
        if std::time::Instant::now() >= until {
            return "another process".to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn holder_of(file: &mut File) -> String {
    wait_for_holder(|| read_holder(file))
}

fn write_holder(file: &mut File, path: &Path, holder: &str) -> Result<(), LockError> {
    let io = |e: std::io::Error| LockError::Io(path.display().to_string(), e.to_string());
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    file.write_all(holder.as_bytes()).map_err(io)?;
    file.sync_data().map_err(io)
}

/// The holders of `env`'s service locks held right now (each `key: holder`), without waiting.
fn service_holders(state_dir: &Path, env: &str) -> Vec<String> {
    let dir = state_dir.join("locks").join(env);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        let Ok(mut f) = open(&path) else { continue };
        if let Err(TryLockError::WouldBlock) = f.try_lock_shared() {
            let key = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            // A key whose holder has not written its name yet is left out: the caller polls.
            if let Some(holder) = read_holder(&mut f) {
                out.push(format!("{key}: {holder}"));
            }
        }
    }
    out
}

impl EnvLock {
    /// Takes the whole environment `env` under `state_dir` (`.cutover`) without waiting, as
    /// `infra apply` does, and records `holder` in the file.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder when another apply or any run holds a lock of `env`.
    pub fn acquire(state_dir: &Path, env: &str, holder: &str) -> Result<EnvLock, LockError> {
        let path = state_dir.join("locks").join(format!("{env}.lock"));
        let mut file = open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = wait_for_holder(|| {
                    let runs = service_holders(state_dir, env);
                    if runs.is_empty() {
                        read_holder(&mut file)
                    } else {
                        Some(runs.join("; "))
                    }
                });
                return Err(LockError::Held {
                    env: env.to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(LockError::Io(path.display().to_string(), e.to_string()))
            }
        }
        write_holder(&mut file, &path, holder)?;
        Ok(EnvLock {
            owned: vec![file],
            _shared: vec![],
        })
    }

    /// Takes what a run acts on: `env`'s lock shared and each of `keys` (e.g. `database:shop`,
    /// `secret:shop/shop-db`) exclusively, without waiting; records `holder` in each key's file.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder and the key when an apply holds the environment or
    /// another run holds one of the keys (nothing stays held).
    pub fn acquire_service(
        state_dir: &Path,
        env: &str,
        keys: &[String],
        holder: &str,
    ) -> Result<EnvLock, LockError> {
        let path = state_dir.join("locks").join(format!("{env}.lock"));
        let mut env_file = open(&path)?;
        match env_file.try_lock_shared() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    env: env.to_string(),
                    holder: holder_of(&mut env_file),
                })
            }
            Err(TryLockError::Error(e)) => {
                return Err(LockError::Io(path.display().to_string(), e.to_string()))
            }
        }
        // Keys taken before a refusal are released (and their holder text cleared) with it.
        let mut lock = EnvLock {
            owned: Vec::new(),
            _shared: vec![env_file],
        };
        for key in keys {
            let path = state_dir
                .join("locks")
                .join(env)
                .join(format!("{}.lock", service_lock_file(key)));
            let mut file = open(&path)?;
            match file.try_lock() {
                Ok(()) => write_holder(&mut file, &path, holder)?,
                Err(TryLockError::WouldBlock) => {
                    return Err(LockError::Held {
                        env: format!("{env} ({})", key.replacen(':', " ", 1)),
                        holder: holder_of(&mut file),
                    })
                }
                Err(TryLockError::Error(e)) => {
                    return Err(LockError::Io(path.display().to_string(), e.to_string()))
                }
            }
            lock.owned.push(file);
        }
        Ok(lock)
    }

    /// Waits (polling every 200 ms, at most `wait`) for the exclusive lock `<env>/<name>.lock`:
    /// for work that runs of one environment must take in turn on this machine, such as
    /// Terraform in the environment's data directory. `None` when `wait` passed first.
    ///
    /// # Errors
    /// [`LockError::Io`] when the file cannot be opened.
    pub fn wait_exclusive(
        state_dir: &Path,
        env: &str,
        name: &str,
        holder: &str,
        wait: std::time::Duration,
    ) -> Result<Option<EnvLock>, LockError> {
        let path = state_dir
            .join("locks")
            .join(env)
            .join(format!("{}.lock", service_lock_file(name)));
        let mut file = open(&path)?;
        let until = std::time::Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => {
                    write_holder(&mut file, &path, holder)?;
                    return Ok(Some(EnvLock {
                        owned: vec![file],
                        _shared: vec![],
                    }));
                }
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => {
                    return Err(LockError::Io(path.display().to_string(), e.to_string()))
                }
            }
        }
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

    /// The race the infra test met: a refusal between the holder's lock and its write of its
    /// name said "another process".
    #[test]
    fn a_refusal_just_after_the_holder_locked_waits_for_its_name() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("locks").join("staging.lock");
        let mut file = open(&path).unwrap();
        file.try_lock().unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            write_holder(&mut file, &path, "infra apply (pid 7)").unwrap();
            std::thread::sleep(std::time::Duration::from_millis(500));
            file
        });
        match EnvLock::acquire(d.path(), "staging", "infra apply (pid 8)") {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, "infra apply (pid 7)"),
            _ => panic!("the lock was granted while held"),
        }
        drop(writer.join().unwrap());
    }

    #[test]
    fn a_released_lock_keeps_no_holder_text() {
        let d = tempfile::tempdir().unwrap();
        let lock = EnvLock::acquire(d.path(), "staging", "infra apply (pid 7)").unwrap();
        let path = d.path().join("locks").join("staging.lock");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "infra apply (pid 7)"
        );
        drop(lock);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        // A run refused on its second key leaves its first key free and unnamed.
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let held =
            EnvLock::acquire_service(d.path(), "staging", &keys(&["secret:shop/db"]), "run r1")
                .unwrap();
        assert!(EnvLock::acquire_service(
            d.path(),
            "staging",
            &keys(&["database:shop", "secret:shop/db"]),
            "run r2"
        )
        .is_err());
        let first = d.path().join("locks/staging/database-shop.lock");
        assert_eq!(std::fs::read_to_string(first).unwrap(), "");
        drop(held);
    }

    #[test]
    fn runs_of_different_services_share_the_environment_and_exclude_each_other_per_key() {
        let d = tempfile::tempdir().unwrap();
        let keys = |k: &[&str]| k.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let shop = EnvLock::acquire_service(
            d.path(),
            "staging",
            &keys(&["database:shop", "secret:shop/shop-db"]),
            "run r1",
        )
        .unwrap();
        let letters = EnvLock::acquire_service(
            d.path(),
            "staging",
            &keys(&["database:letters", "secret:letters/letters-db"]),
            "run r2",
        )
        .unwrap();
        match EnvLock::acquire_service(d.path(), "staging", &keys(&["database:shop"]), "run r3") {
            Err(LockError::Held { env, holder }) => {
                assert_eq!(env, "staging (database shop)");
                assert_eq!(holder, "run r1");
            }
            _ => panic!("a second run of shop was granted its lock"),
        }
        // An apply needs the whole environment: refused while any run holds a service, naming it.
        match EnvLock::acquire(d.path(), "staging", "infra apply") {
            Err(LockError::Held { holder, .. }) => {
                assert!(
                    holder.contains("run r1") && holder.contains("run r2"),
                    "{holder}"
                )
            }
            _ => panic!("an apply was granted the environment during runs"),
        }
        drop((shop, letters));
        let apply = EnvLock::acquire(d.path(), "staging", "infra apply s1").unwrap();
        match EnvLock::acquire_service(d.path(), "staging", &keys(&["database:shop"]), "run r4") {
            Err(LockError::Held { holder, .. }) => assert_eq!(holder, "infra apply s1"),
            _ => panic!("a run started during an apply"),
        }
        drop(apply);
        assert!(
            EnvLock::acquire_service(d.path(), "staging", &keys(&["database:shop"]), "r5").is_ok()
        );
    }

    #[test]
    fn lock_file_names_keep_only_safe_bytes() {
        assert_eq!(
            service_lock_file("secret:shop/shop-db"),
            "secret-shop-shop-db"
        );
        assert_eq!(
            service_lock_file("record:Shop.example.com"),
            "record-shop.example.com"
        );
    }
}
