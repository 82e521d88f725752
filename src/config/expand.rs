//! `${NAME}` and `${NAME:-default}` expansion in environment files, inside parsed string values.
//!
//! This is how a committed environment file takes values that differ per installation (an AWS
//! account id created by an Organization, a sandbox endpoint) from documented environment
//! variables, as docker-compose and many CI systems do. `$$` writes a literal `$`.
//!
//! Expansion happens after YAML parsing, in scalar values only (never keys, never comments): a
//! variable's value can change what one value says, never the file's structure, whatever quotes,
//! colons or newlines it holds. A quoted scalar stays a string; an unquoted one is typed after
//! expansion by YAML 1.2's core schema (so `cutover_ttl: ${TTL:-60}` is the integer 60).

use super::node::Node;
use serde_saphyr::Spanned;

/// Expands `${NAME}` / `${NAME:-default}` in one string using `lookup`.
///
/// # Errors
/// One message per reference to a variable that is unset (or empty) and has no default, and per
/// unterminated `${`.
pub fn expand_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                errors.push("unterminated `${` (expected `}`)".to_string());
                rest = "";
                break;
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => errors.push(format!(
                    "environment variable {name} is not set and `${{{name}}}` has no default"
                )),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Expands every string scalar of `tree` in place. `text` is the file the tree was parsed from
/// (to tell quoted scalars from plain ones).
///
/// # Errors
/// Every `(line, message)` of [`expand_str`], in file order.
pub fn expand_tree(
    tree: &mut Spanned<Node>,
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Vec<(u32, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut errors = Vec::new();
    walk(tree, &lines, lookup, &mut errors);
    errors
}

fn walk(
    node: &mut Spanned<Node>,
    lines: &[&str],
    lookup: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(u32, String)>,
) {
    let line = node.referenced.line() as u32;
    let column = node.referenced.column() as usize;
    match &mut node.value {
        Node::Str(s) if s.contains('$') => match expand_str(s, lookup) {
            Ok(v) => {
                let quoted = lines
                    .get((line as usize).wrapping_sub(1))
                    .and_then(|l| l.chars().nth(column.wrapping_sub(1)))
                    .is_some_and(|c| c == '"' || c == '\'');
                node.value = if quoted { Node::Str(v) } else { core_schema(v) };
            }
            Err(es) => errors.extend(es.into_iter().map(|e| (line, e))),
        },
        Node::Seq(items) => {
            for item in items {
                walk(item, lines, lookup, errors);
            }
        }
        Node::Map(entries) => {
            for (_, v) in entries {
                walk(v, lines, lookup, errors);
            }
        }
        _ => {}
    }
}

/// An unquoted scalar's type under YAML 1.2's core schema (null, bool, int, float, else string).
fn core_schema(v: String) -> Node {
    match v.as_str() {
        "" | "~" | "null" | "Null" | "NULL" => return Node::Null,
        "true" | "True" | "TRUE" => return Node::Bool(true),
        "false" | "False" | "FALSE" => return Node::Bool(false),
        _ => {}
    }
    let digits = v.strip_prefix(['-', '+']).unwrap_or(&v);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(i) = v.parse::<i64>() {
            return Node::Int(i);
        }
    }
    if v.bytes().any(|b| b.is_ascii_digit()) && !v.contains(char::is_whitespace) {
        if let Ok(f) = v.parse::<f64>() {
            if f.is_finite() {
                return Node::Float(f);
            }
        }
    }
    Node::Str(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("111".into()),
            "EMPTY" => Some(String::new()),
            "EVIL" => Some("123\"\nevil: 1".into()),
            _ => None,
        }
    }

    fn expand(text: &str) -> Result<serde_json::Value, Vec<(u32, String)>> {
        let mut tree: Spanned<Node> = serde_saphyr::from_str(text).unwrap();
        let errs = expand_tree(&mut tree, text, &env);
        if errs.is_empty() {
            Ok(tree.value.to_json())
        } else {
            Err(errs)
        }
    }

    #[test]
    fn expands_set_variables_and_defaults_in_values_only() {
        let got = expand("a: \"${A}\"\nb: ${B:-x}\nc: $$5 $z\n# ${NOPE}\nn: ${A}\nt: ${T:-60}\n")
            .unwrap();
        assert_eq!(
            got,
            serde_json::json!({"a": "111", "b": "x", "c": "$5 $z", "n": 111, "t": 60})
        );
    }

    #[test]
    fn a_value_with_a_quote_and_a_newline_cannot_change_the_structure() {
        let got = expand("aws:\n  account_id: \"${EVIL}\"\n  role_arn: r\n").unwrap();
        assert_eq!(got["aws"]["account_id"], "123\"\nevil: 1");
        assert_eq!(got["aws"]["role_arn"], "r");
        assert!(got.get("evil").is_none() && got["aws"].get("evil").is_none());
    }

    #[test]
    fn reports_every_unset_variable_with_its_line() {
        let errs = expand("a: ${NOPE}\nb: ok\nc: \"${EMPTY} ${UNTERMINATED\"\n").unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|e| e.0).collect();
        assert_eq!(lines, vec![1, 3, 3]);
        assert!(errs[0].1.contains("NOPE"));
    }
}
