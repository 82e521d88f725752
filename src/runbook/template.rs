//! minijinja templates in step parameters: rendering with strict undefined-variable handling, and
//! the static list of variables a template reads (for `cutover validate`).

use minijinja::{Environment, UndefinedBehavior};
use serde_json::Value;
use std::collections::BTreeSet;

pub use crate::config::is_template;

/// Instructions one template may execute (minijinja's fuel): a parameter template is an
/// expression or a short loop; a runaway one (nested `range` loops) stops with an error instead
/// of hanging the run.
pub const FUEL: u64 = 100_000;

fn engine() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
}

/// Dotted paths of the variables `template` reads (`env.dns.domain`, `steps.replicate.outputs.x`).
///
/// # Errors
/// The syntax error, with minijinja's description.
pub fn references(template: &str) -> Result<BTreeSet<String>, String> {
    let env = engine();
    let tmpl = env.template_from_str(template).map_err(|e| describe(&e))?;
    Ok(tmpl.undeclared_variables(true).into_iter().collect())
}

/// Renders one template string against `ctx`.
///
/// # Errors
/// Undefined variables and evaluation errors, with minijinja's description.
pub fn render_str(template: &str, ctx: &Value) -> Result<String, String> {
    let env = engine();
    env.render_str(
        template,
        minijinja::Value::from(minijinja::value::Serde(ctx)),
    )
    .map_err(|e| describe(&e))
}

/// Renders every string that contains template syntax inside `value`, recursively; other values
/// are kept as they are.
///
/// # Errors
/// The first failing template, as `expression: error`.
pub fn render_value(value: &Value, ctx: &Value) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) if is_template(s) => {
            Value::String(render_str(s, ctx).map_err(|e| format!("`{s}`: {e}"))?)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_value(v, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, ctx)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// Every template string inside `value`.
pub fn templates_in(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(s) if is_template(s) => out.push(s.clone()),
        Value::Array(items) => items.iter().for_each(|v| templates_in(v, out)),
        Value::Object(map) => map.values().for_each(|v| templates_in(v, out)),
        _ => {}
    }
}

/// How a rendered `when` reads: `true`, `yes`, `1` (any case) are true; everything else false.
pub fn truthy(rendered: &str) -> bool {
    matches!(
        rendered.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "1"
    )
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.kind().to_string();
    if let Some(d) = e.detail() {
        s = format!("{s}: {d}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_are_dotted_paths() {
        let r = references("shop.{{ env.dns.domain }}/{{ steps.a.outputs.b }}").unwrap();
        assert!(r.contains("env.dns.domain"));
        assert!(r.contains("steps.a.outputs.b"));
    }

    #[test]
    fn undefined_variable_is_an_error() {
        let err = render_str("{{ env.nope }}", &json!({"env": {}})).unwrap_err();
        assert!(err.contains("undefined"), "{err}");
    }

    #[test]
    fn nested_values_render_and_numbers_stay() {
        let v = render_value(
            &json!({"a": ["x{{ vars.n }}"], "b": 3}),
            &json!({"vars": {"n": 1}}),
        )
        .unwrap();
        assert_eq!(v, json!({"a": ["x1"], "b": 3}));
    }

    #[test]
    fn when_reads_true_only_for_true_words() {
        assert!(truthy(" True"));
        assert!(!truthy("false"));
        assert!(!truthy(""));
    }
}
