//! `postgres.verify`: proves the target holds exactly the source's rows: per table, the row count
//! and an MD5 over every row's text form in primary-key order, computed on both sides in
//! parallel. Any difference fails the step before the flip; only table names, counts and
//! checksums are reported, never row values.

use super::{parse_params, Change, ParamSpec, Planned, StepContext, StepError, StepKind};
use crate::providers::postgres::pg;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// The `postgres.verify` kind.
pub struct Verify;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_method")]
    method: String,
}

fn default_method() -> String {
    "checksum".into()
}

const PARAMS: &[ParamSpec] = &[ParamSpec {
    name: "method",
    required: false,
    doc: "checksum (count and MD5 per table, default) or count",
}];

/// `(rows, checksum)` per table, `schema.table` quoted.
async fn measure(
    c: &tokio_postgres::Client,
    side: &str,
    checksum: bool,
) -> Result<BTreeMap<String, (i64, String)>, StepError> {
    let tables = c
        .query(
            "SELECT format('%I.%I', n.nspname, c.relname), \
                    coalesce((SELECT string_agg(format('%I', a.attname), ', ' ORDER BY array_position(i.indkey, a.attnum)) \
                              FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                              WHERE i.indrelid = c.oid AND i.indisprimary), 't::text') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| pg(side, e))?;
    let mut out = BTreeMap::new();
    for t in tables {
        let (name, order): (String, String) = (t.get(0), t.get(1));
        let sql = if checksum {
            format!("SELECT count(*), coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {order})), '') FROM {name} t")
        } else {
            format!("SELECT count(*), '' FROM {name} t")
        };
        let row = c.query_one(&sql, &[]).await.map_err(|e| pg(side, e))?;
        out.insert(name, (row.get(0), row.get(1)));
    }
    Ok(out)
}

#[async_trait]
impl StepKind for Verify {
    fn name(&self) -> &'static str {
        "postgres.verify"
    }
    fn purpose(&self) -> &'static str {
        "Prove the target holds exactly the source's rows: per-table row counts and checksums must be equal"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["tables"]
    }
    fn default_timeout(&self) -> Duration {
        Duration::from_secs(1800)
    }
    fn validate(&self, params: &Map<String, Value>) -> Vec<String> {
        let mut out = super::check_param_names(PARAMS, params);
        if let Some(m) = params.get("method").and_then(Value::as_str) {
            if !["checksum", "count"].contains(&m) {
                out.push(format!("method `{m}` is not one of: checksum, count"));
            }
        }
        out
    }

    async fn plan(&self, cx: &StepContext) -> Result<Planned, StepError> {
        let p: Params = parse_params(&cx.params)?;
        Ok(Planned {
            changes: vec![Change::new(
                "check",
                format!("database {}", cx.env.database.name),
                format!(
                    "compare {} of every table on source and target",
                    if p.method == "count" {
                        "row counts"
                    } else {
                        "row counts and MD5 checksums"
                    }
                ),
            )],
            ..Default::default()
        })
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let checksum = p.method != "count";
        let (source, target) = tokio::try_join!(cx.providers.source(), cx.providers.target())?;
        (cx.progress)("measuring every table on both sides");
        let (src, tgt) = tokio::try_join!(
            measure(&source, "source", checksum),
            measure(&target, "target", checksum)
        )?;
        let mut diffs = Vec::new();
        let mut tables = Map::new();
        let mut rows_total = 0i64;
        for (name, (rows, sum)) in &src {
            rows_total += rows;
            match tgt.get(name) {
                None => diffs.push(format!("{name}: missing on target")),
                Some((trows, tsum)) if trows != rows || tsum != sum => diffs.push(format!(
                    "{name}: source {rows} rows md5 {sum}, target {trows} rows md5 {tsum}"
                )),
                _ => {}
            }
            tables.insert(name.clone(), json!({"rows": rows, "checksum": sum}));
        }
        if !diffs.is_empty() {
            return Err(StepError::Check(format!(
                "target differs from source: {}",
                diffs.join("; ")
            )));
        }
        let mut out = Map::new();
        out.insert("tables".into(), Value::Object(tables));
        out.insert(
            "summary".into(),
            json!(format!(
                "{} tables, {rows_total} rows equal on both sides",
                src.len()
            )),
        );
        Ok(out)
    }
}
