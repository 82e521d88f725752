//! PostgreSQL: connections with tokio-postgres, and the URL handling the tools around it need;
//! the catalog, preflight, initial copy, checksum comparison and heartbeat writer live in the
//! submodules.
//!
//! Passwords stay inside connection configs and child-process environments (`PGPASSWORD`); they
//! are never put on a command line, where `ps` would show them.

pub mod catalog;
pub mod changes;
pub mod checksum;
pub mod copy;
pub mod database;
pub mod heartbeat;
pub mod initial_copy;
pub mod ownership;
pub mod postdata;
pub mod preflight;
pub mod relay;
pub mod replication;
pub mod rights;
pub mod roles;
mod schedule;
pub mod snapshot;
pub mod tls;
pub mod workers;

use super::ProviderError;
use crate::config::Side;
use std::str::FromStr;
use tokio_postgres::{Client, Config};

/// Connects to `url` (`postgres://user:password@host:port/db`, with libpq's `sslmode` and
/// `sslrootcert` honoured by [`tls`]); `side` names it in errors.
///
/// # Errors
/// [`ProviderError::Postgres`] with the driver's message (which never contains the password);
/// a TLS failure says which check failed at which server and which setting changes it
/// ([`tls::classify`], [`tls::explain`]).
pub async fn connect(url: &str, side: Server) -> Result<Client, ProviderError> {
    let (driver_url, settings) = tls::split_url(url, side)?;
    let mut config = Config::from_str(&driver_url).map_err(|e| pg(side, e))?;
    if config.get_connect_timeout().is_none() {
        // A server that does not answer (a private address seen from outside its network)
        // must not hold the run for the system's TCP timeout.
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let server = server_of(&config);
    let connector = settings.connector().map_err(|m| ProviderError::Postgres {
        side,
        message: format!("{server}: {m}"),
    })?;
    let (client, connection) =
        config
            .connect(connector)
            .await
            .map_err(|e| match tls::classify(&e) {
                Some(failure) => ProviderError::Postgres {
                    side,
                    message: tls::explain(&settings, &server, &failure),
                },
                None if unreachable(&e) => ProviderError::Postgres {
                    side,
                    message: format!(
                        "{server}: cannot reach the server from this machine ({}). A private database (RDS in private subnets) answers only inside its network: run cutover where it can reach both servers (a CI runner in the VPC, or cutover as a pod in the target cluster; README: where cutover runs)",
                        pg_text(e)
                    ),
                },
                None => pg(side, e),
            })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// How long a connection attempt may take when the URL gives no `connect_timeout`.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// True when `e` says no connection could be made at all (refused, timed out, no route), as
/// opposed to a server that answered and refused the login.
fn unreachable(e: &tokio_postgres::Error) -> bool {
    use std::io::ErrorKind;
    if e.as_db_error().is_some() {
        return false;
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ErrorKind::ConnectionRefused
                    | ErrorKind::TimedOut
                    | ErrorKind::HostUnreachable
                    | ErrorKind::NetworkUnreachable
                    | ErrorKind::AddrNotAvailable
            );
        }
        source = s.source();
    }
    // tokio-postgres reports its own connect timeout as an I/O error of kind TimedOut too.
    false
}

/// The message [`pg`] makes of `e` (the server's message and detail, else the driver's), without
/// a side: never the statement, which may hold a password.
pub(crate) fn pg_text(e: tokio_postgres::Error) -> String {
    message_of(e)
}

/// The server's message and detail of `e`, else the driver's message and its cause.
fn message_of(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_string(),
        },
        None => {
            let mut s = e.to_string();
            if let Some(src) = std::error::Error::source(&e) {
                s = format!("{s}: {src}");
            }
            s
        }
    }
}

/// Which server a PostgreSQL connection reaches, as its errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// The legacy database, through the environment's source admin URL.
    Source,
    /// The RDS database, through the target admin URL.
    Target,
    /// The database the application's Secret names, as the application (and the heartbeat
    /// writer, which stands in for it) reaches it.
    Application,
    /// A connection pooler's admin console (PgBouncer's `pgbouncer` database).
    Pooler,
}

