//! When a call escalates, and what stops it: the rule for timeouts, stall
//! timeouts and cancels, as a small state machine over plain `Instant`s that
//! the dispatcher drives from its timer and tests drive directly.
//!
//! | stage  | entered when                                   | lasts          | then           |
//! |--------|------------------------------------------------|----------------|----------------|
//! | `Soft` | timeout passed / no heartbeat for `stall` / cancel | `cancel_grace` | `Term`     |
//! | `Term` | no answer after the soft stage: SIGTERM to the worker's group | `term_grace` | `Kill` |
//! | `Kill` | still alive: SIGKILL to the worker and its group | until reaped  | —              |
//!
//! The soft stage is extended, never shortened, while the call has not
//! reached the worker's code yet (the worker counts a CPU call's timeout from
//! when it started it; an async call may not have reached the event loop):
//! up to [`patience`], after which the worker is stopped anyway.

use std::time::{Duration, Instant};

use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_proto::worker::TaskFailure;

use crate::config::PoolConfig;
use crate::error::PoolError;

/// Why a call escalates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    Timeout,
    Stall,
    Cancel,
}

/// How far it went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// The worker was told (its own deadline, or a `Cancel` frame); we wait.
    Soft,
    /// SIGTERM went to the worker's process group.
    Term,
    /// SIGKILL went to the worker and its group.
    Kill,
}

/// The signal the dispatcher sends when an escalation moves on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signal {
    /// SIGTERM to the worker's process group.
    TermGroup,
    /// SIGKILL to the worker, then to its process group.
    Kill,
}

/// One call's escalation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Escalation {
    pub(super) reason: Reason,
    pub(super) stage: Stage,
    /// When the current stage runs out.
    pub(super) until: Instant,
    /// The call it is for.
    pub(super) call: u64,
    /// When it started (bounds how long the soft stage may be extended while
    /// the call has not reached the worker's code).
    pub(super) began: Instant,
}

/// What the worker's beacon says about its CPU thread, read by the
/// dispatcher when a CPU call's soft stage runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CpuView {
    /// The call the CPU thread runs (0: none).
    pub(super) running: u64,
    /// That call's deadline on the worker's monotonic clock, µs.
    pub(super) deadline_us: Option<u64>,
    /// Our reading of the same clock, µs.
    pub(super) now_us: u64,
}

/// How long, at least, the soft stage of a call's escalation is extended
/// while the call has not reached the worker's code (an async call whose loop
/// is not in a poll; a CPU call the beacon does not show running), before the
/// worker is killed anyway: a stopped worker, a call held up behind a CPU task
/// that ignores its ctx, a machine too loaded to schedule the worker.
const PATIENCE: Duration = Duration::from_secs(10);

/// How often a call waited for with [`patience`] is looked at again: every
/// `cancel_grace`, but not in a busy loop when that is zero.
pub(super) fn recheck(cfg: &PoolConfig) -> Duration {
    cfg.cancel_grace.max(Duration::from_millis(10))
}

/// [`PATIENCE`], or a whole escalation when that is longer.
pub(super) fn patience(cfg: &PoolConfig) -> Duration {
    PATIENCE.max(cfg.cancel_grace + cfg.term_grace)
}

impl Escalation {
    /// A cancel asked for by the caller, at `now`.
    pub(super) fn cancel(call: u64, now: Instant, cfg: &PoolConfig) -> Self {
        Escalation {
            reason: Reason::Cancel,
            stage: Stage::Soft,
            until: now + cfg.cancel_grace,
            call,
            began: now,
        }
    }

    /// The escalation call `call` starts now, if any: its `timeout` passed
    /// since `since` (the worker enforces the same deadline itself: the soft
    /// stage waits for its answer), or no sign of life since `last_beat` for
    /// its `stall` timeout (the caller sends it a Cancel). One rule for CPU
    /// calls and async calls.
    pub(super) fn due(
        call: u64,
        timeout: Option<Duration>,
        stall: Option<Duration>,
        since: Instant,
        last_beat: Instant,
        now: Instant,
        cfg: &PoolConfig,
    ) -> Option<Self> {
        let reason = if timeout.is_some_and(|t| now >= since + t) {
            Reason::Timeout
        } else if stall.is_some_and(|s| now >= last_beat + s) {
            Reason::Stall
        } else {
            return None;
        };
        Some(Escalation {
            reason,
            stage: Stage::Soft,
            until: now + cfg.cancel_grace,
            call,
            began: now,
        })
    }

    /// We sent a signal for it (its death is our doing, not the worker's).
    pub(super) fn signalled(&self) -> bool {
        self.stage != Stage::Soft
    }

