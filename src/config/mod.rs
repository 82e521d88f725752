//! Serde types for the files a team commits: `environments/<env>.yaml` and
//! `runbooks/<name>.yaml`, and their loading into those types with every problem located by file
//! and line.
//!
//! This module owns the *raw* layer (what the YAML says). It does no network or process I/O; it
//! reads only the file it is given and the process environment for `${VAR}` expansion in
//! environment files. Resolution into a runnable plan lives in `crate::runbook`.

pub mod duration;
mod environment;
mod expand;
mod migration;
pub mod node;
mod problem;
mod runbook;

pub use environment::{
    AwsSection, BucketSection, DatabaseSection, DnsSection, EksSection, Environment,
    MonitoringSection, OrganizationSection, PlanPolicy, PromotionPolicy, SecretRef, SecretSource,
    Side, StoreKind, StoreSection, TerraformSection, Tier, UrlParts,
};
pub use migration::{Migration, MigrationPromotion, OnFailure, OnUnrehearsed, Wave, WaveRun};
pub use problem::{choices_hint, did_you_mean, Problem, Problems};
pub use runbook::{
    follows_another, Heartbeat, LegacyPath, RawPhase, RawRunbook, RawStep, Reload, RollbackPolicy,
    SpannedStep,
};

use std::path::Path;

/// The JSON Schema (draft 2020-12, by schemars) of an environment file, from [`Environment`]'s
/// serde attributes and doc comments.
pub fn environment_schema() -> schemars::Schema {
    schemars::schema_for!(Environment)
}

/// The JSON Schema of a runbook file as its serde types describe it; a step's `with:` is any
/// mapping here (`crate::runbook::schema` adds each kind's parameters).
pub fn runbook_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    generator.root_schema_for::<runbook::RawRunbookFile>()
}

/// The JSON Schema of a migration file.
pub fn migration_schema() -> schemars::Schema {
    schemars::schema_for!(Migration)
}

/// True when `s` contains template syntax (`{{ … }}` or `{% … %}`): step parameters are
/// minijinja templates, rendered by `crate::runbook::template` at run time.
pub fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Largest environment or runbook file read, in bytes (1 MiB): the repository's are a few KiB;
/// a larger file is refused before it is read, so no input can make parsing use unbounded
/// memory. YAML alias expansion is bounded by serde-saphyr's default budget.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Parses YAML with a budget sized for configuration files (a runbook has hundreds of nodes):
/// at most 1,000 aliases and anchors, 100,000 nodes, 200,000 parser events, 10,000 events
/// recorded under anchors (a step template reused a few dozen times records hundreds) and 2 MiB
/// of scalar text, so an alias bomb is refused before it expands (serde-saphyr's defaults allow
/// 64 MiB), within a few MiB of memory.
///
/// # Errors
/// The YAML error, or the budget breached.
pub(crate) fn parse_yaml<T: serde::de::DeserializeOwned>(
    text: &str,
) -> Result<T, serde_saphyr::Error> {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = 2 << 20;
    budget.max_recorded_anchor_events = 10_000;
    budget.max_recorded_anchor_bytes = 2 << 20;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    serde_saphyr::from_str_with_options(text, options)
}

/// Reads `full` as text unless it is larger than [`MAX_FILE_BYTES`].
fn read_bounded(full: &Path) -> std::io::Result<String> {
    let len = std::fs::metadata(full)?.len();
    if len > MAX_FILE_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!(
                "{len} bytes, more than the {MAX_FILE_BYTES} bytes a configuration file may have"
            ),
        ));
    }
    std::fs::read_to_string(full)
}

