//! `cutover`: carries an application onto AWS and through its cutover. Terraform per account,
//! declarative YAML runbooks (replicate the database into RDS, freeze writes, flip connection
//! strings in Kubernetes Secrets, cut DNS over in Route 53, verify health), automatic rollback and
//! a tamper-evident audit of every run.
//!
//! Layers, top to bottom: [`cli`] (commands) → [`runbook`] (config → plan) and [`engine`]
//! (execution, journal, rollback) → [`steps`] (one file per step kind) → [`providers`] (clients for
//! the real services). [`config`] holds the raw file types; [`report`] renders audits; [`secret`]
//! keeps secret values out of every output.

/// `cutover --version`: the package version and the commit it was built from
/// (`0.1.0 (commit 1a2b3c4d5e6f)`; `unknown` outside a git checkout), set by `build.rs`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("CUTOVER_COMMIT"),
    ")"
);

pub mod cli;
pub mod config;
pub mod engine;
pub mod infra;
pub mod local;
pub mod policy;
pub mod providers;
pub mod report;
pub mod runbook;
pub mod secret;
pub mod steps;
