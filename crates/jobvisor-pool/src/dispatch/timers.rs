//! The dispatcher's timer: what is due next (restart delay, healthy
//! window, lingering workers, call escalations), and moving each due
//! escalation on by the `escalation` rules, sending the signals they ask for;
//! and its liveness tick, killing workers silent for too long by the
//! `liveness` rule.

use std::cmp::Reverse;
use std::time::Instant;

use jobvisor_proto::worker::ToWorker;

use super::escalation::{CpuView, Escalation, Reason, Signal, Stage};
use super::liveness::{self, Silence};
use super::worker::Worker;
use super::Dispatcher;
use crate::config::PoolConfig;
use crate::launch::ProcHandle;
use crate::types::WorkerState;

impl Dispatcher {
    pub(super) fn next_timer(&self) -> Option<Instant> {
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

    pub(super) fn on_timer(&mut self) {
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
            tick_io_calls(w, now, &self.cfg);
            tick_cpu_call(w, now, &self.cfg);
        }
    }
}

impl Dispatcher {
    /// Whether a worker holds calls it may fall silent on: the liveness
    /// tick runs only then.
    pub(super) fn any_held(&self) -> bool {
        self.workers.values().any(Worker::may_fall_silent)
    }

    /// The liveness tick at `now`, the previous one having been at
    /// `last_look`: kills each worker silent for `liveness_timeout` while
    /// it held calls (see `liveness`).
    pub(super) fn on_liveness_tick(&mut self, last_look: Instant, now: Instant) {
        let listening = liveness::listening(last_look, now, self.cfg.heartbeat_interval);
        for w in self.workers.values_mut() {
            let holds = w.may_fall_silent();
            match liveness::judge(
                holds,
                w.last_heard,
                now,
                self.cfg.liveness_timeout,
                listening,
            ) {
                Silence::Fine => {}
                Silence::NotListening => {
                    tracing::debug!(
                        pid = w.pid,
                        "the dispatcher was not listening: silence clock restarted"
                    );
                    w.last_heard = now;
                }
                Silence::Unresponsive => {
                    tracing::warn!(
                        pid = w.pid,
                        silent = ?self.cfg.liveness_timeout,
                        "worker holds calls and sent nothing for liveness_timeout; SIGKILL"
                    );
                    w.unresponsive = true;
                    let _ = w.proc.signal(libc::SIGKILL);
                    let _ = w.proc.signal_group(libc::SIGKILL);
                }
            }
        }
    }
}

/// Moves on the escalations of worker `w`'s async calls that are due at
/// `now`, and starts those whose timeout or stall deadline passed.
fn tick_io_calls(w: &mut Worker, now: Instant, cfg: &PoolConfig) {
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
                f.esc = Escalation::due(id, f.f.timeout, f.f.stall, f.since, f.last_beat, now, cfg);
                if f.esc.is_some_and(|e| e.reason == Reason::Stall) {
                    tracing::warn!(pid = w.pid, call = id, "async call stalled: no heartbeat");
                    cancel.push(id);
                }
            }
            Some(e) => {
                let in_poll = now >= e.until && w.beacon.get_io() != 0;
                if let Some(sig) = e.tick_io(now, in_poll, cfg) {
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
        w.send(&ToWorker::Cancel { id }, cfg.max_frame_bytes);
    }
}

/// Moves on the escalation of worker `w`'s running CPU call if it is due
/// at `now`, or starts one if its timeout or stall deadline passed.
fn tick_cpu_call(w: &mut Worker, now: Instant, cfg: &PoolConfig) {
    match w.esc {
        None => {
            let Some(head) = w.inflight.front() else {
                return;
            };
            let last_beat = w.last_beat.max(w.head_since);
            w.esc = Escalation::due(
                head.id,
                head.timeout,
                head.stall,
                w.head_since,
                last_beat,
                now,
                cfg,
            );
            match w.esc.map(|e| e.reason) {
                Some(Reason::Timeout) => {
                    tracing::warn!(pid = w.pid, call = head.id, "call past its deadline");
                }
                Some(Reason::Stall) => {
                    tracing::warn!(pid = w.pid, call = head.id, "call stalled: no heartbeat");
                    w.send(&ToWorker::Cancel { id: head.id }, cfg.max_frame_bytes);
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
            if let Some(sig) = e.tick_cpu(now, view, cfg) {
                let why = "no answer after the soft deadline";
                send_signal(&w.proc, w.pid, e.call, sig, why);
            }
            w.esc = Some(e);
        }
        Some(_) => {}
    }
}

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
