//! A YAML node tree that keeps the line of every key and value.
//!
//! serde stops at the first error, but `cutover validate` must report every problem in a file at
//! once with its line. Steps are therefore first read into this tree (serde-saphyr's `Spanned`
//! gives each node its location), then each step is checked on its own against the
//! `deny_unknown_fields` serde type, so one bad step does not hide the problems of another.

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::fmt;

/// One YAML value with the locations of its children.
#[derive(Debug, Clone)]
pub enum Node {
    /// `~`, `null` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in 64 bits.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string scalar.
    Str(String),
    /// A sequence, each item with its location.
    Seq(Vec<Spanned<Node>>),
    /// A mapping in file order, each key and value with its location.
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl Node {
    /// Converts the tree into plain JSON (locations dropped), for serde conversion into typed
    /// configuration.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Node::Null => Value::Null,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::from(*i),
            Node::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            Node::Str(s) => Value::String(s.clone()),
            Node::Seq(items) => Value::Array(items.iter().map(|n| n.value.to_json()).collect()),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.value.clone(), v.value.to_json()))
                    .collect(),
            ),
        }
    }

    /// The 1-based line of the key `name` in this mapping, if this is a mapping that has it.
    pub fn key_line(&self, name: &str) -> Option<u32> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.value == name)
                .map(|(k, _)| k.referenced.line() as u32),
            _ => None,
        }
    }

    /// The value under key `name` in this mapping, with its location.
    pub fn get(&self, name: &str) -> Option<&Spanned<Node>> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.value == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The 1-based line of the deepest node along `path` (a serde path: map keys, sequence
    /// indexes) that this tree has; `None` when not even the first segment is found.
    pub fn line_at(&self, path: &serde_path_to_error::Path) -> Option<u32> {
        self.line_of_keys(&path_keys(path)?)
    }

    /// The 1-based line of the deepest node along `keys` (map keys; sequence indexes as
    /// decimal text) that this tree has.
    pub fn line_of_keys(&self, keys: &[String]) -> Option<u32> {
        let mut node = self;
        let mut line = None;
        for k in keys {
            let next = match node {
                Node::Map(entries) => entries
                    .iter()
                    .find(|(key, _)| &key.value == k)
                    .map(|(key, v)| (key.referenced.line() as u32, &v.value)),
                Node::Seq(items) => k
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(|v| (v.referenced.line() as u32, &v.value)),
                _ => None,
            };
            match next {
                Some((l, n)) => {
                    line = Some(l);
                    node = n;
                }
                None => break,
            }
        }
        line
    }

    /// The keys of this mapping, each with its 1-based line.
    pub fn keys(&self) -> Vec<(&str, u32)> {
        match self {
            Node::Map(entries) => entries
                .iter()
                .map(|(k, _)| (k.value.as_str(), k.referenced.line() as u32))
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The segments of a serde path as keys (sequence indexes as decimal text); `None` when a
/// segment is neither a map key nor an index (an enum variant, an unknown position).
pub fn path_keys(path: &serde_path_to_error::Path) -> Option<Vec<String>> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|s| match s {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            _ => None,
        })
        .collect()
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        i64::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer larger than 2^63-1"))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}
