//! The dispatcher: one actor that owns all pool state (the queue, the workers,
//! the calls in flight) and is fed by channels. Nothing else mutates it.
//!
//! Per loop turn it takes what arrived (commands, frames, exit reports, timer
//! expiries), then fills every worker's window from the queue, coalescing the
//! calls for one worker into one frame.
//!
//! Failure mechanics live here in one place:
//! - A worker's link closing or its process exiting marks it dead and starts a
//!   replacement at once. Once its exit status (and last output) is in, the one
//!   call it was running fails with [`PoolError::WorkerDied`] (or `TimedOut` if
//!   we were stopping it); the calls queued behind it never started and go back
//!   to the front of the pool's queue.
//! - A call past its deadline escalates: the worker's soft deadline (the task
//!   sees `ctx.is_cancelled()`), then after `cancel_grace` SIGTERM to the
//!   worker's process group, then after `term_grace` SIGKILL.
//! - Failed starts back off exponentially (from `restart_backoff` to 5 s); the
//!   queue is kept meanwhile. The pool never turns "broken".

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobvisor_proto::encode_frame;
use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_proto::worker::{
    CallRef, FailureKind, FromWorker, Outcome, Reply, TaskKind, ToWorker, ToWorkerRef,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;

mod admission;
mod blame;
mod escalation;
mod intensity;

use crate::config::PoolConfig;
use crate::conn::{self, LinkEvent, WorkerConn, LOG_EOF_WAIT};
use crate::error::PoolError;
use crate::launch::ProcHandle;
use crate::types::{CallUsage, Health, PoolEvent, WorkerInfo, WorkerState};
use escalation::{CpuView, Escalation, Reason, Signal, Stage};
use intensity::RestartIntensity;

/// A call's result and the pid of the worker that ran it (when one did).
#[derive(Debug)]
pub(crate) struct CallResult {
    pub(crate) pid: Option<u32>,
    pub(crate) result: Result<Vec<u8>, PoolError>,
    /// CPU and wall time of the call in the worker, when it ran to an answer.
    pub(crate) usage: Option<CallUsage>,
}

pub(crate) type Responder = oneshot::Sender<CallResult>;

fn answer(reply: Responder, pid: Option<u32>, result: Result<Vec<u8>, PoolError>) {
    let _ = reply.send(CallResult {
        pid,
        result,
        usage: None,
    });
}

/// A call accepted by the pool.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: u64,
    pub(crate) task: u32,
    pub(crate) chunk: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stall: Option<Duration>,
    pub(crate) input: Vec<u8>,
    pub(crate) reply: Responder,
}

#[derive(Debug)]
pub(crate) enum Command {
    Submit(Pending),
    Cancel(u64),
    Shutdown {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
    Workers(oneshot::Sender<Vec<WorkerInfo>>),
    Resize(usize),
}

/// Sent once, when the first `workers` workers are ready (or one failed).
pub(crate) type StartedReply = oneshot::Sender<Result<Vec<String>, PoolError>>;

enum Internal {
    Started {
        id: u64,
        result: std::io::Result<WorkerConn>,
    },
    Reaped {
        id: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// Finish the queue, then stop the workers.
    Graceful,
    /// Fail everything, kill the workers.
    Immediate,
}

struct InFlight {
    id: u64,
    task: u32,
    chunk: bool,
    timeout: Option<Duration>,
    stall: Option<Duration>,
    input: Vec<u8>,
    reply: Responder,
    cancel_requested: bool,
}

impl InFlight {
    /// A queued call, as sent to a worker.
    fn sent(p: Pending) -> Self {
        Self {
            id: p.id,
            task: p.task,
            chunk: p.chunk,
            timeout: p.timeout,
            stall: p.stall,
            input: p.input,
            reply: p.reply,
            cancel_requested: false,
        }
    }
}

/// An async call on a worker's event loop: it runs from the moment it is
/// sent, beside the worker's other async calls, and finishes in any order.
struct IoFlight {
    f: InFlight,
    since: Instant,
    last_beat: Instant,
    esc: Option<Escalation>,
}

struct Worker {
    id: u64,
    pid: u32,
    proc: ProcHandle,
    tx: mpsc::UnboundedSender<Vec<u8>>,
    /// The writer task, taken when the worker exits (see `on_exit`).
    writer: Option<tokio::task::JoinHandle<()>>,
    state: WorkerState,
    /// CPU calls sent to the worker, in order: the head runs, the rest wait.
    inflight: VecDeque<InFlight>,
    /// Async calls on the worker's event loop, all running.
    io: HashMap<u64, IoFlight>,
    /// When something may be due for an async call (its timeout, its stall
    /// deadline, its escalation's next stage), earliest first. Entries are
    /// not removed when a call ends or its deadline moves: the timer skips
    /// them when they come up. Calls without timers never appear here.
    io_timers: BinaryHeap<Reverse<(Instant, u64)>>,
    head_since: Instant,
    /// Last sign of life of the running call (its start, a heartbeat, progress).
    last_beat: Instant,
    esc: Option<Escalation>,
    calls_done: u64,
    tail: Arc<std::sync::Mutex<VecDeque<String>>>,
    log_eof: Option<oneshot::Receiver<()>>,
    status: Option<ExitStatus>,
    /// The link closed (EOF or garbage); the process may still be alive.
    link_closed: bool,
    /// A worker that closed its pipe after `Shutdown` is killed if it has
    /// not exited by then.
    kill_at: Option<Instant>,
    /// Its state when it was marked dead (tells a death from a retirement).
    state_before_death: WorkerState,
    /// Names the call it was running (shared page the worker writes).
    beacon: jobvisor_worker::Beacon,
    /// Reaped, but its pipe still has frames to read: finish when it closes.
    reap_waiting: bool,
}

impl Worker {
    /// Calls it may still be sent before `max_tasks_per_worker` recycles it,
    /// counting what it holds of both kinds (recycling is exact).
    fn recycle_room(&self, max_calls: Option<u64>) -> usize {
        admission::recycle_room(
            max_calls,
            self.calls_done,
            self.inflight.len() + self.io.len(),
        )
    }

