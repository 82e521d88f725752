//! PgBouncer's admin console (the `pgbouncer` pseudo-database an `admin_users` role reaches, on
//! PgBouncer's own port, TLS as for any client), and the `[databases]` entries of its
//! configuration.
//!
//! The console speaks the simple query protocol only, so every command here is one
//! `simple_query` and every answer is read by column name. What the commands do is PgBouncer's
//! (<https://www.pgbouncer.org/usage.html#admin-console>, and `src/admin.c`, `src/janitor.c` of
//! PgBouncer 1.18, the version Debian 12 ships):
//! - `PAUSE db` marks the database paused at once: new statements from its clients wait (they
//!   are not refused), and the command returns once every server connection of the database is
//!   released and closed, i.e. once every transaction in flight has ended. It does not end them.
//! - `RESUME db` lets the waiting clients go on, through server connections opened afresh
//!   (from the configuration in force then), also while a `PAUSE` is still waiting.
//! - `RELOAD` re-reads the configuration file (and the files it `%include`s); a database whose
//!   connection string changed gets new server connections.
//! - `SHOW DATABASES` gives each entry's `host`, `port`, `database`, `force_user` and `paused`;
//!   `SHOW SERVERS` each server connection's `user`, `database`, `state`, `request_time` (when
//!   its last query was sent) and `remote_pid` (the backend's process id on the server).
//!
//! Owns the console's commands and the entry syntax; must not know about runbooks, Secrets or
//! steps.

use super::postgres::{connect, Server};
use super::ProviderError;
use std::collections::BTreeMap;

/// One admin console connection.
pub struct Console {
    client: tokio_postgres::Client,
    /// The URL it was opened with (a secret: never printed), for [`Console::reconnect`].
    url: String,
    /// `host:port` of the console (no credentials): what messages name.
    pub address: String,
}

/// One row of `SHOW DATABASES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseState {
    /// The entry's name (what clients give as their database).
    pub name: String,
    /// Upstream host (as configured: a name or an address).
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// The upstream database name.
    pub database: String,
    /// The user PgBouncer logs in as upstream, when the entry forces one.
    pub force_user: Option<String>,
    /// Whether the database is paused (new statements wait).
    pub paused: bool,
}

/// One row of `SHOW SERVERS`: a server connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConnection {
    /// Role it is logged in as upstream.
    pub user: String,
    /// The entry it serves.
    pub database: String,
    /// `active` (linked to a client, e.g. inside a transaction), `idle`, `used`, `tested`, `new`.
    pub state: String,
    /// When its last query was sent (PgBouncer's local time, as the console prints it).
    pub request_time: String,
    /// The backend's process id on the upstream server.
    pub remote_pid: i64,
}

/// Whether `name` can be given to `PAUSE`/`RESUME` as it is: PgBouncer reads the argument as a
/// bare word, so only names of letters, digits and `_` are accepted here.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn err(address: &str, message: impl std::fmt::Display) -> ProviderError {
    ProviderError::Postgres {
        side: Server::Pooler,
        message: format!("PgBouncer {address}: {message}"),
    }
}

fn name_checked(address: &str, name: &str) -> Result<(), ProviderError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(err(
            address,
            format!("`{name}` is not a database name PgBouncer's console accepts (letters, digits and _ only)"),
        ))
    }
}

/// The rows of a simple query, each as column name → text (NULL as absent).
async fn rows(
    client: &tokio_postgres::Client,
    address: &str,
    sql: &str,
) -> Result<Vec<BTreeMap<String, String>>, ProviderError> {
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| err(address, super::postgres::pg_text(e)))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .filter_map(|(i, c)| Some((c.name().to_string(), r.get(i)?.to_string())))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

