//! A configuration problem located by file and line, and the list of them that validation returns.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a file a team commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file, as given (relative to the project root when found there).
    pub file: PathBuf,
    /// 1-based line, when known.
    pub line: Option<u32>,
    /// What is wrong, naming the field, step or template expression.
    pub message: String,
    /// What would fix it, e.g. the list of valid choices.
    pub hint: Option<String>,
    /// The field the problem is about, as a dotted path from the top of the file's entry
    /// (`kind`, `with.analysis.samples`, `dns.cutover_ttl`), when it is known.
    pub field: Option<String>,
}

impl Problem {
    /// A problem without a hint.
    pub fn new(file: &Path, line: Option<u32>, message: impl Into<String>) -> Self {
        Problem {
            file: file.to_path_buf(),
            line,
            message: message.into(),
            hint: None,
            field: None,
        }
    }
    /// Names the field the problem is about.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
    /// Adds (or clears) the hint.
    pub fn hint(mut self, hint: Option<String>) -> Self {
        self.hint = hint;
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        match self.line {
            Some(l) => write!(f, "{file}:{l}: {}", self.message)?,
            None => write!(f, "{file}: {}", self.message)?,
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Every problem found in one or more files; never empty when returned as an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// A list of one.
    pub fn one(p: Problem) -> Self {
        Problems(vec![p])
    }
    /// Appends all of `other`.
    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }
    /// Appends those of `other` not already here (the same problem found resolving one file
    /// against several environments is reported once).
    pub fn extend_new(&mut self, other: Problems) {
        for p in other.0 {
            if !self.0.contains(&p) {
                self.0.push(p);
            }
        }
    }
    /// Appends one.
    pub fn push(&mut self, p: Problem) {
        self.0.push(p);
    }
    /// True when nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// `Ok(v)` when empty, else `Err(self)`.
    pub fn into_result<T>(self, v: T) -> Result<T, Problems> {
        if self.0.is_empty() {
            Ok(v)
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// The choice nearest to `word` when it looks like a misspelling of one (Damerau-Levenshtein
/// distance at most a third of the word's length, at least 1; ties go to the first choice), as
/// ``did you mean `rds.snapshot`?``.
pub fn did_you_mean<'a>(word: &str, choices: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let budget = (word.chars().count() / 3).max(1);
    choices
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, _)| *d <= budget)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

/// A hint listing `choices` (`what: a, b, c`), led by [`did_you_mean`] when `word` is near one.
pub fn choices_hint<'a>(word: &str, what: &str, choices: &[&'a str]) -> String {
    let list = format!("{what}: {}", choices.join(", "));
    match did_you_mean(word, choices.iter().copied()) {
        Some(s) => format!("{s} {list}"),
        None => list,
    }
}

/// serde-saphyr's English wording without " at line L, column C": a [`Problem`] shows its line
/// once, before the message.
struct NoLocation;

impl serde_saphyr::Localizer for NoLocation {
    fn attach_location<'a>(
        &self,
        base: std::borrow::Cow<'a, str>,
        _loc: serde_saphyr::Location,
    ) -> std::borrow::Cow<'a, str> {
        base
    }
}

/// Converts a serde-saphyr error into a located problem: the line from the error's location,
/// the message without the location or a source snippet.
pub(crate) fn from_yaml_error(file: &Path, e: &serde_saphyr::Error) -> Problem {
    let line = e.location().map(|l| l.line() as u32).filter(|l| *l > 0);
    let formatter = serde_saphyr::DefaultMessageFormatter.with_localizer(&NoLocation);
    let mut options = serde_saphyr::RenderOptions::new(&formatter);
    options.snippets = serde_saphyr::SnippetMode::Off;
    let text = e.render_with_options(options);
    let message = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid YAML")
        .trim()
        .to_string();
    Problem::new(file, line, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_near_miss_is_suggested_and_a_far_one_is_not() {
        let kinds = ["rds.snapshot", "route53.cutover", "http.check"];
        assert_eq!(
            did_you_mean("rds.snapshto", kinds).as_deref(),
            Some("did you mean `rds.snapshot`?")
        );
        assert_eq!(did_you_mean("terraform.plan", kinds), None);
        assert_eq!(
            choices_hint("stagign", "known environments", &["dev", "staging"]),
            "did you mean `staging`? known environments: dev, staging"
        );
    }
}
