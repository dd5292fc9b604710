//! The transport: JSON requests to one Sluice server over HTTP/1.1 (hyper, pooled connections),
//! and the mapping of failures to [`ClientError`].

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::streams::VersionConflict;

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
    /// An append or delete found the stream at another version than it expected (code 1021,
    /// HTTP 409): nothing was written. The conflict says which stream and both versions.
    #[error("{0}")]
    WrongExpectedVersion(Box<VersionConflict>),
}

impl ClientError {
    /// The server's stable error code, if the server answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Self::Api { code, .. } => Some(*code),
            Self::WrongExpectedVersion(_) => Some(crate::streams::WRONG_EXPECTED_VERSION),
            _ => None,
        }
    }

    /// The version conflict, if this is one.
    pub fn conflict(&self) -> Option<&VersionConflict> {
        match self {
            Self::WrongExpectedVersion(conflict) => Some(conflict),
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

    /// A copy for each of several callers one failed request answers (the transport error
    /// itself is not clonable: its text is kept, and it stays transient).
    pub(crate) fn shared(&self) -> ClientError {
        match self {
            Self::Api { code, message, status } => {
                Self::Api { code: *code, message: message.clone(), status: *status }
            }
            Self::Transport { url, source } => {
                Self::Transport { url: url.clone(), source: source.to_string().into() }
            }
            Self::Timeout { url } => Self::Timeout { url: url.clone() },
            Self::WrongExpectedVersion(conflict) => Self::WrongExpectedVersion(conflict.clone()),
            other => Self::Unexpected { url: String::new(), detail: other.to_string() },
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
        let payload = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        self.call_encoded(method, path, payload).await
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
        let payload = match body {
            Some(body) => Bytes::from(serde_json::to_vec(body)?),
            None => Bytes::new(),
        };
        self.send(method, path, payload).await
    }

    /// As [`Http::call`] with a body already encoded as JSON.
    ///
    /// # Errors
    /// See [`ClientError`].
    pub(crate) async fn call_encoded<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        payload: Bytes,
    ) -> Result<T, ClientError> {
        let bytes = self.send(method, path, payload).await?;
        let url = format!("{}{path}", self.base);
        serde_json::from_slice(&bytes)
            .map_err(|error| ClientError::Unexpected { url, detail: error.to_string() })
    }

    /// Sends `payload` as a JSON body and returns the raw answer of a success.
    async fn send(&self, method: Method, path: &str, payload: Bytes) -> Result<Bytes, ClientError> {
        let url = format!("{}{path}", self.base);
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
        Err(error_from_response(url, status, &bytes))
    }

    /// Sends a `GET` for a response read as it arrives (Server-Sent Events): waits up to
    /// [`REQUEST_TIMEOUT`] for the response's head, and returns the response with its body
    /// unread if it is a success.
    ///
    /// # Errors
    /// See [`ClientError`]; a refusal's body is read to map it.
    pub async fn open(&self, path: &str, accept: &str) -> Result<Response<Incoming>, ClientError> {
        let url = format!("{}{path}", self.base);
        let request = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header("accept", accept)
            .body(Full::new(Bytes::new()))
            .map_err(|error| ClientError::Unexpected {
                url: url.clone(),
                detail: error.to_string(),
            })?;
        let response = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| ClientError::Timeout { url: url.clone() })?
            .map_err(|error| ClientError::Transport {
                url: url.clone(),
                source: Box::new(error),
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let limited = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX);
        let bytes = tokio::time::timeout(REQUEST_TIMEOUT, limited.collect())
            .await
            .map_err(|_| ClientError::Timeout { url: url.clone() })?
            .map_err(|source| ClientError::Transport { url: url.clone(), source })?
            .to_bytes();
        Err(error_from_response(url, status, &bytes))
    }

    /// The server's address, `http://host:port`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// The error the server's `error_code`, `message` and `details` stand for: a typed conflict for
/// 1021 with its details, otherwise [`ClientError::Api`] with `status`.
pub(crate) fn api_error(
    code: u16,
    message: String,
    details: Option<&serde_json::Value>,
    status: u16,
) -> ClientError {
    if code == crate::streams::WRONG_EXPECTED_VERSION {
        if let Some(conflict) =
            details.and_then(|details| VersionConflict::from_details(details, &message))
        {
            return ClientError::WrongExpectedVersion(Box::new(conflict));
        }
    }
    ClientError::Api { code, message, status }
}

/// The error a refused request stands for: the server's code (a typed conflict for 1021 with
/// its details), or the raw answer if it is not an API error.
fn error_from_response(url: String, status: StatusCode, bytes: &[u8]) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ApiError {
        error_code: u16,
        message: String,
        #[serde(default)]
        details: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<ApiError>(bytes) {
        Ok(error) => {
            api_error(error.error_code, error.message, error.details.as_ref(), status.as_u16())
        }
        Err(_) => ClientError::Unexpected {
            url,
            detail: format!("HTTP {status}: {}", String::from_utf8_lossy(bytes)),
        },
    }
}
