//! How the command line reports errors: `error:` / `hint:` lines on stderr, or under `-o json`
//! one JSON object per error on stdout (`{"type":"error","message",…}` with `file`, `line`,
//! `field` and `hint` when known), so a CI step that parses the output sees why it failed.
//!
//! It owns only the shape of error output; what is an error, and its exit code, is the caller's.

use crate::config::{Problem, Problems};
use crate::engine::ui::OutputFormat;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether errors are printed as JSON (`-o json`), set once when the command line is read.
static JSON: AtomicBool = AtomicBool::new(false);

/// Chooses the error format for the rest of the process.
pub(crate) fn set_format(format: OutputFormat) {
    JSON.store(format == OutputFormat::Json, Ordering::Relaxed);
}

fn json_mode() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// The JSON object of one problem: `type`, `message` and whichever of `file`, `line`, `field`,
/// `hint` are known.
fn problem_json(p: &Problem) -> Value {
    let mut v = json!({ "type": "error", "message": p.message });
    v["file"] = json!(p.file.display().to_string());
    if let Some(l) = p.line {
        v["line"] = json!(l);
    }
    if let Some(f) = &p.field {
        v["field"] = json!(f);
    }
    if let Some(h) = &p.hint {
        v["hint"] = json!(h);
    }
    v
}

/// Prints `error: ...` with an optional `hint: ...` to stderr; under `-o json`, one error
/// object on stdout.
pub(crate) fn print_error(message: &str, hint: Option<&str>) {
    if json_mode() {
        let mut v = json!({ "type": "error", "message": message });
        if let Some(h) = hint {
            v["hint"] = json!(h);
        }
        println!("{v}");
        return;
    }
    eprintln!("error: {message}");
    if let Some(h) = hint {
        eprintln!("hint: {h}");
    }
}

/// Prints every problem: a count and one located line each (with its hint) on stderr; under
/// `-o json`, one error object per problem on stdout.
pub(crate) fn print_problems(p: &Problems) {
    if json_mode() {
        for problem in &p.0 {
            println!("{}", problem_json(problem));
        }
        return;
    }
    let n = p.0.len();
    eprintln!("error: {n} problem{} found", if n == 1 { "" } else { "s" });
    for problem in &p.0 {
        eprintln!("  {}", problem.to_string().replace('\n', "\n  "));
    }
}

/// Prints each warning: `warning: FILE:LINE: ...` with its hint on stderr; under `-o json`,
/// one `{"type":"warning",…}` object per warning on stdout.
pub(crate) fn print_warnings(warnings: &[Problem]) {
    for w in warnings {
        if json_mode() {
            let mut v = problem_json(w);
            v["type"] = json!("warning");
            println!("{v}");
        } else {
            eprintln!("warning: {}", w.to_string().replace('\n', "\n  "));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_problem_as_json_names_file_line_field_and_hint() {
        let p = Problem::new(
            Path::new("runbooks/r.yaml"),
            Some(7),
            "step `a`: unknown kind `x`",
        )
        .hint(Some("known kinds: http.check".into()))
        .field("kind");
        let v = problem_json(&p);
        assert_eq!(v["type"], "error");
        assert_eq!(v["file"], "runbooks/r.yaml");
        assert_eq!(v["line"], 7);
        assert_eq!(v["field"], "kind");
        assert_eq!(v["hint"], "known kinds: http.check");
        let bare = problem_json(&Problem::new(Path::new("e.yaml"), None, "m"));
        assert!(bare.get("line").is_none() && bare.get("field").is_none());
    }
}
