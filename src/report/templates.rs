//! The templates printable reports are rendered from (minijinja, auto-escaped for HTML): the
//! built-in ones under `src/report/templates/`, or a team's own copies from `--template DIR`
//! (any file of that name there replaces the built-in one, so a team can brand a report without
//! forking the tool).
//!
//! It owns loading and rendering; what a report shows is its template's and its model's. It
//! reads only the template directory it is given.

use std::path::{Path, PathBuf};

/// The built-in templates, by file name.
const BUILT_IN: [(&str, &str); 2] = [
    ("audit.html", include_str!("templates/audit.html")),
    ("procedure.html", include_str!("templates/procedure.html")),
];

/// Why a report could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// A template in `--template DIR` could not be read.
    #[error("cannot read template {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A template does not parse or fails while rendering (names the template and line).
    #[error("template {name}{line}: {detail}")]
    Render {
        /// The template's name (`audit.html`).
        name: String,
        /// ` line N` when known.
        line: String,
        /// minijinja's message.
        detail: String,
    },
}

impl TemplateError {
    fn render(name: &str, e: &minijinja::Error) -> TemplateError {
        TemplateError::Render {
            name: name.to_string(),
            line: e.line().map(|l| format!(" line {l}")).unwrap_or_default(),
            detail: match e.detail() {
                Some(d) => format!("{}: {d}", e.kind()),
                None => e.kind().to_string(),
            },
        }
    }
}

/// `ms` milliseconds as seconds with one decimal (`12.3`).
fn seconds(ms: f64) -> String {
    format!("{:.1}", ms / 1000.0)
}

/// A JSON value, pretty-printed as text (escaped by the template like any other text).
fn pretty(v: minijinja::Value) -> String {
    serde_json::to_value(&v)
        .and_then(|j| serde_json::to_string_pretty(&j))
        .unwrap_or_default()
}

/// Renders template `name` (from `dir` when it holds one, else built in) with `ctx`.
///
/// # Errors
/// [`TemplateError`]: the team's file cannot be read, or the template fails.
pub fn render(
    name: &str,
    dir: Option<&Path>,
    ctx: minijinja::Value,
) -> Result<String, TemplateError> {
    let source = match dir.map(|d| d.join(name)).filter(|p| p.exists()) {
        Some(path) => {
            std::fs::read_to_string(&path).map_err(|source| TemplateError::Read { path, source })?
        }
        None => BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| t.to_string())
            .unwrap_or_default(),
    };
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("seconds", seconds);
    env.add_filter("pretty", pretty);
    env.add_template_owned(name.to_string(), source)
        .map_err(|e| TemplateError::render(name, &e))?;
    let tmpl = env
        .get_template(name)
        .map_err(|e| TemplateError::render(name, &e))?;
    tmpl.render(ctx)
        .map_err(|e| TemplateError::render(name, &e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_and_a_teams_template_replaces_the_built_in_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("audit.html"),
            "<h1>ACME {{ audit.run_id }}</h1>",
        )
        .unwrap();
        let ctx = minijinja::context! { audit => minijinja::context! { run_id => "<b>x</b>" } };
        let out = render("audit.html", Some(dir.path()), ctx).unwrap();
        assert_eq!(out, "<h1>ACME &lt;b&gt;x&lt;&#x2f;b&gt;</h1>");
        std::fs::write(dir.path().join("audit.html"), "{{ audit.nope }}").unwrap();
        let ctx = minijinja::context! { audit => minijinja::context! { run_id => "r" } };
        let err = render("audit.html", Some(dir.path()), ctx)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("template audit.html line 1: undefined value"),
            "{err}"
        );
    }
}
