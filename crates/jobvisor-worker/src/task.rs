//! The [`Task`] trait, its error type, the context a running task sees, and
//! [`run_detached`] to run a task outside any pool.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use jobvisor_proto::worker::FailureKind;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::inbox::Inbox;
use crate::link::{Link, BOOTSTRAP_MAX_FRAME};
use crate::pace::{report_interval, Pace};

/// A named, typed function that runs inside a worker process.
///
/// `run` executes on the worker's CPU thread, one call at a time (async
/// tasks run beside it on the I/O lane). Long tasks should look at
/// [`Ctx::is_cancelled`] now and then, so that a cancel or a soft timeout
/// stops them cleanly; tasks that never look are stopped by the
/// supervisor's hard timeout, which kills the worker.
pub trait Task: Send + Sync + 'static {
    /// The name clients use to call the task. Unique within a registry.
    const NAME: &'static str;
    /// What the task takes.
    type Input: Serialize + DeserializeOwned;
    /// What the task returns.
    type Output: Serialize + DeserializeOwned;
    /// Runs the task.
    ///
    /// # Errors
    /// Any [`TaskError`]; it fails this call only.
    fn run(&self, input: Self::Input, ctx: &mut Ctx<'_>) -> Result<Self::Output, TaskError>;
}

/// The error a task returns. Anything that implements `std::error::Error`
/// converts into it with `?`.
pub struct TaskError {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
}

impl TaskError {
    /// An error with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::Error,
            message: message.to_string(),
        }
    }

    /// The task stopped because it was cancelled (or its soft deadline passed).
    pub fn cancelled() -> Self {
        Self {
            kind: FailureKind::Cancelled,
            message: "cancelled".into(),
        }
    }

    /// The input was well-formed but unacceptable (e.g. an empty argv).
    pub fn bad_input(message: impl fmt::Display) -> Self {
        Self {
            kind: FailureKind::BadInput,
            message: message.to_string(),
        }
    }

    /// Whether this is the cancellation error.
    pub fn is_cancelled(&self) -> bool {
        self.kind == FailureKind::Cancelled
    }
}

/// `e` and its sources, joined with `": "`: how a `TaskError` made from an
/// error reads, and how the daemon logs and answers errors. A source whose
/// text the message already holds is skipped, so an error of another crate
/// that prints its cause inside its own message is told once, not twice.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message
}

impl<E: std::error::Error> From<E> for TaskError {
    fn from(e: E) -> Self {
        Self::msg(error_chain(&e))
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskError({:?}: {})", self.kind, self.message)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// How often, at most, `is_cancelled` looks at the pipe (a syscall).
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// What [`Ctx::wait_fd`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The fd became readable.
    Ready,
    /// The call was cancelled (or its soft deadline passed) first.
    Cancelled,
    /// The timeout passed first.
    TimedOut,
}

/// What a running task can ask of its worker.
pub struct Ctx<'a> {
    pub(crate) id: u64,
    pub(crate) link: &'a mut Link,
    pub(crate) inbox: &'a mut Inbox,
    pub(crate) deadline: Option<Instant>,
    pub(crate) cancelled: bool,
    /// When to look at the pipe next.
    poll: Pace,
    /// When a heartbeat or progress frame may go next.
    report: Pace,
}

