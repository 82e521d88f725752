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
pub mod heartbeat;
pub mod ownership;
pub mod postdata;
pub mod preflight;
pub mod replication;
pub mod roles;
mod schedule;
pub mod snapshot;

use super::ProviderError;
use std::str::FromStr;
use tokio_postgres::{Client, Config, NoTls};

/// Connects to `url` (`postgres://user:password@host:port/db`); `side` names it in errors.
///
/// # Errors
/// [`ProviderError::Postgres`] with the driver's message (which never contains the password).
pub async fn connect(url: &str, side: &str) -> Result<Client, ProviderError> {
    let config = Config::from_str(url).map_err(|e| pg(side, e))?;
    let (client, connection) = config.connect(NoTls).await.map_err(|e| pg(side, e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Wraps a driver error; uses the server's message and detail when there is one.
pub fn pg(side: &str, e: tokio_postgres::Error) -> ProviderError {
    let message = match e.as_db_error() {
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
    };
    ProviderError::Postgres {
        side: side.to_string(),
        message,
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
}

impl ConnParts {
    /// Parses a postgres URL.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] when it is not a URL with host, user and database.
    pub fn parse(url: &str, side: &str) -> Result<ConnParts, ProviderError> {
        let config = Config::from_str(url).map_err(|e| pg(side, e))?;
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => {
                return Err(ProviderError::Postgres {
                    side: side.into(),
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
        })
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
        let p = ConnParts::parse("postgres://shop:pa%27ss@127.0.0.1:5433/shop", "source").unwrap();
        assert_eq!(p.port, 5433);
        assert_eq!(p.password.as_deref(), Some("pa'ss"));
        assert!(p.conninfo().contains("password='pa\\'ss'"));
        assert_eq!(p.display(), "shop@127.0.0.1:5433/shop");
    }
}
