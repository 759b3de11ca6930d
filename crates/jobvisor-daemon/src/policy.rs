//! Failure policy: what happens to a job when an attempt ends. One module, one
//! place to read it. Pure functions; the scheduler applies the decisions.
//!
//! | attempt ended with | attempt outcome | job |
//! |---|---|---|
//! | output | `ok` | `succeeded` |
//! | task error, panic, output too large | `error` / `panic` | retried after backoff while attempts remain, else `failed` |
//! | bad input (the input does not decode) | `error` | `failed` at once: retrying cannot help |
//! | worker died (signal, exit, OOM kill) | `crashed` (code/signal, peak RSS, output tail) | retried while attempts remain, else `failed` |
//! | timeout | `timed_out` (how it was stopped) | retried while attempts remain, else `failed` |
//! | cancelled by a client | `cancelled` | `cancelled` |
//! | the pool was stopped under it (daemon shutdown) | `lost` | back to `queued`, the attempt not counted against the budget |
//! | daemon killed while it ran (found at restart) | `lost` | `queued` while attempts remain, else `failed` (in the store's `recover`) |
//!
//! Backoff: `base × 2^(attempt−1)`, capped at `max`, with "equal jitter": half
//! of it fixed, half random, so retries of many jobs do not move in lockstep.

use jobvisor_pool::{FailureKind, PoolError};
use jobvisor_proto::control::AttemptOutcome;
use jobvisor_store::Finish;

/// The facts about the job the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct JobFacts {
    /// Attempts made so far, including the one that just ended.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// First retry delay.
    pub backoff_base_ms: u64,
    /// Retry delay cap.
    pub backoff_max_ms: u64,
    /// A client asked to cancel it.
    pub cancel_requested: bool,
}

/// What an attempt's failure means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Recorded on the attempt.
    pub outcome: AttemptOutcome,
    /// The job's next state.
    pub next: Finish,
    /// Whether the attempt counts against the budget (a daemon shutdown does not).
    pub counts: bool,
}

/// Decides after a failed attempt. `now_ms` and `random` (any u64) place the retry.
pub fn on_failure(job: JobFacts, err: &PoolError, now_ms: u64, random: u64) -> Decision {
    let retry_or_fail = |outcome: AttemptOutcome, error: String| {
        let next = if job.attempts < job.max_attempts {
            Finish::Retry {
                run_at_ms: now_ms + backoff_ms(job, random),
                error: error.clone(),
            }
        } else {
            Finish::Failed {
                error: format!("{error} (attempt {} of {})", job.attempts, job.max_attempts),
            }
        };
        Decision {
            outcome,
            next,
            counts: true,
        }
    };
    if job.cancel_requested {
        return Decision {
            outcome: AttemptOutcome::Cancelled,
            next: Finish::Cancelled {
                error: "cancelled by a client".into(),
            },
            counts: true,
        };
    }
    match err {
        PoolError::Task(f) => match f.kind {
            FailureKind::Panic => {
                retry_or_fail(AttemptOutcome::Panic(f.message.clone()), f.to_string())
            }
            FailureKind::BadInput | FailureKind::UnknownTask => Decision {
                outcome: AttemptOutcome::Error(f.to_string()),
                next: Finish::Failed {
                    error: f.to_string(),
                },
                counts: true,
            },
            FailureKind::Cancelled => Decision {
                outcome: AttemptOutcome::Cancelled,
                next: Finish::Cancelled {
                    error: f.to_string(),
                },
                counts: true,
            },
            _ => retry_or_fail(AttemptOutcome::Error(f.message.clone()), f.to_string()),
        },
        PoolError::WorkerDied {
            status,
            stderr_tail,
            ..
        } => retry_or_fail(
            AttemptOutcome::Crashed {
                code: status.code,
                signal: status.signal,
                max_rss_kib: status.max_rss_kib,
                stderr_tail: stderr_tail.clone(),
            },
            err.to_string(),
        ),
        PoolError::TimedOut { how, .. } => {
            retry_or_fail(AttemptOutcome::TimedOut(how.clone()), err.to_string())
        }
        PoolError::Cancelled => Decision {
            outcome: AttemptOutcome::Cancelled,
            next: Finish::Cancelled {
                error: "cancelled".into(),
            },
            counts: true,
        },
        PoolError::Closed => Decision {
            outcome: AttemptOutcome::Lost,
            next: Finish::Requeue,
            counts: false,
        },
        other => retry_or_fail(AttemptOutcome::Error(other.to_string()), other.to_string()),
    }
}

