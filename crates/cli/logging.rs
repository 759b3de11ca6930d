//! Logging: `tracing` to stderr, pretty or JSON, filtered by `JOBVISOR_LOG`.
//!
//! Set up after the fork server exists: nothing here may run before it (the
//! `fmt` subscriber starts no thread today, but the order keeps it safe if
//! that changes).
//!
//! Logging never takes a task down: a stderr whose reader is gone (`EPIPE`)
//! loses the lines, and tracing's own report of the failed write, itself an
//! `eprintln!` that panics on the same broken stderr, is turned off.

use tracing_subscriber::EnvFilter;

use crate::args::{Cli, Command, LogFormat};

/// Installs the global subscriber: `info` for the daemon, `warn` otherwise,
/// unless `JOBVISOR_LOG` says more.
pub fn init(cli: &Cli) {
    let default = if matches!(cli.command, Command::Daemon(_)) {
        "info"
    } else {
        "warn"
    };
    let filter =
        EnvFilter::try_from_env("JOBVISOR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match cli.log_format() {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
