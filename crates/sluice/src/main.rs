//! The `sluice` binary: parses the command line, sets up logging, and hands each subcommand to
//! the module that owns it. Nothing else lives here.

mod bench;
mod cli;
mod serve;

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    init_tracing();
    match Cli::parse().command {
        Command::Serve(args) => serve::run(&args),
        Command::Bench(command) => bench::run(command),
    }
}

/// Logs to stderr (stdout carries results), filtered by `RUST_LOG`, `info` when it is unset.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
