//! The scheduler: one actor that owns every unfinished job. It is fed by the
//! control server (commands) and by its own helper tasks (store writes
//! finished, attempts finished), and drives the pool.
//!
//! Ordering: ready jobs wait per queue, highest priority first and FIFO (job
//! id) within a priority; the best head among the queues under their cap runs
//! next. Delayed and retrying jobs wait in a time-ordered set; jobs with
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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobvisor_pool::{CallOptions, Pool, PoolError};
use jobvisor_proto::control::{
    AttemptOutcome, ControlError, ErrorKind, Event, EventKind, JobRecord, JobSpec, JobState,
    Payload, Stats, Submitted, TaskUsage,
};
use jobvisor_store::{Finish, NewJob, StoreError, StoreHandle};
use jobvisor_worker::{ConvertError, Registry};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::notify::{Notice, Notifier};
use crate::pipeline;
use crate::policy::{self, JobFacts};

/// How many finished job states the scheduler remembers for dependency checks.
const TERMINAL_MEMORY: usize = 1_000_000;

type Reply<T> = oneshot::Sender<Result<T, ControlError>>;
type WriteFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StoreError>> + Send>>;

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
        usage: Option<jobvisor_pool::CallUsage>,
        result: Result<Vec<u8>, PoolError>,
    },
    Written {
        id: u64,
        terminal: bool,
    },
    WaitTimeout {
        waiter: u64,
    },
    Revive {
        record: Box<JobRecord>,
        reply: Reply<()>,
    },
    InputBuilt {
        id: u64,
        input: Result<String, String>,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct Job {
    id: u64,
    task: String,
    /// [`CPU`] or [`IO`], from the task's kind (looked up once, here).
    lane: usize,
    queue: String,
    priority: i32,
    max_attempts: u32,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
    timeout_ms: Option<u64>,
    stall_timeout_ms: Option<u64>,
    run_at_ms: u64,
    /// Native input, as workers take it (empty until a pipeline step's
    /// sources are in).
    input: Arc<Vec<u8>>,
    /// A pipeline step's JSON input before the sources' outputs are merged in;
    /// `None` once merged (or for ordinary jobs).
    template: Option<String>,
    /// Where a pipeline step takes input from (resolved to ids once stored).
    input_from: Vec<jobvisor_proto::control::InputRef>,
    /// The client sent JSON: the output is stored as JSON too.
    json: bool,
    /// Attempts started (numbering).
    attempts: u32,
    /// Charged to the attempt budget.
    failures: u32,
    /// Charged to the crash budget.
    crashes: u32,
    state: JobState,
    after: Vec<u64>,
    deps_left: usize,
    call: Option<u64>,
    cancel_requested: bool,
    /// The job's own completion webhook.
    notify_url: Option<String>,
}

impl Job {
    /// A job as the store holds it: the input converted to the native
    /// encoding, budgets counted from its attempts. Fails (with the job's id)
    /// when its task no longer accepts its input.
    fn from_record(r: JobRecord, registry: &Registry) -> Result<Job, (u64, ConvertError)> {
        let pipeline = !r.input_from.is_empty();
        let (input, json) = match &r.input {
            Some(Payload::Json(_)) if pipeline => (Vec::new(), true),
            Some(Payload::Json(text)) => (
                registry
                    .json_to_native(&r.task, text)
                    .map_err(|e| (r.id, e))?,
                true,
            ),
            Some(Payload::Native(bytes)) => (bytes.clone(), false),
            None => (Vec::new(), false),
        };
        let spent = policy::spent(r.attempts.iter().map(|a| &a.outcome));
        Ok(Job {
            id: r.id,
            lane: lane_of(registry, &r.task),
            failures: spent.failures,
            crashes: spent.crashes,
            attempts: r.attempts.len() as u32,
            task: r.task,
            queue: r.queue,
            priority: r.priority,
            max_attempts: r.max_attempts,
            backoff_base_ms: r.backoff_base_ms,
            backoff_max_ms: r.backoff_max_ms,
            timeout_ms: r.timeout_ms,
            stall_timeout_ms: r.stall_timeout_ms,
            run_at_ms: r.run_at_ms,
            input: Arc::new(input),
            template: match &r.input {
                Some(Payload::Json(t)) if pipeline => Some(t.clone()),
                _ => None,
            },
            input_from: r.input_from,
            json,
            state: r.state,
            after: r.after,
            deps_left: 0,
            call: None,
            cancel_requested: false,
            notify_url: r.notify_url,
        })
    }
}

impl Job {
    /// Moves the job to `next`, which must be a legal transition
    /// ([`JobState::can_become`]).
    fn set_state(&mut self, next: JobState) {
        debug_assert!(
            self.state.can_become(next),
            "job {}: illegal transition {:?} -> {next:?}",
            self.id,
            self.state
        );
        self.state = next;
    }
}

struct Waiter {
    ids: Vec<u64>,
    remaining: HashSet<u64>,
    reply: Reply<Vec<JobRecord>>,
}

/// Time spent by the attempts of one task.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    attempts: u64,
    cpu_us: u64,
    wall_us: u64,
    max_poll_us: u64,
    /// Attempts with a poll of `policy::LONG_POLL_US` or more.
    long_poll_attempts: u64,
}

