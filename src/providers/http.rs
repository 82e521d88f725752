//! HTTP: one reqwest client (rustls) per process, for health probes and metric queries.
//!
//! The client is built once: building one loads and parses the system's root certificates,
//! which takes tens of milliseconds (hundreds on a loaded machine). Built inside an analysis
//! window, that work stalled the window's first probe, which then measured the certificate
//! loading, not the service. Each request sets its own timeout.

use super::ProviderError;
use std::sync::OnceLock;
use std::time::Duration;

/// The outcome of one request.
#[derive(Debug, Clone)]
pub struct Probe {
    /// HTTP status, or `None` when no response arrived.
    pub status: Option<u16>,
    /// Time to response headers, in milliseconds.
    pub latency_ms: u64,
    /// The transport error, when there was one.
    pub error: Option<String>,
}

/// The process's client, or why it could not be built.
static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();

/// The process's client (cheap to clone: clones share one connection pool). It keeps no idle
/// connection, so every probe opens a connection of its own, as a new user's request does, and
/// follows DNS; it has no overall timeout: each request sets one.
///
/// # Errors
/// [`ProviderError::Http`] when the TLS backend cannot be built.
pub fn client() -> Result<reqwest::Client, ProviderError> {
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .user_agent(concat!("cutover/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(ProviderError::Http)
}

/// GETs `url` once, giving up after `timeout`.
pub async fn probe(client: &reqwest::Client, url: &str, timeout: Duration) -> Probe {
    let start = std::time::Instant::now();
    match client.get(url).timeout(timeout).send().await {
        Ok(resp) => Probe {
            status: Some(resp.status().as_u16()),
            latency_ms: start.elapsed().as_millis() as u64,
            error: None,
        },
        Err(e) => Probe {
            status: None,
            latency_ms: start.elapsed().as_millis() as u64,
            error: Some(with_causes(e.without_url())),
        },
    }
}

/// `e` and the errors it wraps (`error sending request: operation timed out`): reqwest's own
/// message alone does not say whether the request timed out, was refused or was reset.
fn with_causes(e: reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}
