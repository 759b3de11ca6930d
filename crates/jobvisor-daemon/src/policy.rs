//! Failure policy: what happens to a job when an attempt ends. One module, one
//! place to read it. Pure functions; the scheduler applies the decisions
//! ([`on_output`] when the attempt returned an output, [`on_failure`] when it
//! did not, [`on_recovery`] when a restarted daemon finds the job), and
//! [`charge`] says which budget a recorded outcome spent.
//!
//! | attempt ended with | attempt outcome | job |
//! |---|---|---|
//! | output | `ok` | `succeeded` |
//! | output over `limits.max_output_bytes` (as stored: JSON for a client that sent JSON), or one that does not convert to JSON | `error` | `failed` at once: the next attempt would return the same |
//! | task error, panic, output over the worker link's frame limit (the worker's `OutputTooLarge`) | `error` / `panic` | retried after backoff while the *attempt budget* (`max_attempts`) lasts, else `failed` |
//! | bad input (the input does not decode) | `error` | `failed` at once: retrying cannot help |
//! | worker died (signal, exit code, memory limit) | `crashed` (code/signal, peak RSS, output tail, cause) | retried while the *crash budget* (the job's `max_crashes`, default `jobs.max_crashes`) lasts, else `dead`: a poison job never drives a crash loop |
//! | timeout, stall (no heartbeat) | `timed_out` (how it was stopped) | retried while the attempt budget lasts, else `failed` |
//! | cancelled by a client | `cancelled` | `cancelled` |
//! | the pool was stopped under it (daemon shutdown) | `lost` | back to `queued`, the attempt not counted against a budget |
//! | daemon killed while it ran (found at restart) | `crashed`, cause [`DAEMON_DIED`] (by the store's `recover`) | a crash of the whole supervisor, charged to the crash budget: back to `queued` while it lasts, else `dead` ([`on_recovery`]), so a job that takes the daemon down every time (the OOM killer picking the daemon) does not re-run for ever |
//!
//! Budgets count the attempts of the current epoch only: those numbered
//! `budget_from` or later. A client's `retry` of a finished job starts a
//! new epoch at its next attempt, with fresh budgets; the history stays,
//! and both are stored, so a restart recounts the same ([`spent_since`]).
//!
//! The two budgets are separate: a job that keeps killing workers is
//! dead-lettered after K deaths however many task errors it may still make,
//! and a flaky task error never counts towards poison.
//!
//! Backoff: `base × 2^(attempt−1)`, capped at `max`, with "equal jitter": half
//! of it fixed, half random, so retries of many jobs do not move in lockstep.

use std::time::Duration;

use jobvisor_pool::{FailureKind, PoolError};
use jobvisor_proto::backoff;
pub use jobvisor_proto::control::DAEMON_DIED;
use jobvisor_proto::control::{Attempt, AttemptOutcome, Payload};
use jobvisor_store::Finish;
use jobvisor_worker::ConvertError;

use crate::errors::chain;

/// The facts about the job the policy needs.
#[derive(Debug, Clone, Copy)]
pub struct JobFacts {
    /// Failed attempts charged to the attempt budget so far (this one excluded).
    pub failures: u32,
    /// Worker deaths charged to the job so far (this one excluded).
    pub crashes: u32,
    /// Attempt budget: attempts that may fail by task error or timeout, plus one.
    pub max_attempts: u32,
    /// Crash budget: worker deaths after which the job is dead-lettered.
    pub max_crashes: u32,
    /// First retry delay.
    pub backoff_base_ms: u64,
    /// Retry delay cap.
    pub backoff_max_ms: u64,
    /// A client asked to cancel it.
    pub cancel_requested: bool,
}

/// Which budget an attempt's end is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// The attempt budget (task errors, panics, timeouts, stalls).
    Failure,
    /// The crash budget (the worker died under it).
    Crash,
    /// Neither (success, cancel, daemon shutdown).
    None,
}

/// The budget an attempt's recorded outcome is charged to: the one rule that
/// [`on_failure`] applies live and [`spent`] applies to a recorded history
/// (a restarted daemon recounts its jobs' budgets from their attempts).
pub fn charge(outcome: &AttemptOutcome) -> Charge {
    match outcome {
        AttemptOutcome::Error(_) | AttemptOutcome::Panic(_) | AttemptOutcome::TimedOut(_) => {
            Charge::Failure
        }
        AttemptOutcome::Crashed { .. } => Charge::Crash,
        AttemptOutcome::Running
        | AttemptOutcome::Ok
        | AttemptOutcome::Cancelled
        | AttemptOutcome::Lost => Charge::None,
    }
}

