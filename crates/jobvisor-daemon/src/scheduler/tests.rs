//! The actor driven by hand, with the real store (SQLite in a temp dir) and
//! no pool: a test sends commands, then delivers the actor's internal
//! messages in the order it chooses, which makes races between a client's
//! command and a store write deterministic. No attempt starts here (no
//! workers); the jobs of these tests wait, or end by cancel.

use std::sync::Arc;
use std::time::Duration;

use jobvisor_proto::control::{ControlError, JobSpec, JobState, Payload, Submitted};
use jobvisor_store::{SqliteStore, StoreHandle};
use jobvisor_worker::{Ctx, Registry, Task, TaskError};
use tokio::sync::{mpsc, oneshot};

use super::{Counters, Internal, SchedCmd, Scheduler};
use crate::config::Config;
use crate::notify::Notifier;

/// A task that never runs here (no workers); admission only needs its name.
struct Nap;

impl Task for Nap {
    const NAME: &'static str = "nap";
    type Input = u64;
    type Output = u64;

    fn run(&self, input: u64, _ctx: &mut Ctx<'_>) -> Result<u64, TaskError> {
        Ok(input)
    }
}

pub(super) struct Harness {
    pub(super) s: Scheduler,
    internal: mpsc::Receiver<Internal>,
    /// Internal messages held back by [`Harness::settle_except`].
    held: Vec<Internal>,
    _dir: tempfile::TempDir,
}

pub(super) fn spec(after: &[u64]) -> JobSpec {
    JobSpec {
        after: after.to_vec(),
        ..JobSpec::new("nap", Payload::Json("1".into()))
    }
}

impl Harness {
    pub(super) async fn new() -> Self {
        Self::with_config(Config::default()).await
    }

    pub(super) async fn with_config(cfg: Config) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
        let store = StoreHandle::spawn(store).unwrap();
        let notifier = Notifier::spawn(&cfg, store.clone()).await.unwrap();
        let mut s = Scheduler::with_pool(
            cfg,
            None,
            jobvisor_pool::PoolConfig::default(),
            store,
            Arc::new(Registry::new().with(Nap)),
            Arc::new(Counters::default()),
            crate::events::EventFeed::new(100),
            notifier,
        );
        let internal = s.internal_rx.take().unwrap();
        Self {
            s,
            internal,
            held: Vec::new(),
            _dir: dir,
        }
    }

    /// Delivers internal messages until `reply` is answered; holds back
    /// those `hold` picks (for [`Harness::release_held`]).
    pub(super) async fn until<T>(
        &mut self,
        mut reply: oneshot::Receiver<T>,
        hold: impl Fn(&Internal) -> bool,
    ) -> T {
        loop {
            tokio::select! {
                biased;
                r = &mut reply => return r.expect("the actor answers"),
                ev = self.internal.recv() => {
                    let ev = ev.expect("the actor holds a sender");
                    if hold(&ev) {
                        self.held.push(ev);
                    } else {
                        self.s.on_internal(ev);
                        self.s.check_idle();
                    }
                }
            }
        }
    }

    /// Waits for the next internal message that `pick` picks and holds it
    /// back, delivering the others meanwhile.
    pub(super) async fn hold_next(&mut self, pick: impl Fn(&Internal) -> bool) {
        loop {
            let ev = self.internal.recv().await.expect("a sender");
            if pick(&ev) {
                self.held.push(ev);
                return;
            }
            self.s.on_internal(ev);
            self.s.check_idle();
        }
    }

    /// Delivers the held messages, in the order they came.
    pub(super) fn release_held(&mut self) {
        for ev in std::mem::take(&mut self.held) {
            self.s.on_internal(ev);
        }
        self.s.check_idle();
    }

    pub(super) async fn submit(&mut self, specs: Vec<JobSpec>) -> Vec<Submitted> {
        let (tx, rx) = oneshot::channel();
        self.s.on_command(SchedCmd::Submit { specs, reply: tx });
        self.until(rx, |_| false).await.unwrap()
    }

    /// Sends a cancel; the answer comes once its write is delivered.
    pub(super) fn cancel(&mut self, id: u64) -> oneshot::Receiver<Result<(), ControlError>> {
        let (tx, rx) = oneshot::channel();
        self.s.on_command(SchedCmd::Cancel { id, reply: tx });
        rx
    }

    pub(super) async fn retry(&mut self, id: u64) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        self.s.on_command(SchedCmd::Retry { id, reply: tx });
        self.until(rx, |_| false).await
    }

    /// What the store holds, once every write issued so far committed.
    pub(super) async fn stored(&mut self, id: u64) -> JobState {
        let (tx, rx) = oneshot::channel();
        self.s.on_command(SchedCmd::Flush { reply: tx });
        self.s.check_idle();
        self.until(rx, |_| false).await;
        self.s.store.get(id).await.unwrap().unwrap().state
    }
}

fn is_cancelled(id: u64) -> impl Fn(&Internal) -> bool {
    move |ev| matches!(ev, Internal::Cancelled { id: i, .. } if *i == id)
}

