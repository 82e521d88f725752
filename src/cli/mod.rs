//! Command-line definitions (clap) and dispatch. Each subcommand maps to one function that returns
//! the process exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a step failed and rollback completed, a dry-run could not plan a step (nothing changed), or `audit verify` found tampering |
//! | 2 | usage or configuration invalid |
//! | 3 | a gate refused (missing rehearsal, approval, panic flag, lock held, wrong AWS account) |
//! | 4 | rollback incomplete: a human is needed |
//! | 130 | interrupted; the journal is consistent and `resume` continues |

mod audit;
mod copy_worker;
mod diag;
mod infra;
mod logging;
mod migrate;
mod relay;
mod run;
mod runbook;

pub(crate) use diag::{print_error, print_problems};

use crate::engine::ui::OutputFormat;
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: a step failed and rollback completed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: usage or configuration invalid.
pub const EXIT_INVALID: i32 = 2;
/// Exit code: a gate refused.
pub const EXIT_REFUSED: i32 = 3;
/// Exit code: rollback incomplete.
pub const EXIT_ROLLBACK_INCOMPLETE: i32 = 4;
/// Exit code: interrupted.
pub const EXIT_INTERRUPTED: i32 = 130;

/// Carries an application onto AWS and through its cutover, rehearsed, reversible and on record.
#[derive(Debug, Parser)]
#[command(name = "cutover", version = crate::VERSION, about)]
pub struct Cli {
    /// Project root holding environments/, runbooks/ and terraform/ (default: the nearest
    /// directory at or above the current one that holds environments/ or runbooks/).
    #[arg(
        short = 'C',
        long = "project-dir",
        global = true,
        env = "CUTOVER_PROJECT_DIR",
        value_name = "DIR"
    )]
    pub project_dir: Option<PathBuf>,
    /// human: readable lines; json: one JSON object per line on stdout (a run's events, a
    /// command's data, and every error with its file, line and field).
    #[arg(short = 'o', long, global = true, value_enum, default_value = "human")]
    pub output: OutputFormat,
    /// Log more on stderr: -v info, -vv debug (AWS SDK, kube and HTTP calls), -vvv trace.
    /// RUST_LOG, when set, chooses instead (e.g. `RUST_LOG=aws_smithy_runtime=debug`).
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Log less: errors only.
    #[arg(short = 'q', long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Write the log to FILE (appended) instead of stderr; secrets are redacted there too.
    #[arg(long, global = true, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse and resolve every environment and runbook; report every problem; no network.
    Validate {
        /// Only this runbook (name in runbooks/ or path); default: all.
        #[arg(long)]
        runbook: Option<String>,
        /// Treat warnings (orderings that cost users) as errors: exit 2. For CI.
        #[arg(long)]
        deny_warnings: bool,
    },
    /// Full run against a non-production environment, recorded as a rehearsal.
    Rehearse {
        /// Environment name (environments/<ENV>.yaml).
        env: String,
        /// Runbook (name in runbooks/ or path); default: the migration in migrations/ when there
        /// is one, else the only runbook in runbooks/.
        #[arg(long, conflicts_with = "migration")]
        runbook: Option<String>,
        /// The environment's database the runbook acts on (a name under its `databases:`);
        /// default: the runbook's `database:`, else the only one.
        #[arg(long)]
        database: Option<String>,
        /// Rehearse a whole migration (name in migrations/ or path), wave by wave.
        #[arg(long)]
        migration: Option<String>,
        /// Marks the run as one of migration NAME's wave WAVE (set by the migration runner).
        #[arg(long = "in-migration", value_name = "NAME/WAVE", hide = true)]
        in_migration: Option<String>,
        /// Approve the `approval` step STEP up front (CI); the approver is taken from
        /// CUTOVER_APPROVER, GITHUB_ACTOR or GITLAB_USER_LOGIN. Repeatable.
        #[arg(long = "approve", value_name = "STEP")]
        approve: Vec<String>,
    },
    /// Run against any environment; production requires successful rehearsals of the same runbook.
    Execute {
        /// Environment name.
        env: String,
        /// Plan every step against live state and print what it would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Runbook (name in runbooks/ or path); default: the migration in migrations/ when there
        /// is one, else the only runbook in runbooks/.
        #[arg(long, conflicts_with = "migration")]
        runbook: Option<String>,
        /// The environment's database the runbook acts on (a name under its `databases:`);
        /// default: the runbook's `database:`, else the only one.
        #[arg(long)]
        database: Option<String>,
        /// Execute (or dry-run) a whole migration (name in migrations/ or path), wave by wave.
        #[arg(long)]
        migration: Option<String>,
        /// Marks the run as one of migration NAME's wave WAVE (set by the migration runner).
        #[arg(long = "in-migration", value_name = "NAME/WAVE", hide = true)]
        in_migration: Option<String>,
        /// Approve the `approval` step STEP up front (CI); the approver is taken from
        /// CUTOVER_APPROVER, GITHUB_ACTOR or GITLAB_USER_LOGIN. Repeatable.
        #[arg(long = "approve", value_name = "STEP")]
        approve: Vec<String>,
        /// Pass the promotion gate without the rehearsals it requires; the reason and what was
        /// missing are recorded and head the audit.
        #[arg(long = "break-glass", value_name = "REASON")]
        break_glass: Option<String>,
    },
    /// Continue an interrupted run from its event log.
    Resume {
        /// Run id.
        run_id: String,
        /// Approve the `approval` step STEP up front. Repeatable.
        #[arg(long = "approve", value_name = "STEP")]
        approve: Vec<String>,
    },
    /// Roll back a run: every started step, newest first.
    Rollback {
        /// Run id.
        run_id: String,
    },
    /// List runs on record.
    Runs {
        /// Only this environment.
        env: Option<String>,
    },
    /// Relay one replication slot's logical changes to the other server until stopped: the
    /// replication `postgres.replicate` and `postgres.fallback` run (as a Deployment in the
    /// target cluster) where a native subscription is not possible; with --guard-only, the WAL
    /// guard of a slot a native subscription consumes. Both servers' URLs come from the environment:
    /// CUTOVER_RELAY_PUBLISHER_URL and CUTOVER_RELAY_DESTINATION_URL.
    Relay {
        /// The logical replication slot on the publisher.
        #[arg(long)]
        slot: String,
        /// The publication whose tables are relayed.
        #[arg(long)]
        publication: String,
        /// Which server publishes; the other is the destination.
        #[arg(long, value_enum)]
        publisher: RelayPublisher,
        /// WAL retained for the slot past which a warning is printed (e.g. 10GB).
        #[arg(long)]
        wal_budget: Option<String>,
        /// WAL retained for the slot past which the relay stops and drops the slot (e.g. 50GB).
        #[arg(long)]
        wal_limit: Option<String>,
        /// Seconds between two looks of the WAL guard at the slot.
        #[arg(long, default_value_t = 10)]
        guard_interval: u64,
        /// Only guard the slot, which a native subscription consumes: warn past --wal-budget,
        /// drop the slot past --wal-limit (recording why on the destination); relay nothing.
        #[arg(long)]
        guard_only: bool,
    },
    /// One worker of the initial copy outside the run's process: claims chunks of the copy plan
    /// on the target (a lease it renews; a chunk whose lease ran out is claimed again) and
    /// copies them under the run's snapshot until none is left, then exits 0. Both servers'
    /// URLs come from the environment: CUTOVER_COPY_SOURCE_URL and CUTOVER_COPY_TARGET_URL.
    CopyWorker {
        /// The worker's name in the plan (default: index-<JOB_COMPLETION_INDEX> in an Indexed
        /// Job's pod, else pid-<process id>).
        #[arg(long)]
        name: Option<String>,
        /// Seconds a claim holds without renewal (renewed every third of it); a killed worker's
        /// chunk is claimed again this long after its last renewal.
        #[arg(long, default_value_t = 30)]
        lease: u64,
        /// This worker's limit, megabytes (10^6 bytes) of COPY data per second.
        #[arg(long)]
        rate_limit_mb: Option<f64>,
    },
    /// Show the state of one run: every step's outcome and, while it runs, what the current
    /// step is waiting for. Reads only: safe from a second terminal during a run.
    Status {
        /// Run id.
        run_id: String,
    },
    /// Terraform for one environment's account: plan (reviewed and policy-checked), apply the
    /// reviewed plan, read outputs.
    Infra {
        /// What to do.
        #[command(subcommand)]
        action: InfraCommand,
    },
    /// Runbook documents.
    Runbook {
        /// What to do.
        #[command(subcommand)]
        action: RunbookCommand,
    },
    /// Audit reports and verification.
    Audit {
        /// What to do.
        #[command(subcommand)]
        action: AuditCommand,
    },
    /// Print the JSON Schema of environment, runbook or migration files, for editors and
    /// validators (this repository commits them under schema/). No project needed.
    Schema {
        /// Which file's schema.
        #[arg(value_enum, required_unless_present = "write")]
        file: Option<crate::runbook::schema::SchemaFile>,
        /// Write all three into DIR (environment.json, runbook.json, migration.json) instead.
        #[arg(long, value_name = "DIR", conflicts_with = "file")]
        write: Option<PathBuf>,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `cutover man > cutover.1`.
    Man,
}

