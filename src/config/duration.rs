//! Durations as configuration files write them (`90s`, `10m`, `1h`, `7d`, `500ms`, `1m30s`, or a
//! bare number of seconds), for environment files, runbooks and step parameters alike. It owns
//! the syntax only; what a duration bounds is its user's business.

use std::time::Duration;

/// Parses `"90s"`, `"10m"`, `"1h"`, `"7d"`, `"500ms"`, `"1m30s"` or a bare number of seconds.
///
/// # Errors
/// A message naming the text when it is not such a duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("`{text}` is not a duration like 500ms, 90s, 10m, 1h or 7d");
    let mut total_ms = 0u64;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else {
            match rest.chars().next() {
                Some('s') => (1_000, 1),
                Some('m') => (60_000, 1),
                Some('h') => (3_600_000, 1),
                Some('d') => (86_400_000, 1),
                _ => return Err(bad()),
            }
        };
        total_ms += n * unit_ms;
        rest = &rest[len..];
    }
    if t.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_millis(total_ms))
}

/// Serde helper: a duration written as text (`"30s"`) or seconds.
pub mod duration_text {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    /// Serializes a [`Duration`] as `"<milliseconds>ms"`.
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    /// Deserializes a [`Duration`] from `"30s"`/`"10m"` or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Duration::from_secs(n)),
            Raw::S(s) => super::parse_duration(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_forms_runbooks_use() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert!(parse_duration("ten").is_err());
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        assert!(parse_duration("5w").is_err());
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("").is_err() && parse_duration("s").is_err());
    }
}
