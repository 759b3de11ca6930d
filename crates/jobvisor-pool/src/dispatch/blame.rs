//! Who is charged for a worker's death: the rule, as pure functions over what
//! the dispatcher knows when it reaps a worker (the beacon's word, the calls
//! it held, which of them we escalated to a signal).
//!
//! | what the worker held                        | its death is charged to          |
//! |---------------------------------------------|----------------------------------|
//! | the CPU call the beacon shows running       | that call, unless the blame is the event loop's |
//! | async calls we escalated to a signal        | each of them (our kill, their timeout/cancel) |
//! | the async call being polled (I/O beacon)    | that call, when no CPU call was charged |
//! | CPU calls queued behind the running one     | nobody: they never started, and run again |
//! | async calls waiting on I/O                  | nobody: innocent, they run again  |
//! | any call, at a death that charged no call   | nobody, until the call has been in flight at `max_deaths_per_call` such deaths: then that call |
//! | at our kill for silence (`liveness`): the async call being polled | that call, not the CPU call: a poll that outlasts the liveness timeout is what silenced the worker |
//!
//! A death nobody asked for that charges no call (the beacon named none: a
//! task wrote over it, or the worker died between a call and its reply)
//! makes each call it held a *suspect* ([`charged_nobody`]): it runs again,
//! alone in a worker (see `admission`), so the next such death is its own.
//! A call re-run for ever, uncharged, would hold the pool up for ever.
//! The worker's SIGABRT handler says which thread aborted (panic=abort, a
//! failed allocation, a stack overflow). Otherwise (SIGKILL from outside,
//! SIGSEGV, an exit) the running CPU call is charged if there is one, else
//! the async call being polled: a death is charged to one call, and a poll
//! lasts microseconds where a CPU call lasts its whole run. Our own kill for an
//! async call is not the CPU call's doing.
//!
//! A death counts against the restart intensity only when nobody asked for
//! the exit ([`exit_was_asked`]).

use jobvisor_proto::forkserver::ExitStatus;
use jobvisor_worker::CrashedThread;

use super::escalation::{Escalation, Reason};
use crate::error::PoolError;
use crate::types::WorkerState;

/// What the dispatcher knows about a dead worker's calls.
#[derive(Debug, Clone, Copy)]
pub(super) struct Death<'a> {
    /// Which thread aborted, by the worker's SIGABRT handler.
    pub(super) crashed: CrashedThread,
    /// The CPU call the beacon shows running (0: none).
    pub(super) running: u64,
    /// The async call the I/O beacon shows being polled (0: none).
    pub(super) polled: u64,
    /// Its CPU calls, in order (the head runs, if the beacon says so).
    pub(super) cpu_calls: &'a [u64],
    /// We escalated its CPU call (any stage).
    pub(super) cpu_escalated: bool,
    /// We escalated one of its async calls to a signal.
    pub(super) io_signalled: bool,
    /// We killed it for silence (see `liveness`).
    pub(super) unresponsive: bool,
}

/// Whom a death is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Blame {
    /// Position in the worker's CPU calls of the one charged.
    pub(super) cpu: Option<usize>,
    /// The async call charged as the one being polled (0: none). Async calls
    /// we escalated to a signal are charged as well ([`Blame::charges_io`]).
    pub(super) polled: u64,
}

impl Blame {
    /// Whether async call `id` is charged; `signalled`: we escalated it to a
    /// signal.
    pub(super) fn charges_io(&self, id: u64, signalled: bool) -> bool {
        (self.polled != 0 && id == self.polled) || signalled
    }
}

/// Whom the death `d` is charged to (see the module's table).
pub(super) fn blame(d: &Death<'_>) -> Blame {
    let running = d
        .cpu_calls
        .iter()
        .position(|&id| d.running != 0 && id == d.running);
    let blame_cpu = match d.crashed {
        CrashedThread::Cpu => true,
        CrashedThread::Io => false,
        // Polls last microseconds: one in progress when a silent worker is
        // killed is the one that held its event loop (and so its pulse).
        CrashedThread::Unknown if d.unresponsive && d.polled != 0 => false,
        CrashedThread::Unknown => !d.io_signalled || d.cpu_escalated,
    };
    let cpu = running.filter(|_| blame_cpu);
    let polled = match d.crashed {
        CrashedThread::Cpu => 0,
        CrashedThread::Io => d.polled,
        CrashedThread::Unknown if cpu.is_some() => 0,
        CrashedThread::Unknown => d.polled,
    };
    Blame { cpu, polled }
}

