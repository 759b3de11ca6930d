//! Messages on the supervisor ↔ fork server link (a `SOCK_SEQPACKET` socket:
//! one message per packet, file descriptors travel beside [`ForkReply::Spawned`]
//! with `SCM_RIGHTS`).

use serde::{Deserialize, Serialize};

/// Supervisor → fork server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForkRequest {
    /// Fork a worker. Answered by `Spawned` or `SpawnFailed` with the same token.
    Spawn {
        /// Correlates the answer.
        token: u64,
    },
    /// Signal a worker (or its whole process group) that the fork server has
    /// not reaped yet; a pid it already reaped is ignored, so a recycled pid is
    /// never hit.
    Signal {
        /// The worker.
        pid: u32,
        /// Signal number.
        signal: i32,
        /// Signal the process group instead of the process.
        group: bool,
    },
}

/// Fork server → supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForkReply {
    /// A worker was forked. Five fds travel with this packet, in order: the
    /// write end of the worker's input pipe, the read end of its output pipe,
    /// the read end of its stdout/stderr pipe, a pidfd, and the worker's call
    /// beacon (a memfd page naming the call it runs).
    Spawned {
        /// From the request.
        token: u64,
        /// The worker's pid.
        pid: u32,
    },
    /// Forking failed.
    SpawnFailed {
        /// From the request.
        token: u64,
        /// Why.
        message: String,
    },
    /// A worker exited and was reaped (after its process group was killed).
    Exited {
        /// The worker.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
    },
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal killed it.
    pub signal: Option<i32>,
    /// Whether it dumped core.
    pub core_dumped: bool,
    /// Peak resident set size in KiB (`ru_maxrss` from `wait4`).
    pub max_rss_kib: u64,
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}")?,
            (None, Some(sig)) => {
                write!(f, "signal {sig} ({})", signal_name(sig).unwrap_or("signal"))?
            }
            (None, None) => write!(f, "unknown status")?,
        }
        if self.core_dumped {
            write!(f, ", core dumped")?;
        }
        write!(f, ", peak RSS {} KiB", self.max_rss_kib)
    }
}

/// The conventional name of a Linux signal number (`"SIGKILL"`), from nix's
/// table; `None` for a number that names none (a real-time signal).
pub fn signal_name(sig: i32) -> Option<&'static str> {
    nix::sys::signal::Signal::try_from(sig)
        .ok()
        .map(|s| s.as_str())
}