    /// Holds no call of either kind.
    fn idle(&self) -> bool {
        self.inflight.is_empty() && self.io.is_empty()
    }

    /// Queues one control message (cancel, shutdown) for the worker's writer.
    /// A gone worker is noticed by its reader, so a failed send is not an error.
    fn send(&self, msg: &ToWorker, max_frame_bytes: usize) {
        let mut frame = Vec::new();
        if encode_frame(&mut frame, msg, max_frame_bytes).is_ok() {
            let _ = self.tx.send(frame);
        }
    }
}

pub(crate) struct Dispatcher {
    cfg: PoolConfig,
    /// CPU calls not yet sent to a worker.
    queue: VecDeque<Pending>,
    /// Async calls not yet sent to a worker. The two kinds queue apart and fill
    /// separate capacity (a worker's CPU window, its event loop's
    /// `io_concurrency_per_worker` slots), so neither kind waits behind the
    /// other.
    io_queue: VecDeque<Pending>,
    /// `task_kinds[task id]`, from the first worker's `Ready`.
    task_kinds: Vec<TaskKind>,
    workers: HashMap<u64, Worker>,
    by_pid: HashMap<u32, u64>,
    starting: usize,
    /// Link closures and exits of workers still starting: a worker can die
    /// between its handshake and `on_started`, and both events can come
    /// first. Applied when it is registered; cleared when none is starting.
    early_closed: HashMap<u64, Option<String>>,
    early_exits: HashMap<u32, ExitStatus>,
    next_worker_id: u64,
    /// Unexpected worker deaths (crashes, failed starts) and the restart
    /// delay they earned.
    intensity: RestartIntensity,
    health: Arc<Health>,
    stop: Stop,
    stop_waiters: Vec<oneshot::Sender<()>>,
    commands_open: bool,
    started_reply: Option<StartedReply>,
    task_names: Option<Vec<String>>,
    /// Smoothed time a worker spends per call: sizes the window so long tasks
    /// are not queued behind each other in one worker while another idles.
    service_ewma_us: f64,
    events: broadcast::Sender<PoolEvent>,
    link_tx: mpsc::UnboundedSender<LinkEvent>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    exits_tx: mpsc::UnboundedSender<(u32, ExitStatus)>,
    frame_buf: Vec<u8>,
}

pub(crate) struct Channels {
    /// Submits (bounded: submitters wait while the queue is full).
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Everything else, always read.
    pub(crate) control: mpsc::UnboundedReceiver<Command>,
}

impl Dispatcher {
    pub(crate) fn spawn(
        cfg: PoolConfig,
        channels: Channels,
        events: broadcast::Sender<PoolEvent>,
        started: StartedReply,
        health: Arc<Health>,
    ) {
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        let d = Dispatcher {
            cfg,
            queue: VecDeque::new(),
            io_queue: VecDeque::new(),
            task_kinds: Vec::new(),
            workers: HashMap::new(),
            by_pid: HashMap::new(),
            starting: 0,
            early_closed: HashMap::new(),
            early_exits: HashMap::new(),
            next_worker_id: 1,
            intensity: RestartIntensity::default(),
            health,
            stop: Stop::No,
            stop_waiters: Vec::new(),
            commands_open: true,
            started_reply: Some(started),
            task_names: None,
            service_ewma_us: 0.0,
            events,
            link_tx,
            internal_tx,
            exits_tx,
            frame_buf: Vec::new(),
        };
        tokio::spawn(d.run(channels, link_rx, internal_rx, exits_rx));
    }