impl Console {
    /// Connects to the console at `url` (`postgres://USER:PASSWORD@HOST:PORT/pgbouncer`, TLS
    /// settings as for any server).
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] (side `pooler`) naming the address, never the password.
    pub async fn connect(url: &str) -> Result<Console, ProviderError> {
        let config: tokio_postgres::Config = super::postgres::tls::split_url(url, Server::Pooler)?
            .0
            .parse()
            .map_err(|e| err("(its URL)", e))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = config.get_ports().first().copied().unwrap_or(6432);
        let address = format!("{host}:{port}");
        let client = connect(url, Server::Pooler).await?;
        Ok(Console {
            client,
            url: url.to_string(),
            address,
        })
    }

    /// A second connection to the same console (one whose `PAUSE` still waits answers nothing
    /// else).
    ///
    /// # Errors
    /// As [`Console::connect`].
    pub async fn reconnect(&self) -> Result<Console, ProviderError> {
        Console::connect(&self.url).await
    }

    /// `PAUSE db`: returns once every server connection of `db` is closed (every transaction
    /// in flight has ended); new statements wait meanwhile. Unbounded: callers put their budget
    /// around it.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] (an unknown database, a console refusal).
    pub async fn pause(&self, db: &str) -> Result<(), ProviderError> {
        name_checked(&self.address, db)?;
        rows(&self.client, &self.address, &format!("PAUSE {db}")).await?;
        Ok(())
    }

    /// `RESUME db` when `db` is paused; nothing when it is not. Returns whether it was paused.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`], or `db` has no entry.
    pub async fn resume(&self, db: &str) -> Result<bool, ProviderError> {
        name_checked(&self.address, db)?;
        let state = self.database(db).await?;
        if !state.paused {
            return Ok(false);
        }
        rows(&self.client, &self.address, &format!("RESUME {db}")).await?;
        Ok(true)
    }

    /// `RELOAD`: re-reads the configuration files.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`].
    pub async fn reload(&self) -> Result<(), ProviderError> {
        rows(&self.client, &self.address, "RELOAD").await?;
        Ok(())
    }

    /// Every entry of `SHOW DATABASES` (PgBouncer's own `pgbouncer` entry included).
    ///
    /// # Errors
    /// [`ProviderError::Postgres`].
    pub async fn databases(&self) -> Result<Vec<DatabaseState>, ProviderError> {
        let rows = rows(&self.client, &self.address, "SHOW DATABASES").await?;
        Ok(rows
            .into_iter()
            .map(|r| DatabaseState {
                name: r.get("name").cloned().unwrap_or_default(),
                host: r.get("host").cloned().unwrap_or_default(),
                port: r.get("port").and_then(|p| p.parse().ok()).unwrap_or(0),
                database: r.get("database").cloned().unwrap_or_default(),
                force_user: r.get("force_user").filter(|u| !u.is_empty()).cloned(),
                paused: r.get("paused").is_some_and(|p| p == "1"),
            })
            .collect())
    }

    /// The `SHOW DATABASES` entry of `db`.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`], also when there is no such entry.
    pub async fn database(&self, db: &str) -> Result<DatabaseState, ProviderError> {
        self.databases()
            .await?
            .into_iter()
            .find(|d| d.name == db)
            .ok_or_else(|| err(&self.address, format!("no database entry `{db}`")))
    }

    /// The server connections of `db` (`SHOW SERVERS`).
    ///
    /// # Errors
    /// [`ProviderError::Postgres`].
    pub async fn servers(&self, db: &str) -> Result<Vec<ServerConnection>, ProviderError> {
        let rows = rows(&self.client, &self.address, "SHOW SERVERS").await?;
        Ok(rows
            .into_iter()
            .filter(|r| r.get("database").is_some_and(|d| d == db))
            .map(|r| ServerConnection {
                user: r.get("user").cloned().unwrap_or_default(),
                database: r.get("database").cloned().unwrap_or_default(),
                state: r.get("state").cloned().unwrap_or_default(),
                request_time: r.get("request_time").cloned().unwrap_or_default(),
                remote_pid: r
                    .get("remote_pid")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
            })
            .collect())
    }

    /// A setting's value (`SHOW CONFIG`), e.g. `pool_mode`.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`].
    pub async fn setting(&self, key: &str) -> Result<Option<String>, ProviderError> {
        let rows = rows(&self.client, &self.address, "SHOW CONFIG").await?;
        Ok(rows
            .into_iter()
            .find(|r| r.get("key").is_some_and(|k| k == key))
            .and_then(|r| r.get("value").cloned()))
    }
}

/// An upstream as a `[databases]` entry gives it: `host=… port=… dbname=… user=… password=…`.
#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database name upstream.
    pub dbname: String,
    /// Role to log in as (`force_user` in `SHOW DATABASES`).
    pub user: String,
    /// Its password (a secret: never printed; [`Upstream::fingerprint`]).
    pub password: String,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.describe())
    }
}

/// Why a database URL or an entry could not be read as an upstream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EntryError {
    /// The URL is not a PostgreSQL URL with a host, a database and a user.
    #[error("the upstream URL {0}")]
    Url(String),
    /// A `[databases]` line could not be read.
    #[error("line {line} of the [databases] configuration: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// Quotes a connection-string value as PgBouncer reads it (single quotes, `''` inside).
fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

