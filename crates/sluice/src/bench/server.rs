//! The server side of `sluice bench produce|consume`: a `sluice serve` the bench starts itself
//! (this same binary, on a free port of 127.0.0.1, killed when the bench ends), and a bare HTTP
//! client for it or for a server given by URL.
//!
//! The client is hyper's pooled HTTP/1.1 client with nothing on top: one call is one request,
//! so a request's latency is what the server and the loopback add, not a client library's
//! batching or retries (`sluice-client` batches by itself, which would blur exactly that).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;

/// Longest one request may take before the benchmark gives up: far above any latency worth
/// measuring, low enough that a hung server ends the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response body read: a fetch answers at most 500 records of at most 1 MiB each (the
/// topic's default record limit), plus the JSON around them.
const RESPONSE_BYTES_MAX: usize = 528 * 1024 * 1024;
/// The first line `sluice serve` prints, up to the address.
const LISTENING_PREFIX: &str = "sluice listening on ";

/// A `sluice serve` child process, killed (and waited for) when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    /// Kept open after the first line: closing our end would fail the server's later writes.
    stdout: BufReader<ChildStdout>,
    /// `http://127.0.0.1:PORT`.
    base: String,
}

impl ServerProcess {
    /// Starts this binary as `serve --data <data> --http 127.0.0.1:0` and reads the address from
    /// the line it prints once listening. Its log goes to our stderr at `warn` level.
    ///
    /// # Errors
    /// The binary cannot be found or started, or exits before printing its address.
    pub fn start(data: &Path) -> anyhow::Result<ServerProcess> {
        let binary = std::env::current_exe().context("finding the sluice binary")?;
        let mut child = Command::new(&binary)
            .arg("serve")
            .arg("--data")
            .arg(data)
            .args(["--http", "127.0.0.1:0", "--kafka", "off"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} serve", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        // Built before reading, so that the child is killed if it never prints its address.
        let mut server =
            ServerProcess { child, stdout: BufReader::new(stdout), base: String::new() };
        let mut line = String::new();
        server.stdout.read_line(&mut line).context("reading the server's first line")?;
        server.base = parse_listening_line(&line)?;
        Ok(server)
    }

    /// `http://ADDR`.
    pub fn base(&self) -> &str {
        &self.base
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Err(error) = self.child.kill().and_then(|()| self.child.wait().map(drop)) {
            tracing::warn!(%error, "could not stop the benchmark's server");
        }
    }
}

/// The base URL in "sluice listening on http://ADDR, data in DIR".
fn parse_listening_line(line: &str) -> anyhow::Result<String> {
    let address = line
        .strip_prefix(LISTENING_PREFIX)
        .and_then(|rest| rest.split_once(','))
        .map(|(address, _)| address);
    match address {
        Some(address) if address.starts_with("http://") => Ok(address.to_owned()),
        _ if line.is_empty() => bail!("the server exited before listening (its error is above)"),
        _ => bail!("unexpected first line from the server: {:?}", line.trim_end()),
    }
}

/// A connection pool to one server, speaking JSON.
#[derive(Debug, Clone)]
pub struct HttpClient {
    base: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl HttpClient {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str) -> HttpClient {
        let client = Client::builder(TokioExecutor::new()).build_http();
        HttpClient { base: base.trim_end_matches('/').to_owned(), client }
    }

    /// Sends `body` (JSON, or empty) and returns the answer's body.
    ///
    /// # Errors
    /// Transport failures, a timeout, and any status other than 2xx (with the server's message).
    pub async fn send(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
        let url = format!("{}{path}", self.base);
        let request = Request::builder()
            .method(method.clone())
            .uri(&url)
            .header("content-type", "application/json")
            .body(Full::new(body))
            .with_context(|| format!("building a request to {url}"))?;
        let exchange = async {
            let response = self.client.request(request).await?;
            let status = response.status();
            let body = Limited::new(response.into_body(), RESPONSE_BYTES_MAX);
            let bytes = body.collect().await.map_err(|error| anyhow!(error))?.to_bytes();
            Ok::<_, anyhow::Error>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow!("no answer within {REQUEST_TIMEOUT:?}"))
            .and_then(|answer| answer)
            .with_context(|| format!("{method} {url}"))?;
        if !status.is_success() {
            bail!("{method} {url}: HTTP {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes)
    }

    /// As [`HttpClient::send`], decoding the answer as JSON.
    ///
    /// # Errors
    /// As [`HttpClient::send`], and an answer that is not the JSON expected.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<T> {
        let bytes = self.send(method.clone(), path, body).await?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("decoding the answer to {method} {path}"))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listening_line;

    #[test]
    fn listening_line_gives_the_base_url() {
        let line = "sluice listening on http://127.0.0.1:4242, data in /tmp/x\n";
        assert_eq!(parse_listening_line(line).unwrap(), "http://127.0.0.1:4242");
        assert!(parse_listening_line("").unwrap_err().to_string().contains("exited"));
        assert!(parse_listening_line("hello\n").is_err());
    }
}
