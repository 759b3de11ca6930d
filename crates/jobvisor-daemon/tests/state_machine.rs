//! Property tests of a job's state machine, driven by the real failure policy
//! (`jobvisor_daemon::policy::on_failure`) the way the scheduler applies it.
//!
//! A model job goes through random sequences of events: attempts that end
//! with any `PoolError` (task error, panic, bad input, unknown task, output
//! too large, worker died, timed out, stalled, cancelled, pool closed, and the
//! pool's other errors) or succeed, and client cancels at any moment. The
//! model mirrors the scheduler: a queued or retrying job starts an attempt
//! (`Running`), the attempt's end goes through `on_failure` with the job's
//! `JobFacts`, its `Charge` is added to the failure or crash counter, and the
//! decision's `Finish` gives the next state; a cancel of a queued or retrying
//! job ends it at once, a cancel of a running one sets `cancel_requested`.
//!
//! Checked on every step:
//! - every transition is in the legal relation below (terminal states absorb);
//! - `dead` only after a worker death that brings `crashes` to `max_crashes`;
//! - `failed` only when `failures` reaches `max_attempts`, or at once on bad
//!   input (or an unknown task);
//! - retry delays are `base × 2^(tries−1)` capped, half of it jitter: within
//!   `[base/2, max(base, max)]`;
//! - the budgets a restarted daemon recounts from the recorded attempt
//!   outcomes equal the live counters;
//! - the job ends within `max_attempts + max_crashes − 1` attempts that were
//!   not lost (a lost attempt, the pool closed under it, is not counted),
//!   whatever failures follow.

use jobvisor_daemon::policy::{self, Charge, JobFacts};
use jobvisor_pool::{ExitStatus, FailureKind, PoolError, TaskFailure};
use jobvisor_proto::control::{AttemptOutcome, JobState};
use jobvisor_store::Finish;
use proptest::prelude::*;

/// The transitions this model makes: the legal ones
/// ([`JobState::can_become`]) that need neither a client's `retry` nor a
/// dependency (the model has neither), so terminal states absorb and a job
/// that waits only starts an attempt or is cancelled.
fn legal(from: JobState, to: JobState) -> bool {
    from.can_become(to)
        && !from.is_terminal()
        && (from == JobState::Running || matches!(to, JobState::Running | JobState::Cancelled))
}

#[derive(Debug, Clone)]
enum Event {
    /// An attempt runs (one is started first if the job waits) and ends so.
    Attempt(Result<(), PoolError>),
    /// A client asks to cancel the job.
    Cancel,
}

#[derive(Debug, Clone, Copy)]
struct Budgets {
    max_attempts: u32,
    max_crashes: u32,
    backoff_base_ms: u64,
    backoff_max_ms: u64,
}

#[derive(Debug)]
struct Model {
    b: Budgets,
    state: JobState,
    failures: u32,
    crashes: u32,
    cancel_requested: bool,
    /// Outcomes recorded on the attempts, in order.
    outcomes: Vec<AttemptOutcome>,
    /// (from, to, why) for every change.
    trace: Vec<(JobState, JobState, String)>,
    now_ms: u64,
}

const NOW_MS: u64 = 1_800_000_000_000;

impl Model {
    fn new(b: Budgets) -> Self {
        Self {
            b,
            state: JobState::Queued,
            failures: 0,
            crashes: 0,
            cancel_requested: false,
            outcomes: Vec::new(),
            trace: Vec::new(),
            now_ms: NOW_MS,
        }
    }

