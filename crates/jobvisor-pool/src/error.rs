//! What can go wrong with a pool or a task.

use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_proto::worker::TaskFailure;
use jobvisor_proto::CodecError;

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
    #[error("cannot encode the input: {0}")]
    Encode(String),
    /// The output could not be decoded as the task's output type.
    #[error("cannot decode the output: {0}")]
    Decode(String),
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
    #[error("cannot start the pool: {0}")]
    Startup(String),
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
        PoolError::Encode(e.to_string())
    }
}