/// Reads and parses `environments/<name>.yaml` under `root`.
///
/// # Errors
/// Every problem found (missing file, `${VAR}` without a value, YAML syntax, unknown or missing
/// field, a name that does not match the file name), each with file and line.
pub fn load_environment(root: &Path, name: &str) -> Result<Environment, Problems> {
    let full = root.join("environments").join(format!("{name}.yaml"));
    let path = full.strip_prefix(root).unwrap_or(&full).to_path_buf();
    let text = read_bounded(&full).map_err(|e| {
        let mut hint = None;
        if e.kind() == std::io::ErrorKind::NotFound {
            let known = list_names(&root.join("environments"));
            let known: Vec<&str> = known.iter().map(String::as_str).collect();
            hint = Some(choices_hint(name, "known environments", &known));
        }
        Problems::one(
            Problem::new(&path, None, format!("cannot read environment file: {e}")).hint(hint),
        )
    })?;
    environment::parse(&path, &text, name)
}

/// Reads and parses a runbook file. `reference` is either a path to a YAML file or the name of a
/// file in `runbooks/` (`shop-cutover` for `runbooks/shop-cutover.yaml`).
///
/// # Errors
/// The file cannot be read or parsed at all. Problems of single steps come back beside the
/// runbook (without those steps), so callers can report them together with their own checks.
pub fn load_runbook(
    root: &Path,
    reference: &str,
) -> Result<(RawRunbook, Problems, String, std::path::PathBuf), Problems> {
    let full = resolve_runbook_path(root, reference);
    let path = full.strip_prefix(root).unwrap_or(&full).to_path_buf();
    let text = read_bounded(&full).map_err(|e| {
        let known = list_names(&root.join("runbooks"));
        Problems::one(
            Problem::new(&path, None, format!("cannot read runbook: {e}"))
                .hint(Some(format!("runbooks in runbooks/: {}", known.join(", ")))),
        )
    })?;
    let (raw, problems) = runbook::parse(&path, &text)?;
    Ok((raw, problems, text, path))
}

/// The path a runbook reference names (see [`load_runbook`]).
pub fn resolve_runbook_path(root: &Path, reference: &str) -> std::path::PathBuf {
    reference_path(root, reference, "runbooks")
}

/// The file a reference names: a path (it ends in `.yaml`/`.yml` or holds a `/`; relative to
/// `root` unless absolute), else the name of a file in `root/dir`.
fn reference_path(root: &Path, reference: &str, dir: &str) -> std::path::PathBuf {
    let direct = Path::new(reference);
    if reference.ends_with(".yaml") || reference.ends_with(".yml") || reference.contains('/') {
        if direct.is_absolute() {
            direct.to_path_buf()
        } else {
            root.join(direct)
        }
    } else {
        root.join(dir).join(format!("{reference}.yaml"))
    }
}

/// Reads and checks a migration: `reference` is a path to a YAML file or a name in
/// `migrations/`. Returns it with its file (relative to `root`) and the file's text (whose
/// SHA-256 the runs record).
///
/// # Errors
/// Every problem found, each with file and line (see `migration::parse`).
pub fn load_migration(
    root: &Path,
    reference: &str,
) -> Result<(Migration, std::path::PathBuf, String), Problems> {
    let full = reference_path(root, reference, "migrations");
    let path = full.strip_prefix(root).unwrap_or(&full).to_path_buf();
    let text = read_bounded(&full).map_err(|e| {
        let known = list_names(&root.join("migrations"));
        Problems::one(
            Problem::new(&path, None, format!("cannot read migration: {e}")).hint(Some(format!(
                "migrations in migrations/: {}",
                known.join(", ")
            ))),
        )
    })?;
    let stem = full
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_string();
    let m = migration::parse(&path, &text, &stem, &list_names(&root.join("runbooks")))?;
    Ok((m, path, text))
}

/// Names (file stems) of the `*.yaml` files in `dir`, sorted; empty when it cannot be read.
pub fn list_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let p = e.path();
                    (p.extension().and_then(|x| x.to_str()) == Some("yaml"))
                        .then(|| p.file_stem()?.to_str().map(str::to_owned))
                        .flatten()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
