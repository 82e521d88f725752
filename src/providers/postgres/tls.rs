//! TLS for every PostgreSQL connection the tool makes: libpq's `sslmode` and `sslrootcert`, read
//! from the connection URL with libpq's meanings, over rustls (the aws-lc-rs provider, as
//! reqwest already uses) through tokio-postgres-rustls.
//!
//! tokio-postgres itself knows only `disable`, `prefer` and `require`, never verifies a
//! certificate and refuses `sslrootcert`, so this module takes both parameters out of the URL
//! before the driver sees it ([`split_url`]) and builds the certificate check each mode asks for
//! ([`TlsSettings::connector`]).
//!
//! It owns: parsing the two parameters, the verifier of each mode, the libpq settings handed to
//! `psql`/`pg_dump` and written into subscriptions, and the explanation of a failed handshake.
//! It must not: weaken a mode that was asked for (a certificate that does not verify is an
//! error, never a fallback to less), or put a URL, a password or a certificate's bytes into a
//! message.
//!
//! One deliberate difference from libpq: a URL **without** `sslmode` is verified
//! (`verify-full`: against `sslrootcert` when given, else the system's CAs), where libpq would
//! `prefer` TLS and check nothing. A server without TLS then needs `sslmode=disable`, said in so
//! many words by the error.

use super::super::ProviderError;
use super::Server;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// libpq's `sslmode` (PostgreSQL documentation, "SSL Support", table 34.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// Plaintext first, TLS if the server insists; no certificate check. (The driver tries TLS
    /// first, so this behaves as `prefer`.)
    Allow,
    /// TLS when the server offers it, else plaintext; no certificate check.
    Prefer,
    /// TLS or nothing; the certificate is checked only when a CA is given (then as `verify-ca`,
    /// as libpq does when a root certificate file exists).
    Require,
    /// TLS, and the certificate chains to the given CA; the host name is not checked.
    VerifyCa,
    /// TLS, the certificate chains to the given CA and names the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Every mode, as libpq spells it.
    pub const NAMES: [&'static str; 6] = [
        "disable",
        "allow",
        "prefer",
        "require",
        "verify-ca",
        "verify-full",
    ];

    /// Parses libpq's spelling.
    pub fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// Where the CA certificates a verifying mode trusts come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file of one or more CA certificates (RDS's `global-bundle.pem`, DigitalOcean's
    /// per-cluster `ca-certificate.crt`).
    File(PathBuf),
    /// The operating system's trusted CAs (`sslrootcert=system`, as in libpq 16).
    System,
}

/// The TLS part of one connection's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The mode in force.
    pub mode: SslMode,
    /// Whether the URL said `sslmode` (false: the verified default, see the module docs).
    pub mode_given: bool,
    /// `sslrootcert`, when given.
    pub root_cert: Option<RootCert>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::VerifyFull,
            mode_given: false,
            root_cert: None,
        }
    }
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL or a `key=value`
/// conninfo string) and returns the rest, for tokio-postgres, with the TLS settings they gave.
/// The returned URL carries the driver's nearest mode (`disable`, `prefer` or `require`).
///
/// # Errors
/// [`ProviderError::Postgres`] naming `side` for an `sslmode` that is not one of libpq's six
/// (listed), or an empty `sslrootcert`. The message never repeats the URL.
pub fn split_url(url: &str, side: Server) -> Result<(String, TlsSettings), ProviderError> {
    let mut mode = None;
    let mut root = None;
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, q),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8_lossy()
                .into_owned();
            match k {
                "sslmode" => mode = Some(v),
                "sslrootcert" => root = Some(v),
                _ => kept.push(pair),
            }
        }
        (mode.is_some() || root.is_some())
            .then_some(())
            .map_or_else(
                || url.to_string(),
                |_| {
                    if kept.is_empty() {
                        base.to_string()
                    } else {
                        format!("{base}?{}", kept.join("&"))
                    }
                },
            )
    } else {
        // key=value words (values with spaces must be quoted; ours never are).
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            match word.split_once('=') {
                Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
                Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_string()),
                _ => kept.push(word),
            }
        }
        if mode.is_some() || root.is_some() {
            kept.join(" ")
        } else {
            url.to_string()
        }
    };
    let bad = |message: String| ProviderError::Postgres { side, message };
    let settings = TlsSettings {
        mode: match &mode {
            None => SslMode::VerifyFull,
            Some(m) => SslMode::parse(m).ok_or_else(|| {
                bad(format!(
                    "sslmode `{m}` is not one of: {}",
                    SslMode::NAMES.join(", ")
                ))
            })?,
        },
        mode_given: mode.is_some(),
        root_cert: match root.as_deref() {
            None => None,
            Some("") => {
                return Err(bad(
                    "sslrootcert is empty: give a CA file's path, or `system`".into(),
                ))
            }
            Some("system") => Some(RootCert::System),
            Some(p) => Some(RootCert::File(PathBuf::from(p))),
        },
    };
    let driver_mode = match settings.mode {
        SslMode::Disable => "disable",
        SslMode::Allow | SslMode::Prefer => "prefer",
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => "require",
    };
    let sep = if rest.starts_with("postgres") {
        if rest.contains('?') {
            "&"
        } else {
            "?"
        }
    } else {
        " "
    };
    Ok((format!("{rest}{sep}sslmode={driver_mode}"), settings))
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Encrypted, certificate not checked (`require` without a CA, `prefer`, `allow`).
    None,
    /// Chains to the CA; any host name (`verify-ca`, or `require` with a CA).
    Chain,
    /// Chains to the CA and names the host (`verify-full`).
    Full,
}

