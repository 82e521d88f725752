//! `runbook render`.

use super::{print_error, print_problems};
use super::{EXIT_INVALID, EXIT_OK};
use crate::report::procedure;
use std::path::Path;

/// Procedure formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProcedureFormat {
    /// Self-contained printable HTML.
    Html,
    /// Markdown.
    Md,
}

/// `cutover runbook render RUNBOOK --env ENV`: resolves the plan (every problem reported, exit
/// 2) and prints the procedure on stdout; a team's template that fails is exit 2 too.
pub fn render(
    root: &Path,
    runbook: &str,
    env: &str,
    format: ProcedureFormat,
    template: Option<&Path>,
) -> i32 {
    let plan = match crate::runbook::resolve(root, runbook, env) {
        Ok(p) => p,
        Err(problems) => {
            print_problems(&problems);
            return EXIT_INVALID;
        }
    };
    match format {
        ProcedureFormat::Html => match procedure::html(&plan, template) {
            Ok(html) => print!("{html}"),
            Err(e) => {
                print_error(&e.to_string(), None);
                return EXIT_INVALID;
            }
        },
        ProcedureFormat::Md => print!("{}", procedure::markdown(&plan)),
    }
    EXIT_OK
}
