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
//!
//! Under systemd, when stderr is the journal (`$JOURNAL_STREAM` names its
//! device and inode, `systemd.exec(5)`), pretty lines carry no timestamp
//! (the journal keeps its own) and start with the `sd-daemon(3)` priority
//! prefix (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so
//! `journalctl -p warning` filters them.

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
        LogFormat::Pretty if stderr_is_journal() => builder
            .event_format(Journald(
                tracing_subscriber::fmt::format()
                    .without_time()
                    .with_ansi(false),
            ))
            .init(),
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether stderr is the journal's stream: `$JOURNAL_STREAM` is
/// `DEVICE:INODE` of it.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // fstat of fd 2 without taking ownership of it.
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_is(stream.to_str().unwrap_or(""), meta.dev(), meta.ino())
}

/// Pure: whether `JOURNAL_STREAM`'s `DEVICE:INODE` is (`dev`, `ino`).
fn journal_stream_is(stream: &str, dev: u64, ino: u64) -> bool {
    stream
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// The priority prefix of `sd-daemon(3)` before each line of an inner format.
struct Journald<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// syslog priority of a level.
fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
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

    use super::{colours_wanted, journal_stream_is, priority};

    #[test]
    fn the_journal_is_recognised_by_device_and_inode() {
        assert!(journal_stream_is("8:1234", 8, 1234));
        assert!(!journal_stream_is("8:1234", 8, 1235));
        assert!(!journal_stream_is("8", 8, 1234));
        assert!(!journal_stream_is("x:y", 8, 1234));
        assert_eq!(priority(tracing::Level::ERROR), 3);
        assert_eq!(priority(tracing::Level::TRACE), 7);
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        assert!(colours_wanted(true, None));
        assert!(colours_wanted(true, Some(OsStr::new(""))));
        assert!(!colours_wanted(true, Some(OsStr::new("1"))));
        assert!(!colours_wanted(false, None));
        assert!(!colours_wanted(false, Some(OsStr::new(""))));
    }
}
