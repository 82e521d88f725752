//! `${NAME}` and `${NAME:-default}` expansion in environment files.
//!
//! This is how a committed environment file takes values that differ per installation (an AWS
//! account id created by an Organization, a sandbox endpoint) from documented environment
//! variables, as docker-compose and many CI systems do. `$$` writes a literal `$`.

/// Expands `${NAME}` / `${NAME:-default}` using `lookup`.
///
/// # Errors
/// One `(line, message)` per reference to a variable that is unset (or empty) and has no default,
/// and per unterminated `${`.
pub fn expand_env_vars(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<(u32, String)>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    for (idx, line) in text.split_inclusive('\n').enumerate() {
        let lineno = idx as u32 + 1;
        if line.trim_start().starts_with('#') {
            // Comments are not expanded (they may show the syntax itself).
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find('$') {
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                out.push('$');
                rest = stripped;
            } else if let Some(body) = after.strip_prefix('{') {
                match body.find('}') {
                    Some(end) => {
                        let inner = &body[..end];
                        let (name, default) = match inner.split_once(":-") {
                            Some((n, d)) => (n, Some(d)),
                            None => (inner, None),
                        };
                        match lookup(name).filter(|v| !v.is_empty()) {
                            Some(v) => out.push_str(&v),
                            None => match default {
                                Some(d) => out.push_str(d),
                                None => errors.push((
                                    lineno,
                                    format!("environment variable {name} is not set and `${{{name}}}` has no default"),
                                )),
                            },
                        }
                        rest = &body[end + 1..];
                    }
                    None => {
                        errors.push((lineno, "unterminated `${` (expected `}`)".to_string()));
                        rest = "";
                    }
                }
            } else {
                out.push('$');
                rest = after;
            }
        }
        out.push_str(rest);
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "A" => Some("111".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        let got = expand_env_vars("a: ${A}\nb: ${B:-x}\nc: $$5 $z\n  # ${NOPE}\n", &env).unwrap();
        assert_eq!(got, "a: 111\nb: x\nc: $5 $z\n  # ${NOPE}\n");
    }

    #[test]
    fn reports_every_unset_variable_with_its_line() {
        let errs =
            expand_env_vars("a: ${NOPE}\nb: ok\nc: ${EMPTY} ${UNTERMINATED\n", &env).unwrap_err();
        let lines: Vec<u32> = errs.iter().map(|e| e.0).collect();
        assert_eq!(lines, vec![1, 3, 3]);
        assert!(errs[0].1.contains("NOPE"));
    }
}
