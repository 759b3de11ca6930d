//! The store thread and its handle.
//!
//! One std thread (named `jobvisor-store`) owns the [`JobStore`]. It blocks
//! for one operation, then takes every operation already queued (up to
//! [`MAX_BATCH`]) and runs them all in one transaction. It commits once and
//! only then answers every operation of the batch: an answer is never sent
//! before the commit that made its write durable, and many concurrent submits
//! share one fsync (group commit).
//!
//! A failing operation is undone alone. Operations rarely fail, so a batch
//! first runs without savepoints (an attempt's start and finish met in one
//! batch are written as one); when an operation fails, that transaction is
//! rolled back unanswered and the batch runs again with each operation in a
//! savepoint of its own (see `batch`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};

use jobvisor_proto::control::{AttemptOutcome, JobRecord, JobState, Submitted};
use tokio::sync::oneshot;

use crate::batch::run_batch;
use crate::op::Op;
use crate::store::{Finish, JobStore, NewJob, StoreError};

/// Most operations run in one transaction.
const MAX_BATCH: usize = 4096;
/// First and longest wait before job-state writes held by a full disk are tried again.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(100);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

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
