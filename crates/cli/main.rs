//! The `jobvisor` binary: thin `main`. Bootstrap first (fork server, or worker
//! mode when started by the `spawn` start method), then parse the command line,
//! run, and map the outcome to an exit code.
//!
//! Exit codes: see [`exit`]: 0 success, 1 other error, 2 bad usage,
//! 3 job failed or dead, 4 not found, 5 daemon unreachable, 6 job cancelled,
//! 7 request refused.

mod args;
mod batch;
mod commands;
mod daemon;
mod demo;
mod exit;
mod logging;
mod output;
mod parse;

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use jobvisor_pool::{bootstrap, Bootstrap};

use crate::args::{Cli, Command};

fn main() -> ExitCode {
    // Before anything else: no thread may exist when the fork server forks.
    match bootstrap(jobvisor_tasks::builtin()) {
        Ok(Bootstrap::Worker(code)) => return code,
        Ok(Bootstrap::Supervisor) => {}
        Err(e) => {
            eprintln!("jobvisor: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    }
    let cli = Cli::parse();
    logging::init(&cli);
    if let Command::Client(_) = &cli.command {
        let socket = cli.client_socket();
        let Command::Client(cmd) = cli.command else {
            return ExitCode::FAILURE;
        };
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("jobvisor: cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        return rt.block_on(commands::run(cmd, &socket));
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobvisor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `daemon` or `demo` on a multi-threaded runtime.
fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Client(_) => anyhow::bail!("client commands are run by run_client"),
        Command::Demo(args) => rt.block_on(demo::run(args)),
        Command::Daemon(args) => rt.block_on(daemon::run(args, cli.socket)),
    }
}
