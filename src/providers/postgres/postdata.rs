//! The post-data section (indexes, constraints, triggers, rules, policies, comments) applied as
//! `pg_restore -j` and pgcopydb apply it, instead of one statement after another in one
//! transaction:
//!
//! - **build**: every index, and the unique index behind each primary key and unique
//!   constraint, built by the copy's workers in parallel as soon as its table's rows are in;
//! - **analyze**: `ANALYZE` of each table once its rows and indexes are in;
//! - **finish**: the rest in pg_dump's order in one transaction: constraints attached to their
//!   already built index (`ADD CONSTRAINT ... USING INDEX`, a catalog change), foreign keys added
//!   `NOT VALID` (no scan), triggers, partition index attachments, comments;
//! - **validate**: `VALIDATE CONSTRAINT` of each foreign key, in parallel, after replication has
//!   started (a scan that blocks no writes, never inside the write outage).
//!
//! The statements are pg_dump's own, split at its TOC headers (`-- Name: …; Type: …`). A
//! statement is moved into the parallel build only when its text is exactly what pg_dump writes
//! for one plain index or constraint (compared with `pg_get_indexdef` / `pg_get_constraintdef`
//! of the same object); anything else stays in the finish transaction as pg_dump wrote it.
//!
//! Owns the split and the ordering rules; must not run statements (the copy's workers do) nor
//! decide what is copied.

use super::pg;
use super::Server;
use crate::providers::ProviderError;
use std::collections::HashMap;
use tokio_postgres::Client;

/// When an item runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// In parallel, once the table's rows are copied.
    Build,
    /// In parallel, once the table's rows and its build items are in.
    Analyze,
    /// In one transaction, in pg_dump's order, after every build item.
    Finish,
    /// In parallel, after the subscription is created.
    Validate,
}

impl Stage {
    /// The name stored in the progress table.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Build => "build",
            Stage::Analyze => "analyze",
            Stage::Finish => "finish",
            Stage::Validate => "validate",
        }
    }

    /// The stage named `s` by [`Stage::as_str`].
    pub fn parse(s: &str) -> Option<Stage> {
        [Stage::Build, Stage::Analyze, Stage::Finish, Stage::Validate]
            .into_iter()
            .find(|st| st.as_str() == s)
    }
}

/// One statement (or pg_dump entry) of the post-data section.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Position: finish items run in this order.
    pub id: i32,
    /// When it runs.
    pub stage: Stage,
    /// The table whose rows it needs (`format('%I.%I')`), when it needs one.
    pub table: Option<String>,
    /// For progress and the audit, e.g. `index public.orders_customer_id`.
    pub label: String,
    /// The SQL.
    pub sql: String,
}

/// One pg_dump TOC entry of a plain-format dump.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `Type:` (`INDEX`, `CONSTRAINT`, `FK CONSTRAINT`, `TRIGGER`, …).
    pub kind: String,
    /// `Schema:` (`-` when none).
    pub schema: String,
    /// `Name:` (for constraints `table constraint`).
    pub tag: String,
    /// The entry's SQL, trimmed.
    pub sql: String,
}

/// Splits a plain-format pg_dump section at its TOC headers: the preamble (the session
/// settings before the first entry, which every statement needs: `search_path` is empty) and the
/// entries in dump order. psql meta-commands (`\restrict`) are already gone.
pub fn parse(dump: &str) -> (String, Vec<Entry>) {
    let mut preamble = String::new();
    let mut entries: Vec<Entry> = Vec::new();
    let mut body = String::new();
    let mut lines = dump.lines().peekable();
    let flush = |entries: &mut Vec<Entry>, body: &mut String| {
        if let Some(e) = entries.last_mut() {
            e.sql = trim_comments(body);
        }
        body.clear();
    };
    let mut in_entry = false;
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("-- Name: ") {
            let (tag, rest) = rest.split_once("; Type: ").unwrap_or((rest, ""));
            let (kind, rest) = rest.split_once("; Schema: ").unwrap_or((rest, ""));
            let schema = rest.split_once("; Owner: ").map(|(s, _)| s).unwrap_or(rest);
            if in_entry {
                flush(&mut entries, &mut body);
            } else {
                preamble = trim_comments(&body);
                body.clear();
            }
            entries.push(Entry {
                kind: kind.to_string(),
                schema: schema.to_string(),
                tag: tag.to_string(),
                sql: String::new(),
            });
            in_entry = true;
            // The header's closing `--`.
            if lines.peek().map(|l| l.trim()) == Some("--") {
                lines.next();
            }
            continue;
        }
        body.push_str(line);
        body.push('\n');
    }
    if in_entry {
        flush(&mut entries, &mut body);
    } else {
        preamble = trim_comments(&body);
    }
    (preamble, entries)
}

