//! The operations the store thread runs, and how each is answered.
//!
//! An [`Op`] is one call of a [`crate::StoreHandle`] method with the channel
//! its answer goes to. It runs inside the batch's transaction and gives an
//! [`Answer`], which is sent only once that transaction has ended: with the
//! commit, or replaced by the error that undid it.

use jobvisor_proto::control::{AttemptOutcome, JobRecord, JobState, Submitted};
use tokio::sync::oneshot;

use crate::held::is_held;
use crate::store::{Delivery, Finish, JobStore, NewDelivery, NewJob, StoreError};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued operation and where its answer goes.
pub(crate) enum Op {
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
        /// Notifications of the new state, written with it.
        deliveries: Vec<NewDelivery>,
        reply: Reply<()>,
    },
    FinishJob {
        id: u64,
        at_ms: u64,
        next: Finish,
        /// Notifications of the new state, written with it.
        deliveries: Vec<NewDelivery>,
        /// Held back by a full disk (see `held`); `false` for a write a
        /// client waits for, which fails instead.
        hold: bool,
        reply: Reply<()>,
    },
    Get {
        id: u64,
        reply: Reply<Option<JobRecord>>,
    },
    List {
        state: Option<JobState>,
        queue: Option<String>,
        before: Option<u64>,
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
    Deliveries {
        after: u64,
        limit: u32,
        reply: Reply<Vec<Delivery>>,
    },
    DeliveryAttempted {
        id: u64,
        attempts: u32,
        next_at_ms: u64,
        error: String,
        reply: Reply<()>,
    },
    DeliveryDone {
        id: u64,
        reply: Reply<()>,
    },
}

/// What an operation produced, held until its transaction ends.
pub(crate) enum Answer {
    Submitted(Result<Vec<Submitted>, StoreError>),
    Unit(Result<(), StoreError>),
    /// Boxed: a record is large, and a batch holds an answer per operation.
    Job(Result<Option<Box<JobRecord>>, StoreError>),
    Jobs(Result<Vec<JobRecord>, StoreError>),
    Count(Result<u64, StoreError>),
    Counts(Result<Vec<(JobState, u64)>, StoreError>),
    Deliveries(Result<Vec<Delivery>, StoreError>),
}

impl Answer {
    pub(crate) fn error(&self) -> Option<&StoreError> {
        match self {
            Answer::Submitted(r) => r.as_ref().err(),
            Answer::Unit(r) => r.as_ref().err(),
            Answer::Job(r) => r.as_ref().err(),
            Answer::Jobs(r) => r.as_ref().err(),
            Answer::Count(r) => r.as_ref().err(),
            Answer::Counts(r) => r.as_ref().err(),
            Answer::Deliveries(r) => r.as_ref().err(),
        }
    }
}

/// The answer to give: `undone` (the error that undid the transaction)
/// replaces a successful result.
fn outcome<T>(result: Result<T, StoreError>, undone: Option<&StoreError>) -> Result<T, StoreError> {
    match (result, undone) {
        (Ok(_), Some(e)) => Err(e.clone()),
        (result, _) => result,
    }
}

fn send<T>(reply: Reply<T>, result: Result<T, StoreError>) {
    // The caller may have stopped waiting; nothing to do then.
    let _ = reply.send(result);
}

impl Op {
    /// Whether the operation only reads. A read whose transaction was undone
    /// (by a full disk, say) is run again on its own rather than failed:
    /// what it reads has committed, so it does not depend on the writes
    /// that were undone, and reads go on while writes are held.
    pub(crate) fn is_read(&self) -> bool {
        matches!(
            self,
            Op::Get { .. } | Op::List { .. } | Op::Counts { .. } | Op::Deliveries { .. }
        )
    }

