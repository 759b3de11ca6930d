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
use crate::limits::over_soft_limit;
use crate::link::SharedOut;
use crate::pace::Pace;
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
    /// The pulse's interval, if the worker has a pulse: while calls run the
    /// loop turns at least twice per interval, so a loop that does not turn
    /// is one stuck in a poll (see `pulse`).
    pub(crate) heartbeat_interval: Option<Duration>,
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
            if buffer_report(&mut reports.borrow_mut(), msg, max) {
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
    let turn_every = cfg
        .heartbeat_interval
        .map(|d| (d / 2).max(Duration::from_millis(1)));
    let mut turn_tick = tokio::time::interval(turn_every.unwrap_or(Duration::from_secs(3600)));
    turn_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = Some(first);
    loop {
        cfg.state.turned();
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
            _ = turn_tick.tick(), if turn_every.is_some() && !running.is_empty() => {}
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

/// Frames a heartbeat, progress or `Draining` report into `buf`, unless the
/// buffer holds [`MAX_REPORT_BYTES`] already. Returns whether it did.
fn buffer_report(buf: &mut Vec<u8>, msg: &FromWorker, max_frame_bytes: usize) -> bool {
    buf.len() < MAX_REPORT_BYTES && encode_frame(buf, msg, max_frame_bytes).is_ok()
}

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
        // Dropped unfinished only when the whole lane stops (an Abort, or
        // the output pipe broke).
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
/// finish and on a 100 ms tick while calls run, at most every 10 ms,
/// announced once (by whichever thread sees it first).
struct MemoryCheck {
    limit: u64,
    pace: Pace,
    state: Arc<LaneState>,
}

impl MemoryCheck {
    fn new(limit: u64, state: Arc<LaneState>) -> Self {
        Self {
            limit,
            pace: Pace::new(Duration::from_millis(10)),
            state,
        }
    }

    /// Why the worker must drain, the first time it is over the limit (and
    /// the CPU thread has not said so already).
    fn over(&mut self) -> Option<String> {
        self.over_at(Instant::now(), over_soft_limit)
    }

    /// [`MemoryCheck::over`] at `now`, with `reading` as the check of the
    /// resident set against a limit.
    fn over_at(
        &mut self,
        now: Instant,
        reading: impl FnOnce(u64) -> Option<String>,
    ) -> Option<String> {
        if self.limit == 0 || self.state.draining() || !self.pace.due(now) {
            return None;
        }
        let reason = reading(self.limit)?;
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

#[cfg(test)]
mod tests {
    use std::io::Read;

    use jobvisor_proto::codec;
    use jobvisor_proto::FrameBuf;

    use super::*;
    use crate::{AsyncTask, TaskError};

    const MAX: usize = 1 << 16;

    /// Sleeps its input in milliseconds (of the paused clock).
    struct Nap;
    impl AsyncTask for Nap {
        const NAME: &'static str = "nap";
        type Input = u64;
        type Output = u64;
        async fn run(&self, ms: u64, ctx: AsyncCtx) -> Result<u64, TaskError> {
            ctx.heartbeat();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(ms)
        }
    }

    struct Boom;
    impl AsyncTask for Boom {
        const NAME: &'static str = "boom";
        type Input = ();
        type Output = ();
        async fn run(&self, (): (), _ctx: AsyncCtx) -> Result<(), TaskError> {
            panic!("boom")
        }
    }

    fn call(id: u64, task: u32, input: &impl serde::Serialize, timeout_ms: Option<u64>) -> Call {
        Call {
            id,
            task,
            chunk: false,
            timeout_ms,
            stall_ms: None,
            input: codec::encode(input).unwrap(),
        }
    }

    /// Every frame the lane wrote, in order.
    fn frames(bytes: &[u8]) -> Vec<FromWorker> {
        let mut buf = FrameBuf::new(MAX);
        buf.extend(bytes);
        std::iter::from_fn(|| buf.decode_next().unwrap()).collect()
    }

    /// Runs the lane on a paused clock over `msgs` (after `first`), then
    /// returns what it wrote and the shared state.
    fn run_paused(first: IoMsg, msgs: Vec<IoMsg>) -> (Vec<FromWorker>, Arc<LaneState>) {
        let registry = Registry::new().with_async(Nap).with_async(Boom);
        let (r, w) = nix::unistd::pipe().unwrap();
        let state = Arc::new(LaneState::default());
        let cfg = LaneConfig {
            max_frame_bytes: MAX,
            max_output_bytes: 1024,
            soft_limit: 0,
            state: Arc::clone(&state),
            heartbeat_interval: None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        for m in [&first].into_iter().chain(&msgs) {
            if matches!(m, IoMsg::Run(_)) {
                state.routed();
            }
        }
        for m in msgs {
            tx.send(m).unwrap();
        }
        drop(tx);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let out = Arc::new(SharedOut::new(w));
        rt.block_on(serve_lane(&registry, first, rx, out, &cfg, None));
        let mut bytes = Vec::new();
        std::fs::File::from(r).read_to_end(&mut bytes).unwrap();
        (frames(&bytes), state)
    }

    fn replies(frames: &[FromWorker]) -> Vec<&Reply> {
        let mut out: Vec<&Reply> = frames
            .iter()
            .filter_map(|f| match f {
                FromWorker::Done(r) => Some(r),
                _ => None,
            })
            .flatten()
            .collect();
        out.sort_by_key(|r| r.id);
        out
    }

    fn failure(r: &Reply) -> (FailureKind, &str) {
        match &r.outcome {
            Outcome::Err(f) => (f.kind, f.message.as_str()),
            Outcome::Ok(_) => panic!("call {} succeeded", r.id),
        }
    }

    #[test]
    fn the_lane_answers_every_call_its_own_way() {
        let (frames, state) = run_paused(
            IoMsg::Run(call(1, 0, &5u64, None)),
            vec![
                // Past its soft deadline long before it wakes.
                IoMsg::Run(call(2, 0, &3_600_000u64, Some(50))),
                IoMsg::Run(call(3, 0, &3_600_000u64, None)),
                IoMsg::Cancel(3),
                // Not running here: ignored.
                IoMsg::Cancel(99),
                IoMsg::Run(call(4, 1, &(), None)),
            ],
        );
        let r = replies(&frames);
        assert_eq!(r.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(r[0].outcome, Outcome::Ok(codec::encode(&5u64).unwrap()));
        assert_eq!(
            failure(r[1]),
            (FailureKind::Cancelled, "soft timeout of 50 ms reached")
        );
        assert_eq!(
            failure(r[2]),
            (FailureKind::Cancelled, "cancelled while running")
        );
        assert_eq!(
            failure(r[3]),
            (FailureKind::Panic, "async task panicked: boom")
        );
        // Every async reply says how long its call took.
        assert!(r.iter().all(|r| r.wall_us >= 1));
        // The beats went out as frames of their own.
        assert!(frames
            .iter()
            .any(|f| matches!(f, FromWorker::Heartbeat { id: 1 })));
        assert_eq!(state.held(), 0, "every routed call was answered");
    }

    #[test]
    fn an_abort_drops_the_calls_unanswered() {
        let (frames, state) = run_paused(
            IoMsg::Run(call(1, 0, &3_600_000u64, None)),
            vec![IoMsg::Abort],
        );
        assert!(replies(&frames).is_empty());
        assert_eq!(state.held(), 1);
    }

    #[test]
    fn memory_is_looked_at_every_10_ms_and_announced_once() {
        let state = Arc::new(LaneState::default());
        let mut m = MemoryCheck::new(1000, Arc::clone(&state));
        let t0 = Instant::now();
        let over = |limit: u64| Some(format!("over {limit}"));
        assert_eq!(m.over_at(t0, |_| None), None);
        // Within 10 ms of the last look: not looked at.
        assert_eq!(m.over_at(t0 + Duration::from_millis(9), over), None);
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(m.over_at(t1, over).as_deref(), Some("over 1000"));
        assert!(state.draining());
        // Announced: never again.
        assert_eq!(m.over_at(t1 + Duration::from_secs(1), over), None);
    }

    #[test]
    fn the_cpu_threads_announcement_counts_for_the_lane() {
        let state = Arc::new(LaneState::default());
        assert!(state.start_draining());
        let mut m = MemoryCheck::new(1000, state);
        assert_eq!(m.over_at(Instant::now(), |_| Some("over".into())), None);
        // No limit, no look.
        let mut m = MemoryCheck::new(0, Arc::new(LaneState::default()));
        assert_eq!(m.over_at(Instant::now(), |_| Some("over".into())), None);
    }

    #[test]
    fn reports_stop_buffering_at_the_cap() {
        let mut buf = Vec::new();
        let beat = FromWorker::Heartbeat { id: 1 };
        assert!(buffer_report(&mut buf, &beat, MAX));
        assert_eq!(frames(&buf).len(), 1);
        buf.resize(MAX_REPORT_BYTES, 0);
        assert!(!buffer_report(&mut buf, &beat, MAX));
        assert_eq!(buf.len(), MAX_REPORT_BYTES);
    }

    #[test]
    fn replies_split_into_frames_under_the_limit() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let out = SharedOut::new(w);
        let mut replies = Replies::new(1024);
        for id in 1..=40 {
            let reply = Reply {
                id,
                outcome: Outcome::Ok(vec![7; 100]),
                cpu_us: 0,
                wall_us: 1,
                max_poll_us: 0,
            };
            replies.push(reply, 100);
        }
        assert_eq!(replies.pending(), 40);
        replies.write(&out).unwrap();
        assert_eq!(replies.pending(), 0);
        drop(out);
        let mut bytes = Vec::new();
        std::fs::File::from(r).read_to_end(&mut bytes).unwrap();
        let mut buf = FrameBuf::new(1024);
        buf.extend(&bytes);
        let mut ids = Vec::new();
        let mut n = 0;
        while let Some(FromWorker::Done(batch)) = buf.decode_next().unwrap() {
            n += 1;
            ids.extend(batch.iter().map(|r| r.id));
        }
        assert!(n > 1, "40 replies of 100 bytes do not fit one 1 KiB frame");
        assert_eq!(ids, (1..=40).collect::<Vec<_>>());
    }
}