/// `cutover infra ...`.
#[derive(Debug, Subcommand)]
pub enum InfraCommand {
    /// Plan one environment (or all, concurrently) and save the plan for review and apply.
    Plan {
        /// Environment name.
        env: Option<String>,
        /// Plan every environment in environments/, each in its own account.
        #[arg(long, conflicts_with = "env")]
        all: bool,
    },
    /// Apply the plan saved by `infra plan ENV`, never a fresh one.
    Apply {
        /// Environment name.
        env: String,
    },
    /// Print the root's outputs (JSON).
    Output {
        /// Environment name.
        env: String,
    },
}

/// `cutover runbook ...`.
#[derive(Debug, Subcommand)]
pub enum RunbookCommand {
    /// Print the procedure a change board signs before the run: each step's purpose, what it
    /// will change, expected evidence, rollback, and sign-off boxes. No network.
    Render {
        /// Runbook (name in runbooks/ or path).
        runbook: String,
        /// Environment the procedure is for.
        #[arg(long)]
        env: String,
        /// html (printable) or md.
        #[arg(long, value_enum, default_value = "html")]
        format: runbook::ProcedureFormat,
        /// A directory whose `procedure.html` replaces the built-in template (minijinja; copy
        /// src/report/templates/procedure.html to start).
        #[arg(long, value_name = "DIR")]
        template: Option<PathBuf>,
    },
}

