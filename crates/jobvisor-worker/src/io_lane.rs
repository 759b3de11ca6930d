//! The I/O lane: a worker's event loop for async calls.
//!
//! A thread beside the CPU thread runs a current-thread tokio runtime, created
//! after the fork (the fork server and every worker start single-threaded).
//! The CPU thread reads the pipe and hands the lane the calls of async tasks;
//! the lane runs all of them at once and writes their replies itself, in
//! whatever order they finish, through the shared write end (whole frames
//! under a lock, so the two threads' frames never interleave).
//!
//! Each call's future is wrapped so that the lane knows, per call, the time
//! it held the loop (the sum of its polls, reported as its CPU time) and its
//! longest single poll (`max_poll_us`: the "blocks its event loop" advice),
//! and names the call in the beacon's I/O slot while it is polled, so a crash
//! inside a poll is charged to that call alone.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::LocalBoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use jobvisor_proto::encode_frame;
use jobvisor_proto::worker::{Call, FailureKind, FromWorker, Outcome, Reply, TaskFailure};
use tokio::sync::{mpsc, oneshot};

use crate::async_task::{AsyncCtx, Report};
use crate::beacon::Beacon;
use crate::link::SharedOut;
use crate::registry::Registry;
use crate::reply::{outcome, outcome_size, soft_timeout, ReplyBatch};
use crate::shared::{IoMsg, LaneState};

/// The lane's settings.
pub(crate) struct LaneConfig {
    pub(crate) max_frame_bytes: usize,
    pub(crate) max_output_bytes: u64,
    /// Soft memory limit in bytes (0 = none): over it, the lane announces
    /// `Draining` once, and the supervisor recycles the worker when idle.
    pub(crate) soft_limit: u64,
    /// Shared with the CPU thread.
    pub(crate) state: Arc<LaneState>,
}

type Finished = (u64, Reply, usize);

/// Runs the lane until the CPU thread drops its sender (after finishing what
/// runs) or sends [`IoMsg::Abort`].
pub(crate) fn run(
    registry: &Registry,
    rx: mpsc::UnboundedReceiver<IoMsg>,
    out: Arc<SharedOut>,
    cfg: &LaneConfig,
    beacon: Option<&Beacon>,
) {
    crate::beacon::this_is_the_lane_thread();
    // A panic here, outside any call's guard, would leave the process alive
    // with its async calls unanswered: die instead, so they run elsewhere.
    let lane = AssertUnwindSafe(|| run_lane(registry, rx, out, cfg, beacon));
    if catch_unwind(lane).is_err() {
        eprintln!("jobvisor worker: the I/O lane panicked outside a call; aborting");
        std::process::abort();
    }
}

fn run_lane(
    registry: &Registry,
    mut rx: mpsc::UnboundedReceiver<IoMsg>,
    out: Arc<SharedOut>,
    cfg: &LaneConfig,
    beacon: Option<&Beacon>,
) {
    // The event loop is built when the first async call arrives: a worker
    // that only ever runs CPU tasks does not pay for it (its memory, its
    // epoll and timer).
    let first = match rx.blocking_recv() {
        None | Some(IoMsg::Abort) => return,
        Some(msg) => msg,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobvisor worker: cannot start the event loop: {e}");
            // Without a loop no async call can run: the process must go so
            // the supervisor re-dispatches them to a working worker.
            std::process::abort();
        }
    };
    rt.block_on(serve_lane(registry, first, rx, out, cfg, beacon));
    // Do not wait for blocking-pool work (DNS lookups, file writes of
    // dropped calls): the process is about to exit.
    rt.shutdown_background();
}

