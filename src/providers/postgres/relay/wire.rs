//! A replication connection (`replication=database`) speaking PostgreSQL's streaming
//! replication protocol: TLS through the same rustls connector as every other connection of the
//! tool ([`super::super::tls`]), password, MD5 or SCRAM-SHA-256 authentication (the SCRAM state
//! machine is `postgres-protocol`'s), `START_REPLICATION SLOT ... LOGICAL`, then the copy-both
//! stream: XLogData and keepalive messages in, standby status updates out.
//!
//! Owns the bytes on the wire only: what a message means for the destination is
//! [`super::pgoutput`]'s and [`super::apply`]'s. Never puts the password in an error.
//!
//! Protocol: <https://www.postgresql.org/docs/15/protocol-replication.html> and
//! <https://www.postgresql.org/docs/15/protocol-message-formats.html>.

use super::super::{ConnParts, Server};
use crate::providers::ProviderError;
use bytes::{Buf, BufMut, BytesMut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};

/// What the stream carries, as this module reads it.
#[derive(Debug)]
pub enum WalMessage {
    /// One message of the output plugin: `start` is its WAL position, `end` the server's WAL
    /// end when it was sent (bytes offsets; [`format_lsn`] prints them).
    XLogData {
        /// WAL position of this message.
        start: u64,
        /// The server's WAL end at sending.
        end: u64,
        /// The output plugin's bytes (pgoutput's message).
        data: bytes::Bytes,
    },
    /// The server's keepalive: its WAL end, and whether it asks for a status update now.
    Keepalive {
        /// The server's WAL end.
        end: u64,
        /// True when the server will end the connection unless it hears from us soon.
        reply: bool,
    },
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One replication connection. Created by [`ReplicationStream::connect`]; streaming from
/// [`ReplicationStream::start`].
pub struct ReplicationStream {
    io: BufReader<Box<dyn Io>>,
    side: Server,
    server: String,
    /// The SQLSTATE of the last ErrorResponse the server sent, if any.
    last_sqlstate: Option<String>,
}

/// How long to wait for a TCP connection and the login.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

fn err(side: Server, message: impl Into<String>) -> ProviderError {
    ProviderError::Postgres {
        side,
        message: message.into(),
    }
}

/// Parses `X/Y` (two hexadecimal halves) into a WAL position in bytes.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// Formats a WAL position as PostgreSQL prints it (`16/B374D848`).
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Microseconds since 2000-01-01, the protocol's clock.
fn pg_now() -> i64 {
    const EPOCH_2000: u64 = 946_684_800;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    (now.as_micros() as i64) - (EPOCH_2000 as i64) * 1_000_000
}

impl ReplicationStream {
    /// Connects to `url` as a logical replication connection and logs in.
    ///
    /// # Errors
    /// [`ProviderError::Postgres`] naming `side` and `host:port`: unreachable, TLS refused or not
    /// verified (as the tool's other connections say it), or the server's login error.
    pub async fn connect(url: &str, side: Server) -> Result<ReplicationStream, ProviderError> {
        let parts = ConnParts::parse(url, side)?;
        let server = format!("{}:{}", parts.host, parts.port);
        let login = async {
            let tcp = TcpStream::connect((parts.host.as_str(), parts.port))
                .await
                .map_err(|e| {
                    err(
                        side,
                        format!("{server}: cannot reach the server from this machine ({e})"),
                    )
                })?;
            let _ = tcp.set_nodelay(true);
            let io = Self::secure(tcp, &parts, side, &server).await?;
            let mut me = ReplicationStream {
                io: BufReader::with_capacity(256 * 1024, io),
                side,
                server: server.clone(),
                last_sqlstate: None,
            };
            me.login(&parts).await?;
            Ok(me)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, login)
            .await
            .map_err(|_| {
                err(
                    side,
                    format!(
                        "{server}: no answer within {CONNECT_TIMEOUT:?} (replication connection)"
                    ),
                )
            })?
    }

    /// The TLS part: SSLRequest, then the handshake with the tool's connector; plaintext only
    /// where the mode allows it.
    async fn secure(
        mut tcp: TcpStream,
        parts: &ConnParts,
        side: Server,
        server: &str,
    ) -> Result<Box<dyn Io>, ProviderError> {
        use super::super::tls::SslMode;
        if parts.tls.mode == SslMode::Disable {
            return Ok(Box::new(tcp));
        }
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        tcp.write_all(&buf)
            .await
            .map_err(|e| err(side, format!("{server}: {e}")))?;
        let answer = tcp
            .read_u8()
            .await
            .map_err(|e| err(side, format!("{server}: {e}")))?;
        if answer != b'S' {
            return match parts.tls.mode {
                SslMode::Allow | SslMode::Prefer => Ok(Box::new(tcp)),
                mode => Err(err(
                    side,
                    format!(
                        "{server}: the server does not accept TLS, and sslmode={} requires it",
                        mode.as_str()
                    ),
                )),
            };
        }
        let mut make = parts
            .tls
            .connector()
            .map_err(|m| err(side, format!("{server}: {m}")))?;
        let connect = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut make, &parts.host)
            .map_err(|e| err(side, format!("{server}: {e}")))?;
        let stream = connect.connect(tcp).await.map_err(|e| {
            err(
                side,
                format!(
                    "{server}: TLS handshake failed ({e}); the tool's other connections to this server explain the setting to change"
                ),
            )
        })?;
        Ok(Box::new(stream))
    }

