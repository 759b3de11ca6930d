//! One worker as the dispatcher keeps it: its process, its link, the calls
//! it holds in each lane, and how far its exit has got; plus the encoding of
//! calls into the frames it is sent.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use jobvisor_proto::encode_frame;
use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_proto::worker::{CallRef, ToWorker, ToWorkerRef};
use tokio::sync::{mpsc, oneshot};

use super::admission;
use super::call::{InFlight, IoFlight};
use super::escalation::Escalation;
use crate::conn::WorkerConn;
use crate::launch::ProcHandle;
use crate::types::WorkerState;

/// One worker. More than ~15 fields because the dispatcher keeps each
/// worker's two lanes (the CPU calls with their timing and escalation, the
/// async calls with their timers), its link and its exit (status, log EOF,
/// reaping) together: the blame and timer rules read them all at once.
pub(super) struct Worker {
    pub(super) id: u64,
    pub(super) pid: u32,
    pub(super) proc: ProcHandle,
    pub(super) tx: mpsc::UnboundedSender<Vec<u8>>,
    /// The writer task, taken when the worker exits (see `on_exit`).
    pub(super) writer: Option<tokio::task::JoinHandle<()>>,
    pub(super) state: WorkerState,
    /// CPU calls sent to the worker, in order: the head runs, the rest wait.
    pub(super) inflight: VecDeque<InFlight>,
    /// Async calls on the worker's event loop, all running.
    pub(super) io: HashMap<u64, IoFlight>,
    /// When something may be due for an async call (its timeout, its stall
    /// deadline, its escalation's next stage), earliest first. Entries are
    /// not removed when a call ends or its deadline moves: the timer skips
    /// them when they come up. Calls without timers never appear here.
    pub(super) io_timers: BinaryHeap<Reverse<(Instant, u64)>>,
    pub(super) head_since: Instant,
    /// Last sign of life of the running call (its start, a heartbeat, progress).
    pub(super) last_beat: Instant,
    pub(super) esc: Option<Escalation>,
    pub(super) calls_done: u64,
    pub(super) tail: Arc<std::sync::Mutex<VecDeque<String>>>,
    pub(super) log_eof: Option<oneshot::Receiver<()>>,
    pub(super) status: Option<ExitStatus>,
    /// The link closed (EOF or garbage); the process may still be alive.
    pub(super) link_closed: bool,
    /// A worker that closed its pipe after `Shutdown` is killed if it has
    /// not exited by then.
    pub(super) kill_at: Option<Instant>,
    /// Its state when it was marked dead (tells a death from a retirement).
    pub(super) state_before_death: WorkerState,
    /// Names the call it was running (shared page the worker writes).
    pub(super) beacon: Arc<jobvisor_worker::Beacon>,
    /// Reaped, but its pipe still has frames to read: finish when it closes.
    pub(super) reap_waiting: bool,
    /// When it last sent a frame, or was sent work while it held none (its
    /// silence clock, see `liveness`).
    pub(super) last_heard: Instant,
    /// We killed it for silence (see `liveness`): it is sent nothing more.
    pub(super) unresponsive: bool,
}

impl Worker {
    /// A worker that finished its handshake: ready, holding nothing.
    pub(super) fn new(id: u64, conn: WorkerConn) -> Self {
        Worker {
            id,
            pid: conn.proc.pid,
            proc: conn.proc,
            tx: conn.tx,
            writer: Some(conn.writer),
            state: WorkerState::Ready,
            inflight: VecDeque::new(),
            io: HashMap::new(),
            io_timers: BinaryHeap::new(),
            head_since: Instant::now(),
            last_beat: Instant::now(),
            esc: None,
            calls_done: 0,
            tail: conn.tail,
            log_eof: Some(conn.log_eof),
            beacon: conn.beacon,
            reap_waiting: false,
            last_heard: Instant::now(),
            unresponsive: false,
            status: None,
            link_closed: false,
            kill_at: None,
            state_before_death: WorkerState::Ready,
        }
    }