async fn serve_lane(
    registry: &Registry,
    first: IoMsg,
    mut rx: mpsc::UnboundedReceiver<IoMsg>,
    out: Arc<SharedOut>,
    cfg: &LaneConfig,
    beacon: Option<&Beacon>,
) {
    // Heartbeats, progress and Draining are framed into a buffer that the
    // loop writes between polls: a write that waits for a full pipe must not
    // count as a call holding the loop (its "blocks its event loop" figure).
    let reports: Rc<RefCell<Vec<u8>>> = Rc::new(RefCell::new(Vec::new()));
    let reported = Rc::new(tokio::sync::Notify::new());
    let report: Report = {
        let reports = Rc::clone(&reports);
        let reported = Rc::clone(&reported);
        let max = cfg.max_frame_bytes;
        Rc::new(move |msg: &FromWorker| {
            let mut buf = reports.borrow_mut();
            if buf.len() < MAX_REPORT_BYTES && encode_frame(&mut buf, msg, max).is_ok() {
                reported.notify_one();
            }
        })
    };
    let mut running: FuturesUnordered<LocalBoxFuture<'_, Finished>> = FuturesUnordered::new();
    let mut cancels: HashMap<u64, oneshot::Sender<()>> = HashMap::new();
    let mut replies = Replies::new(cfg.max_frame_bytes);
    let mut open = true;
    let mut memory = MemoryCheck::new(cfg.soft_limit, Arc::clone(&cfg.state));
    // Long calls may grow without finishing: look at the memory now and then
    // too, not only when calls end.
    let mut memory_tick = tokio::time::interval(Duration::from_millis(100));
    memory_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = Some(first);
    loop {
        let pending_reports = std::mem::take(&mut *reports.borrow_mut());
        if !pending_reports.is_empty() && out.write_all(&pending_reports).is_err() {
            return;
        }
        if !open && running.is_empty() {
            return;
        }
        if let Some(IoMsg::Run(call)) = first.take() {
            // It arrived before the loop existed (a first Cancel has nothing
            // to cancel).
            let fut = start(call, &mut cancels, registry, &report, cfg, beacon);
            running.push(fut);
            continue;
        }
        tokio::select! {
            biased;
            Some(done) = running.next(), if !running.is_empty() => {
                cancels.remove(&done.0);
                replies.push(done.1, done.2);
                // Gather whatever else is finished, then write one frame.
                while let Some(Some(done)) = running.next().now_or_never() {
                    cancels.remove(&done.0);
                    replies.push(done.1, done.2);
                }
                let answered = replies.pending();
                if replies.write(&out).is_err() {
                    return;
                }
                cfg.state.answered(answered);
                if let Some(reason) = memory.over() {
                    report(&FromWorker::Draining { reason });
                }
            }
            _ = memory_tick.tick(), if cfg.soft_limit > 0 && !running.is_empty() => {
                if let Some(reason) = memory.over() {
                    report(&FromWorker::Draining { reason });
                }
            }
            () = reported.notified() => {}
            msg = rx.recv(), if open => match msg {
                Some(IoMsg::Run(call)) => {
                    let fut = start(call, &mut cancels, registry, &report, cfg, beacon);
                    running.push(fut);
                }
                Some(IoMsg::Cancel(id)) => {
                    if let Some(tx) = cancels.remove(&id) {
                        let _ = tx.send(());
                    }
                }
                Some(IoMsg::Abort) => return,
                None => open = false,
            },
        }
    }
}

/// Heartbeat and progress frames buffered between two turns of the loop, at
/// most (more are dropped: they only say "alive").
const MAX_REPORT_BYTES: usize = 1 << 20;

/// A call's future, registered for cancellation.
fn start<'a>(
    call: Call,
    cancels: &mut HashMap<u64, oneshot::Sender<()>>,
    registry: &'a Registry,
    report: &Report,
    cfg: &LaneConfig,
    beacon: Option<&'a Beacon>,
) -> LocalBoxFuture<'a, Finished> {
    let (tx, cancel) = oneshot::channel();
    cancels.insert(call.id, tx);
    let id = call.id;
    Box::pin(Guarded {
        fut: Some(Box::pin(run_call(
            registry,
            call,
            cancel,
            Rc::clone(report),
            cfg.max_output_bytes,
        ))),
        id,
        beacon,
    })
}

/// Everything a call does on the loop (decoding its input, its polls, the
/// drop of its future at a cancel or deadline) runs under this guard: the
/// beacon names the call meanwhile, so a crash there is charged to it, and a
/// panic there fails this call alone.
struct Guarded<'a> {
    fut: Option<LocalBoxFuture<'a, Finished>>,
    id: u64,
    beacon: Option<&'a Beacon>,
}

impl Future for Guarded<'_> {
    type Output = Finished;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Finished> {
        let this = &mut *self;
        let Some(fut) = this.fut.as_mut() else {
            return Poll::Pending;
        };
        if let Some(b) = this.beacon {
            b.set_io(this.id);
        }
        let r = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)));
        let out = match r {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(done)) => {
                this.fut = None;
                Poll::Ready(done)
            }
            Err(payload) => {
                // The future is poisoned: drop it, still guarded.
                let fut = this.fut.take();
                let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
                let failure = TaskFailure {
                    kind: FailureKind::Panic,
                    message: format!(
                        "async task panicked: {}",
                        crate::registry::panic_message(&*payload)
                    ),
                };
                let reply = Reply {
                    id: this.id,
                    outcome: Outcome::Err(failure),
                    cpu_us: 0,
                    wall_us: 1,
                    max_poll_us: 0,
                };
                Poll::Ready((this.id, reply, 64))
            }
        };
        if let Some(b) = this.beacon {
            b.set_io(0);
        }
        out
    }
}

