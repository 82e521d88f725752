//! `cutover infra plan|apply|output`: prints reviews and outputs, maps outcomes to exit codes.

use super::print_problems;
use super::{print_error, EXIT_FAILED, EXIT_INVALID, EXIT_OK, EXIT_REFUSED as EXIT_GATE};
use crate::config::{self, Environment};
use crate::engine::new_run_id;
use crate::infra::{self, InfraError};
use std::path::Path;

fn load(root: &Path, env: &str) -> Result<Environment, i32> {
    config::load_environment(root, env).map_err(|p| {
        print_problems(&p);
        EXIT_INVALID
    })
}

fn code(e: &InfraError) -> i32 {
    match e {
        InfraError::Gate(_) => EXIT_GATE,
        InfraError::Failed(_) => EXIT_FAILED,
    }
}

/// `infra plan ENV` or `infra plan --all` (every environment planned concurrently, each in its
/// own account). Exit 3 when any plan is refused, 1 when any failed, else 0.
pub async fn plan(root: &Path, env: Option<&str>, all: bool) -> i32 {
    let names: Vec<String> = match (env, all) {
        (Some(e), false) => vec![e.to_string()],
        (None, true) => config::list_names(&root.join("environments")),
        _ => {
            print_error(
                "name one environment or pass --all",
                Some("cutover infra plan staging | cutover infra plan --all"),
            );
            return EXIT_INVALID;
        }
    };
    let mut envs = Vec::new();
    for n in &names {
        match load(root, n) {
            Ok(e) => envs.push(e),
            Err(c) => return c,
        }
    }
    let id = new_run_id();
    let mut set = tokio::task::JoinSet::new();
    for (i, env) in envs.iter().cloned().enumerate() {
        let root = root.to_path_buf();
        let session = format!("infra-{id}");
        set.spawn(async move { (i, infra::plan(&root, &env, &session).await) });
    }
    let mut results: Vec<Option<Result<infra::Review, InfraError>>> =
        (0..envs.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, r)) => results[i] = Some(r),
            Err(e) => {
                print_error(&format!("a plan task failed: {e}"), None);
                return EXIT_FAILED;
            }
        }
    }
    let mut exit = EXIT_OK;
    for (env, result) in envs.iter().zip(results) {
        match result {
            Some(Ok(review)) => {
                for line in infra::describe(&review, env) {
                    println!("{line}");
                }
                if review.refused {
                    exit = exit.max(EXIT_GATE);
                }
            }
            Some(Err(e)) => {
                print_error(&format!("{}: {e}", env.name), None);
                exit = exit.max(code(&e));
            }
            None => exit = exit.max(EXIT_FAILED),
        }
    }
    exit
}

/// `infra apply ENV`: applies the reviewed plan file.
pub async fn apply(root: &Path, env: &str) -> i32 {
    let env = match load(root, env) {
        Ok(e) => e,
        Err(c) => return c,
    };
    let id = format!("infra-{}", new_run_id());
    match infra::apply(root, &env, &id).await {
        Ok((review, outputs)) => {
            let s = &review.summary;
            println!(
                "{}: applied the plan reviewed at {} ({} added, {} changed, {} replaced, {} destroyed); {} outputs",
                env.name,
                review.planned_at,
                s.create,
                s.update,
                s.replace,
                s.delete,
                outputs.len()
            );
            EXIT_OK
        }
        Err(e) => {
            print_error(&format!("{}: {e}", env.name), None);
            code(&e)
        }
    }
}

/// `infra output ENV`: the root's outputs as one JSON object on stdout.
pub async fn output(root: &Path, env: &str) -> i32 {
    let env = match load(root, env) {
        Ok(e) => e,
        Err(c) => return c,
    };
    let id = format!("infra-{}", new_run_id());
    match infra::output(root, &env, &id).await {
        Ok(o) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&o).unwrap_or_else(|_| "{}".into())
            );
            EXIT_OK
        }
        Err(e) => {
            print_error(&format!("{}: {e}", env.name), None);
            code(&e)
        }
    }
}
