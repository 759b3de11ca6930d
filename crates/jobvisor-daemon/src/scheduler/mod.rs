//! The scheduler: one actor that owns every unfinished job. It is fed by the
//! control server (commands) and by its own helper tasks (store writes
//! finished, attempts finished), and drives the pool.
//!
//! Ordering: ready jobs wait per queue, highest priority first and FIFO (job
//! id) within a priority; the best head among the queues under their cap runs
//! next. Delayed and retrying jobs wait in a time-ordered set, on the
//! monotonic clock (their durable `run_at_ms` is wall time); jobs with
//! unfinished dependencies wait on them. At most `max_inflight` attempts are
//! handed to the pool at once, so priorities and cancels stay the scheduler's.
//! CPU jobs and I/O jobs (async tasks) are two lanes with separate ready sets
//! and separate caps, so neither kind can starve the other: a thousand
//! waiting downloads do not delay a hash, and a queue of hashes does not hold
//! back a download.
//!
//! Durability: a submit is answered after its store commit. Attempt starts are
//! written without waiting (a crash before that commit leaves the job
//! `queued`, so it runs again: at-least-once). Attempt ends and job ends are
//! written, then waiters are answered. A terminal state's completion
//! notifications (`notify.rs`) are decided here and handed over, without
//! waiting, once it has committed.
//!
//! # Layout
//! Lowest first; the decisions are pure and unit-tested where they live.
//! - `reply`: the reply channel of a command and the errors a client sees.
//! - `job`: an unfinished job (plain data), its lane, the clock.
//! - `admission`: whether a submit is accepted, and the jobs it becomes.
//! - `queues`: where waiting jobs wait, which runs next, what runs.
//! - `deps`: who waits for whom; whether a job's dependencies let it run.
//! - `waiters`: clients waiting for jobs, the shutdown waiting for quiet.
//! - `stats`: counters, usage per task, job counts, events.
//! - The actor's `impl` (this file: the loop and its dispatch), split by
//!   concern: `intake` (client commands), `attempt` (running and ending
//!   attempts, writing states), `recover` (loading the store at start).
//! - `tests` (unit tests only): the actor driven by hand on the real store,
//!   with no pool, its internal messages delivered in the order a test picks.

mod admission;
mod attempt;
mod deps;
mod intake;
mod job;
mod queues;
mod recover;
mod reply;
mod stats;
#[cfg(test)]
mod tests;
mod waiters;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jobvisor_pool::{CallUsage, Pool, PoolConfig, PoolError};
use jobvisor_proto::control::{ControlError, JobRecord, JobSpec, JobState, Stats, Submitted};
use jobvisor_store::{Finish, StoreError, StoreHandle};
use jobvisor_worker::Registry;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::errors::Chain;
use crate::notify::Notifier;
use crate::pipeline::InputError;

pub(crate) use job::now_ms;
pub(crate) use reply::Reply;
pub(crate) use stats::Counters;

use job::Job;

/// Reports of the actor's helper tasks that wait to be read. Every helper
/// serves one client request (a connection has one at a time, and at most
/// `limits.max_pending_requests` wait for the actor), one attempt (at most
/// the lanes' caps) or one store write, so the helpers are bounded by those;
/// this bounds the buffer between them and the actor.
const INTERNAL_CAPACITY: usize = 4096;

/// What the control server asks of the scheduler.
#[derive(Debug)]
pub(crate) enum SchedCmd {
    Submit {
        specs: Vec<JobSpec>,
        reply: Reply<Vec<Submitted>>,
    },
    Cancel {
        id: u64,
        reply: Reply<()>,
    },
    Retry {
        id: u64,
        reply: Reply<()>,
    },
    Wait {
        ids: Vec<u64>,
        timeout_ms: Option<u64>,
        reply: Reply<Vec<JobRecord>>,
    },
    Stats {
        reply: oneshot::Sender<Stats>,
    },
    /// Stop taking submits and starting attempts; answered when nothing runs.
    Drain {
        reply: oneshot::Sender<()>,
    },
    /// Answered when every store write issued so far has committed and no attempt runs.
    Flush {
        reply: oneshot::Sender<()>,
    },
    /// New queue caps (SIGHUP).
    Reload {
        config: Box<Config>,
    },
    /// The jobs of these pool calls (`None`: a call of no running job).
    JobsOfCalls {
        calls: Vec<u64>,
        reply: oneshot::Sender<Vec<Option<u64>>>,
    },
}