    /// Answers with `err` without running.
    pub(crate) fn fail(self, err: StoreError) {
        match self {
            Op::InsertAll { reply, .. } => send(reply, Err(err)),
            Op::StartAttempt { reply, .. }
            | Op::FinishAttempt { reply, .. }
            | Op::FinishJob { reply, .. }
            | Op::DeliveryAttempted { reply, .. }
            | Op::DeliveryDone { reply, .. } => send(reply, Err(err)),
            Op::Deliveries { reply, .. } => send(reply, Err(err)),
            Op::Get { reply, .. } => send(reply, Err(err)),
            Op::List { reply, .. } | Op::Recover { reply, .. } => send(reply, Err(err)),
            Op::Prune { reply, .. } => send(reply, Err(err)),
            Op::Counts { reply } => send(reply, Err(err)),
        }
    }

    /// An answer of this operation's kind carrying `err`.
    pub(crate) fn failed(&self, err: StoreError) -> Answer {
        match self {
            Op::InsertAll { .. } => Answer::Submitted(Err(err)),
            Op::StartAttempt { .. }
            | Op::FinishAttempt { .. }
            | Op::FinishJob { .. }
            | Op::DeliveryAttempted { .. }
            | Op::DeliveryDone { .. } => Answer::Unit(Err(err)),
            Op::Deliveries { .. } => Answer::Deliveries(Err(err)),
            Op::Get { .. } => Answer::Job(Err(err)),
            Op::List { .. } | Op::Recover { .. } => Answer::Jobs(Err(err)),
            Op::Prune { .. } => Answer::Count(Err(err)),
            Op::Counts { .. } => Answer::Counts(Err(err)),
        }
    }

    /// Runs the operation's statements inside the open transaction. It does
    /// not undo what it wrote when it fails: the caller does (see [`run_batch`](crate::batch::run_batch)).
    pub(crate) fn run<S: JobStore>(&self, store: &mut S) -> Answer {
        match self {
            Op::InsertAll { jobs, .. } => Answer::Submitted(insert_batch(store, jobs)),
            Op::StartAttempt {
                id,
                number,
                worker_pid,
                at_ms,
                ..
            } => Answer::Unit(store.start_attempt(*id, *number, *worker_pid, *at_ms)),
            Op::FinishAttempt {
                id,
                number,
                worker_pid,
                outcome,
                at_ms,
                next,
                deliveries,
                ..
            } => Answer::Unit(
                store
                    .finish_attempt(*id, *number, *worker_pid, outcome, *at_ms, next)
                    .and_then(|()| add_deliveries(store, *id, *at_ms, deliveries)),
            ),
            Op::FinishJob {
                id,
                at_ms,
                next,
                deliveries,
                ..
            } => Answer::Unit(
                store
                    .finish_job(*id, *at_ms, next)
                    .and_then(|()| add_deliveries(store, *id, *at_ms, deliveries)),
            ),
            Op::Deliveries { after, limit, .. } => {
                Answer::Deliveries(store.deliveries_after(*after, *limit))
            }
            Op::DeliveryAttempted {
                id,
                attempts,
                next_at_ms,
                error,
                ..
            } => Answer::Unit(store.delivery_attempted(*id, *attempts, *next_at_ms, error)),
            Op::DeliveryDone { id, .. } => Answer::Unit(store.delivery_done(*id)),
            Op::Get { id, .. } => Answer::Job(store.get(*id).map(|r| r.map(Box::new))),
            Op::List {
                state,
                queue,
                before,
                limit,
                ..
            } => Answer::Jobs(store.list_page(*state, queue.as_deref(), *before, *limit)),
            Op::Recover { now_ms, .. } => Answer::Jobs(store.recover(*now_ms)),
            Op::Prune {
                before_ms, keep, ..
            } => Answer::Count(store.prune(*before_ms, *keep)),
            Op::Counts { .. } => Answer::Counts(store.counts()),
        }
    }