    fn not_lost(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| **o != AttemptOutcome::Lost)
            .count()
    }

    fn bound(&self) -> usize {
        (self.b.max_attempts + self.b.max_crashes - 1) as usize
    }

    fn go(&mut self, to: JobState, why: impl Into<String>) {
        let from = self.state;
        let why = why.into();
        assert!(
            legal(from, to),
            "illegal transition {from:?} -> {to:?} ({why}); trace: {:#?}",
            self.trace
        );
        self.trace.push((from, to, why));
        self.state = to;
    }

    fn apply(&mut self, ev: &Event, random: u64) {
        if self.state.is_terminal() {
            // Terminal states absorb: the scheduler no longer holds the job,
            // a cancel is answered "already ...", no attempt starts.
            return;
        }
        match ev {
            Event::Cancel => match self.state {
                JobState::Queued | JobState::Retrying => {
                    self.go(JobState::Cancelled, "client cancel while waiting")
                }
                JobState::Running => self.cancel_requested = true,
                s => unreachable!("{s:?}"),
            },
            Event::Attempt(result) => {
                if self.state != JobState::Running {
                    // Retrying: its backoff has passed.
                    self.go(JobState::Running, "attempt started");
                }
                self.now_ms += 1_000;
                match result {
                    Ok(()) => {
                        self.outcomes.push(AttemptOutcome::Ok);
                        self.go(JobState::Succeeded, "attempt succeeded");
                    }
                    Err(e) => self.fail(e, random),
                }
            }
        }
    }

    fn fail(&mut self, e: &PoolError, random: u64) {
        let facts = JobFacts {
            failures: self.failures,
            crashes: self.crashes,
            max_attempts: self.b.max_attempts,
            max_crashes: self.b.max_crashes,
            backoff_base_ms: self.b.backoff_base_ms,
            backoff_max_ms: self.b.backoff_max_ms,
            cancel_requested: self.cancel_requested,
        };
        let d = policy::on_failure(facts, e, self.now_ms, random);
        let ctx = || format!("{e:?} with {facts:?} -> {d:?}");

        // The charge, by the kind of end.
        let expected_charge = if self.cancel_requested {
            Charge::None
        } else {
            match e {
                PoolError::WorkerDied { .. } => Charge::Crash,
                PoolError::Cancelled | PoolError::Closed => Charge::None,
                PoolError::Task(f) if f.kind == FailureKind::Cancelled => Charge::None,
                _ => Charge::Failure,
            }
        };
        assert_eq!(d.charge, expected_charge, "{}", ctx());
        match d.charge {
            Charge::Failure => self.failures += 1,
            Charge::Crash => self.crashes += 1,
            Charge::None => {}
        }

        // The recorded outcome says what happened.
        match (&d.outcome, e) {
            (AttemptOutcome::Cancelled, _) => assert!(
                self.cancel_requested
                    || matches!(e, PoolError::Cancelled)
                    || matches!(e, PoolError::Task(f) if f.kind == FailureKind::Cancelled),
                "{}",
                ctx()
            ),
            (
                AttemptOutcome::Crashed {
                    code,
                    signal,
                    max_rss_kib,
                    stderr_tail,
                    cause,
                },
                PoolError::WorkerDied {
                    status,
                    stderr_tail: tail,
                    cause: c,
                    ..
                },
            ) => {
                assert_eq!(
                    (code, signal, max_rss_kib, stderr_tail, cause),
                    (&status.code, &status.signal, &status.max_rss_kib, tail, c),
                    "the crash evidence is kept"
                );
            }
            (
                AttemptOutcome::TimedOut(_),
                PoolError::TimedOut { .. } | PoolError::Stalled { .. },
            ) => {}
            (AttemptOutcome::Panic(m), PoolError::Task(f)) => {
                assert_eq!(f.kind, FailureKind::Panic);
                assert_eq!(m, &f.message);
            }
            (AttemptOutcome::Lost, PoolError::Closed) => {}
            (AttemptOutcome::Error(_), PoolError::Task(f)) => assert!(
                !matches!(f.kind, FailureKind::Panic | FailureKind::Cancelled),
                "{}",
                ctx()
            ),
            (AttemptOutcome::Error(_), other) => assert!(
                !matches!(
                    other,
                    PoolError::WorkerDied { .. }
                        | PoolError::TimedOut { .. }
                        | PoolError::Stalled { .. }
                        | PoolError::Cancelled
                        | PoolError::Closed
                ),
                "{}",
                ctx()
            ),
            _ => panic!("outcome does not match the error: {}", ctx()),
        }
        self.outcomes.push(d.outcome.clone());

        // The next state, and why it may be that.
        let to = d.next.state();
        match &d.next {
            Finish::Dead { error } => {
                assert!(
                    matches!(e, PoolError::WorkerDied { .. }),
                    "dead without a worker death: {}",
                    ctx()
                );
                assert_eq!(self.crashes, self.b.max_crashes, "{}", ctx());
                assert!(error.contains("poison job"), "{error}");
            }
            Finish::Failed { error } => {
                let bad_input = matches!(
                    e,
                    PoolError::Task(f)
                        if matches!(f.kind, FailureKind::BadInput | FailureKind::UnknownTask)
                );
                assert!(
                    bad_input || self.failures == self.b.max_attempts,
                    "failed with budget left: {}",
                    ctx()
                );
                if !bad_input {
                    let n = self.b.max_attempts;
                    assert!(error.contains(&format!("(attempt {n} of {n})")), "{error}");
                }
            }
            Finish::Retry { run_at_ms, .. } => {
                assert!(self.failures < self.b.max_attempts, "{}", ctx());
                assert!(self.crashes < self.b.max_crashes, "{}", ctx());
                let delay = run_at_ms
                    .checked_sub(self.now_ms)
                    .unwrap_or_else(|| panic!("retry scheduled in the past: {}", ctx()));
                let (base, max) = (self.b.backoff_base_ms, self.b.backoff_max_ms);
                assert!(
                    delay >= base / 2 && delay <= max.max(base),
                    "delay {delay} outside [{}, {}]: {}",
                    base / 2,
                    max.max(base),
                    ctx()
                );
                // Exactly: base × 2^(tries−1), capped, the upper half random.
                let tries = facts.failures + facts.crashes + 1;
                let full = base
                    .saturating_mul(1u64 << (tries - 1).min(32))
                    .min(max.max(base));
                assert!(
                    (full / 2..=full).contains(&delay),
                    "delay {delay} for try {tries}: {}",
                    ctx()
                );
            }
            Finish::Cancelled { .. } | Finish::Requeue => {}
            Finish::Succeeded { .. } => panic!("a failure cannot succeed: {}", ctx()),
            Finish::Revive { .. } => panic!("only a client revives a job: {}", ctx()),
        }
        let why = format!("{:?} / {:?}", d.outcome, d.charge);
        self.go(to, why);

        // What a restarted daemon recounts from the history is what we hold.
        let spent = policy::spent(&self.outcomes);
        assert_eq!(
            (spent.failures, spent.crashes),
            (self.failures, self.crashes),
            "budgets recounted from the history differ: {:?}",
            self.outcomes
        );
        assert!(
            self.not_lost() <= self.bound(),
            "{} attempts (not lost), more than {}: {:?}",
            self.not_lost(),
            self.bound(),
            self.outcomes
        );
    }
}

