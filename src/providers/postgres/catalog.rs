//! What the catalog says about a database's tables: columns, the key that identifies a row
//! (primary key, else the replica identity index), size, and key ranges as SQL predicates.
//!
//! Owns catalog queries and key-range SQL; must not decide what to copy or compare.

use super::Server;
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
    /// Every column (generated ones included) in `attnum` order, with what its type allows.
    pub column_types: Vec<Column>,
}

/// One column of a table and what its type (through any domains) allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// The column name, quoted where needed.
    pub name: String,
    /// OID of the column's type after resolving domains (`pg_type.typbasetype`).
    pub base_type: u32,
    /// The type has `send`/`receive` functions whose binary form carries no server-specific OID
    /// (built-in types, enums, user base types that are not arrays), so a binary `COPY` from a
    /// server of the same major version reads back the same value.
    pub binary: bool,
    /// The column's collation is deterministic (or it has none): equal values are identical.
    pub deterministic: bool,
    /// A generated column (`attgenerated <> ''`): compared, never copied.
    pub generated: bool,
}

/// Built-in types whose extended hash function (`hashint8extended`, `hashtextextended`, …)
/// hashes the stored value itself, so two values hash alike only when they are identical
/// (with a deterministic collation): bool, bytea, "char", name, int8, int2, int4, text, oid,
/// bpchar, varchar, date, time, timestamp, timestamptz, uuid (OIDs from `pg_type.dat`).
/// Others (numeric, floats, interval, json, arrays, …) may hash alike when only equal
/// (`1.0` and `1.00`, `-0` and `0`, `1 day` and `24 hours`) and are hashed by their text form.
const IDENTITY_HASHED: [u32; 16] = [
    16, 17, 18, 19, 20, 21, 23, 25, 26, 1042, 1043, 1082, 1083, 1114, 1184, 2950,
];

impl Column {
    /// The column as an expression whose hash (inside `hash_record_extended`) changes whenever
    /// the value does: the column itself when its type hashes by identity, else its text form
    /// in the `C` collation (a nondeterministic collation would hash `A` and `a` alike).
    pub fn hash_expr(&self, alias: &str) -> String {
        if IDENTITY_HASHED.contains(&self.base_type) && self.deterministic {
            format!("{alias}.{}", self.name)
        } else {
            format!("{alias}.{}::text COLLATE \"C\"", self.name)
        }
    }
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

    /// The copied columns whose type has no portable binary form (so the table is copied as
    /// text), e.g. `"tags" (type 16421)`; empty when a binary `COPY` carries every column.
    pub fn binary_blockers(&self) -> Vec<String> {
        self.column_types
            .iter()
            .filter(|c| !c.generated && !c.binary)
            .map(|c| format!("{} (type {})", c.name, c.base_type))
            .collect()
    }