/// Drops whole-line `--` comments (pg_dump's separators) and surrounding blank lines.
fn trim_comments(s: &str) -> String {
    s.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_string()
}

/// What the source catalog says about one index (`pg_index`).
#[derive(Debug, Clone)]
pub struct IndexInfo {
    /// The table it is on, `format('%I.%I')`.
    pub table: String,
    /// `pg_get_indexdef`, under an empty `search_path` (as pg_dump writes it).
    pub def: String,
}

/// What the source catalog says about one constraint (`pg_constraint`).
#[derive(Debug, Clone)]
pub struct ConstraintInfo {
    /// `p`, `u`, `f` or `x`.
    pub kind: char,
    /// The table, `format('%I.%I')`.
    pub table: String,
    /// The constraint name, quoted where needed.
    pub name: String,
    /// `pg_get_constraintdef`.
    pub def: String,
    /// The table is partitioned (`relkind = 'p'`): no `USING INDEX`, no `NOT VALID` foreign key.
    pub partitioned: bool,
    /// `DEFERRABLE`.
    pub deferrable: bool,
    /// Validated on the source (a `NOT VALID` one stays so).
    pub validated: bool,
    /// `pg_get_indexdef` of the index behind a `p`/`u` constraint whose index bears the
    /// constraint's name.
    pub index_def: Option<String>,
}

/// The source's indexes by (schema, name) and constraints by (schema, `table constraint`),
/// the keys pg_dump's headers use.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Indexes.
    pub indexes: HashMap<(String, String), IndexInfo>,
    /// Constraints.
    pub constraints: HashMap<(String, String), ConstraintInfo>,
}

const INDEXES_SQL: &str = "
SELECT n.nspname, i.relname, format('%I.%I', tn.nspname, t.relname), pg_get_indexdef(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace
JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'";

const CONSTRAINTS_SQL: &str = "
SELECT n.nspname, t.relname || ' ' || c.conname, c.contype::text, format('%I.%I', n.nspname, t.relname),
       quote_ident(c.conname), pg_get_constraintdef(c.oid), t.relkind = 'p', c.condeferrable, c.convalidated,
       CASE WHEN c.contype IN ('p', 'u') AND i.relname = c.conname THEN pg_get_indexdef(c.conindid) END
FROM pg_constraint c
JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
LEFT JOIN pg_class i ON i.oid = c.conindid
WHERE c.contype IN ('p', 'u', 'f', 'x') AND n.nspname NOT IN ('pg_catalog', 'information_schema')";

/// Reads [`Catalog`] on `c`, whose `search_path` this sets empty (as pg_dump's session has it,
/// so definitions name their objects the same way).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn catalog(c: &Client, side: Server) -> Result<Catalog, ProviderError> {
    c.batch_execute("SELECT pg_catalog.set_config('search_path', '', false)")
        .await
        .map_err(|e| pg(side, e))?;
    let mut out = Catalog::default();
    for r in c.query(INDEXES_SQL, &[]).await.map_err(|e| pg(side, e))? {
        out.indexes.insert(
            (r.get(0), r.get(1)),
            IndexInfo {
                table: r.get(2),
                def: r.get(3),
            },
        );
    }
    for r in c
        .query(CONSTRAINTS_SQL, &[])
        .await
        .map_err(|e| pg(side, e))?
    {
        let kind: String = r.get(2);
        out.constraints.insert(
            (r.get(0), r.get(1)),
            ConstraintInfo {
                kind: kind.chars().next().unwrap_or('?'),
                table: r.get(3),
                name: r.get(4),
                def: r.get(5),
                partitioned: r.get(6),
                deferrable: r.get(7),
                validated: r.get(8),
                index_def: r.get(9),
            },
        );
    }
    Ok(out)
}

