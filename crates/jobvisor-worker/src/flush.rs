//! When the CPU thread writes the replies it buffered.
//!
//! Replies are batched into `Done` frames so that a stream of small calls
//! costs one `write` per batch, not per call. They go out when the worker
//! runs out of work, every [`FLUSH_EVERY`] replies, at least every
//! [`FLUSH_INTERVAL`] (then the pipe is read too, so the supervisor can refill
//! the pipeline while the worker keeps going), and before a call whose
//! timing depends on them (see [`Flush::before_call`]). [`Flush`] holds the
//! rule over plain counters and instants the loop passes in.

use std::time::{Duration, Instant};

use jobvisor_proto::worker::Call;

/// Replies buffered before they are written, at most.
pub(crate) const FLUSH_EVERY: usize = 32;
/// How long, at most, a reply waits in the buffer while calls keep coming.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(1);

/// Whether the supervisor times `call` (a timeout or a stall timeout).
pub(crate) fn is_timed(call: &Call) -> bool {
    call.timeout_ms.is_some() || call.stall_ms.is_some()
}

/// The CPU thread's reply buffer, as far as writing it is concerned.
#[derive(Debug)]
pub(crate) struct Flush {
    /// Replies buffered since the last write.
    buffered: usize,
    /// One of them is of a timed call.
    timed_buffered: bool,
    /// When the pipe was last read.
    last_ingest: Instant,
}

impl Flush {
    /// An empty buffer; the pipe was read at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            buffered: 0,
            timed_buffered: false,
            last_ingest: now,
        }
    }

    /// The buffer was written.
    pub(crate) fn flushed(&mut self) {
        self.buffered = 0;
        self.timed_buffered = false;
    }

    /// The pipe was read at `now`.
    pub(crate) fn ingested(&mut self, now: Instant) {
        self.last_ingest = now;
    }

    /// A reply was buffered; `timed` as [`is_timed`] of its call.
    pub(crate) fn replied(&mut self, timed: bool) {
        self.buffered += 1;
        self.timed_buffered |= timed;
    }

    /// Whether to write the buffer before starting a call (`timed` as
    /// [`is_timed`]). The supervisor times a call from when the reply of the
    /// one before reaches it. A task that never looks at its ctx keeps the
    /// replies buffered before it for its whole run: they go first when a
    /// timeout depends on them (this call's, or a buffered one's), so a
    /// finished call is not taken for a hung one, nor a hung call's deadline
    /// left unwatched. Untimed calls keep the batching.
    pub(crate) fn before_call(&self, timed: bool) -> bool {
        self.buffered > 0 && (timed || self.timed_buffered)
    }

    /// Whether to write the buffer, and read the pipe, after a reply at `now`.
    pub(crate) fn after_reply(&self, now: Instant) -> bool {
        self.buffered >= FLUSH_EVERY
            || now.saturating_duration_since(self.last_ingest) >= FLUSH_INTERVAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn untimed_calls_batch_up_to_flush_every() {
        let t0 = Instant::now();
        let mut f = Flush::new(t0);
        for _ in 0..FLUSH_EVERY - 1 {
            assert!(!f.before_call(false));
            f.replied(false);
            assert!(!f.after_reply(t0 + US));
        }
        f.replied(false);
        assert!(f.after_reply(t0 + US));
        f.flushed();
        assert!(!f.after_reply(t0 + US));
    }

    #[test]
    fn replies_wait_at_most_the_interval() {
        let t0 = Instant::now();
        let mut f = Flush::new(t0);
        f.replied(false);
        assert!(!f.after_reply(t0 + FLUSH_INTERVAL - US));
        assert!(f.after_reply(t0 + FLUSH_INTERVAL));
        f.flushed();
        f.ingested(t0 + FLUSH_INTERVAL);
        f.replied(false);
        assert!(!f.after_reply(t0 + FLUSH_INTERVAL + US));
    }

    #[test]
    fn a_timed_call_does_not_start_behind_buffered_replies() {
        let mut f = Flush::new(Instant::now());
        // Nothing buffered: nothing to write, timed or not.
        assert!(!f.before_call(true));
        f.replied(false);
        assert!(!f.before_call(false));
        assert!(f.before_call(true));
    }

    #[test]
    fn a_timed_reply_is_not_held_behind_an_untimed_call() {
        let mut f = Flush::new(Instant::now());
        f.replied(true);
        assert!(f.before_call(false));
        f.flushed();
        f.replied(false);
        assert!(!f.before_call(false), "the timed reply was written");
    }

    #[test]
    fn a_call_is_timed_by_its_timeout_or_its_stall_timeout() {
        let call = |timeout_ms, stall_ms| Call {
            id: 1,
            task: 0,
            chunk: false,
            timeout_ms,
            stall_ms,
            input: vec![],
        };
        assert!(!is_timed(&call(None, None)));
        assert!(is_timed(&call(Some(1), None)));
        assert!(is_timed(&call(None, Some(1))));
    }
}