impl Upstream {
    /// The upstream a database URL names (`postgres://USER:PASSWORD@HOST:PORT/DB?…`); TLS
    /// settings in the query are PgBouncer's global `server_tls_*`, not the entry's.
    ///
    /// # Errors
    /// [`EntryError::Url`] saying what is missing (never the URL itself).
    pub fn from_url(url: &str) -> Result<Upstream, EntryError> {
        let (plain, _) = super::postgres::tls::split_url(url, Server::Pooler)
            .map_err(|_| EntryError::Url("is not a PostgreSQL URL".into()))?;
        let c: tokio_postgres::Config = plain
            .parse()
            .map_err(|_| EntryError::Url("is not a PostgreSQL URL".into()))?;
        let host = match c.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => return Err(EntryError::Url("names no TCP host".into())),
        };
        let user = c
            .get_user()
            .ok_or_else(|| EntryError::Url("names no user".into()))?
            .to_string();
        let dbname = c
            .get_dbname()
            .ok_or_else(|| EntryError::Url("names no database".into()))?
            .to_string();
        let password = c
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .ok_or_else(|| EntryError::Url("carries no password".into()))?;
        Ok(Upstream {
            host,
            port: c.get_ports().first().copied().unwrap_or(5432),
            dbname,
            user,
            password,
        })
    }

    /// The entry's value: `host=… port=… dbname=… user=… password=…`.
    pub fn entry(&self) -> String {
        format!(
            "host={} port={} dbname={} user={} password={}",
            quote(&self.host),
            self.port,
            quote(&self.dbname),
            quote(&self.user),
            quote(&self.password)
        )
    }

    /// `user@host:port/dbname`: what may be printed.
    pub fn describe(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }

    /// Fingerprint of the whole entry, password included ([`crate::secret::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        crate::secret::fingerprint(&self.entry())
    }

    /// Whether `SHOW DATABASES` shows this upstream for an entry (the password is not shown,
    /// so it is not compared).
    pub fn shown_by(&self, state: &DatabaseState) -> bool {
        state.host == self.host
            && state.port == self.port
            && state.database == self.dbname
            && state.force_user.as_deref() == Some(self.user.as_str())
    }

    /// Reads an entry's value (`key=value` pairs, values optionally single-quoted).
    fn parse(value: &str, line: usize) -> Result<Upstream, EntryError> {
        let bad = |message: String| EntryError::Line { line, message };
        let mut fields = BTreeMap::new();
        let mut rest = value.trim();
        while !rest.is_empty() {
            let (key, after) = rest.split_once('=').ok_or_else(|| {
                bad(format!(
                    "`{}` is not key=value",
                    rest.split_whitespace().next().unwrap_or(rest)
                ))
            })?;
            let key = key.trim().to_string();
            let after = after.trim_start();
            let (val, tail) = if let Some(q) = after.strip_prefix('\'') {
                let mut out = String::new();
                let mut chars = q.char_indices().peekable();
                let mut end = None;
                while let Some((i, ch)) = chars.next() {
                    if ch == '\'' {
                        if chars.peek().is_some_and(|(_, n)| *n == '\'') {
                            out.push('\'');
                            chars.next();
                        } else {
                            end = Some(i + 1);
                            break;
                        }
                    } else {
                        out.push(ch);
                    }
                }
                let end =
                    end.ok_or_else(|| bad(format!("the value of `{key}` has no closing quote")))?;
                (out, &q[end..])
            } else {
                let end = after.find(char::is_whitespace).unwrap_or(after.len());
                (after[..end].to_string(), &after[end..])
            };
            fields.insert(key, val);
            rest = tail.trim_start();
        }
        let get = |k: &str| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| bad(format!("the entry gives no `{k}`")))
        };
        Ok(Upstream {
            host: get("host")?,
            port: get("port")?
                .parse()
                .map_err(|_| bad("`port` is not a port number".into()))?,
            dbname: get("dbname")?,
            user: get("user")?,
            password: get("password")?,
        })
    }
}

/// The `[databases]` section a pooler's configuration includes: the entries in their order,
/// with every other line (comments, the section header, blank lines) kept as written.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabasesFile {
    lines: Vec<Line>,
}

impl std::fmt::Debug for DatabasesFile {
    /// The entries' names and upstreams, never their passwords.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.lines.iter().filter_map(|l| match l {
                Line::Entry(n, u) => Some((n, u)),
                Line::Other(_) => None,
            }))
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq)]
enum Line {
    Entry(String, Upstream),
    Other(String),
}

