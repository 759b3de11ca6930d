//! The store interface. The daemon talks to it only through [`crate::StoreHandle`];
//! implementations are synchronous and owned by one thread.

use std::error::Error;
use std::sync::Arc;

use jobvisor_proto::control::{AttemptOutcome, JobRecord, JobState, Payload, Submitted};

/// A job to insert, with every default already resolved by the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Task name.
    pub task: String,
    /// Input.
    pub input: Payload,
    /// Queue name.
    pub queue: String,
    /// Priority (higher first).
    pub priority: i32,
    /// Attempts in all.
    pub max_attempts: u32,
    /// Crash budget.
    pub max_crashes: u32,
    /// First retry delay.
    pub backoff_base_ms: u64,
    /// Retry delay cap.
    pub backoff_max_ms: u64,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Stall timeout (no heartbeat for this long).
    pub stall_timeout_ms: Option<u64>,
    /// Pipeline inputs. In [`crate::StoreHandle::insert_all`] a
    /// [`JobRef::Batch`](jobvisor_proto::control::JobRef::Batch) names an
    /// earlier job of the same call and is resolved to its id (and made a
    /// dependency); [`JobStore::insert`] takes resolved ids only.
    pub input_from: Vec<jobvisor_proto::control::InputRef>,
    /// Not before (unix ms).
    pub run_at_ms: u64,
    /// Unix ms.
    pub created_ms: u64,
    /// Dependencies (must exist; the daemon checks).
    pub after: Vec<u64>,
    /// Idempotency key.
    pub key: Option<String>,
    /// Completion webhook of this job (checked by the daemon).
    pub notify_url: Option<String>,
}

/// A completion notification to deliver, written in the same transaction
/// as the job state that causes it (the outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The job state it tells of.
    pub state: JobState,
    /// Where it goes, in the daemon's own encoding (the store keeps it as text).
    pub target: String,
}

/// A notification waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Its row: ids grow with each delivery written, so "every row above
    /// the last one seen" is every row written since.
    pub id: u64,
    /// The job it tells of.
    pub job_id: u64,
    /// The job state it tells of.
    pub state: JobState,
    /// As written ([`NewDelivery::target`]).
    pub target: String,
    /// Attempts made (and failed) so far.
    pub attempts: u32,
    /// The next attempt not before (unix ms).
    pub next_at_ms: u64,
    /// The job's epoch (`JobRecord::epoch`) when the row was written: a
    /// job revived by `retry` that reaches the same state again has a new
    /// delivery, not the old one again.
    pub epoch: u32,
}

/// What becomes of a job when an attempt ends (or without an attempt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// Try again at `run_at_ms`; state `Retrying`.
    Retry {
        /// Next attempt not before (unix ms).
        run_at_ms: u64,
        /// The error of the attempt that failed.
        error: String,
    },
    /// Back to `Queued` now (e.g. the attempt never really started).
    Requeue,
    /// A client's `retry` of a finished job: `Retrying` at `run_at_ms`,
    /// with fresh budgets that count attempts from `budget_from` on, in a
    /// new `epoch` (both as the daemon decided; the store records them).
    Revive {
        /// Next attempt not before (unix ms).
        run_at_ms: u64,
        /// Kept as the job's error until the next attempt ends.
        error: String,
        /// The first attempt number the new budgets count.
        budget_from: u32,
        /// The job's new epoch.
        epoch: u32,
    },
    /// `Succeeded` with an output.
    Succeeded {
        /// The output.
        output: Payload,
    },
    /// `Failed`.
    Failed {
        /// Why.
        error: String,
    },
    /// `Cancelled`.
    Cancelled {
        /// Why.
        error: String,
    },
    /// `Dead` (dead-lettered).
    Dead {
        /// Why.
        error: String,
    },
}

impl Finish {
    /// The state the job ends up in.
    pub fn state(&self) -> JobState {
        match self {
            Finish::Retry { .. } | Finish::Revive { .. } => JobState::Retrying,
            Finish::Requeue => JobState::Queued,
            Finish::Succeeded { .. } => JobState::Succeeded,
            Finish::Failed { .. } => JobState::Failed,
            Finish::Cancelled { .. } => JobState::Cancelled,
            Finish::Dead { .. } => JobState::Dead,
        }
    }
}