    /// Whether bytes of the next message are already read from the socket (more of the stream
    /// is waiting).
    pub fn buffered(&self) -> bool {
        !self.io.buffer().is_empty()
    }

    async fn send(&mut self, buf: &[u8]) -> Result<(), ProviderError> {
        let (side, server) = (self.side, self.server.clone());
        let w = self.io.get_mut();
        w.write_all(buf)
            .await
            .map_err(|e| err(side, format!("{server}: connection lost ({e})")))?;
        w.flush()
            .await
            .map_err(|e| err(side, format!("{server}: connection lost ({e})")))
    }

    /// Reads one backend message: its tag and body.
    async fn read(&mut self) -> Result<(u8, BytesMut), ProviderError> {
        let lost = |side, server: &str, e: std::io::Error| {
            err(side, format!("{server}: connection lost ({e})"))
        };
        let tag = self
            .io
            .read_u8()
            .await
            .map_err(|e| lost(self.side, &self.server, e))?;
        let len = self
            .io
            .read_u32()
            .await
            .map_err(|e| lost(self.side, &self.server, e))? as usize;
        let mut body = BytesMut::zeroed(len.saturating_sub(4));
        self.io
            .read_exact(&mut body)
            .await
            .map_err(|e| lost(self.side, &self.server, e))?;
        if tag == b'E' {
            self.last_sqlstate = sqlstate(&body);
            return Err(err(
                self.side,
                format!("{}: {}", self.server, server_error(&body)),
            ));
        }
        Ok((tag, body))
    }

    async fn login(&mut self, parts: &ConnParts) -> Result<(), ProviderError> {
        let mut buf = BytesMut::new();
        frontend::startup_message(
            [
                ("user", parts.user.as_str()),
                ("database", parts.dbname.as_str()),
                ("replication", "database"),
                ("application_name", "cutover-relay"),
            ],
            &mut buf,
        )
        .map_err(|e| err(self.side, e.to_string()))?;
        self.send(&buf).await?;
        let password = parts.password.clone().unwrap_or_default();
        let mut scram: Option<ScramSha256> = None;
        loop {
            let (tag, mut body) = self.read().await?;
            match tag {
                b'R' => {
                    let code = body.get_i32();
                    let mut out = BytesMut::new();
                    match code {
                        0 => continue,
                        3 => frontend::password_message(password.as_bytes(), &mut out),
                        5 => {
                            let salt: [u8; 4] = body[..4].try_into().unwrap_or_default();
                            let hash = postgres_protocol::authentication::md5_hash(
                                parts.user.as_bytes(),
                                password.as_bytes(),
                                salt,
                            );
                            frontend::password_message(hash.as_bytes(), &mut out)
                        }
                        10 => {
                            let mechanisms = String::from_utf8_lossy(&body).to_string();
                            if !mechanisms.split('\0').any(|m| m == "SCRAM-SHA-256") {
                                return Err(err(
                                    self.side,
                                    format!("{}: the server offers no SASL mechanism this tool speaks ({})", self.server, mechanisms.replace('\0', " ").trim()),
                                ));
                            }
                            let s = ScramSha256::new(
                                password.as_bytes(),
                                ChannelBinding::unsupported(),
                            );
                            let r = frontend::sasl_initial_response(
                                "SCRAM-SHA-256",
                                s.message(),
                                &mut out,
                            );
                            scram = Some(s);
                            r
                        }
                        11 => match scram.as_mut() {
                            Some(s) => {
                                s.update(&body).map_err(|e| err(self.side, e.to_string()))?;
                                frontend::sasl_response(s.message(), &mut out)
                            }
                            None => return Err(err(self.side, "unexpected SASL continue")),
                        },
                        12 => {
                            if let Some(s) = scram.as_mut() {
                                s.finish(&body).map_err(|e| {
                                    err(self.side, format!("{}: SCRAM: {e}", self.server))
                                })?;
                            }
                            continue;
                        }
                        other => {
                            return Err(err(
                                self.side,
                                format!(
                                    "{}: authentication method {other} is not supported",
                                    self.server
                                ),
                            ))
                        }
                    }
                    .map_err(|e| err(self.side, e.to_string()))?;
                    self.send(&out).await?;
                }
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, NoticeResponse.
                _ => continue,
            }
        }
    }