    /// The next stage, now that the current one ran out: the signal to send,
    /// if any is left to send.
    pub(super) fn advance(&mut self, now: Instant, cfg: &PoolConfig) -> Option<Signal> {
        match self.stage {
            Stage::Soft => {
                self.stage = Stage::Term;
                self.until = now + cfg.term_grace;
                Some(Signal::TermGroup)
            }
            Stage::Term => {
                self.stage = Stage::Kill;
                Some(Signal::Kill)
            }
            Stage::Kill => None,
        }
    }

    /// An async call's escalation when its timer fires at `now`; `in_poll`
    /// is whether the worker's event loop is inside a poll (its I/O beacon).
    /// No answer but the loop not in a poll means the call has not reached
    /// it yet (the CPU thread routes calls, and a CPU task that never looks
    /// at its ctx delays that): killing would fail the CPU call for nothing,
    /// so the soft stage waits longer, up to [`patience`]. Otherwise the loop
    /// is blocked (a task that does not yield) and only a signal frees it.
    pub(super) fn tick_io(
        &mut self,
        now: Instant,
        in_poll: bool,
        cfg: &PoolConfig,
    ) -> Option<Signal> {
        if now < self.until || self.stage == Stage::Kill {
            return None;
        }
        if self.stage == Stage::Soft && !in_poll && now < self.began + patience(cfg) {
            self.until = now + recheck(cfg);
            return None;
        }
        self.advance(now, cfg)
    }

    /// A CPU call's escalation whose stage ran out at `now` (the caller
    /// checks `now >= until` before reading `view`): the soft stage of a
    /// timeout may be extended (see [`cpu_soft_extension`]), else it moves on.
    pub(super) fn tick_cpu(
        &mut self,
        now: Instant,
        view: CpuView,
        cfg: &PoolConfig,
    ) -> Option<Signal> {
        if let Some(later) = self.cpu_soft_extension(now, view, cfg) {
            self.until = later;
            return None;
        }
        self.advance(now, cfg)
    }

    /// When the soft stage of a CPU call's timeout ends later than planned:
    /// the worker counts the timeout from when it started the call, we from
    /// when it was sent (or reached the head of the worker's line), and on a
    /// loaded machine the worker can start a call well after that. A call the
    /// beacon shows running gets `cancel_grace` after its own deadline; one
    /// not started yet gets more time, up to [`patience`] (a stopped worker,
    /// a call whose reply is on its way). `None`: escalate now.
    fn cpu_soft_extension(&self, now: Instant, view: CpuView, cfg: &PoolConfig) -> Option<Instant> {
        if self.stage != Stage::Soft || self.reason != Reason::Timeout {
            return None;
        }
        if view.running != self.call {
            return (now < self.began + patience(cfg)).then(|| now + recheck(cfg));
        }
        let theirs = view.deadline_us?;
        let ours = view.now_us;
        let deadline = if theirs >= ours {
            now + Duration::from_micros(theirs - ours)
        } else {
            now.checked_sub(Duration::from_micros(ours - theirs))?
        };
        let until = deadline + cfg.cancel_grace;
        (until > now).then_some(until)
    }

    /// The error of a call (with these `timeout` and `stall` limits) stopped
    /// by this escalation, given how its worker ended.
    pub(super) fn error(
        &self,
        timeout: Option<Duration>,
        stall: Option<Duration>,
        status: &ExitStatus,
    ) -> PoolError {
        // Once we signalled, the signal the process died of says which stage
        // stopped it: a reap seen late can find the escalation a stage further
        // on (SIGKILL sent to a process SIGTERM had already ended).
        let stage = match (self.stage, status.signal) {
            (Stage::Soft, _) => Stage::Soft,
            (_, Some(libc::SIGTERM)) => Stage::Term,
            (_, Some(libc::SIGKILL)) => Stage::Kill,
            (stage, _) => stage,
        };
        match self.reason {
            Reason::Timeout => PoolError::TimedOut {
                timeout_ms: millis(timeout),
                how: format!("stopped by {}", stage_text(stage)),
            },
            Reason::Stall => PoolError::Stalled {
                stall_ms: millis(stall),
                how: format!("stopped by {}", stage_text(stage)),
            },
            Reason::Cancel => PoolError::Cancelled,
        }
    }
}

