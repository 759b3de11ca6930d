//! One batch of operations in one transaction: the first try without
//! savepoints (an attempt's start and finish met in the batch written as
//! one), and the second, each operation in a savepoint of its own, when one
//! of them fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::op::{Answer, Op};
use crate::store::{JobStore, StoreError};

/// Runs one batch and answers it; returns the job-state writes held back by
/// a full disk.
///
/// First every operation runs in one transaction without savepoints (a
/// savepoint per operation costs more than the operation: SQLite copies each
/// page it touches into a sub-journal and frees that on release), and an
/// attempt's start and finish in the same batch are written as one (see
/// [`pair_attempts`]). That is the usual case: operations rarely fail. If one
/// does, the transaction is rolled back, nothing has been answered, and the
/// batch runs again operation by operation, each in its own savepoint, so
/// that the failing one is undone alone.
pub(crate) fn run_batch<S: JobStore>(store: &mut S, ops: Vec<Op>, commits: &AtomicU64) -> Vec<Op> {
    if ops.is_empty() {
        return Vec::new();
    }
    if let Err(e) = store.begin() {
        for op in ops {
            op.fail(e.clone());
        }
        return Vec::new();
    }
    let steps = pair_attempts(&ops);
    let mut answers = Vec::with_capacity(ops.len());
    for (op, step) in ops.iter().zip(&steps) {
        let answer = match *step {
            Step::Alone => op.run(store),
            // Written with its finish, further on; if that fails, all is undone.
            Step::Start => Answer::Unit(Ok(())),
            Step::Finish(start) => run_pair(store, &ops[start], op),
        };
        if answer.error().is_some() {
            // Best effort: SQLite may already have rolled it back.
            let _ = store.rollback();
            return run_batch_in_savepoints(store, ops, commits);
        }
        answers.push(answer);
    }
    finish_batch(store, ops.into_iter().zip(answers), commits)
}

/// How an operation runs in the first try of [`run_batch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// On its own.
    Alone,
    /// An attempt start written together with its finish, later in the batch.
    Start,
    /// An attempt finish written together with the start at this position.
    Finish(usize),
}

/// Pairs each attempt start with the finish of the same attempt later in the
/// batch, when nothing in between could tell that the start was not written
/// first: no read, and no other write to that job. The pair is written as one
/// at the finish's place ([`JobStore::start_and_finish_attempt`]), which saves
/// a job update and an attempt update. Under load most attempts start and
/// finish within one batch (the 100,000-job benchmark: 95 %).
fn pair_attempts(ops: &[Op]) -> Vec<Step> {
    let mut steps = vec![Step::Alone; ops.len()];
    // Job id → (position, attempt number) of a start not yet paired.
    let mut open: HashMap<u64, (usize, u32)> = HashMap::new();
    for (at, op) in ops.iter().enumerate() {
        match op {
            Op::StartAttempt { id, number, .. } => {
                open.insert(*id, (at, *number));
            }
            Op::FinishAttempt { id, number, .. } => {
                if let Some((start, n)) = open.remove(id) {
                    if n == *number {
                        steps[start] = Step::Start;
                        steps[at] = Step::Finish(start);
                    }
                }
            }
            Op::FinishJob { id, .. } => {
                open.remove(id);
            }
            // New jobs only (it reads whether dependencies and keys exist),
            // or the outbox only.
            Op::InsertAll { .. }
            | Op::Deliveries { .. }
            | Op::DeliveryAttempted { .. }
            | Op::DeliveryDone { .. } => {}
            Op::Get { .. }
            | Op::List { .. }
            | Op::Recover { .. }
            | Op::Prune { .. }
            | Op::Counts { .. } => open.clear(),
        }
    }
    steps
}

/// Writes the attempt start `start` and its finish `finish` as one.
fn run_pair<S: JobStore>(store: &mut S, start: &Op, finish: &Op) -> Answer {
    match (start, finish) {
        (
            Op::StartAttempt {
                id,
                number,
                worker_pid: started_pid,
                at_ms: started_ms,
                ..
            },
            Op::FinishAttempt {
                worker_pid,
                outcome,
                at_ms,
                next,
                deliveries,
                ..
            },
        ) => Answer::Unit(
            store
                .start_and_finish_attempt(
                    *id,
                    *number,
                    *started_ms,
                    // As the finish alone would: its pid if it knows one.
                    worker_pid.or(*started_pid),
                    outcome,
                    *at_ms,
                    next,
                )
                .and_then(|()| crate::op::add_deliveries(store, *id, *at_ms, deliveries)),
        ),
        _ => finish.failed(StoreError::db(
            "internal: paired operations are not an attempt's start and finish",
        )),
    }
}

