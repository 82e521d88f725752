//! The JSON Schemas `cutover schema` prints and `schema/` commits: environment, runbook and
//! migration files, for editors (yaml-language-server) and any JSON Schema validator.
//!
//! Everything comes from the types that parse the files (schemars over their serde attributes and
//! doc comments): the config types for the files' structure and each step kind's typed `Params`
//! for its `with:`. This module only assembles them: a step's schema gets one `if kind = K then
//! with = K's parameters` branch per kind of [`steps::registry`], and values that the tool reads
//! as templates (step parameters) or expands (`${VAR}` in environment files) accept such a string
//! where the type would not. It must not describe a field by hand: a field missing here is
//! missing from the type.

use crate::config;
use crate::steps;
use serde_json::{json, Map, Value};

/// The files a schema describes, as `cutover schema FILE` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaFile {
    /// `environments/<env>.yaml`.
    Environment,
    /// `runbooks/<name>.yaml`.
    Runbook,
    /// A migration file (`migrations/<name>.yaml`).
    Migration,
}

impl SchemaFile {
    /// Every file type, in the order `cutover schema --write` writes them.
    pub const ALL: [SchemaFile; 3] = [
        SchemaFile::Environment,
        SchemaFile::Runbook,
        SchemaFile::Migration,
    ];

    /// The committed file's name under `schema/` (`runbook.json`).
    pub fn file_name(self) -> &'static str {
        match self {
            SchemaFile::Environment => "environment.json",
            SchemaFile::Runbook => "runbook.json",
            SchemaFile::Migration => "migration.json",
        }
    }

    /// The schema as pretty JSON with a final newline, exactly as committed.
    pub fn render(self) -> String {
        let schema = match self {
            SchemaFile::Environment => environment(),
            SchemaFile::Runbook => runbook(),
            SchemaFile::Migration => migration(),
        };
        let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// A string the tool reads as a minijinja template (`{{ … }}` or `{% … %}`), as
/// [`config::is_template`] decides.
const TEMPLATE_PATTERN: &str = r"\{\{|\{%";
/// A string holding `${VAR}`, which environment files expand from the process environment.
const EXPANSION_PATTERN: &str = r"\$\{";

/// The schema of an environment file: any value may be written as a `${VAR}` expansion.
pub fn environment() -> Value {
    let mut v = config::environment_schema().to_value();
    let def = json!({
        "type": "string",
        "pattern": EXPANSION_PATTERN,
        "description": "`${VAR}`: expanded from the process environment when the file is loaded.",
    });
    accept_everywhere(&mut v, "Expansion", def);
    v
}

/// The schema of a migration file.
pub fn migration() -> Value {
    config::migration_schema().to_value()
}

/// The schema of a runbook file, each step's `with:` checked against its kind's parameters, where
/// every parameter value may be a template instead.
pub fn runbook() -> Value {
    let mut generator = schemars::SchemaGenerator::default();
    let kinds = steps::registry();
    let withs: Vec<Value> = kinds
        .iter()
        .map(|k| k.params_schema(&mut generator).to_value())
        .collect();
    let kind_defs: Vec<String> = generator.definitions().keys().cloned().collect();
    let mut root = config::runbook_schema(&mut generator).to_value();
    let template = json!({ "$ref": "#/$defs/Template" });
    let Some(defs) = root.get_mut("$defs").and_then(Value::as_object_mut) else {
        return root;
    };
    for name in &kind_defs {
        if let Some(d) = defs.get_mut(name) {
            templatable(d, &template);
        }
    }
    defs.insert(
        "Template".into(),
        json!({
            "type": "string",
            "pattern": TEMPLATE_PATTERN,
            "description": "A minijinja template over env.*, tf.*, vars.*, secrets.* and steps.<id>.outputs.*, rendered when the step runs.",
        }),
    );
    if let Some(step) = defs.get_mut("Step").and_then(Value::as_object_mut) {
        let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
        if let Some(kind) = step
            .get_mut("properties")
            .and_then(|p| p.get_mut("kind"))
            .and_then(Value::as_object_mut)
        {
            kind.remove("type");
            kind.insert("enum".into(), json!(names));
        }
        let branches: Vec<Value> = kinds
            .iter()
            .zip(withs)
            .map(|(k, mut with)| {
                templatable(&mut with, &template);
                let mut with = with.as_object().cloned().unwrap_or_default();
                with.insert("description".into(), Value::from(k.purpose()));
                json!({
                    "if": { "properties": { "kind": { "const": k.name() } }, "required": ["kind"] },
                    "then": { "properties": { "with": with } },
                })
            })
            .collect();
        step.insert("allOf".into(), Value::Array(branches));
    }
    root
}

/// Makes every value below `schema` also accept `alt` (a `$ref` to the definition `name`, added
/// as `def`): used where the whole file is expanded before it is parsed.
fn accept_everywhere(schema: &mut Value, name: &str, def: Value) {
    let alt = json!({ "$ref": format!("#/$defs/{name}") });
    if let Some(defs) = schema.get_mut("$defs").and_then(Value::as_object_mut) {
        for d in defs.values_mut() {
            templatable(d, &alt);
        }
        defs.insert(name.into(), def);
    }
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for p in props.values_mut() {
            templatable(p, &alt);
        }
    }
    if let Some(extra) = schema.get_mut("additionalProperties") {
        if extra.is_object() {
            templatable(extra, &alt);
        }
    }
}

