//! The store thread and its handle.
//!
//! One std thread (named `jobvisor-store`) owns the [`JobStore`]. It blocks
//! for one operation, then takes every operation already queued (up to
//! [`MAX_BATCH`]) and runs them all in one transaction, each inside its own
//! savepoint so that a failing operation is undone alone. It commits once and
//! only then answers every operation of the batch: an answer is never sent
//! before the commit that made its write durable, and many concurrent submits
//! share one fsync (group commit).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use jobvisor_proto::control::{AttemptOutcome, JobRecord, JobState, Submitted};
use tokio::sync::oneshot;

use crate::store::{Finish, JobStore, NewJob, StoreError};

/// Most operations run in one transaction.
const MAX_BATCH: usize = 4096;
/// First and longest wait before job-state writes held by a full disk are tried again.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued operation and where its answer goes.
enum Op {
    InsertAll {
        jobs: Vec<NewJob>,
        reply: Reply<Vec<Submitted>>,
    },
    StartAttempt {
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        at_ms: u64,
        reply: Reply<()>,
    },
    FinishAttempt {
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        outcome: AttemptOutcome,
        at_ms: u64,
        next: Finish,
        reply: Reply<()>,
    },
    FinishJob {
        id: u64,
        at_ms: u64,
        next: Finish,
        reply: Reply<()>,
    },
    Get {
        id: u64,
        reply: Reply<Option<JobRecord>>,
    },
    List {
        state: Option<JobState>,
        queue: Option<String>,
        limit: u32,
        reply: Reply<Vec<JobRecord>>,
    },
    Recover {
        now_ms: u64,
        reply: Reply<Vec<JobRecord>>,
    },
    Prune {
        before_ms: u64,
        keep: u64,
        reply: Reply<u64>,
    },
    Counts {
        reply: Reply<Vec<(JobState, u64)>>,
    },
}

/// An executed operation whose answer waits for the end of its transaction:
/// called with `None` after the commit, or with the error that undid the
/// transaction (which replaces a successful result). A job-state write that
/// met a full disk is not answered: it comes back, to be run again (in order,
/// before anything queued after it) once there is room.
type Done = Box<dyn FnOnce(Option<&StoreError>) -> Option<Op> + Send>;

fn outcome<T>(result: Result<T, StoreError>, undone: Option<&StoreError>) -> Result<T, StoreError> {
    match (result, undone) {
        (Ok(_), Some(e)) => Err(e.clone()),
        (result, _) => result,
    }
}

fn done<T: Send + 'static>(reply: Reply<T>, result: Result<T, StoreError>) -> Done {
    Box::new(move |undone: Option<&StoreError>| {
        // The caller may have stopped waiting; nothing to do then.
        let _ = reply.send(outcome(result, undone));
        None
    })
}

/// [`done`] for a job-state write: on a full disk it hands back `retry`
/// (the same operation, same reply) instead of answering. Submits fail on a
/// full disk; what the daemon learned about jobs it already accepted must
/// not be dropped, or a finished job would stay `running` in the store.
fn done_or_retry(
    reply: Reply<()>,
    result: Result<(), StoreError>,
    retry: impl FnOnce(Reply<()>) -> Op + Send + 'static,
) -> Done {
    Box::new(
        move |undone: Option<&StoreError>| match outcome(result, undone) {
            Err(StoreError::Full(_)) => Some(retry(reply)),
            r => {
                let _ = reply.send(r);
                None
            }
        },
    )
}

impl Op {
    /// Answers with `err` without running.
    fn fail(self, err: StoreError) {
        fn send<T>(reply: Reply<T>, err: StoreError) {
            let _ = reply.send(Err(err));
        }
        match self {
            Op::InsertAll { reply, .. } => send(reply, err),
            Op::StartAttempt { reply, .. }
            | Op::FinishAttempt { reply, .. }
            | Op::FinishJob { reply, .. } => send(reply, err),
            Op::Get { reply, .. } => send(reply, err),
            Op::List { reply, .. } | Op::Recover { reply, .. } => send(reply, err),
            Op::Prune { reply, .. } => send(reply, err),
            Op::Counts { reply } => send(reply, err),
        }
    }

