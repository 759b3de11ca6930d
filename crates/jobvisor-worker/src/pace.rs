//! How often, at most, a worker does something that costs a syscall or a
//! frame: look at the pipe, send a heartbeat or progress frame, read its
//! resident set. One rule, [`Pace`], over instants the caller passes in, so
//! tests drive it without waiting.

use std::time::{Duration, Instant};

/// How often, at most, heartbeats and progress frames are sent by default.
const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest interval a stall timeout can ask for.
const MIN_REPORT_INTERVAL: Duration = Duration::from_millis(5);

/// How often, at most, a call's heartbeats and progress frames are sent:
/// every 100 ms, or 4 times per stall timeout when that is shorter (so a
/// task that beats often enough for its stall timeout is never stalled by
/// the rate limit), but not more often than every 5 ms.
pub(crate) fn report_interval(stall_ms: Option<u64>) -> Duration {
    stall_ms.map_or(REPORT_INTERVAL, |ms| {
        (Duration::from_millis(ms) / 4).clamp(MIN_REPORT_INTERVAL, REPORT_INTERVAL)
    })
}

/// At most once per interval: the first time is due at once, unless the
/// pace starts from a given instant ([`Pace::since`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    every: Duration,
    last: Option<Instant>,
}

impl Pace {
    /// Due at once, then at most once per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self { every, last: None }
    }

    /// First due `every` after `start`.
    pub(crate) fn since(every: Duration, start: Instant) -> Self {
        Self {
            every,
            last: Some(start),
        }
    }

    /// Whether it is due at `now`; if so, the next one is due `every` later.
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn reports_keep_up_with_short_stall_timeouts() {
        assert_eq!(report_interval(None), Duration::from_millis(100));
        assert_eq!(report_interval(Some(60_000)), Duration::from_millis(100));
        // Four frames per stall timeout, so beating often enough is enough.
        assert_eq!(report_interval(Some(200)), Duration::from_millis(50));
        assert_eq!(report_interval(Some(60)), Duration::from_millis(15));
        // Not a frame per call of heartbeat().
        assert_eq!(report_interval(Some(1)), Duration::from_millis(5));
    }

    #[test]
    fn new_is_due_at_once_then_once_per_interval() {
        let t0 = Instant::now();
        let mut p = Pace::new(10 * MS);
        assert!(p.due(t0));
        assert!(!p.due(t0));
        assert!(!p.due(t0 + 9 * MS));
        assert!(p.due(t0 + 10 * MS));
        // The interval runs from the last time it was due, not from t0.
        assert!(!p.due(t0 + 15 * MS));
        assert!(p.due(t0 + 20 * MS));
    }

    #[test]
    fn since_waits_a_whole_interval_first() {
        let t0 = Instant::now();
        let mut p = Pace::since(MS, t0);
        assert!(!p.due(t0));
        assert!(p.due(t0 + MS));
    }

    #[test]
    fn an_instant_before_the_last_is_not_due() {
        let t0 = Instant::now();
        let mut p = Pace::since(MS, t0 + 5 * MS);
        assert!(!p.due(t0));
    }

    #[test]
    fn a_heartbeat_every_quarter_stall_is_never_held_back() {
        // A task that beats every 1 ms under a 20 ms stall timeout gets a
        // frame out at least every 5 ms: four per stall timeout.
        let t0 = Instant::now();
        let mut p = Pace::new(report_interval(Some(20)));
        let sent: Vec<u32> = (0..=20).filter(|&i| p.due(t0 + i * MS)).collect();
        assert_eq!(sent, [0, 5, 10, 15, 20]);
    }
}
