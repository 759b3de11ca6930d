//! Restart intensity, OTP style: more than `max_restarts` unexpected worker
//! deaths (crashes, failed starts) within `restart_window` delay further
//! restarts, by `restart_backoff` doubling per further death up to
//! `restart_backoff_max`; `healthy_after` without a death resets it. The
//! queue is kept meanwhile: the pool never turns "broken".
//!
//! A small state machine over plain `Instant`s: the dispatcher records each
//! death and asks when it may start workers again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use jobvisor_proto::backoff;

use crate::config::PoolConfig;

/// The restart-intensity state of one pool.
#[derive(Debug, Default)]
pub(super) struct RestartIntensity {
    /// Recent unexpected deaths, within `restart_window` of the last one.
    deaths: VecDeque<Instant>,
    /// Deaths past the intensity since the pool was last healthy: the
    /// exponent of the delay.
    over: u32,
    /// Current restart delay (zero while healthy).
    delay: Duration,
    /// No worker starts before this.
    not_before: Option<Instant>,
}

impl RestartIntensity {
    /// Records a death at `now`. Returns the new restart delay when the death
    /// is one too many for the intensity.
    pub(super) fn record_death(&mut self, now: Instant, cfg: &PoolConfig) -> Option<Duration> {
        self.deaths.push_back(now);
        while self
            .deaths
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.restart_window)
        {
            self.deaths.pop_front();
        }
        if self.deaths.len() <= cfg.max_restarts as usize {
            return None;
        }
        self.over = self.over.saturating_add(1);
        let delay = backoff::exponential(cfg.restart_backoff, cfg.restart_backoff_max, self.over);
        // `exponential` never goes below its base; a cap set below the first
        // delay has always applied from the second delay on.
        self.delay = if self.over > 1 {
            delay.min(cfg.restart_backoff_max)
        } else {
            delay
        };
        self.not_before = Some(now + self.delay);
        Some(self.delay)
    }

    /// Resets the delay when no worker died for `healthy_after`; returns
    /// whether it did.
    pub(super) fn check_healthy(&mut self, now: Instant, cfg: &PoolConfig) -> bool {
        if self.delay.is_zero() {
            return false;
        }
        let quiet = self
            .deaths
            .back()
            .is_none_or(|t| now.duration_since(*t) >= cfg.healthy_after);
        if quiet {
            self.delay = Duration::ZERO;
            self.over = 0;
            self.deaths.clear();
        }
        quiet
    }

    /// Whether workers may be started at `now`.
    pub(super) fn may_restart(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    /// Clears a restart delay that ran out by `now`; returns whether one did.
    pub(super) fn delay_over(&mut self, now: Instant) -> bool {
        if self.not_before.is_some_and(|t| now >= t) {
            self.not_before = None;
            return true;
        }
        false
    }

    /// When something is due: the end of the restart delay, or the moment
    /// the pool would be healthy again.
    pub(super) fn next_timer(&self, cfg: &PoolConfig) -> Option<Instant> {
        let mut next = self.not_before;
        if !self.delay.is_zero() {
            if let Some(t) = self.deaths.back() {
                let at = *t + cfg.healthy_after;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        next
    }

    /// Deaths within the window of the last one.
    pub(super) fn recent_deaths(&self) -> usize {
        self.deaths.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> PoolConfig {
        PoolConfig {
            max_restarts: 2,
            restart_window: 1000 * MS,
            restart_backoff: 100 * MS,
            restart_backoff_max: 350 * MS,
            healthy_after: 5000 * MS,
            ..PoolConfig::default()
        }
    }

    /// Today's rule, written the old way, to hold the new one to it.
    fn old_delays(cfg: &PoolConfig, n: usize) -> Vec<Duration> {
        let mut d = Duration::ZERO;
        (0..n)
            .map(|_| {
                d = if d.is_zero() {
                    cfg.restart_backoff
                } else {
                    (d * 2).min(cfg.restart_backoff_max)
                };
                d
            })
            .collect()
    }

    #[test]
    fn deaths_within_the_intensity_start_workers_at_once() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut r = RestartIntensity::default();
        assert_eq!(r.record_death(t0, &cfg), None);
        assert_eq!(r.record_death(t0 + MS, &cfg), None);
        assert!(r.may_restart(t0 + MS));
        assert_eq!(r.next_timer(&cfg), None);
        // Deaths older than the window are forgotten.
        assert_eq!(r.record_death(t0 + 1500 * MS, &cfg), None);
        assert_eq!(r.recent_deaths(), 1);
    }

    #[test]
    fn over_the_intensity_delays_double_to_the_cap_as_before() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut r = RestartIntensity::default();
        let mut got = Vec::new();
        for i in 0..7 {
            let now = t0 + i * MS;
            if let Some(d) = r.record_death(now, &cfg) {
                assert!(!r.may_restart(now));
                assert!(r.may_restart(now + d));
                got.push(d);
            }
        }
        assert_eq!(got, old_delays(&cfg, 5));
        assert_eq!(got, [100, 200, 350, 350, 350].map(|n| n * MS));
        // A cap below the first delay: the first, then the cap, as before.
        let low = PoolConfig {
            restart_backoff_max: 40 * MS,
            ..cfg
        };
        let mut r = RestartIntensity::default();
        let got: Vec<Duration> = (0..6)
            .filter_map(|i| r.record_death(t0 + i * MS, &low))
            .collect();
        assert_eq!(got, old_delays(&low, 4));
    }

    #[test]
    fn a_quiet_window_resets_the_delay() {
        let cfg = cfg();
        let t0 = Instant::now();
        let mut r = RestartIntensity::default();
        for i in 0..4 {
            r.record_death(t0 + i * MS, &cfg);
        }
        let last = t0 + 3 * MS;
        assert_eq!(r.next_timer(&cfg), Some(last + 200 * MS));
        assert!(r.delay_over(last + 200 * MS));
        assert!(!r.delay_over(last + 200 * MS));
        assert_eq!(r.next_timer(&cfg), Some(last + cfg.healthy_after));
        assert!(!r.check_healthy(last + cfg.healthy_after - MS, &cfg));
        assert!(r.check_healthy(last + cfg.healthy_after, &cfg));
        assert!(!r.check_healthy(last + cfg.healthy_after, &cfg));
        assert_eq!(r.next_timer(&cfg), None);
        // Healthy again: the next burst starts from the first delay.
        let t1 = last + cfg.healthy_after;
        let got: Vec<Duration> = (0..4)
            .filter_map(|i| r.record_death(t1 + i * MS, &cfg))
            .collect();
        assert_eq!(got, [100 * MS, 200 * MS]);
    }

    proptest::proptest! {
        /// Whatever the limits, the delays are today's: the first, then
        /// doubling, capped at the maximum.
        #[test]
        fn delays_match_the_old_doubling(
            max_restarts in 0u32..4,
            base_ms in 1u32..500,
            max_ms in 1u32..5_000,
            deaths in 1usize..30,
        ) {
            let cfg = PoolConfig {
                max_restarts,
                restart_window: 1000 * MS,
                restart_backoff: base_ms * MS,
                restart_backoff_max: max_ms * MS,
                ..PoolConfig::default()
            };
            let t0 = Instant::now();
            let mut r = RestartIntensity::default();
            let got: Vec<Duration> = (0..deaths)
                .filter_map(|i| r.record_death(t0 + i as u32 * MS, &cfg))
                .collect();
            let over = deaths.saturating_sub(max_restarts as usize);
            proptest::prop_assert_eq!(got, old_delays(&cfg, over));
        }
    }
}
