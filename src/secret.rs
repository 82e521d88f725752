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

impl Redactor {
    /// Registers a secret (and, for a URL with a password, the password alone). Values shorter
    /// than 4 bytes are ignored to avoid shredding ordinary text.
    pub fn add(&self, secret: &str) {
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

/// The password of a `scheme://user:password@host/...` URL, percent-decoded.
pub fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let pw = userinfo.split_once(':')?.1;
    Some(percent_decode(pw))
}

/// Percent-encodes every byte but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`), as
/// URL userinfo and SigV4 query values require.
pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
}