impl TlsSettings {
    /// The check this mode makes, given whether a CA is at hand.
    pub fn check(&self) -> Check {
        match self.mode {
            SslMode::Disable | SslMode::Allow | SslMode::Prefer => Check::None,
            SslMode::Require if self.root_cert.is_some() => Check::Chain,
            SslMode::Require => Check::None,
            SslMode::VerifyCa => Check::Chain,
            SslMode::VerifyFull => Check::Full,
        }
    }

    /// The CA file libpq would read when none is given: `~/.postgresql/root.crt`.
    fn default_root_file() -> Option<PathBuf> {
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".postgresql/root.crt"))
    }

    /// The CAs a verifying mode trusts: `sslrootcert`'s file or the system's; without
    /// `sslrootcert`, `~/.postgresql/root.crt` when the mode was asked for (libpq's rule) and
    /// the system's CAs for the unstated default.
    ///
    /// # Errors
    /// A message naming the file that is missing or holds no certificate.
    fn roots(&self) -> Result<RootCertStore, String> {
        let source = match &self.root_cert {
            Some(r) => r.clone(),
            None if self.mode_given => match Self::default_root_file() {
                Some(p) if p.exists() => RootCert::File(p),
                _ => {
                    return Err(format!(
                        "sslmode={} needs the CA that signed the server's certificate: give sslrootcert=<CA file> (RDS: global-bundle.pem; DigitalOcean: the cluster's ca-certificate.crt) or sslrootcert=system; ~/.postgresql/root.crt does not exist",
                        self.mode.as_str()
                    ))
                }
            },
            None => RootCert::System,
        };
        let mut store = RootCertStore::empty();
        match source {
            RootCert::File(path) => {
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&path)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(format!(
                        "sslrootcert {}: no PEM certificate in it",
                        path.display()
                    ));
                }
            }
            RootCert::System => {
                store.add_parsable_certificates(system_roots().iter().cloned());
                if store.is_empty() {
                    return Err("the system has no trusted CA certificates (sslrootcert=system); give sslrootcert=<CA file>".into());
                }
            }
        }
        Ok(store)
    }

    /// The rustls client configuration for this mode.
    ///
    /// # Errors
    /// A message for a CA that cannot be read (see [`Self::roots`]).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.check() {
            Check::None => Arc::new(Unchecked(provider.clone())),
            check => {
                let full = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.roots()?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("cannot use the CA certificates: {e}"))?;
                if check == Check::Full {
                    full
                } else {
                    Arc::new(ChainOnly(full))
                }
            }
        };
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    /// The connector tokio-postgres uses.
    ///
    /// # Errors
    /// As [`Self::client_config`].
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(
            self.client_config()?,
        ))
    }

    /// The libpq settings for a child process (`PGSSLMODE`, and `PGSSLROOTCERT` for a CA):
    /// the same check as the tool's own connections. `system` becomes the Debian/Ubuntu bundle
    /// path for libpq releases before 16, which do not know the word.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.mode.as_str().to_string())];
        match &self.root_cert {
            Some(RootCert::File(p)) => env.push(("PGSSLROOTCERT", p.display().to_string())),
            Some(RootCert::System) => env.push(("PGSSLROOTCERT", SYSTEM_BUNDLE.to_string())),
            None if !self.mode_given => {
                env.push(("PGSSLROOTCERT", SYSTEM_BUNDLE.to_string()));
            }
            None => {}
        }
        env
    }

    /// The conninfo words (`sslmode='…' sslrootcert='…'`) a subscription's connection carries:
    /// the publisher is reached by the subscriber's libpq, on the subscriber's host, so a CA
    /// file's path must exist there too (it does in the sandbox; RDS and DigitalOcean give no
    /// way to place one, where `sslmode=require` is what their subscriptions can use).
    pub fn conninfo_words(&self) -> String {
        let mut s = format!(" sslmode='{}'", self.mode.as_str());
        match &self.root_cert {
            Some(RootCert::File(p)) => s.push_str(&format!(
                " sslrootcert='{}'",
                p.display().to_string().replace('\'', "\\'")
            )),
            Some(RootCert::System) => s.push_str(" sslrootcert='system'"),
            None => {}
        }
        s
    }

    /// The query that gives a `postgres://` URL these settings again (`?sslmode=…&sslrootcert=…`,
    /// percent-encoded), or nothing for the unstated default: for URLs made from parts.
    pub fn url_query(&self) -> String {
        let enc = |v: &str| {
            percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let mut words = Vec::new();
        if self.mode_given {
            words.push(format!("sslmode={}", self.mode.as_str()));
        }
        match &self.root_cert {
            Some(RootCert::File(p)) => {
                words.push(format!("sslrootcert={}", enc(&p.display().to_string())))
            }
            Some(RootCert::System) => words.push("sslrootcert=system".into()),
            None => {}
        }
        if words.is_empty() {
            String::new()
        } else {
            format!("?{}", words.join("&"))
        }
    }

    /// One phrase for people: the mode and what it checks against, e.g. `sslmode=verify-full
    /// against CA /etc/ssl/rds.pem`, or `no sslmode in the URL, so cutover verifies
    /// (verify-full) against the system's CAs`.
    pub fn describe(&self) -> String {
        let ca = match &self.root_cert {
            Some(RootCert::File(p)) => format!("CA {}", p.display()),
            Some(RootCert::System) => "the system's CAs".into(),
            None if !self.mode_given => "the system's CAs".into(),
            None => "~/.postgresql/root.crt".into(),
        };
        match self.check() {
            Check::None => format!("sslmode={}: certificate not checked", self.mode.as_str()),
            _ if !self.mode_given => {
                format!("no sslmode in the URL, so cutover verifies (verify-full) against {ca}")
            }
            _ => format!("sslmode={} against {ca}", self.mode.as_str()),
        }
    }
}

