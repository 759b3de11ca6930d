//! Logging: `tracing` to stderr, pretty or JSON, filtered by `JOBVISOR_LOG`.
//!
//! Set up after the fork server exists: nothing here may run before it (the
//! `fmt` subscriber starts no thread today, but the order keeps it safe if
//! that changes).
//!
//! Logging never takes a task down: a stderr whose reader is gone (`EPIPE`)
//! loses the lines, and tracing's own report of the failed write, itself an
//! `eprintln!` that panics on the same broken stderr, is turned off.
//!
//! Colours only on a terminal: a log redirected to a file or a pipe gets no
//! ANSI escapes, and `NO_COLOR` (<https://no-color.org>) turns them off
//! everywhere.

use std::ffi::OsStr;
use std::io::IsTerminal;

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
        .with_ansi(colours_wanted(
            std::io::stderr().is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        .log_internal_errors(false);
    match cli.log_format() {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether log lines get ANSI colours: only on a terminal, and not when
/// `NO_COLOR` is set to anything but the empty string.
fn colours_wanted(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(OsStr::is_empty)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::colours_wanted;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some(OsStr::new(""))));
        assert!(!colours_wanted(true, Some(OsStr::new("1"))));
        assert!(!colours_wanted(false, None));
        assert!(!colours_wanted(false, Some(OsStr::new(""))));
    }
}