/// The store failed.
///
/// `Clone`, because one failed commit is the answer to every operation of
/// its batch: so the causes of [`StoreError::Full`] and [`StoreError::Db`]
/// (SQLite's error, an I/O error, or the store's own account) are shared.
/// `Display` names this layer only; the cause is the [`Error::source`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The disk (or the database's size limit) is full. Nothing of the
    /// failed transaction was stored.
    #[error("the job store is full (disk full?)")]
    Full(#[source] Arc<dyn Error + Send + Sync>),
    /// Any other database or I/O error.
    #[error("job store error")]
    Db(#[source] Arc<dyn Error + Send + Sync>),
    /// The database was written by a newer jobvisor.
    #[error("the job store has schema version {found}, newer than this jobvisor's {supported}")]
    TooNew {
        /// Version found.
        found: u32,
        /// Newest this build knows.
        supported: u32,
    },
    /// No such job.
    #[error("no job {0}")]
    NotFound(u64),
    /// A write carried fencing token `token` of job `job`, whose lease has
    /// since been taken over or expired (its token is now `current`): the
    /// write is refused and nothing of it is stored (see `docs/cluster.md`).
    #[error("job {job}: fencing token {token} is stale (now {current}): its lease was lost")]
    Fenced {
        /// The job.
        job: u64,
        /// The token the write carried.
        token: u64,
        /// The job's token now.
        current: u64,
    },
    /// The store thread is gone.
    #[error("the job store is closed")]
    Closed,
}

impl StoreError {
    /// [`StoreError::Db`] with an account of the store's own as its cause.
    pub(crate) fn db(message: impl Into<String>) -> Self {
        StoreError::Db(Arc::from(Box::<dyn Error + Send + Sync>::from(
            message.into(),
        )))
    }

    /// [`StoreError::Db`] caused by `what` failing with `source`.
    pub(crate) fn db_context(
        what: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        StoreError::Db(Arc::new(Context::new(what, source)))
    }

    /// [`StoreError::Full`] with an account of the store's own as its cause.
    pub(crate) fn full(message: impl Into<String>) -> Self {
        StoreError::Full(Arc::from(Box::<dyn Error + Send + Sync>::from(
            message.into(),
        )))
    }
}

/// What the store was doing when `source` failed: one link of a
/// [`StoreError`]'s chain of causes.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub(crate) struct Context {
    what: String,
    #[source]
    source: Box<dyn Error + Send + Sync>,
}