/// The error of a call the worker answered `Cancelled`: the caller's cancel,
/// our stall cancel, its soft deadline, or a task that cancelled itself.
pub(super) fn cancelled_error(
    cancel_requested: bool,
    esc: Option<Escalation>,
    timeout: Option<Duration>,
    stall: Option<Duration>,
    fail: TaskFailure,
) -> PoolError {
    if cancel_requested {
        PoolError::Cancelled
    } else if esc.is_some_and(|e| e.reason == Reason::Stall) {
        PoolError::Stalled {
            stall_ms: millis(stall),
            how: "the task stopped at the cancel".into(),
        }
    } else if timeout.is_some() || esc.is_some_and(|e| e.reason == Reason::Timeout) {
        PoolError::TimedOut {
            timeout_ms: millis(timeout),
            how: "the task stopped at its soft deadline".into(),
        }
    } else {
        PoolError::Task(fail)
    }
}

fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |t| t.as_millis() as u64)
}

fn stage_text(stage: Stage) -> &'static str {
    match stage {
        Stage::Soft => "its soft deadline",
        Stage::Term => "SIGTERM to the worker's process group",
        Stage::Kill => "SIGKILL of the worker",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_proto::worker::FailureKind;

    const MS: Duration = Duration::from_millis(1);

    fn cfg() -> PoolConfig {
        PoolConfig {
            cancel_grace: 100 * MS,
            term_grace: 1000 * MS,
            ..PoolConfig::default()
        }
    }

    fn status(signal: Option<i32>) -> ExitStatus {
        ExitStatus {
            code: None,
            signal,
            core_dumped: false,
            max_rss_kib: 0,
        }
    }

    #[test]
    fn nothing_is_due_before_the_timeout_or_the_stall() {
        let t0 = Instant::now();
        let cfg = cfg();
        let due = |now| Escalation::due(7, Some(500 * MS), Some(200 * MS), t0, t0, now, &cfg);
        assert_eq!(due(t0 + 199 * MS), None);
        let e = due(t0 + 200 * MS).expect("stall due");
        assert_eq!((e.reason, e.stage, e.call), (Reason::Stall, Stage::Soft, 7));
        assert_eq!(e.until, t0 + 300 * MS);
        // The timeout wins when both are due.
        let e = due(t0 + 500 * MS).expect("timeout due");
        assert_eq!(e.reason, Reason::Timeout);
        // A heartbeat moves the stall deadline, not the timeout.
        let beat = t0 + 150 * MS;
        let e = Escalation::due(7, None, Some(200 * MS), t0, beat, t0 + 300 * MS, &cfg);
        assert_eq!(e, None);
        assert!(Escalation::due(7, None, None, t0, t0, t0 + 3600 * 1000 * MS, &cfg).is_none());
    }

    #[test]
    fn soft_then_term_then_kill_with_their_graces() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut e = Escalation::due(1, Some(MS), None, t0, t0, t0 + MS, &cfg).expect("due");
        assert!(!e.signalled());
        assert_eq!(e.advance(e.until, &cfg), Some(Signal::TermGroup));
        assert_eq!(e.stage, Stage::Term);
        assert_eq!(e.until, t0 + 101 * MS + 1000 * MS);
        assert!(e.signalled());
        assert_eq!(e.advance(e.until, &cfg), Some(Signal::Kill));
        assert_eq!(e.stage, Stage::Kill);
        assert_eq!(e.advance(e.until + MS, &cfg), None);
    }

    #[test]
    fn an_async_call_not_yet_polled_waits_up_to_patience() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut e = Escalation::cancel(3, t0, &cfg);
        // Its timer fired early (stale entry): nothing happens.
        assert_eq!(e.tick_io(t0 + 50 * MS, false, &cfg), None);
        assert_eq!(e.until, t0 + 100 * MS);
        // Run out, but the loop is not inside a poll: wait a recheck longer.
        assert_eq!(e.tick_io(t0 + 100 * MS, false, &cfg), None);
        assert_eq!((e.stage, e.until), (Stage::Soft, t0 + 200 * MS));
        // Past patience the worker is stopped anyway.
        let late = t0 + patience(&cfg);
        assert_eq!(e.tick_io(late, false, &cfg), Some(Signal::TermGroup));
        // A loop stuck in a poll is signalled at once.
        let mut e = Escalation::cancel(3, t0, &cfg);
        assert_eq!(
            e.tick_io(t0 + 100 * MS, true, &cfg),
            Some(Signal::TermGroup)
        );
        assert_eq!(e.tick_io(e.until, true, &cfg), Some(Signal::Kill));
        assert_eq!(e.tick_io(e.until + 1000 * MS, true, &cfg), None);
    }

    #[test]
    fn patience_covers_a_whole_escalation_and_recheck_is_never_zero() {
        let mut cfg = cfg();
        assert_eq!(patience(&cfg), PATIENCE);
        cfg.term_grace = 20 * PATIENCE;
        assert_eq!(patience(&cfg), 20 * PATIENCE + cfg.cancel_grace);
        cfg.cancel_grace = Duration::ZERO;
        assert_eq!(recheck(&cfg), 10 * MS);
    }

    #[test]
    fn a_running_cpu_call_gets_grace_after_the_workers_own_deadline() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut e = Escalation::due(9, Some(MS), None, t0, t0, t0 + MS, &cfg).expect("due");
        let now = e.until;
        // The worker started it late: its deadline is 300 ms from now.
        let view = CpuView {
            running: 9,
            deadline_us: Some(1_300_000),
            now_us: 1_000_000,
        };
        assert_eq!(e.tick_cpu(now, view, &cfg), None);
        assert_eq!(e.until, now + 400 * MS);
        // Its deadline has passed, grace included: escalate.
        let view = CpuView {
            deadline_us: Some(800_000),
            ..view
        };
        let mut e2 = e;
        assert_eq!(e2.tick_cpu(now, view, &cfg), Some(Signal::TermGroup));
        // Not started yet: recheck until patience runs out.
        let view = CpuView {
            running: 0,
            deadline_us: None,
            now_us: 0,
        };
        let mut e3 = e;
        assert_eq!(e3.tick_cpu(now, view, &cfg), None);
        assert_eq!(e3.until, now + recheck(&cfg));
        assert_eq!(
            e3.tick_cpu(e3.began + patience(&cfg), view, &cfg),
            Some(Signal::TermGroup)
        );
    }

    #[test]
    fn only_a_soft_timeout_is_extended() {
        let t0 = Instant::now();
        let cfg = cfg();
        let view = CpuView {
            running: 0,
            deadline_us: None,
            now_us: 0,
        };
        let mut stall = Escalation::due(2, None, Some(MS), t0, t0, t0 + MS, &cfg).expect("due");
        assert_eq!(
            stall.tick_cpu(stall.until, view, &cfg),
            Some(Signal::TermGroup)
        );
        let mut cancel = Escalation::cancel(2, t0, &cfg);
        assert_eq!(
            cancel.tick_cpu(cancel.until, view, &cfg),
            Some(Signal::TermGroup)
        );
    }

    #[test]
    fn the_error_names_the_stage_the_worker_died_of() {
        let t0 = Instant::now();
        let cfg = cfg();
        let mut e = Escalation::due(1, Some(5 * MS), None, t0, t0, t0 + 5 * MS, &cfg).expect("due");
        e.advance(e.until, &cfg);
        e.advance(e.until, &cfg);
        // SIGKILL sent, but SIGTERM had already ended it.
        let err = e.error(Some(5 * MS), None, &status(Some(libc::SIGTERM)));
        match err {
            PoolError::TimedOut { timeout_ms, how } => {
                assert_eq!(timeout_ms, 5);
                assert_eq!(how, "stopped by SIGTERM to the worker's process group");
            }
            other => panic!("{other:?}"),
        }
        let err = e.error(Some(5 * MS), None, &status(None));
        assert!(
            matches!(err, PoolError::TimedOut { how, .. } if how == "stopped by SIGKILL of the worker")
        );
        let soft = Escalation::due(1, None, Some(7 * MS), t0, t0, t0 + 7 * MS, &cfg).expect("due");
        let err = soft.error(None, Some(7 * MS), &status(Some(libc::SIGKILL)));
        assert!(
            matches!(err, PoolError::Stalled { stall_ms: 7, how } if how == "stopped by its soft deadline")
        );
        let err = Escalation::cancel(1, t0, &cfg).error(None, None, &status(None));
        assert!(matches!(err, PoolError::Cancelled));
    }

    #[test]
    fn a_cancelled_answer_says_who_cancelled() {
        let t0 = Instant::now();
        let cfg = cfg();
        let fail = || TaskFailure {
            kind: FailureKind::Cancelled,
            message: "cancelled".into(),
        };
        let stall = Escalation::due(1, None, Some(MS), t0, t0, t0 + MS, &cfg);
        assert!(matches!(
            cancelled_error(true, stall, Some(MS), None, fail()),
            PoolError::Cancelled
        ));
        assert!(matches!(
            cancelled_error(false, stall, Some(MS), Some(MS), fail()),
            PoolError::Stalled { stall_ms: 1, .. }
        ));
        assert!(matches!(
            cancelled_error(false, None, Some(3 * MS), None, fail()),
            PoolError::TimedOut { timeout_ms: 3, .. }
        ));
        assert!(matches!(
            cancelled_error(false, None, None, None, fail()),
            PoolError::Task(f) if f.kind == FailureKind::Cancelled
        ));
    }
}
