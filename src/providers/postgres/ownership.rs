//! Ownership and privileges of a database's objects, so a copy can carry them as they are on the
//! source: which roles the objects name (owners, grantees, grantors, default privileges), and
//! each object's owner with its effective privileges, compared side by side.
//!
//! Roles are matched by name (a role is a cluster object; `pg_dump` restores `OWNER TO` and
//! `GRANT` by name). Objects are those of every schema but the system's and cutover's own
//! (`cutover_*`): tables, partitioned tables, sequences, views, materialized views, foreign
//! tables, schemas, functions and types, and default privileges. Column privileges are not
//! compared.
//!
//! Owns read-only catalog queries; must not create, alter or grant anything.

use super::pg;
use super::Server;
use crate::providers::ProviderError;
use std::collections::BTreeMap;
use tokio_postgres::Client;

/// The objects compared, each as `(kind, name, owner oid, acl, acldefault code)`.
const OBJECTS: &str = r#"
WITH ns AS (
  SELECT oid, nspname, nspowner, nspacl FROM pg_namespace
   WHERE nspname NOT IN ('pg_catalog', 'information_schema')
     AND nspname NOT LIKE 'pg\_%' AND nspname NOT LIKE 'cutover\_%'
), objs AS (
  SELECT CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                        WHEN 'f' THEN 'foreign table' ELSE 'table' END AS kind,
         format('%I.%I', ns.nspname, c.relname) AS name, c.relowner AS owner, c.relacl AS acl,
         CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char" AS code
    FROM pg_class c JOIN ns ON ns.oid = c.relnamespace
   WHERE c.relkind IN ('r', 'p', 'S', 'v', 'm', 'f')
  UNION ALL
  SELECT 'schema', format('%I', nspname), nspowner, nspacl, 'n'::"char" FROM ns
  UNION ALL
  SELECT 'function', format('%I.%I(%s)', ns.nspname, p.proname, pg_get_function_identity_arguments(p.oid)),
         p.proowner, p.proacl, 'f'::"char"
    FROM pg_proc p JOIN ns ON ns.oid = p.pronamespace
   WHERE NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
  UNION ALL
  SELECT 'type', format('%I.%I', ns.nspname, t.typname), t.typowner, t.typacl, 'T'::"char"
    FROM pg_type t JOIN ns ON ns.oid = t.typnamespace
   WHERE t.typtype IN ('d', 'e', 'r', 'm') OR (t.typtype = 'c' AND EXISTS (
           SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
)"#;

/// Every role the database's objects name: owners, grantees and grantors of their privileges,
/// and the roles of default privileges (their owner and grantees). `PUBLIC` is not a role.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn referenced_roles(c: &Client, side: Server) -> Result<Vec<String>, ProviderError> {
    let sql = format!(
        "{OBJECTS}, all_acls AS (
           SELECT owner, acl FROM objs
           UNION ALL SELECT defaclrole, defaclacl FROM pg_default_acl
         ), ids AS (
           SELECT owner AS id FROM all_acls
           UNION SELECT (aclexplode(acl)).grantee FROM all_acls WHERE acl IS NOT NULL
           UNION SELECT (aclexplode(acl)).grantor FROM all_acls WHERE acl IS NOT NULL
         )
         SELECT DISTINCT r.rolname::text FROM ids JOIN pg_roles r ON r.oid = ids.id ORDER BY 1"
    );
    Ok(c.query(&sql, &[])
        .await
        .map_err(|e| pg(side, e))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Per object (`table public.orders`), its owner and effective privileges, as
/// `owner shop; shop:INSERT*,shop:SELECT*,...,reporting:SELECT` (a `*` marks WITH GRANT
/// OPTION). An object without explicit privileges shows its type's defaults (`acldefault`), so
/// "no GRANT ever made" and "the owner's full set granted explicitly" compare equal, and who
/// granted a privilege does not matter. Default privileges appear as objects
/// `default privileges <role> <schema or *> <type>`.
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn privileges(
    c: &Client,
    side: Server,
) -> Result<BTreeMap<String, String>, ProviderError> {
    let sql = format!(
        "{OBJECTS}, entries AS (
           SELECT o.kind || ' ' || o.name AS object, pg_get_userbyid(o.owner) AS owner,
                  CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(e.grantee) END
                    || ':' || e.privilege_type || CASE WHEN e.is_grantable THEN '*' ELSE '' END AS p
             FROM objs o LEFT JOIN LATERAL aclexplode(coalesce(o.acl, acldefault(o.code, o.owner))) e ON true
           UNION ALL
           SELECT 'default privileges ' || pg_get_userbyid(d.defaclrole) || ' '
                    || coalesce((SELECT nspname FROM pg_namespace WHERE oid = d.defaclnamespace), '*')
                    || ' ' || d.defaclobjtype::text,
                  '',
                  CASE WHEN e.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(e.grantee) END
                    || ':' || e.privilege_type || CASE WHEN e.is_grantable THEN '*' ELSE '' END
             FROM pg_default_acl d, LATERAL aclexplode(d.defaclacl) e
         )
         SELECT object, 'owner ' || owner || '; ' || coalesce(string_agg(p, ',' ORDER BY p), '')
           FROM entries GROUP BY object, owner ORDER BY object"
    );
    Ok(c.query(&sql, &[])
        .await
        .map_err(|e| pg(side, e))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Of `roles`, those missing on `c`, and those the connecting role cannot act as (not a
/// superuser and not a member: it could not make them owners nor build on what they own).
///
/// # Errors
/// [`ProviderError::Postgres`].
pub async fn unusable_roles(
    c: &Client,
    side: Server,
    roles: &[String],
) -> Result<(Vec<String>, Vec<String>), ProviderError> {
    let rows = c
        .query(
            "SELECT r, EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
                    OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) AND pg_has_role(current_user, r, 'USAGE'))
               FROM unnest($1::text[]) r ORDER BY 1",
            &[&roles],
        )
        .await
        .map_err(|e| pg(side, e))?;
    let (mut missing, mut not_member) = (Vec::new(), Vec::new());
    for r in rows {
        let (name, exists, usable): (String, bool, bool) = (r.get(0), r.get(1), r.get(2));
        if !exists {
            missing.push(name);
        } else if !usable {
            not_member.push(name);
        }
    }
    Ok((missing, not_member))
}

/// The objects whose owner or privileges differ between `source` and `target` (each line
/// `object: source …; target …`), and objects of the source missing on the target. Objects
/// only on the target are not compared (the target may hold more, such as cutover's own state).
pub fn differences(
    source: &BTreeMap<String, String>,
    target: &BTreeMap<String, String>,
) -> Vec<String> {
    source
        .iter()
        .filter_map(|(obj, s)| match target.get(obj) {
            Some(t) if t == s => None,
            Some(t) => Some(format!("{obj}: source {s}; target {t}")),
            None => Some(format!("{obj}: missing on the target")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_changed_and_missing_objects_and_ignore_target_extras() {
        let m = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        let source = m(&[
            ("table public.a", "owner shop; shop:SELECT*"),
            ("table public.b", "owner shop; shop:SELECT*"),
            ("table public.c", "owner shop; shop:SELECT*"),
        ]);
        let target = m(&[
            ("table public.a", "owner shop; shop:SELECT*"),
            ("table public.b", "owner postgres; postgres:SELECT*"),
            ("table public.z", "owner postgres; postgres:SELECT*"),
        ]);
        let d = differences(&source, &target);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].starts_with("table public.b: source owner shop"));
        assert_eq!(d[1], "table public.c: missing on the target");
    }
}