    async fn run(
        mut self,
        channels: Channels,
        mut links: mpsc::UnboundedReceiver<LinkEvent>,
        mut internal: mpsc::UnboundedReceiver<Internal>,
        mut exits: mpsc::UnboundedReceiver<(u32, ExitStatus)>,
    ) {
        let Channels {
            mut commands,
            mut control,
        } = channels;
        self.ensure_workers();
        let mut cmd_buf = Vec::with_capacity(512);
        let mut link_buf = Vec::with_capacity(64);
        loop {
            let timer = self.next_timer();
            let accept = self.commands_open && self.queued() < self.cfg.max_queued;
            tokio::select! {
                biased;
                n = links.recv_many(&mut link_buf, 64) => {
                    if n == 0 { break; }
                    for ev in link_buf.drain(..) {
                        self.on_link(ev);
                    }
                }
                Some((pid, status)) = exits.recv() => self.on_exit(pid, status),
                Some(ev) = internal.recv() => self.on_internal(ev),
                Some(c) = control.recv() => {
                    // What a caller submitted before this comes first (its
                    // submit returned once the command was in the channel),
                    // even past max_queued: at most the channel's capacity.
                    while let Ok(s) = commands.try_recv() {
                        self.on_command(s);
                    }
                    self.on_command(c);
                }
                n = commands.recv_many(&mut cmd_buf, 512), if accept => {
                    if n == 0 {
                        // Every Pool handle is gone: stop now.
                        self.commands_open = false;
                        self.terminate();
                    }
                    for c in cmd_buf.drain(..) {
                        self.on_command(c);
                    }
                }
                () = sleep_until(timer.unwrap_or_else(Instant::now).into()), if timer.is_some() => {
                    self.on_timer();
                }
            }
            self.dispatch();
            self.maybe_finish_graceful();
            if self.is_done() {
                break;
            }
        }
        // Refuse what is still in the channel, then answer: once `shutdown`
        // returns, a submit fails at once.
        commands.close();
        control.close();
        while let Ok(c) = commands.try_recv().or_else(|_| control.try_recv()) {
            match c {
                Command::Submit(p) => answer(p.reply, None, Err(PoolError::Closed)),
                Command::Shutdown { done, .. } => self.stop_waiters.push(done),
                Command::Workers(reply) => {
                    let _ = reply.send(Vec::new());
                }
                Command::Cancel(_) | Command::Resize(_) => {}
            }
        }
        for done in self.stop_waiters.drain(..) {
            let _ = done.send(());
        }
    }

    fn is_done(&self) -> bool {
        self.stopping() && self.workers.is_empty() && self.starting == 0 && self.queued() == 0
    }

    /// Calls of both kinds not yet sent to a worker.
    fn queued(&self) -> usize {
        self.queue.len() + self.io_queue.len()
    }

    fn is_io(&self, task: u32) -> bool {
        self.task_kinds.get(task as usize) == Some(&TaskKind::Io)
    }

    /// The queue for a call of task `task`.
    fn queue_for(&mut self, task: u32) -> &mut VecDeque<Pending> {
        if self.is_io(task) {
            &mut self.io_queue
        } else {
            &mut self.queue
        }
    }

    fn stopping(&self) -> bool {
        self.stop != Stop::No
    }

    fn killing(&self) -> bool {
        self.stop == Stop::Immediate
    }

    // ---- commands -------------------------------------------------------

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Submit(p) => {
                if self.stopping() {
                    answer(p.reply, None, Err(PoolError::Closed));
                } else {
                    self.queue_for(p.task).push_back(p);
                }
            }
            Command::Cancel(id) => self.cancel(id),
            Command::Resize(n) => self.resize(n),
            Command::Shutdown { graceful, done } => {
                self.stop_waiters.push(done);
                if !graceful {
                    self.terminate();
                } else if self.stop == Stop::No {
                    self.stop = Stop::Graceful;
                }
            }
            Command::Workers(reply) => {
                // Place what was submitted before this query, so the snapshot shows it.
                self.dispatch();
                let mut list: Vec<WorkerInfo> = self
                    .workers
                    .values()
                    .map(|w| WorkerInfo {
                        id: w.id,
                        pid: w.pid,
                        state: w.state,
                        in_flight: w.inflight.len() + w.io.len(),
                        calls_done: w.calls_done,
                        running: Some(w.beacon.get()).filter(|&id| {
                            id != 0
                                && w.state != WorkerState::Dead
                                && w.inflight.iter().any(|f| f.id == id)
                        }),
                    })
                    .collect();
                list.sort_by_key(|w| w.id);
                let _ = reply.send(list);
            }
        }
    }

    fn cancel(&mut self, id: u64) {
        for q in [&mut self.queue, &mut self.io_queue] {
            if let Some(pos) = q.iter().position(|p| p.id == id) {
                if let Some(p) = q.remove(pos) {
                    answer(p.reply, None, Err(PoolError::Cancelled));
                }
                return;
            }
        }
        let now = Instant::now();
        for w in self.workers.values_mut() {
            if let Some(f) = w.io.get_mut(&id) {
                // The worker drops the call's future and answers Cancelled; a
                // loop too blocked to do so within the grace is escalated.
                f.f.cancel_requested = true;
                if w.state == WorkerState::Dead {
                    return;
                }
                if f.esc.is_none() {
                    let esc = Escalation::cancel(id, now, &self.cfg);
                    f.esc = Some(esc);
                    w.io_timers.push(Reverse((esc.until, id)));
                }
                w.send(&ToWorker::Cancel { id }, self.cfg.max_frame_bytes);
                return;
            }
            let Some(pos) = w.inflight.iter().position(|f| f.id == id) else {
                continue;
            };
            w.inflight[pos].cancel_requested = true;
            if w.state == WorkerState::Dead {
                return;
            }
            w.send(&ToWorker::Cancel { id }, self.cfg.max_frame_bytes);
            if pos == 0 && w.esc.is_none() {
                w.esc = Some(Escalation::cancel(id, now, &self.cfg));
            }
            return;
        }
    }

