//! The worker's pulse: while the worker holds calls, a thread of its own
//! sends [`FromWorker::Pulse`] in each heartbeat interval in which the worker
//! sent nothing else, so the supervisor can tell a worker that computes for
//! a long time from one that is stopped (`SIGSTOP`) or whose event loop is
//! wedged, and replace the latter (`liveness_timeout`).
//!
//! The pulse is neither the CPU thread nor the event loop: a CPU task that
//! runs for an hour does not starve it. It speaks for the event loop only
//! while the loop turns: the lane counts its turns and, while it runs calls,
//! turns at least twice per interval; a lane that holds calls and has not
//! turned since the last look is stuck in one poll, and then the pulse says
//! nothing. A stopped process runs no thread at all.
//!
//! Cost: on the CPU thread, two atomic stores and a load per call
//! ([`Pulse::cpu_call`]), a load per batch of frames ([`Pulse::wake`]) and,
//! after the worker was idle for an interval, one `unpark` when work
//! arrives; on the output pipe, no frame while replies flow (any frame counts
//! as a sign of life) and none at all while the worker holds nothing: the
//! thread then parks until work arrives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

use jobvisor_proto::encode_frame;
use jobvisor_proto::worker::FromWorker;

use crate::link::SharedOut;
use crate::shared::LaneState;

/// What the CPU thread and the pulse thread share.
#[derive(Debug, Default)]
pub(crate) struct Pulse {
    /// A CPU call runs now.
    cpu_busy: AtomicBool,
    /// The pulse thread parks until [`Pulse::wake`] (the worker held nothing).
    asleep: AtomicBool,
    /// The worker is going away: the pulse thread ends.
    stop: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Pulse {
    /// On the CPU thread: a CPU call starts (`true`) or ended (`false`).
    /// A start wakes the pulse thread if it parked (see [`Pulse::wake`]).
    pub(crate) fn cpu_call(&self, running: bool) {
        // SeqCst on both sides (this store, then the load in `wake`; the
        // pulse thread's store of `asleep`, then its load of this): one of
        // the two threads sees the other's store, so no call runs unseen by
        // a parked pulse thread.
        self.cpu_busy.store(running, Ordering::SeqCst);
        if running {
            self.wake();
        }
    }

    /// On the CPU thread, after it took frames while idle: wakes the pulse
    /// thread if it parked because the worker held nothing (a syscall only
    /// then; otherwise one load).
    pub(crate) fn wake(&self) {
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
    }

    /// Ends the pulse thread (the worker is going away).
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }
}

/// What the pulse thread sees at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Look {
    /// Writes to the output pipe so far, by any thread.
    pub(crate) writes: u64,
    /// A CPU call runs.
    pub(crate) cpu_busy: bool,
    /// Async calls the lane holds.
    pub(crate) lane_held: usize,
    /// Turns of the lane's loop so far.
    pub(crate) lane_turns: u64,
}

impl Look {
    /// The worker holds a call.
    pub(crate) fn holds(&self) -> bool {
        self.cpu_busy || self.lane_held > 0
    }
}

/// Whether to send a pulse at look `now`, one interval after look `prev`:
/// the worker holds a call, sent nothing in between, and its event loop, if
/// it held calls at both looks, turned meanwhile.
pub(crate) fn due(prev: &Look, now: &Look) -> bool {
    let lane_stuck = prev.lane_held > 0 && now.lane_held > 0 && now.lane_turns == prev.lane_turns;
    now.holds() && now.writes == prev.writes && !lane_stuck
}