/// The post-data plan: pg_dump's `entries` sorted into stages with `catalog`, plus an
/// `ANALYZE` of each of `tables`. With `validate_foreign_keys` false, foreign keys are added
/// `NOT VALID` and left so (their labels are returned second, for the record).
pub fn plan(
    entries: &[Entry],
    catalog: &Catalog,
    tables: &[String],
    validate_foreign_keys: bool,
) -> (Vec<Item>, Vec<String>) {
    let mut items = Vec::new();
    let mut not_validated = Vec::new();
    let mut push = |stage: Stage, table: Option<&str>, label: String, sql: String| {
        let id = items.len() as i32;
        items.push(Item {
            id,
            stage,
            table: table.map(str::to_string),
            label,
            sql,
        });
    };
    for e in entries {
        let key = (e.schema.clone(), e.tag.clone());
        match e.kind.as_str() {
            "INDEX" => match catalog.indexes.get(&key) {
                Some(ix) if e.sql == format!("{};", ix.def) => push(
                    Stage::Build,
                    Some(&ix.table),
                    format!("index {}.{}", e.schema, e.tag),
                    e.sql.clone(),
                ),
                _ => push(Stage::Finish, None, label(e), e.sql.clone()),
            },
            "CONSTRAINT" | "FK CONSTRAINT" => {
                let Some(c) = catalog.constraints.get(&key) else {
                    push(Stage::Finish, None, label(e), e.sql.clone());
                    continue;
                };
                let only = if c.partitioned && c.kind == 'f' {
                    ""
                } else {
                    "ONLY "
                };
                let add = format!(
                    "ALTER TABLE {only}{}\n    ADD CONSTRAINT {} {}",
                    c.table, c.name, c.def
                );
                let what = match c.kind {
                    'p' => "primary key",
                    'u' => "unique constraint",
                    'x' => "exclusion constraint",
                    _ => "foreign key",
                };
                let lbl = format!("{what} {} on {}", c.name, c.table);
                if e.sql != format!("{add};") {
                    push(Stage::Finish, None, lbl, e.sql.clone());
                    continue;
                }
                match (c.kind, &c.index_def) {
                    ('p' | 'u', Some(def)) if !c.partitioned && !c.deferrable => {
                        push(
                            Stage::Build,
                            Some(&c.table),
                            format!("index {} for {lbl}", c.name),
                            format!("{def};"),
                        );
                        let using = if c.kind == 'p' {
                            "PRIMARY KEY"
                        } else {
                            "UNIQUE"
                        };
                        push(
                            Stage::Finish,
                            None,
                            lbl,
                            format!(
                                "ALTER TABLE ONLY {} ADD CONSTRAINT {} {using} USING INDEX {};",
                                c.table, c.name, c.name
                            ),
                        );
                    }
                    ('f', _) if !c.partitioned && c.validated => {
                        push(
                            Stage::Finish,
                            None,
                            lbl.clone(),
                            format!("{add} NOT VALID;"),
                        );
                        if validate_foreign_keys {
                            push(
                                Stage::Validate,
                                Some(&c.table),
                                format!("validate {lbl}"),
                                format!(
                                    "ALTER TABLE ONLY {} VALIDATE CONSTRAINT {};",
                                    c.table, c.name
                                ),
                            );
                        } else {
                            not_validated.push(lbl);
                        }
                    }
                    ('f', _) => push(Stage::Finish, None, lbl, e.sql.clone()),
                    // One statement on one table (exclusion, partitioned, deferrable): built
                    // in parallel as pg_dump wrote it.
                    _ => push(Stage::Build, Some(&c.table), lbl, e.sql.clone()),
                }
            }
            _ => push(Stage::Finish, None, label(e), e.sql.clone()),
        }
    }
    for t in tables {
        push(
            Stage::Analyze,
            Some(t),
            format!("analyze {t}"),
            format!("ANALYZE {t};"),
        );
    }
    (items, not_validated)
}

