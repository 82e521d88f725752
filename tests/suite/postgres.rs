//! Acceptance tests of the database cutover against real PostgreSQL 15 clusters: preflight,
//! a copy killed and resumed, a corrupted row found by key, sequences and the application's
//! write path after the cutover, the postpone flag. Each test has its own sandbox.

use crate::common;

use common::{text, wait_until, Sandbox};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Child;
use std::time::Duration;

fn step_event<'a>(records: &'a [Value], event: &str, step: &str) -> Option<&'a Value> {
    records
        .iter()
        .find(|r| r["type"] == event && r["step"] == step)
}

/// The single run's records, once its log exists.
fn only_run(sb: &Sandbox) -> Option<String> {
    sb.run_ids().pop()
}

fn scalar(sb: &Sandbox, url: &str, q: &str) -> String {
    sb.sql(url, q)[0][0].clone().unwrap_or_default()
}

/// `POST path` to `base` (http://host:port), returning status and body.
fn post(base: &str, path: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).unwrap();
    let status = buf
        .split_whitespace()
        .nth(1)
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    let body = buf.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Copy progress schemas on the target (`"0"` once a copy finished or was rolled back).
fn progress_schemas(sb: &Sandbox, url: &str) -> String {
    scalar(
        sb,
        url,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'cutover_copy'",
    )
}

fn start_held(sb: &Sandbox) -> (std::path::PathBuf, Child) {
    sb.start_held("staging", &["rehearse", "staging"])
}

fn finish(sb: &Sandbox, child: Child, secs: u64) -> (Option<i32>, String) {
    sb.finish(child, secs)
}

/// `public.events` on the source: 400,000 rows, about 45 MB (20 chunks of 20,000 rows), owned by
/// the application's role, as when its migrations create it.
fn seed_events(sb: &Sandbox, src: &str) {
    sb.sql(src, "SET ROLE shop; CREATE TABLE public.events (id bigint PRIMARY KEY, kind text NOT NULL, payload text NOT NULL);
                 INSERT INTO public.events SELECT g, 'k' || (g % 7), repeat(md5(g::text), 3) FROM generate_series(1, 400000) g;
                 ANALYZE public.events");
}

/// The first process whose parent is `parent` running `copy-worker --name <prefix>...`: its pid
/// and worker name, read from /proc.
fn copy_worker_of(parent: u32, prefix: &str) -> Option<(i32, String)> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&str> = cmdline.split('\0').collect();
        if !args.contains(&"copy-worker") {
            continue;
        }
        let name = args
            .iter()
            .skip_while(|a| **a != "--name")
            .nth(1)
            .copied()
            .unwrap_or_default();
        if name.starts_with(prefix) {
            return Some((pid, name.to_string()));
        }
    }
    None
}

/// The replicate's outputs `o` show [`seed_events`]' table copied whole: 20 chunks, every row.
fn assert_events_copied(o: &Value) {
    let events = &o["copy"]["public.events"];
    assert_eq!(
        (events["chunks"].as_u64(), events["rows"].as_u64()),
        (Some(20), Some(400000)),
        "{o}"
    );
}

/// Independently of the tool, the same `events` rows on both sides and none twice (count,
/// distinct ids, md5 over every row); and the run's `prepass` verify found them equal.
fn assert_events_equal(sb: &Sandbox, src: &str, tgt: &str, records: &[Value]) {
    let digest = "SELECT count(*) || ':' || count(DISTINCT id) || ':' || md5(string_agg(id || kind || payload, ',' ORDER BY id)) FROM public.events";
    assert_eq!(scalar(sb, src, digest), scalar(sb, tgt, digest));
    let verified = step_event(records, "step_applied", "prepass").expect("prepass applied");
    assert_eq!(
        verified["data"]["outputs"]["tables"]["public.events"]["equal"],
        true
    );
}

fn replace_in(path: &Path, from: &str, to: &str) {
    let s = std::fs::read_to_string(path).unwrap();
    assert!(s.contains(from), "{from} not in {}", path.display());
    std::fs::write(path, s.replace(from, to)).unwrap();
}

