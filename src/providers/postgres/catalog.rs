//! What the catalog says about a database's tables: columns, the key that identifies a row
//! (primary key, else the replica identity index), size, and key ranges as SQL predicates.
//!
//! Owns catalog queries and key-range SQL; must not decide what to copy or compare.

use super::{literal, pg};
use crate::providers::ProviderError;
use tokio_postgres::Client;

/// The schema in which the initial copy keeps its progress on the target; never a user table.
pub const STATE_SCHEMA: &str = "cutover_copy";

/// How a table's rows are identified for logical replication (`pg_class.relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// The primary key (`d` with a primary key).
    PrimaryKey,
    /// `REPLICA IDENTITY USING INDEX` (`i`).
    Index,
    /// `REPLICA IDENTITY FULL` (`f`): replicable, but rows have no key to order or range by.
    Full,
    /// No primary key and no replica identity (`d` without a key, or `n`): UPDATE and DELETE
    /// cannot be replicated.
    Missing,
}

/// One ordinary table (`relkind = 'r'`, partitions included) of a database.
#[derive(Debug, Clone)]
pub struct Table {
    /// `schema.table` quoted where needed for SQL (`format('%I.%I')`).
    pub name: String,
    /// `schema.table`, for messages.
    pub display: String,
    /// Column names in `attnum` order, quoted; generated columns left out (COPY cannot write them).
    pub columns: Vec<String>,
    /// `name type` per column in `attnum` order, for schema comparison.
    pub column_defs: Vec<String>,
    /// Key columns (quoted) with their SQL type (`format_type`), in index order; empty without a key.
    pub key: Vec<(String, String)>,
    /// How rows are identified for replication.
    pub identity: Identity,
    /// `pg_total_relation_size`, bytes.
    pub bytes: i64,
    /// `pg_class.reltuples` (planner estimate, 0 before the first ANALYZE), rows.
    pub est_rows: i64,
}

impl Table {
    /// The key as a row constructor, e.g. `ROW("id")`.
    pub fn key_row(&self) -> String {
        let cols: Vec<&str> = self.key.iter().map(|(c, _)| c.as_str()).collect();
        format!("ROW({})", cols.join(", "))
    }

    /// The key columns joined for `ORDER BY`.
    pub fn key_order(&self) -> String {
        self.key
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key of a row as text, e.g. `id=42` or `(order_id, line)=(7, 2)`, for reports.
    pub fn key_label(&self, values: &[String]) -> String {
        let names: Vec<&str> = self.key.iter().map(|(c, _)| c.trim_matches('"')).collect();
        if names.len() == 1 {
            format!(
                "{}={}",
                names[0],
                values.first().map(String::as_str).unwrap_or("")
            )
        } else {
            format!("({})=({})", names.join(", "), values.join(", "))
        }
    }

    /// An SQL expression giving the key as `text[]`.
    pub fn key_text_array(&self) -> String {
        let parts: Vec<String> = self.key.iter().map(|(c, _)| format!("{c}::text")).collect();
        format!("ARRAY[{}]", parts.join(", "))
    }

    /// A predicate selecting the rows of `range` (lower bound inclusive, upper exclusive), with
    /// bounds inlined as typed literals (COPY takes no bind parameters). `TRUE` for the whole table.
    pub fn range_predicate(&self, range: &KeyRange) -> String {
        let bound = |values: &[String]| {
            let parts: Vec<String> = self
                .key
                .iter()
                .zip(values)
                .map(|((_, ty), v)| format!("{}::{ty}", literal(v)))
                .collect();
            format!("ROW({})", parts.join(", "))
        };
        let mut preds = Vec::new();
        if let Some(lo) = &range.lower {
            preds.push(format!("{} >= {}", self.key_row(), bound(lo)));
        }
        if let Some(hi) = &range.upper {
            preds.push(format!("{} < {}", self.key_row(), bound(hi)));
        }
        if preds.is_empty() {
            "TRUE".into()
        } else {
            preds.join(" AND ")
        }
    }

    /// True when the key is one integer column, so ranges can be cut arithmetically.
    pub fn integer_key(&self) -> bool {
        self.key.len() == 1 && ["bigint", "integer", "smallint"].contains(&self.key[0].1.as_str())
    }
}

/// A half-open range of keys: `lower <= key < upper`; `None` is unbounded. Values are the key
/// columns' text forms, in key order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRange {
    /// Inclusive lower bound.
    pub lower: Option<Vec<String>>,
    /// Exclusive upper bound.
    pub upper: Option<Vec<String>>,
}

impl KeyRange {
    /// The ranges between consecutive `cuts` (sorted, distinct keys): `(-inf, c1)`, `[c1, c2)`,
    /// …, `[cn, +inf)`; one unbounded range when there is no cut. Every key falls in exactly one.
    pub fn between(cuts: &[Vec<String>]) -> Vec<KeyRange> {
        let mut out = Vec::with_capacity(cuts.len() + 1);
        let mut lower = None;
        for cut in cuts {
            out.push(KeyRange {
                lower: lower.take(),
                upper: Some(cut.clone()),
            });
            lower = Some(cut.clone());
        }
        out.push(KeyRange { lower, upper: None });
        out
    }
}