/// [`run_batch`] with each operation in a savepoint: one transaction (more
/// only if one is lost midway), one commit, then the answers.
fn run_batch_in_savepoints<S: JobStore>(
    store: &mut S,
    ops: Vec<Op>,
    commits: &AtomicU64,
) -> Vec<Op> {
    let mut ops = ops.into_iter();
    let mut pending: Vec<(Op, Answer)> = Vec::with_capacity(ops.len());
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
            let (answer, l) = op.run_in_savepoint(store);
            pending.push((op, answer));
            if l.is_some() {
                lost = l;
                break;
            }
        }
        match lost {
            Some(e) => {
                // Best effort: SQLite may already have rolled it back.
                let _ = store.rollback();
                retry.extend(answer_undone(store, pending.drain(..), &e));
                // The rest of the batch gets a new transaction.
            }
            None => break,
        }
    }
    retry.extend(finish_batch(store, pending, commits));
    retry
}

/// Commits the open transaction, then answers its operations.
fn finish_batch<S: JobStore>(
    store: &mut S,
    pending: impl IntoIterator<Item = (Op, Answer)>,
    commits: &AtomicU64,
) -> Vec<Op> {
    match store.commit() {
        Ok(()) => {
            commits.fetch_add(1, Ordering::Relaxed);
            pending
                .into_iter()
                .filter_map(|(op, answer)| op.answer(answer, None))
                .collect()
        }
        Err(e) => {
            let _ = store.rollback();
            answer_undone(store, pending, &e)
        }
    }
}

