//! `migrations/<name>.yaml`: a migration moved in waves, each wave a set of runs (a runbook, once
//! per database it is applied to), with a concurrency limit and what a failure does to the rest
//! of its wave.
//!
//! ```yaml
//! name: shop-and-letters
//! waves:
//!   - name: core
//!     runs:
//!       - runbook: shop-cutover
//!   - name: rest
//!     concurrency: 2
//!     on_failure: continue
//!     runs:
//!       - { runbook: letters-cutover, databases: [letters] }
//! ```
//!
//! This module parses and checks the file (every problem with its line); which runs are still to
//! do, and in which order, is `crate::engine::migration`'s.

use super::problem::{from_yaml_error, Problem, Problems};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;
use std::path::Path;

/// What a failed run does to the other runs of its wave (`on_failure:`). In every case no later
/// wave starts, and the failed run has rolled itself back.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// The wave's other runs go on to their end (the default): what moved stays moved.
    #[default]
    Continue,
    /// The wave's other runs are interrupted at their next safe point (exit 130; re-running the
    /// migration resumes them); runs not yet started do not start.
    Stop,
    /// The wave's other runs are interrupted and then rolled back, succeeded ones too: the wave
    /// moves all or nothing.
    Rollback,
}

impl OnFailure {
    /// The spelling in files.
    pub fn as_str(self) -> &'static str {
        match self {
            OnFailure::Continue => "continue",
            OnFailure::Stop => "stop",
            OnFailure::Rollback => "rollback",
        }
    }
}

/// What `execute` of a migration does when the promotion gate refuses one of its runbooks
/// (`promotion.on_unrehearsed:`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum OnUnrehearsed {
    /// Nothing runs (the default); the refusal names every runbook that lacks its rehearsals.
    #[default]
    Refuse,
    /// The waves before the first refused runbook's wave run; that wave and the later ones wait.
    RunEarlierWaves,
}

/// `promotion:` of a migration.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct MigrationPromotion {
    /// See [`OnUnrehearsed`].
    #[serde(default)]
    pub on_unrehearsed: OnUnrehearsed,
}

/// One entry of a wave: a runbook, applied to each of `databases` (one run per database), or
/// once to the runbook's own (or the environment's only) database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaveRun {
    /// A runbook name in `runbooks/`.
    pub runbook: String,
    /// The environment's databases it is applied to (names under its `databases:`); empty: the
    /// runbook's `database:` or the only one.
    #[serde(default)]
    pub databases: Vec<String>,
}

/// A wave: runs that proceed concurrently; the next wave starts only when all succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Unique in the migration, `[a-z0-9_-]+`.
    pub name: String,
    /// At most this many of the wave's runs at once (default: all of them).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// What a failed run does to the rest of the wave.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// The wave's runs.
    pub runs: Vec<WaveRun>,
}

/// A parsed migration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    /// Must equal the file stem.
    pub name: String,
    /// Free text.
    #[serde(default)]
    pub description: Option<String>,
    /// Waves in order.
    pub waves: Vec<Wave>,
    /// What `execute` does when a runbook lacks its rehearsals.
    #[serde(default)]
    pub promotion: MigrationPromotion,
}