/// The Debian/Ubuntu path of the system's CA bundle (package ca-certificates).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Keeps `pem` (one or more PEM certificates, read from a secret source) as a CA file libpq and
/// this tool can both use, and returns its path: `<temp dir>/cutover-ca/<fingerprint>.pem`,
/// named by its content so every process of a run (and a resumed one) writes the same file.
/// A CA certificate is public; the file is readable by all.
///
/// # Errors
/// A message when `pem` holds no certificate or the file cannot be written.
pub fn store_ca(pem: &str) -> Result<PathBuf, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    let dir = std::env::temp_dir().join("cutover-ca");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let name = crate::secret::fingerprint(pem).replace(':', "-");
    let path = dir.join(format!("{name}.pem"));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(pem) {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, pem).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(path)
}

/// `url` verified against the CA file `ca`: `sslrootcert=<ca>` added, and `sslmode=verify-full`
/// when the URL gives no mode.
///
/// # Errors
/// A message when the URL already names a `sslrootcert` (two CAs for one server: keep one).
pub fn with_root_cert(url: &str, ca: &Path) -> Result<String, String> {
    let (_, settings) = split_url(url, Server::Source).map_err(|e| match e {
        // The message alone: the caller names the URL's side.
        ProviderError::Postgres { message, .. } => message,
        other => other.to_string(),
    })?;
    if settings.root_cert.is_some() {
        return Err(
            "the URL gives sslrootcert and the environment gives a CA for it too: keep one".into(),
        );
    }
    let enc = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut words = vec![format!("sslrootcert={}", enc(&ca.display().to_string()))];
    if !settings.mode_given {
        words.push("sslmode=verify-full".into());
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}{}", words.join("&")))
}

/// The system's trusted CA certificates, read once per process: reading and parsing the
/// bundle (about 150 certificates) costs tens of milliseconds, and without a cache every
/// connection that trusts the system's CAs paid it again.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

