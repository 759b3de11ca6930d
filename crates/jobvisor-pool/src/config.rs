//! Pool configuration: every limit has a name, a unit and a default.

use std::time::Duration;

use crate::launch::StartMethod;

/// Limits and knobs of a [`crate::Pool`]. Built through [`crate::PoolBuilder`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PoolConfig {
    /// Worker processes (default: available cores).
    pub workers: usize,
    /// How workers start (default: fork server).
    pub start_method: StartMethod,
    /// Largest frame on a worker link, either way (default 64 MiB). Inputs and
    /// outputs must fit in one frame; larger data goes by file path.
    pub max_frame_bytes: usize,
    /// Tasks accepted but not yet sent to a worker (default 65,536). Submitters
    /// wait (or `try_submit` fails with `QueueFull`) beyond it.
    pub max_queued: usize,
    /// Calls in flight per worker (default 64): sent ahead so the worker never
    /// waits for the supervisor. Only the first one runs; the rest are queued in
    /// the worker and go back to the pool's queue if the worker dies.
    pub window: usize,
    /// Recycle a worker after this many calls (default: never).
    pub max_tasks_per_worker: Option<u64>,
    /// Timeout applied to tasks submitted without one (default: none).
    pub default_timeout: Option<Duration>,
    /// After a task's deadline, how long the worker gets to notice its soft
    /// deadline and return before its process group gets SIGTERM (default 100 ms).
    pub cancel_grace: Duration,
    /// After SIGTERM, how long before SIGKILL (default 1 s).
    pub term_grace: Duration,
    /// Lines of a worker's stderr kept for crash reports (default 20).
    pub stderr_tail_lines: usize,
    /// Longest line of worker output logged; longer lines are cut (default 4 KiB).
    pub max_log_line_bytes: usize,
    /// How long a new worker may take to complete its handshake (default 10 s).
    pub start_timeout: Duration,
    /// First delay before retrying a failed worker start; doubles up to 5 s.
    pub restart_backoff: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            start_method: StartMethod::ForkServer,
            max_frame_bytes: 64 * 1024 * 1024,
            max_queued: 65_536,
            window: 64,
            max_tasks_per_worker: None,
            default_timeout: None,
            cancel_grace: Duration::from_millis(100),
            term_grace: Duration::from_secs(1),
            stderr_tail_lines: 20,
            max_log_line_bytes: 4096,
            start_timeout: Duration::from_secs(10),
            restart_backoff: Duration::from_millis(50),
        }
    }
}

/// Bytes of a frame reserved for the envelope around one input or output.
pub(crate) const FRAME_SLACK: usize = 1024;

impl PoolConfig {
    /// Largest encoded input (or output) of one call.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_sub(FRAME_SLACK)
    }
}