    /// Calls it may still be sent before `max_tasks_per_worker` recycles it,
    /// counting what it holds of both kinds (recycling is exact).
    pub(super) fn recycle_room(&self, max_calls: Option<u64>) -> usize {
        admission::recycle_room(
            max_calls,
            self.calls_done,
            self.inflight.len() + self.io.len(),
        )
    }

    /// Holds no call of either kind.
    pub(super) fn idle(&self) -> bool {
        self.inflight.is_empty() && self.io.is_empty()
    }

    /// About to be sent work at `now`: a worker that held none starts its
    /// silence clock (see `liveness`).
    pub(super) fn sending_work(&mut self, now: Instant) {
        if self.idle() {
            self.last_heard = now;
        }
    }

    /// Holds calls, is alive as far as we know, and was not killed for
    /// silence: its silence counts (see `liveness`).
    pub(super) fn may_fall_silent(&self) -> bool {
        !self.idle() && !self.unresponsive && self.state != WorkerState::Dead
    }

    /// May be sent calls: ready, and not killed for silence.
    pub(super) fn takes_work(&self) -> bool {
        self.state == WorkerState::Ready && !self.unresponsive
    }

    /// Holds a suspect (see `admission::may_take`): it is sent nothing else.
    pub(super) fn holds_suspect(&self) -> bool {
        self.inflight.iter().any(|f| f.deaths > 0) || self.io.values().any(|f| f.f.deaths > 0)
    }

    /// May be sent `next` (see `admission::may_take`).
    pub(super) fn may_take(&self, next: &super::call::Pending) -> bool {
        admission::may_take(next.deaths > 0, self.idle(), self.holds_suspect())
    }

    /// Queues one control message (cancel, shutdown) for the worker's writer.
    /// A gone worker is noticed by its reader, so a failed send is not an error.
    pub(super) fn send(&self, msg: &ToWorker, max_frame_bytes: usize) {
        let mut frame = Vec::new();
        if encode_frame(&mut frame, msg, max_frame_bytes).is_ok() {
            let _ = self.tx.send(frame);
        }
    }
}

/// Takes a worker's async calls (they go back to the queue).
pub(super) fn take_io(w: &mut Worker) -> Vec<InFlight> {
    w.io_timers.clear();
    w.io.drain().map(|(_, f)| f.f).collect()
}

/// Encodes `calls` into as few `Run` frames as the frame limit allows and
/// queues them for the worker's writer.
pub(super) fn send_run<'a>(
    frame_buf: &mut Vec<u8>,
    tx: &mpsc::UnboundedSender<Vec<u8>>,
    calls: impl Iterator<Item = &'a InFlight>,
    max: usize,
) {
    let mut refs: Vec<CallRef<'_>> = Vec::new();
    let mut size = 0usize;
    let buf = frame_buf;
    buf.clear();
    let flush = |refs: &mut Vec<CallRef<'_>>, buf: &mut Vec<u8>| {
        if refs.is_empty() {
            return;
        }
        if let Err(e) = encode_frame(buf, &ToWorkerRef::Run(refs), max) {
            // Inputs were size-checked at submit; this is a bug, not bad input.
            let error = jobvisor_worker::error_chain(&e);
            tracing::error!(%error, "cannot encode a Run frame");
        }
        refs.clear();
    };
    for f in calls {
        let cost = f.input.len() + 64;
        if !refs.is_empty() && size + cost > max.saturating_sub(64) {
            flush(&mut refs, buf);
            size = 0;
        }
        size += cost;
        refs.push(CallRef {
            id: f.id,
            task: f.task,
            chunk: f.chunk,
            timeout_ms: f.timeout.map(|t| t.as_millis() as u64),
            stall_ms: f.stall.map(|t| t.as_millis() as u64),
            input: &f.input,
        });
    }
    flush(&mut refs, buf);
    let _ = tx.send(std::mem::take(buf));
}