/// Counters shared with whoever reports them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) attempts_finished: AtomicU64,
    pub(crate) worker_restarts: AtomicU64,
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn err(kind: ErrorKind, message: impl Into<String>) -> ControlError {
    ControlError {
        kind,
        message: message.into(),
    }
}

fn store_err(e: &StoreError) -> ControlError {
    match e {
        StoreError::NotFound(id) => err(ErrorKind::NotFound, format!("no job {id}")),
        other => err(ErrorKind::Storage, other.to_string()),
    }
}

pub(crate) struct Scheduler {
    cfg: Config,
    pool: Pool,
    store: StoreHandle,
    registry: Arc<Registry>,
    jobs: HashMap<u64, Job>,
    /// Ready jobs per lane ([`CPU`] and [`IO`]), per queue.
    ready: [ReadySet; 2],
    delayed: BTreeSet<(u64, u64)>,
    dependents: HashMap<u64, Vec<u64>>,
    running_per_queue: HashMap<String, usize>,
    /// Attempts in the pool, per lane.
    inflight: [usize; 2],
    /// Cap of `inflight`, per lane: a few pool windows of CPU calls, and the
    /// workers' event-loop slots (plus a little to keep them full) of I/O calls.
    max_inflight: [usize; 2],
    reserved: usize,
    terminal: HashMap<u64, JobState>,
    terminal_order: VecDeque<u64>,
    waiters: HashMap<u64, Waiter>,
    waiting_on: HashMap<u64, Vec<u64>>,
    next_waiter: u64,
    pending_writes: usize,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
    flush_waiters: Vec<oneshot::Sender<()>>,
    counters: Arc<Counters>,
    /// Job events for `jobvisor events --follow` subscribers.
    events: tokio::sync::broadcast::Sender<Event>,
    /// CPU and wall time per task name since start ("which kind is it?").
    usage: HashMap<String, Usage>,
    started: Instant,
    recovered: u64,
    internal_tx: mpsc::UnboundedSender<Internal>,
    internal_rx: Option<mpsc::UnboundedReceiver<Internal>>,
    /// Completion notifications, handed over once a terminal state commits.
    notifier: Notifier,
}

/// Ready jobs of one lane: per queue, best first (highest priority, then
/// oldest id).
type ReadySet = BTreeMap<String, BTreeSet<(Reverse<i32>, u64)>>;

/// Index of the CPU lane in per-lane arrays.
const CPU: usize = 0;
/// Index of the I/O lane (async tasks).
const IO: usize = 1;

/// The in-pool caps of the two lanes for `workers` workers: a few CPU
/// windows, and the event loops' slots plus a little to keep them full.
fn lane_caps(workers: usize, pool: &jobvisor_pool::PoolConfig) -> [usize; 2] {
    [
        workers * 16,
        workers * (pool.io_concurrency_per_worker + 16),
    ]
}

/// The lane of a task: [`IO`] for async tasks, [`CPU`] for the rest.
fn lane_of(registry: &Registry, task: &str) -> usize {
    if registry.kind(task) == Some(jobvisor_worker::TaskKind::Io) {
        IO
    } else {
        CPU
    }
}

