//! The dispatcher: one actor that owns all pool state (the queue, the workers,
//! the calls in flight) and is fed by channels. Nothing else mutates it.
//!
//! Per loop turn it takes what arrived (commands, frames, exit reports, timer
//! expiries), then fills every worker's window from the queue, coalescing the
//! calls for one worker into one frame.
//!
//! The actor does the I/O and the bookkeeping; each decision is a pure rule
//! in a module of its own, unit-tested there. Lowest first:
//! - `admission`: how many calls each worker is sent (CPU window, async
//!   slots, recycling budget).
//! - `escalation`: when a call past its deadline, stalled or cancelled moves
//!   from its soft deadline (the task sees `ctx.is_cancelled()`) to SIGTERM of
//!   the worker's process group after `cancel_grace`, to SIGKILL after
//!   `term_grace`.
//! - `blame`: who is charged when a worker dies: the call it was running
//!   fails with [`PoolError::WorkerDied`] (or `TimedOut` if we were stopping
//!   it); the calls queued behind it never started and go back to the front
//!   of the pool's queue.
//! - `liveness`: when a worker that holds calls has been silent (no frame,
//!   no heartbeat) for `liveness_timeout`: it is killed and replaced.
//! - `intensity`: restart intensity: too many deaths delay restarts, from
//!   `restart_backoff` doubling up to `restart_backoff_max` (30 s by
//!   default); the queue is kept meanwhile. The pool never turns "broken".
//! - `starting`: events of workers that died before they registered.
//! - `call`, `worker`: the records the actor keeps of calls and workers.
//! - `lifecycle`, `timers`: the actor's handlers for worker lives (start,
//!   exit, reap, retire) and for its timer, beside the commands, frames and
//!   dispatch loops here.

use std::cmp::Reverse;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_proto::worker::{FailureKind, FromWorker, Outcome, Reply, TaskKind, ToWorker};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::time::sleep_until;

mod admission;
mod blame;
mod call;
mod escalation;
mod intensity;
mod lifecycle;
mod liveness;
mod starting;
mod timers;
mod worker;

use crate::config::PoolConfig;
use crate::conn::{LinkEvent, WorkerConn};
use crate::error::PoolError;
use crate::output::CallJobs;
use crate::types::{CallUsage, Health, PoolEvent, WorkerInfo, WorkerState};
use call::{answer, InFlight, IoFlight};
pub(crate) use call::{CallResult, Channels, Command, Pending, StartedReply};
use escalation::Escalation;
use intensity::RestartIntensity;
use starting::Starting;
use worker::{send_run, Worker};

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

/// The actor's state. More than ~15 fields because it is the one owner of
/// everything a pool holds: the two queues, the workers and their start-up,
/// the shutdown, and the channels its own tasks report on; each decision
/// over them lives in a submodule of its own.
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
    /// Workers being started, and their events that came before them.
    starting: Starting,
    next_worker_id: u64,
    /// Unexpected worker deaths (crashes, failed starts) and the restart
    /// delay they earned.
    intensity: RestartIntensity,
    health: Arc<Health>,
    /// Which job each call runs, for the log drains of new workers.
    call_jobs: Arc<CallJobs>,
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

impl Dispatcher {
    pub(crate) fn spawn(
        cfg: PoolConfig,
        channels: Channels,
        events: broadcast::Sender<PoolEvent>,
        started: StartedReply,
        health: Arc<Health>,
        call_jobs: Arc<CallJobs>,
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
            starting: Starting::default(),
            next_worker_id: 1,
            intensity: RestartIntensity::default(),
            health,
            call_jobs,
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
        // One timer for the silence of every worker (see `liveness`): it
        // stays registered across loop turns, where a deadline in
        // `next_timer` would be a new timer at each turn.
        let mut liveness_tick = tokio::time::interval(self.cfg.heartbeat_interval);
        liveness_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_look = Instant::now();
        loop {
            let timer = self.next_timer();
            let held = self.any_held();
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
                _ = liveness_tick.tick(), if held => {
                    let now = Instant::now();
                    self.on_liveness_tick(last_look, now);
                    last_look = now;
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
        self.stopping()
            && self.workers.is_empty()
            && self.starting.count() == 0
            && self.queued() == 0
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

    // ---- frames ---------------------------------------------------------

    fn on_link(&mut self, ev: LinkEvent) {
        if let LinkEvent::Frame { worker, .. } = &ev {
            if let Some(w) = self.workers.get_mut(worker) {
                w.last_heard = Instant::now();
            }
        }
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
                // Alive: noted above, as for every frame.
                FromWorker::Pulse => {}
                FromWorker::Ready { .. } => {
                    tracing::warn!(worker, "unexpected Ready from a running worker");
                }
            },
            LinkEvent::Closed { worker, error } => {
                if !self.workers.contains_key(&worker) && self.starting.count() > 0 {
                    self.starting.link_closed(worker, error);
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
            .filter(|w| w.takes_work() && !w.holds_suspect())
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
            w.sending_work(now);
            let mut ids = Vec::with_capacity(share);
            for _ in 0..share {
                // A suspect goes alone (see `admission::may_take`).
                if !self.io_queue.front().is_some_and(|p| w.may_take(p)) {
                    break;
                }
                let Some(p) = self.io_queue.pop_front() else {
                    break;
                };
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
            .filter(|w| w.takes_work() && !w.holds_suspect())
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
            let Some(front) = self.queue.front() else {
                break;
            };
            // A suspect goes alone (see `admission::may_take`).
            if !w.may_take(front) {
                continue;
            }
            let Some(p) = self.queue.pop_front() else {
                break;
            };
            if w.inflight.is_empty() {
                w.head_since = Instant::now();
                w.last_beat = w.head_since;
                w.sending_work(w.head_since);
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

/// How long a worker told to stop while idle gets before it is killed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