/// What the scheduler's helper tasks report back.
#[derive(Debug)]
enum Internal {
    Inserted {
        jobs: Vec<Job>,
        result: Result<Vec<Submitted>, ControlError>,
        dep_states: HashMap<u64, JobState>,
        reply: Reply<Vec<Submitted>>,
    },
    AttemptDone {
        id: u64,
        attempt: u32,
        pid: Option<u32>,
        usage: Option<CallUsage>,
        result: Result<Vec<u8>, PoolError>,
    },
    Written {
        id: u64,
        terminal: bool,
    },
    Revive {
        record: Box<JobRecord>,
        reply: Reply<()>,
    },
    /// A queued job's cancel has been written (or could not be).
    Cancelled {
        id: u64,
        next: Finish,
        result: Result<(), StoreError>,
        reply: Reply<()>,
    },
    /// A finished job's retry has been written (or could not be).
    Revived {
        job: Box<Job>,
        result: Result<(), StoreError>,
        reply: Reply<()>,
    },
    InputBuilt {
        id: u64,
        input: Result<String, InputError>,
    },
}

/// The actor. Its state is grouped by concern (see the modules).
pub(crate) struct Scheduler {
    cfg: Config,
    /// The workers; `None` only in the actor's unit tests (`tests`), which
    /// drive it by hand and start no attempt.
    pool: Option<Pool>,
    /// The pool's configuration (its lane caps, its worker count).
    pool_cfg: PoolConfig,
    store: StoreHandle,
    registry: Arc<Registry>,
    jobs: HashMap<u64, Job>,
    queues: queues::Queues,
    load: queues::Load,
    deps: deps::Deps,
    waiters: waiters::Waiters<Reply<Vec<JobRecord>>>,
    quiesce: waiters::Quiesce,
    report: stats::Report,
    /// The helper tasks' reports. Bounded: a helper awaits room (it is a
    /// task of its own, never the actor nor the pool's completion path),
    /// so nothing is dropped, and the actor reads them before commands.
    internal_tx: mpsc::Sender<Internal>,
    internal_rx: Option<mpsc::Receiver<Internal>>,
    /// Completion notifications, handed over once a terminal state commits.
    notifier: Notifier,
    /// Finished jobs whose retry is being written.
    reviving: HashSet<u64>,
    /// Clients waiting for the cancel of a running job, answered once its
    /// attempt's end has committed, and the further clients cancelling a
    /// job whose cancel is being written (answered with that one).
    cancels: HashMap<u64, Vec<Reply<()>>>,
}

impl Scheduler {
    pub(crate) fn new(
        cfg: Config,
        pool: Pool,
        store: StoreHandle,
        registry: Arc<Registry>,
        counters: Arc<Counters>,
        events: Arc<crate::events::EventFeed>,
        notifier: Notifier,
    ) -> Self {
        let pool_cfg = pool.config().clone();
        Self::with_pool(
            cfg,
            Some(pool),
            pool_cfg,
            store,
            registry,
            counters,
            events,
            notifier,
        )
    }

    /// [`Scheduler::new`] with the pool's parts apart (`pool` is `None` in
    /// the actor's unit tests).
    #[allow(clippy::too_many_arguments)]
    fn with_pool(
        cfg: Config,
        pool: Option<Pool>,
        pool_cfg: PoolConfig,
        store: StoreHandle,
        registry: Arc<Registry>,
        counters: Arc<Counters>,
        events: Arc<crate::events::EventFeed>,
        notifier: Notifier,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::channel(INTERNAL_CAPACITY);
        let caps = job::lane_caps(pool_cfg.workers, &pool_cfg);
        Self {
            cfg,
            pool,
            pool_cfg,
            store,
            registry,
            jobs: HashMap::new(),
            queues: queues::Queues::default(),
            load: queues::Load::new(caps),
            deps: deps::Deps::default(),
            waiters: waiters::Waiters::default(),
            quiesce: waiters::Quiesce::default(),
            report: stats::Report::new(counters, events),
            internal_tx,
            internal_rx: Some(internal_rx),
            notifier,
            reviving: HashSet::new(),
            cancels: HashMap::new(),
        }
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<SchedCmd>) {
        let mut internal = self.internal_rx.take().expect("run is called once");
        let mut prune = tokio::time::interval(Duration::from_secs(
            self.cfg.retention.prune_interval_secs.max(1),
        ));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep = self.tick();
            tokio::select! {
                biased;
                Some(ev) = internal.recv() => self.on_internal(ev),
                cmd = commands.recv() => match cmd {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                () = tokio::time::sleep_until(sleep.unwrap_or_else(tokio::time::Instant::now)), if sleep.is_some() => {}
                _ = prune.tick() => self.prune(),
            }
        }
    }

