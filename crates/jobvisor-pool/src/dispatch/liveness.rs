//! When a worker that holds calls has been silent for too long: the rule,
//! over the instants the dispatcher keeps.
//!
//! A worker's silence clock starts when it is sent work while it holds
//! nothing, and starts again at every frame it sends (a reply, a call's
//! heartbeat or progress, or its own pulse, sent every `heartbeat_interval`
//! while it holds calls). A worker that holds nothing is never silent: it
//! has nothing to say. One that holds calls and is silent for
//! `liveness_timeout` is unresponsive: it is killed and replaced.
//!
//! The dispatcher looks on a tick of its own, every `heartbeat_interval`
//! while some worker holds calls (one timer for the pool, registered once
//! per tick, not one per loop turn), so a silent worker is killed within an
//! interval of its deadline. Silence proves something only if we were
//! listening: when a look comes more than two intervals after the last one
//! (the supervisor was stopped, or its runtime starved), the workers' frames
//! may be waiting unread in their pipes, so their clocks start again
//! instead.

use std::time::{Duration, Instant};

/// What the dispatcher makes of a worker's silence at a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Silence {
    /// Not past its deadline (or it holds nothing).
    Fine,
    /// Past its deadline, and we were listening: kill it.
    Unresponsive,
    /// Past its deadline, but we were not listening: start its clock again.
    NotListening,
}

/// Whether a look at `now` after the previous one at `last_look` heard
/// everything in between: the looks were no further apart than two
/// heartbeat intervals.
pub(super) fn listening(last_look: Instant, now: Instant, heartbeat_interval: Duration) -> bool {
    now.saturating_duration_since(last_look) <= heartbeat_interval * 2
}

/// The silence of a worker that `holds` calls and was last heard at
/// `last_heard`, judged at `now`; `listening` as [`listening`].
pub(super) fn judge(
    holds: bool,
    last_heard: Instant,
    now: Instant,
    timeout: Duration,
    listening: bool,
) -> Silence {
    if !holds || now.saturating_duration_since(last_heard) < timeout {
        Silence::Fine
    } else if listening {
        Silence::Unresponsive
    } else {
        Silence::NotListening
    }
}

/// The cause a worker killed for silence dies of, naming the setting.
pub(super) fn cause(timeout: Duration) -> String {
    let how_long = if timeout.subsec_millis() == 0 {
        format!("{} s", timeout.as_secs())
    } else {
        format!("{} ms", timeout.as_millis())
    };
    format!("unresponsive: no heartbeat for {how_long} (pool.liveness_timeout_ms)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(1);
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[test]
    fn a_worker_holding_nothing_is_never_silent() {
        let t0 = Instant::now();
        for now in [t0 + TIMEOUT, t0 + TIMEOUT * 100] {
            assert_eq!(judge(false, t0, now, TIMEOUT, true), Silence::Fine);
        }
    }

    #[test]
    fn a_worker_holding_calls_is_unresponsive_at_its_deadline() {
        let t0 = Instant::now();
        let just_before = t0 + TIMEOUT - Duration::from_millis(1);
        assert_eq!(judge(true, t0, just_before, TIMEOUT, true), Silence::Fine);
        assert_eq!(
            judge(true, t0, t0 + TIMEOUT, TIMEOUT, true),
            Silence::Unresponsive
        );
        // A frame moves the clock on.
        let heard = t0 + BEAT;
        assert_eq!(
            judge(true, heard, t0 + TIMEOUT, TIMEOUT, true),
            Silence::Fine
        );
    }

    #[test]
    fn silence_we_did_not_listen_to_proves_nothing() {
        let t0 = Instant::now();
        let now = t0 + TIMEOUT * 2;
        assert!(listening(now - BEAT, now, BEAT));
        assert!(listening(now - BEAT * 2, now, BEAT));
        assert!(!listening(now - BEAT * 3, now, BEAT));
        assert_eq!(judge(true, t0, now, TIMEOUT, false), Silence::NotListening);
        // Not past its deadline: nothing to restart.
        assert_eq!(judge(true, now, now, TIMEOUT, false), Silence::Fine);
    }

    #[test]
    fn the_cause_names_the_timeout_and_its_setting() {
        assert_eq!(
            cause(Duration::from_secs(10)),
            "unresponsive: no heartbeat for 10 s (pool.liveness_timeout_ms)"
        );
        assert_eq!(
            cause(Duration::from_millis(1500)),
            "unresponsive: no heartbeat for 1500 ms (pool.liveness_timeout_ms)"
        );
    }
}
