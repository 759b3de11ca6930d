//! What a chaos run does ([`ChaosConfig`]: the short run of the test suite,
//! the full proof of `scripts/chaos`, the `JOBVISOR_CHAOS_*` overrides), the
//! daemon config it runs with, and the a-priori odds that random kills alone
//! dead-letter a job that is not poison.

use std::time::Duration;

/// Rough time a job attempt occupies a worker (spin averages 3 ms, plus
/// dispatch), for the a-priori estimate of how often a random kill hits it.
const ATTEMPT_MS_ESTIMATE: f64 = 4.0;

/// What a chaos run does.
#[derive(Debug, Clone)]
pub(super) struct ChaosConfig {
    /// Jobs submitted in all.
    pub(super) jobs: usize,
    /// Jobs per submit request.
    pub(super) batch: usize,
    /// Batch `b` is submitted once the jobs of batch `b - lag_batches` that are
    /// meant to succeed are terminal, so the submissions (and the daemon kills,
    /// placed by submission progress) are spread over the whole run instead of
    /// all landing in its first second, and the workers stay busy with regular
    /// jobs while the poison and failing ones trail through their retries.
    pub(super) lag_batches: usize,
    /// Worker processes.
    pub(super) workers: usize,
    /// SIGKILLs of the daemon (each followed by a restart).
    pub(super) daemon_kills: usize,
    /// Mean interval between two worker SIGKILLs (uniform jitter of ±50%).
    pub(super) worker_kill_every: Duration,
    /// How long the one SIGSTOPped worker stays stopped.
    pub(super) sigstop_for: Duration,
    /// `jobs.max_attempts`: attempt budget (task errors).
    pub(super) max_attempts: u32,
    /// `jobs.max_crashes`: crash budget (worker deaths) before `dead`.
    pub(super) max_crashes: u32,
    /// Seed of every random choice of the run.
    pub(super) seed: u64,
    /// Give up waiting for the jobs after this long.
    pub(super) deadline: Duration,
}

impl ChaosConfig {
    /// The run inside the test suite: well under a minute in a debug build on
    /// two cores.
    pub(super) fn short() -> Self {
        Self {
            jobs: 1_000,
            batch: 50,
            lag_batches: 4,
            workers: 2,
            daemon_kills: 2,
            worker_kill_every: Duration::from_millis(20),
            sigstop_for: Duration::from_millis(500),
            max_attempts: 3,
            // With a kill every ~20 ms over 2 workers an attempt is hit with
            // p ≈ 4 ms / 40 ms = 0.1; 10 crashes in a row: 1e-10 per job.
            max_crashes: 10,
            seed: 0,
            deadline: Duration::from_secs(120),
        }
    }

    /// The full proof (`scripts/chaos`).
    pub(super) fn full() -> Self {
        Self {
            jobs: 20_000,
            batch: 200,
            lag_batches: 5,
            workers: 2,
            daemon_kills: 5,
            worker_kill_every: Duration::from_millis(10),
            sigstop_for: Duration::from_millis(500),
            max_attempts: 3,
            // A kill every ~10 ms over 2 workers: p ≈ 4 ms / 20 ms = 0.2 per
            // attempt (measured: ~0.1); 18 crashes: 2.6e-13 per succeeding
            // job, ≈ 1e-7 for the whole run (see the printed estimate).
            max_crashes: 18,
            seed: 0,
            deadline: Duration::from_secs(1800),
        }
    }

    pub(super) fn with_env_overrides(mut self) -> Self {
        fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
            std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
        }
        self.seed = var("JOBVISOR_CHAOS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        if let Some(n) = var("JOBVISOR_CHAOS_JOBS") {
            self.jobs = n;
        }
        if let Some(ms) = var("JOBVISOR_CHAOS_KILL_MS") {
            self.worker_kill_every = Duration::from_millis(ms);
        }
        if let Some(n) = var("JOBVISOR_CHAOS_DAEMON_KILLS") {
            self.daemon_kills = n;
        }
        self
    }

    /// The daemon's config file for the run: the budgets above, and no
    /// restart intensity limit (worker deaths are the point here).
    pub(super) fn daemon_toml(&self) -> String {
        format!(
            "# Written by the chaos test (tests/chaos/).\n\
             [limits]\n\
             max_queued_jobs = {queued}\n\
             [jobs]\n\
             max_attempts = {a}\n\
             # High enough that random kills (not the job) almost never spend it: see the estimate printed.\n\
             max_crashes = {c}\n\
             # Small backoff: retries (thousands of them) should not stretch the run.\n\
             backoff_base_ms = 5\n\
             backoff_max_ms = 50\n\
             [pool]\n\
             # Restart intensity guards production from crash loops by delaying restarts (up to\n\
             # restart_backoff_max_ms). Here worker deaths are the point (hundreds per second from\n\
             # kills and poison jobs); a degraded pool would only stretch the run, and poison jobs\n\
             # are stopped by the crash budget anyway. So: effectively unlimited.\n\
             max_restarts = 1000000\n\
             restart_window_ms = 1000\n",
            queued = self.jobs.max(100_000),
            a = self.max_attempts,
            c = self.max_crashes,
        )
    }

    /// A-priori probability that a random worker kill hits a given attempt.
    pub(super) fn p_hit_prior(&self) -> f64 {
        let every = self.worker_kill_every.as_secs_f64() * 1000.0;
        (ATTEMPT_MS_ESTIMATE / (self.workers as f64 * every.max(0.001))).min(1.0)
    }
}

/// Probability that any of `normal` succeeding jobs and `failing` failing jobs
/// is dead-lettered by random kills alone, when each attempt is hit with
/// probability `p`: a succeeding job needs `C` crashes before its first clean
/// attempt (p^C); a failing job may interleave its `A - 1` errors with them, so
/// at most binom(A-1+C, C)·p^C.
pub(super) fn p_wrongly_dead(normal: usize, failing: usize, p: f64, a: u32, c: u32) -> f64 {
    let pc = p.powi(c as i32);
    let mut binom = 1.0;
    for i in 1..a {
        binom = binom * f64::from(c + i) / f64::from(i);
    }
    (normal as f64 * pc + failing as f64 * binom * pc).min(1.0)
}
