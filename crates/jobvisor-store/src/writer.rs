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
use crate::held::HeldRounds;
use crate::op::Op;
use crate::store::{Delivery, Finish, JobStore, NewDelivery, NewJob, StoreError};

/// Most operations run in one transaction.
const MAX_BATCH: usize = 4096;

/// What the store thread does next.
#[derive(Debug, PartialEq, Eq)]
enum Next<T> {
    /// Run this batch.
    Run(Vec<T>),
    /// Every handle is gone and nothing is queued: exit, after answering
    /// these held writes with the full disk.
    Stop(Vec<T>),
}

/// Assembles the next batch: the `held` writes first, in order, then what
/// is queued, up to `max` in all. With nothing held it blocks for the first
/// operation; with writes held it waits at most `rounds.wait()` for one (and
/// not at all once every sender is gone, until `rounds` gives up).
fn next_batch<T>(held: Vec<T>, ops: &mpsc::Receiver<T>, rounds: HeldRounds, max: usize) -> Next<T> {
    let mut batch = held;
    if batch.is_empty() {
        // `recv` yields what is queued before it reports that every sender is gone.
        match ops.recv() {
            Ok(first) => batch.push(first),
            Err(_) => return Next::Stop(batch),
        }
    } else {
        // Try again when something else arrives, or after a while.
        match ops.recv_timeout(rounds.wait()) {
            Ok(op) => batch.push(op),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if rounds.give_up_at_shutdown() {
                    return Next::Stop(batch);
                }
            }
        }
    }
    while batch.len() < max {
        match ops.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    Next::Run(batch)
}

fn run<S: JobStore>(
    mut store: S,
    ops: mpsc::Receiver<Op>,
    commits: Arc<AtomicU64>,
    exited: oneshot::Sender<()>,
) {
    // Job-state writes held back by a full disk; they go first, in order.
    let mut held: Vec<Op> = Vec::new();
    let mut rounds = HeldRounds::default();
    loop {
        let batch = match next_batch(std::mem::take(&mut held), &ops, rounds, MAX_BATCH) {
            Next::Run(batch) => batch,
            Next::Stop(held) => {
                // Shutting down with the disk still full: give up.
                for op in held {
                    op.fail(StoreError::full("the disk is still full at shutdown"));
                }
                break;
            }
        };
        held = run_batch(&mut store, batch, &commits);
        rounds.after_batch(!held.is_empty());
        if !held.is_empty() {
            tracing::warn!(writes = held.len(), retry_in = ?rounds.wait(), "job store full: holding job-state writes until there is room");
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

    /// See [`JobStore::finish_attempt`]; `deliveries` (the notifications of
    /// the job's next state, see [`JobStore::add_deliveries`]) are written in
    /// the same transaction.
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    #[allow(clippy::too_many_arguments)]
    pub fn finish_attempt(
        &self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        outcome: AttemptOutcome,
        at_ms: u64,
        next: Finish,
        deliveries: Vec<NewDelivery>,
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
                deliveries,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::finish_job`]; `deliveries` as for
    /// [`StoreHandle::finish_attempt`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn finish_job(
        &self,
        id: u64,
        at_ms: u64,
        next: Finish,
        deliveries: Vec<NewDelivery>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.finish_job_op(id, at_ms, next, deliveries, true)
    }

    /// [`StoreHandle::finish_job`] for a change a client waits for (a
    /// cancel, a retry): a full disk fails it with [`StoreError::Full`]
    /// instead of holding it back, so the client hears that nothing changed
    /// and the daemon keeps the job as it was.
    ///
    /// # Errors
    /// As [`JobStore::finish_job`], [`StoreError::Full`] on a full disk;
    /// [`StoreError::Closed`] when the store thread is gone.
    pub fn try_finish_job(
        &self,
        id: u64,
        at_ms: u64,
        next: Finish,
        deliveries: Vec<NewDelivery>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        self.finish_job_op(id, at_ms, next, deliveries, false)
    }

    fn finish_job_op(
        &self,
        id: u64,
        at_ms: u64,
        next: Finish,
        deliveries: Vec<NewDelivery>,
        hold: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::FinishJob {
                id,
                at_ms,
                next,
                deliveries,
                hold,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::deliveries_after`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn deliveries_after(
        &self,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Delivery>, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::Deliveries {
                after,
                limit,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::delivery_attempted`]. Not held by a full disk: it
    /// fails (the attempt is then counted again after a restart).
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn delivery_attempted(
        &self,
        id: u64,
        attempts: u32,
        next_at_ms: u64,
        error: String,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::DeliveryAttempted {
                id,
                attempts,
                next_at_ms,
                error,
                reply,
            },
            rx,
        )
    }

    /// See [`JobStore::delivery_done`]. Not held by a full disk: it fails
    /// (the notification is then delivered again after a restart).
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn delivery_done(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(Op::DeliveryDone { id, reply }, rx)
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
        self.list_page(state, queue, None, limit)
    }

    /// See [`JobStore::list_page`].
    ///
    /// # Errors
    /// As there; [`StoreError::Closed`] when the store thread is gone.
    pub fn list_page(
        &self,
        state: Option<JobState>,
        queue: Option<String>,
        before: Option<u64>,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        self.call(
            Op::List {
                state,
                queue,
                before,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(queued: &[u32]) -> (mpsc::Sender<u32>, mpsc::Receiver<u32>) {
        let (tx, rx) = mpsc::channel();
        for &op in queued {
            tx.send(op).unwrap();
        }
        (tx, rx)
    }

    fn held_rounds(n: u32) -> HeldRounds {
        let mut rounds = HeldRounds::default();
        for _ in 0..n {
            rounds.after_batch(true);
        }
        rounds
    }

    #[test]
    fn a_batch_takes_what_is_queued_up_to_the_limit_in_order() {
        let (_tx, rx) = channel(&[1, 2, 3, 4, 5]);
        let none = HeldRounds::default();
        assert_eq!(next_batch(Vec::new(), &rx, none, 2), Next::Run(vec![1, 2]));
        assert_eq!(next_batch(Vec::new(), &rx, none, 2), Next::Run(vec![3, 4]));
        assert_eq!(next_batch(Vec::new(), &rx, none, 2), Next::Run(vec![5]));
    }

    #[test]
    fn held_writes_go_first_and_the_limit_counts_them() {
        let (_tx, rx) = channel(&[7, 8, 9]);
        assert_eq!(
            next_batch(vec![1, 2], &rx, held_rounds(1), 4),
            Next::Run(vec![1, 2, 7, 8])
        );
    }

    #[test]
    fn queued_operations_still_run_after_every_sender_is_gone() {
        let (tx, rx) = channel(&[1, 2]);
        drop(tx);
        let none = HeldRounds::default();
        assert_eq!(next_batch(Vec::new(), &rx, none, 10), Next::Run(vec![1, 2]));
        assert_eq!(
            next_batch(Vec::new(), &rx, none, 10),
            Next::Stop(Vec::new())
        );
    }

    /// At shutdown held writes are tried again at once (no operation can
    /// come to wait for), until the wait would have reached its cap.
    #[test]
    fn at_shutdown_held_writes_are_retried_then_given_up() {
        let (tx, rx) = channel(&[]);
        drop(tx);
        assert_eq!(
            next_batch(vec![1], &rx, held_rounds(1), 10),
            Next::Run(vec![1])
        );
        assert_eq!(
            next_batch(vec![1], &rx, held_rounds(4), 10),
            Next::Run(vec![1])
        );
        assert_eq!(
            next_batch(vec![1], &rx, held_rounds(5), 10),
            Next::Stop(vec![1])
        );
    }
}