/// Why a connection failed, as far as TLS is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsFailure {
    /// The certificate does not chain to a trusted CA (or its signature is bad).
    UntrustedCertificate,
    /// The certificate chains, but does not name the host connected to.
    WrongHost,
    /// The certificate has expired or is not valid yet.
    Expired,
    /// Another certificate problem (rustls's words).
    Certificate(String),
    /// The server answered the TLS request with "no".
    ServerWithoutTls,
    /// The server refused a plaintext connection (pg_hba.conf: `hostssl` only).
    PlaintextRefused,
}

/// Classifies `e` by its types: the rustls error in its source chain, or the server's SQLSTATE.
/// Two cases carry no type of their own and are told by their fixed text: tokio-postgres's
/// "server does not support TLS", and the server's 28000 rejection ending "no encryption"
/// (PostgreSQL's `ClientAuthentication`).
pub fn classify(e: &tokio_postgres::Error) -> Option<TlsFailure> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        let rustls_err = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::InvalidCertificate(c)) = rustls_err {
            return Some(match c {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    TlsFailure::UntrustedCertificate
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => TlsFailure::WrongHost,
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. } => TlsFailure::Expired,
                other => TlsFailure::Certificate(format!("{other:?}")),
            });
        }
        if err.to_string() == "server does not support TLS" {
            return Some(TlsFailure::ServerWithoutTls);
        }
        source = err.source();
    }
    let db = e.as_db_error()?;
    (db.code() == &tokio_postgres::error::SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        && db.message().ends_with("no encryption"))
    .then_some(TlsFailure::PlaintextRefused)
}

/// Explains `failure` of a connection to `server` (`host:port`) under `tls`: which check failed
/// and which setting changes it.
pub fn explain(tls: &TlsSettings, server: &str, failure: &TlsFailure) -> String {
    let how = tls.describe();
    match failure {
        TlsFailure::UntrustedCertificate => format!(
            "the certificate of {server} is not signed by a CA trusted here ({how}); give the CA that signed it with sslrootcert=<file> (RDS: global-bundle.pem; DigitalOcean: the cluster's CA certificate), or sslmode=require to encrypt without checking"
        ),
        TlsFailure::WrongHost => format!(
            "the certificate of {server} does not name that host ({how}); connect by a name the certificate carries, or use sslmode=verify-ca to check the CA only"
        ),
        TlsFailure::Expired => format!(
            "the certificate of {server} has expired or is not valid yet ({how})"
        ),
        TlsFailure::Certificate(what) => {
            format!("the certificate of {server} was refused: {what} ({how})")
        }
        TlsFailure::ServerWithoutTls => format!(
            "{server} does not accept TLS ({how}); if it really has no TLS, sslmode=disable connects without encryption"
        ),
        TlsFailure::PlaintextRefused => format!(
            "{server} refuses connections without TLS ({how}); use sslmode=verify-full with sslrootcert=<CA file>, or sslmode=require"
        ),
    }
}

