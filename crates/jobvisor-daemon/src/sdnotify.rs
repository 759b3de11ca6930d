//! systemd's service notification protocol (`sd_notify(3)`), for
//! `Type=notify` units (`config/jobvisor.service`): `READY=1` once the
//! control socket listens and the store is open, `STOPPING=1` when a drain
//! begins, `WATCHDOG=1` pings when the unit sets `WatchdogSec=`, and a
//! one-line `STATUS=`.
//!
//! The protocol is one datagram per message to the `AF_UNIX` socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace): the
//! twenty lines it takes are here rather than a crate. [`SdNotify::take_from_env`]
//! reads and removes the variables, so a job's command never inherits them
//! and cannot speak for the daemon; it must run while the process has one
//! thread (at the top of `main`, before the fork server).
//!
//! Watchdog pings come from the daemon's event loop itself (a timer task),
//! so a loop that stops turning stops the pings and systemd restarts the
//! service. Sending never blocks and never fails the daemon: a lost
//! notification is logged at debug level.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where to notify, and the watchdog interval systemd asked for.
#[derive(Debug)]
pub struct SdNotify {
    socket: UnixDatagram,
    addr: SocketAddr,
    watchdog: Option<Duration>,
}

impl SdNotify {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`, and
    /// removes them from the environment. `None` when not run by systemd
    /// (or the socket cannot be used; that is logged by the caller's
    /// absence of notifications, and said on stderr once).
    ///
    /// Call only while the process has one thread: it changes the
    /// environment.
    pub fn take_from_env() -> Option<Self> {
        let path = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for key in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(key);
        }
        let path = path?;
        let watchdog = watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id());
        match Self::connect(path.as_encoded_bytes(), watchdog) {
            Ok(n) => Some(n),
            Err(e) => {
                eprintln!(
                    "jobvisor: NOTIFY_SOCKET={} cannot be used, systemd will not be told: {e}",
                    path.to_string_lossy()
                );
                None
            }
        }
    }

    fn connect(path: &[u8], watchdog: Option<Duration>) -> std::io::Result<Self> {
        use std::os::linux::net::SocketAddrExt;
        let addr = match path.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(path))?,
        };
        let socket = UnixDatagram::unbound()?;
        socket.set_nonblocking(true)?;
        Ok(Self {
            socket,
            addr,
            watchdog,
        })
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec=`, as
    /// `sd_watchdog_enabled(3)` advises. `None` without a watchdog.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one message (`KEY=VALUE` lines). Never blocks.
    pub fn send(&self, message: &str) {
        if let Err(e) = self.socket.send_to_addr(message.as_bytes(), &self.addr) {
            tracing::debug!(error = %e, "cannot notify systemd");
        }
    }

    /// `READY=1` with our pid and a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!(
            "READY=1\nMAINPID={}\nSTATUS={}",
            std::process::id(),
            one_line(status)
        ));
    }

    /// `STOPPING=1` with a status line.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    /// A watchdog ping with a fresh status line.
    pub fn watchdog(&self, status: &str) {
        self.send(&format!("WATCHDOG=1\nSTATUS={}", one_line(status)));
    }

    /// A status line alone.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }
}

/// A `STATUS=` value must be one line.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Half of `$WATCHDOG_USEC`, when it is set, positive, and meant for us
/// (`$WATCHDOG_PID` unset or our pid). Pure.
fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid {
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_half_its_interval_and_only_for_us() {
        let half = Some(Duration::from_secs(15));
        assert_eq!(watchdog_interval(Some("30000000"), None, 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("7"), 7), half);
        assert_eq!(watchdog_interval(Some("30000000"), Some("8"), 7), None);
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("x"), None, 7), None);
        assert_eq!(watchdog_interval(None, None, 7), None);
    }

    #[test]
    fn messages_reach_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = SdNotify::connect(path.as_os_str().as_bytes(), None).unwrap();
        n.ready("up\nand running");
        let mut buf = [0u8; 512];
        let len = rx.recv(&mut buf).unwrap();
        let got = std::str::from_utf8(&buf[..len]).unwrap();
        assert_eq!(
            got,
            format!(
                "READY=1\nMAINPID={}\nSTATUS=up and running",
                std::process::id()
            )
        );

        use std::os::linux::net::SocketAddrExt;
        let name = format!("jobvisor-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = SdNotify::connect(format!("@{name}").as_bytes(), None).unwrap();
        n.stopping("draining");
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=draining");
    }
}
