//! `postgres.verify`: proves the target holds exactly the source's rows. Every table is cut into
//! key-ordered chunks; each chunk's row count and hash sum are computed on both sides at once by
//! parallel workers; a differing chunk is bisected down to the differing keys. The step fails
//! naming tables and keys only, never row values, so a run stops before the flip.

use super::{parse_params, ParamSpec, Planned, StepContext, StepError, StepKind};
use crate::providers::postgres::catalog;
use crate::providers::postgres::checksum;
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

/// The `postgres.verify` kind.
pub struct Verify;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_jobs")]
    jobs: usize,
    #[serde(default = "default_chunk_rows")]
    chunk_rows: i64,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn default_method() -> String {
    "checksum".into()
}
fn default_jobs() -> usize {
    2
}
fn default_chunk_rows() -> i64 {
    50_000
}
fn default_max_keys() -> usize {
    20
}

const PARAMS: &[ParamSpec] = &[
    ParamSpec { name: "method", required: false, doc: "checksum (row count and hash sum per key-range chunk, default) or count (row counts only)" },
    ParamSpec { name: "jobs", required: false, doc: "parallel connection pairs (default 2)" },
    ParamSpec { name: "chunk_rows", required: false, doc: "rows per compared chunk (default 50000)" },
    ParamSpec { name: "max_keys", required: false, doc: "differing keys named per table at most (default 20)" },
];

#[async_trait]
impl StepKind for Verify {
    fn name(&self) -> &'static str {
        "postgres.verify"
    }
    fn purpose(&self) -> &'static str {
        "Prove the target holds exactly the source's rows: chunked checksums on both sides, differing rows located by key"
    }

    fn undo(&self) -> &'static str {
        "Nothing to undo: the comparison is read-only"
    }
    fn params(&self) -> &'static [ParamSpec] {
        PARAMS
    }
    fn outputs(&self) -> &'static [&'static str] {
        &["tables", "rows", "chunks", "rows_per_second"]
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
        let source = cx.providers.source().await?;
        let tables = catalog::tables(&source, "source").await?;
        let rows: i64 = tables.iter().map(|t| t.est_rows).sum();
        Ok(Planned::check(format!("database {}", cx.env.database.name), format!(
                    "compare {} of {} tables (~{rows} rows) on source and target in chunks of {} rows with {} job(s); name up to {} differing keys per table",
                    if p.method == "count" { "row counts" } else { "row counts and hash sums" },
                    tables.len(), p.chunk_rows, p.jobs, p.max_keys
                )))
    }

    async fn apply(
        &self,
        cx: &StepContext,
        _planned: &Planned,
    ) -> Result<Map<String, Value>, StepError> {
        let p: Params = parse_params(&cx.params)?;
        let source = cx.providers.source().await?;
        let mut tables = catalog::tables(&source, "source").await?;
        if p.method == "count" {
            for t in &mut tables {
                t.key.clear();
            }
        }
        let started = Instant::now();
        let mut last = Instant::now();
        let results = checksum::compare(
            &cx.providers.source_url()?,
            &cx.providers.target_url()?,
            &tables,
            p.jobs,
            if p.method == "count" { 0 } else { p.chunk_rows },
            p.max_keys,
            |done, total| {
                if last.elapsed() >= Duration::from_secs(2) {
                    last = Instant::now();
                    (cx.progress)(&format!("verified {done} of {total} chunks"));
                }
            },
        )
        .await?;
        let secs = started.elapsed().as_secs_f64();
        let mut diffs = Vec::new();
        let mut out_tables = Map::new();
        let (mut rows, mut chunks) = (0i64, 0usize);
        for r in &results {
            rows += r.rows;
            chunks += r.chunks;
            out_tables.insert(
                r.table.clone(),
                json!({"rows": r.rows, "chunks": r.chunks, "equal": !r.differs}),
            );
            if r.differs {
                let what = if r.differing_keys.is_empty() {
                    format!(
                        "{} rows on the source, {} on the target",
                        r.rows, r.target_rows
                    )
                } else {
                    format!(
                        "rows differ or are missing at {}",
                        r.differing_keys.join(", ")
                    )
                };
                diffs.push(format!("{}: {what}", r.table));
            }
        }
        if !diffs.is_empty() {
            return Err(StepError::Check(format!(
                "target differs from source: {}",
                diffs.join("; ")
            )));
        }
        let rate = if secs > 0.0 {
            (rows as f64 / secs).round()
        } else {
            0.0
        };
        let mut out = Map::new();
        out.insert("tables".into(), Value::Object(out_tables));
        out.insert("rows".into(), json!(rows));
        out.insert("chunks".into(), json!(chunks));
        out.insert("rows_per_second".into(), json!(rate));
        out.insert(
            "summary".into(),
            json!(format!(
                "{} tables, {rows} rows in {chunks} chunks equal on both sides ({:.2} s)",
                results.len(),
                secs
            )),
        );
        Ok(out)
    }
}