    /// Starts logical replication from `slot` at `start` with pgoutput's protocol version 1
    /// (text values) for `publication`: from here the connection is a copy-both stream.
    ///
    /// # Errors
    /// The server's error (no such slot, slot active elsewhere, no such publication), or a
    /// lost connection.
    pub async fn start(
        &mut self,
        slot: &str,
        publication: &str,
        start: u64,
    ) -> Result<(), ProviderError> {
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} (proto_version '1', publication_names '{}')",
            super::super::ident(slot),
            format_lsn(start),
            super::super::ident(publication).replace('\'', "''")
        );
        let mut buf = BytesMut::new();
        frontend::query(&sql, &mut buf).map_err(|e| err(self.side, e.to_string()))?;
        self.send(&buf).await?;
        loop {
            let (tag, _) = self.read().await?;
            match tag {
                b'W' => return Ok(()),
                b'N' | b'S' => continue,
                other => {
                    return Err(err(
                        self.side,
                        format!(
                            "{}: unexpected message {:?} after START_REPLICATION",
                            self.server, other as char
                        ),
                    ))
                }
            }
        }
    }

    /// The SQLSTATE of the last error the server sent on this connection (`42704` for a slot
    /// that does not exist), for callers that act on the kind of error.
    pub fn last_sqlstate(&self) -> Option<&str> {
        self.last_sqlstate.as_deref()
    }

    /// The next message of the stream; `None` when the server ended it (CopyDone).
    ///
    /// # Errors
    /// The server's error, a lost connection, or a message this module cannot read.
    pub async fn next(&mut self) -> Result<Option<WalMessage>, ProviderError> {
        loop {
            let (tag, mut body) = self.read().await?;
            match tag {
                b'd' if !body.is_empty() => {
                    let kind = body.get_u8();
                    match kind {
                        b'w' if body.len() >= 24 => {
                            let start = body.get_u64();
                            let end = body.get_u64();
                            let _sent_at = body.get_i64();
                            return Ok(Some(WalMessage::XLogData {
                                start,
                                end,
                                data: body.freeze(),
                            }));
                        }
                        b'k' if body.len() >= 17 => {
                            let end = body.get_u64();
                            let _sent_at = body.get_i64();
                            let reply = body.get_u8() == 1;
                            return Ok(Some(WalMessage::Keepalive { end, reply }));
                        }
                        other => {
                            return Err(err(
                                self.side,
                                format!(
                                    "{}: unknown replication message {:?}",
                                    self.server, other as char
                                ),
                            ))
                        }
                    }
                }
                b'c' => return Ok(None),
                _ => continue,
            }
        }
    }

    /// Sends a standby status update: everything up to `flushed` is durably applied at the
    /// destination (the server may release WAL before it and moves the slot's
    /// `confirmed_flush_lsn` there); `reply` asks the server to answer with a keepalive at once.
    ///
    /// # Errors
    /// A lost connection.
    pub async fn status(&mut self, flushed: u64, reply: bool) -> Result<(), ProviderError> {
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(flushed);
        payload.put_u64(flushed);
        payload.put_u64(flushed);
        payload.put_i64(pg_now());
        payload.put_u8(u8::from(reply));
        let mut buf = BytesMut::with_capacity(40);
        buf.put_u8(b'd');
        buf.put_u32(4 + payload.len() as u32);
        buf.extend_from_slice(&payload);
        self.send(&buf).await
    }
}

/// The SQLSTATE field (`C`) of an ErrorResponse body.
pub fn sqlstate(body: &[u8]) -> Option<String> {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

/// The readable part of an ErrorResponse body: severity-free message, detail and SQLSTATE.
pub fn server_error(body: &[u8]) -> String {
    let mut message = String::new();
    let mut detail = None;
    let mut code = None;
    for field in body.split(|b| *b == 0) {
        let Some((&k, v)) = field.split_first() else {
            continue;
        };
        let v = String::from_utf8_lossy(v).into_owned();
        match k {
            b'M' => message = v,
            b'D' => detail = Some(v),
            b'C' => code = Some(v),
            _ => {}
        }
    }
    let mut s = message;
    if let Some(d) = detail {
        s = format!("{s} ({d})");
    }
    if let Some(c) = code {
        s = format!("{s} [SQLSTATE {c}]");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_round_trip_as_postgresql_prints_them() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
        assert_eq!(format_lsn(0), "0/0");
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("nonsense"), None);
    }

    #[test]
    fn an_error_response_reads_as_message_detail_and_code() {
        let body = b"SERROR\0VERROR\0C42704\0Mreplication slot \"x\" does not exist\0Dmore\0\0";
        assert_eq!(
            server_error(body),
            "replication slot \"x\" does not exist (more) [SQLSTATE 42704]"
        );
        assert_eq!(sqlstate(body).as_deref(), Some("42704"));
        assert_eq!(sqlstate(b"SERROR\0Mno code\0\0"), None);
    }
}
