//! Checking a step's literal `with:` values against its kind's typed `Params` before it runs.
//!
//! A kind's `Params` struct (serde, `deny_unknown_fields`) is the single source of what its
//! parameters are; at run time the rendered values are parsed into it. `cutover validate`
//! parses the *unrendered* values into the same struct, so a wrong type, a negative count, a
//! duration it cannot read or a misspelt nested key fails in validate, not inside a production
//! window. A value holding a template (`{{ … }}`, `{% … %}`) is known only at run time: it is
//! replaced by probe values until the parse gets past it, and never reported.

use super::Record;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// One problem of a literal parameter value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamProblem {
    /// Keys from `with:` down to the value (`["analysis", "sampels"]`); empty for the whole.
    pub path: Vec<String>,
    /// What serde said (`invalid type: string "four", expected u32`).
    pub message: String,
}

/// Most parse attempts made for one step: each reports or steps past one value.
const MAX_ATTEMPTS: usize = 48;

fn is_template(v: &Value) -> bool {
    v.as_str().is_some_and(crate::config::is_template)
}

fn probes() -> [Value; 6] {
    [
        Value::from("1"),
        Value::from(1),
        Value::from(true),
        Value::Null,
        Value::Array(Vec::new()),
        Value::Object(Map::new()),
    ]
}

fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| match cur {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn slot<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    let (last, parents) = path.split_last()?;
    let parent = parents.iter().try_fold(v, |cur, k| match cur {
        Value::Object(m) => m.get_mut(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
        _ => None,
    })?;
    match parent {
        Value::Object(m) => Some(m.entry(last.clone()).or_insert(Value::Null)),
        Value::Array(a) => last.parse::<usize>().ok().and_then(move |i| a.get_mut(i)),
        _ => None,
    }
}

/// The fields of `T`'s JSON Schema (schemars) as specs: each property's name, whether it is
/// required (no `#[serde(default)]`, not an `Option`) and its doc comment. Properties come in
/// name order.
pub fn specs<T: schemars::JsonSchema>() -> Vec<super::ParamSpec> {
    let schema = schemars::schema_for!(T);
    let v = schema.as_value();
    let required: Vec<&str> = v
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    v.get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(name, p)| super::ParamSpec {
            name: name.clone(),
            required: required.contains(&name.as_str()),
            doc: p
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("")
                .replace('\n', " "),
        })
        .collect()
}

/// The field serde says is missing (`missing field `x``), to probe it and move on.
fn missing_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_string())
}

/// Problems of the literal values of `params` for a kind whose parameters are `T`. Top-level
/// unknown and missing keys are left to [`super::check_param_names`] (named there with the
/// valid list); everything deeper, and every type or range error, is reported here, all at once
/// as far as serde lets a parse continue.
pub fn literal_problems<T: DeserializeOwned>(
    specs: &[super::ParamSpec],
    params: &Record,
) -> Vec<ParamProblem> {
    let original = Value::Object(params.clone());
    let mut value = original.clone();
    let mut problems = Vec::new();
    // Paths whose value was replaced by a probe: errors under them are not the runbook's.
    let mut probed: Vec<Vec<String>> = Vec::new();
    for _ in 0..MAX_ATTEMPTS {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(_) => break,
            Err(e) => e,
        };
        let Some(mut path) = crate::config::node::path_keys(err.path()) else {
            break;
        };
        let message = err.inner().to_string();
        // A missing field's error is at its parent: point at the field itself.
        let missing = missing_field(&message);
        if let Some(f) = &missing {
            path.push(f.clone());
        }
        let under_probe = probed.iter().any(|p| path.starts_with(p));
        let at_top = path.len() == 1;
        let top_level_name_problem =
            at_top && (missing.is_some() || !specs.iter().any(|s| s.name == path[0]));
        let templated = get(&original, &path).is_some_and(is_template);
        if !under_probe && !templated && !top_level_name_problem {
            problems.push(ParamProblem {
                path: path.clone(),
                message,
            });
        }
        if path.is_empty() || probed.contains(&path) && !step_past::<T>(&mut value, &path) {
            break;
        }
        if !probed.contains(&path) {
            probed.push(path.clone());
            if !step_past::<T>(&mut value, &path) {
                break;
            }
        }
    }
    problems
}