impl Scheduler {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        cfg: Config,
        pool: Pool,
        store: StoreHandle,
        registry: Arc<Registry>,
        counters: Arc<Counters>,
        events: tokio::sync::broadcast::Sender<Event>,
        notifier: Notifier,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let max_inflight = lane_caps(pool.config().workers, pool.config());
        Self {
            cfg,
            pool,
            store,
            registry,
            jobs: HashMap::new(),
            ready: [BTreeMap::new(), BTreeMap::new()],
            delayed: BTreeSet::new(),
            dependents: HashMap::new(),
            running_per_queue: HashMap::new(),
            inflight: [0, 0],
            max_inflight,
            reserved: 0,
            terminal: HashMap::new(),
            terminal_order: VecDeque::new(),
            waiters: HashMap::new(),
            waiting_on: HashMap::new(),
            next_waiter: 0,
            pending_writes: 0,
            draining: false,
            drain_waiters: Vec::new(),
            flush_waiters: Vec::new(),
            counters,
            usage: HashMap::new(),
            events,
            started: Instant::now(),
            recovered: 0,
            internal_tx,
            internal_rx: Some(internal_rx),
            notifier,
        }
    }

    /// Loads every unfinished job from the store (after `recover` re-queued
    /// the attempts a dead daemon left running).
    pub(crate) async fn recover(&mut self) -> Result<u64, StoreError> {
        let records = self.store.recover(now_ms()).await?;
        let ids: HashSet<u64> = records.iter().map(|r| r.id).collect();
        let mut dep_states = HashMap::new();
        for r in &records {
            for d in &r.after {
                if !ids.contains(d) && !dep_states.contains_key(d) {
                    let state = self.store.get(*d).await?.map(|j| j.state);
                    dep_states.insert(*d, state.unwrap_or(JobState::Failed));
                }
            }
        }
        let n = records.len() as u64;
        let mut jobs = Vec::with_capacity(records.len());
        for r in records {
            // Used only if the job cannot resume (None unless someone asked).
            let url = r.notify_url.as_deref();
            let state = JobState::Failed;
            debug_assert!(r.state.can_become(state), "job {}: {:?}", r.id, r.state);
            let notice = self
                .notifier
                .notice(&self.cfg, r.id, &r.task, &r.queue, url, state);
            match Job::from_record(r, &self.registry) {
                Ok(job) => jobs.push(job),
                Err((id, e)) => {
                    let error = format!("cannot resume: {e}");
                    self.spawn_finish_job(id, Finish::Failed { error }, true, notice);
                }
            }
        }
        self.admit(jobs, &dep_states);
        self.recovered = n;
        Ok(n)
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<SchedCmd>) {
        let mut internal = self.internal_rx.take().expect("run is called once");
        let mut prune = tokio::time::interval(Duration::from_secs(
            self.cfg.retention.prune_interval_secs.max(1),
        ));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.promote_due();
            self.dispatch();
            self.check_idle();
            let next = self.delayed.first().map(|&(t, _)| t);
            let sleep = next.map(|t| {
                let wait = t.saturating_sub(now_ms());
                tokio::time::Instant::now() + Duration::from_millis(wait)
            });
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

    // ---- commands -------------------------------------------------------

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
            SchedCmd::Drain { reply } => {
                self.draining = true;
                self.drain_waiters.push(reply);
            }
            SchedCmd::Flush { reply } => self.flush_waiters.push(reply),
            SchedCmd::Reload { config } => {
                tracing::info!(queues = ?config.queues, "configuration reloaded");
                // The pool was resized to this many workers: the caps follow.
                self.max_inflight = lane_caps(config.worker_count(), self.pool.config());
                self.cfg.queues = config.queues;
            }
        }
    }

    fn submit(&mut self, specs: Vec<JobSpec>, reply: Reply<Vec<Submitted>>) {
        if self.draining {
            let _ = reply.send(Err(err(
                ErrorKind::ShuttingDown,
                "the daemon is shutting down; no new jobs",
            )));
            return;
        }
        match self.prepare(specs) {
            Ok((jobs, new_jobs, unknown_deps)) => {
                self.reserved += jobs.len();
                let store = self.store.clone();
                let tx = self.internal_tx.clone();
                tokio::spawn(async move {
                    let mut dep_states = HashMap::new();
                    let mut result = Ok(());
                    for d in unknown_deps {
                        match store.get(d).await {
                            Ok(Some(rec)) => {
                                dep_states.insert(d, rec.state);
                            }
                            Ok(None) => {
                                result = Err(err(
                                    ErrorKind::BadRequest,
                                    format!("dependency on a missing job {d}"),
                                ));
                                break;
                            }
                            Err(e) => {
                                result = Err(store_err(&e));
                                break;
                            }
                        }
                    }
                    let result = match result {
                        Ok(()) => store.insert_all(new_jobs).await.map_err(|e| store_err(&e)),
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(Internal::Inserted {
                        jobs,
                        result,
                        dep_states,
                        reply,
                    });
                });
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Validates a submit; nothing is changed when it fails.
    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        specs: Vec<JobSpec>,
    ) -> Result<(Vec<Job>, Vec<NewJob>, Vec<u64>), ControlError> {
        let limits = &self.cfg.limits;
        if specs.is_empty() {
            return Err(err(ErrorKind::BadRequest, "submit of no jobs"));
        }
        if specs.len() > limits.max_batch_jobs {
            return Err(err(
                ErrorKind::LimitReached,
                format!(
                    "{} jobs in one submit exceed limits.max_batch_jobs ({})",
                    specs.len(),
                    limits.max_batch_jobs
                ),
            ));
        }
        let open = self.jobs.len() + self.reserved;
        if open + specs.len() > limits.max_queued_jobs {
            return Err(err(
                ErrorKind::LimitReached,
                format!(
                    "queue full: {open} jobs are unfinished, {} more would exceed limits.max_queued_jobs ({})",
                    specs.len(),
                    limits.max_queued_jobs
                ),
            ));
        }
        let now = now_ms();
        let mut jobs = Vec::with_capacity(specs.len());
        let mut new_jobs = Vec::with_capacity(specs.len());
        let mut unknown_deps = Vec::new();
        let many = specs.len() > 1;
        for (i, spec) in specs.into_iter().enumerate() {
            let at = |m: String| {
                if many {
                    format!("job #{} of the batch: {m}", i + 1)
                } else {
                    m
                }
            };
            if spec.input.len() > limits.max_input_bytes {
                return Err(err(
                    ErrorKind::LimitReached,
                    at(format!(
                        "input of {} bytes exceeds limits.max_input_bytes ({})",
                        spec.input.len(),
                        limits.max_input_bytes
                    )),
                ));
            }
            check_ranges(&spec).map_err(|m| err(ErrorKind::BadRequest, at(m)))?;
            let pipeline = !spec.input_from.is_empty();
            if pipeline {
                pipeline::check_refs(&spec.input_from, i, &spec.input)
                    .map_err(|m| err(ErrorKind::BadRequest, at(m)))?;
                if !self.registry.contains(&spec.task) {
                    return Err(err(
                        ErrorKind::UnknownTask,
                        at(format!("unknown task {:?}", spec.task)),
                    ));
                }
                for r in &spec.input_from {
                    if let jobvisor_proto::control::JobRef::Id(d) = r.job {
                        if !self.jobs.contains_key(&d) && !self.terminal.contains_key(&d) {
                            unknown_deps.push(d);
                        }
                    }
                }
            }
            let (native, json) = match &spec.input {
                // A pipeline step's input is complete only once its sources
                // finished: it is converted (and checked) then.
                Payload::Json(_) if pipeline => (Ok(Vec::new()), true),
                Payload::Json(text) => (self.registry.json_to_native(&spec.task, text), true),
                Payload::Native(bytes) => (
                    self.registry
                        .check_native_input(&spec.task, bytes)
                        .map(|()| bytes.clone()),
                    false,
                ),
            };
            let native = native.map_err(|e| match e {
                ConvertError::UnknownTask { .. } => err(ErrorKind::UnknownTask, at(e.to_string())),
                other => err(ErrorKind::BadInput, at(other.to_string())),
            })?;
            let mut template = match (&spec.input, pipeline) {
                (Payload::Json(t), true) => Some(t.clone()),
                _ => None,
            };
            let queue = spec.queue.clone().unwrap_or_else(|| "default".into());
            if !self.cfg.knows_queue(&queue) {
                return Err(err(
                    ErrorKind::BadRequest,
                    at(format!(
                        "unknown queue {queue:?} (configure it under [queues.{queue}])"
                    )),
                ));
            }
            let max_attempts = spec
                .max_attempts
                .unwrap_or(self.cfg.jobs.max_attempts)
                .max(1);
            let backoff_base_ms = spec
                .backoff_base_ms
                .unwrap_or(self.cfg.jobs.backoff_base_ms);
            let backoff_max_ms = spec
                .backoff_max_ms
                .unwrap_or(self.cfg.jobs.backoff_max_ms)
                .max(backoff_base_ms);
            for d in &spec.after {
                if !self.jobs.contains_key(d) && !self.terminal.contains_key(d) {
                    unknown_deps.push(*d);
                }
            }
            let run_at_ms = now.saturating_add(spec.delay_ms.unwrap_or(0));
            new_jobs.push(NewJob {
                task: spec.task.clone(),
                input: spec.input,
                queue: queue.clone(),
                priority: spec.priority,
                max_attempts,
                backoff_base_ms,
                backoff_max_ms,
                timeout_ms: spec.timeout_ms,
                stall_timeout_ms: spec.stall_timeout_ms,
                input_from: spec.input_from.clone(),
                run_at_ms,
                created_ms: now,
                after: spec.after.clone(),
                key: spec.key,
                notify_url: spec.notify_url.clone(),
            });
            jobs.push(Job {
                id: 0,
                lane: lane_of(&self.registry, &spec.task),
                task: spec.task,
                queue,
                priority: spec.priority,
                max_attempts,
                backoff_base_ms,
                backoff_max_ms,
                timeout_ms: spec.timeout_ms,
                stall_timeout_ms: spec.stall_timeout_ms,
                run_at_ms,
                input: Arc::new(native),
                template: template.take(),
                input_from: spec.input_from.clone(),
                json,
                attempts: 0,
                failures: 0,
                crashes: 0,
                state: JobState::Queued,
                after: spec.after,
                deps_left: 0,
                call: None,
                cancel_requested: false,
                notify_url: spec.notify_url,
            });
        }
        Ok((jobs, new_jobs, unknown_deps))
    }

    fn on_inserted(
        &mut self,
        mut jobs: Vec<Job>,
        result: Result<Vec<Submitted>, ControlError>,
        dep_states: &HashMap<u64, JobState>,
        reply: Reply<Vec<Submitted>>,
    ) {
        self.reserved -= jobs.len();
        let submitted = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let ids: Vec<u64> = submitted.iter().map(|s| s.id).collect();
        let mut fresh = Vec::new();
        for (job, s) in jobs.iter_mut().zip(&submitted) {
            if s.duplicate {
                continue;
            }
            job.id = s.id;
            // As the store did: batch positions become ids and dependencies.
            for r in &mut job.input_from {
                if let jobvisor_proto::control::JobRef::Batch(b) = r.job {
                    r.job = jobvisor_proto::control::JobRef::Id(ids[b as usize]);
                }
                if let jobvisor_proto::control::JobRef::Id(d) = r.job {
                    if !job.after.contains(&d) {
                        job.after.push(d);
                    }
                }
            }
            fresh.push(job.clone());
        }
        self.counters
            .submitted
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        self.admit(fresh, dep_states);
        let _ = reply.send(Ok(submitted));
    }

    /// Puts new (or recovered) jobs where they belong.
    fn admit(&mut self, jobs: Vec<Job>, dep_states: &HashMap<u64, JobState>) {
        for job in &jobs {
            self.jobs.insert(job.id, job.clone());
            self.emit(job.id, job.task.clone(), job.state, None, None, None);
        }
        let mut failed = Vec::new();
        for job in jobs {
            let mut left = 0;
            let mut broken = None;
            for d in &job.after {
                if self.jobs.contains_key(d) {
                    left += 1;
                    self.dependents.entry(*d).or_default().push(job.id);
                } else {
                    let state = self.terminal.get(d).or_else(|| dep_states.get(d)).copied();
                    match state {
                        Some(JobState::Succeeded) => {}
                        Some(s) => broken = Some((*d, s.as_str())),
                        None => broken = Some((*d, "missing")),
                    }
                }
            }
            if let Some((d, s)) = broken {
                failed.push((job.id, format!("dependency {d} is {s}")));
                continue;
            }
            if let Some(j) = self.jobs.get_mut(&job.id) {
                j.deps_left = left;
            }
            if left == 0 {
                self.place(job.id);
            }
        }
        for (id, why) in failed {
            self.end_job(id, Finish::Failed { error: why }, None);
        }
    }

    fn place(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        if let Some(template) = &job.template {
            // A pipeline step whose sources are done: fetch their outputs and
            // build its input first; it comes back here when that is done.
            let refs = job.input_from.clone();
            let template = template.clone();
            let store = self.store.clone();
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                let input = pipeline::build_input(&store, &template, &refs).await;
                let _ = tx.send(Internal::InputBuilt { id, input });
            });
            return;
        }
        if job.run_at_ms > now_ms() {
            self.delayed.insert((job.run_at_ms, id));
        } else {
            self.ready[job.lane]
                .entry(job.queue.clone())
                .or_default()
                .insert((Reverse(job.priority), id));
        }
    }

    fn unplace(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        self.delayed.remove(&(job.run_at_ms, id));
        if let Some(set) = self.ready[job.lane].get_mut(&job.queue) {
            set.remove(&(Reverse(job.priority), id));
        }
    }

    fn cancel(&mut self, id: u64, reply: Reply<()>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            let store = self.store.clone();
            tokio::spawn(async move {
                let r = match store.get(id).await {
                    Ok(None) => Err(err(ErrorKind::NotFound, format!("no job {id}"))),
                    Ok(Some(rec)) => Err(err(
                        ErrorKind::BadRequest,
                        format!("job {id} is already {}", rec.state.as_str()),
                    )),
                    Err(e) => Err(store_err(&e)),
                };
                let _ = reply.send(r);
            });
            return;
        };
        if job.state == JobState::Running {
            job.cancel_requested = true;
            if let Some(call) = job.call {
                let pool = self.pool.clone();
                tokio::spawn(async move { pool.cancel(call).await });
            }
            let _ = reply.send(Ok(()));
            return;
        }
        self.unplace(id);
        self.end_job(
            id,
            Finish::Cancelled {
                error: "cancelled by a client".into(),
            },
            None,
        );
        let _ = reply.send(Ok(()));
    }

    /// `jobvisor retry ID`: a finished job that did not succeed goes back to
    /// the queue with fresh budgets (its attempts stay in its record).
    fn retry(&mut self, id: u64, reply: Reply<()>) {
        if self.draining {
            let _ = reply.send(Err(err(
                ErrorKind::ShuttingDown,
                "the daemon is shutting down",
            )));
            return;
        }
        if let Some(job) = self.jobs.get(&id) {
            let _ = reply.send(Err(err(
                ErrorKind::BadRequest,
                format!("job {id} is {}, not finished", job.state.as_str()),
            )));
            return;
        }
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            match store.get(id).await {
                Ok(Some(rec)) if rec.state == JobState::Succeeded => {
                    let _ = reply.send(Err(err(
                        ErrorKind::BadRequest,
                        format!("job {id} already succeeded"),
                    )));
                }
                Ok(Some(rec)) => {
                    let _ = tx.send(Internal::Revive {
                        record: Box::new(rec),
                        reply,
                    });
                }
                Ok(None) => {
                    let _ = reply.send(Err(err(ErrorKind::NotFound, format!("no job {id}"))));
                }
                Err(e) => {
                    let _ = reply.send(Err(store_err(&e)));
                }
            }
        });
    }

    fn revive(&mut self, r: JobRecord, reply: Reply<()>) {
        if self.jobs.contains_key(&r.id) || !r.state.is_terminal() {
            let _ = reply.send(Err(err(
                ErrorKind::BadRequest,
                format!("job {} is not finished", r.id),
            )));
            return;
        }
        let now = now_ms();
        let id = r.id;
        let mut job = match Job::from_record(r, &self.registry) {
            Ok(job) => job,
            Err((_, e)) => {
                let _ = reply.send(Err(err(ErrorKind::BadInput, format!("cannot retry: {e}"))));
                return;
            }
        };
        // Fresh budgets, no dependencies to wait for; the history stays.
        job.failures = 0;
        job.crashes = 0;
        job.after.clear();
        job.set_state(JobState::Retrying);
        job.run_at_ms = now;
        self.terminal.remove(&id);
        self.jobs.insert(id, job);
        self.spawn_finish_job(
            id,
            Finish::Retry {
                run_at_ms: now,
                error: "retried by a client".into(),
            },
            false,
            None,
        );
        self.place(id);
        tracing::info!(job = id, "re-queued by a client");
        let _ = reply.send(Ok(()));
    }

    fn wait(&mut self, ids: Vec<u64>, timeout_ms: Option<u64>, reply: Reply<Vec<JobRecord>>) {
        let remaining: HashSet<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.jobs.contains_key(id))
            .collect();
        if remaining.is_empty() {
            self.answer_wait(ids, reply);
            return;
        }
        let w = self.next_waiter;
        self.next_waiter += 1;
        for id in &remaining {
            self.waiting_on.entry(*id).or_default().push(w);
        }
        self.waiters.insert(
            w,
            Waiter {
                ids,
                remaining,
                reply,
            },
        );
        if let Some(ms) = timeout_ms {
            let tx = self.internal_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(Internal::WaitTimeout { waiter: w });
            });
        }
    }

    fn answer_wait(&self, ids: Vec<u64>, reply: Reply<Vec<JobRecord>>) {
        // All reads are queued now, so the store thread serves them in one
        // transaction (one round trip per wait, not per id).
        let reads: Vec<_> = ids.iter().map(|&id| (id, self.store.get(id))).collect();
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(reads.len());
            for (id, read) in reads {
                match read.await {
                    Ok(Some(rec)) => out.push(rec),
                    Ok(None) => {
                        let _ = reply.send(Err(err(ErrorKind::NotFound, format!("no job {id}"))));
                        return;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(store_err(&e)));
                        return;
                    }
                }
            }
            let _ = reply.send(Ok(out));
        });
    }

    fn stats(&self, reply: oneshot::Sender<Stats>) {
        let mut mem: HashMap<JobState, u64> = HashMap::new();
        for j in self.jobs.values() {
            *mem.entry(j.state).or_default() += 1;
        }
        let store = self.store.clone();
        let c = self.counters.clone();
        let workers = self.pool.config().workers as u64;
        let uptime_s = self.started.elapsed().as_secs();
        let (notify_delivered, notify_failed, notify_dropped) = self.notifier.counts();
        let recovered = self.recovered;
        let health = self.pool.health();
        let mut tasks: Vec<TaskUsage> = self
            .usage
            .iter()
            .map(|(task, u)| {
                let io = lane_of(&self.registry, task) == IO;
                TaskUsage {
                    task: task.clone(),
                    attempts: u.attempts,
                    cpu_ms: u.cpu_us / 1000,
                    wall_ms: u.wall_us / 1000,
                    advice: if io {
                        policy::async_advice(
                            u.attempts,
                            u.cpu_us,
                            u.wall_us,
                            u.max_poll_us,
                            u.long_poll_attempts,
                        )
                    } else {
                        policy::advice(u.attempts, u.cpu_us, u.wall_us)
                    },
                    kind: if io { "io" } else { "cpu" }.to_string(),
                    max_poll_ms: u.max_poll_us / 1000,
                }
            })
            .collect();
        tasks.sort_by(|a, b| a.task.cmp(&b.task));
        tokio::spawn(async move {
            let mut jobs: Vec<(String, u64)> = Vec::new();
            if let Ok(counts) = store.counts().await {
                for (state, n) in counts {
                    // Unfinished states come from memory (the store may lag by a write).
                    let n = if state.is_terminal() {
                        n
                    } else {
                        mem.get(&state).copied().unwrap_or(0)
                    };
                    jobs.push((state.as_str().to_string(), n));
                }
            }
            for (state, n) in mem {
                if !jobs.iter().any(|(s, _)| s == state.as_str()) {
                    jobs.push((state.as_str().to_string(), n));
                }
            }
            jobs.sort();
            let _ = reply.send(Stats {
                pid: std::process::id(),
                uptime_s,
                workers,
                jobs,
                submitted: c.submitted.load(Ordering::Relaxed),
                attempts_finished: c.attempts_finished.load(Ordering::Relaxed),
                worker_restarts: c.worker_restarts.load(Ordering::Relaxed),
                recovered,
                degraded: health.degraded,
                restart_delay_ms: health.restart_delay.as_millis() as u64,
                tasks,
                notify_delivered,
                notify_failed,
                notify_dropped,
            });
        });
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
                Err(e) => tracing::warn!(error = %e, "pruning failed"),
            }
        });
    }

    // ---- running --------------------------------------------------------

    fn promote_due(&mut self) {
        let now = now_ms();
        while let Some(&(t, id)) = self.delayed.first() {
            if t > now {
                break;
            }
            self.delayed.pop_first();
            if let Some(job) = self.jobs.get(&id) {
                self.ready[job.lane]
                    .entry(job.queue.clone())
                    .or_default()
                    .insert((Reverse(job.priority), id));
            }
        }
    }

    fn dispatch(&mut self) {
        if self.draining {
            return;
        }
        // The lanes fill independently: I/O jobs never wait behind CPU jobs
        // for a pool slot, nor the reverse (each has its own capacity in
        // the workers: the CPU thread, the event loop).
        for lane in [CPU, IO] {
            while self.inflight[lane] < self.max_inflight[lane] {
                let mut best: Option<((Reverse<i32>, u64), String)> = None;
                for (q, set) in &self.ready[lane] {
                    let Some(head) = set.first() else { continue };
                    let cap = self.cfg.queue_cap(q);
                    if cap > 0 && self.running_per_queue.get(q).copied().unwrap_or(0) >= cap {
                        continue;
                    }
                    if best.as_ref().is_none_or(|(b, _)| head < b) {
                        best = Some((*head, q.clone()));
                    }
                }
                let Some((key, queue)) = best else { break };
                if let Some(set) = self.ready[lane].get_mut(&queue) {
                    set.remove(&key);
                }
                if !self.start(key.1) {
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
        let opts = CallOptions {
            timeout: job.timeout_ms.map(Duration::from_millis),
            stall_timeout: job.stall_timeout_ms.map(Duration::from_millis),
        };
        let handle = match self
            .pool
            .try_submit_raw(&job.task, job.input.as_ref().clone(), opts)
        {
            Ok(h) => h,
            Err(PoolError::QueueFull { .. }) => {
                self.ready[job.lane]
                    .entry(job.queue.clone())
                    .or_default()
                    .insert((Reverse(job.priority), id));
                return false;
            }
            Err(e) => {
                // The attempt exists (numbered, its end recorded) though the
                // pool refused it: it ends as a running attempt does.
                job.attempts += 1;
                job.set_state(JobState::Running);
                let attempt = job.attempts;
                let _ = self.internal_tx.send(Internal::AttemptDone {
                    id,
                    attempt,
                    pid: None,
                    usage: None,
                    result: Err(e),
                });
                return true;
            }
        };
        job.attempts += 1;
        job.set_state(JobState::Running);
        job.call = Some(handle.id());
        let attempt = job.attempts;
        let task = job.task.clone();
        let queue = job.queue.clone();
        self.inflight[job.lane] += 1;
        self.emit(id, task, JobState::Running, Some(attempt), None, None);
        *self.running_per_queue.entry(queue).or_default() += 1;
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        self.pending_writes += 1;
        let started = now_ms();
        // Queued now (the store keeps call order), awaited in the task.
        let write = store.start_attempt(id, attempt, None, started);
        tokio::spawn(async move {
            if let Err(e) = write.await {
                tracing::error!(job = id, attempt, error = %e, "cannot record the attempt start");
            }
            let _ = tx.send(Internal::Written {
                id,
                terminal: false,
            });
        });
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let r = handle.report().await;
            let _ = tx.send(Internal::AttemptDone {
                id,
                attempt,
                pid: r.pid,
                usage: r.usage,
                result: r.result,
            });
        });
        true
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
                    let e = self.usage.entry(job.task.clone()).or_default();
                    e.attempts += 1;
                    e.cpu_us += u.cpu.as_micros() as u64;
                    e.wall_us += u.wall.as_micros() as u64;
                    let max_poll_us = u.max_poll.as_micros() as u64;
                    e.max_poll_us = e.max_poll_us.max(max_poll_us);
                    if max_poll_us >= policy::LONG_POLL_US {
                        e.long_poll_attempts += 1;
                    }
                }
                self.on_attempt_done(id, attempt, pid, result)
            }
            Internal::Written { id, terminal } => {
                self.pending_writes -= 1;
                if terminal {
                    self.notify_waiters(id);
                }
            }
            Internal::Revive { record, reply } => self.revive(*record, reply),
            Internal::InputBuilt { id, input } => self.on_input_built(id, input),
            Internal::WaitTimeout { waiter } => {
                if let Some(w) = self.waiters.remove(&waiter) {
                    for id in &w.remaining {
                        if let Some(v) = self.waiting_on.get_mut(id) {
                            v.retain(|x| *x != waiter);
                        }
                    }
                    self.answer_wait(w.ids, w.reply);
                }
            }
        }
    }

    fn on_attempt_done(
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
            self.inflight[job.lane] -= 1;
            if let Some(n) = self.running_per_queue.get_mut(&job.queue) {
                *n = n.saturating_sub(1);
            }
        }
        job.call = None;
        self.counters
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
                    max_crashes: self.cfg.jobs.max_crashes,
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
                tracing::info!(state = other.state().as_str(), outcome = ?outcome, "attempt ended")
            }
        }
        drop(_enter);
        self.end_job(id, next, Some((attempt, outcome, pid)));
    }

    /// Applies a job's next state in memory and writes it.
    fn end_job(
        &mut self,
        id: u64,
        next: Finish,
        attempt: Option<(u32, AttemptOutcome, Option<u32>)>,
    ) {
        let state = next.state();
        let mut released = Vec::new();
        if let Some(task) = self.jobs.get(&id).map(|j| j.task.clone()) {
            let error = match &next {
                Finish::Retry { error, .. }
                | Finish::Failed { error }
                | Finish::Cancelled { error }
                | Finish::Dead { error } => Some(error.clone()),
                Finish::Requeue | Finish::Succeeded { .. } => None,
            };
            let (n, pid) = attempt
                .as_ref()
                .map_or((None, None), |(n, _, pid)| (Some(*n), *pid));
            self.emit(id, task, state, n, pid, error);
        }
        // Decided while the job is in memory; sent once its state has committed.
        let notice = self.jobs.get(&id).and_then(|j| {
            let url = j.notify_url.as_deref();
            self.notifier
                .notice(&self.cfg, id, &j.task, &j.queue, url, state)
        });
        if let Some(job) = self.jobs.get_mut(&id) {
            job.set_state(state);
            match &next {
                Finish::Retry { run_at_ms, .. } => {
                    job.run_at_ms = *run_at_ms;
                    self.delayed.insert((*run_at_ms, id));
                }
                Finish::Requeue => {
                    self.ready[job.lane]
                        .entry(job.queue.clone())
                        .or_default()
                        .insert((Reverse(job.priority), id));
                }
                _ => {
                    self.jobs.remove(&id);
                    self.remember_terminal(id, state);
                    released = self.dependents.remove(&id).unwrap_or_default();
                }
            }
        }
        let terminal = state.is_terminal();
        let at = now_ms();
        // Queued now, in call order (after this attempt's start), awaited in the task.
        let write: WriteFuture = match attempt {
            Some((n, outcome, pid)) => {
                Box::pin(self.store.finish_attempt(id, n, pid, outcome, at, next))
            }
            None => Box::pin(self.store.finish_job(id, at, next)),
        };
        self.spawn_state_write(id, write, terminal, notice);
        for d in released {
            if state == JobState::Succeeded {
                let Some(dep) = self.jobs.get_mut(&d) else {
                    continue;
                };
                dep.deps_left = dep.deps_left.saturating_sub(1);
                if dep.deps_left == 0 {
                    self.place(d);
                }
            } else if self.jobs.contains_key(&d) {
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

    fn on_input_built(&mut self, id: u64, input: Result<String, String>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        let native = input.and_then(|text| {
            self.registry
                .json_to_native(&job.task, &text)
                .map_err(|e| format!("the pipeline input does not fit: {e}"))
        });
        match native {
            Ok(native) => {
                job.input = Arc::new(native);
                job.template = None;
                self.place(id);
            }
            Err(why) => {
                self.unplace(id);
                self.end_job(id, Finish::Failed { error: why }, None);
            }
        }
    }

    /// Publishes a job event to `events` subscribers (none: nothing happens).
    fn emit(
        &self,
        id: u64,
        task: String,
        state: JobState,
        attempt: Option<u32>,
        worker_pid: Option<u32>,
        error: Option<String>,
    ) {
        if self.events.receiver_count() == 0 {
            return;
        }
        let _ = self.events.send(Event {
            at_ms: now_ms(),
            kind: EventKind::Job {
                id,
                task,
                state,
                attempt,
                worker_pid,
                error,
            },
        });
    }

    fn remember_terminal(&mut self, id: u64, state: JobState) {
        self.terminal.insert(id, state);
        self.terminal_order.push_back(id);
        while self.terminal_order.len() > TERMINAL_MEMORY {
            if let Some(old) = self.terminal_order.pop_front() {
                self.terminal.remove(&old);
            }
        }
    }

    fn notify_waiters(&mut self, id: u64) {
        let Some(ws) = self.waiting_on.remove(&id) else {
            return;
        };
        for w in ws {
            let done = match self.waiters.get_mut(&w) {
                Some(waiter) => {
                    waiter.remaining.remove(&id);
                    waiter.remaining.is_empty()
                }
                None => false,
            };
            if done {
                if let Some(waiter) = self.waiters.remove(&w) {
                    self.answer_wait(waiter.ids, waiter.reply);
                }
            }
        }
    }

    fn spawn_finish_job(&mut self, id: u64, next: Finish, terminal: bool, notice: Option<Notice>) {
        let write = Box::pin(self.store.finish_job(id, now_ms(), next));
        self.spawn_state_write(id, write, terminal, notice);
    }

    /// Awaits a queued job-state write in a task: a notification goes out
    /// only after it committed; then the scheduler hears `Written`.
    fn spawn_state_write(
        &mut self,
        id: u64,
        write: WriteFuture,
        terminal: bool,
        notice: Option<Notice>,
    ) {
        self.pending_writes += 1;
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            match write.await {
                Err(e) => tracing::error!(job = id, error = %e, "cannot record the job's state"),
                Ok(()) => {
                    if let Some(n) = notice {
                        n.send();
                    }
                }
            }
            let _ = tx.send(Internal::Written { id, terminal });
        });
    }

    fn check_idle(&mut self) {
        let inflight = self.inflight[CPU] + self.inflight[IO];
        if inflight == 0 {
            for w in self.drain_waiters.drain(..) {
                let _ = w.send(());
            }
        }
        if self.pending_writes == 0 && inflight == 0 && self.reserved == 0 {
            for w in self.flush_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}

/// The longest duration a job may ask for (delay, timeouts, backoff): ten years.
const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Numbers a client sent that the store could not keep, refused as bad requests.
fn check_ranges(spec: &JobSpec) -> Result<(), String> {
    let durations = [
        ("delay_ms", spec.delay_ms),
        ("timeout_ms", spec.timeout_ms),
        ("stall_timeout_ms", spec.stall_timeout_ms),
        ("backoff_base_ms", spec.backoff_base_ms),
        ("backoff_max_ms", spec.backoff_max_ms),
    ];
    for (name, v) in durations {
        if v.is_some_and(|v| v > MAX_DURATION_MS) {
            return Err(format!(
                "{name} must be at most {MAX_DURATION_MS} (ten years)"
            ));
        }
    }
    let ids = spec
        .after
        .iter()
        .copied()
        .chain(spec.input_from.iter().filter_map(|r| match r.job {
            jobvisor_proto::control::JobRef::Id(id) => Some(id),
            jobvisor_proto::control::JobRef::Batch(_) => None,
        }));
    for id in ids {
        if id > i64::MAX as u64 {
            return Err(format!("{id} is not a job id"));
        }
    }
    if let Some(url) = &spec.notify_url {
        crate::bounds::check_url(url).map_err(|e| format!("notify_url: {e}"))?;
    }
    Ok(())
}
