//! Who waits for the scheduler: clients waiting for jobs to finish
//! ([`Waiters`]), and the shutdown waiting for it to go quiet ([`Quiesce`]).
//! Bookkeeping only: the actor sends the answers.

use std::collections::{HashMap, HashSet};

use tokio::sync::oneshot;

/// One client's `wait`: the ids it asked for, those still unfinished, and
/// where its answer goes.
#[derive(Debug)]
struct Waiter<R> {
    ids: Vec<u64>,
    remaining: HashSet<u64>,
    reply: R,
}

/// Outstanding `wait`s, each answered once every job it names has finished
/// (or its timeout passed), with the ids as asked.
#[derive(Debug)]
pub(super) struct Waiters<R> {
    waiters: HashMap<u64, Waiter<R>>,
    /// Job id → the waiters that wait for it.
    waiting_on: HashMap<u64, Vec<u64>>,
    next: u64,
}

impl<R> Default for Waiters<R> {
    fn default() -> Self {
        Self {
            waiters: HashMap::new(),
            waiting_on: HashMap::new(),
            next: 0,
        }
    }
}

/// What became of a new `wait`.
#[derive(Debug)]
pub(super) enum Added<R> {
    /// Nothing it names is unfinished: answer now.
    Now(Vec<u64>, R),
    /// It waits, as this waiter (the key of its timeout).
    Waiting(u64),
}

impl<R> Waiters<R> {
    /// A client waits for `ids`; `live` says which are unfinished.
    pub(super) fn add(&mut self, ids: Vec<u64>, live: impl Fn(u64) -> bool, reply: R) -> Added<R> {
        let remaining: HashSet<u64> = ids.iter().copied().filter(|&id| live(id)).collect();
        if remaining.is_empty() {
            return Added::Now(ids, reply);
        }
        let w = self.next;
        self.next += 1;
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
        Added::Waiting(w)
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
                    done.push((waiter.ids, waiter.reply));
                }
            }
        }
        done
    }

    /// Waiter `w`'s timeout passed: its wait, to answer as it stands (none
    /// when it was answered already).
    pub(super) fn timed_out(&mut self, w: u64) -> Option<(Vec<u64>, R)> {
        let waiter = self.waiters.remove(&w)?;
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

    #[test]
    fn a_wait_is_answered_when_its_last_job_is_done() {
        let mut w = Waiters::default();
        assert!(matches!(
            w.add(vec![1, 2, 20], live, "a"),
            Added::Waiting(0)
        ));
        assert!(matches!(w.add(vec![2], live, "b"), Added::Waiting(1)));
        assert!(w.job_done(1).is_empty());
        let done = w.job_done(2);
        assert_eq!(done.len(), 2);
        assert!(done.contains(&(vec![1, 2, 20], "a")) && done.contains(&(vec![2], "b")));
        assert!(w.job_done(2).is_empty(), "answered once");
        assert!(w.timed_out(0).is_none(), "no timeout after the answer");
    }

    #[test]
    fn a_wait_for_finished_jobs_is_answered_at_once() {
        let mut w = Waiters::default();
        assert!(matches!(w.add(vec![20, 30], live, ()), Added::Now(ids, ()) if ids == [20, 30]));
    }

    #[test]
    fn a_timed_out_wait_is_answered_and_forgotten() {
        let mut w = Waiters::default();
        let Added::Waiting(a) = w.add(vec![1, 2], live, "a") else {
            panic!("waits")
        };
        w.add(vec![2], live, "b");
        assert_eq!(w.timed_out(a), Some((vec![1, 2], "a")));
        assert!(w.job_done(1).is_empty());
        assert_eq!(w.job_done(2), [(vec![2], "b")]);
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
