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
}

impl Problem {
    /// A problem without a hint.
    pub fn new(file: &Path, line: Option<u32>, message: impl Into<String>) -> Self {
        Problem {
            file: file.to_path_buf(),
            line,
            message: message.into(),
            hint: None,
        }
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

/// Converts a serde-saphyr error into a located problem.
pub(crate) fn from_yaml_error(file: &Path, e: &serde_saphyr::Error) -> Problem {
    let line = e.location().map(|l| l.line() as u32).filter(|l| *l > 0);
    // The error's Display may include a rendered snippet; keep its first line as the message.
    let text = e.to_string();
    let message = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid YAML")
        .trim()
        .to_string();
    Problem::new(file, line, message)
}
