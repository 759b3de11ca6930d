//! Who waits for the scheduler: clients waiting for jobs to finish
//! ([`Waiters`]), and the shutdown waiting for it to go quiet ([`Quiesce`]).
//! Bookkeeping only: the actor sends the answers.

use std::collections::{BTreeSet, HashMap, HashSet};

use tokio::sync::oneshot;
use tokio::time::Instant;

/// One client's `wait`: the ids it asked for, those still unfinished, when
/// it times out, and where its answer goes.
#[derive(Debug)]
struct Waiter<R> {
    ids: Vec<u64>,
    remaining: HashSet<u64>,
    deadline: Option<Instant>,
    reply: R,
}

/// Outstanding `wait`s, each answered once every job it names has finished
/// (or its timeout passed), with the ids as asked. Timeouts are kept here,
/// not in a timer task per wait: the actor asks for the next one
/// ([`Waiters::next_deadline`]) and for those past ([`Waiters::expired`]),
/// and an answered wait leaves nothing behind.
#[derive(Debug)]
pub(super) struct Waiters<R> {
    waiters: HashMap<u64, Waiter<R>>,
    /// Job id → the waiters that wait for it.
    waiting_on: HashMap<u64, Vec<u64>>,
    /// `(deadline, waiter)` of the waits with a timeout.
    deadlines: BTreeSet<(Instant, u64)>,
    next: u64,
}

impl<R> Default for Waiters<R> {
    fn default() -> Self {
        Self {
            waiters: HashMap::new(),
            waiting_on: HashMap::new(),
            deadlines: BTreeSet::new(),
            next: 0,
        }
    }
}

/// What became of a new `wait`.
#[derive(Debug)]
pub(super) enum Added<R> {
    /// Nothing it names is unfinished: answer now.
    Now(Vec<u64>, R),
    /// It waits (answered by `job_done` or `expired`).
    Waiting,
}

impl<R> Waiters<R> {
    /// A client waits for `ids` until `deadline` (`None`: for as long as
    /// it takes); `live` says which are unfinished.
    pub(super) fn add(
        &mut self,
        ids: Vec<u64>,
        live: impl Fn(u64) -> bool,
        deadline: Option<Instant>,
        reply: R,
    ) -> Added<R> {
        let remaining: HashSet<u64> = ids.iter().copied().filter(|&id| live(id)).collect();
        if remaining.is_empty() {
            return Added::Now(ids, reply);
        }
        let w = self.next;
        self.next += 1;
        for id in &remaining {
            self.waiting_on.entry(*id).or_default().push(w);
        }
        if let Some(at) = deadline {
            self.deadlines.insert((at, w));
        }
        self.waiters.insert(
            w,
            Waiter {
                ids,
                remaining,
                deadline,
                reply,
            },
        );
        Added::Waiting
    }

    /// When the next wait times out.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.first().map(|&(at, _)| at)
    }

    /// The waits whose deadline is `now` or earlier, to answer as they
    /// stand (ids as asked, reply), soonest first.
    pub(super) fn expired(&mut self, now: Instant) -> Vec<(Vec<u64>, R)> {
        let mut over = Vec::new();
        while let Some(&(at, w)) = self.deadlines.first() {
            if at > now {
                break;
            }
            over.extend(self.timed_out(w));
        }
        over
    }

    /// Waits outstanding, and timeouts kept.
    #[cfg(test)]
    pub(super) fn len(&self) -> (usize, usize) {
        (self.waiters.len(), self.deadlines.len())
    }

    /// Job `id`'s end has committed: the waits that waited for it last, to
    /// answer (ids as asked, reply).
    pub(super) fn job_done(&mut self, id: u64) -> Vec<(Vec<u64>, R)> {
        let mut done = Vec::new();
        for w in self.waiting_on.remove(&id).unwrap_or_default() {
            let last = self.waiters.get_mut(&w).is_some_and(|waiter| {
                waiter.remaining.remove(&id);
                waiter.remaining.is_empty()
            });
            if last {
                if let Some(waiter) = self.waiters.remove(&w) {
                    if let Some(at) = waiter.deadline {
                        self.deadlines.remove(&(at, w));
                    }
                    done.push((waiter.ids, waiter.reply));
                }
            }
        }
        done
    }

    /// Waiter `w`'s timeout passed: its wait, to answer as it stands (none
    /// when it was answered already).
    fn timed_out(&mut self, w: u64) -> Option<(Vec<u64>, R)> {
        let waiter = self.waiters.remove(&w)?;
        if let Some(at) = waiter.deadline {
            self.deadlines.remove(&(at, w));
        }
        for id in &waiter.remaining {
            if let Some(v) = self.waiting_on.get_mut(id) {
                v.retain(|x| *x != w);
            }
        }
        Some((waiter.ids, waiter.reply))
    }
}