/// Answers the operations of a transaction that `undone` rolled back: a
/// write gets the error (or is held, see `held`), a read runs again on its
/// own, outside any transaction, and gets what has committed. The writes
/// before it in the batch did not commit, so it must not see them; and it
/// must not fail with them, or no read would answer while writes are held.
fn answer_undone<S: JobStore>(
    store: &mut S,
    ops: impl IntoIterator<Item = (Op, Answer)>,
    undone: &StoreError,
) -> Vec<Op> {
    ops.into_iter()
        .filter_map(|(op, answer)| {
            if op.is_read() {
                let again = op.run(store);
                op.answer(again, None)
            } else {
                op.answer(answer, Some(undone))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::Reply;
    use crate::store::{Finish, NewJob};
    use crate::SqliteStore;
    use jobvisor_proto::control::Payload;
    use jobvisor_proto::control::{AttemptOutcome, JobRecord, JobState, Submitted};
    use tokio::sync::oneshot;

    fn job(n: u32, after: Vec<u64>) -> NewJob {
        NewJob {
            task: "t".into(),
            input: Payload::Json(format!("{n}")),
            queue: "default".into(),
            priority: 0,
            max_attempts: 1,
            max_crashes: 1,
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

    fn start(id: u64, number: u32, reply: Reply<()>) -> Op {
        Op::StartAttempt {
            id,
            number,
            worker_pid: Some(7),
            at_ms: 10 * u64::from(number),
            reply,
        }
    }

    fn finish(id: u64, number: u32, next: Finish, reply: Reply<()>) -> Op {
        Op::FinishAttempt {
            id,
            number,
            worker_pid: None,
            outcome: AttemptOutcome::Error("boom".into()),
            at_ms: 10 * u64::from(number) + 5,
            next,
            deliveries: Vec::new(),
            reply,
        }
    }

    fn unit() -> Reply<()> {
        oneshot::channel().0
    }

    /// A start is paired with the finish of the same attempt, unless something
    /// in between could see the job (a read, another write to it).
    #[test]
    fn attempts_pair_only_when_nothing_in_between_can_tell() {
        let retry = || Finish::Retry {
            run_at_ms: 99,
            error: "e".into(),
        };
        let ops = vec![
            start(1, 1, unit()),           // 0: paired with 3
            start(2, 1, unit()),           // 1: its finish is for attempt 2
            start(3, 1, unit()),           // 2: a write to job 3 follows
            finish(1, 1, retry(), unit()), // 3
            finish(2, 2, retry(), unit()), // 4
            Op::FinishJob {
                id: 3,
                at_ms: 1,
                next: Finish::Requeue,
                deliveries: Vec::new(),
                hold: true,
                reply: unit(),
            }, // 5
            finish(3, 1, retry(), unit()), // 6
            start(4, 1, unit()),           // 7: a read follows
            Op::Counts {
                reply: oneshot::channel().0,
            }, // 8
            finish(4, 1, retry(), unit()), // 9
            start(5, 1, unit()),           // 10: an insert does not matter
            Op::InsertAll {
                jobs: vec![job(1, vec![5])],
                reply: oneshot::channel().0,
            }, // 11
            finish(5, 1, retry(), unit()), // 12
            start(6, 1, unit()),           // 13: a later start replaces it
            start(6, 2, unit()),           // 14: paired with 15
            finish(6, 2, retry(), unit()), // 15
        ];
        let steps = pair_attempts(&ops);
        let mut want = vec![Step::Alone; ops.len()];
        for (s, f) in [(0, 3), (10, 12), (14, 15)] {
            want[s] = Step::Start;
            want[f] = Step::Finish(s);
        }
        assert_eq!(steps, want);
    }

    /// A paired start and finish leave the job exactly as the two written one
    /// after the other do, for every kind of finish (and a restarted attempt
    /// number); a failing operation in the batch still fails alone.
    #[test]
    fn a_paired_attempt_is_stored_as_two_separate_writes_would_be() {
        let nexts = [
            Finish::Succeeded {
                output: Payload::Json("{\"ok\":1}".into()),
            },
            Finish::Failed { error: "f".into() },
            Finish::Cancelled { error: "c".into() },
            Finish::Dead { error: "d".into() },
            Finish::Retry {
                run_at_ms: 77,
                error: "r".into(),
            },
            Finish::Requeue,
        ];
        let dir = tempfile::tempdir().unwrap();
        let mut paired = SqliteStore::open(&dir.path().join("paired")).unwrap();
        let mut apart = SqliteStore::open(&dir.path().join("apart")).unwrap();
        let commits = AtomicU64::new(0);
        for store in [&mut paired, &mut apart] {
            let (tx, _rx) = oneshot::channel();
            let jobs = (0..nexts.len() as u32).map(|n| job(n, vec![])).collect();
            run_batch(store, vec![Op::InsertAll { jobs, reply: tx }], &commits);
        }
        // Attempt 1 of every job, paired; then attempt 1 again (the pair
        // overwrites an attempt row) with a failing write in the batch: then
        // nothing is paired, each write runs in a savepoint of its own.
        for (number, failing) in [(1, false), (1, true)] {
            let mut batch = Vec::new();
            let mut answers = Vec::new();
            for (i, next) in nexts.iter().enumerate() {
                let id = i as u64 + 1;
                let (s_tx, s_rx) = oneshot::channel();
                let (f_tx, f_rx) = oneshot::channel();
                batch.push(start(id, number, s_tx));
                batch.push(finish(id, number, next.clone(), f_tx));
                answers.push(s_rx);
                answers.push(f_rx);
            }
            let (bad_tx, mut bad) = oneshot::channel();
            if failing {
                batch.insert(
                    3,
                    Op::FinishJob {
                        id: 999,
                        at_ms: 1,
                        next: Finish::Requeue,
                        deliveries: Vec::new(),
                        hold: true,
                        reply: bad_tx,
                    },
                );
            }
            assert!(pair_attempts(&batch).contains(&Step::Start));
            assert!(run_batch(&mut paired, batch, &commits).is_empty());
            if failing {
                assert!(matches!(
                    bad.try_recv().unwrap(),
                    Err(StoreError::NotFound(999))
                ));
            }
            for mut a in answers {
                a.try_recv().unwrap().unwrap();
            }
            // The same writes, each in a batch of its own.
            for (i, next) in nexts.iter().enumerate() {
                let id = i as u64 + 1;
                for op in [
                    start(id, number, unit()),
                    finish(id, number, next.clone(), unit()),
                ] {
                    assert!(run_batch(&mut apart, vec![op], &commits).is_empty());
                }
            }
            for id in 1..=nexts.len() as u64 {
                let p = paired.get(id).unwrap().unwrap();
                assert_eq!(p, apart.get(id).unwrap().unwrap(), "job {id}");
                assert_eq!(p.attempts.len(), 1);
                assert_eq!(p.attempts[0].worker_pid, Some(7), "the start's pid is kept");
                assert_eq!(
                    (p.attempts[0].started_ms, p.attempts[0].finished_ms),
                    (10, Some(15))
                );
            }
        }
    }

    /// When the commit fails, every write of the batch gets the error and
    /// nothing of it is stored; a read runs again and answers what has
    /// committed (not the undone writes before it).
    #[test]
    fn failed_commit_answers_every_op_with_the_error() {
        struct FailingCommit(SqliteStore);
        impl JobStore for FailingCommit {
            fn begin(&mut self) -> Result<(), StoreError> {
                self.0.begin()
            }
            fn commit(&mut self) -> Result<(), StoreError> {
                self.0.rollback()?;
                Err(StoreError::full("test"))
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
            fn list_page(
                &mut self,
                s: Option<JobState>,
                q: Option<&str>,
                b: Option<u64>,
                l: u32,
            ) -> Result<Vec<JobRecord>, StoreError> {
                self.0.list_page(s, q, b, l)
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
            fn add_deliveries(
                &mut self,
                id: u64,
                at: u64,
                d: &[crate::NewDelivery],
            ) -> Result<(), StoreError> {
                self.0.add_deliveries(id, at, d)
            }
            fn deliveries_after(
                &mut self,
                after: u64,
                limit: u32,
            ) -> Result<Vec<crate::Delivery>, StoreError> {
                self.0.deliveries_after(after, limit)
            }
            fn delivery_attempted(
                &mut self,
                id: u64,
                n: u32,
                at: u64,
                e: &str,
            ) -> Result<(), StoreError> {
                self.0.delivery_attempted(id, n, at, e)
            }
            fn delivery_done(&mut self, id: u64) -> Result<(), StoreError> {
                self.0.delivery_done(id)
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
        assert_eq!(b.try_recv().unwrap().unwrap(), Vec::new());
        assert!(store.0.counts().unwrap().is_empty());
    }
}
