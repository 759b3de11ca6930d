//! The dispatcher's handling of worker lives: starting workers and
//! registering them, exits and reaping (applying the `blame` rule and the
//! restart intensity), recycling and retirement.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_proto::worker::ToWorker;
use tokio::sync::mpsc;

use super::call::{answer, InFlight, Pending};
use super::escalation::Escalation;
use super::worker::{take_io, Worker};
use super::{blame, liveness, Dispatcher, Internal, SHUTDOWN_GRACE};
use crate::conn::{self, LinkEvent, WorkerConn, LOG_EOF_WAIT};
use crate::error::PoolError;
use crate::types::{PoolEvent, WorkerState};

impl Dispatcher {
    pub(super) fn ensure_workers(&mut self) {
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
            + self.starting.count();
        for _ in active..self.cfg.workers {
            let id = self.next_worker_id;
            self.next_worker_id += 1;
            self.starting.begin();
            let cfg = self.cfg.clone();
            let exits = self.exits_tx.clone();
            let links = self.link_tx.clone();
            let internal = self.internal_tx.clone();
            let call_jobs = self.call_jobs.clone();
            tokio::spawn(async move {
                let result = conn::start(id, &cfg, exits, links, call_jobs).await;
                let _ = internal.send(Internal::Started { id, result });
            });
        }
    }

    pub(super) fn on_internal(&mut self, ev: Internal) {
        match ev {
            Internal::Started { id, result } => self.on_started(id, result),
            Internal::Reaped { id } => self.on_reaped(id),
        }
    }

    pub(super) fn on_started(&mut self, id: u64, result: std::io::Result<WorkerConn>) {
        let pid = result.as_ref().map_or(0, |c| c.proc.pid);
        let early = self.starting.finish(id, pid);
        let conn = match result {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "worker failed to start");
                let _ = self.events.send(PoolEvent::WorkerStartFailed {
                    error: e.to_string(),
                    at: Instant::now(),
                });
                if let Some(reply) = self.started_reply.take() {
                    let _ = reply.send(Err(PoolError::Startup(Arc::new(e))));
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
        let worker = Worker::new(id, conn);
        self.by_pid.insert(pid, id);
        self.workers.insert(id, worker);
        tracing::debug!(worker = id, pid, "worker ready");
        let _ = self.events.send(PoolEvent::WorkerReady {
            worker: id,
            pid,
            at: Instant::now(),
        });
        // It died before it was registered: its events, in their order.
        if let Some(error) = early.closed {
            self.on_link(LinkEvent::Closed { worker: id, error });
        }
        if let Some(status) = early.exit {
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
        if self.starting.count() == 0 {
            if let Some(reply) = self.started_reply.take() {
                let _ = reply.send(Ok(self.task_names.clone().unwrap_or_default()));
            }
        }
    }

    /// Counts an unexpected death against the restart intensity (see
    /// `intensity`), and reports a delay it earns.
    pub(super) fn record_death(&mut self) {
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

    pub(super) fn check_healthy(&mut self, now: Instant) {
        if self.intensity.check_healthy(now, &self.cfg) {
            tracing::info!(
                "no worker death for {:?}: healthy again",
                self.cfg.healthy_after
            );
            self.health.degraded.store(false, Ordering::Relaxed);
            self.health.restart_delay_ms.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn mark_dead(&mut self, id: u64) {
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

    pub(super) fn on_exit(&mut self, pid: u32, status: ExitStatus) {
        let Some(&id) = self.by_pid.get(&pid) else {
            // Maybe a worker still starting: kept until it registers.
            self.starting.exited(pid, status);
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

    pub(super) fn on_reaped(&mut self, id: u64) {
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
        let mut status = w.status.unwrap_or(ExitStatus {
            code: None,
            signal: None,
            core_dumped: false,
            max_rss_kib: 0,
        });
        // The worker's own peak, not what exec carried over from its parent.
        status.max_rss_kib = w.beacon.own_peak_kib(status.max_rss_kib);
        let esc_signalled = |e: &Option<Escalation>| e.is_some_and(|e| e.signalled());
        let io_signalled = w.io.values().any(|f| esc_signalled(&f.esc));
        let signalled = esc_signalled(&w.esc) || io_signalled;
        let asked = blame::exit_was_asked(self.stopping(), w.state_before_death, signalled);
        if asked {
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
            unresponsive: w.unresponsive,
        });
        let tail: Vec<String> = w
            .tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let panic = w.beacon.panic_message();
        let unresponsive = w
            .unresponsive
            .then(|| liveness::cause(self.cfg.liveness_timeout));
        let charge = blame::Charge {
            killing: self.killing(),
            pid: w.pid,
            status: &status,
            tail: &tail,
            panic: panic.as_deref(),
            memory_limit: self.cfg.memory_limit_bytes,
            unresponsive: unresponsive.as_deref(),
        };
        let mut charged = 0usize;
        if let Some(head) = blamed.cpu.and_then(|pos| w.inflight.remove(pos)) {
            let err = charge.error(head.id, head.timeout, head.stall, w.esc);
            answer(head.reply, Some(w.pid), Err(err));
            charged += 1;
        }
        let mut back: Vec<InFlight> = w.inflight.drain(..).collect();
        w.io_timers.clear();
        for (id, f) in std::mem::take(&mut w.io) {
            if blamed.charges_io(id, esc_signalled(&f.esc)) {
                let err = charge.error(id, f.f.timeout, f.f.stall, f.esc);
                answer(f.f.reply, Some(w.pid), Err(err));
                charged += 1;
            } else {
                back.push(f.f);
            }
        }
        if blame::charged_nobody(asked, charged) {
            // The beacon named no call (a task wrote over it, or the worker
            // died between a call and its reply): each call it held is a
            // suspect, charged once it has seen too many such deaths.
            let max = self.cfg.max_deaths_per_call;
            let (charged, again): (Vec<InFlight>, Vec<InFlight>) = back
                .into_iter()
                .map(|mut f| {
                    f.deaths += 1;
                    f
                })
                .partition(|f| f.deaths >= max);
            for f in charged {
                answer(f.reply, Some(w.pid), Err(charge.unexplained(max)));
            }
            back = again;
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
    pub(super) fn requeue_unstarted(&mut self, calls: Vec<InFlight>) {
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
                deaths: f.deaths,
            });
        }
    }

    /// The worker passed its soft memory limit while async calls run on its
    /// event loop: it gets nothing more, a replacement starts now, and it is
    /// stopped once it holds nothing (the recycling path).
    pub(super) fn on_draining(&mut self, id: u64, reason: &str) {
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
    pub(super) fn on_retiring(&mut self, id: u64, reason: &str) {
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

    pub(super) fn send_shutdown_to(&mut self, id: u64) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.send(&ToWorker::Shutdown, self.cfg.max_frame_bytes);
        w.state = WorkerState::Stopping;
        // It holds nothing: it should be gone at once; one that lingers (a
        // loop blocked in a call's drop, say) is killed.
        w.kill_at = Some(Instant::now() + self.cfg.term_grace.max(SHUTDOWN_GRACE));
    }
}