/// `cutover audit ...`.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Render a run's audit.
    Show {
        /// Run id.
        run_id: String,
        /// md, html (printable), json or junit.
        #[arg(long, value_enum, default_value = "md")]
        format: audit::AuditFormat,
        /// A directory whose `audit.html` replaces the built-in template (minijinja; copy
        /// src/report/templates/audit.html to start).
        #[arg(long, value_name = "DIR")]
        template: Option<PathBuf>,
    },
    /// Check a run's hash chain (names the first record that does not match) and the signature
    /// of its head (detects records cut off the end); offline.
    Verify {
        /// Run id.
        run_id: String,
        /// The signer's public key (SubjectPublicKeyInfo PEM, as `openssl pkey -pubout` writes):
        /// the signature must verify under it; without it, under the key the signature carries.
        #[arg(long, value_name = "FILE")]
        public_key: Option<PathBuf>,
    },
    /// A migration's summary in an environment, from the runs on record: each wave, each run's
    /// outcome, write outage, missing writes and run id (whose own audit `show` renders).
    Migration {
        /// Migration (name in migrations/ or path).
        migration: String,
        /// Environment name.
        #[arg(long)]
        env: String,
        /// md or json.
        #[arg(long, value_enum, default_value = "md")]
        format: audit::AuditFormat,
    },
}

/// The project root: `dir` when given (`-C` or `CUTOVER_PROJECT_DIR`), else the nearest
/// directory at or above `cwd` that holds `environments/` or `runbooks/` (as git finds `.git`),
/// else `cwd`.
pub fn find_project(dir: Option<&Path>, cwd: &Path) -> PathBuf {
    if let Some(d) = dir {
        return d.to_path_buf();
    }
    cwd.ancestors()
        .find(|a| a.join("environments").is_dir() || a.join("runbooks").is_dir())
        .unwrap_or(cwd)
        .to_path_buf()
}