/// The budgets a job's recorded attempts have spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spent {
    /// Charged to the attempt budget.
    pub failures: u32,
    /// Charged to the crash budget.
    pub crashes: u32,
}

/// Counts the attempts of the current epoch (numbered `budget_from` or
/// later) by [`charge`].
pub fn spent_since(attempts: &[Attempt], budget_from: u32) -> Spent {
    spent(
        attempts
            .iter()
            .filter(|a| a.number >= budget_from)
            .map(|a| &a.outcome),
    )
}

/// Counts the attempts of a history by [`charge`].
pub fn spent<'a>(outcomes: impl IntoIterator<Item = &'a AttemptOutcome>) -> Spent {
    let mut s = Spent::default();
    for o in outcomes {
        match charge(o) {
            Charge::Failure => s.failures += 1,
            Charge::Crash => s.crashes += 1,
            Charge::None => {}
        }
    }
    s
}

/// What an attempt's failure means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Recorded on the attempt.
    pub outcome: AttemptOutcome,
    /// The job's next state.
    pub next: Finish,
    /// The budget it is charged to.
    pub charge: Charge,
}

/// Decides after an attempt that returned an output: `output` is it as the
/// job's record keeps it (converted to JSON when the client sent JSON), or
/// why it does not convert. Nothing here is worth a retry: a task returns
/// the same output for the same input.
pub fn on_output(output: Result<Payload, ConvertError>, max_output_bytes: usize) -> Decision {
    let (outcome, next) = match output {
        Ok(out) if out.len() > max_output_bytes => {
            let e = format!(
                "output of {} bytes exceeds limits.max_output_bytes ({max_output_bytes})",
                out.len()
            );
            (
                AttemptOutcome::Error(e.clone()),
                Finish::Failed { error: e },
            )
        }
        Ok(out) => (AttemptOutcome::Ok, Finish::Succeeded { output: out }),
        Err(e) => (
            AttemptOutcome::Error(e.to_string()),
            Finish::Failed {
                error: e.to_string(),
            },
        ),
    };
    Decision {
        charge: charge(&outcome),
        outcome,
        next,
    }
}

/// What becomes of a job whose call the pool refused at once, before any
/// attempt began: `None` when the refusal passes (the pool's queue is full,
/// or it is closing: the job waits for its turn again), else its end. A
/// call the pool cannot take (its input is over the frame limit, it cannot
/// be encoded, no worker has the task) would be refused every time: the job
/// fails, without an attempt, saying why and what to change.
pub fn on_refusal(err: &PoolError) -> Option<Finish> {
    let error = match err {
        PoolError::QueueFull { .. } | PoolError::Closed => return None,
        PoolError::InputTooLarge { .. } => format!(
            "input too large for a worker: {}; raise limits.max_input_bytes, or pass large data by file path",
            chain(err)
        ),
        other => format!("the pool refused the job: {}", chain(other)),
    };
    Some(Finish::Failed { error })
}

/// Decides after a failed attempt. `now_ms` and `random` (any u64) place the retry.
pub fn on_failure(job: JobFacts, err: &PoolError, now_ms: u64, random: u64) -> Decision {
    let (outcome, next) = if job.cancel_requested {
        (
            AttemptOutcome::Cancelled,
            Finish::Cancelled {
                error: "cancelled by a client".into(),
            },
        )
    } else {
        failure_end(job, err, now_ms, random)
    };
    Decision {
        charge: charge(&outcome),
        outcome,
        next,
    }
}