    /// Runs inside the open transaction, in a savepoint. The second value is
    /// set when the transaction itself is lost (the savepoint could not be
    /// taken, released or returned to: SQLite may roll a whole transaction
    /// back after a full disk): the error to give every other operation of it.
    fn execute<S: JobStore>(self, store: &mut S) -> (Done, Option<StoreError>) {
        match self {
            Op::InsertAll { jobs, reply } => {
                let (r, lost) = in_savepoint(store, |s| insert_batch(s, jobs));
                (done(reply, r), lost)
            }
            Op::StartAttempt {
                id,
                number,
                worker_pid,
                at_ms,
                reply,
            } => {
                let (r, lost) =
                    in_savepoint(store, |s| s.start_attempt(id, number, worker_pid, at_ms));
                let retry = move |reply| Op::StartAttempt {
                    id,
                    number,
                    worker_pid,
                    at_ms,
                    reply,
                };
                (done_or_retry(reply, r, retry), lost)
            }
            Op::FinishAttempt {
                id,
                number,
                worker_pid,
                outcome,
                at_ms,
                next,
                reply,
            } => {
                let (r, lost) = in_savepoint(store, |s| {
                    s.finish_attempt(id, number, worker_pid, &outcome, at_ms, &next)
                });
                let retry = move |reply| Op::FinishAttempt {
                    id,
                    number,
                    worker_pid,
                    outcome,
                    at_ms,
                    next,
                    reply,
                };
                (done_or_retry(reply, r, retry), lost)
            }
            Op::FinishJob {
                id,
                at_ms,
                next,
                reply,
            } => {
                let (r, lost) = in_savepoint(store, |s| s.finish_job(id, at_ms, &next));
                let retry = move |reply| Op::FinishJob {
                    id,
                    at_ms,
                    next,
                    reply,
                };
                (done_or_retry(reply, r, retry), lost)
            }
            Op::Get { id, reply } => {
                let (r, lost) = in_savepoint(store, |s| s.get(id));
                (done(reply, r), lost)
            }
            Op::List {
                state,
                queue,
                limit,
                reply,
            } => {
                let (r, lost) = in_savepoint(store, |s| s.list(state, queue.as_deref(), limit));
                (done(reply, r), lost)
            }
            Op::Recover { now_ms, reply } => {
                let (r, lost) = in_savepoint(store, |s| s.recover(now_ms));
                (done(reply, r), lost)
            }
            Op::Prune {
                before_ms,
                keep,
                reply,
            } => {
                let (r, lost) = in_savepoint(store, |s| s.prune(before_ms, keep));
                (done(reply, r), lost)
            }
            Op::Counts { reply } => {
                let (r, lost) = in_savepoint(store, |s| s.counts());
                (done(reply, r), lost)
            }
        }
    }
}

/// Runs `f` in a savepoint: kept when it succeeds, undone when it fails.
/// The second value is set when the transaction is lost (see [`Op::execute`]).
fn in_savepoint<S: JobStore, T>(
    store: &mut S,
    f: impl FnOnce(&mut S) -> Result<T, StoreError>,
) -> (Result<T, StoreError>, Option<StoreError>) {
    if let Err(e) = store.savepoint() {
        return (Err(e.clone()), Some(e));
    }
    match f(store) {
        Ok(v) => match store.release_savepoint() {
            Ok(()) => (Ok(v), None),
            Err(e) => (Err(e.clone()), Some(e)),
        },
        Err(e) => match store.rollback_to_savepoint() {
            Ok(()) => (Err(e), None),
            // The operation's own error is the cause; report it to the others.
            Err(_) => (Err(e.clone()), Some(e)),
        },
    }
}