    fn resize(&mut self, n: usize) {
        let n = n.max(1);
        self.cfg.workers = n;
        let mut ready: Vec<u64> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .map(|w| w.id)
            .collect();
        ready.sort_unstable();
        // Retire the newest surplus workers: they finish what they hold, then stop.
        let surplus = ready.len().saturating_sub(n);
        for id in ready.into_iter().rev().take(surplus) {
            if let Some(w) = self.workers.get_mut(&id) {
                w.state = WorkerState::Retiring;
                if w.idle() {
                    self.send_shutdown_to(id);
                }
            }
        }
        self.ensure_workers();
    }

    fn terminate(&mut self) {
        self.stop = Stop::Immediate;
        for p in self.queue.drain(..).chain(self.io_queue.drain(..)) {
            answer(p.reply, None, Err(PoolError::Closed));
        }
        for w in self.workers.values_mut() {
            let _ = w.proc.signal(libc::SIGKILL);
        }
    }

    fn maybe_finish_graceful(&mut self) {
        if self.stop != Stop::Graceful || self.queued() > 0 {
            return;
        }
        let idle: Vec<u64> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready && w.idle())
            .map(|w| w.id)
            .collect();
        for id in idle {
            self.send_shutdown_to(id);
        }
    }

    // ---- workers --------------------------------------------------------

    fn ensure_workers(&mut self) {
        // A draining pool still replaces workers while there is work left
        // (a worker died and its queued calls came back).
        if self.killing() || (self.stopping() && self.queued() == 0) {
            return;
        }
        if !self.intensity.may_restart(Instant::now()) {
            return;
        }
        let active = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .count()
            + self.starting;
        for _ in active..self.cfg.workers {
            let id = self.next_worker_id;
            self.next_worker_id += 1;
            self.starting += 1;
            let cfg = self.cfg.clone();
            let exits = self.exits_tx.clone();
            let links = self.link_tx.clone();
            let internal = self.internal_tx.clone();
            tokio::spawn(async move {
                let result = conn::start(id, &cfg, exits, links).await;
                let _ = internal.send(Internal::Started { id, result });
            });
        }
    }

    fn on_internal(&mut self, ev: Internal) {
        match ev {
            Internal::Started { id, result } => self.on_started(id, result),
            Internal::Reaped { id } => self.on_reaped(id),
        }
    }

    fn on_started(&mut self, id: u64, result: std::io::Result<WorkerConn>) {
        self.starting -= 1;
        let pid = result.as_ref().map_or(0, |c| c.proc.pid);
        let early_closed = self.early_closed.remove(&id);
        let early_exit = self.early_exits.remove(&pid);
        if self.starting == 0 {
            // Whatever is left belongs to no worker that can still register.
            self.early_closed.clear();
            self.early_exits.clear();
        }
        let conn = match result {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "worker failed to start");
                let _ = self.events.send(PoolEvent::WorkerStartFailed {
                    error: e.to_string(),
                    at: Instant::now(),
                });
                if let Some(reply) = self.started_reply.take() {
                    let _ = reply.send(Err(PoolError::Startup(e.to_string())));
                    self.terminate();
                    return;
                }
                self.record_death();
                return;
            }
        };
        let pid = conn.proc.pid;
        if let Some(names) = &self.task_names {
            if *names != conn.tasks {
                tracing::error!(
                    pid,
                    "worker registered different tasks than its peers; killing it"
                );
                let _ = conn.proc.signal(libc::SIGKILL);
            }
        } else {
            self.task_names = Some(conn.tasks.clone());
            self.task_kinds.clone_from(&conn.kinds);
        }
        let worker = Worker {
            id,
            pid,
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
            status: None,
            link_closed: false,
            kill_at: None,
            state_before_death: WorkerState::Ready,
        };
        self.by_pid.insert(pid, id);
        self.workers.insert(id, worker);
        tracing::debug!(worker = id, pid, "worker ready");
        let _ = self.events.send(PoolEvent::WorkerReady {
            worker: id,
            pid,
            at: Instant::now(),
        });
        // It died before it was registered: its events, in their order.
        if let Some(error) = early_closed {
            self.on_link(LinkEvent::Closed { worker: id, error });
        }
        if let Some(status) = early_exit {
            self.on_exit(pid, status);
        }
        if self.killing() {
            if let Some(w) = self.workers.get(&id) {
                let _ = w.proc.signal(libc::SIGKILL);
            }
            return;
        }
        if self.stopping() {
            return;
        }
        if self.starting == 0 {
            if let Some(reply) = self.started_reply.take() {
                let _ = reply.send(Ok(self.task_names.clone().unwrap_or_default()));
            }
        }
    }

    /// Counts an unexpected death against the restart intensity (see
    /// `intensity`), and reports a delay it earns.
    fn record_death(&mut self) {
        let now = Instant::now();
        self.health.deaths.fetch_add(1, Ordering::Relaxed);
        let Some(delay) = self.intensity.record_death(now, &self.cfg) else {
            return;
        };
        if !self.health.degraded.swap(true, Ordering::Relaxed) {
            tracing::error!(
                deaths = self.intensity.recent_deaths(),
                window = ?self.cfg.restart_window,
                "workers die faster than the restart intensity allows; delaying restarts (degraded)"
            );
        }
        tracing::warn!(delay = ?delay, "worker restart delayed");
        self.health
            .restart_delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    fn check_healthy(&mut self, now: Instant) {
        if self.intensity.check_healthy(now, &self.cfg) {
            tracing::info!(
                "no worker death for {:?}: healthy again",
                self.cfg.healthy_after
            );
            self.health.degraded.store(false, Ordering::Relaxed);
            self.health.restart_delay_ms.store(0, Ordering::Relaxed);
        }
    }

    fn mark_dead(&mut self, id: u64) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == WorkerState::Stopping && w.status.is_none() {
            // We asked it to exit and it closed its pipe: let it finish
            // exiting, and kill it only if it lingers.
            w.kill_at = Some(Instant::now() + self.cfg.term_grace);
        } else if w.state != WorkerState::Dead && w.status.is_none() {
            // The link broke under a live worker: make sure it is gone.
            let _ = w.proc.signal(libc::SIGKILL);
        }
        if w.state != WorkerState::Dead {
            w.state_before_death = w.state;
        }
        w.state = WorkerState::Dead;
        self.ensure_workers();
    }

    fn on_exit(&mut self, pid: u32, status: ExitStatus) {
        let Some(&id) = self.by_pid.get(&pid) else {
            if self.starting > 0 {
                self.early_exits.insert(pid, status);
            }
            return;
        };
        self.by_pid.remove(&pid);
        if let Some(w) = self.workers.get_mut(&id) {
            w.status = Some(status);
            let eof = w.log_eof.take();
            // Nothing more goes to a dead worker: dropping the sender ends
            // the writer task, which closes the pipe. Its death is reported
            // after that, so a pool whose workers have all exited holds none
            // of their fds.
            w.tx = mpsc::unbounded_channel().0;
            let writer = w.writer.take();
            let internal = self.internal_tx.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + LOG_EOF_WAIT;
                if let Some(mut writer) = writer {
                    // A write blocked on a pipe a stray grandchild still
                    // holds would never end: abort it, closing the pipe.
                    if tokio::time::timeout_at(deadline, &mut writer)
                        .await
                        .is_err()
                    {
                        writer.abort();
                    }
                }
                if let Some(eof) = eof {
                    let _ = tokio::time::timeout_at(deadline, eof).await;
                }
                let _ = internal.send(Internal::Reaped { id });
            });
        }
        self.mark_dead(id);
    }

    fn on_reaped(&mut self, id: u64) {
        // Read every reply the worker wrote before charging its death: a
        // reply still in the pipe means that call finished.
        if let Some(w) = self.workers.get_mut(&id) {
            if !w.link_closed && !w.reap_waiting {
                w.reap_waiting = true;
                let internal = self.internal_tx.clone();
                tokio::spawn(async move {
                    // The pipe closes when the process is gone; this is a backstop.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = internal.send(Internal::Reaped { id });
                });
                return;
            }
        }
        let Some(mut w) = self.workers.remove(&id) else {
            return;
        };
        let status = w.status.unwrap_or(ExitStatus {
            code: None,
            signal: None,
            core_dumped: false,
            max_rss_kib: 0,
        });
        let esc_signalled = |e: &Option<Escalation>| e.is_some_and(|e| e.signalled());
        let io_signalled = w.io.values().any(|f| esc_signalled(&f.esc));
        let signalled = esc_signalled(&w.esc) || io_signalled;
        if blame::exit_was_asked(self.stopping(), w.state_before_death, signalled) {
            tracing::debug!(worker = id, pid = w.pid, %status, "worker exited");
        } else {
            tracing::warn!(worker = id, pid = w.pid, %status, "worker died");
            self.record_death();
        }
        // The call the worker was running, by its beacon, and the async call
        // being polled, are charged (see `blame`); the others had not
        // started, or had finished with their replies lost with the worker:
        // they go back to the queue (at-least-once), uncharged.
        let cpu_calls: Vec<u64> = w.inflight.iter().map(|f| f.id).collect();
        let blamed = blame::blame(&blame::Death {
            crashed: w.beacon.crashed_thread(),
            running: w.beacon.get(),
            polled: w.beacon.get_io(),
            cpu_calls: &cpu_calls,
            cpu_escalated: w.esc.is_some(),
            io_signalled,
        });
        let tail: Vec<String> = w
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let charge = blame::Charge {
            killing: self.killing(),
            pid: w.pid,
            status: &status,
            tail: &tail,
            memory_limit: self.cfg.memory_limit_bytes,
        };
        if let Some(head) = blamed.cpu.and_then(|pos| w.inflight.remove(pos)) {
            let err = charge.error(head.id, head.timeout, head.stall, w.esc);
            answer(head.reply, Some(w.pid), Err(err));
        }
        let mut back: Vec<InFlight> = w.inflight.drain(..).collect();
        w.io_timers.clear();
        for (id, f) in std::mem::take(&mut w.io) {
            if blamed.charges_io(id, esc_signalled(&f.esc)) {
                let err = charge.error(id, f.f.timeout, f.f.stall, f.esc);
                answer(f.f.reply, Some(w.pid), Err(err));
            } else {
                back.push(f.f);
            }
        }
        self.requeue_unstarted(back);
        // Reported once its calls are answered and its pidfd and beacon are
        // closed.
        let pid = w.pid;
        drop(w);
        let _ = self.events.send(PoolEvent::WorkerExited {
            worker: id,
            pid,
            status,
            at: Instant::now(),
        });
        self.ensure_workers();
    }

    /// Calls a worker held but never started go back to the front of the
    /// queue, in their order (or fail, when the pool is being killed or the
    /// call was cancelled meanwhile).
    fn requeue_unstarted(&mut self, calls: Vec<InFlight>) {
        for f in calls.into_iter().rev() {
            if self.killing() {
                answer(f.reply, None, Err(PoolError::Closed));
                continue;
            }
            if f.cancel_requested {
                answer(f.reply, None, Err(PoolError::Cancelled));
                continue;
            }
            let kind_queue = if self.is_io(f.task) {
                &mut self.io_queue
            } else {
                &mut self.queue
            };
            kind_queue.push_front(Pending {
                id: f.id,
                task: f.task,
                chunk: f.chunk,
                timeout: f.timeout,
                stall: f.stall,
                input: f.input,
                reply: f.reply,
            });
        }
    }

    /// The worker passed its soft memory limit while async calls run on its
    /// event loop: it gets nothing more, a replacement starts now, and it is
    /// stopped once it holds nothing (the recycling path).
    fn on_draining(&mut self, id: u64, reason: &str) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state != WorkerState::Ready {
            return;
        }
        tracing::info!(
            worker = id,
            pid = w.pid,
            reason,
            "worker drains to recycle itself"
        );
        w.state = WorkerState::Retiring;
        let idle = w.idle();
        self.ensure_workers();
        if idle {
            self.send_shutdown_to(id);
        }
    }

    /// The worker passed its soft memory limit and exits after this frame:
    /// the calls it holds never started; they go back to the queue now.
    fn on_retiring(&mut self, id: u64, reason: &str) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        tracing::info!(worker = id, pid = w.pid, reason, "worker recycles itself");
        w.state = WorkerState::Stopping;
        // It exits after that frame; one that does not is killed.
        w.kill_at = Some(Instant::now() + self.cfg.term_grace);
        // Its async calls were running; the worker drops them as it exits, so
        // they run again elsewhere (at-least-once, uncharged).
        let mut back: Vec<InFlight> = w.inflight.drain(..).collect();
        back.extend(take_io(w));
        self.requeue_unstarted(back);
        self.ensure_workers();
    }

    fn send_shutdown_to(&mut self, id: u64) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.send(&ToWorker::Shutdown, self.cfg.max_frame_bytes);
        w.state = WorkerState::Stopping;
        // It holds nothing: it should be gone at once; one that lingers (a
        // loop blocked in a call's drop, say) is killed.
        w.kill_at = Some(Instant::now() + self.cfg.term_grace.max(SHUTDOWN_GRACE));
    }

    // ---- frames ---------------------------------------------------------

    fn on_link(&mut self, ev: LinkEvent) {
        match ev {
            LinkEvent::Frame { worker, msg } => match msg {
                FromWorker::Done(replies) => self.on_done(worker, replies),
                FromWorker::Heartbeat { id: call } | FromWorker::Progress { id: call, .. } => {
                    if let Some(w) = self.workers.get_mut(&worker) {
                        if w.inflight.front().is_some_and(|f| f.id == call) {
                            w.last_beat = Instant::now();
                        } else if let Some(f) = w.io.get_mut(&call) {
                            f.last_beat = Instant::now();
                            if let Some(s) = f.f.stall {
                                w.io_timers.push(Reverse((f.last_beat + s, call)));
                            }
                        }
                    }
                }
                FromWorker::Retiring { reason } => self.on_retiring(worker, &reason),
                FromWorker::Draining { reason } => self.on_draining(worker, &reason),
                FromWorker::Ready { .. } => {
                    tracing::warn!(worker, "unexpected Ready from a running worker");
                }
            },
            LinkEvent::Closed { worker, error } => {
                if !self.workers.contains_key(&worker) && self.starting > 0 {
                    self.early_closed.insert(worker, error);
                    return;
                }
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.link_closed = true;
                    if w.reap_waiting {
                        let _ = self.internal_tx.send(Internal::Reaped { id: worker });
                    }
                    if let Some(e) = &error {
                        tracing::error!(worker, pid = w.pid, error = %e, "worker link broken");
                    }
                }
                self.mark_dead(worker);
            }
        }
    }

    fn on_done(&mut self, id: u64, replies: Vec<Reply>) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let now = Instant::now();
        let mut finished_head = 0u32;
        let first_since = w.head_since;
        for r in replies {
            let (f, esc) = if let Some(io) = w.io.remove(&r.id) {
                (io.f, io.esc)
            } else {
                let pos = if w.inflight.front().is_some_and(|f| f.id == r.id) {
                    0
                } else if let Some(p) = w.inflight.iter().position(|f| f.id == r.id) {
                    p
                } else {
                    continue;
                };
                let Some(f) = w.inflight.remove(pos) else {
                    continue;
                };
                let esc = w.esc.filter(|e| e.call == f.id);
                if pos == 0 {
                    w.head_since = now;
                    w.last_beat = now;
                    w.esc = None;
                    finished_head += 1;
                }
                (f, esc)
            };
            w.calls_done += 1;
            let result = match r.outcome {
                Outcome::Ok(bytes) => Ok(bytes),
                Outcome::Err(fail) if fail.kind == FailureKind::Cancelled => Err(
                    escalation::cancelled_error(f.cancel_requested, esc, f.timeout, f.stall, fail),
                ),
                Outcome::Err(fail) => Err(PoolError::Task(fail)),
            };
            // 0/0: the worker did not measure this (tiny) call.
            let usage = (r.wall_us > 0).then(|| CallUsage {
                cpu: Duration::from_micros(r.cpu_us),
                wall: Duration::from_micros(r.wall_us),
                max_poll: Duration::from_micros(r.max_poll_us),
            });
            let _ = f.reply.send(CallResult {
                pid: Some(w.pid),
                result,
                usage,
            });
        }
        if finished_head > 0 {
            let per_call =
                now.duration_since(first_since).as_secs_f64() * 1e6 / f64::from(finished_head);
            self.service_ewma_us = admission::smoothed(self.service_ewma_us, per_call);
        }
        if let Some(max) = self.cfg.max_tasks_per_worker {
            if w.state == WorkerState::Ready && w.calls_done >= max {
                w.state = WorkerState::Retiring;
                self.ensure_workers();
            }
        }
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        if w.state == WorkerState::Retiring && w.idle() {
            self.send_shutdown_to(id);
        }
    }

    // ---- timers ---------------------------------------------------------

    fn next_timer(&self) -> Option<Instant> {
        let mut next = self.intensity.next_timer(&self.cfg);
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        for w in self.workers.values() {
            if let Some(t) = w.kill_at.filter(|_| w.status.is_none()) {
                consider(t);
            }
            if w.state != WorkerState::Dead {
                if let Some(Reverse((t, _))) = w.io_timers.peek() {
                    consider(*t);
                }
            }
            if w.state == WorkerState::Dead {
                // Nothing escalates on a dead worker (on_timer skips it);
                // its reaping is an event of its own.
            } else if let Some(e) = w.esc {
                if e.stage != Stage::Kill {
                    consider(e.until);
                }
            } else {
                if let Some(head) = w.inflight.front() {
                    if let Some(t) = head.timeout {
                        consider(w.head_since + t);
                    }
                    if let Some(s) = head.stall {
                        consider(w.last_beat.max(w.head_since) + s);
                    }
                }
            }
        }
        next
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.check_healthy(now);
        if self.intensity.delay_over(now) {
            self.ensure_workers();
        }
        for w in self.workers.values_mut() {
            if w.kill_at.is_some_and(|t| now >= t) && w.status.is_none() {
                tracing::warn!(pid = w.pid, "worker did not exit after Shutdown; SIGKILL");
                let _ = w.proc.signal(libc::SIGKILL);
                w.kill_at = None;
            }
            if w.state == WorkerState::Dead {
                continue;
            }
            let mut due = Vec::new();
            while let Some(&Reverse((t, id))) = w.io_timers.peek() {
                if t > now {
                    break;
                }
                w.io_timers.pop();
                due.push(id);
            }
            due.sort_unstable();
            due.dedup();
            let mut cancel = Vec::new();
            let mut rearm = Vec::new();
            for id in due {
                // Entries of calls that finished, or whose deadline moved
                // (a newer heartbeat), are stale: nothing is due for them.
                let Some(f) = w.io.get_mut(&id) else {
                    continue;
                };
                match f.esc.as_mut() {
                    None => {
                        f.esc = Escalation::due(
                            id,
                            f.f.timeout,
                            f.f.stall,
                            f.since,
                            f.last_beat,
                            now,
                            &self.cfg,
                        );
                        if f.esc.is_some_and(|e| e.reason == Reason::Stall) {
                            tracing::warn!(
                                pid = w.pid,
                                call = id,
                                "async call stalled: no heartbeat"
                            );
                            cancel.push(id);
                        }
                    }
                    Some(e) => {
                        let in_poll = now >= e.until && w.beacon.get_io() != 0;
                        if let Some(sig) = e.tick_io(now, in_poll, &self.cfg) {
                            // No answer: the event loop is blocked (a task
                            // that does not yield). Only killing the worker
                            // frees it; its other async calls run again.
                            send_signal(&w.proc, w.pid, id, sig, "its event loop is blocked");
                        }
                    }
                }
                if let Some(e) = f.esc.filter(|e| e.stage != Stage::Kill) {
                    rearm.push((e.until, id));
                }
            }
            for (t, id) in rearm {
                w.io_timers.push(Reverse((t, id)));
            }
            for id in cancel {
                w.send(&ToWorker::Cancel { id }, self.cfg.max_frame_bytes);
            }
            match w.esc {
                None => {
                    let Some(head) = w.inflight.front() else {
                        continue;
                    };
                    let last_beat = w.last_beat.max(w.head_since);
                    w.esc = Escalation::due(
                        head.id,
                        head.timeout,
                        head.stall,
                        w.head_since,
                        last_beat,
                        now,
                        &self.cfg,
                    );
                    match w.esc.map(|e| e.reason) {
                        Some(Reason::Timeout) => {
                            tracing::warn!(pid = w.pid, call = head.id, "call past its deadline");
                        }
                        Some(Reason::Stall) => {
                            tracing::warn!(
                                pid = w.pid,
                                call = head.id,
                                "call stalled: no heartbeat"
                            );
                            w.send(&ToWorker::Cancel { id: head.id }, self.cfg.max_frame_bytes);
                        }
                        _ => {}
                    }
                }
                Some(mut e) if now >= e.until => {
                    let running = w.beacon.get();
                    let view = CpuView {
                        running,
                        deadline_us: (running == e.call)
                            .then(|| w.beacon.cpu_deadline())
                            .flatten(),
                        now_us: jobvisor_worker::monotonic_us(),
                    };
                    if let Some(sig) = e.tick_cpu(now, view, &self.cfg) {
                        let why = "no answer after the soft deadline";
                        send_signal(&w.proc, w.pid, e.call, sig, why);
                    }
                    w.esc = Some(e);
                }
                Some(_) => {}
            }
        }
    }

    // ---- dispatch -------------------------------------------------------

    fn dispatch(&mut self) {
        self.dispatch_cpu();
        self.dispatch_io();
    }

    /// Fills every worker's event loop, up to `io_concurrency_per_worker`
    /// async calls each, least loaded first.
    fn dispatch_io(&mut self) {
        if self.io_queue.is_empty() {
            return;
        }
        let per_worker = self.cfg.io_concurrency_per_worker.max(1);
        let max_calls = self.cfg.max_tasks_per_worker;
        let room = |w: &Worker| {
            per_worker
                .saturating_sub(w.io.len())
                .min(w.recycle_room(max_calls))
        };
        let ready: Vec<(usize, u64)> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .map(|w| (room(w), w.id))
            .filter(|(r, _)| *r > 0)
            .collect();
        if ready.is_empty() {
            return;
        }
        let now = Instant::now();
        for (id, share) in admission::io_shares(ready, self.io_queue.len()) {
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            let mut ids = Vec::with_capacity(share);
            for p in self.io_queue.drain(..share) {
                ids.push(p.id);
                let id = p.id;
                let f = IoFlight {
                    f: InFlight::sent(p),
                    since: now,
                    last_beat: now,
                    esc: None,
                };
                if let Some(t) = f.f.timeout {
                    w.io_timers.push(Reverse((now + t, id)));
                }
                if let Some(s) = f.f.stall {
                    w.io_timers.push(Reverse((now + s, id)));
                }
                w.io.insert(id, f);
            }
            let calls = ids.iter().filter_map(|i| w.io.get(i)).map(|f| &f.f);
            send_run(&mut self.frame_buf, &w.tx, calls, self.cfg.max_frame_bytes);
        }
    }

    fn dispatch_cpu(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let window = admission::window(self.service_ewma_us, self.cfg.window);
        let max_calls = self.cfg.max_tasks_per_worker;
        // Room per worker: the window, and never past its recycling budget.
        let room = |w: &Worker| {
            window
                .saturating_sub(w.inflight.len())
                .min(w.recycle_room(max_calls))
        };
        let mut ready: Vec<(u64, usize, usize)> = self
            .workers
            .values()
            .filter(|w| w.state == WorkerState::Ready)
            .map(|w| (w.id, room(w), w.inflight.len()))
            .filter(|&(_, room, _)| room > 0)
            .collect();
        if ready.is_empty() {
            return;
        }
        // Least loaded first (see `admission`).
        ready.sort_by_key(|&(_, _, load)| load);
        let ready: Vec<(u64, usize)> = ready.into_iter().map(|(id, room, _)| (id, room)).collect();
        let mut added: HashMap<u64, usize> = HashMap::new();
        for id in admission::cpu_rounds(&ready, self.queue.len()) {
            let Some(w) = self.workers.get_mut(&id) else {
                continue;
            };
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            if w.inflight.is_empty() {
                w.head_since = Instant::now();
                w.last_beat = w.head_since;
            }
            w.inflight.push_back(InFlight::sent(p));
            *added.entry(id).or_insert(0) += 1;
        }
        for (id, n) in added {
            self.send_calls(id, n);
        }
    }

    /// Sends the last `n` CPU calls of worker `id`.
    fn send_calls(&mut self, id: u64, n: usize) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        let start = w.inflight.len() - n;
        send_run(
            &mut self.frame_buf,
            &w.tx,
            w.inflight.range(start..),
            self.cfg.max_frame_bytes,
        );
    }
}

/// Encodes `calls` into as few `Run` frames as the frame limit allows and
/// queues them for the worker's writer.
fn send_run<'a>(
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
            tracing::error!(error = %e, "cannot encode a Run frame");
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

/// How long a worker told to stop while idle gets before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Sends the signal an escalation of call `call` moved on to, saying `why`.
fn send_signal(proc: &ProcHandle, pid: u32, call: u64, sig: Signal, why: &str) {
    match sig {
        Signal::TermGroup => {
            tracing::warn!(pid, call, "{why}; SIGTERM to the worker's group");
            let _ = proc.signal_group(libc::SIGTERM);
        }
        Signal::Kill => {
            tracing::warn!(pid, call, "still alive after SIGTERM; SIGKILL");
            let _ = proc.signal(libc::SIGKILL);
            let _ = proc.signal_group(libc::SIGKILL);
        }
    }
}

/// Takes a worker's async calls (they go back to the queue).
fn take_io(w: &mut Worker) -> Vec<InFlight> {
    w.io_timers.clear();
    w.io.drain().map(|(_, f)| f.f).collect()
}