/// A death is an exit we did not ask for: not a retirement, not a shutdown,
/// not our own kill of a call past its deadline or cancelled. `stopping`:
/// the pool is shutting down; `state`: the worker's state when it was marked
/// dead; `signalled`: we escalated one of its calls to a signal.
pub(super) fn exit_was_asked(stopping: bool, state: WorkerState, signalled: bool) -> bool {
    stopping || matches!(state, WorkerState::Stopping | WorkerState::Retiring) || signalled
}

/// Whether a death charged no call though nobody asked for it (`asked`, as
/// [`exit_was_asked`]; `charged`: how many calls it charged): then each call
/// the worker held counts it, and one that has counted `max_deaths_per_call`
/// is charged (see [`Charge::unexplained`]).
pub(super) fn charged_nobody(asked: bool, charged: usize) -> bool {
    !asked && charged == 0
}

/// What a charged call fails with.
#[derive(Debug, Clone, Copy)]
pub(super) struct Charge<'a> {
    /// The pool is being killed: every call fails as closed.
    pub(super) killing: bool,
    /// The worker's pid.
    pub(super) pid: u32,
    /// How it ended.
    pub(super) status: &'a ExitStatus,
    /// Its last lines of output.
    pub(super) tail: &'a [String],
    /// The message of its last panic, from its beacon.
    pub(super) panic: Option<&'a str>,
    /// The pool's hard memory limit per worker.
    pub(super) memory_limit: Option<u64>,
    /// We killed it for silence: why (see `liveness::cause`).
    pub(super) unresponsive: Option<&'a str>,
}

impl Charge<'_> {
    /// The error of charged call `call` (with its `timeout` and `stall`),
    /// whose escalation, if any, is `esc`. Our own signal stopped it (or the
    /// caller cancelled it): say so. A death during the soft stage, before we
    /// signalled, is the worker's own (a crash, the OOM killer): reported as
    /// one.
    pub(super) fn error(
        &self,
        call: u64,
        timeout: Option<std::time::Duration>,
        stall: Option<std::time::Duration>,
        esc: Option<Escalation>,
    ) -> PoolError {
        if self.killing {
            return PoolError::Closed;
        }
        if let Some(esc) =
            esc.filter(|e| e.call == call && (e.signalled() || e.reason == Reason::Cancel))
        {
            return esc.error(timeout, stall, self.status);
        }
        PoolError::WorkerDied {
            cause: self.cause(),
            pid: self.pid,
            status: *self.status,
            stderr_tail: self.tail.to_vec(),
        }
    }

    /// Why the worker died: our kill for silence, and what its status, last
    /// output and last panic say.
    fn cause(&self) -> Option<String> {
        let found = death_cause(self.status, self.tail, self.memory_limit, self.panic);
        match (self.unresponsive, found) {
            (Some(u), Some(c)) => Some(format!("{u}; {c}")),
            (u, c) => c.or_else(|| u.map(str::to_owned)),
        }
    }
}

impl Charge<'_> {
    /// The error of a call charged for being in flight at `max` worker deaths
    /// that charged no call.
    pub(super) fn unexplained(&self, max: u32) -> PoolError {
        if self.killing {
            return PoolError::Closed;
        }
        let why = format!(
            "the worker died {max} times while it held this call, and no call was named as \
             the cause (max_deaths_per_call = {max}): this call may be what kills it"
        );
        let cause = match self.cause() {
            Some(c) => format!("{why}; {c}"),
            None => why,
        };
        PoolError::WorkerDied {
            cause: Some(cause),
            pid: self.pid,
            status: *self.status,
            stderr_tail: self.tail.to_vec(),
        }
    }
}

