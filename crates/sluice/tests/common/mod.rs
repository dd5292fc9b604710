//! Shared by the end-to-end tests: a real `sluice serve` on a free port of 127.0.0.1.
// Each test binary uses its own subset of these helpers.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

/// A running `sluice serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The Kafka listener's `127.0.0.1:PORT`.
    kafka: String,
}

impl Server {
    /// Starts the binary on port 0 and reads the address it printed.
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &[])
    }

    /// As [`Server::start`], with extra `serve` options.
    pub fn start_with(data: &Path, options: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--data", data.to_str().unwrap(), "--http", "127.0.0.1:0"])
            .args(["--kafka", "127.0.0.1:0"])
            .args(options)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line
            .strip_prefix("sluice listening on ")
            .and_then(|rest| rest.split(',').next())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_owned();
        let kafka = line
            .trim_end()
            .rsplit_once(", kafka on ")
            .map(|(_, kafka)| kafka.to_owned())
            .unwrap_or_else(|| panic!("no Kafka address in {line:?}"));
        Server { child, base: address, kafka }
    }

    /// The Kafka listener's `127.0.0.1:PORT`.
    #[allow(dead_code)] // not every test binary speaks Kafka
    pub fn kafka(&self) -> &str {
        &self.kafka
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET or POST of JSON to `url` that must succeed (2xx); its JSON answer.
pub fn call(method: &str, url: &str, body: Option<Value>) -> Value {
    let agent = ureq::Agent::config_builder().http_status_as_error(false).build().new_agent();
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("POST", Some(body)) => agent.post(url).send_json(body),
        _ => panic!("unsupported {method}"),
    }
    .unwrap();
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string().unwrap();
    assert!((200..300).contains(&status), "{method} {url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// Runs `sluice --server <server> ARGS` with `stdin`, and returns what it did.
pub fn run_sluice(server: &Server, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--server")
        .arg(&server.base)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}
