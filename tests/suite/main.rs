//! The integration suite: one test binary, one module per area (formerly one binary per file).
//!
//! One binary because every file under `tests/` links the whole crate, the AWS SDK and kube: one
//! link instead of fifteen, and one process whose tests libtest runs at once. Most tests start a
//! sandbox and then wait (TTLs, analysis windows, rollouts) rather than compute, so the suite runs
//! many at a time; `common::slots` bounds how many sandboxes run at once
//! (`CUTOVER_TEST_SANDBOXES`, default 6) and starts the longest tests first. libtest's thread
//! count comes from `.cargo/config.toml` (`RUST_TEST_THREADS`), high enough that every test is
//! started at once and waits for its slot there.
//!
//! Each test writes where its time went to `target/test-timings.jsonl` (one line per sandbox:
//! start, the steps of its runs by kind, the whole); `scripts/test-timings` prints the table.

mod common;

mod acceptance;
mod analysis;
mod audit;
mod bench;
mod ci_examples;
// Kills the binary at every record: needs the `crash-hook` feature (the README's test command).
#[cfg(feature = "crash-hook")]
mod crash;
mod fallback;
mod fuzz;
mod infra;
mod migration;
mod objects;
mod outcome;
mod pooler;
mod postgres;
mod promotion;
mod relay;
mod rights;
mod secrets;
mod tls;
mod traffic;
mod validate;