impl DatabasesFile {
    /// Reads the file's text. Entries whose value is not `host port dbname user password` are
    /// errors: the tool only rewrites entries it can read whole.
    ///
    /// # Errors
    /// [`EntryError::Line`] naming the line (never its password).
    pub fn parse(text: &str) -> Result<DatabasesFile, EntryError> {
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let t = raw.trim();
            if t.is_empty() || t.starts_with(';') || t.starts_with('#') || t.starts_with('[') {
                lines.push(Line::Other(raw.to_string()));
                continue;
            }
            let (name, value) = t.split_once('=').ok_or_else(|| EntryError::Line {
                line: i + 1,
                message: "not `name = connection string`".into(),
            })?;
            lines.push(Line::Entry(
                name.trim().to_string(),
                Upstream::parse(value, i + 1)?,
            ));
        }
        Ok(DatabasesFile { lines })
    }

    /// The upstream of entry `name`.
    pub fn get(&self, name: &str) -> Option<&Upstream> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry(n, u) if n == name => Some(u),
            _ => None,
        })
    }

    /// Sets entry `name` (replacing it where it is, or appending it).
    pub fn set(&mut self, name: &str, upstream: Upstream) {
        for l in &mut self.lines {
            if let Line::Entry(n, u) = l {
                if n == name {
                    *u = upstream;
                    return;
                }
            }
        }
        if !self
            .lines
            .iter()
            .any(|l| matches!(l, Line::Other(t) if t.trim() == "[databases]"))
        {
            self.lines.insert(0, Line::Other("[databases]".into()));
        }
        self.lines.push(Line::Entry(name.to_string(), upstream));
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Entry(n, u) => out.push_str(&format!("{n} = {}\n", u.entry())),
                Line::Other(t) => {
                    out.push_str(t);
                    out.push('\n');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(host: &str, password: &str) -> Upstream {
        Upstream {
            host: host.into(),
            port: 5432,
            dbname: "shop_staging".into(),
            user: "shop".into(),
            password: password.into(),
        }
    }

    #[test]
    fn an_upstream_comes_from_a_url_without_its_tls_settings_and_prints_without_its_password() {
        let u = Upstream::from_url(
            "postgres://shop:s3cret@10.0.0.5:6543/shop_staging?sslmode=verify-full&sslrootcert=/ca.pem",
        )
        .unwrap();
        assert_eq!(
            u,
            Upstream {
                port: 6543,
                ..up("10.0.0.5", "s3cret")
            }
        );
        assert_eq!(
            u.entry(),
            "host=10.0.0.5 port=6543 dbname=shop_staging user=shop password=s3cret"
        );
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(!u.describe().contains("s3cret"));
        assert_eq!(
            Upstream::from_url("postgres://shop@h/db").unwrap_err(),
            EntryError::Url("carries no password".into())
        );
    }

    #[test]
    fn entries_round_trip_with_quotes_and_other_lines_are_kept() {
        let text = "[databases]\n; the shop\nshop_staging = host=a port=5432 dbname=shop_staging user=shop password='it''s here'\nother = host=b port=1 dbname=o user=u password=p\n";
        let mut f = DatabasesFile::parse(text).unwrap();
        assert_eq!(f.get("shop_staging").unwrap().password, "it's here");
        assert_eq!(f.render(), text);
        f.set("shop_staging", up("rds.internal", "new"));
        let again = DatabasesFile::parse(&f.render()).unwrap();
        assert_eq!(again.get("shop_staging"), Some(&up("rds.internal", "new")));
        assert_eq!(again.get("other").unwrap().host, "b");
        let mut empty = DatabasesFile::parse("").unwrap();
        empty.set("x", up("h", "p"));
        assert!(empty.render().starts_with("[databases]\nx = host=h"));
    }

    #[test]
    fn a_line_that_is_not_an_entry_is_named_by_number_without_its_value() {
        let e = DatabasesFile::parse(
            "[databases]\nshop = host=a port=x dbname=d user=u password=secretvalue\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            EntryError::Line {
                line: 2,
                message: "`port` is not a port number".into()
            }
        );
        assert!(!e.to_string().contains("secretvalue"));
        assert!(DatabasesFile::parse("[databases]\nshop = host=a port=1\n").is_err());
    }

    #[test]
    fn only_bare_names_reach_the_console() {
        assert!(valid_name("shop_staging"));
        assert!(!valid_name("shop; RESUME"));
        assert!(!valid_name(""));
    }

    #[test]
    fn show_databases_is_compared_without_the_password() {
        let u = up("h", "p");
        let mut s = DatabaseState {
            name: "shop_staging".into(),
            host: "h".into(),
            port: 5432,
            database: "shop_staging".into(),
            force_user: Some("shop".into()),
            paused: true,
        };
        assert!(u.shown_by(&s));
        s.port = 5433;
        assert!(!u.shown_by(&s));
    }
}