impl Drop for Guarded<'_> {
    fn drop(&mut self) {
        // Dropped unfinished only when the whole lane stops (Abort).
        if let Some(fut) = self.fut.take() {
            if let Some(b) = self.beacon {
                b.set_io(self.id);
            }
            let _ = catch_unwind(AssertUnwindSafe(move || drop(fut)));
            if let Some(b) = self.beacon {
                b.set_io(0);
            }
        }
    }
}

async fn run_call(
    registry: &Registry,
    call: Call,
    cancel: oneshot::Receiver<()>,
    report: Report,
    max_output_bytes: u64,
) -> Finished {
    let started = Instant::now();
    let deadline = call
        .timeout_ms
        .map(|ms| started + Duration::from_millis(ms));
    let ctx = AsyncCtx::new(call.id, deadline, Some(report))
        .with_report_interval(crate::pace::report_interval(call.stall_ms));
    let mut timed = Timed {
        fut: registry.call_async(call.task, call.chunk, &call.input, ctx),
        busy: Duration::ZERO,
        max_poll: Duration::ZERO,
    };
    let cancelled = |message: String| {
        Err(TaskFailure {
            kind: FailureKind::Cancelled,
            message,
        })
    };
    let result = tokio::select! {
        r = &mut timed => r,
        _ = cancel => cancelled("cancelled while running".into()),
        () = sleep_until_opt(deadline) => Err(soft_timeout(call.timeout_ms)),
    };
    let outcome = outcome(result, max_output_bytes);
    let size = outcome_size(&outcome);
    let reply = Reply {
        id: call.id,
        outcome,
        cpu_us: timed.busy.as_micros() as u64,
        wall_us: (started.elapsed().as_micros() as u64).max(1),
        max_poll_us: timed.max_poll.as_micros() as u64,
    };
    (call.id, reply, size)
}

/// The soft memory limit, seen from the event loop: checked after calls
/// finish, at most every 10 ms, announced once.
struct MemoryCheck {
    limit: u64,
    last: Option<Instant>,
    state: Arc<LaneState>,
}

impl MemoryCheck {
    fn new(limit: u64, state: Arc<LaneState>) -> Self {
        Self {
            limit,
            last: None,
            state,
        }
    }

    /// Why the worker must drain, the first time it is over the limit (and
    /// the CPU thread has not said so already).
    fn over(&mut self) -> Option<String> {
        if self.limit == 0 || self.state.draining() {
            return None;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(10))
        {
            return None;
        }
        self.last = Some(now);
        let reason = crate::limits::over_soft_limit(self.limit)?;
        self.state.start_draining().then_some(reason)
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A call's future, measured: time spent in its polls, its longest poll.
struct Timed<'a> {
    fut: LocalBoxFuture<'a, Result<Vec<u8>, TaskFailure>>,
    busy: Duration,
    max_poll: Duration,
}

impl Future for Timed<'_> {
    type Output = Result<Vec<u8>, TaskFailure>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let t0 = Instant::now();
        let r = this.fut.as_mut().poll(cx);
        let took = t0.elapsed();
        this.busy += took;
        this.max_poll = this.max_poll.max(took);
        r
    }
}

/// Replies framed into `Done` frames no larger than the frame limit.
struct Replies {
    max_frame_bytes: usize,
    batch: ReplyBatch,
    buf: Vec<u8>,
    /// Replies pushed since the last write.
    pending: usize,
}

impl Replies {
    fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            batch: ReplyBatch::new(max_frame_bytes),
            buf: Vec::new(),
            pending: 0,
        }
    }

    /// Replies pushed since the last write.
    fn pending(&self) -> usize {
        self.pending
    }

    fn push(&mut self, reply: Reply, size: usize) {
        if let Some(full) = self.batch.push(reply, size) {
            self.frame(full);
        }
        self.pending += 1;
    }

    fn frame(&mut self, replies: Vec<Reply>) {
        let msg = FromWorker::Done(replies);
        if let Err(e) = encode_frame(&mut self.buf, &msg, self.max_frame_bytes) {
            // Outputs were checked against max_output_bytes, which is below the
            // frame limit; this would be a bug.
            eprintln!("jobvisor worker: cannot frame replies: {e}");
        }
    }

    fn write(&mut self, out: &SharedOut) -> std::io::Result<()> {
        if let Some(last) = self.batch.take() {
            self.frame(last);
        }
        let r = out.write_all(&self.buf);
        self.buf.clear();
        self.pending = 0;
        r
    }
}