/// The recorded outcome and the next state of a failure nobody cancelled.
fn failure_end(
    job: JobFacts,
    err: &PoolError,
    now_ms: u64,
    random: u64,
) -> (AttemptOutcome, Finish) {
    let tries = job.failures + job.crashes + 1;
    let retry_at = now_ms.saturating_add(backoff_ms(
        job.backoff_base_ms,
        job.backoff_max_ms,
        tries,
        random,
    ));
    // Charged to the attempt budget: retried while it lasts.
    let failure = |outcome: AttemptOutcome, error: String| {
        let n = job.failures + 1;
        let next = if n < job.max_attempts {
            Finish::Retry {
                run_at_ms: retry_at,
                error,
            }
        } else {
            Finish::Failed {
                error: with_note(&error, &format!("(attempt {n} of {})", job.max_attempts)),
            }
        };
        (outcome, next)
    };
    match err {
        PoolError::Task(f) => match f.kind {
            FailureKind::Panic => failure(AttemptOutcome::Panic(f.message.clone()), f.to_string()),
            FailureKind::BadInput | FailureKind::UnknownTask => (
                AttemptOutcome::Error(f.to_string()),
                Finish::Failed {
                    error: f.to_string(),
                },
            ),
            FailureKind::Cancelled => (
                AttemptOutcome::Cancelled,
                Finish::Cancelled {
                    error: f.to_string(),
                },
            ),
            _ => failure(AttemptOutcome::Error(f.message.clone()), f.to_string()),
        },
        PoolError::WorkerDied {
            status,
            stderr_tail,
            cause,
            ..
        } => {
            let outcome = AttemptOutcome::Crashed {
                code: status.code,
                signal: status.signal,
                max_rss_kib: status.max_rss_kib,
                stderr_tail: stderr_tail.clone(),
                cause: cause.clone(),
            };
            let n = job.crashes + 1;
            let next = if n >= job.max_crashes {
                Finish::Dead {
                    error: format!(
                        "poison job: it killed {n} workers (max_crashes = {}); last: {}",
                        job.max_crashes,
                        chain(err)
                    ),
                }
            } else {
                Finish::Retry {
                    run_at_ms: retry_at,
                    error: chain(err),
                }
            };
            (outcome, next)
        }
        PoolError::TimedOut { how, .. } => {
            failure(AttemptOutcome::TimedOut(how.clone()), chain(err))
        }
        PoolError::Stalled { .. } => failure(AttemptOutcome::TimedOut(chain(err)), chain(err)),
        PoolError::Cancelled => (
            AttemptOutcome::Cancelled,
            Finish::Cancelled {
                error: "cancelled".into(),
            },
        ),
        PoolError::Closed => (AttemptOutcome::Lost, Finish::Requeue),
        other => failure(AttemptOutcome::Error(chain(other)), chain(other)),
    }
}

/// What becomes of a job a restarted daemon recovers, having spent
/// `spent` of its budgets (the attempts the dead daemon left running
/// included, each recorded as a crash with cause [`DAEMON_DIED`]): `None`
/// when it may run again, else its end: `dead` once the crash budget is
/// spent, saying so.
pub fn on_recovery(spent: Spent, max_crashes: u32) -> Option<Finish> {
    (spent.crashes >= max_crashes).then(|| Finish::Dead {
        error: format!(
            "poison job: {} of its attempts crashed (max_crashes = {max_crashes}), the last \
             one taking the daemon down with it (the daemon died while it ran: killed, \
             out of memory, or the machine stopped)",
            spent.crashes
        ),
    })
}

/// `error` with `note` at the end of its first line: an error that quotes a
/// command's output (exec's) goes on over more lines, and the note belongs
/// to the headline, not after the output.
fn with_note(error: &str, note: &str) -> String {
    match error.split_once('\n') {
        Some((head, rest)) => format!("{head} {note}\n{rest}"),
        None => format!("{error} {note}"),
    }
}

/// The delay before attempt `tries + 1`: `base × 2^(tries−1)`, capped, half of
/// it random ([`jobvisor_proto::backoff::jittered`], in milliseconds).
pub fn backoff_ms(base_ms: u64, max_ms: u64, tries: u32, random: u64) -> u64 {
    let ms = Duration::from_millis;
    let delay = backoff::jittered(ms(base_ms), ms(max_ms), tries, random);
    u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)
}

/// "Which kind is it?": advice from a task's CPU time against its wall time,
/// once there is enough to judge (5 attempts and 100 ms of wall time).
///
/// A CPU task (`Task`) holds a worker for its whole wall time; if the worker's
/// thread and the child processes it ran (an `exec` command's CPU counts as
/// its job's) computed for less than half of it, the task mostly waited (the
/// network, a disk, a sleep) and would not need a worker of its own as an
/// I/O task. Wall time includes waiting for a CPU: on a
/// machine oversubscribed by other work, CPU-bound tasks show a lower share too.
pub fn advice(attempts: u64, cpu_us: u64, wall_us: u64) -> Option<String> {
    if attempts < 5 || wall_us < 100_000 {
        return None;
    }
    let pct = cpu_us.saturating_mul(100) / wall_us.max(1);
    (pct < 50).then(|| {
        format!(
            "mostly waits: CPU for {pct}% of its wall time; it holds a worker process while \
             idle: an I/O-bound task (an AsyncTask would not hold a worker)"
        )
    })
}

