//! Tasks with no side effects, for measuring the pool rather than the work.

use std::time::{Duration, Instant};

use jobvisor_worker::{AsyncCtx, AsyncTask, Ctx, Task, TaskError};
use serde::{Deserialize, Serialize};

/// `"noop"`: returns its input. Measures pure per-call overhead.
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

impl Task for Noop {
    const NAME: &'static str = "noop";
    type Input = u64;
    type Output = u64;

    fn run(&self, input: u64, _ctx: &mut Ctx<'_>) -> Result<u64, TaskError> {
        Ok(input)
    }
}

/// `"spin"`: keeps one CPU busy for a while.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spin;

/// Input of [`Spin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpinInput {
    /// How long to spin, in milliseconds of wall time.
    pub ms: u64,
}

/// Output of [`Spin`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpinOutput {
    /// Rounds of arithmetic done; a rough measure of the CPU time the task got.
    pub iterations: u64,
}

/// Rounds between looks at the clock and the cancel flag: a few microseconds,
/// so cancellation is prompt while the checks stay off the profile.
const SPIN_BATCH: u64 = 4096;

impl Task for Spin {
    const NAME: &'static str = "spin";
    type Input = SpinInput;
    type Output = SpinOutput;

    fn run(&self, input: SpinInput, ctx: &mut Ctx<'_>) -> Result<SpinOutput, TaskError> {
        let start = Instant::now();
        let want = Duration::from_millis(input.ms);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut iterations: u64 = 0;
        loop {
            for _ in 0..SPIN_BATCH {
                // xorshift64: real work the optimiser cannot fold away, because
                // the state goes through black_box below.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
            }
            state = std::hint::black_box(state);
            iterations += SPIN_BATCH;
            // heartbeat rather than is_cancelled: a long spin should still look
            // alive to the supervisor. It rate-limits itself.
            if ctx.heartbeat() {
                return Err(TaskError::cancelled());
            }
            if start.elapsed() >= want {
                return Ok(SpinOutput { iterations });
            }
        }
    }
}

/// `"sleep"`: waits without using the CPU.
///
/// An [`AsyncTask`]: it waits on the worker's event loop, so many sleeps share
/// a worker with each other and with a CPU task. Cancellation drops the timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

/// Input of [`Sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepInput {
    /// How long to sleep, in milliseconds.
    pub ms: u64,
}

impl AsyncTask for Sleep {
    const NAME: &'static str = "sleep";
    type Input = SleepInput;
    type Output = ();

    async fn run(&self, input: SleepInput, _ctx: AsyncCtx) -> Result<(), TaskError> {
        tokio::time::sleep(Duration::from_millis(input.ms)).await;
        Ok(())
    }
}

/// `"crash"`: kills the worker it runs in, on purpose: with a signal, or by
/// exiting with a code. For rehearsing failure handling (poison jobs, restart
/// intensity, chaos runs) against the real daemon; never needed otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Crash;

/// Input of [`Crash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashInput {
    /// Raise this signal (e.g. 9 for SIGKILL, 6 for SIGABRT)...
    #[serde(default)]
    pub signal: Option<i32>,
    /// ...or else exit with this code (default 1).
    #[serde(default)]
    pub exit_code: Option<i32>,
}

impl Task for Crash {
    const NAME: &'static str = "crash";
    type Input = CrashInput;
    type Output = ();

    fn run(&self, input: CrashInput, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        eprintln!("crash task: taking this worker down on purpose");
        if let Some(sig) = input.signal {
            // SAFETY: raising a signal in our own process.
            unsafe { libc::raise(sig) };
            // A signal that was ignored or handled (SIGSEGV is caught by std's
            // stack-overflow handler) must not let the worker live on.
            // SAFETY: restoring the default action, then raising again.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
        }
        std::process::exit(input.exit_code.unwrap_or(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_worker::{run_detached, run_detached_async};

    #[test]
    fn noop_echoes() {
        assert_eq!(run_detached(&Noop, 42, None).ok(), Some(42));
        assert_eq!(run_detached(&Noop, u64::MAX, None).ok(), Some(u64::MAX));
    }

    #[test]
    fn spin_runs_at_least_the_asked_time() {
        let start = Instant::now();
        let out = run_detached(&Spin, SpinInput { ms: 50 }, None);
        let took = start.elapsed();
        let out = out.unwrap_or_else(|e| panic!("spin failed: {e}"));
        assert!(took >= Duration::from_millis(50), "returned after {took:?}");
        assert!(out.iterations > 0);
    }

    #[test]
    fn spin_stops_at_the_soft_deadline() {
        let start = Instant::now();
        let res = run_detached(
            &Spin,
            SpinInput { ms: 60_000 },
            Some(Duration::from_millis(50)),
        );
        let took = start.elapsed();
        match res {
            Err(e) => assert!(e.is_cancelled(), "wrong error: {e:?}"),
            Ok(out) => panic!("spin was not cancelled: {out:?}"),
        }
        // Far below the 60 s asked for: it noticed the deadline.
        assert!(took < Duration::from_secs(30), "took {took:?}");
    }

    #[test]
    fn zero_spin_returns() {
        assert!(run_detached(&Spin, SpinInput { ms: 0 }, None).is_ok());
    }

    #[test]
    fn sleep_sleeps() {
        let start = Instant::now();
        let res = run_detached_async(&Sleep, SleepInput { ms: 30 }, None);
        assert!(res.is_ok(), "{res:?}");
        assert!(start.elapsed() >= Duration::from_millis(30));
    }

    #[test]
    fn sleep_is_cancelled_by_the_soft_deadline() {
        let start = Instant::now();
        let res = run_detached_async(
            &Sleep,
            SleepInput { ms: 60_000 },
            Some(Duration::from_millis(30)),
        );
        match res {
            Err(e) => assert!(e.is_cancelled(), "wrong error: {e:?}"),
            Ok(()) => panic!("sleep was not cancelled"),
        }
        assert!(start.elapsed() < Duration::from_secs(30));
    }
}