fn status() -> impl Strategy<Value = ExitStatus> {
    (
        prop::option::of(-1i32..256),
        prop::option::of(1i32..65),
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(code, signal, core_dumped, max_rss_kib)| ExitStatus {
            code,
            signal,
            core_dumped,
            max_rss_kib,
        })
}

fn pool_error() -> impl Strategy<Value = PoolError> {
    let kind = prop_oneof![
        Just(FailureKind::Error),
        Just(FailureKind::Panic),
        Just(FailureKind::BadInput),
        Just(FailureKind::UnknownTask),
        Just(FailureKind::Cancelled),
        Just(FailureKind::OutputTooLarge),
    ];
    let text = "[a-z ]{0,12}";
    prop_oneof![
        // Weighted towards the errors that keep a job alive, so that long
        // sequences reach the ends of both budgets.
        6 => (kind, text).prop_map(|(kind, message)| PoolError::Task(TaskFailure { kind, message })),
        4 => (prop::option::of(text), any::<u32>(), status(), prop::collection::vec(text, 0..3))
            .prop_map(|(cause, pid, status, stderr_tail)| PoolError::WorkerDied {
                cause,
                pid,
                status,
                stderr_tail,
            }),
        2 => (any::<u64>(), text).prop_map(|(timeout_ms, how)| PoolError::TimedOut { timeout_ms, how }),
        2 => (any::<u64>(), text).prop_map(|(stall_ms, how)| PoolError::Stalled { stall_ms, how }),
        1 => Just(PoolError::Cancelled),
        2 => Just(PoolError::Closed),
        1 => text.prop_map(|t| PoolError::Decode(std::sync::Arc::new(std::io::Error::other(t)))),
        1 => Just(PoolError::QueueFull { max: 1 }),
        1 => text.prop_map(|t| PoolError::Startup(std::sync::Arc::new(std::io::Error::other(t)))),
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        2 => Just(Event::Attempt(Ok(()))),
        20 => pool_error().prop_map(|e| Event::Attempt(Err(e))),
        2 => Just(Event::Cancel),
    ]
}

