//! The `jobvisor` binary: a thin `main` that parses the command line, forks
//! the fork server if the command runs workers, runs the command and maps
//! the outcome to an exit code.
//!
//! The fork server must be forked while the process has one thread: before
//! any tokio runtime or logging thread. clap parsing starts no thread, so
//! `main` parses first and forks only for `daemon` and `demo`; the client
//! commands (and `--version`, `--help`) fork nothing. A worker started by the
//! `spawn` start method (the hidden worker argument) is handed to
//! [`jobvisor_pool::bootstrap`] before parsing, as its command line is not
//! ours.
//!
//! # Exit codes
//! 0 success, 1 other error, 2 bad usage, 3 job failed or dead, 4 not found,
//! 5 daemon unreachable, 6 job cancelled, 7 request refused: the table is in
//! [`exit`]. `daemon` and `demo` exit 1 on any error.
//!
//! # Layout
//! Lowest first; each module names only modules above it in this list.
//! - [`parse`]: value parsers (durations, backoff, `K=V`, states, job refs).
//! - [`args`]: the clap types of every command.
//! - [`exit`]: exit codes and a command's [`exit::Failure`].
//! - [`output`]: stdout, tables, text, times, the `--json` shapes.
//! - [`batch`]: `submit --batch` files.
//! - [`commands`]: the client commands, one module each, and their dispatch.
//! - [`daemon`]: `jobvisor daemon` (the one user of `jobvisor-daemon`).
//! - [`demo`]: `jobvisor demo`.
//! - [`docs`]: `jobvisor completions` and `jobvisor man`.
//! - [`logging`]: the `tracing` subscriber.

mod args;
mod batch;
mod commands;
mod daemon;
mod demo;
mod docs;
mod exit;
mod logging;
mod output;
mod parse;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use jobvisor_pool::{bootstrap, is_spawned_worker, Bootstrap};

use crate::args::{Cli, ClientCommand, Command};
use crate::exit::{EXIT_ERROR, EXIT_USAGE};

fn main() -> ExitCode {
    if is_spawned_worker() {
        // bootstrap runs the worker to its end: it never carries on here.
        return start_workers().unwrap_or(ExitCode::from(EXIT_ERROR));
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0, usage errors to stderr
            // with 2, as clap's own `exit` does.
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    // Taken (and removed from the environment) while there is one thread,
    // before the fork server, so no worker or job inherits it.
    let systemd = matches!(cli.command, Command::Daemon(_))
        .then(daemon::take_systemd)
        .flatten();
    if cli.command.runs_workers() {
        // Still single-threaded: no runtime and no logger exist yet.
        if let Some(code) = start_workers() {
            return code;
        }
    }
    logging::init(&cli);
    match cli.command {
        Command::Client(cmd) => run_client(cmd, cli.socket),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man => docs::man(),
        Command::Token { command } => daemon::token(command),
        command => match run_workers(command, cli.socket, systemd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jobvisor: {e:#}");
                ExitCode::from(EXIT_ERROR)
            }
        },
    }
}

/// Runs a client command on a current-thread runtime (it only waits on its
/// socket); the command prints its own failure and chooses the exit code.
fn run_client(cmd: ClientCommand, socket: Option<PathBuf>) -> ExitCode {
    let socket = socket.unwrap_or_else(jobvisor_proto::paths::default_socket);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime");
    match rt {
        Ok(rt) => rt.block_on(commands::run(cmd, &socket)),
        Err(e) => {
            eprintln!("jobvisor: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Bootstraps the pool: forks the fork server, or, in a spawned worker, runs
/// the worker to its end. `Some` is the code `main` returns at once (the
/// worker's, or 1 when the fork server cannot start); `None`: carry on.
fn start_workers() -> Option<ExitCode> {
    match bootstrap(jobvisor_tasks::builtin()) {
        Ok(Bootstrap::Supervisor) => None,
        Ok(Bootstrap::Worker(code)) => Some(code),
        Err(e) => {
            eprintln!(
                "jobvisor: {:#}",
                anyhow::Error::new(e).context("cannot start")
            );
            Some(ExitCode::from(EXIT_ERROR))
        }
    }
}

/// Runs `daemon` or `demo` on a multi-threaded runtime.
fn run_workers(
    command: Command,
    socket: Option<PathBuf>,
    systemd: Option<daemon::Systemd>,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match command {
        Command::Demo(args) => rt.block_on(demo::run(args)),
        Command::Daemon(args) => rt.block_on(daemon::run(args, socket, systemd)),
        Command::Client(_) | Command::Completions { .. } | Command::Man | Command::Token { .. } => {
            anyhow::bail!("only daemon and demo run workers")
        }
    }
}
