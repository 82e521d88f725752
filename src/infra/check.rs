//! Static checks of the Terraform tree, without providers or network: the files are parsed as HCL
//! (hcl-rs) and their declarations compared.
//!
//! Checked: every `.tf` file parses; every local module source exists; every module call sets each
//! variable of that module that has no default, and no argument the module does not declare; every
//! live root's variables without default are set by its `*.tfvars` or by the `terraform.vars` of
//! the environment of the same name, and every `terraform.vars` key is declared by the roots that
//! environment may be pointed at (its live root and every root outside `terraform/live`); every
//! `tf.<name>` a runbook reads is an output of every root. A root is a directory with `.tf` files
//! outside `terraform/modules` that no module calls.
//!
//! This module reads files only; it never runs `terraform`.

use crate::config::{Environment, Problem, Problems};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Arguments of a `module` block that are Terraform meta-arguments, not module variables.
const META_ARGUMENTS: &[&str] = &[
    "source",
    "version",
    "count",
    "for_each",
    "providers",
    "depends_on",
];

/// A declaration located in a file (path relative to the project root, 1-based line).
#[derive(Debug, Clone)]
pub struct Located {
    /// File relative to the project root.
    pub file: PathBuf,
    /// 1-based line of the block, when found.
    pub line: Option<u32>,
}

/// A `module "<name>" { source = ... }` call.
#[derive(Debug, Clone)]
pub struct ModuleCall {
    /// The block label.
    pub name: String,
    /// The `source` string.
    pub source: String,
    /// Argument names set in the block (meta-arguments left out).
    pub arguments: BTreeSet<String>,
    /// Where the block is.
    pub at: Located,
}

/// The declarations of one Terraform module (one directory of `.tf` files).
#[derive(Debug, Clone, Default)]
pub struct ModuleInfo {
    /// Variable name -> (has a default, where).
    pub variables: BTreeMap<String, (bool, Located)>,
    /// Output name -> where.
    pub outputs: BTreeMap<String, Located>,
    /// Module calls.
    pub calls: Vec<ModuleCall>,
    /// Attribute names set by `terraform.tfvars` and `*.auto.tfvars`.
    pub tfvars: BTreeSet<String>,
}

fn line_of(text: &str, needle: &str) -> Option<u32> {
    text.lines()
        .position(|l| l.trim_start().starts_with(needle))
        .map(|i| i as u32 + 1)
}

fn rel(root: &Path, p: &Path) -> PathBuf {
    p.strip_prefix(root).unwrap_or(p).to_path_buf()
}

fn sorted_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Parses every `.tf` (and `terraform.tfvars` / `*.auto.tfvars`) file of `dir`.
///
/// # Errors
/// One problem per file that cannot be read or is not valid HCL, with hcl-rs's line and column.
pub fn load_module(root: &Path, dir: &Path) -> Result<ModuleInfo, Problems> {
    let mut info = ModuleInfo::default();
    let mut problems = Problems::default();
    for file in sorted_files(dir, ".tf") {
        let shown = rel(root, &file);
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::new(&shown, None, format!("cannot read: {e}")));
                continue;
            }
        };
        let body = match hcl::parse(&text) {
            Ok(b) => b,
            Err(e) => {
                problems.push(Problem::new(&shown, None, format!("not valid HCL: {e}")));
                continue;
            }
        };
        for block in body.blocks() {
            let label = block.labels().first().map(|l| l.as_str().to_string());
            let Some(label) = label else { continue };
            let at = |kind: &str| Located {
                file: shown.clone(),
                line: line_of(&text, &format!("{kind} \"{label}\"")),
            };
            match block.identifier() {
                "variable" => {
                    let has_default = block.body().attributes().any(|a| a.key() == "default");
                    info.variables
                        .insert(label.clone(), (has_default, at("variable")));
                }
                "output" => {
                    info.outputs.insert(label.clone(), at("output"));
                }
                "module" => {
                    let mut source = String::new();
                    let mut arguments = BTreeSet::new();
                    for a in block.body().attributes() {
                        if a.key() == "source" {
                            if let hcl::Expression::String(s) = a.expr() {
                                source = s.clone();
                            }
                        } else if !META_ARGUMENTS.contains(&a.key()) {
                            arguments.insert(a.key().to_string());
                        }
                    }
                    info.calls.push(ModuleCall {
                        name: label.clone(),
                        source,
                        arguments,
                        at: at("module"),
                    });
                }
                _ => {}
            }
        }
    }
    let mut var_files = sorted_files(dir, ".auto.tfvars");
    let plain = dir.join("terraform.tfvars");
    if plain.is_file() {
        var_files.push(plain);
    }
    for file in var_files {
        let shown = rel(root, &file);
        match std::fs::read_to_string(&file).map(|t| hcl::parse(&t)) {
            Ok(Ok(body)) => info
                .tfvars
                .extend(body.attributes().map(|a| a.key().to_string())),
            Ok(Err(e)) => problems.push(Problem::new(&shown, None, format!("not valid HCL: {e}"))),
            Err(e) => problems.push(Problem::new(&shown, None, format!("cannot read: {e}"))),
        }
    }
    problems.into_result(info)
}