#[test]
fn a_table_without_primary_key_fails_preflight_by_name_and_nothing_is_created() {
    let sb = Sandbox::start();
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let tgt = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    // The application's role owns its tables, as it does when its migrations create them.
    sb.sql(&src, "SET ROLE shop; CREATE TABLE public.audit_log (at timestamptz, message text); INSERT INTO public.audit_log VALUES (now(), 'x')");
    // A role the source grants to that the target lacks: the copy would lose its privileges.
    sb.sql(
        &src,
        "CREATE ROLE reporting; GRANT SELECT ON public.orders TO reporting",
    );

    let dry = sb.cutover(&["execute", "staging", "--dry-run"]);
    assert!(
        text(&dry).contains("WOULD FAIL") && text(&dry).contains("public.audit_log"),
        "{}",
        text(&dry)
    );

    let out = sb.cutover(&["rehearse", "staging"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("table public.audit_log has no primary key"),
        "{t}"
    );
    // The tables that have keys are not named.
    assert!(!t.contains("table public.orders has"), "{t}");
    assert!(
        t.contains("role reporting owns or holds privileges on objects of the source database but does not exist on the target"),
        "{t}"
    );
    // The application role exists on both sides: it is not named.
    assert!(!t.contains("role shop "), "{t}");

    // Nothing of the copy exists on either side.
    assert_eq!(
        scalar(&sb, &src, "SELECT count(*) FROM pg_replication_slots"),
        "0"
    );
    assert_eq!(
        scalar(&sb, &src, "SELECT count(*) FROM pg_publication"),
        "0"
    );
    assert_eq!(
        scalar(&sb, &tgt, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"),
        "0"
    );
    assert_eq!(
        scalar(&sb, &tgt, "SELECT count(*) FROM pg_subscription"),
        "0"
    );
    assert_eq!(progress_schemas(&sb, &tgt), "0");
    sb.assert_no_secrets(&[]);
}

#[test]
fn a_copy_killed_midway_resumes_under_the_same_snapshot_without_copying_a_chunk_twice() {
    let sb = Sandbox::start_long();
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let tgt = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    // About 45 MB in 20 chunks, copied at 8 MB/s by 2 workers: several seconds to kill it in.
    seed_events(&sb, &src);
    // Every table shape with a key is split too (issue 15): a composite key, a UUID key, the two
    // partitions of a partitioned table (composite key, a date in it), and a text key beside a
    // STORED generated column (left out of the COPY column lists).
    sb.sql(&src, "SET ROLE shop; CREATE TABLE public.line_items (order_id bigint, line int, sku text NOT NULL, PRIMARY KEY (order_id, line));
                  INSERT INTO public.line_items SELECT g / 4, g % 4, 'SKU-' || g FROM generate_series(1, 60000) g;
                  CREATE TABLE public.sessions (id uuid PRIMARY KEY, started timestamptz NOT NULL);
                  INSERT INTO public.sessions SELECT md5(g::text)::uuid, timestamptz '2024-01-01' + g * interval '1 s' FROM generate_series(1, 60000) g;
                  CREATE TABLE public.readings (id bigint, taken date, value int NOT NULL, PRIMARY KEY (id, taken)) PARTITION BY RANGE (taken);
                  CREATE TABLE public.readings_2024 PARTITION OF public.readings FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
                  CREATE TABLE public.readings_2025 PARTITION OF public.readings FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
                  INSERT INTO public.readings SELECT g, date '2024-01-01' + (g % 700), g % 97 FROM generate_series(1, 100000) g;
                  CREATE TABLE public.prices (sku text PRIMARY KEY, cents int NOT NULL, with_tax int GENERATED ALWAYS AS (cents * 120 / 100) STORED);
                  INSERT INTO public.prices SELECT 'SKU-' || lpad(g::text, 6, '0'), g % 5000 FROM generate_series(1, 60000) g;
                  CREATE TYPE public.mood AS ENUM ('calm', 'busy');
                  CREATE TABLE public.moods (id int PRIMARY KEY, day date NOT NULL, history public.mood[] NOT NULL);
                  INSERT INTO public.moods SELECT g, date '2024-01-01' + g, ARRAY['calm', 'busy']::public.mood[] FROM generate_series(1, 1000) g;
                  CREATE UNIQUE INDEX moods_day ON public.moods (day) WHERE id > 10;
                  ALTER TABLE public.line_items ADD CONSTRAINT line_items_sku_fkey FOREIGN KEY (sku) REFERENCES public.prices (sku) NOT VALID;
                  ANALYZE");
    replace_in(
        &sb.project.path().join("runbooks/shop-cutover.yaml"),
        "kind: postgres.replicate, with: { jobs: 4,",
        "kind: postgres.replicate, with: { jobs: 2, chunk_rows: 20000, rate_limit_mb: 8,",
    );
    let child = sb.spawn(&["rehearse", "staging"]);
    let mut child = child;
    wait_until(120, "four chunks to be copied", || {
        sb.try_sql(&tgt, "SELECT count(*) FROM cutover_copy.copied")
            .ok()
            .and_then(|r| r[0][0].clone())
            .map(|n| n.parse::<i64>().unwrap_or(0) >= 4)
            .unwrap_or(false)
    });
    child.kill().unwrap();
    let _ = child.wait();
    let before: Vec<String> = sb
        .sql(
            &tgt,
            "SELECT table_name || '#' || chunk FROM cutover_copy.copied ORDER BY 1",
        )
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    let planned = scalar(&sb, &tgt, "SELECT count(*) FROM cutover_copy.chunks");
    assert!(
        before.len() < planned.parse::<usize>().unwrap(),
        "the copy finished before the kill"
    );
    let run = only_run(&sb).unwrap();

    let out = sb.cutover(&["resume", &run]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let records = sb.records(&run);
    let applied = step_event(&records, "step_applied", "replicate").expect("replicate applied");
    let o = &applied["data"]["outputs"];
    assert_eq!(
        o["chunks_resumed"].as_u64(),
        Some(before.len() as u64),
        "{o}"
    );
    assert_eq!(
        o["chunks_copied"].as_u64().unwrap() + o["chunks_resumed"].as_u64().unwrap(),
        o["chunks"].as_u64().unwrap(),
        "every planned chunk copied exactly once: {o}"
    );
    assert_eq!(o["chunks"].as_u64().unwrap().to_string(), planned);
    assert_events_copied(o);
    // The pre-freeze pass compared every row and found both sides equal; so do independent
    // fingerprints.
    let verified = step_event(&records, "step_applied", "prepass").expect("prepass applied");
    assert_eq!(
        verified["data"]["outputs"]["tables"]["public.events"]["equal"],
        true
    );
    for table in [
        "public.line_items",
        "public.sessions",
        "public.readings_2024",
        "public.readings_2025",
        "public.prices",
    ] {
        let copied = &o["copy"][table];
        assert!(
            copied["chunks"].as_u64().unwrap_or(0) >= 2,
            "{table}: {copied}"
        );
        let count = format!("SELECT count(*) FROM {table}");
        assert_eq!(
            scalar(&sb, &src, &count),
            scalar(&sb, &tgt, &count),
            "{table}"
        );
        assert_eq!(
            copied["rows"].as_u64().map(|n| n.to_string()),
            Some(scalar(&sb, &src, &count)),
            "{table}"
        );
        assert_eq!(
            verified["data"]["outputs"]["tables"][table]["equal"], true,
            "{table}"
        );
    }
    let digest = |url: &str, table: &str| {
        scalar(&sb, url, &format!("SELECT count(*) || ' ' || md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"))
    };
    for table in [
        "public.line_items",
        "public.sessions",
        "public.readings",
        "public.prices",
    ] {
        assert_eq!(digest(&src, table), digest(&tgt, table), "{table}");
    }
    assert_eq!(sb.table_fingerprints(&src), sb.table_fingerprints(&tgt));
    // Binary COPY where every column allows it; an array of a user-defined enum names its
    // element type's OID in binary form, so that table goes as text, with the reason.
    assert_eq!(o["copy"]["public.line_items"]["format"], "binary", "{o}");
    assert_eq!(o["copy"]["public.moods"]["format"], "text", "{o}");
    assert!(
        o["copy"]["public.moods"]["text_because"]
            .as_str()
            .unwrap_or("")
            .contains("history"),
        "{o}"
    );
    // Post-data as on the source: the same indexes (the partial unique one too) and the same
    // constraints, each foreign key VALID when the step ended unless NOT VALID on the source.
    let indexes = "SELECT string_agg(indexdef, E'\\n' ORDER BY indexdef) FROM pg_indexes WHERE schemaname = 'public'";
    assert_eq!(scalar(&sb, &src, indexes), scalar(&sb, &tgt, indexes));
    let constraints = "SELECT string_agg(conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) || ' valid=' || convalidated, E'\\n' ORDER BY conrelid::regclass::text, conname) FROM pg_constraint WHERE connamespace = 'public'::regnamespace";
    assert_eq!(
        scalar(&sb, &src, constraints),
        scalar(&sb, &tgt, constraints)
    );
    let validated: Vec<&str> = o["foreign_keys_validated"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        validated
            .iter()
            .any(|l| l.contains("orders_customer_id_fkey")),
        "{o}"
    );
    assert_eq!(
        o["foreign_keys_not_validated"][0]["constraint"], "public.line_items.line_items_sku_fkey",
        "{o}"
    );
    assert_eq!(
        scalar(
            &sb,
            &tgt,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND NOT convalidated"
        ),
        "1"
    );
    // The snapshot holder ended (and, the forward replication retired at the fallback, no
    // walsender is left on the source) and the progress schema is gone.
    wait_until(10, "the snapshot holder to end", || {
        scalar(&sb, &src, "SELECT count(*) FROM pg_stat_replication") == "0"
    });
    assert_eq!(progress_schemas(&sb, &tgt), "0");
    sb.assert_no_secrets(&[]);
}

#[test]
fn a_row_changed_after_the_prepass_and_corrupted_on_the_target_is_caught_in_the_window_by_key() {
    let sb = Sandbox::start_long();
    let tgt = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    let legacy = sb.secret_value("staging", "shop-db", "DATABASE_URL");
    let (flag, child) = start_held(&sb);
    wait_until(
        120,
        "the run to hold before the pause and the freeze",
        || {
            only_run(&sb)
                .map(|r| step_event(&sb.records(&r), "step_started", "pause").is_some())
                .unwrap_or(false)
        },
    );
    // The pre-freeze pass found every row equal; an application role may not write the target
    // before the flip.
    let run = only_run(&sb).unwrap();
    let held = sb.records(&run);
    let prepass = step_event(&held, "step_applied", "prepass").expect("prepass");
    assert!(
        prepass["data"]["outputs"]["rows"].as_i64().unwrap() > 300_000,
        "{prepass}"
    );
    let refused = sb
        .try_sql(
            &sb.var("CUTOVER_STAGING_TARGET_APP_DATABASE_URL"),
            "INSERT INTO public.customers (email, name, created_at) VALUES ('rogue@example.com', 'Rogue', now())",
        )
        .expect_err("an application write to the target before the flip was accepted");
    assert!(refused.contains("read-only transaction"), "{refused}");
    // One row changed on the source after the pass (so it is in the change-tracking set), then
    // changed on the target only, in a column that no later write touches.
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    sb.sql(
        &src,
        "UPDATE public.orders SET status = 'shipped' WHERE id = 4242",
    );
    wait_until(30, "the change to reach the target", || {
        scalar(
            &sb,
            &tgt,
            "SELECT status FROM public.orders WHERE id = 4242",
        ) == "shipped"
    });
    sb.sql(
        &tgt,
        "UPDATE public.orders SET total_cents = 987654321 WHERE id = 4242",
    );
    std::fs::remove_file(&flag).unwrap();
    let (code, out) = finish(&sb, child, 180);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("public.orders: rows differ or are missing at id=4242"),
        "{out}"
    );
    assert!(
        !out.contains("987654321"),
        "a row value was reported: {out}"
    );

    let records = sb.records(&run);
    // Inside the window, by key: the check read only the rows changed since the pass.
    let failed = step_event(&records, "step_failed", "verify").expect("verify failed");
    assert!(
        failed["data"]["error"]
            .as_str()
            .unwrap()
            .contains("changed since the pre-freeze pass"),
        "{failed}"
    );
    assert!(failed["data"]["error"]
        .as_str()
        .unwrap()
        .contains("id=4242"));
    assert!(!serde_json::to_string(&records)
        .unwrap()
        .contains("987654321"));
    assert!(
        step_event(&records, "step_started", "flip").is_none(),
        "the flip ran"
    );
    assert_eq!(
        sb.secret_value("staging", "shop-db", "DATABASE_URL"),
        legacy
    );
    sb.assert_no_secrets(&[]);
}

#[test]
fn postponed_run_holds_before_the_freeze_then_cuts_over_with_sequences_ahead_and_app_writes() {
    let sb = Sandbox::start_long();
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let tgt = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    let (flag, child) = start_held(&sb);
    // The hold begins in the pause's apply, right after its plan is recorded: before the pooler
    // pauses and before the freeze.
    wait_until(120, "the run to reach the pause", || {
        only_run(&sb)
            .map(|r| step_event(&sb.records(&r), "step_planned", "pause").is_some())
            .unwrap_or(false)
    });
    std::thread::sleep(Duration::from_secs(3));
    // Held: the freeze has not happened and the legacy database still takes writes.
    let run = only_run(&sb).unwrap();
    assert!(step_event(&sb.records(&run), "step_applied", "pause").is_none());
    assert!(step_event(&sb.records(&run), "step_applied", "freeze").is_none());
    assert_eq!(sb.shop_database("staging"), ("source".to_string(), false));
    assert_eq!(
        scalar(
            &sb,
            &src,
            "SELECT current_setting('default_transaction_read_only')"
        ),
        "off"
    );
    sb.sql(&src, "INSERT INTO public.customers (email, name, created_at) VALUES ('late@example.com', 'Late', now())");
    std::fs::remove_file(&flag).unwrap();
    let (code, out) = finish(&sb, child, 180);
    assert_eq!(code, Some(0), "{out}");

    let records = sb.records(&run);
    let pause = step_event(&records, "step_applied", "pause").unwrap();
    let held = pause["data"]["outputs"]["postponed_seconds"]
        .as_f64()
        .unwrap();
    assert!(
        held >= 2.5,
        "held {held} s for a flag removed 3 s after the plan"
    );
    // The write made while held reached the target.
    assert_eq!(
        scalar(
            &sb,
            &tgt,
            "SELECT count(*) FROM public.customers WHERE email = 'late@example.com'"
        ),
        "1"
    );

    // Every target sequence is at least the source's value plus the margin (1000).
    let source_seq = sb.sql(&src, "SELECT schemaname || '.' || sequencename, coalesce(last_value, 0) FROM pg_sequences ORDER BY 1");
    let target_seq = sb.sql(&tgt, "SELECT schemaname || '.' || sequencename, coalesce(last_value, 0) FROM pg_sequences ORDER BY 1");
    assert_eq!(source_seq.len(), 3);
    for (s, t) in source_seq.iter().zip(&target_seq) {
        assert_eq!(s[0], t[0]);
        let (sv, tv): (i64, i64) = (
            s[1].as_ref().unwrap().parse().unwrap(),
            t[1].as_ref().unwrap().parse().unwrap(),
        );
        assert!(
            tv >= sv + 1000,
            "{}: target {tv} < source {sv} + 1000",
            s[0].as_ref().unwrap()
        );
    }

    // The application now writes to the target, with a key above every replicated one (read
    // first: the fallback carries the new order back to the legacy database).
    let max_source: i64 = scalar(&sb, &src, "SELECT max(id) FROM public.orders")
        .parse()
        .unwrap();
    let (status, body) = post(&sb.var("CUTOVER_STAGING_APP_URL"), "/orders");
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_i64()
        .unwrap();
    assert!(
        id > max_source,
        "new order {id} collides with the replicated range (source max {max_source})"
    );
    assert_eq!(
        scalar(
            &sb,
            &tgt,
            &format!("SELECT count(*) FROM public.orders WHERE id = {id}")
        ),
        "1"
    );

    // The heartbeat measured the outage and lost nothing.
    let hb = records
        .iter()
        .find(|r| r["type"] == "heartbeat")
        .expect("heartbeat record");
    assert_eq!(hb["data"]["missing"].as_u64(), Some(0), "{hb}");
    assert!(hb["data"]["acknowledged"].as_u64().unwrap() > 50, "{hb}");
    assert!(hb["data"]["longest_gap_ms"].as_u64().unwrap() > 0, "{hb}");
    // Checked where the application's Secret sends it: its pooler, which sends it to the target.
    let app = sb
        .secret_value("staging", "shop-db", "DATABASE_URL")
        .unwrap();
    assert_eq!(
        hb["data"]["database"].as_str().unwrap().split('@').nth(1),
        // (`user@host:port/db`: the URL without its TLS query)
        app.split('@').nth(1).and_then(|s| s.split('?').next())
    );
    assert_eq!(sb.shop_database("staging"), ("target".to_string(), false));
    sb.assert_no_secrets(&[]);
}

/// The legacy and the AWS heartbeat writers start together and both create the heartbeat table
/// when it is missing; `CREATE TABLE IF NOT EXISTS` alone fails for one of two concurrent
/// creators (`pg_type_typname_nsp_index`), which once left a rehearsal without a heartbeat.
#[test]
fn concurrent_heartbeat_writers_both_create_the_missing_table() {
    let sb = Sandbox::start();
    let url = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    for round in 0..6 {
        let table = format!("heartbeat_race_{round}");
        let results = common::block_on(async {
            let tries =
                (0..8).map(|_| cutover::providers::postgres::heartbeat::ensure_table(&url, &table));
            futures_util::future::join_all(tries).await
        });
        for r in &results {
            assert!(r.is_ok(), "round {round}: {r:?}");
        }
        let rows = sb.sql(&url, &format!("SELECT count(*) FROM {table}"));
        assert_eq!(rows[0][0].as_deref(), Some("0"), "round {round}");
    }
}

#[test]
fn verify_tells_apart_values_that_are_only_equal_and_names_each_by_key() {
    let sb = Sandbox::start();
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let tgt = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    let create = "CREATE TABLE public.amounts (id int PRIMARY KEY, amount numeric NOT NULL, label text COLLATE \"C\" NOT NULL, span interval NOT NULL, seen timestamptz NOT NULL, tags jsonb NOT NULL);
                  INSERT INTO public.amounts SELECT g, g / 4.0, 'L' || g, g * interval '1 hour', timestamptz '2025-01-01' + g * interval '1 s', jsonb_build_object('n', g) FROM generate_series(1, 30000) g;
                  ANALYZE public.amounts";
    sb.sql(&src, create);
    sb.sql(&tgt, create);
    // Equal to PostgreSQL's hash functions, different to a user: the scale of a numeric, an
    // interval written in other units, the case of a label, one microsecond.
    sb.sql(&tgt, "UPDATE public.amounts SET amount = 2.50 WHERE id = 10;
                  UPDATE public.amounts SET span = interval '1 day' WHERE id = 24;
                  UPDATE public.amounts SET label = 'l20000' WHERE id = 20000;
                  UPDATE public.amounts SET seen = seen + interval '1 microsecond' WHERE id = 29999");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let results = rt.block_on(async {
        let c = cutover::providers::postgres::connect(
            &src,
            cutover::providers::postgres::Server::Source,
        )
        .await
        .unwrap();
        let tables: Vec<_> = cutover::providers::postgres::catalog::tables(
            &c,
            cutover::providers::postgres::Server::Source,
        )
        .await
        .unwrap()
        .into_iter()
        .filter(|t| t.display == "public.amounts")
        .collect();
        cutover::providers::postgres::checksum::compare(
            &src,
            &tgt,
            &tables,
            2,
            Some(5000),
            20,
            |_, _| {},
        )
        .await
        .unwrap()
    });
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert!(r.differs);
    assert!(r.chunks >= 5, "{} chunks", r.chunks);
    assert_eq!(r.rows, 30000);
    let mut keys = r.differing_keys.clone();
    keys.sort_by_key(|k| k.trim_start_matches("id=").parse::<i64>().unwrap_or(-1));
    assert_eq!(
        keys,
        vec!["id=10", "id=24", "id=20000", "id=29999"],
        "every differing row named by its key"
    );
}

#[test]
fn three_worker_processes_copy_every_chunk_once_though_one_is_killed_mid_chunk() {
    let sb = Sandbox::start_long();
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let tgt = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    // About 45 MB in 20 chunks at 6 MB/s over three workers: seconds to stop one in.
    seed_events(&sb, &src);
    let rb = sb.extra_runbook(
        "copy-by-workers",
        r#"name: copy-by-workers
database: shop
description: The shop's database copied by three worker processes, then compared row by row.
phases:
  - name: copy
    steps:
      - id: replicate
        kind: postgres.replicate
        with: { chunk_rows: 20000, rate_limit_mb: 6, reset_target: true, workers: { run: processes, count: 3, lease: 3 } }
      - { id: prepass, kind: postgres.verify, with: { method: checksum, jobs: 2 }, timeout: 10m }
"#,
    );
    let (mut child, _out, err) = sb.spawn_logged(&["rehearse", "staging", "--runbook", &rb]);
    // A worker stopped (SIGSTOP) while it holds a claim on a chunk it has not committed is in
    // the middle of that chunk: it is then killed. Stopped between two chunks, it goes on.
    let holding = |name: &str| -> Option<String> {
        sb.try_sql(
            &tgt,
            &format!(
                "SELECT c.table_name || ' chunk ' || (c.chunk + 1) || '/' || c.chunks FROM cutover_copy.chunks c \
                  WHERE c.worker = '{name}' AND c.lease_until > clock_timestamp() \
                    AND NOT EXISTS (SELECT 1 FROM cutover_copy.copied d WHERE d.table_name = c.table_name AND d.chunk = c.chunk)"
            ),
        )
        .ok()
        .and_then(|r| r.first().and_then(|row| row[0].clone()))
    };
    let mut killed: Option<String> = None;
    wait_until(
        300,
        "a worker to be killed in the middle of a chunk",
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the run ended ({status}) before a worker was killed:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            // The run's child `cutover copy-worker --name process-0.N`, from /proc (no procps
            // on a bare machine).
            let Some((pid, name)) = copy_worker_of(child.id(), "process-0.") else {
                return false;
            };
            // SAFETY: kill(2) on a pid that is this test's grandchild (a child of the run).
            let signal = |s: i32| unsafe {
                libc::kill(pid, s);
            };
            signal(libc::SIGSTOP);
            match holding(&name) {
                Some(chunk) => {
                    signal(libc::SIGKILL);
                    killed = Some(chunk);
                    true
                }
                None => {
                    signal(libc::SIGCONT);
                    false
                }
            }
        },
    );
    let killed = killed.unwrap();
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "{stderr}");
    // Its chunk was claimed again once its lease ran out, and the killed worker was started
    // again in its place.
    assert!(
        stderr.contains(&format!("claimed {killed} again (claim 2")),
        "{killed} not claimed again:\n{stderr}"
    );
    assert!(
        stderr.contains("copy-worker process-0.2: claiming chunks"),
        "{stderr}"
    );
    let run = only_run(&sb).unwrap();
    let records = sb.records(&run);
    let o = &step_event(&records, "step_applied", "replicate").expect("replicate applied")["data"]
        ["outputs"];
    assert_eq!(
        o["chunks_copied"].as_u64(),
        o["chunks"].as_u64(),
        "every planned chunk copied: {o}"
    );
    assert_events_copied(o);
    assert_events_equal(&sb, &src, &tgt, &records);
    assert!(
        sb.try_sql(&tgt, "SELECT 1 FROM cutover_copy.chunks")
            .is_err(),
        "the plan was dropped"
    );
    sb.assert_no_secrets(&[]);
}