/// Runs one batch: one transaction (more only if one is lost midway), one
/// commit, then the answers.
fn run_batch<S: JobStore>(store: &mut S, ops: Vec<Op>, commits: &AtomicU64) -> Vec<Op> {
    let mut ops = ops.into_iter();
    let mut pending: Vec<Done> = Vec::with_capacity(ops.len());
    let mut retry = Vec::new();
    loop {
        if ops.as_slice().is_empty() {
            return retry;
        }
        if let Err(e) = store.begin() {
            for op in ops {
                op.fail(e.clone());
            }
            return retry;
        }
        let mut lost = None;
        for op in ops.by_ref() {
            let (d, l) = op.execute(store);
            pending.push(d);
            if l.is_some() {
                lost = l;
                break;
            }
        }
        match lost {
            Some(e) => {
                // Best effort: SQLite may already have rolled it back.
                let _ = store.rollback();
                retry.extend(pending.drain(..).filter_map(|d| d(Some(&e))));
                // The rest of the batch gets a new transaction.
            }
            None => break,
        }
    }
    match store.commit() {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            retry.extend(pending.into_iter().filter_map(|d| d(None)));
        }
        Err(e) => {
            let _ = store.rollback();
            retry.extend(pending.into_iter().filter_map(|d| d(Some(&e))));
        }
    }
    retry
}

fn run<S: JobStore>(
    mut store: S,
    ops: mpsc::Receiver<Op>,
    commits: Arc<AtomicU64>,
    exited: oneshot::Sender<()>,
) {
    // Job-state writes held back by a full disk; they go first, in order.
    let mut held: Vec<Op> = Vec::new();
    let mut delay = RETRY_FIRST;
    loop {
        let mut batch = std::mem::take(&mut held);
        if batch.is_empty() {
            // `recv` yields what is queued before it reports that every sender is gone.
            match ops.recv() {
                Ok(first) => batch.push(first),
                Err(_) => break,
            }
        } else {
            // Try again when something else arrives, or after a while.
            match ops.recv_timeout(delay) {
                Ok(op) => batch.push(op),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    if delay >= RETRY_MAX {
                        // Shutting down with the disk still full: give up.
                        for op in batch {
                            op.fail(StoreError::Full(
                                "the disk is still full at shutdown".into(),
                            ));
                        }
                        break;
                    }
                }
            }
        }
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        held = run_batch(&mut store, batch, &commits);
        if held.is_empty() {
            delay = RETRY_FIRST;
        } else {
            tracing::warn!(writes = held.len(), retry_in = ?delay, "job store full: holding job-state writes until there is room");
            delay = (delay * 2).min(RETRY_MAX);
        }
    }
    drop(store);
    let _ = exited.send(());
}

struct Shared {
    ops: mpsc::Sender<Op>,
    commits: Arc<AtomicU64>,
    exited: oneshot::Receiver<()>,
}

