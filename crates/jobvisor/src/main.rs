//! The `jobvisor` binary: thin `main`. Bootstrap first (fork server, or worker
//! mode when started by the `spawn` start method), then parse the command line,
//! run, and map the outcome to an exit code.
//!
//! Exit codes: 0 success, 1 failure, 2 bad usage (clap).

mod cli;
mod demo;

use std::process::ExitCode;

use clap::Parser;
use jobvisor_pool::{bootstrap, Bootstrap};

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
    let cli = cli::Cli::parse();
    cli::init_logging(&cli);
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobvisor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