/// The Job of `copy-by-job` runs: `(active, chunks copied by worker)` from the emulator and the
/// plan on the target; `None` while there is no Job.
fn copy_job_state(sb: &Sandbox, tgt: &str) -> Option<(i64, Vec<(String, i64)>)> {
    let jobs = sb.kube_get("staging", "/apis/batch/v1/namespaces/cutover/jobs");
    let job = jobs["items"].as_array()?.first()?.clone();
    assert_eq!(job["spec"]["completionMode"], "Indexed", "{job}");
    let by_worker = sb
        .try_sql(
            tgt,
            "SELECT c.worker, count(*) FROM cutover_copy.chunks c JOIN cutover_copy.copied d USING (table_name, chunk) WHERE c.worker IS NOT NULL GROUP BY 1 ORDER BY 1",
        )
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].as_deref().unwrap_or("0").parse().unwrap(),
            )
        })
        .collect();
    Some((job["status"]["active"].as_i64().unwrap_or(0), by_worker))
}

#[test]
fn a_copy_by_an_indexed_job_of_two_is_deleted_by_rollback_and_completes_on_the_next_run() {
    let sb = Sandbox::start_long();
    let src = sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL");
    let tgt = sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL");
    seed_events(&sb, &src);
    let runbook = |name: &str, rate: &str| {
        sb.extra_runbook(
            name,
            &format!(
                r#"name: {name}
database: shop
description: The shop's database copied by an Indexed Job of two workers in the target cluster.
phases:
  - name: copy
    steps:
      - id: replicate
        kind: postgres.replicate
        with: {{ chunk_rows: 20000, reset_target: true{rate}, workers: {{ run: job, count: 2 }} }}
      - {{ id: prepass, kind: postgres.verify, with: {{ method: checksum, jobs: 2 }}, timeout: 10m }}
"#
            ),
        )
    };
    // The dry-run shows the Job's manifest, and no URL.
    let slow = runbook("copy-by-job-slow", ", rate_limit_mb: 2");
    let plan = sb.cutover(&["execute", "staging", "--runbook", &slow, "--dry-run"]);
    let shown = text(&plan);
    assert!(plan.status.success(), "{shown}");
    for part in [
        "Job cutover/copy-cutover-shop-",
        r#""completionMode":"Indexed""#,
        r#""completions":2"#,
        r#""parallelism":2"#,
        "CUTOVER_COPY_SOURCE_URL sha256:",
    ] {
        assert!(shown.contains(part), "{part} not in the dry-run:\n{shown}");
    }
    assert!(
        copy_job_state(&sb, &tgt).is_none(),
        "a dry-run applies nothing"
    );

    // Run 1, limited to 2 MB/s: once both indexes have copied a chunk, the operator raises the
    // panic flag; the rollback deletes the Job (its pods with it) and its Secret.
    let (mut child, out, err) = sb.spawn_logged(&["rehearse", "staging", "--runbook", &slow]);
    wait_until(300, "both of the Job's pods to copy a chunk", || {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "the run ended ({status}) before the Job copied:\n{}",
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        // The run's progress line follows the Job's pods and what each index copied.
        let line = std::fs::read_to_string(&err).unwrap_or_default();
        matches!(copy_job_state(&sb, &tgt), Some((2, w)) if w.len() == 2)
            && line.contains("index-0: ")
            && line.contains("index-1: ")
    });
    std::fs::write(
        sb.project.path().join(".cutover/panic-staging"),
        "stop the copy\n",
    )
    .unwrap();
    let status = child.wait().unwrap();
    let printed = std::fs::read_to_string(&out).unwrap() + &std::fs::read_to_string(&err).unwrap();
    sb.outputs.lock().unwrap().push(printed.clone());
    assert_eq!(status.code(), Some(1), "{printed}");
    assert!(printed.contains(" active ("), "{printed}");
    assert!(
        copy_job_state(&sb, &tgt).is_none(),
        "the rollback deleted the Job"
    );
    let secrets = sb.kube_get("staging", "/api/v1/namespaces/cutover/secrets");
    assert!(
        !secrets.to_string().contains("copy-cutover-shop-"),
        "the rollback deleted the Job's Secret: {secrets}"
    );
    let run1 = sb.run_ids().pop().unwrap();
    let records1 = sb.records(&run1);
    let restored = records1.iter().any(|r| {
        r["type"] == "rollback_step_completed"
            && r["data"]["restored"]
                .to_string()
                .contains("copy Job cutover/copy-cutover-shop-")
    });
    assert!(
        restored,
        "the rollback names the Job it deleted; run {run1} of {:?}: {:#?}\n{printed}",
        sb.run_ids(),
        records1
            .iter()
            .filter(
                |r| r["type"].as_str().is_some_and(|t| t.starts_with("rollback")
                    || t.starts_with("step_")
                    || t == "panic")
            )
            .collect::<Vec<_>>()
    );
    std::fs::remove_file(sb.project.path().join(".cutover/panic-staging")).unwrap();

    // Run 2: the Job copies every chunk, completes, and is deleted by the run.
    let fast = runbook("copy-by-job", "");
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &fast]);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(
        printed.contains("completed and deleted with its Secret"),
        "{printed}"
    );
    assert!(copy_job_state(&sb, &tgt).is_none());
    let run2 = sb.run_ids().pop().unwrap();
    assert_ne!(run1, run2);
    let records = sb.records(&run2);
    let o = &step_event(&records, "step_applied", "replicate").expect("replicate applied")["data"]
        ["outputs"];
    assert_events_copied(o);
    assert_events_equal(&sb, &src, &tgt, &records);
    sb.assert_no_secrets(&[]);
}

