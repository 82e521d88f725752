//! Local state both the engine and `infra` stand on: the state directory, the environment
//! lock, run ids and who is operating. It must not know about runs, plans or step kinds.

pub mod lock;

use std::path::{Path, PathBuf};

/// The local state directory (`.cutover/` under the project root): run logs and locks.
pub fn state_dir(root: &Path) -> PathBuf {
    root.join(".cutover")
}

/// A new run id: UTC time and 6 random hex digits, e.g. `20261120-214700-3f9a1c` (sortable, valid
/// in Kubernetes names and AWS session names).
pub fn new_run_id() -> String {
    let now = chrono::Utc::now().format("%Y%m%d-%H%M%S");
    let rand = uuid::Uuid::new_v4().simple().to_string();
    format!("{now}-{}", &rand[..6])
}

/// Who is taking a lock: `pid N, host H, user U, since T`.
pub fn holder_info() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!(
        "pid {}, host {}, user {}, since {}",
        std::process::id(),
        host.trim(),
        operator(),
        chrono::Utc::now().to_rfc3339()
    )
}

/// The person or CI actor running the tool: `CUTOVER_OPERATOR`, `GITHUB_ACTOR`,
/// `GITLAB_USER_LOGIN`, `USER` or `LOGNAME`, the first set; `unknown` otherwise.
pub fn operator() -> String {
    std::env::var("CUTOVER_OPERATOR")
        .or_else(|_| std::env::var("GITHUB_ACTOR"))
        .or_else(|_| std::env::var("GITLAB_USER_LOGIN"))
        .or_else(|_| std::env::var("USER"))
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into())
}