fn budgets() -> impl Strategy<Value = Budgets> {
    (1u32..=6, 1u32..=5, 0u64..=120_000, 0u64..=3_600_000).prop_map(
        |(max_attempts, max_crashes, base, max)| Budgets {
            max_attempts,
            max_crashes,
            backoff_base_ms: base,
            // As the scheduler stores it: the cap is at least the base.
            backoff_max_ms: max.max(base),
        },
    )
}

/// Attempt ends that are neither successes, nor lost, nor cancels: what a
/// job that keeps failing goes through.
fn hard_failure() -> impl Strategy<Value = PoolError> {
    pool_error().prop_filter("keeps the job failing", |e| {
        !matches!(e, PoolError::Closed | PoolError::Cancelled)
            && !matches!(e, PoolError::Task(f) if f.kind == FailureKind::Cancelled)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random histories: every step legal, the budgets and backoff hold, and
    /// a job that keeps failing afterwards ends within its budgets.
    #[test]
    fn job_state_machine(
        b in budgets(),
        events in prop::collection::vec((event(), any::<u64>()), 0..40),
        tail in prop::collection::vec((hard_failure(), any::<u64>()), 1..8),
    ) {
        let mut m = Model::new(b);
        for (ev, random) in &events {
            m.apply(ev, *random);
        }
        // Then it only fails: it must end, within the bound.
        let mut spins = 0;
        for (e, random) in tail.iter().cycle() {
            if m.state.is_terminal() {
                break;
            }
            spins += 1;
            prop_assert!(spins <= m.bound() + 1, "never ends: {:#?}", m);
            m.apply(&Event::Attempt(Err(e.clone())), *random);
        }
        prop_assert!(m.state.is_terminal());
        prop_assert!(m.not_lost() <= m.bound());
    }

    /// Only worker deaths: dead-lettered after exactly `max_crashes`, however
    /// much of the attempt budget is left.
    #[test]
    fn only_crashes_dead_letter_at_max_crashes(
        b in budgets(),
        random in any::<u64>(),
        st in status(),
    ) {
        let mut m = Model::new(b);
        let death = PoolError::WorkerDied { cause: None, pid: 1, status: st, stderr_tail: vec![] };
        for _ in 0..b.max_crashes {
            m.apply(&Event::Attempt(Err(death.clone())), random);
        }
        prop_assert_eq!(m.state, JobState::Dead);
        prop_assert_eq!(m.crashes, b.max_crashes);
        prop_assert_eq!(m.failures, 0);
    }

    /// Only task errors: failed after exactly `max_attempts`.
    #[test]
    fn only_task_errors_fail_at_max_attempts(b in budgets(), random in any::<u64>()) {
        let mut m = Model::new(b);
        let e = PoolError::Task(TaskFailure { kind: FailureKind::Error, message: "no".into() });
        for _ in 0..b.max_attempts {
            m.apply(&Event::Attempt(Err(e.clone())), random);
        }
        prop_assert_eq!(m.state, JobState::Failed);
        prop_assert_eq!(m.failures, b.max_attempts);
    }

    /// A shutdown under a running attempt re-queues it without spending any
    /// budget, however often it happens.
    #[test]
    fn lost_attempts_spend_nothing(b in budgets(), n in 1usize..50, random in any::<u64>()) {
        let mut m = Model::new(b);
        for _ in 0..n {
            m.apply(&Event::Attempt(Err(PoolError::Closed)), random);
            prop_assert_eq!(m.state, JobState::Queued);
        }
        prop_assert_eq!((m.failures, m.crashes, m.not_lost()), (0, 0, 0));
        m.apply(&Event::Attempt(Ok(())), random);
        prop_assert_eq!(m.state, JobState::Succeeded);
    }
}