/// Runs the pulse thread until [`Pulse::stop`] or a failed write.
pub(crate) fn run(
    pulse: &Arc<Pulse>,
    out: &SharedOut,
    lane: Option<&LaneState>,
    every: Duration,
    max_frame_bytes: usize,
) {
    let _ = pulse.thread.set(std::thread::current());
    let mut frame = Vec::new();
    if encode_frame(&mut frame, &FromWorker::Pulse, max_frame_bytes).is_err() {
        return;
    }
    let look = || Look {
        writes: out.writes(),
        cpu_busy: pulse.cpu_busy.load(Ordering::SeqCst),
        lane_held: lane.map_or(0, LaneState::held),
        lane_turns: lane.map_or(0, LaneState::turns),
    };
    let mut prev = look();
    let mut next = Instant::now() + every;
    while !pulse.stop.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now < next {
            std::thread::park_timeout(next - now);
            continue;
        }
        let seen = look();
        if !seen.holds() {
            // Park until work arrives. Asleep is set before the second
            // look, so a call that starts in between either shows in it or
            // finds `asleep` set and wakes us.
            pulse.asleep.store(true, Ordering::SeqCst);
            if !look().holds() {
                while pulse.asleep.load(Ordering::SeqCst) && !pulse.stop.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            }
            pulse.asleep.store(false, Ordering::SeqCst);
            // The interval starts now: the supervisor's silence clock
            // started when it sent the work.
            prev = look();
            next = Instant::now() + every;
            continue;
        }
        if due(&prev, &seen) {
            if out.write_all(&frame).is_err() {
                return;
            }
            prev = look();
        } else {
            prev = seen;
        }
        next += every;
        if next < Instant::now() {
            // Late (the process was stopped): look again a whole interval on.
            next = Instant::now() + every;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(writes: u64, cpu_busy: bool, lane_held: usize, lane_turns: u64) -> Look {
        Look {
            writes,
            cpu_busy,
            lane_held,
            lane_turns,
        }
    }

    #[test]
    fn a_pulse_is_due_only_while_a_call_is_held_and_nothing_else_was_sent() {
        let idle = look(5, false, 0, 0);
        assert!(
            !due(&idle, &idle),
            "no pulse while the worker holds nothing"
        );
        let cpu = look(5, true, 0, 0);
        assert!(due(&idle, &cpu), "a CPU call runs, nothing sent");
        assert!(due(&cpu, &cpu), "a long CPU call keeps pulsing");
        assert!(!due(&cpu, &look(6, true, 0, 0)), "a reply went out: enough");
        let lane = look(5, false, 3, 7);
        assert!(due(&idle, &lane), "async calls, first look");
        assert!(due(&lane, &look(5, false, 3, 8)), "the loop turned");
    }

    #[test]
    fn a_stuck_event_loop_silences_the_pulse_even_beside_a_cpu_call() {
        let before = look(5, true, 2, 7);
        assert!(!due(&before, &look(5, true, 2, 7)));
        assert!(!due(&before, &look(5, false, 4, 7)));
        // It turned: alive again.
        assert!(due(&before, &look(5, true, 2, 9)));
        // Its calls are done: only the CPU call counts.
        assert!(due(&before, &look(5, true, 0, 7)));
    }

    #[test]
    fn the_thread_pulses_while_a_call_runs_and_sleeps_when_idle() {
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::fcntl::fcntl(
            &r,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        let out = SharedOut::new(w);
        let pulse = Arc::new(Pulse::default());
        let mut frame = Vec::new();
        encode_frame(&mut frame, &FromWorker::Pulse, 1 << 16).unwrap();
        let mut buf = vec![0u8; 4096];
        // Blocks until at least `n` pulses arrived.
        let mut pulses = |n: usize| {
            let mut got = Vec::new();
            while got.len() < n * frame.len() {
                let mut fds = [nix::poll::PollFd::new(
                    std::os::fd::AsFd::as_fd(&r),
                    nix::poll::PollFlags::POLLIN,
                )];
                // A bound so that a pulse that never comes fails, not hangs.
                let bound = nix::poll::PollTimeout::try_from(60_000).unwrap();
                assert_eq!(nix::poll::poll(&mut fds, bound).unwrap(), 1, "no pulse");
                let n = nix::unistd::read(&r, &mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
            }
            // Pulses only (more may have come), each whole: a write of a
            // few bytes to a pipe is atomic.
            assert_eq!(got.len() % frame.len(), 0);
            assert!(got.chunks(frame.len()).all(|c| c == frame.as_slice()));
        };
        pulse.cpu_call(true);
        std::thread::scope(|s| {
            let h = s.spawn(|| run(&pulse, &out, None, Duration::from_millis(1), 1 << 16));
            pulses(2);
            // Idle: the thread parks (and says so) instead of pulsing.
            pulse.cpu_call(false);
            while !pulse.asleep.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let mut rest = vec![0u8; 4096];
            while nix::unistd::read(&r, &mut rest).is_ok() {}
            assert_eq!(
                nix::unistd::read(&r, &mut rest),
                Err(nix::errno::Errno::EAGAIN),
                "no pulse while idle"
            );
            // A call starts: the parked thread wakes and pulses again.
            pulse.cpu_call(true);
            pulses(1);
            pulse.stop();
            h.join().unwrap();
        });
    }
}
