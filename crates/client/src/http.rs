//! The transport: JSON requests to one Sluice server over HTTP/1.1 (hyper, pooled connections),
//! and the mapping of failures to [`ClientError`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Longest one request may take; above the server's longest long-poll (30 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body read.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request with one of its stable error codes.
    #[error("{message} (code {code}, HTTP {status})")]
    Api {
        /// The stable error code (see the server's `docs/http-api.md`).
        code: u16,
        /// The server's message.
        message: String,
        /// The HTTP status.
        status: u16,
    },
    /// The server could not be reached or the connection failed.
    #[error("request to {url} failed: {source}")]
    Transport {
        /// The request's URL.
        url: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The request took longer than [`REQUEST_TIMEOUT`].
    #[error("request to {url} took longer than {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout {
        /// The request's URL.
        url: String,
    },
    /// The response was not what the API promises.
    #[error("unexpected response from {url}: {detail}")]
    Unexpected {
        /// The request's URL.
        url: String,
        /// What was wrong.
        detail: String,
    },
    /// A value could not be serialised or deserialised.
    #[error("value (de)serialisation failed: {0}")]
    Serde(#[from] serde_json::Error),
    /// The producer's background task has stopped.
    #[error("the producer is closed")]
    Closed,
}

impl ClientError {
    /// The server's stable error code, if the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed (the connection failed or timed out, or the
    /// server was unavailable).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } | Self::Timeout { .. } => true,
            Self::Api { status, .. } => *status == StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            _ => false,
        }
    }
}

/// A connection pool to one server.
#[derive(Debug, Clone)]
pub struct Http {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Http {
    /// A client of the server at `base` (`http://host:port`; `http://` is added if missing).
    pub fn new(base: &str) -> Self {
        let base = if base.contains("://") { base.to_owned() } else { format!("http://{base}") };
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { base: base.trim_end_matches('/').to_owned(), client }
    }

    /// Sends `body` (if any) as JSON and decodes the JSON answer.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let bytes = self.call_raw(method, path, body).await?;
        let url = format!("{}{path}", self.base);
        serde_json::from_slice(&bytes)
            .map_err(|error| ClientError::Unexpected { url, detail: error.to_string() })
    }

    /// As [`Http::call`], returning the raw body (empty for 204).
    ///
    /// # Errors
    /// See [`ClientError`].
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
        let payload = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        let request = Request::builder()
            .method(method)
            .uri(&url)
            .header("content-type", "application/json")
            .body(Full::new(payload))
            .map_err(|error| ClientError::Unexpected {
                url: url.clone(),
                detail: error.to_string(),
            })?;
        let exchange = async {
            let response = self.client.request(request).await.map_err(|error| {
                ClientError::Transport { url: url.clone(), source: Box::new(error) }
            })?;
            let status = response.status();
            let limited = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX);
            let bytes = limited
                .collect()
                .await
                .map_err(|source| ClientError::Transport { url: url.clone(), source })?
                .to_bytes();
            Ok::<_, ClientError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout { url: url.clone() })??;
        if status.is_success() {
            return Ok(bytes);
        }
        #[derive(serde::Deserialize)]
        struct ApiError {
            error_code: u16,
            message: String,
        }
        match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(error) => Err(ClientError::Api {
                code: error.error_code,
                message: error.message,
                status: status.as_u16(),
            }),
            Err(_) => Err(ClientError::Unexpected {
                url,
                detail: format!("HTTP {status}: {}", String::from_utf8_lossy(&bytes)),
            }),
        }
    }
}
