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
    /// Async (I/O) calls running at once on each worker's event loop (default
    /// 256). They do not count against `window`: the two kinds fill separate
    /// capacity, so neither waits behind the other.
    pub io_concurrency_per_worker: usize,
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
    /// First delay before a worker restart once the restart intensity is
    /// exceeded; doubles per further death, up to `restart_backoff_max`.
    pub restart_backoff: Duration,
    /// Cap of the restart delay.
    pub restart_backoff_max: Duration,
    /// Restart intensity: more than `max_restarts` worker deaths (crashes and
    /// failed starts; not recycling, not our own kills) within
    /// `restart_window`, and restarts are delayed (the pool is "degraded").
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub restart_window: Duration,
    /// A degraded pool becomes healthy again (delay reset) after this long
    /// without a worker death.
    pub healthy_after: Duration,
    /// Hard memory limit per worker, bytes: the worker's address space is
    /// capped (`RLIMIT_AS`), so an allocation past it fails and the worker
    /// dies; its task fails with "memory limit exceeded". None = no limit.
    pub memory_limit_bytes: Option<u64>,
    /// Soft memory limit per worker, bytes: a worker whose resident set is
    /// above it after a call is recycled (between calls, nothing fails).
    pub memory_soft_limit_bytes: Option<u64>,
    /// A call in flight at this many worker deaths that charged no call (the
    /// worker's beacon named none: a task wrote over it, or broke the link
    /// between a call and its reply) is charged with the death itself
    /// (default 3, at least 1). Until then it runs again, alone in a worker.
    pub max_deaths_per_call: u32,
    /// How long a frame from a worker may take to arrive whole once its first
    /// bytes have (default 10 s). One that takes longer means the link is
    /// corrupt (a task wrote garbage to it): the worker is killed and replaced.
    pub frame_timeout: Duration,
    /// While a worker holds calls, it sends a heartbeat in each interval this
    /// long in which it sent nothing else, from a thread no task runs on
    /// (default 1 s). An idle worker sends none.
    pub heartbeat_interval: Duration,
    /// A worker that holds calls and has sent nothing (no reply, no
    /// heartbeat) for this long is unresponsive (stopped, or its event loop
    /// stuck in one poll): it is killed and replaced, and the calls it held
    /// are charged by the usual blame rules (default 10 s; must be longer
    /// than `heartbeat_interval`, and should be several intervals: a pulse
    /// may come up to an interval late on a loaded machine, and silence is
    /// looked at once per interval). A long CPU task is not unresponsive.
    pub liveness_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            start_method: StartMethod::ForkServer,
            max_frame_bytes: 64 * 1024 * 1024,
            max_queued: 65_536,
            window: 64,
            io_concurrency_per_worker: 256,
            max_tasks_per_worker: None,
            default_timeout: None,
            cancel_grace: Duration::from_millis(100),
            term_grace: Duration::from_secs(1),
            stderr_tail_lines: 20,
            max_log_line_bytes: 4096,
            start_timeout: Duration::from_secs(10),
            restart_backoff: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(30),
            max_restarts: 10,
            restart_window: Duration::from_secs(10),
            healthy_after: Duration::from_secs(30),
            memory_limit_bytes: None,
            memory_soft_limit_bytes: None,
            max_deaths_per_call: 3,
            frame_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
            liveness_timeout: Duration::from_secs(10),
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

    /// Checks the limits that depend on each other.
    ///
    /// # Errors
    /// A message naming the setting when `heartbeat_interval` is under 1 ms
    /// or `liveness_timeout` is not longer than it.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval < Duration::from_millis(1) {
            return Err("heartbeat_interval must be at least 1 ms".into());
        }
        if self.liveness_timeout <= self.heartbeat_interval {
            return Err(format!(
                "liveness_timeout ({:?}) must be longer than heartbeat_interval ({:?})",
                self.liveness_timeout, self.heartbeat_interval
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_liveness_timeout_must_outlast_the_heartbeat_interval() {
        let mut cfg = PoolConfig::default();
        assert_eq!(cfg.validate(), Ok(()));
        cfg.liveness_timeout = cfg.heartbeat_interval;
        let e = cfg.validate().unwrap_err();
        assert!(e.contains("liveness_timeout"), "{e}");
        cfg.liveness_timeout = Duration::from_secs(10);
        cfg.heartbeat_interval = Duration::ZERO;
        assert!(cfg.validate().unwrap_err().contains("heartbeat_interval"));
    }
}