impl Server {
    /// `source`, `target` or `application`.
    pub fn as_str(self) -> &'static str {
        match self {
            Server::Source => "source",
            Server::Target => "target",
            Server::Application => "application",
            Server::Pooler => "pooler",
        }
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Side> for Server {
    fn from(side: Side) -> Server {
        match side {
            Side::Source => Server::Source,
            Side::Target => Server::Target,
        }
    }
}

/// `host:port` of a parsed configuration, for messages.
fn server_of(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Wraps a driver error; uses the server's message and detail when there is one.
pub fn pg(side: Server, e: tokio_postgres::Error) -> ProviderError {
    ProviderError::Postgres {
        side,
        message: message_of(e),
    }
}

/// The parts of a URL that `libpq`-style tools and conninfo strings need.
#[derive(Debug, Clone)]
pub struct ConnParts {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Role name.
    pub user: String,
    /// Password, if the URL has one.
    pub password: Option<String>,
    /// Database name.
    pub dbname: String,
    /// `sslmode` and `sslrootcert`.
    pub tls: tls::TlsSettings,
}

impl ConnParts {
    /// Parses a postgres URL.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] when it is not a URL with host, user and database.
    pub fn parse(url: &str, side: Server) -> Result<ConnParts, ProviderError> {
        let (driver_url, tls) = tls::split_url(url, side)?;
        let mut config = Config::from_str(&driver_url).map_err(|e| pg(side, e))?;
        if config.get_connect_timeout().is_none() {
            // A server that does not answer (a private address seen from outside its network)
            // must not hold the run for the system's TCP timeout.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => {
                return Err(ProviderError::Postgres {
                    side,
                    message: "URL has no TCP host".into(),
                })
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config.get_user().unwrap_or("postgres").to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        Ok(ConnParts {
            host,
            port,
            user,
            password,
            dbname,
            tls,
        })
    }

    /// The environment of a libpq child process (`psql`, `pg_dump`) connecting here: `PGHOST`,
    /// `PGPORT`, `PGUSER`, `PGDATABASE`, `PGPASSWORD` when there is one, and the TLS settings
    /// ([`tls::TlsSettings::libpq_env`]). The password stays off the command line.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("PGHOST", self.host.clone()),
            ("PGPORT", self.port.to_string()),
            ("PGUSER", self.user.clone()),
            ("PGDATABASE", self.dbname.clone()),
        ];
        if let Some(pw) = &self.password {
            env.push(("PGPASSWORD", pw.clone()));
        }
        env.extend(self.tls.libpq_env());
        env
    }

    /// A libpq conninfo string (`host=... password=...`), each value single-quoted; contains the
    /// password, so it must only be sent to the server, never printed.
    pub fn conninfo(&self) -> String {
        let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        let mut s = format!(
            "host={} port={} user={} dbname={}",
            q(&self.host),
            self.port,
            q(&self.user),
            q(&self.dbname)
        );
        if let Some(p) = &self.password {
            s.push_str(&format!(" password={}", q(p)));
        }
        s.push_str(&self.tls.conninfo_words());
        s
    }

    /// `user@host:port/db`, for display.
    pub fn display(&self) -> String {
        format!("{}@{}:{}/{}", self.user, self.host, self.port, self.dbname)
    }
}

/// Runs `workers` concurrently and hands each message they send on `rx` to `on_msg` as it
/// arrives, on the calling task (so `on_msg` may borrow). Ends when every worker has ended and
/// dropped its sender.
///
/// # Errors
/// The first worker error; the other workers are then cancelled.
pub(crate) async fn drive<M, E, F>(
    workers: Vec<F>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<M>,
    mut on_msg: impl FnMut(M),
) -> Result<(), E>
where
    F: std::future::Future<Output = Result<(), E>>,
{
    let all = futures_util::future::try_join_all(workers);
    tokio::pin!(all);
    let mut result = None;
    loop {
        tokio::select! {
            r = &mut all, if result.is_none() => result = Some(r),
            msg = rx.recv() => match msg {
                Some(m) => on_msg(m),
                None => break,
            },
        }
    }
    match result {
        Some(r) => r.map(|_| ()),
        None => all.await.map(|_| ()),
    }
}

/// Quotes an SQL identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes an SQL string literal.
pub fn literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quotes_values() {
        let p = ConnParts::parse(
            "postgres://shop:pa%27ss@127.0.0.1:5433/shop",
            Server::Source,
        )
        .unwrap();
        assert_eq!(p.port, 5433);
        assert_eq!(p.password.as_deref(), Some("pa'ss"));
        assert!(p.conninfo().contains("password='pa\\'ss'"));
        // No sslmode: the subscription's connection is verified too (against the system's CAs).
        assert!(
            p.conninfo().ends_with(" sslmode='verify-full'"),
            "{}",
            p.conninfo()
        );
        assert_eq!(p.display(), "shop@127.0.0.1:5433/shop");
    }
}