#[test]
fn thirty_two_worker_processes_on_a_thousand_small_chunks_claim_none_twice() {
    let sb = Sandbox::start();
    let (src, tgt) = (
        sb.var("CUTOVER_STAGING_SOURCE_DATABASE_URL"),
        sb.var("CUTOVER_STAGING_TARGET_DATABASE_URL"),
    );
    // The shop's 310,000 rows in chunks of 300: over 1,000 chunks for 32 claimers.
    let rb = sb.extra_runbook(
        "copy-by-32-workers",
        r#"name: copy-by-32-workers
database: shop
description: The shop's database copied in small chunks by 32 worker processes.
phases:
  - name: copy
    steps:
      - id: replicate
        kind: postgres.replicate
        with: { chunk_rows: 300, workers: { run: processes, count: 32 } }
"#,
    );
    let out = sb.cutover(&["rehearse", "staging", "--runbook", &rb]);
    let printed = text(&out);
    assert!(out.status.success(), "{printed}");
    let run = only_run(&sb).unwrap();
    let records = sb.records(&run);
    let o = &step_event(&records, "step_applied", "replicate").expect("replicate applied")["data"]
        ["outputs"];
    let chunks = o["chunks"].as_u64().unwrap();
    assert!(chunks >= 1000, "{o}");
    assert_eq!(o["chunks_copied"].as_u64(), Some(chunks), "{o}");
    // Each worker names every chunk it copied: every chunk once, by one of 32 workers, and no
    // chunk was claimed a second time or committed by two.
    let mut copied: Vec<(String, String)> = printed
        .lines()
        .filter_map(|l| {
            let (worker, rest) = l.split_once("copy-worker ")?.1.split_once(": copied ")?;
            let chunk = rest.split(" (").next()?;
            Some((chunk.to_string(), worker.to_string()))
        })
        .collect();
    assert_eq!(copied.len() as u64, chunks, "one copied line per chunk");
    copied.sort();
    copied.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(copied.len() as u64, chunks, "no chunk copied twice");
    let workers: std::collections::BTreeSet<&str> =
        copied.iter().map(|(_, w)| w.as_str()).collect();
    assert!(workers.len() > 1 && workers.len() <= 32, "{workers:?}");
    for twice in ["again (claim", "committed by another worker first"] {
        assert!(!printed.contains(twice), "{twice}:\n{printed}");
    }
    // The same rows on both sides once replication has applied what came after the snapshot.
    for t in ["customers", "orders", "order_items"] {
        let q = format!("SELECT count(*) || ':' || count(DISTINCT id) FROM public.{t}");
        wait_until(120, &format!("{t} equal on both sides"), || {
            scalar(&sb, &src, &q) == scalar(&sb, &tgt, &q)
        });
    }
}
