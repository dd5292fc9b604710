//! The HTTP door in-process on a real socket on 127.0.0.1, for the crate's integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;

use sluice_engine::{Engine, TopicConfig};

/// A running server; it stops when dropped (with its runtime).
pub struct TestServer {
    pub address: SocketAddr,
    pub engine: Engine,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

/// Starts an engine with one topic of `partitions` partitions and serves it on a free port.
pub fn start(topic: &str, partitions: u32) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine.create_topic(topic, TopicConfig { partitions, ..TopicConfig::default() }).unwrap();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let address = listener.local_addr().unwrap();
    let timeouts = sluice_http::Timeouts::default();
    runtime.spawn(sluice_http::serve(listener, engine.clone(), timeouts, std::future::pending()));
    TestServer { address, engine, _runtime: runtime, _dir: dir }
}