/// A handle to the store thread; cheap to clone. When every handle is
/// dropped (or closed), the thread finishes what is queued, closes the store
/// and exits.
///
/// Each operation is queued when its method is called, not when the returned
/// future is first polled: operations run in the order of the calls, and
/// awaiting only waits for the answer. An answer comes after the commit of the
/// transaction that ran the operation.
#[derive(Clone)]
pub struct StoreHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle")
            .field("commits", &self.commits())
            .finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Starts the store thread, which owns `store` from now on.
    ///
    /// # Errors
    /// The thread could not be started.
    pub fn spawn<S: JobStore>(store: S) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let commits = Arc::new(AtomicU64::new(0));
        let (exited_tx, exited_rx) = oneshot::channel();
        let thread_commits = Arc::clone(&commits);
        std::thread::Builder::new()
            .name("jobvisor-store".into())
            .spawn(move || run(store, rx, thread_commits, exited_tx))?;
        Ok(StoreHandle {
            shared: Arc::new(Shared {
                ops: tx,
                commits,
                exited: exited_rx,
            }),
        })
    }

    /// Queues `op` now; the future waits for its answer on `rx`.
    fn call<T: Send + 'static>(
        &self,
        op: Op,
        rx: oneshot::Receiver<Result<T, StoreError>>,
    ) -> impl Future<Output = Result<T, StoreError>> + Send + 'static {
        let sent = self.shared.ops.send(op).is_ok();
        async move {
            if !sent {
                return Err(StoreError::Closed);
            }
            rx.await.unwrap_or(Err(StoreError::Closed))
        }
    }

    /// Inserts jobs, all or none (see [`JobStore::insert`]); one answer per job, in order.
    ///
    /// # Errors
    /// The first error met; then none of the jobs is stored.
    /// [`StoreError::Closed`] when the store thread is gone.
    pub fn insert_all(
        &self,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Vec<Submitted>, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(Op::InsertAll { jobs, reply }, rx)
    }

    /// See [`JobStore::start_attempt`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn start_attempt(
        &self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        at_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::StartAttempt {
                id,
                number,
                worker_pid,
                at_ms,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::finish_attempt`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn finish_attempt(
        &self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        outcome: AttemptOutcome,
        at_ms: u64,
        next: Finish,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::FinishAttempt {
                id,
                number,
                worker_pid,
                outcome,
                at_ms,
                next,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::finish_job`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn finish_job(
        &self,
        id: u64,
        at_ms: u64,
        next: Finish,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::FinishJob {
                id,
                at_ms,
                next,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::get`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn get(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(Op::Get { id, reply }, rx)
    }

    /// See [`JobStore::list`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn list(
        &self,
        state: Option<JobState>,
        queue: Option<String>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::List {
                state,
                queue,
                limit,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::recover`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn recover(
        &self,
        now_ms: u64,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(Op::Recover { now_ms, reply }, rx)
    }

    /// See [`JobStore::prune`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn prune(
        &self,
        before_ms: u64,
        keep: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::Prune {
                before_ms,
                keep,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::counts`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn counts(
        &self,
    ) -> impl Future<Output = Result<Vec<(JobState, u64)>, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(Op::Counts { reply }, rx)
    }

    /// Transactions committed so far (a batch of operations commits once).
    pub fn commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Drops this handle. If it was the last one, waits until the thread has
    /// run everything queued, closed the store and exited.
    pub async fn close(self) {
        if let Some(shared) = Arc::into_inner(self.shared) {
            let Shared { ops, exited, .. } = shared;
            drop(ops);
            // An error means the thread is gone already.
            let _ = exited.await;
        }
    }
}

/// Inserts a batch in order, resolving references to earlier jobs of the same
/// batch (pipelines) to their ids; a referenced job is also a dependency.
fn insert_batch<S: JobStore>(
    store: &mut S,
    jobs: Vec<NewJob>,
) -> Result<Vec<Submitted>, StoreError> {
    use jobvisor_proto::control::JobRef;
    let mut out: Vec<Submitted> = Vec::with_capacity(jobs.len());
    for (i, mut job) in jobs.into_iter().enumerate() {
        for r in &mut job.input_from {
            if let JobRef::Batch(b) = r.job {
                let earlier = out.get(b as usize).filter(|_| (b as usize) < i).ok_or_else(|| {
                    StoreError::Db(format!("job #{} of the batch takes input from #{}, which is not an earlier job", i + 1, b + 1))
                })?;
                r.job = JobRef::Id(earlier.id);
            }
            if let JobRef::Id(id) = r.job {
                if !job.after.contains(&id) {
                    job.after.push(id);
                }
            }
        }
        out.push(store.insert(&job)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteStore;
    use jobvisor_proto::control::Payload;

    fn job(n: u32, after: Vec<u64>) -> NewJob {
        NewJob {
            task: "t".into(),
            input: Payload::Json(format!("{n}")),
            queue: "default".into(),
            priority: 0,
            max_attempts: 1,
            backoff_base_ms: 10,
            backoff_max_ms: 100,
            timeout_ms: None,
            stall_timeout_ms: None,
            input_from: Vec::new(),
            run_at_ms: 0,
            created_ms: 0,
            after,
            key: None,
            notify_url: None,
        }
    }

    /// In one batch, one transaction: a failing insert_all is undone alone,
    /// and the answers come only from `run_batch` (after its commit).
    #[test]
    fn one_failing_op_does_not_poison_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(&dir.path().join("db")).unwrap();
        let commits = AtomicU64::new(0);
        let (ok1_tx, mut ok1) = oneshot::channel();
        let (bad_tx, mut bad) = oneshot::channel();
        let (ok2_tx, mut ok2) = oneshot::channel();
        let ops = vec![
            Op::InsertAll {
                jobs: vec![job(1, vec![])],
                reply: ok1_tx,
            },
            Op::InsertAll {
                // The first job would be fine; the second names a missing job.
                jobs: vec![job(2, vec![]), job(3, vec![999])],
                reply: bad_tx,
            },
            Op::InsertAll {
                jobs: vec![job(4, vec![])],
                reply: ok2_tx,
            },
        ];
        run_batch(&mut store, ops, &commits);
        assert_eq!(commits.load(Ordering::Relaxed), 1);
        let ok1 = ok1.try_recv().unwrap().unwrap();
        assert!(matches!(
            bad.try_recv().unwrap(),
            Err(StoreError::NotFound(999))
        ));
        let ok2 = ok2.try_recv().unwrap().unwrap();
        assert!(store.get(ok1[0].id).unwrap().is_some());
        assert!(store.get(ok2[0].id).unwrap().is_some());
        let all = store.list(None, None, 100).unwrap();
        assert_eq!(all.len(), 2, "the failed batch left nothing: {all:?}");
    }

    /// When the commit fails, every operation of the batch gets the error and
    /// nothing of it is stored.
    #[test]
    fn failed_commit_answers_every_op_with_the_error() {
        struct FailingCommit(SqliteStore);
        impl JobStore for FailingCommit {
            fn begin(&mut self) -> Result<(), StoreError> {
                self.0.begin()
            }
            fn commit(&mut self) -> Result<(), StoreError> {
                self.0.rollback()?;
                Err(StoreError::Full("test".into()))
            }
            fn rollback(&mut self) -> Result<(), StoreError> {
                self.0.rollback()
            }
            fn savepoint(&mut self) -> Result<(), StoreError> {
                self.0.savepoint()
            }
            fn release_savepoint(&mut self) -> Result<(), StoreError> {
                self.0.release_savepoint()
            }
            fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
                self.0.rollback_to_savepoint()
            }
            fn insert(&mut self, job: &NewJob) -> Result<Submitted, StoreError> {
                self.0.insert(job)
            }
            fn start_attempt(
                &mut self,
                id: u64,
                n: u32,
                pid: Option<u32>,
                at: u64,
            ) -> Result<(), StoreError> {
                self.0.start_attempt(id, n, pid, at)
            }
            fn finish_attempt(
                &mut self,
                id: u64,
                n: u32,
                pid: Option<u32>,
                o: &AttemptOutcome,
                at: u64,
                next: &Finish,
            ) -> Result<(), StoreError> {
                self.0.finish_attempt(id, n, pid, o, at, next)
            }
            fn finish_job(&mut self, id: u64, at: u64, next: &Finish) -> Result<(), StoreError> {
                self.0.finish_job(id, at, next)
            }
            fn get(&mut self, id: u64) -> Result<Option<JobRecord>, StoreError> {
                self.0.get(id)
            }
            fn list(
                &mut self,
                s: Option<JobState>,
                q: Option<&str>,
                l: u32,
            ) -> Result<Vec<JobRecord>, StoreError> {
                self.0.list(s, q, l)
            }
            fn recover(&mut self, now: u64) -> Result<Vec<JobRecord>, StoreError> {
                self.0.recover(now)
            }
            fn prune(&mut self, b: u64, k: u64) -> Result<u64, StoreError> {
                self.0.prune(b, k)
            }
            fn counts(&mut self) -> Result<Vec<(JobState, u64)>, StoreError> {
                self.0.counts()
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let mut store = FailingCommit(SqliteStore::open(&dir.path().join("db")).unwrap());
        let commits = AtomicU64::new(0);
        let (a_tx, mut a) = oneshot::channel();
        let (b_tx, mut b) = oneshot::channel();
        let ops = vec![
            Op::InsertAll {
                jobs: vec![job(1, vec![])],
                reply: a_tx,
            },
            Op::Counts { reply: b_tx },
        ];
        run_batch(&mut store, ops, &commits);
        assert_eq!(commits.load(Ordering::Relaxed), 0);
        assert!(matches!(a.try_recv().unwrap(), Err(StoreError::Full(_))));
        assert!(matches!(b.try_recv().unwrap(), Err(StoreError::Full(_))));
        assert!(store.0.counts().unwrap().is_empty());
    }
}