/// Lets every scalar `schema` describes, and every scalar inside it, be `alt` instead: a schema
/// that admits only some scalars ([`scalar_only`]) becomes `anyOf [itself, alt]`. The branches of a choice are not wrapped one by one (a template would
/// match several branches of a `oneOf`), only what is inside them. A schema that is only a
/// `$ref` is left alone: its definition is made templatable in turn.
fn templatable(schema: &mut Value, alt: &Value) {
    inside(schema, alt);
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if !scalar_only(obj) {
        return;
    }
    let mut inner = std::mem::take(obj);
    let mut outer = Map::new();
    for key in ["description", "default", "title"] {
        if let Some(v) = inner.remove(key) {
            outer.insert(key.into(), v);
        }
    }
    outer.insert("anyOf".into(), json!([Value::Object(inner), alt]));
    *obj = outer;
}

/// Whether `obj` admits only scalars, and not every string: a number, a boolean, an enum, a
/// constant, a patterned string, or a choice of such. Templates render to text, which the typed
/// parameters read as any scalar; they never stand for a mapping or a list.
fn scalar_only(obj: &Map<String, Value>) -> bool {
    const SCALARS: [&str; 4] = ["integer", "number", "boolean", "null"];
    let is_scalar_type = |t: &Value| t.as_str().is_some_and(|t| SCALARS.contains(&t));
    if let Some(t) = obj.get("type") {
        let types: Vec<&Value> = match t {
            Value::Array(ts) => ts.iter().collect(),
            one => vec![one],
        };
        if types.iter().any(|t| *t == "object" || *t == "array") {
            return false;
        }
        let any_string = types.iter().any(|t| *t == "string");
        let narrowed = ["enum", "const", "pattern"]
            .iter()
            .any(|k| obj.contains_key(*k));
        return types.iter().all(|t| is_scalar_type(t) || *t == "string")
            && (!any_string || narrowed);
    }
    if obj.contains_key("enum") || obj.contains_key("const") {
        return true;
    }
    ["oneOf", "anyOf"].iter().any(|k| {
        obj.get(*k)
            .and_then(Value::as_array)
            .is_some_and(|branches| {
                branches.iter().all(|b| {
                    b.as_object()
                        .is_some_and(|b| !b.contains_key("$ref") && scalar_only(b))
                })
            })
    })
}

/// [`templatable`] on everything `schema` contains, not on `schema` itself.
fn inside(schema: &mut Value, alt: &Value) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    for key in ["properties", "patternProperties"] {
        if let Some(props) = obj.get_mut(key).and_then(Value::as_object_mut) {
            for p in props.values_mut() {
                templatable(p, alt);
            }
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = obj.get_mut(key) {
            if inner.is_object() {
                templatable(inner, alt);
            }
        }
    }
    if let Some(list) = obj.get_mut("prefixItems").and_then(Value::as_array_mut) {
        for s in list {
            templatable(s, alt);
        }
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(list) = obj.get_mut(key).and_then(Value::as_array_mut) {
            for s in list {
                inside(s, alt);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_becomes_a_number_or_a_template_and_a_string_stays() {
        let alt = json!({ "$ref": "#/$defs/Template" });
        let mut s = json!({
            "type": "object",
            "properties": {
                "count": { "type": "integer", "description": "how many" },
                "name": { "type": "string" },
                "mode": { "type": "string", "enum": ["a", "b"] },
            },
            "additionalProperties": false,
        });
        templatable(&mut s, &alt);
        assert_eq!(s["properties"]["count"]["anyOf"][1], alt);
        assert_eq!(s["properties"]["count"]["description"], "how many");
        assert_eq!(s["properties"]["name"], json!({ "type": "string" }));
        assert_eq!(
            s["properties"]["mode"]["anyOf"][0]["enum"],
            json!(["a", "b"])
        );
        // The object itself is not a template, and keeps refusing unknown keys.
        assert!(s.get("anyOf").is_none());
        assert_eq!(s["additionalProperties"], false);
    }

    #[test]
    fn a_choice_is_wrapped_whole_so_a_template_matches_one_branch() {
        let alt = json!({ "$ref": "#/$defs/Template" });
        let mut s = json!({ "oneOf": [
            { "type": "string", "const": "local" },
            { "type": "string", "const": "s3" },
        ]});
        templatable(&mut s, &alt);
        assert_eq!(
            s["anyOf"][0]["oneOf"][0],
            json!({ "type": "string", "const": "local" })
        );
        assert_eq!(s["anyOf"][1], alt);
    }

    #[test]
    fn every_kind_has_its_with_branch_and_kind_is_an_enum() {
        let v = runbook();
        let step = &v["$defs"]["Step"];
        let kinds = steps::kind_names();
        assert_eq!(step["properties"]["kind"]["enum"], json!(kinds));
        let branches = step["allOf"].as_array().unwrap();
        assert_eq!(branches.len(), kinds.len());
        for (b, k) in branches.iter().zip(&kinds) {
            assert_eq!(b["if"]["properties"]["kind"]["const"], *k);
            assert!(b["then"]["properties"]["with"].is_object(), "{k}");
        }
        assert!(v["$defs"]["Template"]["pattern"].is_string());
    }

    #[test]
    fn environment_numbers_accept_an_expansion() {
        let v = environment();
        let ttl = &v["$defs"]["DnsSection"]["properties"]["cutover_ttl"];
        assert_eq!(ttl["anyOf"][1]["$ref"], "#/$defs/Expansion", "{ttl}");
    }
}