/// The literal values of `params` parsed into `T` for checks across fields before a run: each
/// value that holds a template, or that does not parse (reported by [`literal_problems`]), is
/// replaced by a probe value that parses (or dropped, for an unknown key). Returns the parsed
/// values with the top-level keys whose value is not the runbook's own, or `None` when no probe
/// gets the parse through.
pub fn literal_parse<T: DeserializeOwned>(
    params: &Record,
) -> Option<(T, std::collections::BTreeSet<String>)> {
    let mut unknown: std::collections::BTreeSet<String> = params
        .iter()
        .filter(|(_, v)| holds_template(v))
        .map(|(k, _)| k.clone())
        .collect();
    let mut value = Value::Object(params.clone());
    for _ in 0..MAX_ATTEMPTS {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(t) => return Some((t, unknown)),
            Err(e) => e,
        };
        let mut path = crate::config::node::path_keys(err.path())?;
        if let Some(f) = missing_field(&err.inner().to_string()) {
            path.push(f);
        }
        let top = path.first()?.clone();
        if !step_past::<T>(&mut value, &path) {
            return None;
        }
        unknown.insert(top);
    }
    None
}

fn holds_template(v: &Value) -> bool {
    match v {
        Value::String(_) => is_template(v),
        Value::Array(a) => a.iter().any(holds_template),
        Value::Object(m) => m.values().any(holds_template),
        _ => false,
    }
}

/// Replaces the value at `path` by the first probe (or, for an unknown key, removes it) with
/// which the parse no longer fails at `path`; false when none does.
fn step_past<T: DeserializeOwned>(value: &mut Value, path: &[String]) -> bool {
    let fails_here = |v: &Value| match serde_path_to_error::deserialize::<_, T>(v.clone()) {
        Ok(_) => false,
        Err(e) => {
            let mut p = crate::config::node::path_keys(e.path()).unwrap_or_default();
            if let Some(f) = missing_field(&e.inner().to_string()) {
                p.push(f);
            }
            p == path
        }
    };
    for probe in probes() {
        let mut candidate = value.clone();
        match slot(&mut candidate, path) {
            Some(s) => *s = probe,
            None => return false,
        }
        if !fails_here(&candidate) {
            *value = candidate;
            return true;
        }
    }
    // An unknown key: drop it.
    let mut candidate = value.clone();
    if let Some((last, parents)) = path.split_last() {
        let parent = if parents.is_empty() {
            Some(&mut candidate)
        } else {
            slot(&mut candidate, parents)
        };
        if let Some(Value::Object(m)) = parent {
            m.remove(last);
            if !fails_here(&candidate) {
                *value = candidate;
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct Window {
        samples: u32,
        #[serde(default, with = "crate::steps::duration_text")]
        #[schemars(with = "String")]
        interval: std::time::Duration,
    }

    #[allow(dead_code)]
    #[derive(Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct P {
        /// The URL probed.
        url: String,
        /// Parallel workers.
        #[serde(default)]
        jobs: Option<u32>,
        #[serde(default)]
        max_lag_bytes: Option<u64>,
        #[serde(default)]
        analysis: Option<Window>,
    }

    fn problems(yaml: serde_json::Value) -> Vec<(String, String)> {
        literal_problems::<P>(&specs::<P>(), yaml.as_object().unwrap())
            .into_iter()
            .map(|p| (p.path.join("."), p.message))
            .collect()
    }

    #[test]
    fn specs_come_from_the_type_names_required_fields_and_doc_comments() {
        let s = specs::<P>();
        let names: Vec<&str> = s.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["analysis", "jobs", "max_lag_bytes", "url"]);
        let url = s.iter().find(|p| p.name == "url").unwrap();
        assert!(url.required);
        assert_eq!(url.doc, "The URL probed.");
        assert!(!s.iter().find(|p| p.name == "jobs").unwrap().required);
    }

    #[test]
    fn wrong_types_ranges_durations_and_nested_keys_are_all_reported() {
        let got = problems(serde_json::json!({
            "url": "x", "jobs": "four", "max_lag_bytes": -5,
            "analysis": {"sampels": 6, "interval": "500 millis"}
        }));
        let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
        for want in [
            "jobs",
            "max_lag_bytes",
            "analysis.sampels",
            "analysis.interval",
        ] {
            assert!(paths.contains(&want), "{want} missing from {got:?}");
        }
        assert!(
            got.iter()
                .any(|(p, m)| p == "analysis.samples" && m.contains("missing")),
            "{got:?}"
        );
    }

    #[test]
    fn templated_values_and_top_level_names_are_left_alone() {
        assert_eq!(
            problems(
                serde_json::json!({"url": "{{ env.x }}", "jobs": "{{ vars.jobs }}", "colour": "red"})
            ),
            Vec::<(String, String)>::new()
        );
        assert_eq!(
            problems(serde_json::json!({})),
            Vec::<(String, String)>::new()
        );
    }
}