/// A poll at least this long (µs) holds the event loop for too long.
pub const LONG_POLL_US: u64 = 10_000;

/// A single poll this long (µs) is proof enough on its own.
const PROOF_POLL_US: u64 = 1_000_000;

/// Advice for an async (I/O) task from its event-loop figures: `cpu_us` is
/// the time its polls held the loop, `max_poll_us` its longest single poll,
/// `long_poll_attempts` how many attempts had a poll of [`LONG_POLL_US`] or
/// more. An async task that holds its loop for long stretches stalls every
/// other I/O task of that worker meanwhile: it is CPU-bound work in the
/// wrong kind.
///
/// A poll is timed by the wall clock, so one long poll can be the machine's
/// doing (the loop's thread preempted mid-poll on a loaded machine): long
/// polls count when they recur (in 2 attempts and 10% of them), or when one
/// lasts a second.
pub fn async_advice(
    attempts: u64,
    cpu_us: u64,
    wall_us: u64,
    max_poll_us: u64,
    long_poll_attempts: u64,
) -> Option<String> {
    let pct = cpu_us.saturating_mul(100) / wall_us.max(1);
    let busy = attempts >= 5 && wall_us >= 100_000 && pct >= 50;
    let recurring = long_poll_attempts >= 2 && long_poll_attempts.saturating_mul(10) >= attempts;
    (recurring || max_poll_us >= PROOF_POLL_US || busy).then(|| {
        format!(
            "blocks its event loop: held it for up to {} ms at once ({pct}% of its wall time), \
             stalling the other I/O tasks of its worker: CPU-bound work (a Task runs beside \
             the loop instead)",
            max_poll_us / 1000
        )
    })
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

    #[test]
    fn a_refusal_that_would_recur_fails_the_job_and_one_that_passes_does_not() {
        assert_eq!(on_refusal(&PoolError::QueueFull { max: 4 }), None);
        assert_eq!(on_refusal(&PoolError::Closed), None);
        let Some(Finish::Failed { error }) = on_refusal(&PoolError::InputTooLarge {
            bytes: 2_000_000,
            max: 1_000_000,
        }) else {
            panic!("an input over the limit fails its job");
        };
        assert!(error.starts_with("input too large"), "{error}");
        assert!(error.contains("2000000 bytes"), "{error}");
        assert!(error.contains("raise limits.max_input_bytes"), "{error}");
        let unknown = PoolError::UnknownTask {
            name: "nope".into(),
            known: "noop".into(),
        };
        assert!(matches!(on_refusal(&unknown), Some(Finish::Failed { .. })));
    }
    use jobvisor_pool::{ExitStatus, TaskFailure};

    fn facts(failures: u32, crashes: u32) -> JobFacts {
        JobFacts {
            failures,
            crashes,
            max_attempts: 3,
            max_crashes: 3,
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

    fn crash(signal: i32) -> PoolError {
        PoolError::WorkerDied {
            cause: None,
            pid: 7,
            status: ExitStatus {
                code: None,
                signal: Some(signal),
                core_dumped: false,
                max_rss_kib: 123,
            },
            stderr_tail: vec!["last words".into()],
        }
    }

    #[test]
    fn task_errors_retry_within_the_attempt_budget_then_fail() {
        let d = on_failure(facts(0, 0), &task_err(FailureKind::Error), 1000, 0);
        assert!(
            matches!(d.next, Finish::Retry { run_at_ms, .. } if (1050..=1100).contains(&run_at_ms))
        );
        assert_eq!(d.charge, Charge::Failure);
        let d = on_failure(facts(2, 0), &task_err(FailureKind::Error), 1000, 0);
        assert!(matches!(d.next, Finish::Failed { ref error } if error.contains("attempt 3 of 3")));
    }

    #[test]
    fn the_attempt_note_ends_the_headline_of_a_many_line_error() {
        assert_eq!(
            with_note("boom", "(attempt 3 of 3)"),
            "boom (attempt 3 of 3)"
        );
        assert_eq!(
            with_note(
                "\"false\" exited with code 1\nstderr:\nno",
                "(attempt 1 of 1)"
            ),
            "\"false\" exited with code 1 (attempt 1 of 1)\nstderr:\nno"
        );
    }

    #[test]
    fn the_charge_of_a_decision_is_the_charge_of_its_recorded_outcome() {
        let errors = [
            task_err(FailureKind::Error),
            task_err(FailureKind::Panic),
            task_err(FailureKind::BadInput),
            task_err(FailureKind::Cancelled),
            task_err(FailureKind::OutputTooLarge),
            crash(9),
            PoolError::Cancelled,
            PoolError::Closed,
            PoolError::TimedOut {
                timeout_ms: 5,
                how: "SIGKILL".into(),
            },
        ];
        for e in &errors {
            let d = on_failure(facts(0, 0), e, 0, 0);
            assert_eq!(d.charge, charge(&d.outcome), "{e:?}");
        }
        let history = [
            AttemptOutcome::Error("e".into()),
            AttemptOutcome::Lost,
            AttemptOutcome::Panic("p".into()),
            AttemptOutcome::TimedOut("t".into()),
            AttemptOutcome::Cancelled,
            on_failure(facts(0, 0), &crash(9), 0, 0).outcome,
            AttemptOutcome::Ok,
        ];
        assert_eq!(
            spent(&history),
            Spent {
                failures: 3,
                crashes: 1
            }
        );
    }

    #[test]
    fn outputs_succeed_unless_too_large_or_not_convertible_and_never_retry() {
        let d = on_output(Ok(Payload::Json("[1,2]".into())), 5);
        assert_eq!(d.outcome, AttemptOutcome::Ok);
        assert_eq!(
            d.next,
            Finish::Succeeded {
                output: Payload::Json("[1,2]".into())
            }
        );
        assert_eq!(d.charge, Charge::None);
        let d = on_output(Ok(Payload::Native(vec![0; 6])), 5);
        assert!(
            matches!(d.next, Finish::Failed { ref error }
                if error == "output of 6 bytes exceeds limits.max_output_bytes (5)"),
            "{d:?}"
        );
        assert!(matches!(d.outcome, AttemptOutcome::Error(_)));
        let bad = ConvertError::BadOutput {
            task: "t".into(),
            message: "not JSON".into(),
        };
        let d = on_output(Err(bad), 5);
        assert!(matches!(d.next, Finish::Failed { .. }), "{d:?}");
        assert!(matches!(d.outcome, AttemptOutcome::Error(_)));
    }

    #[test]
    fn bad_input_never_retries() {
        let d = on_failure(facts(0, 0), &task_err(FailureKind::BadInput), 0, 0);
        assert!(matches!(d.next, Finish::Failed { .. }));
    }

    #[test]
    fn crashes_spend_their_own_budget_and_dead_letter_with_evidence() {
        // Two failures already: a crash does not spend the attempt budget.
        let d = on_failure(facts(2, 0), &crash(9), 0, 0);
        assert!(matches!(d.next, Finish::Retry { .. }), "{d:?}");
        assert_eq!(d.charge, Charge::Crash);
        assert_eq!(
            d.outcome,
            AttemptOutcome::Crashed {
                code: None,
                signal: Some(9),
                max_rss_kib: 123,
                stderr_tail: vec!["last words".into()],
                cause: None
            }
        );
        let d = on_failure(facts(0, 2), &crash(11), 0, 0);
        match d.next {
            Finish::Dead { error } => assert!(
                error.contains("killed 3 workers") && error.contains("SIGSEGV"),
                "{error}"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn budgets_count_the_attempts_since_the_last_retry() {
        let attempt = |number, outcome| Attempt {
            number,
            worker_pid: None,
            started_ms: 0,
            finished_ms: Some(1),
            outcome,
        };
        let history = [
            attempt(1, on_failure(facts(0, 0), &crash(9), 0, 0).outcome),
            attempt(2, AttemptOutcome::Error("e".into())),
            attempt(3, AttemptOutcome::daemon_died()),
            attempt(4, AttemptOutcome::Lost),
            attempt(5, AttemptOutcome::Panic("p".into())),
        ];
        let all = Spent {
            failures: 2,
            crashes: 2,
        };
        assert_eq!(spent_since(&history, 1), all);
        assert_eq!(spent_since(&history, 0), all);
        assert_eq!(
            spent_since(&history, 3),
            Spent {
                failures: 1,
                crashes: 1
            },
            "a daemon death is a crash, a shutdown's loss is not charged"
        );
        assert_eq!(spent_since(&history, 6), Spent::default());
    }

    #[test]
    fn a_recovered_job_whose_crash_budget_is_spent_is_dead_saying_why() {
        let spent = |crashes| Spent {
            failures: 7,
            crashes,
        };
        assert_eq!(on_recovery(spent(0), 1), None);
        assert_eq!(on_recovery(spent(2), 3), None, "failures do not count");
        let Some(Finish::Dead { error }) = on_recovery(spent(3), 3) else {
            panic!("dead once the crash budget is spent");
        };
        assert!(
            error.starts_with("poison job: 3 of its attempts crashed (max_crashes = 3)"),
            "{error}"
        );
        assert!(error.contains("the daemon died while it ran"), "{error}");
    }

    #[test]
    fn shutdown_requeues_without_spending_a_budget() {
        let d = on_failure(facts(2, 2), &PoolError::Closed, 0, 0);
        assert_eq!(d.next, Finish::Requeue);
        assert_eq!(d.charge, Charge::None);
    }

    #[test]
    fn cancel_wins() {
        let mut f = facts(0, 0);
        f.cancel_requested = true;
        let d = on_failure(f, &task_err(FailureKind::Error), 0, 0);
        assert!(matches!(d.next, Finish::Cancelled { .. }));
    }

    #[test]
    fn timeouts_and_stalls_spend_the_attempt_budget() {
        let t = PoolError::TimedOut {
            timeout_ms: 5,
            how: "SIGKILL".into(),
        };
        let s = PoolError::Stalled {
            stall_ms: 5,
            how: "SIGKILL".into(),
        };
        for e in [t, s] {
            let d = on_failure(facts(2, 0), &e, 0, 0);
            assert!(matches!(d.next, Finish::Failed { .. }));
            assert!(matches!(d.outcome, AttemptOutcome::TimedOut(_)));
        }
    }

    #[test]
    fn advice_flags_waiting_tasks_only_with_enough_data() {
        assert!(advice(10, 10_000, 1_000_000).is_some_and(|a| a.contains("CPU for 1%")));
        assert_eq!(advice(10, 900_000, 1_000_000), None, "CPU-bound: fine");
        assert_eq!(advice(2, 0, 1_000_000), None, "too few attempts");
        assert_eq!(advice(10, 0, 50_000), None, "too little time");
    }

    #[test]
    fn async_advice_flags_loop_blockers_only() {
        // A well-behaved download: tiny polls, long waits.
        assert_eq!(async_advice(100, 5_000, 10_000_000, 300, 0), None);
        // Long polls that recur flag it.
        assert!(
            async_advice(2, 60_000, 200_000, 50_000, 2).is_some_and(|a| a.contains("up to 50 ms"))
        );
        assert!(async_advice(20, 60_000, 2_000_000, 50_000, 2).is_some());
        // One could be the machine's doing (a preempted loop), and so could
        // a few among many.
        assert_eq!(async_advice(6, 60_000, 200_000, 50_000, 1), None);
        assert_eq!(async_advice(100, 60_000, 10_000_000, 50_000, 2), None);
        // One poll of a second is not preemption.
        assert!(async_advice(1, 1_200_000, 1_300_000, 1_200_000, 1).is_some());
        // Mostly busy on the loop, in short polls, over enough attempts.
        assert!(async_advice(10, 900_000, 1_000_000, 2_000, 0).is_some_and(|a| a.contains("90%")));
        assert_eq!(
            async_advice(2, 900_000, 1_000_000, 2_000, 0),
            None,
            "too few attempts"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for r in [0u64, 1, 77, u64::MAX] {
            let b1 = backoff_ms(100, 1000, 1, r);
            let b3 = backoff_ms(100, 1000, 3, r);
            let b9 = backoff_ms(100, 1000, 9, r);
            assert!((50..=100).contains(&b1), "{b1}");
            assert!((200..=400).contains(&b3), "{b3}");
            assert!((500..=1000).contains(&b9), "{b9}");
        }
    }
}
