//! The actor's attempts: placing jobs to wait or run, handing attempts to
//! the pool, applying `policy`'s decision when one ends, and writing job
//! states (a terminal state's notifications go out once it committed).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jobvisor_pool::{CallOptions, PoolError};
use jobvisor_proto::control::{AttemptOutcome, ControlError, ErrorKind, JobState, Payload};
use jobvisor_store::{Finish, StoreError};
use tokio::time::Instant;

use super::job::{self, now_ms, Lane};
use super::reply::{err, store_err, Reply};
use super::{Internal, Scheduler};
use crate::errors::{chain, Chain};
use crate::notify::Notice;
use crate::pipeline::{self, InputError};
use crate::policy::{self, JobFacts};

type WriteFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

impl Scheduler {
    /// Puts a job whose dependencies are done where it waits: building its
    /// pipeline input first, else delayed or ready.
    pub(super) fn place(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id).filter(|j| !j.cancelling) else {
            return;
        };
        if let Some(template) = &job.template {
            // A pipeline step whose sources are done: fetch their outputs and
            // build its input first; it comes back here when that is done.
            let refs = job.input_from.clone();
            let template = template.clone();
            let store = self.store.clone();
            let tx = self.internal_tx.clone();
            let max = self.cfg.limits.max_input_bytes;
            tokio::spawn(async move {
                let input = pipeline::build_input(&store, &template, &refs, max).await;
                let _ = tx.send(Internal::InputBuilt { id, input }).await;
            });
            return;
        }
        let wall = now_ms();
        if job.run_at_ms > wall {
            let at = job::due_at(job.run_at_ms, wall, Instant::now());
            self.queues.delay(at, id);
        } else {
            self.queues.push(job);
        }
    }

    pub(super) fn unplace(&mut self, id: u64) {
        if let Some(job) = self.jobs.get(&id) {
            self.queues.remove(job);
        }
    }

    pub(super) fn dispatch(&mut self) {
        if self.quiesce.draining {
            return;
        }
        // The lanes fill independently: I/O jobs never wait behind CPU jobs
        // for a pool slot, nor the reverse (each has its own capacity in
        // the workers: the CPU thread, the event loop).
        for lane in Lane::ALL {
            while self.load.has_room(lane) {
                let cfg = &self.cfg;
                let Some(id) = self.queues.pick(lane, |q| cfg.queue_cap(q), &self.load) else {
                    break;
                };
                if !self.start(id) {
                    return;
                }
            }
        }
    }

    /// Starts an attempt. Returns false when the pool is saturated (the job
    /// goes back to the front of its queue).
    fn start(&mut self, id: u64) -> bool {
        let Some(job) = self.jobs.get_mut(&id) else {
            return true;
        };
        let Some(pool) = &self.pool else {
            // No workers (the actor's unit tests): nothing starts.
            self.queues.push(job);
            return false;
        };
        let opts = CallOptions {
            timeout: job.timeout_ms.map(Duration::from_millis),
            stall_timeout: job.stall_timeout_ms.map(Duration::from_millis),
            // The worker's output lines name the job (README: log lines).
            job: Some(id),
        };
        let handle = match pool.try_submit_raw(&job.task, job.input.as_ref().clone(), opts) {
            Ok(h) => h,
            Err(e) => match policy::on_refusal(&e) {
                // Saturated or closing: the job waits at the front of its queue.
                None => {
                    self.queues.push(job);
                    return false;
                }
                // The call can never be taken: no attempt (none ran, and
                // none was written), the job fails once, durably.
                Some(next) => {
                    tracing::warn!(job = id, error = %Chain(&e), "the pool refused the job");
                    self.end_job(id, next, None);
                    return true;
                }
            },
        };
        job.attempts += 1;
        job.set_state(JobState::Running);
        job.call = Some(handle.id());
        let attempt = job.attempts;
        let task = job.task.clone();
        self.load.started(job.lane, &job.queue);
        self.report
            .emit(id, task, JobState::Running, Some(attempt), None, None);
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        self.quiesce.pending_writes += 1;
        let started = now_ms();
        // Queued now (the store keeps call order), awaited in the task.
        let write = store.start_attempt(id, attempt, None, started);
        tokio::spawn(async move {
            if let Err(e) = write.await {
                tracing::error!(job = id, attempt, error = %Chain(&e), "cannot record the attempt start");
            }
            let _ = tx
                .send(Internal::Written {
                    id,
                    terminal: false,
                })
                .await;
        });
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = handle.report().await;
            let _ = tx
                .send(Internal::AttemptDone {
                    id,
                    attempt,
                    pid: r.pid,
                    usage: r.usage,
                    result: r.result,
                })
                .await;
        });
        true
    }

    pub(super) fn on_attempt_done(
        &mut self,
        id: u64,
        attempt: u32,
        pid: Option<u32>,
        result: Result<Vec<u8>, PoolError>,
    ) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if job.state == JobState::Running && job.call.is_some() {
            self.load.finished(job.lane, &job.queue);
        }
        job.call = None;
        self.report
            .counters
            .attempts_finished
            .fetch_add(1, Ordering::Relaxed);
        let span = tracing::info_span!("job", id, attempt, worker_pid = pid);
        let _enter = span.enter();
        let d = match result {
            Ok(bytes) => {
                let output = if job.json {
                    self.registry
                        .native_output_to_json(&job.task, &bytes)
                        .map(Payload::Json)
                } else {
                    Ok(Payload::Native(bytes))
                };
                policy::on_output(output, self.cfg.limits.max_output_bytes)
            }
            Err(e) => {
                let facts = JobFacts {
                    failures: job.failures,
                    crashes: job.crashes,
                    max_attempts: job.max_attempts,
                    max_crashes: job.max_crashes,
                    backoff_base_ms: job.backoff_base_ms,
                    backoff_max_ms: job.backoff_max_ms,
                    cancel_requested: job.cancel_requested,
                };
                policy::on_failure(facts, &e, now_ms(), policy::jitter_seed())
            }
        };
        match d.charge {
            policy::Charge::Failure => job.failures += 1,
            policy::Charge::Crash => job.crashes += 1,
            policy::Charge::None => {}
        }
        let (outcome, next) = (d.outcome, d.next);
        match &next {
            Finish::Succeeded { .. } => tracing::debug!("attempt succeeded"),
            other => {
                // Display, not Debug: `outcome=crashed signal=SIGKILL ...`.
                let shown = jobvisor_proto::json::Outcome::from(&outcome);
                tracing::info!(state = other.state().as_str(), outcome = %shown, "attempt ended")
            }
        }
        drop(_enter);
        self.end_job(id, next, Some((attempt, outcome, pid)));
    }

    /// Applies a job's next state in memory and writes it.
    pub(super) fn end_job(
        &mut self,
        id: u64,
        next: Finish,
        attempt: Option<(u32, AttemptOutcome, Option<u32>)>,
    ) {
        let state = next.state();
        // Decided while the job is in memory; sent once its state has committed.
        let notice = self.notice(id, state);
        let released = self.settle(id, &next, attempt.as_ref().map(|(n, _, pid)| (*n, *pid)));
        let terminal = state.is_terminal();
        let at = now_ms();
        // Queued now, in call order (after this attempt's start), awaited in the task.
        // Its notifications are written in the same transaction.
        let rows = notice.as_ref().map(Notice::deliveries).unwrap_or_default();
        let write: WriteFuture = match attempt {
            Some((n, outcome, pid)) => Box::pin(
                self.store
                    .finish_attempt(id, n, pid, outcome, at, next, rows),
            ),
            None => Box::pin(self.store.finish_job(id, at, next, rows)),
        };
        let cancels = self.cancels.remove(&id).unwrap_or_default();
        self.spawn_state_write(id, write, terminal, notice, (state, cancels));
        self.release(id, state, released);
    }

    /// The notifications due when job `id` reaches `state`.
    pub(super) fn notice(&self, id: u64, state: JobState) -> Option<Notice> {
        self.jobs.get(&id).and_then(|j| {
            let url = j.notify_url.as_deref();
            self.notifier.notice(&self.cfg, id, &j.queue, url, state)
        })
    }

    /// Applies a job's next state in memory (its event, its place; a
    /// terminal job leaves memory); returns the jobs that waited for it.
    /// `attempt`: the number and worker pid of the attempt that ended.
    pub(super) fn settle(
        &mut self,
        id: u64,
        next: &Finish,
        attempt: Option<(u32, Option<u32>)>,
    ) -> Vec<u64> {
        let state = next.state();
        let mut released = Vec::new();
        if let Some(task) = self.jobs.get(&id).map(|j| j.task.clone()) {
            let error = match next {
                Finish::Retry { error, .. }
                | Finish::Revive { error, .. }
                | Finish::Failed { error }
                | Finish::Cancelled { error }
                | Finish::Dead { error } => Some(error.clone()),
                Finish::Requeue | Finish::Succeeded { .. } => None,
            };
            let (n, pid) = attempt.map_or((None, None), |(n, pid)| (Some(n), pid));
            self.report.emit(id, task, state, n, pid, error);
        }
        if let Some(job) = self.jobs.get_mut(&id) {
            job.set_state(state);
            match next {
                Finish::Retry { run_at_ms, .. } | Finish::Revive { run_at_ms, .. } => {
                    job.run_at_ms = *run_at_ms;
                    let at = job::due_at(*run_at_ms, now_ms(), Instant::now());
                    self.queues.delay(at, id);
                }
                Finish::Requeue => self.queues.push(job),
                _ => {
                    // It no longer waits for its dependencies: one that ends
                    // later must not place or fail it (it may have been
                    // retried and be running by then).
                    if let Some(job) = self.jobs.remove(&id) {
                        self.deps.unwait(id, &job.after);
                    }
                    self.deps.remember(id, state);
                    released = self.deps.released(id);
                }
            }
        }
        released
    }

    /// The jobs that waited for job `id`, now `state`: placed when it
    /// succeeded and they wait for nothing else, failed when it did not.
    /// A job whose cancel is being written is left to the cancel, which
    /// the client was promised: it ends cancelled once that commits, or,
    /// if it cannot, fails then for this dependency (`on_cancelled`).
    pub(super) fn release(&mut self, id: u64, state: JobState, released: Vec<u64>) {
        for d in released {
            if state == JobState::Succeeded {
                let Some(dep) = self.jobs.get_mut(&d) else {
                    continue;
                };
                dep.deps_left = dep.deps_left.saturating_sub(1);
                if dep.deps_left == 0 {
                    self.place(d);
                }
            } else if self.jobs.get(&d).is_some_and(|j| !j.cancelling) {
                self.unplace(d);
                self.end_job(
                    d,
                    Finish::Failed {
                        error: format!("dependency {id} {}", state.as_str()),
                    },
                    None,
                );
            }
        }
    }

    pub(super) fn on_input_built(&mut self, id: u64, input: Result<String, InputError>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        // The step fails with the whole story in its error.
        let native = input.map_err(|e| chain(&e)).and_then(|text| {
            self.registry
                .json_to_native(&job.task, &text)
                .map_err(|e| format!("the pipeline input does not fit: {}", chain(&e)))
        });
        match native {
            Ok(native) => {
                job.input = Arc::new(native);
                job.template = None;
                self.place(id);
            }
            // A cancel being written wins; if it fails, placing the job
            // again builds its input again.
            Err(_) if job.cancelling => {}
            Err(why) => {
                self.unplace(id);
                self.end_job(id, Finish::Failed { error: why }, None);
            }
        }
    }

    pub(super) fn spawn_finish_job(
        &mut self,
        id: u64,
        next: Finish,
        terminal: bool,
        notice: Option<Notice>,
    ) {
        let next_state = next.state();
        let rows = notice.as_ref().map(Notice::deliveries).unwrap_or_default();
        let write = Box::pin(self.store.finish_job(id, now_ms(), next, rows));
        self.spawn_state_write(id, write, terminal, notice, (next_state, Vec::new()));
    }

    /// Awaits a queued job-state write in a task: a notification goes out
    /// only after it committed, and the clients that asked to cancel the
    /// job while it ran (`cancels`, with the state written) are answered
    /// then; then the scheduler hears `Written`.
    fn spawn_state_write(
        &mut self,
        id: u64,
        write: WriteFuture,
        terminal: bool,
        notice: Option<Notice>,
        cancels: (JobState, Vec<Reply<()>>),
    ) {
        self.quiesce.pending_writes += 1;
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = write.await;
            match &result {
                Err(e) => {
                    tracing::error!(job = id, error = %Chain(e), "cannot record the job's state")
                }
                Ok(()) => {
                    if let Some(n) = notice {
                        n.send();
                    }
                }
            }
            let (state, replies) = cancels;
            for reply in replies {
                let _ = reply.send(cancel_answer(id, state, &result));
            }
            let _ = tx.send(Internal::Written { id, terminal }).await;
        });
    }
}

/// The answer to a cancel of a running job, once the end of its attempt
/// (in `state`) has been written with `result`: "ok" only when the job
/// ended cancelled and that committed.
fn cancel_answer(
    id: u64,
    state: JobState,
    result: &Result<(), StoreError>,
) -> Result<(), ControlError> {
    match result {
        Err(e) => Err(store_err(e)),
        Ok(()) if state == JobState::Cancelled => Ok(()),
        Ok(()) => Err(err(
            ErrorKind::Conflict,
            format!(
                "job {id} ended {} before the cancel took effect",
                state.as_str()
            ),
        )),
    }
}
