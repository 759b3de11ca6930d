//! One unfinished job as the scheduler holds it, its lane (CPU or I/O), and
//! the clock its times are on. Plain data: the bottom of the scheduler.

use std::sync::Arc;
use std::time::Duration;

use jobvisor_proto::control::{InputRef, JobRecord, JobState, Payload};
use jobvisor_worker::{ConvertError, Registry, TaskKind};
use tokio::time::Instant;

use crate::policy;

/// The two kinds of attempt, each with its own ready sets and its own cap
/// in the pool, so neither kind can starve the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lane {
    /// CPU tasks (`Task`): one at a time per worker, beside its event loop.
    Cpu,
    /// I/O tasks (`AsyncTask`): many at a time on each worker's event loop.
    Io,
}

impl Lane {
    /// Both lanes, in the order they are filled.
    pub(super) const ALL: [Lane; 2] = [Lane::Cpu, Lane::Io];

    /// The lane's place in per-lane arrays.
    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// Milliseconds since the Unix epoch: the clock of `run_at_ms` and of
/// every time the store records (not of timers: see [`due_at`]).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The instant of the monotonic clock (`now` on it, `now_ms` on the wall
/// clock, read together) at which a job due at wall time `run_at_ms` runs:
/// its remaining delay from now, none when that time has passed. Timers run
/// on the result, so a wall-clock jump after this does not move them.
pub(super) fn due_at(run_at_ms: u64, now_ms: u64, now: Instant) -> Instant {
    now + Duration::from_millis(run_at_ms.saturating_sub(now_ms))
}

/// The lane of a task: [`Lane::Io`] for async tasks, [`Lane::Cpu`] for the rest.
pub(super) fn lane_of(registry: &Registry, task: &str) -> Lane {
    if registry.kind(task) == Some(TaskKind::Io) {
        Lane::Io
    } else {
        Lane::Cpu
    }
}

/// The in-pool caps of the two lanes (by [`Lane::index`]) for `workers`
/// workers: a few CPU windows, and the event loops' slots plus a little to
/// keep them full.
pub(super) fn lane_caps(workers: usize, pool: &jobvisor_pool::PoolConfig) -> [usize; 2] {
    [
        workers * 16,
        workers * (pool.io_concurrency_per_worker + 16),
    ]
}

/// An unfinished job: what to run and how (from its spec), how far it got
/// (attempts, budgets spent, state), and what it waits for. More than
/// fifteen fields because it is the job record's working copy; the actor
/// owns it, and every decision reads a few of them.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(super) id: u64,
    pub(super) task: String,
    /// From the task's kind (looked up once, here).
    pub(super) lane: Lane,
    pub(super) queue: String,
    pub(super) priority: i32,
    pub(super) max_attempts: u32,
    pub(super) max_crashes: u32,
    /// The first attempt number the budgets count (a client's `retry`
    /// starts fresh budgets at the next attempt).
    pub(super) budget_from: u32,
    /// Times a client's `retry` revived it.
    pub(super) epoch: u32,
    pub(super) backoff_base_ms: u64,
    pub(super) backoff_max_ms: u64,
    pub(super) timeout_ms: Option<u64>,
    pub(super) stall_timeout_ms: Option<u64>,
    pub(super) run_at_ms: u64,
    /// Native input, as workers take it (empty until a pipeline step's
    /// sources are in).
    pub(super) input: Arc<Vec<u8>>,
    /// A pipeline step's JSON input before the sources' outputs are merged in;
    /// `None` once merged (or for ordinary jobs).
    pub(super) template: Option<String>,
    /// Where a pipeline step takes input from (resolved to ids once stored).
    pub(super) input_from: Vec<InputRef>,
    /// The client sent JSON: the output is stored as JSON too.
    pub(super) json: bool,
    /// Attempts started (numbering).
    pub(super) attempts: u32,
    /// Charged to the attempt budget.
    pub(super) failures: u32,
    /// Charged to the crash budget.
    pub(super) crashes: u32,
    /// Changed only by [`Job::set_state`].
    pub(super) state: JobState,
    pub(super) after: Vec<u64>,
    pub(super) deps_left: usize,
    /// The pool call of the running attempt.
    pub(super) call: Option<u64>,
    pub(super) cancel_requested: bool,
    /// A client's cancel of this (not running) job is being written: it is
    /// neither placed nor started until that commits (it ends then) or fails
    /// (it is placed again, as it was).
    pub(super) cancelling: bool,
    /// The job's own completion webhook.
    pub(super) notify_url: Option<String>,
}