/// What a shutdown waits for: a drain for no attempt to run, a flush also
/// for every store write issued (`pending_writes`) and every submit being
/// stored (`reserved`) to be done.
#[derive(Debug, Default)]
pub(super) struct Quiesce {
    /// No submits taken, no attempts started.
    pub(super) draining: bool,
    /// Jobs of submits being stored (they count against the queue cap).
    pub(super) reserved: usize,
    /// Store writes issued and not yet done.
    pub(super) pending_writes: usize,
    drain_waiters: Vec<oneshot::Sender<()>>,
    flush_waiters: Vec<oneshot::Sender<()>>,
}

impl Quiesce {
    /// Stop taking submits and starting attempts; `reply` once nothing runs.
    pub(super) fn drain(&mut self, reply: oneshot::Sender<()>) {
        self.draining = true;
        self.drain_waiters.push(reply);
    }

    /// `reply` once nothing runs and every write is done.
    pub(super) fn flush(&mut self, reply: oneshot::Sender<()>) {
        self.flush_waiters.push(reply);
    }

    /// With `inflight` attempts running: the waiters whose wait is over.
    pub(super) fn check(&mut self, inflight: usize) -> Vec<oneshot::Sender<()>> {
        let mut over = Vec::new();
        if inflight == 0 {
            over.append(&mut self.drain_waiters);
            if self.pending_writes == 0 && self.reserved == 0 {
                over.append(&mut self.flush_waiters);
            }
        }
        over
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(id: u64) -> bool {
        id < 10
    }

    fn at(ms: u64) -> Instant {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now) + std::time::Duration::from_millis(ms)
    }

    #[test]
    fn a_wait_is_answered_when_its_last_job_is_done() {
        let mut w = Waiters::default();
        assert!(matches!(
            w.add(vec![1, 2, 20], live, Some(at(1_000)), "a"),
            Added::Waiting
        ));
        assert!(matches!(w.add(vec![2], live, None, "b"), Added::Waiting));
        assert!(w.job_done(1).is_empty());
        let done = w.job_done(2);
        assert_eq!(done.len(), 2);
        assert!(done.contains(&(vec![1, 2, 20], "a")) && done.contains(&(vec![2], "b")));
        assert!(w.job_done(2).is_empty(), "answered once");
        assert_eq!(w.len(), (0, 0), "an answered wait keeps no timeout");
        assert_eq!(w.next_deadline(), None);
        assert!(
            w.expired(at(5_000)).is_empty(),
            "no timeout after the answer"
        );
    }

    #[test]
    fn a_wait_for_finished_jobs_is_answered_at_once() {
        let mut w = Waiters::default();
        let added = w.add(vec![20, 30], live, Some(at(1)), ());
        assert!(matches!(added, Added::Now(ids, ()) if ids == [20, 30]));
        assert_eq!(w.len(), (0, 0));
    }

    #[test]
    fn a_timed_out_wait_is_answered_when_its_time_is_over_and_forgotten() {
        let mut w = Waiters::default();
        w.add(vec![1, 2], live, Some(at(1_000)), "a");
        w.add(vec![2], live, Some(at(2_000)), "b");
        assert_eq!(w.next_deadline(), Some(at(1_000)));
        assert!(w.expired(at(999)).is_empty(), "too early");
        assert_eq!(w.expired(at(1_000)), [(vec![1, 2], "a")]);
        assert_eq!(w.next_deadline(), Some(at(2_000)));
        assert!(w.job_done(1).is_empty());
        assert_eq!(w.job_done(2), [(vec![2], "b")]);
        assert_eq!(w.len(), (0, 0));
    }

    #[test]
    fn a_drain_waits_for_attempts_and_a_flush_for_writes_too() {
        let mut q = Quiesce::default();
        let (drain, mut drained) = oneshot::channel();
        let (flush, mut flushed) = oneshot::channel();
        q.drain(drain);
        q.flush(flush);
        assert!(q.draining);
        assert!(q.check(1).is_empty());
        q.pending_writes = 1;
        for tx in q.check(0) {
            tx.send(()).unwrap();
        }
        assert!(drained.try_recv().is_ok());
        assert!(flushed.try_recv().is_err(), "a write is pending");
        q.pending_writes = 0;
        q.reserved = 2;
        assert!(q.check(0).is_empty(), "a submit is being stored");
        q.reserved = 0;
        assert_eq!(q.check(0).len(), 1);
    }
}