/// Why a worker died, when its status, last output and last panic say so.
/// The panic message comes from the beacon, not the output: with
/// `RUST_BACKTRACE` set, the last lines are all backtrace.
pub(super) fn death_cause(
    status: &ExitStatus,
    tail: &[String],
    memory_limit: Option<u64>,
    panic: Option<&str>,
) -> Option<String> {
    let alloc_failed = tail.iter().any(|l| l.contains("memory allocation of"));
    let memory = (alloc_failed
        || (memory_limit.is_some()
            && status.signal == Some(libc::SIGKILL)
            && tail.iter().any(|l| l.contains("Out of memory"))))
    .then(|| {
        let limit = memory_limit.map_or(String::new(), |b| format!(" ({} MiB)", b / (1024 * 1024)));
        format!("memory limit exceeded{limit}")
    });
    match (memory, panic) {
        (Some(m), Some(p)) => Some(format!("{m}; {p}")),
        (m, p) => m.or_else(|| p.map(str::to_owned)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::PoolConfig;

    fn death(crashed: CrashedThread, running: u64, polled: u64, cpu: &[u64]) -> Death<'_> {
        Death {
            crashed,
            running,
            polled,
            cpu_calls: cpu,
            cpu_escalated: false,
            io_signalled: false,
            unresponsive: false,
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
    fn the_running_cpu_call_is_charged_not_the_ones_behind_it() {
        let b = blame(&death(CrashedThread::Unknown, 11, 0, &[11, 12, 13]));
        assert_eq!(
            b,
            Blame {
                cpu: Some(0),
                polled: 0
            }
        );
        // The beacon shows none of them running: they never started.
        let b = blame(&death(CrashedThread::Unknown, 0, 0, &[11, 12]));
        assert_eq!(
            b,
            Blame {
                cpu: None,
                polled: 0
            }
        );
        let b = blame(&death(CrashedThread::Unknown, 99, 0, &[11, 12]));
        assert_eq!(b.cpu, None);
    }

    #[test]
    fn a_cpu_charge_spares_the_polled_async_call_unless_the_loop_aborted() {
        let b = blame(&death(CrashedThread::Unknown, 11, 5, &[11]));
        assert_eq!(
            b,
            Blame {
                cpu: Some(0),
                polled: 0
            }
        );
        assert!(!b.charges_io(5, false));
        // Nothing on the CPU thread: the polled call is charged.
        let b = blame(&death(CrashedThread::Unknown, 0, 5, &[11]));
        assert_eq!(
            b,
            Blame {
                cpu: None,
                polled: 5
            }
        );
        assert!(b.charges_io(5, false) && !b.charges_io(6, false));
        // The event loop's thread aborted: the CPU call is innocent.
        let b = blame(&death(CrashedThread::Io, 11, 5, &[11]));
        assert_eq!(
            b,
            Blame {
                cpu: None,
                polled: 5
            }
        );
        // The CPU thread aborted: no async call is charged for it.
        let b = blame(&death(CrashedThread::Cpu, 11, 5, &[11]));
        assert_eq!(
            b,
            Blame {
                cpu: Some(0),
                polled: 0
            }
        );
    }

    #[test]
    fn our_kill_for_an_async_call_does_not_charge_the_cpu_call() {
        let mut d = death(CrashedThread::Unknown, 11, 0, &[11]);
        d.io_signalled = true;
        let b = blame(&d);
        assert_eq!(b.cpu, None);
        assert!(b.charges_io(7, true) && !b.charges_io(8, false));
        // Unless we were escalating the CPU call as well.
        d.cpu_escalated = true;
        assert_eq!(blame(&d).cpu, Some(0));
        // An abort on the CPU thread is the CPU call's, whatever we did.
        d.cpu_escalated = false;
        d.crashed = CrashedThread::Cpu;
        assert_eq!(blame(&d).cpu, Some(0));
    }

    #[test]
    fn a_kill_for_silence_charges_the_poll_that_held_the_loop() {
        let mut d = death(CrashedThread::Unknown, 11, 7, &[11]);
        d.unresponsive = true;
        let b = blame(&d);
        assert_eq!(b.cpu, None);
        assert!(b.charges_io(7, false));
        // No poll in progress: the CPU call, as for any death.
        d.polled = 0;
        assert_eq!(blame(&d).cpu, Some(0));
        // Without the kill for silence the CPU call is charged over the poll.
        let d = death(CrashedThread::Unknown, 11, 7, &[11]);
        assert_eq!(blame(&d).cpu, Some(0));
    }

    #[test]
    fn a_kill_for_silence_is_named_in_the_cause() {
        let st = status(Some(libc::SIGKILL));
        let charge = Charge {
            killing: false,
            pid: 7,
            status: &st,
            tail: &[],
            panic: Some("boom"),
            memory_limit: None,
            unresponsive: Some("unresponsive: no heartbeat for 10 s"),
        };
        match charge.error(1, None, None, None) {
            PoolError::WorkerDied { cause, .. } => assert_eq!(
                cause.as_deref(),
                Some("unresponsive: no heartbeat for 10 s; boom")
            ),
            other => panic!("{other:?}"),
        }
        let text = charge.unexplained(3).to_string();
        assert!(
            text.contains("unresponsive: no heartbeat for 10 s"),
            "{text}"
        );
    }

    #[test]
    fn only_an_unasked_death_that_charged_nobody_makes_suspects() {
        assert!(charged_nobody(false, 0));
        assert!(!charged_nobody(false, 1));
        assert!(!charged_nobody(true, 0));
        let st = status(Some(libc::SIGKILL));
        let charge = Charge {
            killing: false,
            pid: 7,
            status: &st,
            tail: &[],
            panic: None,
            memory_limit: None,
            unresponsive: None,
        };
        match charge.unexplained(3) {
            PoolError::WorkerDied { cause, pid, .. } => {
                assert_eq!(pid, 7);
                assert!(cause.unwrap().contains("max_deaths_per_call = 3"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn asked_exits_are_not_deaths() {
        assert!(!exit_was_asked(false, WorkerState::Ready, false));
        assert!(exit_was_asked(true, WorkerState::Ready, false));
        assert!(exit_was_asked(false, WorkerState::Retiring, false));
        assert!(exit_was_asked(false, WorkerState::Stopping, false));
        assert!(exit_was_asked(false, WorkerState::Ready, true));
    }

    #[test]
    fn a_charged_call_fails_with_the_death_or_with_our_escalation() {
        let st = status(Some(libc::SIGKILL));
        let tail = vec!["memory allocation of 1024 bytes failed".to_string()];
        let charge = Charge {
            killing: false,
            pid: 42,
            status: &st,
            tail: &tail,
            panic: None,
            memory_limit: Some(64 << 20),
            unresponsive: None,
        };
        match charge.error(1, None, None, None) {
            PoolError::WorkerDied {
                cause,
                pid,
                stderr_tail,
                ..
            } => {
                assert_eq!(cause.as_deref(), Some("memory limit exceeded (64 MiB)"));
                assert_eq!(pid, 42);
                assert_eq!(stderr_tail, tail);
            }
            other => panic!("{other:?}"),
        }
        let cfg = PoolConfig::default();
        let now = Instant::now();
        let ms = Some(Duration::from_millis(5));
        let soft = Escalation::due(1, ms, None, now, now, now + Duration::from_millis(5), &cfg);
        // Died in the soft stage, before we signalled: the worker's own death.
        assert!(matches!(
            charge.error(1, ms, None, soft),
            PoolError::WorkerDied { .. }
        ));
        let mut signalled = soft.expect("due");
        signalled.advance(now, &cfg);
        assert!(matches!(
            charge.error(1, ms, None, Some(signalled)),
            PoolError::TimedOut { timeout_ms: 5, .. }
        ));
        // Another call's escalation says nothing about this one.
        assert!(matches!(
            charge.error(2, ms, None, Some(signalled)),
            PoolError::WorkerDied { .. }
        ));
        let cancel = Escalation::cancel(1, now, &cfg);
        assert!(matches!(
            charge.error(1, None, None, Some(cancel)),
            PoolError::Cancelled
        ));
        let killing = Charge {
            killing: true,
            ..charge
        };
        assert!(matches!(
            killing.error(1, None, None, Some(cancel)),
            PoolError::Closed
        ));
    }

    #[test]
    fn the_oom_killer_is_named_only_with_a_limit() {
        let oom = vec!["Out of memory: killed".to_string()];
        let kill = status(Some(libc::SIGKILL));
        assert_eq!(death_cause(&kill, &oom, None, None), None);
        assert_eq!(
            death_cause(&kill, &oom, Some(1 << 30), None).as_deref(),
            Some("memory limit exceeded (1024 MiB)")
        );
        assert_eq!(
            death_cause(&status(Some(libc::SIGSEGV)), &oom, Some(1 << 30), None),
            None
        );
        assert_eq!(death_cause(&kill, &[], Some(1 << 30), None), None);
    }

    #[test]
    fn a_panic_message_is_a_cause_beside_the_memory_limit() {
        let abrt = status(Some(libc::SIGABRT));
        let boom = Some("thread 'main' panicked at x.rs:1:1: boom");
        assert_eq!(death_cause(&abrt, &[], None, boom), boom.map(str::to_owned));
        let alloc = vec!["memory allocation of 8 bytes failed".to_string()];
        assert_eq!(
            death_cause(&abrt, &alloc, None, boom).as_deref(),
            Some("memory limit exceeded; thread 'main' panicked at x.rs:1:1: boom")
        );
    }
}