/// The delay before the next attempt, after `job.attempts` attempts.
pub fn backoff_ms(job: JobFacts, random: u64) -> u64 {
    let exp = job.attempts.saturating_sub(1).min(32);
    let full = job
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(job.backoff_max_ms.max(job.backoff_base_ms));
    let half = full / 2;
    half + if half == 0 { 0 } else { random % (half + 1) }
}

/// A cheap random number for jitter (no cryptographic use).
pub fn jitter_seed() -> u64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0) });
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0x9E37_79B9_7F4A_7C15, |d| d.as_nanos() as u64)
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_pool::{ExitStatus, TaskFailure};

    fn facts(attempts: u32, max: u32) -> JobFacts {
        JobFacts {
            attempts,
            max_attempts: max,
            backoff_base_ms: 100,
            backoff_max_ms: 1000,
            cancel_requested: false,
        }
    }

    fn task_err(kind: FailureKind) -> PoolError {
        PoolError::Task(TaskFailure {
            kind,
            message: "m".into(),
        })
    }

    #[test]
    fn task_errors_retry_within_budget_then_fail() {
        let d = on_failure(facts(1, 3), &task_err(FailureKind::Error), 1000, 0);
        assert!(
            matches!(d.next, Finish::Retry { run_at_ms, .. } if (1050..=1100).contains(&run_at_ms))
        );
        let d = on_failure(facts(3, 3), &task_err(FailureKind::Error), 1000, 0);
        assert!(matches!(d.next, Finish::Failed { ref error } if error.contains("attempt 3 of 3")));
    }

    #[test]
    fn bad_input_never_retries() {
        let d = on_failure(facts(1, 5), &task_err(FailureKind::BadInput), 0, 0);
        assert!(matches!(d.next, Finish::Failed { .. }));
    }

    #[test]
    fn crash_records_its_evidence() {
        let err = PoolError::WorkerDied {
            pid: 7,
            status: ExitStatus {
                code: None,
                signal: Some(9),
                core_dumped: false,
                max_rss_kib: 123,
            },
            stderr_tail: vec!["oom".into()],
        };
        let d = on_failure(facts(1, 2), &err, 0, 0);
        assert_eq!(
            d.outcome,
            AttemptOutcome::Crashed {
                code: None,
                signal: Some(9),
                max_rss_kib: 123,
                stderr_tail: vec!["oom".into()]
            }
        );
        assert!(matches!(d.next, Finish::Retry { .. }));
    }

    #[test]
    fn shutdown_requeues_without_spending_the_budget() {
        let d = on_failure(facts(3, 3), &PoolError::Closed, 0, 0);
        assert_eq!(d.next, Finish::Requeue);
        assert!(!d.counts);
    }

    #[test]
    fn cancel_wins() {
        let mut f = facts(1, 3);
        f.cancel_requested = true;
        let d = on_failure(f, &task_err(FailureKind::Error), 0, 0);
        assert!(matches!(d.next, Finish::Cancelled { .. }));
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for r in [0u64, 1, 77, u64::MAX] {
            let b1 = backoff_ms(facts(1, 9), r);
            let b3 = backoff_ms(facts(3, 9), r);
            let b9 = backoff_ms(facts(9, 9), r);
            assert!((50..=100).contains(&b1), "{b1}");
            assert!((200..=400).contains(&b3), "{b3}");
            assert!((500..=1000).contains(&b9), "{b9}");
        }
    }
}