impl Wave {
    /// The wave's runs as `(runbook, database)`, one per database (`None`: the runbook's own).
    pub fn entries(&self) -> Vec<(String, Option<String>)> {
        let mut out = Vec::new();
        for r in &self.runs {
            if r.databases.is_empty() {
                out.push((r.runbook.clone(), None));
            }
            for d in &r.databases {
                out.push((r.runbook.clone(), Some(d.clone())));
            }
        }
        out
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Parses a migration file and checks what needs no other file: names, a wave with runs, a
/// concurrency of at least 1, each `(runbook, database)` once. `known_runbooks` are the names in
/// `runbooks/`.
///
/// # Errors
/// Every problem found, each with file and line.
pub(super) fn parse(
    path: &Path,
    text: &str,
    expected_name: &str,
    known_runbooks: &[String],
) -> Result<Migration, Problems> {
    #[derive(Deserialize)]
    struct Lines {
        waves: Vec<Spanned<serde::de::IgnoredAny>>,
    }
    let m: Migration =
        super::parse_yaml(text).map_err(|e| Problems::one(from_yaml_error(path, &e)))?;
    let wave_lines: Vec<u32> = super::parse_yaml::<Lines>(text)
        .map(|l| l.waves.iter().map(|w| w.referenced.line() as u32).collect())
        .unwrap_or_default();
    let mut problems = Problems::default();
    let line_of = |needle: &str, from: u32| {
        text.lines()
            .enumerate()
            .skip(from.saturating_sub(1) as usize)
            .find(|(_, l)| l.contains(needle))
            .map(|(i, _)| i as u32 + 1)
    };
    if m.name != expected_name {
        problems.push(Problem::new(
            path,
            line_of("name:", 1),
            format!(
                "name `{}` does not match the file name `{expected_name}`",
                m.name
            ),
        ));
    }
    if m.waves.is_empty() {
        problems.push(Problem::new(
            path,
            line_of("waves:", 1),
            "a migration needs at least one wave",
        ));
    }
    let mut seen_waves = Vec::new();
    let mut seen_runs: Vec<(String, Option<String>)> = Vec::new();
    for (i, w) in m.waves.iter().enumerate() {
        let at = wave_lines.get(i).copied();
        if !valid_name(&w.name) {
            problems.push(Problem::new(
                path,
                at,
                format!(
                    "wave `{}`: a name of [a-z0-9_-] is required",
                    w.name.escape_debug()
                ),
            ));
        }
        if seen_waves.contains(&w.name) {
            problems.push(Problem::new(
                path,
                at,
                format!("wave `{}` is named twice", w.name),
            ));
        }
        seen_waves.push(w.name.clone());
        if w.runs.is_empty() {
            problems.push(Problem::new(
                path,
                at,
                format!("wave `{}` has no runs", w.name),
            ));
        }
        if w.concurrency == Some(0) {
            problems.push(Problem::new(
                path,
                at.and_then(|a| line_of("concurrency", a)),
                format!("wave `{}`: concurrency must be at least 1", w.name),
            ));
        }
        for r in &w.runs {
            let rline = at.and_then(|a| line_of(&r.runbook, a));
            if !known_runbooks.contains(&r.runbook) {
                problems.push(
                    Problem::new(
                        path,
                        rline,
                        format!("wave `{}`: no runbook `{}` in runbooks/", w.name, r.runbook),
                    )
                    .hint(Some(format!("runbooks: {}", known_runbooks.join(", ")))),
                );
            }
        }
        for e in w.entries() {
            if seen_runs.contains(&e) {
                problems.push(Problem::new(
                    path,
                    at.and_then(|a| line_of(&e.0, a)),
                    format!(
                        "wave `{}`: runbook `{}`{} is listed twice in the migration",
                        w.name,
                        e.0,
                        e.1.as_ref()
                            .map(|d| format!(" on database `{d}`"))
                            .unwrap_or_default()
                    ),
                ));
            }
            seen_runs.push(e);
        }
    }
    problems.into_result(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: m\nwaves:\n  - name: core\n    runs:\n      - runbook: shop\n  - name: rest\n    concurrency: 2\n    on_failure: rollback\n    runs:\n      - { runbook: letters, databases: [a, b] }\n";

    fn known() -> Vec<String> {
        vec!["shop".into(), "letters".into()]
    }

    #[test]
    fn parses_waves_and_expands_one_run_per_database() {
        let m = parse(Path::new("m.yaml"), GOOD, "m", &known()).unwrap();
        assert_eq!(m.waves.len(), 2);
        assert_eq!(m.waves[1].on_failure, OnFailure::Rollback);
        assert_eq!(m.waves[1].concurrency, Some(2));
        assert_eq!(
            m.waves[1].entries(),
            vec![
                ("letters".to_string(), Some("a".to_string())),
                ("letters".to_string(), Some("b".to_string()))
            ]
        );
        assert_eq!(m.waves[0].entries(), vec![("shop".to_string(), None)]);
        assert_eq!(m.promotion.on_unrehearsed, OnUnrehearsed::Refuse);
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = GOOD
            .replace("name: rest", "name: core")
            .replace("concurrency: 2", "concurrency: 0")
            .replace("runbook: shop", "runbook: shpo");
        let err = parse(Path::new("m.yaml"), &text, "m", &known()).unwrap_err();
        let text = err.to_string();
        assert_eq!(err.0.len(), 3, "{text}");
        assert!(text.contains("no runbook `shpo`"), "{text}");
        assert!(text.contains("named twice"), "{text}");
        assert!(text.contains("at least 1"), "{text}");
        assert_eq!(err.0[0].line, Some(5), "{text}");
    }

    #[test]
    fn an_unknown_policy_lists_the_choices() {
        let text = GOOD.replace("on_failure: rollback", "on_failure: retry");
        let err = parse(Path::new("m.yaml"), &text, "m", &known()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("retry") && text.contains("continue"),
            "{text}"
        );
        assert_eq!(err.0[0].line, Some(8), "{text}");
    }
}
