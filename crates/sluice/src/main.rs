//! The `sluice` binary: parses the command line, sets up logging, and hands each subcommand to
//! the module that owns it. Nothing else lives here.
//!
//! A failed command prints `error: ` and its causes on one line to stderr and exits 1 (clap's
//! usage errors exit 2; a stream append's version conflict exits 3). A closed stdout (`sluice consume ... | head`) ends the command quietly.

mod bench;
mod cli;
mod client;
mod consume_cmd;
mod consume_group;
mod group_cmd;
mod produce_cmd;
mod queue_cmd;
mod serve;
mod stop_signal;
mod stream_cmd;
mod table;
mod topic_cmd;
mod worker_cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    init_tracing();
    match run(Cli::parse_args()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) if error.downcast_ref::<stream_cmd::Conflict>().is_some() => {
            eprintln!("error: {error:#}");
            ExitCode::from(stream_cmd::CONFLICT_EXIT)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(&args),
        Command::Bench(command) => {
            bench::run(command, cli.server_on_command_line.then_some(cli.server.as_str()))
        }
        Command::Topic(command) => topic_cmd::run(&cli.server, command),
        Command::Produce(args) => produce_cmd::run(&cli.server, &args),
        Command::Consume(args) => consume_cmd::run(&cli.server, &args),
        Command::Group(command) => group_cmd::run(&cli.server, command),
        Command::Queue(command) => queue_cmd::run(&cli.server, command),
        Command::Dlq(command) => queue_cmd::run_dlq(&cli.server, command),
        Command::Worker(args) => worker_cmd::run(&cli.server, &args),
        Command::Stream(command) => stream_cmd::run(&cli.server, command),
    }
}

/// Whether the reader of stdout went away: nothing is left to tell it.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
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