/// Every directory under `dir` (itself included) that holds `.tf` files.
fn module_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if !sorted_files(dir, ".tf").is_empty() {
        out.push(dir.to_path_buf());
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| {
                    p.is_dir()
                        && !p
                            .file_name()
                            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default();
    subdirs.sort();
    for d in subdirs {
        module_dirs(&d, out);
    }
}

/// A runbook's read of a Terraform output: the runbook file, the step, its line, the output.
#[derive(Debug, Clone)]
pub struct OutputRef {
    /// Runbook file relative to the project root.
    pub runbook: PathBuf,
    /// Step id.
    pub step: String,
    /// Line of the step.
    pub line: u32,
    /// Output name (`alb_arn` for `tf.alb_arn`).
    pub output: String,
}

/// Runs every check over `<root>/terraform` for `envs` and the runbooks' `refs`.
///
/// Roots are the module directories no module calls (`terraform/live/*` and any other stack).
/// Returns every problem found, each with
/// file and line; an empty list means the tree is consistent.
pub fn check(root: &Path, envs: &[(PathBuf, Environment)], refs: &[OutputRef]) -> Problems {
    let tf_dir = root.join("terraform");
    let mut problems = Problems::default();
    let mut dirs = Vec::new();
    module_dirs(&tf_dir, &mut dirs);
    let mut modules: BTreeMap<PathBuf, ModuleInfo> = BTreeMap::new();
    for d in &dirs {
        match load_module(root, d) {
            Ok(m) => {
                modules.insert(d.clone(), m);
            }
            Err(p) => problems.extend(p),
        }
    }

    // Module calls: sources exist, required variables set, no undeclared arguments.
    for (dir, m) in &modules {
        for call in &m.calls {
            if !(call.source.starts_with("./") || call.source.starts_with("../")) {
                continue; // registry or remote sources are resolved by `terraform init`
            }
            let target = normalize(&dir.join(&call.source));
            let Some(callee) = modules.get(&target) else {
                problems.push(Problem::new(
                    &call.at.file,
                    call.at.line,
                    format!(
                        "module `{}`: source `{}` is not a directory with .tf files",
                        call.name, call.source
                    ),
                ));
                continue;
            };
            for (var, (has_default, _)) in &callee.variables {
                if !has_default && !call.arguments.contains(var) {
                    problems.push(Problem::new(
                        &call.at.file,
                        call.at.line,
                        format!(
                            "module `{}` does not set `{var}`, a variable of {} without default",
                            call.name,
                            rel(root, &target).display()
                        ),
                    ));
                }
            }
            for arg in &call.arguments {
                if !callee.variables.contains_key(arg) {
                    let known: Vec<&str> = callee.variables.keys().map(String::as_str).collect();
                    problems.push(
                        Problem::new(
                            &call.at.file,
                            call.at.line,
                            format!(
                                "module `{}` sets `{arg}`, which {} does not declare",
                                call.name,
                                rel(root, &target).display()
                            ),
                        )
                        .hint(Some(format!("its variables: {}", known.join(", ")))),
                    );
                }
            }
        }
    }

    // Roots: the directories outside modules/ that no module calls (`live/<env>` for each
    // environment, and any other stack an environment may be pointed at, such as a
    // provider-free local one).
    let live_dir = tf_dir.join("live");
    let called: BTreeSet<PathBuf> = modules
        .iter()
        .flat_map(|(dir, m)| m.calls.iter().map(move |c| normalize(&dir.join(&c.source))))
        .collect();
    let modules_dir = tf_dir.join("modules");
    let roots: Vec<PathBuf> = modules
        .keys()
        .filter(|d| !called.contains(*d) && !d.starts_with(&modules_dir))
        .cloned()
        .collect();
    if roots.is_empty() {
        problems.push(Problem::new(
            &rel(root, &tf_dir),
            None,
            "no Terraform root: expected terraform/live/<env> (a directory no module calls)",
        ));
    }
    for (env_file, env) in envs {
        // What the environment may be pointed at: its live root and every root outside live/.
        let live = live_dir.join(&env.name);
        let candidates: Vec<&PathBuf> = roots
            .iter()
            .filter(|d| **d == live || d.parent() != Some(live_dir.as_path()))
            .collect();
        for dir in candidates {
            let m = &modules[dir];
            let shown = rel(root, dir);
            for key in env.terraform.vars.keys() {
                if !m.variables.contains_key(key) {
                    problems.push(Problem::new(
                        env_file,
                        None,
                        format!(
                            "terraform.vars.{key} is passed with -var but {} declares no such variable",
                            shown.display()
                        ),
                    ));
                }
            }
            for (var, (has_default, at)) in &m.variables {
                if !has_default && !m.tfvars.contains(var) && !env.terraform.vars.contains_key(var)
                {
                    problems.push(
                        Problem::new(
                            &at.file,
                            at.line,
                            format!(
                                "variable `{var}` has no default and is set neither by {}/terraform.tfvars nor by {}'s terraform.vars",
                                shown.display(),
                                env_file.display()
                            ),
                        ),
                    );
                }
            }
        }
    }

    // Outputs the runbooks read, in every root.
    for r in refs {
        for dir in &roots {
            if !modules[dir].outputs.contains_key(&r.output) {
                let known: Vec<&str> = modules[dir].outputs.keys().map(String::as_str).collect();
                let p = Problem::new(
                    &r.runbook,
                    Some(r.line),
                    format!(
                        "step `{}` reads tf.{}, but {} defines no output `{}`",
                        r.step,
                        r.output,
                        rel(root, dir).display(),
                        r.output
                    ),
                )
                .hint(Some(format!("its outputs: {}", known.join(", "))));
                if !problems.0.contains(&p) {
                    problems.push(p);
                }
            }
        }
    }
    problems
}

/// Resolves `.` and `..` without touching the file system.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn module_call_problems_name_the_variable_and_the_line() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        write(
            &root.join("terraform/modules/m"),
            "main.tf",
            "variable \"a\" {}\nvariable \"b\" {\n  default = 1\n}\n",
        );
        write(
            &root.join("terraform/live/x"),
            "main.tf",
            "module \"m\" {\n  source = \"../../modules/m\"\n  c      = 2\n}\n\nmodule \"gone\" {\n  source = \"../../modules/gone\"\n}\n",
        );
        let p = check(root, &[], &[]);
        let text = p.to_string();
        assert!(
            text.contains("terraform/live/x/main.tf:1: module `m` does not set `a`"),
            "{text}"
        );
        assert!(
            text.contains("sets `c`, which terraform/modules/m does not declare"),
            "{text}"
        );
        assert!(
            text.contains("main.tf:6: module `gone`: source `../../modules/gone`"),
            "{text}"
        );
        assert_eq!(p.0.len(), 3, "{text}");
    }

    #[test]
    fn invalid_hcl_is_reported_by_file() {
        let d = tempfile::tempdir().unwrap();
        write(
            &d.path().join("terraform/local"),
            "main.tf",
            "output \"a\" {\n  value = \n",
        );
        let p = check(d.path(), &[], &[]);
        assert!(
            p.to_string()
                .contains("terraform/local/main.tf: not valid HCL"),
            "{p}"
        );
    }
}