    /// A 64-bit hash of the whole row of `alias` that needs no text rendering for the common
    /// types: `hash_record_extended(ROW(...), 0)` (PostgreSQL 14 and later) over each column's
    /// [`Column::hash_expr`]. The same on every server of those versions.
    pub fn row_hash(&self, alias: &str) -> String {
        let parts: Vec<String> = self
            .column_types
            .iter()
            .map(|c| c.hash_expr(alias))
            .collect();
        format!("hash_record_extended(ROW({}), 0)", parts.join(", "))
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
       EXISTS (SELECT 1 FROM k WHERE k.indrelid = c.oid AND k.indisprimary),
       coalesce(t.names, '{}'), coalesce(t.bases, '{}'), coalesce(t.bin, '{}'), coalesce(t.det, '{}'), coalesce(t.gen, '{}')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN LATERAL (
  SELECT array_agg(quote_ident(a.attname) ORDER BY a.attnum) AS names,
         array_agg(b.oid ORDER BY a.attnum) AS bases,
         array_agg(b.typsend <> 0 AND b.typreceive <> 0 AND b.typtype IN ('b', 'e', 'r', 'm')
                   AND (b.typtype = 'e' OR b.oid < 16384 OR (b.typtype = 'b' AND b.typelem = 0)) ORDER BY a.attnum) AS bin,
         array_agg(coalesce((SELECT to_jsonb(k) ->> 'collisdeterministic' FROM pg_collation k WHERE k.oid = a.attcollation), 'true') <> 'false' ORDER BY a.attnum) AS det,
         array_agg(a.attgenerated <> '' ORDER BY a.attnum) AS gen
  FROM pg_attribute a
  CROSS JOIN LATERAL (
    WITH RECURSIVE d(oid, depth) AS (
      SELECT a.atttypid, 0
      UNION ALL SELECT ty.typbasetype, d.depth + 1 FROM pg_type ty JOIN d ON ty.oid = d.oid WHERE ty.typtype = 'd')
    SELECT d.oid FROM d ORDER BY d.depth DESC LIMIT 1) r
  JOIN pg_type b ON b.oid = r.oid
  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) t ON true
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'cutover_copy', 'cutover_relay')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
ORDER BY 1";

/// Every ordinary table of the connected database (the progress schema excluded), by name.
///
/// # Errors
/// [`ProviderError::Postgres`] when the catalog cannot be read.
pub async fn tables(c: &Client, side: Server) -> Result<Vec<Table>, ProviderError> {
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
            let names: Vec<String> = r.get(10);
            let bases: Vec<u32> = r.get(11);
            let bin: Vec<bool> = r.get(12);
            let det: Vec<bool> = r.get(13);
            let gen: Vec<bool> = r.get(14);
            let column_types = names
                .into_iter()
                .enumerate()
                .map(|(i, name)| Column {
                    name,
                    base_type: bases.get(i).copied().unwrap_or(0),
                    binary: bin.get(i).copied().unwrap_or(false),
                    deterministic: det.get(i).copied().unwrap_or(false),
                    generated: gen.get(i).copied().unwrap_or(false),
                })
                .collect();
            Table {
                column_types,
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

/// Rows a key sample aims at: enough for even cuts (256 per chunk), and at least 10,000.
fn sample_rows(chunks: i64) -> i64 {
    (chunks * 256).max(10_000)
}

/// Cuts `t` into about `wanted` half-open key ranges, reading at most a sample of it on `c`
/// (never every key):
///
/// - a single integer key is cut arithmetically between its min and max, as pgcopydb's
///   `--split-tables-larger-than` does;
/// - any other key (composite, UUID, text, dates; a partition is a table here) is cut at keys
///   drawn from a block sample (`TABLESAMPLE SYSTEM`, about 256 rows per range and at least
///   10,000, fixed seed) sorted in key order, as PeerDB and pgcopydb cut non-integer keys.
///
/// The first range is unbounded below and the last above, so every row falls in exactly one
/// whatever the sample drew; a poor sample only makes ranges uneven. A table without a key, or
/// `wanted` ≤ 1, is one range.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn key_ranges(
    c: &Client,
    side: Server,
    t: &Table,
    wanted: i64,
) -> Result<Vec<KeyRange>, ProviderError> {
    if wanted <= 1 || t.key.is_empty() {
        return Ok(vec![KeyRange::default()]);
    }
    if t.integer_key() {
        let k = &t.key[0].0;
        let r = c
            .query_one(
                &format!("SELECT min({k})::bigint, max({k})::bigint FROM {}", t.name),
                &[],
            )
            .await
            .map_err(|e| pg(side, e))?;
        return Ok(
            match (r.get::<_, Option<i64>>(0), r.get::<_, Option<i64>>(1)) {
                (Some(lo), Some(hi)) => split(lo, hi, wanted.clamp(1, (hi - lo + 1).max(1))),
                _ => vec![KeyRange::default()],
            },
        );
    }
    let pct = (100.0 * sample_rows(wanted) as f64 / t.est_rows.max(1) as f64).clamp(0.01, 100.0);
    let sql = format!(
        "SELECT {} FROM {} TABLESAMPLE SYSTEM ({pct}) REPEATABLE (42) ORDER BY {}",
        t.key_text_array(),
        t.name,
        t.key_order()
    );
    let sample: Vec<Vec<String>> = c
        .query(&sql, &[])
        .await
        .map_err(|e| pg(side, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    Ok(KeyRange::between(&cuts(&sample, wanted)))
}

/// Up to `n - 1` distinct cut keys spread evenly over `sample` (sorted in key order).
fn cuts(sample: &[Vec<String>], n: i64) -> Vec<Vec<String>> {
    let len = sample.len() as i64;
    let mut out: Vec<Vec<String>> = Vec::new();
    for j in 1..n {
        let at = (j * len / n) as usize;
        if let Some(k) = sample.get(at) {
            if out.last() != Some(k) && at > 0 {
                out.push(k.clone());
            }
        }
    }
    out
}

/// `n` ranges covering every key: the first unbounded below, the last unbounded above, the cuts
/// evenly spaced between `lo` and `hi`.
fn split(lo: i64, hi: i64, n: i64) -> Vec<KeyRange> {
    let step = ((hi - lo) / n + 1).max(1);
    let at = |j: i64| vec![(lo + j * step).to_string()];
    (0..n)
        .map(|i| KeyRange {
            lower: (i > 0).then(|| at(i)),
            upper: (i + 1 < n).then(|| at(i + 1)),
        })
        .collect()
}

/// Server major version (`server_version_num / 10000`).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn major_version(c: &Client, side: Server) -> Result<i32, ProviderError> {
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
            column_types: vec![],
        }
    }

    #[test]
    fn row_hash_renders_only_types_that_do_not_hash_by_identity() {
        let col = |name: &str, base_type: u32, binary: bool, deterministic: bool| Column {
            name: name.into(),
            base_type,
            binary,
            deterministic,
            generated: false,
        };
        let mut t = table(&[("id", "bigint")]);
        t.column_types = vec![
            col("id", 20, true, true),
            col("price", 1700, true, true),
            col("email", 25, true, false),
            col("tags", 16421, false, true),
        ];
        assert_eq!(
            t.row_hash("r"),
            "hash_record_extended(ROW(r.id, r.price::text COLLATE \"C\", r.email::text COLLATE \"C\", r.tags::text COLLATE \"C\"), 0)"
        );
        assert_eq!(t.binary_blockers(), vec!["tags (type 16421)".to_string()]);
        t.column_types[3].generated = true;
        assert!(
            t.binary_blockers().is_empty(),
            "generated columns are never copied"
        );
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

    #[test]
    fn sampled_cuts_are_distinct_increasing_and_ranges_cover_everything() {
        let key = |a: &str, b: i32| vec![a.to_string(), b.to_string()];
        let sample: Vec<Vec<String>> = (0..100).map(|i| key("k", i / 10)).collect();
        let c = cuts(&sample, 4);
        assert_eq!(c, vec![key("k", 2), key("k", 5), key("k", 7)]);
        let r = KeyRange::between(&c);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].lower, None);
        assert_eq!(r[3].upper, None);
        for w in r.windows(2) {
            assert_eq!(w[0].upper, w[1].lower, "adjacent ranges share their bound");
        }
        // A sample of one key cuts nothing: one chunk, the whole table.
        assert_eq!(
            KeyRange::between(&cuts(&[key("k", 1)], 8)),
            vec![KeyRange::default()]
        );
        assert_eq!(KeyRange::between(&cuts(&[], 8)), vec![KeyRange::default()]);
    }

    #[test]
    fn split_covers_every_key_once() {
        let r = split(1, 100, 4);
        assert_eq!(r.len(), 4);
        assert_eq!(r[0].lower, None);
        assert_eq!(r[3].upper, None);
        for w in r.windows(2) {
            assert_eq!(w[0].upper, w[1].lower);
        }
        assert_eq!(r[1].lower, Some(vec!["26".to_string()]));
        assert_eq!(split(5, 5, 1), vec![KeyRange::default()]);
    }
}
