//! What the CPU thread and the I/O lane share: the messages the CPU thread
//! sends the lane ([`IoMsg`]) and the counters both threads touch
//! ([`LaneState`]). Plain types at the bottom of the crate, so the router
//! below the lane and the lane itself can both name them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use jobvisor_proto::worker::Call;

/// What the CPU thread tells the lane.
#[derive(Debug)]
pub(crate) enum IoMsg {
    /// Start this call.
    Run(Call),
    /// Drop this call's future and answer it `Cancelled` (ignored when it is
    /// not running here).
    Cancel(u64),
    /// The worker is going away: drop everything now, answer nothing.
    Abort,
}

/// What the CPU thread, the lane and the pulse share: how many async calls
/// the worker holds (counted when routed, uncounted when answered), whether
/// the worker announced it drains (once, by whichever thread sees it first),
/// and how many turns the lane's loop took (the pulse's sign that the loop
/// is not stuck in a poll).
#[derive(Debug, Default)]
pub(crate) struct LaneState {
    held: AtomicUsize,
    draining: AtomicBool,
    turns: AtomicU64,
}

impl LaneState {
    /// The CPU thread routed a call to the lane.
    pub(crate) fn routed(&self) {
        // SeqCst: see `Pulse::cpu_call`; the CPU thread calls `Pulse::wake`
        // after routing.
        self.held.fetch_add(1, Ordering::SeqCst);
    }

    /// The lane's loop took a turn.
    pub(crate) fn turned(&self) {
        self.turns.fetch_add(1, Ordering::Relaxed);
    }

    /// Turns of the lane's loop so far.
    pub(crate) fn turns(&self) -> u64 {
        self.turns.load(Ordering::Relaxed)
    }

    /// The lane wrote the replies of `n` calls.
    pub(crate) fn answered(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Async calls routed and not answered yet.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Whether either thread announced `Draining` already.
    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether this caller is the one to announce `Draining`.
    pub(crate) fn start_draining(&self) -> bool {
        !self.draining.swap(true, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_counts_routed_calls_until_answered() {
        let s = LaneState::default();
        assert_eq!(s.held(), 0);
        s.routed();
        s.routed();
        s.routed();
        assert_eq!(s.held(), 3);
        s.answered(2);
        assert_eq!(s.held(), 1);
    }

    #[test]
    fn draining_is_announced_once() {
        let s = LaneState::default();
        assert!(!s.draining());
        assert!(s.start_draining());
        assert!(s.draining());
        // The other thread sees it is not its turn.
        assert!(!s.start_draining());
    }
}
