//! A small blocking HTTP client for the Sluice API (`docs/http-api.md`), shared by the client
//! subcommands. It owns the transport and the mapping of failures to [`ClientError`]: the
//! server's own errors keep their message and stable code, an unreachable server is named with a
//! hint to start one. It knows no endpoint; the subcommands build their paths and bodies.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use ureq::http::Response;
use ureq::Body;

/// Longest a request may take, connecting and reading included. The longest the API itself waits
/// is a fetch's `wait_ms` (at most 30 s); past this the server is taken to be stuck.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest response body read. Fetches ask for at most 1 MiB of records by default; JSON and
/// base64 make that bigger, and a topic listing grows with the number of topics.
const RESPONSE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// The server answered with one of its errors; `error_code` is stable, the HTTP status adds
    /// nothing to it.
    Api { error_code: u64, message: String },
    /// No connection could be made to the server.
    Unreachable { server: String, source: ureq::Error },
    /// The connection failed otherwise: timeout, reset, protocol error.
    Transport { server: String, source: ureq::Error },
    /// The server answered something the API does not promise.
    UnexpectedResponse { status: u16, detail: String },
}

impl fmt::Display for ClientError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Api { error_code, message, .. } => {
                write!(formatter, "{message} (code {error_code})")
            }
            Self::Unreachable { server, .. } => write!(
                formatter,
                "cannot connect to the server at {server}; is it running? \
                 Start one with `sluice serve`, or point --server or SLUICE_SERVER at it"
            ),
            Self::Transport { server, .. } => write!(formatter, "request to {server} failed"),
            Self::UnexpectedResponse { status, detail } => {
                write!(formatter, "unexpected response from the server (HTTP {status}): {detail}")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreachable { source, .. } | Self::Transport { source, .. } => Some(source),
            Self::Api { .. } | Self::UnexpectedResponse { .. } => None,
        }
    }
}

/// A connection (pool) to one server.
pub struct Client {
    agent: ureq::Agent,
    /// Scheme, host and port, without a trailing slash.
    server: String,
}

impl Client {
    /// A client of `server`, e.g. `http://127.0.0.1:8080`; `http://` is assumed when the scheme
    /// is missing. Nothing is sent yet.
    pub fn new(server: &str) -> Self {
        let server = server.trim_end_matches('/');
        let server =
            if server.contains("://") { server.to_owned() } else { format!("http://{server}") };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        Self { agent, server }
    }

    /// `GET path`, returning the body of a 2xx response as it came.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let result = self.agent.get(self.url(path)).call();
        self.finish(result)
    }

    /// `GET path`, parsing the body of a 2xx response.
    ///
    /// # Errors
    /// Any [`ClientError`]; a body that does not parse as `T` is `UnexpectedResponse`.
    pub fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        parse(&self.get_text(path)?)
    }

    /// `POST path` with a JSON `body`, returning the body of a 2xx response as it came.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub fn post_text(&self, path: &str, body: &str) -> Result<String, ClientError> {
        let request = self.agent.post(self.url(path)).content_type("application/json");
        self.finish(request.send(body))
    }

    /// `POST path` with a JSON `body`, parsing the body of a 2xx response.
    ///
    /// # Errors
    /// Any [`ClientError`]; a body that does not parse as `T` is `UnexpectedResponse`.
    pub fn post_json<T: DeserializeOwned>(&self, path: &str, body: &str) -> Result<T, ClientError> {
        parse(&self.post_text(path, body)?)
    }

    /// `DELETE path`.
    ///
    /// # Errors
    /// Any [`ClientError`].
    pub fn delete(&self, path: &str) -> Result<(), ClientError> {
        let result = self.agent.delete(self.url(path)).call();
        self.finish(result).map(drop)
    }

    /// `GET path` of a response that does not end (Server-Sent Events): the lines of its body
    /// as they arrive. No overall deadline, unlike the other calls.
    ///
    /// # Errors
    /// Any [`ClientError`] before the body starts.
    pub fn get_lines(
        &self,
        path: &str,
    ) -> Result<std::io::Lines<std::io::BufReader<impl std::io::Read>>, ClientError> {
        use std::io::BufRead;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .new_agent();
        let response =
            agent.get(self.url(path)).call().map_err(|source| self.transport_error(source))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let text = response.into_body().read_to_string().unwrap_or_default();
            return Err(api_error(status, &text));
        }
        Ok(std::io::BufReader::new(response.into_body().into_reader()).lines())
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server)
    }

    /// The body of a 2xx response; anything else becomes the matching error.
    fn finish(&self, result: Result<Response<Body>, ureq::Error>) -> Result<String, ClientError> {
        let response = result.map_err(|source| self.transport_error(source))?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let text = body
            .with_config()
            .limit(RESPONSE_BYTES_MAX)
            .read_to_string()
            .map_err(|source| self.transport_error(source))?;
        if (200..300).contains(&status) {
            Ok(text)
        } else {
            Err(api_error(status, &text))
        }
    }

    fn transport_error(&self, source: ureq::Error) -> ClientError {
        let server = self.server.clone();
        let unreachable = match &source {
            ureq::Error::Io(error) => matches!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable
            ),
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => true,
            _ => false,
        };
        if unreachable {
            ClientError::Unreachable { server, source }
        } else {
            ClientError::Transport { server, source }
        }
    }
}

/// The server's `{"error_code", "message"}` body, or what came instead.
fn api_error(status: u16, text: &str) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error_code: u64,
        message: String,
    }
    match serde_json::from_str::<ErrorBody>(text) {
        Ok(body) => ClientError::Api { error_code: body.error_code, message: body.message },
        Err(_) => ClientError::UnexpectedResponse { status, detail: excerpt(text) },
    }
}

fn parse<T: DeserializeOwned>(text: &str) -> Result<T, ClientError> {
    serde_json::from_str(text).map_err(|error| ClientError::UnexpectedResponse {
        status: 200,
        detail: format!("{error} in {}", excerpt(text)),
    })
}

/// The start of a body, enough to recognise it in a message.
fn excerpt(text: &str) -> String {
    const EXCERPT_CHARS_MAX: usize = 200;
    let mut excerpt: String = text.chars().take(EXCERPT_CHARS_MAX).collect();
    if excerpt.len() < text.len() {
        excerpt.push_str("...");
    }
    excerpt
}

/// `text` as one URL path segment: bytes other than ASCII letters, digits and `-._~` are
/// percent-encoded, so a name the server refuses still reaches it intact.
pub fn path_segment(text: &str) -> String {
    let mut segment = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            segment.push(char::from(byte));
        } else {
            segment.push_str(&format!("%{byte:02X}"));
        }
    }
    segment
}

#[cfg(test)]
mod tests {
    use super::{api_error, path_segment, ClientError};

    #[test]
    fn path_segments_escape_everything_but_unreserved_bytes() {
        assert_eq!(path_segment("orders.v1_a-b~"), "orders.v1_a-b~");
        assert_eq!(path_segment("no/slash?x"), "no%2Fslash%3Fx");
        assert_eq!(path_segment("é"), "%C3%A9");
    }

    #[test]
    fn server_errors_keep_message_and_code() {
        let error = api_error(404, r#"{"error_code": 1001, "message": "unknown topic `x`"}"#);
        assert!(matches!(error, ClientError::Api { error_code: 1001, .. }));
        assert_eq!(error.to_string(), "unknown topic `x` (code 1001)");
        let error = api_error(502, "<html>bad gateway</html>");
        assert!(error.to_string().contains("HTTP 502"), "{error}");
    }
}