/// A cancelled waiting job is out of its dependency's dependents: retried
/// (it is queued again, waiting for nothing), it is not failed when that
/// dependency ends badly later, and nothing of it is kept meanwhile.
#[tokio::test]
async fn a_cancelled_dependent_is_forgotten_by_its_dependency() {
    let mut h = Harness::new().await;
    let a = h.submit(vec![spec(&[])]).await[0].id;
    let c = h.submit(vec![spec(&[a])]).await[0].id;
    assert_eq!(h.s.deps.waiting_for(a), 1);
    let rx = h.cancel(c);
    h.until(rx, |_| false).await.unwrap();
    assert_eq!(h.s.deps.waiting_for(a), 0, "the cancelled job is kept");
    h.retry(c).await.unwrap();
    assert!(h.s.jobs.contains_key(&c));
    // `a` ends cancelled: `c`, retried and waiting for nothing, is not its
    // dependent any more.
    let rx = h.cancel(a);
    h.until(rx, |_| false).await.unwrap();
    assert_eq!(h.stored(c).await, JobState::Retrying);
    assert!(h.s.jobs.contains_key(&c), "c was ended for a's end");
}

/// A dependency fails while a queued job's cancel is being written: the
/// client's answer is what the store ends with.
#[tokio::test]
async fn a_cancel_answered_ok_is_what_the_store_keeps_when_a_dependency_fails_meanwhile() {
    let mut h = Harness::new().await;
    let a = h.submit(vec![spec(&[])]).await[0].id;
    let c = h.submit(vec![spec(&[a])]).await[0].id;
    // `c`'s cancel is written, and its answer held back, while `a` ends
    // cancelled (a dependency that did not succeed).
    let c_reply = h.cancel(c);
    h.hold_next(is_cancelled(c)).await;
    let rx = h.cancel(a);
    h.until(rx, is_cancelled(c)).await.unwrap();
    h.release_held();
    let answer = c_reply.await.unwrap();
    let stored = h.stored(c).await;
    match answer {
        Ok(()) => assert_eq!(stored, JobState::Cancelled, "told ok, stored {stored:?}"),
        Err(e) => assert_eq!(stored, JobState::Failed, "told {e}, stored {stored:?}"),
    }
}

/// Delays run on the monotonic clock: with tokio's clock paused the wall
/// clock still moves and tokio's does not, and the job becomes ready when
/// tokio's clock has moved by its delay (not before half of it), whatever
/// the wall clock did meanwhile.
#[tokio::test(start_paused = true)]
async fn a_delayed_job_is_due_by_the_monotonic_clock() {
    let mut h = Harness::new().await;
    let mut delayed = spec(&[]);
    delayed.delay_ms = Some(60_000);
    let id = h.submit(vec![delayed]).await[0].id;
    let ready = |h: &mut Harness| {
        h.s.tick();
        h.s.jobs.get(&id).is_some_and(|j| h.s.queues.is_ready(j))
    };
    assert!(!ready(&mut h));
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!ready(&mut h), "due after half its delay");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(
        ready(&mut h),
        "not due after its delay on the monotonic clock"
    );
}

/// A wait answered before its timeout leaves nothing behind: there was a
/// sleeping task per wait until its timeout, which a client could pile up
/// by the thousand with long timeouts on jobs that end soon. Counted on a
/// current-thread runtime, where a helper that has sent its answer has
/// also ended by the time the answer is read.
#[tokio::test]
async fn an_answered_wait_leaves_no_timer_behind() {
    let mut h = Harness::new().await;
    let a = h.submit(vec![spec(&[])]).await[0].id;
    h.stored(a).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    let (tx, wait) = oneshot::channel();
    h.s.on_command(SchedCmd::Wait {
        ids: vec![a],
        timeout_ms: Some(3_600_000),
        reply: tx,
    });
    let rx = h.cancel(a);
    h.until(rx, |_| false).await.unwrap();
    let recs = h.until(wait, |_| false).await.unwrap();
    assert_eq!(recs[0].state, JobState::Cancelled);
    h.stored(a).await;
    assert_eq!(tasks(), before, "a task outlives the answered wait");
}

/// A wait that times out is answered by the actor's own timer, as the
/// jobs stand, once the monotonic clock reaches its deadline.
#[tokio::test(start_paused = true)]
async fn a_wait_is_answered_at_its_timeout_as_the_jobs_stand() {
    let mut h = Harness::new().await;
    let a = h.submit(vec![spec(&[])]).await[0].id;
    let (tx, mut wait) = oneshot::channel();
    h.s.on_command(SchedCmd::Wait {
        ids: vec![a],
        timeout_ms: Some(60_000),
        reply: tx,
    });
    let due = h.s.tick().expect("the wait's timeout is the next timer");
    tokio::time::advance(Duration::from_secs(30)).await;
    h.s.tick();
    assert!(wait.try_recv().is_err(), "answered before its timeout");
    tokio::time::sleep_until(due).await;
    h.s.tick();
    let recs = h.until(wait, |_| false).await.unwrap();
    assert_eq!(recs[0].state, JobState::Queued);
}

/// Two clients cancel a queued job at once: the cancel is written once
/// (one write, one set of notifications), and both hear how it went.
#[tokio::test]
async fn a_second_cancel_during_the_first_joins_it() {
    let mut h = Harness::new().await;
    let a = h.submit(vec![spec(&[])]).await[0].id;
    h.stored(a).await;
    let first = h.cancel(a);
    let second = h.cancel(a);
    assert_eq!(h.s.quiesce.pending_writes, 1, "the cancel is written twice");
    assert_eq!(h.until(first, |_| false).await, Ok(()));
    assert_eq!(second.await.unwrap(), Ok(()));
    assert_eq!(h.stored(a).await, JobState::Cancelled);
}