impl Job {
    /// A job as the store holds it: the input converted to the native
    /// encoding, budgets counted from its attempts since `budget_from` (a
    /// job stored without a crash budget gets `default_max_crashes`). Fails
    /// (with the job's id) when its task no longer accepts its input.
    pub(super) fn from_record(
        r: JobRecord,
        registry: &Registry,
        default_max_crashes: u32,
    ) -> Result<Job, (u64, ConvertError)> {
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
        let spent = policy::spent_since(&r.attempts, r.budget_from);
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
            max_crashes: r.max_crashes.unwrap_or(default_max_crashes),
            budget_from: r.budget_from,
            epoch: r.epoch,
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
            cancelling: false,
            notify_url: r.notify_url,
        })
    }

    /// Moves the job to `next`, which must be a legal transition
    /// ([`JobState::can_become`]).
    pub(super) fn set_state(&mut self, next: JobState) {
        debug_assert!(
            self.state.can_become(next),
            "job {}: illegal transition {:?} -> {next:?}",
            self.id,
            self.state
        );
        self.state = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_proto::control::{Attempt, AttemptOutcome};

    #[test]
    fn a_job_is_due_after_its_remaining_delay_and_at_once_when_late() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(due_at(10_000, 4_000, now), now + ms(6_000));
        assert_eq!(due_at(4_000, 10_000, now), now, "late: due now");
        assert_eq!(due_at(u64::MAX, 0, now), now + ms(u64::MAX));
    }

    #[test]
    fn a_recovered_job_recounts_its_budgets_from_its_attempts() {
        let registry = Registry::new();
        let attempt = |number, outcome| Attempt {
            number,
            worker_pid: None,
            started_ms: 0,
            finished_ms: Some(1),
            outcome,
        };
        let r = JobRecord {
            id: 7,
            task: "t".into(),
            queue: "default".into(),
            priority: 0,
            state: JobState::Retrying,
            max_attempts: 3,
            max_crashes: Some(3),
            budget_from: 1,
            epoch: 0,
            timeout_ms: None,
            stall_timeout_ms: None,
            input_from: Vec::new(),
            backoff_base_ms: 1,
            backoff_max_ms: 2,
            after: Vec::new(),
            key: None,
            created_ms: 0,
            run_at_ms: 5,
            finished_ms: None,
            input: Some(Payload::Native(vec![1, 2])),
            output: None,
            error: None,
            attempts: vec![
                attempt(1, AttemptOutcome::Error("e".into())),
                attempt(2, AttemptOutcome::Lost),
                attempt(3, AttemptOutcome::TimedOut("t".into())),
            ],
            notify_url: None,
        };
        let job = Job::from_record(r.clone(), &registry, 5).unwrap();
        assert_eq!((job.attempts, job.failures, job.crashes), (3, 2, 0));
        assert_eq!(job.max_crashes, 3, "the job's own budget");
        assert_eq!((job.lane, job.json, job.deps_left), (Lane::Cpu, false, 0));
        assert_eq!(job.input.as_slice(), [1, 2]);
        assert_eq!(job.template, None);

        // After a retry at attempt 3, only the attempts since count; a job
        // stored without a crash budget gets the daemon's.
        let mut revived = r;
        revived.budget_from = 3;
        revived.epoch = 1;
        revived.max_crashes = None;
        let job = Job::from_record(revived, &registry, 5).unwrap();
        assert_eq!((job.attempts, job.failures, job.crashes), (3, 1, 0));
        assert_eq!((job.budget_from, job.epoch, job.max_crashes), (3, 1, 5));
    }
}
