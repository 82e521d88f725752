//! Secret handling: fingerprints and a redactor.
//!
//! Secret values (database URLs and passwords, `secrets.*`) may be used for effects but must never
//! reach stdout, stderr, logs, the event log, reports or error messages, in any encoding. Every
//! text that leaves the process through the event log or the terminal goes through
//! [`Redactor::redact`] as a second line of defence; code shows [`fingerprint`]s on purpose.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::RwLock;

/// `sha256:` followed by the first 16 hex digits of the SHA-256 of `value`: enough to tell two
/// values apart in an audit, useless to recover the value.
pub fn fingerprint(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    format!("sha256:{}", &hex::encode(digest)[..16])
}

/// Replaces every known secret, in raw, base64, URL-encoded and JSON-escaped form, by its
/// fingerprint.
#[derive(Default)]
pub struct Redactor {
    needles: RwLock<Vec<(String, String)>>,
}

/// Every secret any [`Redactor`] of this process was given: what the panic hook redacts with.
static PROCESS: Redactor = Redactor {
    needles: RwLock::new(Vec::new()),
};

/// Installs a panic hook that prints a panic's message and location through the redactor of
/// every secret this process has seen, and of every `CUTOVER_*` variable's value (a secret may
/// panic before it is registered), so no secret reaches stderr even on a bug. Exit code stays
/// 101 (Rust's for a panic).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("{}", panic_report(&msg, &at));
    }));
}

/// The line the panic hook prints for a panic message `msg` raised at `at` (`file:line`):
/// redacted with every secret registered in this process and every `CUTOVER_*` variable.
fn panic_report(msg: &str, at: &str) -> String {
    let msg = redact_process(msg);
    format!("error: internal error (a bug in cutover, please report it) at {at}: {msg}")
}

/// `text` redacted with every secret any [`Redactor`] of this process was given and every
/// `CUTOVER_*` variable's value: for text that leaves the process outside a run's own redactor
/// (a panic message, a log line of the AWS SDK or kube).
pub fn redact_process(text: &str) -> String {
    let env = Redactor::default();
    for (k, v) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CUTOVER_") {
            env.add_local(&v.to_string_lossy());
        }
    }
    env.redact(&PROCESS.redact(text))
}

impl Redactor {
    /// Registers a secret (and, for a URL with a password, the password alone). Values shorter
    /// than 4 bytes are ignored to avoid shredding ordinary text.
    pub fn add(&self, secret: &str) {
        if !std::ptr::eq(self, &PROCESS) {
            PROCESS.add_local(secret);
        }
        self.add_local(secret);
    }

    /// [`Redactor::add`] without registering with the panic hook.
    fn add_local(&self, secret: &str) {
        let mut values = vec![secret.to_string()];
        if let Some(pw) = url_password(secret) {
            values.push(pw);
        }
        let mut needles = self.needles.write().unwrap_or_else(|p| p.into_inner());
        for v in values {
            if v.len() < 4 {
                continue;
            }
            let fp = format!("[{}]", fingerprint(&v));
            let json = serde_json::to_string(&v).unwrap_or_default();
            let json_inner = json.trim_matches('"').to_string();
            let forms = [
                v.clone(),
                base64::engine::general_purpose::STANDARD.encode(&v),
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(&v),
                urlencode(&v),
                json_inner,
            ];
            for f in forms {
                if f.len() >= 4 && !needles.iter().any(|(n, _)| *n == f) {
                    needles.push((f, fp.clone()));
                }
            }
        }
        // Longest first, so a URL is replaced whole before its password.
        needles.sort_by_key(|(n, _)| std::cmp::Reverse(n.len()));
    }

    /// `text` with every registered secret replaced.
    pub fn redact(&self, text: &str) -> String {
        let needles = self.needles.read().unwrap_or_else(|p| p.into_inner());
        let mut out = text.to_string();
        for (needle, fp) in needles.iter() {
            if out.contains(needle.as_str()) {
                out = out.replace(needle.as_str(), fp);
            }
        }
        out
    }
}

/// Whether `text` is a `scheme://user:password@host/...` URL with a password in it.
pub fn url_has_password(text: &str) -> bool {
    raw_url_password(text).is_some_and(|p| !p.is_empty())
}

/// The password of a `scheme://user:password@host/...` URL as written (still percent-encoded).
fn raw_url_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    Some(userinfo.split_once(':')?.1)
}

