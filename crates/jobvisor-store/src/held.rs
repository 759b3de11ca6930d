//! Job-state writes held back by a full disk: which writes are held, and
//! when they are tried again.
//!
//! Submits fail on a full disk, but what the daemon learned about jobs it
//! already accepted (an attempt started or finished, a dependency failed)
//! must not be dropped, or a finished job would stay `running` in the store. So
//! such a write that meets a full disk is not answered: the store thread
//! keeps it and runs it again, first and in order, when another operation
//! arrives or after a wait that grows with each batch that still could not
//! write it. At shutdown, with no operation left to come, it tries again
//! without waiting until the wait would have reached its cap, then gives up.
//! A change a client asked for and waits for (a cancel, a retry) is not
//! held: it fails, and the client is told (`StoreHandle::try_finish_job`).

use std::time::Duration;

use jobvisor_proto::backoff;

use crate::store::StoreError;

/// The wait after the first batch that had to hold writes is twice this.
const RETRY_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two tries of held writes.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Whether a job-state write that ended with `error` (its own, or the one
/// that undid its transaction) is held back to be run again rather than
/// answered: when the disk was full.
pub(crate) fn is_held(error: Option<&StoreError>) -> bool {
    matches!(error, Some(StoreError::Full(_)))
}

/// How many batches in a row left job-state writes held.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HeldRounds(u32);

impl HeldRounds {
    /// Counts a batch that left writes held (`held`), or resets the count
    /// after one that wrote everything.
    pub(crate) fn after_batch(&mut self, held: bool) {
        self.0 = if held { self.0.saturating_add(1) } else { 0 };
    }

    /// How long to wait for another operation before trying the held writes
    /// again: the shared exponential backoff from [`RETRY_FIRST`] to
    /// [`RETRY_MAX`], one step further per round, so the first wait is
    /// already twice [`RETRY_FIRST`].
    pub(crate) fn wait(self) -> Duration {
        backoff::exponential(RETRY_FIRST, RETRY_MAX, self.0.saturating_add(1))
    }

    /// At shutdown, with writes still held: whether to stop trying (and
    /// answer them with the full disk) instead of trying once more.
    pub(crate) fn give_up_at_shutdown(self) -> bool {
        self.wait() >= RETRY_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn after(rounds: u32) -> HeldRounds {
        let mut r = HeldRounds::default();
        for _ in 0..rounds {
            r.after_batch(true);
        }
        r
    }

    #[test]
    fn the_wait_doubles_from_200_ms_to_2_s() {
        let waits: Vec<Duration> = (1..=7).map(|n| after(n).wait()).collect();
        assert_eq!(
            waits,
            [
                200 * MS,
                400 * MS,
                800 * MS,
                1600 * MS,
                2000 * MS,
                2000 * MS,
                2000 * MS
            ]
        );
        assert_eq!(HeldRounds(u32::MAX).wait(), RETRY_MAX);
    }

    #[test]
    fn a_batch_that_writes_everything_starts_over() {
        let mut r = after(4);
        r.after_batch(false);
        assert_eq!(r, HeldRounds::default());
        r.after_batch(true);
        assert_eq!(r.wait(), 200 * MS);
    }

    #[test]
    fn shutdown_gives_up_once_the_wait_reaches_its_cap() {
        let give_up: Vec<bool> = (1..=6).map(|n| after(n).give_up_at_shutdown()).collect();
        assert_eq!(give_up, [false, false, false, false, true, true]);
    }

    #[test]
    fn only_a_full_disk_holds_a_write() {
        assert!(is_held(Some(&StoreError::full("disk full"))));
        assert!(!is_held(Some(&StoreError::NotFound(1))));
        assert!(!is_held(Some(&StoreError::db("locked"))));
        assert!(!is_held(Some(&StoreError::Closed)));
        assert!(!is_held(None));
    }
}