const TABLES_SQL: &str = "
WITH k AS (
  SELECT i.indrelid, i.indisprimary,
         array_agg(quote_ident(a.attname) ORDER BY o.ord) AS cols,
         array_agg(format_type(a.atttypid, a.atttypmod) ORDER BY o.ord) AS types
  FROM pg_index i
  CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY o(attnum, ord)
  JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = o.attnum
  WHERE i.indisprimary OR i.indisreplident
  GROUP BY i.indexrelid, i.indrelid, i.indisprimary
)
SELECT format('%I.%I', n.nspname, c.relname), n.nspname || '.' || c.relname, c.relreplident::text,
       pg_total_relation_size(c.oid), greatest(c.reltuples, 0)::bigint,
       coalesce((SELECT array_agg(quote_ident(a.attname) ORDER BY a.attnum) FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''), '{}'),
       coalesce((SELECT array_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod) ORDER BY a.attnum)
                 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '{}'),
       (SELECT k.cols FROM k WHERE k.indrelid = c.oid ORDER BY k.indisprimary DESC LIMIT 1),
       (SELECT k.types FROM k WHERE k.indrelid = c.oid ORDER BY k.indisprimary DESC LIMIT 1),
       EXISTS (SELECT 1 FROM k WHERE k.indrelid = c.oid AND k.indisprimary)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cutover_copy')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1";

/// Every ordinary table of the connected database (the progress schema excluded), by name.
///
/// # Errors
/// [`ProviderError::Postgres`] when the catalog cannot be read.
pub async fn tables(c: &Client, side: &str) -> Result<Vec<Table>, ProviderError> {
    let rows = c.query(TABLES_SQL, &[]).await.map_err(|e| pg(side, e))?;
    Ok(rows
        .iter()
        .map(|r| {
            let replident: String = r.get(2);
            let cols: Option<Vec<String>> = r.get(7);
            let types: Option<Vec<String>> = r.get(8);
            let has_pk: bool = r.get(9);
            let key: Vec<(String, String)> = cols
                .unwrap_or_default()
                .into_iter()
                .zip(types.unwrap_or_default())
                .collect();
            let identity = match (replident.as_str(), has_pk, key.is_empty()) {
                ("f", _, _) => Identity::Full,
                ("i", _, false) => Identity::Index,
                ("d", true, _) => Identity::PrimaryKey,
                _ => Identity::Missing,
            };
            // FULL identity: no key to order by, even when an index exists.
            let key = if identity == Identity::Full && !has_pk {
                Vec::new()
            } else {
                key
            };
            Table {
                name: r.get(0),
                display: r.get(1),
                identity,
                bytes: r.get(3),
                est_rows: r.get(4),
                columns: r.get(5),
                column_defs: r.get(6),
                key,
            }
        })
        .collect())
}

/// Server major version (`server_version_num / 10000`).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn major_version(c: &Client, side: &str) -> Result<i32, ProviderError> {
    let v: String = c
        .query_one("SHOW server_version_num", &[])
        .await
        .map_err(|e| pg(side, e))?
        .get(0);
    Ok(v.parse::<i32>().unwrap_or(0) / 10000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(key: &[(&str, &str)]) -> Table {
        Table {
            name: "\"public\".\"t\"".into(),
            display: "public.t".into(),
            columns: vec![],
            column_defs: vec![],
            key: key
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            identity: Identity::PrimaryKey,
            bytes: 0,
            est_rows: 0,
        }
    }

    #[test]
    fn range_predicates_inline_typed_quoted_bounds() {
        let t = table(&[("\"id\"", "bigint")]);
        assert_eq!(t.range_predicate(&KeyRange::default()), "TRUE");
        let r = KeyRange {
            lower: Some(vec!["10".into()]),
            upper: Some(vec!["20".into()]),
        };
        assert_eq!(
            t.range_predicate(&r),
            "ROW(\"id\") >= ROW('10'::bigint) AND ROW(\"id\") < ROW('20'::bigint)"
        );
        let t2 = table(&[("\"a\"", "text"), ("\"b\"", "integer")]);
        let r2 = KeyRange {
            lower: Some(vec!["it's".into(), "3".into()]),
            upper: None,
        };
        assert_eq!(
            t2.range_predicate(&r2),
            "ROW(\"a\", \"b\") >= ROW('it''s'::text, '3'::integer)"
        );
        assert_eq!(t2.key_label(&["x".into(), "3".into()]), "(a, b)=(x, 3)");
        assert!(!t2.integer_key());
        assert!(t.integer_key());
    }
}