    /// [`Op::run`] in a savepoint: kept when it succeeds, undone when it
    /// fails. The second value is set when the transaction itself is lost
    /// (the savepoint could not be taken, released or returned to: SQLite
    /// may roll a whole transaction back after a full disk): the error to
    /// give every other operation of it.
    pub(crate) fn run_in_savepoint<S: JobStore>(
        &self,
        store: &mut S,
    ) -> (Answer, Option<StoreError>) {
        if let Err(e) = store.savepoint() {
            return (self.failed(e.clone()), Some(e));
        }
        let answer = self.run(store);
        match answer.error().cloned() {
            None => match store.release_savepoint() {
                Ok(()) => (answer, None),
                Err(e) => (self.failed(e.clone()), Some(e)),
            },
            Some(e) => match store.rollback_to_savepoint() {
                Ok(()) => (answer, None),
                // The operation's own error is the cause; report it to the others.
                Err(_) => (answer, Some(e)),
            },
        }
    }

    /// Sends `answer` once the transaction has ended: `undone` is `None`
    /// after its commit, or the error that undid it. A job-state write that
    /// met a full disk ([`is_held`]) is not answered but handed back, to be
    /// run again, before anything queued after it, once there is room (why:
    /// see `held`).
    pub(crate) fn answer(self, answer: Answer, undone: Option<&StoreError>) -> Option<Op> {
        match (self, answer) {
            (Op::InsertAll { reply, .. }, Answer::Submitted(r)) => send(reply, outcome(r, undone)),
            (
                op @ (Op::StartAttempt { .. }
                | Op::FinishAttempt { .. }
                | Op::FinishJob { hold: true, .. }),
                Answer::Unit(r),
            ) if is_held(r.as_ref().err().or(undone)) => return Some(op),
            (
                Op::StartAttempt { reply, .. }
                | Op::FinishAttempt { reply, .. }
                | Op::FinishJob { reply, .. },
                Answer::Unit(r),
            ) => send(reply, outcome(r, undone)),
            (Op::Get { reply, .. }, Answer::Job(r)) => {
                send(reply, outcome(r, undone).map(|r| r.map(|b| *b)))
            }
            (Op::List { reply, .. } | Op::Recover { reply, .. }, Answer::Jobs(r)) => {
                send(reply, outcome(r, undone))
            }
            (Op::Prune { reply, .. }, Answer::Count(r)) => send(reply, outcome(r, undone)),
            (Op::Counts { reply }, Answer::Counts(r)) => send(reply, outcome(r, undone)),
            (Op::Deliveries { reply, .. }, Answer::Deliveries(r)) => {
                send(reply, outcome(r, undone))
            }
            (
                Op::DeliveryAttempted { reply, .. } | Op::DeliveryDone { reply, .. },
                Answer::Unit(r),
            ) => send(reply, outcome(r, undone)),
            (op, _) => op.fail(StoreError::db("internal: an answer of the wrong kind")),
        }
        None
    }
}

/// Writes the notifications of a job state in the operation that writes the
/// state (nothing when there are none).
pub(crate) fn add_deliveries<S: JobStore>(
    store: &mut S,
    id: u64,
    at_ms: u64,
    deliveries: &[NewDelivery],
) -> Result<(), StoreError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    store.add_deliveries(id, at_ms, deliveries)
}

/// Inserts a batch in order, resolving references to earlier jobs of the same
/// batch (pipelines) to their ids; a referenced job is also a dependency.
/// Runs of jobs without such references go to the store together.
fn insert_batch<S: JobStore>(store: &mut S, jobs: &[NewJob]) -> Result<Vec<Submitted>, StoreError> {
    use jobvisor_proto::control::JobRef;
    let mut out: Vec<Submitted> = Vec::with_capacity(jobs.len());
    let mut i = 0;
    while i < jobs.len() {
        let run = jobs[i..]
            .iter()
            .take_while(|j| j.input_from.is_empty())
            .count();
        if run > 0 {
            out.extend(store.insert_many(&jobs[i..i + run])?);
            i += run;
            continue;
        }
        let mut job = jobs[i].clone();
        for r in &mut job.input_from {
            if let JobRef::Batch(b) = r.job {
                let earlier = out.get(b as usize).filter(|_| (b as usize) < i).ok_or_else(|| {
                    StoreError::db(format!("job #{} of the batch takes input from #{}, which is not an earlier job", i + 1, b + 1))
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
        i += 1;
    }
    Ok(out)
}