/// `require`/`prefer` without a CA: encrypted, the certificate not checked (libpq's meaning);
/// the handshake's signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked as `verify-full` checks it, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsSettings) {
        split_url(url, Server::Source).unwrap()
    }

    #[test]
    fn sslmode_and_sslrootcert_leave_the_url_and_the_driver_gets_its_nearest_mode() {
        let (u, t) = split("postgres://a:b@h:5432/db?sslmode=verify-full&sslrootcert=%2Fca%2Frds.pem&application_name=x");
        assert_eq!(
            u,
            "postgres://a:b@h:5432/db?application_name=x&sslmode=require"
        );
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert!(t.mode_given);
        assert_eq!(t.root_cert, Some(RootCert::File("/ca/rds.pem".into())));
        assert_eq!(t.check(), Check::Full);

        let (u, t) = split("postgres://a@h/db?sslmode=disable");
        assert_eq!(u, "postgres://a@h/db?sslmode=disable");
        assert_eq!(t.check(), Check::None);

        let (u, t) = split("host=h user=a sslmode=verify-ca sslrootcert=system");
        assert_eq!(u, "host=h user=a sslmode=require");
        assert_eq!(t.root_cert, Some(RootCert::System));
        assert_eq!(t.check(), Check::Chain);
    }

    #[test]
    fn without_sslmode_the_connection_is_verified_and_require_with_a_ca_checks_the_chain() {
        let (u, t) = split("postgres://a@h/db");
        assert_eq!(u, "postgres://a@h/db?sslmode=require");
        assert!(!t.mode_given);
        assert_eq!(t.check(), Check::Full);
        assert!(
            t.describe().starts_with("no sslmode in the URL"),
            "{}",
            t.describe()
        );

        let (_, t) = split("postgres://a@h/db?sslmode=require");
        assert_eq!(t.check(), Check::None);
        let (_, t) = split("postgres://a@h/db?sslmode=require&sslrootcert=/ca.pem");
        assert_eq!(t.check(), Check::Chain);
        let (_, t) = split("postgres://a@h/db?sslmode=prefer");
        assert_eq!(t.check(), Check::None);
    }

    #[test]
    fn an_unknown_sslmode_lists_libpqs_six_and_never_repeats_the_url() {
        let e = split_url("postgres://a:hunter2@h/db?sslmode=verify", Server::Target)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sslmode `verify` is not one of: disable, allow, prefer, require, verify-ca, verify-full"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(split_url("postgres://a@h/db?sslrootcert=", Server::Target).is_err());
    }

    #[test]
    fn child_processes_and_subscriptions_get_the_same_mode_and_ca() {
        let (_, t) = split("postgres://a@h/db?sslmode=verify-full&sslrootcert=/ca/x.pem");
        assert_eq!(
            t.libpq_env(),
            vec![
                ("PGSSLMODE", "verify-full".to_string()),
                ("PGSSLROOTCERT", "/ca/x.pem".to_string())
            ]
        );
        assert_eq!(
            t.conninfo_words(),
            " sslmode='verify-full' sslrootcert='/ca/x.pem'"
        );
        let (_, t) = split("postgres://a@h/db?sslmode=disable");
        assert_eq!(t.libpq_env(), vec![("PGSSLMODE", "disable".to_string())]);
        assert_eq!(t.conninfo_words(), " sslmode='disable'");
    }

    #[test]
    fn a_verifying_mode_without_a_readable_ca_says_which_file_and_what_to_give() {
        let (_, t) = split("postgres://a@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem");
        let e = t.client_config().unwrap_err();
        assert!(e.contains("sslrootcert /nonexistent/ca.pem"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let (_, t) = split(&format!(
            "postgres://a@h/db?sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ));
        let e = t.client_config().unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        // Not checking needs no CA.
        let (_, t) = split("postgres://a@h/db?sslmode=require");
        assert!(t.client_config().is_ok());
    }

    #[test]
    fn failures_are_explained_by_what_to_change() {
        let (_, t) = split("postgres://a@h/db");
        let m = explain(&t, "127.0.0.1:5432", &TlsFailure::UntrustedCertificate);
        assert!(m.contains("not signed by a CA trusted here"), "{m}");
        assert!(
            m.contains("no sslmode in the URL") && m.contains("sslmode=require"),
            "{m}"
        );
        let (_, t) = split("postgres://a@h/db?sslmode=disable");
        let m = explain(&t, "h:5432", &TlsFailure::PlaintextRefused);
        assert!(m.contains("h:5432 refuses connections without TLS"), "{m}");
        assert!(m.contains("sslmode=verify-full"), "{m}");
        let (_, t) = split("postgres://a@h/db?sslmode=verify-full&sslrootcert=/ca.pem");
        let m = explain(&t, "h:5432", &TlsFailure::WrongHost);
        assert!(m.contains("sslmode=verify-full against CA /ca.pem"), "{m}");
        assert!(m.contains("sslmode=verify-ca"), "{m}");
    }

    #[test]
    fn a_ca_from_a_secret_becomes_the_urls_root_certificate_once() {
        assert!(store_ca("not a certificate").is_err());
        let ca = Path::new("/tmp/cutover-ca/sha256-ab.pem");
        let u = with_root_cert("postgres://a@h/db", ca).unwrap();
        let (_, t) = split(&u);
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert!(matches!(&t.root_cert, Some(RootCert::File(p)) if p == ca));
        // A mode the URL gives is kept.
        let u = with_root_cert("postgres://a@h/db?sslmode=verify-ca", ca).unwrap();
        let (_, t) = split(&u);
        assert_eq!(t.mode, SslMode::VerifyCa);
        // Two CAs for one server is a mistake to point out, not to choose between.
        let e = with_root_cert("postgres://a@h/db?sslrootcert=/x.pem", ca).unwrap_err();
        assert!(e.contains("keep one"), "{e}");
    }
}
