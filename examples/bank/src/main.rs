//! `bank`: runs the event-sourced bank's scripted scenario against an embedded Sluice server
//! (default) or a running one (`--server http://127.0.0.1:8080`), printing each step.

mod scenario;

use std::path::PathBuf;

use clap::Parser;

/// An event-sourced bank on Sluice: runs a scripted scenario and prints what it did.
#[derive(Debug, Parser)]
#[command(name = "bank")]
struct Args {
    /// Use the Sluice server at this URL (e.g. http://127.0.0.1:8080) instead of starting one
    /// in this process with its data in a temporary directory.
    #[arg(long, value_name = "URL")]
    server: Option<String>,
    /// The event topic (default: `account` on the embedded server, `account-<run id>` on a
    /// running one).
    #[arg(long, value_name = "NAME")]
    topic: Option<String>,
    /// Keep the SQLite read model in this new file (default: a temporary file).
    #[arg(long, value_name = "FILE")]
    database: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    scenario::run(scenario::Options {
        server: args.server,
        topic: args.topic,
        database: args.database,
    })
    .await
}