/// The password of a `scheme://user:password@host/...` URL, percent-decoded (RFC 3986 §2.1, by
/// the `percent-encoding` crate; an invalid escape is kept as written, never a panic).
pub fn url_password(url: &str) -> Option<String> {
    let pw = raw_url_password(url)?;
    Some(
        percent_encoding::percent_decode_str(pw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// Why a database URL cannot be used; the message never contains any part of the URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlProblem {
    /// Not `scheme://...`.
    #[error("is not a URL (expected postgres://user:password@host:port/database)")]
    NotAUrl,
    /// A `%` in the user or password not followed by two hex digits (RFC 3986 §2.1).
    #[error("has a `%` in its user or password that is not followed by two hex digits; write a literal `%` as `%25`")]
    BadEscape,
    /// The decoded password is not UTF-8.
    #[error("has a password whose percent-escapes do not decode to UTF-8")]
    NotUtf8,
}

/// Checks the parts of a database URL this tool decodes itself: the scheme separator and the
/// userinfo's percent-escapes.
///
/// # Errors
/// A [`UrlProblem`], whose text names no part of `url`.
pub fn check_url(url: &str) -> Result<(), UrlProblem> {
    let Some((_, rest)) = url.split_once("://") else {
        return Err(UrlProblem::NotAUrl);
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let Some((userinfo, _)) = authority.rsplit_once('@') else {
        return Ok(());
    };
    let b = userinfo.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(UrlProblem::BadEscape);
        }
    }
    if let Some(pw) = raw_url_password(url) {
        if percent_encoding::percent_decode_str(pw)
            .decode_utf8()
            .is_err()
        {
            return Err(UrlProblem::NotUtf8);
        }
    }
    Ok(())
}

/// Percent-encodes every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`), as
/// URL userinfo and SigV4 query values require.
pub fn urlencode(s: &str) -> String {
    const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_stable_and_short() {
        assert_eq!(fingerprint("abc"), "sha256:ba7816bf8f01cfea");
    }

    #[test]
    fn redacts_url_password_in_every_encoding() {
        let r = Redactor::default();
        r.add("postgres://shop:s3cr%2Ft@db:5432/shop");
        let pw = "s3cr/t";
        let b64 = base64::engine::general_purpose::STANDARD.encode(pw);
        for text in [
            pw.to_string(),
            b64,
            "s3cr%2Ft".to_string(),
            "postgres://shop:s3cr%2Ft@db:5432/shop".into(),
        ] {
            let out = r.redact(&format!("x {text} y"));
            assert!(!out.contains(&text), "{out}");
            assert!(out.contains("[sha256:"), "{out}");
        }
    }

    #[test]
    fn password_is_parsed_from_url() {
        assert_eq!(
            url_password("postgres://u:p%40ss@h/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("postgres://u@h/db"), None);
    }

    #[test]
    fn a_panic_message_holding_a_secret_seen_by_any_redactor_is_redacted() {
        let run = Redactor::default();
        run.add("postgres://u:panicked-pw-1234@h/db");
        let line = panic_report("byte index 2 is inside `panicked-pw-1234`", "src/x.rs:1");
        assert!(!line.contains("panicked-pw-1234"), "{line}");
        assert!(
            line.contains("[sha256:") && line.contains("src/x.rs:1"),
            "{line}"
        );
    }

    #[test]
    fn a_percent_before_a_multibyte_character_in_a_password_is_no_panic_and_a_clear_problem() {
        let url = "postgres://u:%a\u{e9}secretpw@host/db";
        assert_eq!(url_password(url).as_deref(), Some("%a\u{e9}secretpw"));
        let problem = check_url(url).unwrap_err();
        assert_eq!(problem, UrlProblem::BadEscape);
        assert!(!problem.to_string().contains("secretpw"));
        let r = Redactor::default();
        r.add(url);
        assert!(!r.redact("x %a\u{e9}secretpw y").contains("secretpw"));
        assert_eq!(check_url("postgres://u:p%40ss@h/db"), Ok(()));
        assert_eq!(
            check_url("postgres://u:p%FFss@h/db"),
            Err(UrlProblem::NotUtf8)
        );
        assert_eq!(check_url("nonsense"), Err(UrlProblem::NotAUrl));
        assert_eq!(urlencode("a b/\u{e9}~"), "a%20b%2F%C3%A9~");
    }
}
