//! HTTP: one reqwest client (rustls) for health checks.

use super::ProviderError;
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

/// A client with a per-request timeout.
///
/// # Errors
/// [`ProviderError::Http`] when the TLS backend cannot be built.
pub fn client(request_timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .user_agent(concat!("cutover/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ProviderError::Http(e.to_string()))
}

/// GETs `url` once.
pub async fn probe(client: &reqwest::Client, url: &str) -> Probe {
    let start = std::time::Instant::now();
    match client.get(url).send().await {
        Ok(resp) => Probe {
            status: Some(resp.status().as_u16()),
            latency_ms: start.elapsed().as_millis() as u64,
            error: None,
        },
        Err(e) => Probe {
            status: None,
            latency_ms: start.elapsed().as_millis() as u64,
            error: Some(e.without_url().to_string()),
        },
    }
}
