//! Exponential backoff: the one rule for "wait longer after each failure, up
//! to a cap", used by job retries (the daemon's policy), worker restarts past
//! the restart intensity (the pool) and held store writes (the store).
//!
//! Pure functions of plain numbers, so each user keeps its own state (a try
//! count) and the rule is tested once.

use std::time::Duration;

/// The delay before try `tries + 1` after `tries` failures: `base × 2^(tries−1)`
/// capped at `max` (never below `base`); zero for `tries == 0`.
pub fn exponential(base: Duration, max: Duration, tries: u32) -> Duration {
    if tries == 0 {
        return Duration::ZERO;
    }
    let cap = max.max(base);
    let mut delay = base;
    for _ in 1..tries {
        if delay >= cap {
            break;
        }
        delay = delay.saturating_mul(2);
    }
    delay.min(cap)
}

/// [`exponential`] with half of the delay random ("equal jitter"), so that
/// many failures at one moment do not all retry at the same one: the result
/// lies in `[d/2, d]` for the unjittered `d`, chosen by `random`.
pub fn jittered(base: Duration, max: Duration, tries: u32, random: u64) -> Duration {
    let full = u64::try_from(exponential(base, max, tries).as_millis()).unwrap_or(u64::MAX);
    let half = full / 2;
    let extra = if half == 0 { 0 } else { random % (half + 1) };
    Duration::from_millis(half + extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_and_is_capped() {
        assert_eq!(exponential(100 * MS, 1000 * MS, 0), Duration::ZERO);
        assert_eq!(exponential(100 * MS, 1000 * MS, 1), 100 * MS);
        assert_eq!(exponential(100 * MS, 1000 * MS, 2), 200 * MS);
        assert_eq!(exponential(100 * MS, 1000 * MS, 4), 800 * MS);
        assert_eq!(exponential(100 * MS, 1000 * MS, 5), 1000 * MS);
        assert_eq!(exponential(100 * MS, 1000 * MS, u32::MAX), 1000 * MS);
    }

    #[test]
    fn a_cap_below_the_base_is_the_base() {
        assert_eq!(exponential(100 * MS, 10 * MS, 3), 100 * MS);
    }

    #[test]
    fn huge_tries_do_not_overflow() {
        let day = Duration::from_secs(86_400);
        assert_eq!(exponential(Duration::from_secs(1), day, 40), day);
        assert_eq!(
            exponential(Duration::MAX / 2, Duration::MAX, 64),
            Duration::MAX
        );
    }

    #[test]
    fn jitter_keeps_between_half_and_full() {
        for r in [0, 1, 7, 49, 50, 51, 10_000, u64::MAX] {
            let d = jittered(100 * MS, 1000 * MS, 2, r);
            assert!(d >= 100 * MS && d <= 200 * MS, "{d:?} for random {r}");
        }
        assert_eq!(jittered(100 * MS, 1000 * MS, 2, 0), 100 * MS);
        // Half of 1 ms rounds down to nothing: no jitter, and no delay.
        assert_eq!(jittered(MS, MS, 1, 5), Duration::ZERO);
    }
}
