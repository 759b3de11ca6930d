//! What a CPU call cost: its thread CPU time, and which calls are worth the
//! syscall of measuring it.

/// Calls at least this long always have their CPU time measured.
const MEASURE_ALWAYS_US: u64 = 50;
/// Of shorter calls, one in this many is measured.
const MEASURE_EVERY: u32 = 16;

/// CPU time of the calling thread, in µs (`CLOCK_THREAD_CPUTIME_ID`): what a
/// call really computed, as against how long it took.
pub(crate) fn thread_cpu_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime with a valid pointer to a local timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0;
    }
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// CPU time (user + system, µs) of the worker's child processes that have
/// ended and been reaped (`RUSAGE_CHILDREN`): what an `exec` call's command
/// computed. A CPU call's cost is its thread's time plus the growth of this
/// over the call, so a command's CPU counts as its job's, not as waiting.
pub(crate) fn children_cpu_us() -> u64 {
    // SAFETY: getrusage writes into a zeroed local rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| (t.tv_sec as u64) * 1_000_000 + t.tv_usec as u64;
    us(ru.ru_utime) + us(ru.ru_stime)
}

/// CPU time of a CPU call so far: its thread's and its reaped children's.
pub(crate) fn call_cpu_us() -> u64 {
    thread_cpu_us() + children_cpu_us()
}

/// Which calls have their CPU time measured. Thread CPU time costs a
/// syscall (~0.4 µs): every call after one that was not tiny is measured,
/// and one in [`MEASURE_EVERY`] of the tiny ones; the rest report 0/0.
#[derive(Debug)]
pub(crate) struct Sampler {
    /// Wall time of the last call, in µs.
    last_wall_us: u64,
    /// Calls since the last measured one.
    since_sample: u32,
}

impl Sampler {
    /// The first call is measured.
    pub(crate) fn new() -> Self {
        Self {
            last_wall_us: 0,
            since_sample: MEASURE_EVERY,
        }
    }

    /// Whether to measure the next call.
    pub(crate) fn measure(&self) -> bool {
        self.last_wall_us >= MEASURE_ALWAYS_US || self.since_sample >= MEASURE_EVERY
    }

    /// A call took `wall_us`; `measured` is what [`Sampler::measure`] said.
    pub(crate) fn record(&mut self, measured: bool, wall_us: u64) {
        self.last_wall_us = wall_us;
        self.since_sample = if measured { 0 } else { self.since_sample + 1 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs calls of the given wall times; returns which were measured.
    fn run(walls: &[u64]) -> Vec<bool> {
        let mut s = Sampler::new();
        walls
            .iter()
            .map(|&w| {
                let m = s.measure();
                s.record(m, w);
                m
            })
            .collect()
    }

    #[test]
    fn one_in_sixteen_tiny_calls_is_measured() {
        let measured = run(&[1; 34]);
        let at: Vec<usize> = (0..34).filter(|&i| measured[i]).collect();
        assert_eq!(at, [0, 17]);
    }

    #[test]
    fn a_call_after_a_long_one_is_always_measured() {
        assert_eq!(run(&[1, 50, 1, 49, 1]), [true, false, true, false, false]);
    }

    #[test]
    fn a_reaped_childs_cpu_is_counted() {
        let before = children_cpu_us();
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(children_cpu_us() > before, "no CPU of the child counted");
    }

    #[test]
    fn thread_cpu_time_moves_forward() {
        let a = thread_cpu_us();
        let mut x = 0u64;
        for i in 0..200_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_us() >= a);
    }
}