impl fmt::Debug for Ctx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.id)
            .field("cancelled", &self.cancelled)
            .finish_non_exhaustive()
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        id: u64,
        link: &'a mut Link,
        inbox: &'a mut Inbox,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            id,
            link,
            inbox,
            deadline,
            cancelled: false,
            poll: Pace::since(POLL_INTERVAL, Instant::now()),
            report: Pace::new(report_interval(None)),
        }
    }

    /// Sets how often, at most, heartbeats and progress are sent.
    pub(crate) fn set_report_interval(&mut self, every: Duration) {
        self.report = Pace::new(every);
    }

    /// The supervisor's id of this call.
    pub fn call_id(&self) -> u64 {
        self.id
    }

    /// Whether the task should stop: it was cancelled, its soft deadline
    /// passed, or the supervisor went away. Cheap enough for a hot loop: the
    /// pipe is looked at no more than once a millisecond.
    pub fn is_cancelled(&mut self) -> bool {
        if self.cancelled {
            return true;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|d| now >= d) {
            self.cancelled = true;
            return true;
        }
        if self.poll.due(now) {
            self.ingest();
        }
        self.cancelled
    }

    /// Reads whatever the supervisor sent meanwhile, without blocking.
    fn ingest(&mut self) {
        match self.link.fill_nonblocking() {
            Ok(true) => {}
            // EOF or error: the supervisor is gone; stop the task.
            Ok(false) | Err(_) => {
                self.cancelled = true;
                return;
            }
        }
        match self.inbox.take_frames(self.link, Some(self.id)) {
            Ok(hit) => self.cancelled |= hit,
            Err(_) => self.cancelled = true,
        }
    }

    /// Tells the supervisor the task is alive, and checks for cancellation
    /// like [`Ctx::is_cancelled`]. Rate-limited: at most one frame per
    /// 100 ms, or per quarter of the call's stall timeout when that is
    /// shorter (5 ms at least), so calling it more often than the stall
    /// timeout is enough for any stall timeout of 20 ms or more.
    pub fn heartbeat(&mut self) -> bool {
        if self.report_due() {
            let _ = self.link.send_heartbeat(self.id);
        }
        self.is_cancelled()
    }

    /// Reports progress (rate-limited), and checks for cancellation.
    pub fn progress(&mut self, done: u64, total: u64) -> bool {
        if self.report_due() {
            let _ = self.link.send_progress(self.id, done, total);
        }
        self.is_cancelled()
    }

    fn report_due(&mut self) -> bool {
        self.report.due(Instant::now())
    }

    /// Sleeps up to `dur`, waking early (and returning `false`) on cancellation.
    /// Returns `true` when the whole duration passed.
    pub fn sleep(&mut self, dur: Duration) -> bool {
        let until = Instant::now() + dur;
        loop {
            if self.is_cancelled() {
                return false;
            }
            let now = Instant::now();
            if now >= until {
                return true;
            }
            self.wait_link(Some(until - now));
        }
    }

    /// Waits until `fd` is readable, the call is cancelled, or `timeout` passes.
    pub fn wait_fd(&mut self, fd: BorrowedFd<'_>, timeout: Option<Duration>) -> Wait {
        let until = timeout.map(|t| Instant::now() + t);
        loop {
            if self.is_cancelled() {
                return Wait::Cancelled;
            }
            let now = Instant::now();
            let mut left = until.map(|u| u.saturating_duration_since(now));
            if left == Some(Duration::ZERO) {
                return Wait::TimedOut;
            }
            if let Some(d) = self.deadline {
                let to_deadline = d.saturating_duration_since(now);
                left = Some(left.map_or(to_deadline, |l| l.min(to_deadline)));
            }
            match self.link.poll_two(fd, left) {
                Ok((fd_ready, link_ready)) => {
                    if link_ready {
                        self.ingest();
                    }
                    if fd_ready {
                        return Wait::Ready;
                    }
                }
                Err(_) => {
                    self.cancelled = true;
                }
            }
        }
    }

    fn wait_link(&mut self, timeout: Option<Duration>) {
        let timeout = match (timeout, self.deadline) {
            (Some(t), Some(d)) => Some(t.min(d.saturating_duration_since(Instant::now()))),
            (t, _) => t,
        };
        if let Ok(true) = self.link.wait_readable(timeout) {
            self.ingest();
        }
    }
}

/// Runs a task in this process, outside any pool, with a context whose soft
/// deadline is `timeout` (so `ctx.is_cancelled()` turns true when it passes).
/// For unit tests of tasks and for debugging a task in isolation.
///
/// # Errors
/// The task's own error; an I/O error creating the context's pipes is
/// reported as a task error.
pub fn run_detached<T: Task>(
    task: &T,
    input: T::Input,
    timeout: Option<Duration>,
) -> Result<T::Output, TaskError> {
    let (r1, w1) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(TaskError::from)?;
    let (_r2, w2) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(TaskError::from)?;
    // Keep the write end of the input pipe open so the link never sees EOF.
    let _keep = w1;
    let mut link = Link::new(r1, w2, BOOTSTRAP_MAX_FRAME).map_err(TaskError::from)?;
    let mut inbox = Inbox::new();
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut ctx = Ctx::new(0, &mut link, &mut inbox, deadline);
    task.run(input, &mut ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file /x")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn error_chain_tells_each_cause_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            error_chain(&Outer(io())),
            "cannot read config file /x: no such file"
        );
        assert_eq!(error_chain(&Repeats(io())), "outer: no such file");
        assert_eq!(error_chain(&io()), "no such file");
    }

    /// Waits for a cancel or its soft deadline.
    struct Park;
    impl Task for Park {
        const NAME: &'static str = "park";
        type Input = ();
        type Output = ();
        fn run(&self, (): (), ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
            if ctx.sleep(Duration::from_secs(600)) {
                Ok(())
            } else {
                Err(TaskError::cancelled())
            }
        }
    }

    #[test]
    fn run_detached_stops_a_task_at_its_soft_deadline() {
        let e = run_detached(&Park, (), Some(Duration::from_millis(1))).unwrap_err();
        assert!(e.is_cancelled(), "{e:?}");
    }

    #[test]
    fn a_task_error_from_an_error_reads_its_whole_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("reading the input")]
        struct Outer(#[source] std::io::Error);
        let e = TaskError::from(Outer(std::io::Error::other("disk gone")));
        assert_eq!(e.to_string(), "reading the input: disk gone");
        assert_eq!(e.kind, FailureKind::Error);
    }
}