/// Which server publishes to a relay.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RelayPublisher {
    /// The legacy database (the forward direction).
    Source,
    /// The RDS database (the fallback direction).
    Target,
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> i32 {
    diag::set_format(cli.output);
    if let Err(e) = logging::init(cli.verbose, cli.quiet, cli.log_file.as_deref()) {
        print_error(&e, None);
        return EXIT_INVALID;
    }
    let output = cli.output;
    match &cli.command {
        Command::Schema { file, write } => return schema(*file, write.as_deref()),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "cutover", &mut std::io::stdout());
            return EXIT_OK;
        }
        Command::Relay {
            slot,
            publication,
            publisher,
            wal_budget,
            wal_limit,
            guard_interval,
            guard_only,
        } => {
            return relay::run(
                slot.clone(),
                publication.clone(),
                match publisher {
                    RelayPublisher::Source => crate::providers::postgres::Server::Source,
                    RelayPublisher::Target => crate::providers::postgres::Server::Target,
                },
                wal_budget.clone(),
                wal_limit.clone(),
                std::time::Duration::from_secs((*guard_interval).max(1)),
                *guard_only,
            )
            .await
        }
        Command::CopyWorker {
            name,
            lease,
            rate_limit_mb,
        } => {
            return copy_worker::run(
                name.clone(),
                std::time::Duration::from_secs(*lease),
                *rate_limit_mb,
            )
            .await
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            return match clap_mangen::Man::new(cmd).render(&mut std::io::stdout()) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    print_error(&format!("cannot write the man page: {e}"), None);
                    EXIT_FAILED
                }
            };
        }
        _ => {}
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let dir = find_project(cli.project_dir.as_deref(), &cwd);
    let root = match std::fs::canonicalize(&dir) {
        Ok(r) => r,
        Err(e) => {
            print_error(&format!("project directory {}: {e}", dir.display()), None);
            return EXIT_INVALID;
        }
    };
    match cli.command {
        Command::Validate {
            runbook,
            deny_warnings,
        } => run::validate(&root, runbook.as_deref(), output, deny_warnings),
        Command::Rehearse {
            env,
            runbook,
            database,
            migration,
            in_migration,
            approve,
        } => {
            let args = run::StartArgs {
                runbook,
                database,
                migration,
                in_migration,
                approve,
                break_glass: None,
            };
            run::start(&root, &env, &args, run::Kind::Rehearse, output).await
        }
        Command::Execute {
            env,
            dry_run,
            runbook,
            database,
            migration,
            in_migration,
            approve,
            break_glass,
        } => {
            let kind = if dry_run {
                run::Kind::DryRun
            } else {
                run::Kind::Execute
            };
            let args = run::StartArgs {
                runbook,
                database,
                migration,
                in_migration,
                approve,
                break_glass,
            };
            run::start(&root, &env, &args, kind, output).await
        }
        Command::Resume { run_id, approve } => {
            run::resume(&root, &run_id, output, false, approve).await
        }
        Command::Rollback { run_id } => run::resume(&root, &run_id, output, true, Vec::new()).await,
        Command::Runs { env } => {
            pull_runs(&root, env.as_deref()).await;
            audit::runs(&root, env.as_deref(), output)
        }
        Command::Status { run_id } => {
            pull_missing(&root, &run_id).await;
            let code = audit::status(&root, &run_id, output);
            for w in audit::slot_warnings(&root, &run_id).await {
                eprintln!("warning: {w}");
            }
            code
        }
        Command::Infra { action } => match action {
            InfraCommand::Plan { env, all } => infra::plan(&root, env.as_deref(), all).await,
            InfraCommand::Apply { env } => infra::apply(&root, &env).await,
            InfraCommand::Output { env } => infra::output(&root, &env).await,
        },
        Command::Schema { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Relay { .. }
        | Command::CopyWorker { .. } => EXIT_OK,
        Command::Runbook {
            action:
                RunbookCommand::Render {
                    runbook,
                    env,
                    format,
                    template,
                },
        } => runbook::render(&root, &runbook, &env, format, template.as_deref()),
        Command::Audit {
            action:
                AuditCommand::Show {
                    run_id,
                    format,
                    template,
                },
        } => {
            pull_missing(&root, &run_id).await;
            audit::show(&root, &run_id, format, template.as_deref())
        }
        Command::Audit {
            action: AuditCommand::Verify { run_id, public_key },
        } => {
            pull_missing(&root, &run_id).await;
            audit::verify(&root, &run_id, public_key.as_deref())
        }
        Command::Audit {
            action:
                AuditCommand::Migration {
                    migration,
                    env,
                    format,
                },
        } => {
            pull_runs(&root, Some(&env)).await;
            audit::migration(&root, &migration, &env, format)
        }
    }
}

/// Updates the local copies of runs kept in `s3` stores; unreachable stores are warned about.
pub(crate) async fn pull_runs(root: &std::path::Path, env: Option<&str>) {
    for problem in crate::engine::store::pull_all(root, env).await {
        eprintln!("warning: {problem}");
    }
}

async fn pull_missing(root: &std::path::Path, run_id: &str) {
    let local = crate::engine::runs::log_path(&crate::engine::state_dir(root), run_id);
    if !local.exists() {
        pull_runs(root, None).await;
    }
}

/// `cutover schema FILE` prints one schema; `--write DIR` writes every one.
fn schema(file: Option<crate::runbook::schema::SchemaFile>, write: Option<&Path>) -> i32 {
    use crate::runbook::schema::SchemaFile;
    match (file, write) {
        (Some(f), _) => {
            print!("{}", f.render());
            EXIT_OK
        }
        (None, Some(dir)) => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                print_error(&format!("cannot create {}: {e}", dir.display()), None);
                return EXIT_FAILED;
            }
            for f in SchemaFile::ALL {
                let path = dir.join(f.file_name());
                if let Err(e) = std::fs::write(&path, f.render()) {
                    print_error(&format!("cannot write {}: {e}", path.display()), None);
                    return EXIT_FAILED;
                }
                eprintln!("wrote {}", path.display());
            }
            EXIT_OK
        }
        (None, None) => {
            print_error(
                "name a file (environment, runbook, migration) or --write DIR",
                None,
            );
            EXIT_INVALID
        }
    }
}
