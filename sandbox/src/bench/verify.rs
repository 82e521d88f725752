//! The verify part: identical generated tables on both servers compared by `postgres.verify`'s
//! chunked checksums (rows per second), then one row corrupted on the target and located by key
//! (time to locate); beside it, a whole-table `md5(string_agg(row::text ORDER BY key))` per
//! side, which says only that the table differs.

use super::{own_max_rss, secs, Bench, Options};
use anyhow::{bail, Result};
use cutover::providers::postgres::{catalog, checksum, connect, Server};
use std::time::Instant;

const DB: &str = "cutover_bench_verify";

/// Runs the part and prints its figures.
///
/// # Errors
/// Generation or a comparison fails, or the corrupted row is not found by its key.
pub async fn run(bench: &Bench, opts: &Options) -> Result<()> {
    let rows = opts.verify_rows;
    println!(
        "\n(c) verification of {rows} rows with {} job(s) per side",
        opts.jobs
    );
    bench.fresh_databases(DB).await?;
    let result = async {
        let (src_url, tgt_url) = (bench.source_db(DB)?, bench.target_db(DB)?);
        let sql = format!(
            "{};
             CREATE TABLE items (id bigint PRIMARY KEY, sku text NOT NULL, quantity int NOT NULL, price numeric(10,2) NOT NULL, updated_at timestamptz NOT NULL);
             INSERT INTO items SELECT g, 'SKU-' || (g % 5000), g % 97, (g % 100000) / 100.0, timestamptz '2025-01-01' + g * interval '1 second' FROM generate_series(1, {rows}) g;
             ANALYZE",
            super::as_app()
        );
        let t = Instant::now();
        let (s, d) = tokio::try_join!(connect(&src_url, Server::Source), connect(&tgt_url, Server::Target))?;
        tokio::try_join!(s.batch_execute(&sql), d.batch_execute(&sql))?;
        println!("  generated the same table on both sides in {:.1} s", secs(t));
        let tables = catalog::tables(&s, Server::Source).await?;

        let t = Instant::now();
        let equal = checksum::compare(&src_url, &tgt_url, &tables, opts.jobs, None, 20, |_, _| {}).await?;
        let full = secs(t);
        if equal.iter().any(|r| r.differs) {
            bail!("identical tables compared as different");
        }
        println!(
            "  cutover verify (chunks of about 32 MB, row hash sums): {full:.2} s, {:.0} rows/s per side; peak RSS {:.0} MB",
            rows as f64 / full.max(0.001),
            own_max_rss() as f64 / 1e6
        );

        let bad = rows * 2 / 3 + 1;
        d.batch_execute(&format!("UPDATE items SET quantity = quantity + 1 WHERE id = {bad}")).await?;
        let t = Instant::now();
        let found = checksum::compare(&src_url, &tgt_url, &tables, opts.jobs, None, 20, |_, _| {}).await?;
        let locate = secs(t);
        let keys: Vec<String> = found.iter().flat_map(|r| r.differing_keys.clone()).collect();
        if keys != vec![format!("id={bad}")] {
            bail!("expected to locate id={bad}, found {keys:?}");
        }
        println!("  one corrupted row on the target: located as {} in {locate:.2} s (full comparison + bisection)", keys[0]);

        let naive = "SELECT md5(string_agg(t::text, E'\\n' ORDER BY id)) FROM items t";
        let t = Instant::now();
        let (a, b) = tokio::try_join!(s.query_one(naive, &[]), d.query_one(naive, &[]))?;
        let whole = secs(t);
        let differs = a.get::<_, String>(0) != b.get::<_, String>(0);
        println!(
            "  whole-table md5(string_agg(row ORDER BY id)) on both sides: {whole:.2} s ({:.0} rows/s per side); says differs = {differs}, cannot name the row",
            rows as f64 / whole.max(0.001)
        );
        println!("  ratio: whole-table md5 time / cutover verify time = {:.2}", whole / full.max(0.001));
        Ok::<_, anyhow::Error>(())
    }
    .await;
    bench.drop_databases(DB).await;
    result
}
