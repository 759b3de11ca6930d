//! The plain data the pool's layers share: what a worker looks like from
//! outside ([`WorkerInfo`], [`WorkerState`]), what happened to one
//! ([`PoolEvent`]), what a call cost ([`CallUsage`]) and the pool's health
//! ([`PoolHealth`], and the counters behind it). The bottom of the crate:
//! `dispatch` writes these and `pool` hands them out, and neither names the
//! other for them.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use jobvisor_proto::forkserver::ExitStatus;

/// Something that happened to the pool's workers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A worker finished its handshake and takes calls.
    WorkerReady {
        /// Pool-local worker id (never reused).
        worker: u64,
        /// Its pid.
        pid: u32,
        /// When the dispatcher saw it ready.
        at: Instant,
    },
    /// A worker could not be started (or died during its handshake).
    WorkerStartFailed {
        /// Why.
        error: String,
        /// When the dispatcher learned it.
        at: Instant,
    },
    /// A worker exited and was reaped.
    WorkerExited {
        /// Pool-local worker id.
        worker: u64,
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: ExitStatus,
        /// When the dispatcher learned it.
        at: Instant,
    },
}

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Takes calls.
    Ready,
    /// Takes no more calls (it reached `max_tasks_per_worker` or its soft
    /// memory limit, or is surplus after a resize): finishes its calls, then
    /// stops.
    Retiring,
    /// Told to exit.
    Stopping,
    /// Exited or lost; waiting to be reaped.
    Dead,
}

/// A snapshot of one worker.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    /// Pool-local worker id.
    pub id: u64,
    /// Its pid.
    pub pid: u32,
    /// Its state.
    pub state: WorkerState,
    /// Calls sent to it and not answered.
    pub in_flight: usize,
    /// Calls it answered.
    pub calls_done: u64,
    /// The CPU call it is running right now, by its id
    /// ([`crate::TaskHandle::id`]); `None` when its CPU thread is idle, or between
    /// calls. Read from the worker's beacon: a call sent is not yet a call
    /// started.
    pub running: Option<u64>,
}

/// Where a call's time went, as measured in the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallUsage {
    /// CPU time of the worker's thread (async calls: the time their polls
    /// held the event loop).
    pub cpu: Duration,
    /// Wall time.
    pub wall: Duration,
    /// Async calls: the longest single poll, i.e. the longest the call kept
    /// its worker's event loop from everything else (zero for CPU calls).
    pub max_poll: Duration,
}

/// The pool's health (restart intensity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolHealth {
    /// Workers die faster than `max_restarts` per `restart_window`: restarts
    /// are being delayed. The queue is kept.
    pub degraded: bool,
    /// The current restart delay.
    pub restart_delay: Duration,
    /// Unexpected worker deaths (crashes, failed starts) since the pool started.
    pub deaths: u64,
}

/// Shared health figures of a pool (restart intensity).
#[derive(Debug, Default)]
pub(crate) struct Health {
    pub(crate) degraded: AtomicBool,
    pub(crate) restart_delay_ms: AtomicU64,
    pub(crate) deaths: AtomicU64,
}