/// Appends to the finish stage the reset of each table whose autovacuum the copy paused
/// (`ALTER TABLE ... RESET (autovacuum_enabled)`), so the table is as on the source once its
/// indexes are in.
pub fn resume_autovacuum(items: &mut Vec<Item>, paused: &[String]) {
    for t in paused {
        let id = items.len() as i32;
        items.push(Item {
            id,
            stage: Stage::Finish,
            table: None,
            label: format!("autovacuum of {t} resumed"),
            sql: format!("ALTER TABLE {t} RESET (autovacuum_enabled);"),
        });
    }
}

fn label(e: &Entry) -> String {
    format!("{} {}.{}", e.kind.to_lowercase(), e.schema, e.tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "--
-- PostgreSQL database dump
--

SET statement_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: customers customers_pkey; Type: CONSTRAINT; Schema: public; Owner: shop
--

ALTER TABLE ONLY public.customers
    ADD CONSTRAINT customers_pkey PRIMARY KEY (id);


--
-- Name: orders_customer_id; Type: INDEX; Schema: public; Owner: shop
--

CREATE INDEX orders_customer_id ON public.orders USING btree (customer_id);


--
-- Name: orders_sku; Type: INDEX; Schema: public; Owner: shop
--

CREATE INDEX orders_sku ON public.orders USING btree (sku);

ALTER TABLE public.orders CLUSTER ON orders_sku;


--
-- Name: orders orders_customer_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: shop
--

ALTER TABLE ONLY public.orders
    ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id);


--
-- Name: orders audit; Type: TRIGGER; Schema: public; Owner: shop
--

CREATE TRIGGER audit AFTER INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.audit();


--
-- PostgreSQL database dump complete
--
";

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        let ix = |t: &str, d: &str| IndexInfo {
            table: t.into(),
            def: d.into(),
        };
        c.indexes.insert(
            ("public".into(), "orders_customer_id".into()),
            ix(
                "public.orders",
                "CREATE INDEX orders_customer_id ON public.orders USING btree (customer_id)",
            ),
        );
        c.indexes.insert(
            ("public".into(), "orders_sku".into()),
            ix(
                "public.orders",
                "CREATE INDEX orders_sku ON public.orders USING btree (sku)",
            ),
        );
        let con =
            |kind, table: &str, name: &str, def: &str, index_def: Option<&str>| ConstraintInfo {
                kind,
                table: table.into(),
                name: name.into(),
                def: def.into(),
                partitioned: false,
                deferrable: false,
                validated: true,
                index_def: index_def.map(str::to_string),
            };
        c.constraints.insert(
            ("public".into(), "customers customers_pkey".into()),
            con(
                'p',
                "public.customers",
                "customers_pkey",
                "PRIMARY KEY (id)",
                Some("CREATE UNIQUE INDEX customers_pkey ON public.customers USING btree (id)"),
            ),
        );
        c.constraints.insert(
            ("public".into(), "orders orders_customer_id_fkey".into()),
            con(
                'f',
                "public.orders",
                "orders_customer_id_fkey",
                "FOREIGN KEY (customer_id) REFERENCES public.customers(id)",
                None,
            ),
        );
        c
    }

    #[test]
    fn entries_are_split_at_headers_with_the_preamble_apart() {
        let (pre, entries) = parse(DUMP);
        assert_eq!(
            pre,
            "SET statement_timeout = 0;\nSELECT pg_catalog.set_config('search_path', '', false);"
        );
        let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["CONSTRAINT", "INDEX", "INDEX", "FK CONSTRAINT", "TRIGGER"]
        );
        assert_eq!(entries[0].tag, "customers customers_pkey");
        assert_eq!(entries[0].schema, "public");
        assert_eq!(
            entries[0].sql,
            "ALTER TABLE ONLY public.customers\n    ADD CONSTRAINT customers_pkey PRIMARY KEY (id);"
        );
        assert!(entries[4].sql.starts_with("CREATE TRIGGER audit"));
        assert!(!entries[4].sql.contains("dump complete"));
    }

    #[test]
    fn plain_indexes_and_keys_build_in_parallel_the_rest_keeps_dump_order() {
        let (_, entries) = parse(DUMP);
        let tables = vec!["public.customers".to_string(), "public.orders".to_string()];
        let (items, skipped) = plan(&entries, &catalog(), &tables, true);
        let view: Vec<(Stage, Option<&str>, &str)> = items
            .iter()
            .map(|i| (i.stage, i.table.as_deref(), i.sql.as_str()))
            .collect();
        assert_eq!(
            view,
            vec![
                (Stage::Build, Some("public.customers"), "CREATE UNIQUE INDEX customers_pkey ON public.customers USING btree (id);"),
                (Stage::Finish, None, "ALTER TABLE ONLY public.customers ADD CONSTRAINT customers_pkey PRIMARY KEY USING INDEX customers_pkey;"),
                (Stage::Build, Some("public.orders"), "CREATE INDEX orders_customer_id ON public.orders USING btree (customer_id);"),
                // Two statements (the index and CLUSTER ON): kept whole, in order, in the finish.
                (Stage::Finish, None, "CREATE INDEX orders_sku ON public.orders USING btree (sku);\n\nALTER TABLE public.orders CLUSTER ON orders_sku;"),
                (Stage::Finish, None, "ALTER TABLE ONLY public.orders\n    ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) REFERENCES public.customers(id) NOT VALID;"),
                (Stage::Validate, Some("public.orders"), "ALTER TABLE ONLY public.orders VALIDATE CONSTRAINT orders_customer_id_fkey;"),
                (Stage::Finish, None, "CREATE TRIGGER audit AFTER INSERT ON public.orders FOR EACH ROW EXECUTE FUNCTION public.audit();"),
                (Stage::Analyze, Some("public.customers"), "ANALYZE public.customers;"),
                (Stage::Analyze, Some("public.orders"), "ANALYZE public.orders;"),
            ]
        );
        assert!(skipped.is_empty());
        let ids: Vec<i32> = items.iter().map(|i| i.id).collect();
        assert_eq!(ids, (0..9).collect::<Vec<_>>());
    }

    #[test]
    fn unknown_or_unusual_objects_stay_as_pg_dump_wrote_them() {
        let (_, entries) = parse(DUMP);
        let mut cat = catalog();
        // A deferrable key cannot be attached to a plain unique index: built whole.
        cat.constraints
            .get_mut(&("public".to_string(), "customers customers_pkey".to_string()))
            .map(|c| c.deferrable = true);
        // A foreign key already NOT VALID on the source stays so, as written.
        cat.constraints
            .get_mut(&(
                "public".to_string(),
                "orders orders_customer_id_fkey".to_string(),
            ))
            .map(|c| c.validated = false);
        let (items, _) = plan(&entries, &cat, &[], true);
        assert_eq!(items[0].stage, Stage::Build);
        assert_eq!(items[0].sql, entries[0].sql);
        assert!(items.iter().all(|i| i.stage != Stage::Validate));
        assert!(items.iter().any(|i| i.sql == entries[3].sql));
        // Nothing known about an object: the finish runs pg_dump's text.
        let (items, _) = plan(&entries, &Catalog::default(), &[], true);
        assert!(items.iter().all(|i| i.stage == Stage::Finish));
        let texts: Vec<&str> = items.iter().map(|i| i.sql.as_str()).collect();
        let dumped: Vec<&str> = entries.iter().map(|e| e.sql.as_str()).collect();
        assert_eq!(texts, dumped);
    }

    #[test]
    fn foreign_keys_left_not_valid_when_the_runbook_says_so() {
        let (_, entries) = parse(DUMP);
        let (items, skipped) = plan(&entries, &catalog(), &[], false);
        assert!(items.iter().all(|i| i.stage != Stage::Validate));
        assert_eq!(
            skipped,
            vec!["foreign key orders_customer_id_fkey on public.orders".to_string()]
        );
    }
}