    /// Between two messages: the delayed jobs due by now (monotonic
    /// clock) become ready, attempts start, waits past their timeout are
    /// answered; returns when the next of those timers is due.
    fn tick(&mut self) -> Option<tokio::time::Instant> {
        let now = tokio::time::Instant::now();
        let jobs = &self.jobs;
        self.queues.promote_due(now, |id| jobs.get(&id));
        self.dispatch();
        self.check_idle();
        for (ids, reply) in self.waiters.expired(now) {
            self.answer_wait(ids, reply);
        }
        match (self.queues.next_due(), self.waiters.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn on_command(&mut self, cmd: SchedCmd) {
        match cmd {
            SchedCmd::Submit { specs, reply } => self.submit(specs, reply),
            SchedCmd::Cancel { id, reply } => self.cancel(id, reply),
            SchedCmd::Retry { id, reply } => self.retry(id, reply),
            SchedCmd::Wait {
                ids,
                timeout_ms,
                reply,
            } => self.wait(ids, timeout_ms, reply),
            SchedCmd::Stats { reply } => self.stats(reply),
            SchedCmd::JobsOfCalls { calls, reply } => {
                let mut of: HashMap<u64, Option<u64>> = calls.iter().map(|&c| (c, None)).collect();
                for (&id, job) in &self.jobs {
                    if let Some(slot) = job.call.and_then(|c| of.get_mut(&c)) {
                        *slot = Some(id);
                    }
                }
                let _ = reply.send(calls.iter().map(|c| of[c]).collect());
            }
            SchedCmd::Drain { reply } => self.quiesce.drain(reply),
            SchedCmd::Flush { reply } => self.quiesce.flush(reply),
            SchedCmd::Reload { config } => {
                tracing::info!(queues = ?config.queues, "configuration reloaded");
                // The pool was resized to this many workers: the caps follow.
                self.load
                    .set_caps(job::lane_caps(config.worker_count(), &self.pool_cfg));
                self.cfg.queues = config.queues;
            }
        }
    }

    fn on_internal(&mut self, ev: Internal) {
        match ev {
            Internal::Inserted {
                jobs,
                result,
                dep_states,
                reply,
            } => self.on_inserted(jobs, result, &dep_states, reply),
            Internal::AttemptDone {
                id,
                attempt,
                pid,
                usage,
                result,
            } => {
                if let (Some(u), Some(job)) = (usage, self.jobs.get(&id)) {
                    self.report.record(&job.task, &u);
                }
                self.on_attempt_done(id, attempt, pid, result)
            }
            Internal::Written { id, terminal } => {
                self.quiesce.pending_writes -= 1;
                if terminal {
                    self.answer_waiters(id);
                }
            }
            Internal::Revive { record, reply } => self.revive(*record, reply),
            Internal::Cancelled {
                id,
                next,
                result,
                reply,
            } => self.on_cancelled(id, next, result, reply),
            Internal::Revived { job, result, reply } => self.on_revived(*job, result, reply),
            Internal::InputBuilt { id, input } => self.on_input_built(id, input),
        }
    }

    /// Answers the waits that were waiting for job `id` only, now that its
    /// terminal state has committed.
    fn answer_waiters(&mut self, id: u64) {
        for (ids, reply) in self.waiters.job_done(id) {
            self.answer_wait(ids, reply);
        }
    }

    fn prune(&mut self) {
        let r = &self.cfg.retention;
        let before = now_ms().saturating_sub(r.max_age_secs.saturating_mul(1000));
        let keep = r.max_jobs;
        let store = self.store.clone();
        tokio::spawn(async move {
            match store.prune(before, keep).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(pruned = n, "pruned finished jobs"),
                Err(e) => tracing::warn!(error = %Chain(&e), "pruning failed"),
            }
        });
    }

    fn check_idle(&mut self) {
        for w in self.quiesce.check(self.load.inflight()) {
            let _ = w.send(());
        }
    }
}
