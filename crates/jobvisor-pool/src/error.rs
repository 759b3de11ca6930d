//! What can go wrong with a pool or a task.
//!
//! Each variant's `Display` says only its own layer; an underlying error is
//! kept as the [`source`](std::error::Error::source), so `{e:#}` or an
//! `anyhow` chain prints each cause once.

use std::error::Error;
use std::sync::Arc;

use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_proto::worker::TaskFailure;
use jobvisor_proto::CodecError;

/// The underlying error a [`PoolError`] keeps. Shared, so that the error stays
/// `Clone`: a failed chunk of a `map` fails each of its items with it.
pub type ErrorSource = Arc<dyn Error + Send + Sync>;

/// A task (or the pool) failed. Each failure concerns one task only, unless it
/// says the pool is closed or could not start.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// No worker has a task by that name.
    #[error("unknown task {name:?} (this pool knows: {known})")]
    UnknownTask {
        /// The name asked for.
        name: String,
        /// The names the workers registered, comma-separated.
        known: String,
    },
    /// The encoded input does not fit in a frame.
    #[error("input of {bytes} bytes exceeds the limit of {max} bytes (max_frame_bytes); pass large data by file path")]
    InputTooLarge {
        /// Encoded size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// The input could not be encoded.
    #[error("cannot encode the input")]
    Encode(#[source] ErrorSource),
    /// The output could not be decoded as the task's output type.
    #[error("cannot decode the output")]
    Decode(#[source] ErrorSource),
    /// The task failed inside the worker (error, panic, bad input, output too
    /// large, or cancelled); the worker lives on.
    #[error("{0}")]
    Task(TaskFailure),
    /// The task ran past its timeout and was stopped.
    #[error("task timed out after {timeout_ms} ms ({how})")]
    TimedOut {
        /// The timeout.
        timeout_ms: u64,
        /// How it was stopped: soft deadline, SIGTERM or SIGKILL of the worker.
        how: String,
    },
    /// The worker died while running the task.
    #[error("worker {pid} died while running the task: {}{status}{}", cause_text(.cause), tail_text(.stderr_tail))]
    WorkerDied {
        /// What killed it, when known: "memory limit exceeded".
        cause: Option<String>,
        /// The worker's pid.
        pid: u32,
        /// Exit code or signal, and peak RSS.
        status: ExitStatus,
        /// The last lines the worker wrote to stderr/stdout.
        stderr_tail: Vec<String>,
    },
    /// The task stopped sending heartbeats (or progress) for longer than its
    /// stall timeout, and was stopped.
    #[error("task stalled: no heartbeat for {stall_ms} ms ({how})")]
    Stalled {
        /// The stall timeout.
        stall_ms: u64,
        /// How it was stopped.
        how: String,
    },
    /// The task was cancelled before it finished.
    #[error("task cancelled")]
    Cancelled,
    /// The pool's queue is full (`max_queued`).
    #[error("queue full: {max} tasks already queued (max_queued)")]
    QueueFull {
        /// The limit.
        max: usize,
    },
    /// The pool is shut down or shutting down.
    #[error("the pool is closed")]
    Closed,
    /// The pool could not start its workers.
    #[error("cannot start the pool")]
    Startup(#[source] ErrorSource),
}

fn cause_text(cause: &Option<String>) -> String {
    cause.as_ref().map_or(String::new(), |c| format!("{c}; "))
}

fn tail_text(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", lines.join(" | "))
    }
}

impl From<CodecError> for PoolError {
    fn from(e: CodecError) -> Self {
        PoolError::Encode(Arc::new(e))
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn display_stops_at_its_layer_and_the_source_is_kept() {
        let e = PoolError::Startup(Arc::new(io::Error::other("no fork server")));
        assert_eq!(e.to_string(), "cannot start the pool");
        let source = e.source().map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("no fork server"));
        // Cloning shares the source.
        let copy = e.clone();
        assert_eq!(copy.source().map(ToString::to_string), source);
    }

    #[test]
    fn codec_errors_become_encode_errors_with_their_cause() {
        let codec = jobvisor_proto::codec::decode::<u64>(&[]).expect_err("empty input");
        let text = codec.to_string();
        let e = PoolError::from(codec);
        assert_eq!(e.to_string(), "cannot encode the input");
        assert_eq!(e.source().map(ToString::to_string), Some(text));
    }
}