impl Context {
    pub(crate) fn new(
        what: impl Into<String>,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        Context {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// A backend. All methods run on the store thread, inside a transaction
/// opened by [`JobStore::begin`] unless noted.
pub trait JobStore: Send + 'static {
    /// Opens a transaction.
    ///
    /// # Errors
    /// Database errors.
    fn begin(&mut self) -> Result<(), StoreError>;
    /// Commits (and makes durable: fsync) the transaction.
    ///
    /// # Errors
    /// Database errors; the transaction is rolled back.
    fn commit(&mut self) -> Result<(), StoreError>;
    /// Abandons the transaction.
    ///
    /// # Errors
    /// Database errors.
    fn rollback(&mut self) -> Result<(), StoreError>;
    /// Marks a point inside the transaction that [`JobStore::rollback_to_savepoint`] can return to.
    ///
    /// # Errors
    /// Database errors.
    fn savepoint(&mut self) -> Result<(), StoreError>;
    /// Releases the last savepoint (keeps its changes).
    ///
    /// # Errors
    /// Database errors.
    fn release_savepoint(&mut self) -> Result<(), StoreError>;
    /// Undoes everything since the last savepoint, and releases it.
    ///
    /// # Errors
    /// Database errors.
    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError>;

    /// Inserts a job, state `Queued`. If `key` is set and a job with that key
    /// exists, nothing is inserted and that job's id is returned with `duplicate`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] (naming the dependency) when a job in `after`
    /// does not exist; nothing is inserted then. Database errors.
    fn insert(&mut self, job: &NewJob) -> Result<Submitted, StoreError>;
    /// Inserts `jobs` in order, each as [`JobStore::insert`] does (so a key
    /// already used earlier in `jobs` is a duplicate too); one answer per
    /// job. A backend may write many jobs with one statement.
    ///
    /// # Errors
    /// As [`JobStore::insert`], for the first job that fails. Jobs before it
    /// may have been written: undo the savepoint or transaction.
    fn insert_many(&mut self, jobs: &[NewJob]) -> Result<Vec<Submitted>, StoreError> {
        jobs.iter().map(|job| self.insert(job)).collect()
    }
    /// Records the start of attempt `number` (1-based); state `Running`.
    /// Starting a number again (after a `Requeue`) replaces that attempt.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], database errors.
    fn start_attempt(
        &mut self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        at_ms: u64,
    ) -> Result<(), StoreError>;
    /// Records how attempt `number` ended, which worker ran it (known only
    /// when it ends; `None` keeps what `start_attempt` recorded), and the
    /// job's next state.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], database errors.
    fn finish_attempt(
        &mut self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), StoreError>;
    /// [`JobStore::start_attempt`] then [`JobStore::finish_attempt`] of the
    /// same attempt, written as one (the writer combines the two when they
    /// meet in one transaction). `worker_pid` is the one to record.
    ///
    /// # Errors
    /// As those two; nothing is written when the job does not exist.
    #[allow(clippy::too_many_arguments)]
    fn start_and_finish_attempt(
        &mut self,
        id: u64,
        number: u32,
        started_ms: u64,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), StoreError> {
        self.start_attempt(id, number, worker_pid, started_ms)?;
        self.finish_attempt(id, number, worker_pid, outcome, at_ms, next)
    }
    /// Moves a job to its next state without an attempt (cancel of a queued
    /// job, a failed dependency).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], database errors.
    fn finish_job(&mut self, id: u64, at_ms: u64, next: &Finish) -> Result<(), StoreError>;
    /// A job with its input, output and attempts.
    ///
    /// # Errors
    /// Database errors.
    fn get(&mut self, id: u64) -> Result<Option<JobRecord>, StoreError>;
    /// Jobs, newest first, without inputs and outputs but with attempts.
    ///
    /// # Errors
    /// Database errors.
    fn list(
        &mut self,
        state: Option<JobState>,
        queue: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.list_page(state, queue, None, limit)
    }
    /// As [`JobStore::list`], only jobs with an id below `before` (all for
    /// `None`): the next page after a page that ended at `before`.
    ///
    /// # Errors
    /// Database errors.
    fn list_page(
        &mut self,
        state: Option<JobState>,
        queue: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError>;
    /// Recovery after a restart: every attempt still `Running` becomes
    /// [`AttemptOutcome::daemon_died`] (finished at `now_ms`: a crash the
    /// daemon's policy charges to the job's crash budget) and its job goes
    /// back to `Queued` (run_at unchanged).
    /// `Retrying` and delayed `Queued` jobs keep their times. Returns every
    /// non-terminal job, with input and attempts, in id order.
    ///
    /// # Errors
    /// Database errors.
    fn recover(&mut self, now_ms: u64) -> Result<Vec<JobRecord>, StoreError>;
    /// Deletes terminal jobs finished before `finished_before_ms`, and the
    /// oldest terminal jobs beyond the newest `keep` terminal ones. Returns how many.
    ///
    /// # Errors
    /// Database errors.
    fn prune(&mut self, finished_before_ms: u64, keep: u64) -> Result<u64, StoreError>;
    /// Jobs per state.
    ///
    /// # Errors
    /// Database errors.
    fn counts(&mut self) -> Result<Vec<(JobState, u64)>, StoreError>;
    /// Puts notifications of job `job_id` in the outbox, due at `at_ms`,
    /// each with the job's current epoch ([`Delivery::epoch`]; 0 when the
    /// job is not there). The writer calls it in the operation that writes
    /// the job state they tell of, so both commit or neither does.
    ///
    /// # Errors
    /// Database errors.
    fn add_deliveries(
        &mut self,
        job_id: u64,
        at_ms: u64,
        deliveries: &[NewDelivery],
    ) -> Result<(), StoreError>;
    /// Up to `limit` outbox rows with an id above `after`, in id order.
    ///
    /// # Errors
    /// Database errors.
    fn deliveries_after(&mut self, after: u64, limit: u32) -> Result<Vec<Delivery>, StoreError>;
    /// Records a failed attempt of outbox row `id` (a missing row is no error).
    ///
    /// # Errors
    /// Database errors.
    fn delivery_attempted(
        &mut self,
        id: u64,
        attempts: u32,
        next_at_ms: u64,
        error: &str,
    ) -> Result<(), StoreError>;
    /// Deletes outbox row `id`: delivered, or given up on.
    ///
    /// # Errors
    /// Database errors.
    fn delivery_done(&mut self, id: u64) -> Result<(), StoreError>;
}
