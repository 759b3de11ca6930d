//! The [`AsyncTask`] trait and the context an async call sees.
//!
//! An async task is I/O-bound: it spends its time waiting (on sockets, timers,
//! other processes). A worker runs many async calls at once on its event loop
//! (a current-thread tokio runtime the worker creates after the fork, on a
//! thread beside the CPU thread), the `aiomultiprocess` model; a CPU task keeps
//! the CPU thread to itself meanwhile, so the two kinds never wait for each
//! other inside a worker.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use jobvisor_proto::worker::FromWorker;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::pace::{report_interval, Pace};
use crate::task::TaskError;

/// A named, typed, I/O-bound function that runs on a worker's event loop.
///
/// Many calls run at once (up to the pool's `io_concurrency_per_worker`), so
/// `run` must not block: wait with `.await` (tokio's timers, sockets and
/// processes, an async HTTP client), never with `std::thread::sleep` or a
/// blocking read. A call that holds the loop shows up in `jobvisor stats` as
/// "blocks its event loop"; CPU-heavy work belongs in a [`crate::Task`].
///
/// Cancellation (a cancel, the soft deadline, a stall) drops the call's future
/// at its current `.await`, as asyncio cancels a task: clean-up belongs in
/// `Drop` (tokio's child processes, files and sockets already do it).
///
/// ```
/// use jobvisor_worker::{AsyncCtx, AsyncTask, TaskError};
///
/// struct Wait;
/// impl AsyncTask for Wait {
///     const NAME: &'static str = "wait";
///     type Input = u64;
///     type Output = u64;
///     async fn run(&self, ms: u64, _ctx: AsyncCtx) -> Result<u64, TaskError> {
///         tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
///         Ok(ms)
///     }
/// }
/// ```
pub trait AsyncTask: Send + Sync + 'static {
    /// The name clients use to call the task. Unique within a registry.
    const NAME: &'static str;
    /// What the task takes.
    type Input: Serialize + DeserializeOwned;
    /// What the task returns.
    type Output: Serialize + DeserializeOwned;
    /// Runs the task on the worker's event loop.
    ///
    /// # Errors
    /// Any [`TaskError`]; it fails this call only.
    fn run(
        &self,
        input: Self::Input,
        ctx: AsyncCtx,
    ) -> impl Future<Output = Result<Self::Output, TaskError>>;
}

/// Sends heartbeat and progress frames for the calls of one I/O lane.
pub(crate) type Report = Rc<dyn Fn(&FromWorker)>;

/// What a running async call can ask of its worker. Cheap to clone (a chunk's
/// items share one).
#[derive(Clone)]
pub struct AsyncCtx {
    id: u64,
    deadline: Option<Instant>,
    report: Option<Report>,
    /// When a heartbeat or progress frame may go next; shared by the items
    /// of a chunk, which are one call to the supervisor.
    report_pace: Rc<Cell<Pace>>,
}

impl fmt::Debug for AsyncCtx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncCtx")
            .field("id", &self.id)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl AsyncCtx {
    pub(crate) fn new(id: u64, deadline: Option<Instant>, report: Option<Report>) -> Self {
        Self {
            id,
            deadline,
            report,
            report_pace: Rc::new(Cell::new(Pace::new(report_interval(None)))),
        }
    }

    /// Sets how often, at most, heartbeats and progress are sent.
    pub(crate) fn with_report_interval(self, every: Duration) -> Self {
        self.report_pace.set(Pace::new(every));
        self
    }

    /// The supervisor's id of this call.
    pub fn call_id(&self) -> u64 {
        self.id
    }

    /// The call's soft deadline, when it has a timeout: the future is dropped
    /// when it passes. Useful to size the timeouts of what the task awaits.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left before the soft deadline (`None`: no deadline).
    pub fn time_left(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Tells the supervisor the call is alive; resets its stall timer.
    /// Rate-limited like [`crate::Ctx::heartbeat`].
    pub fn heartbeat(&self) {
        if self.report_due() {
            if let Some(r) = &self.report {
                r(&FromWorker::Heartbeat { id: self.id });
            }
        }
    }

    /// Reports progress (rate-limited); also counts as a heartbeat.
    pub fn progress(&self, done: u64, total: u64) {
        if self.report_due() {
            if let Some(r) = &self.report {
                r(&FromWorker::Progress {
                    id: self.id,
                    done,
                    total,
                });
            }
        }
    }

    fn report_due(&self) -> bool {
        let mut pace = self.report_pace.get();
        let due = pace.due(Instant::now());
        self.report_pace.set(pace);
        due
    }
}

/// Runs an async task in this process, outside any pool, on a fresh
/// current-thread runtime, with `timeout` as its soft deadline (the future is
/// dropped when it passes and the call fails as cancelled). For unit tests of
/// tasks and for debugging a task in isolation.
///
/// # Errors
/// The task's own error; [`TaskError::cancelled`] at the deadline; an error
/// building the runtime is reported as a task error.
pub fn run_detached_async<T: AsyncTask>(
    task: &T,
    input: T::Input,
    timeout: Option<Duration>,
) -> Result<T::Output, TaskError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TaskError::from)?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let ctx = AsyncCtx::new(0, deadline, None);
    rt.block_on(async move {
        match timeout {
            Some(t) => tokio::time::timeout(t, task.run(input, ctx))
                .await
                .unwrap_or_else(|_| Err(TaskError::cancelled())),
            None => task.run(input, ctx).await,
        }
    })
}
