//! CPU accounting: the CPU of the supervisor, the workers, the server and the
//! rest of the machine, sampled around each phase and reported per call.

use std::time::{Duration, Instant};

use jobvisor_pool::Pool;

use crate::client::{server_stats, stat_u64};
use crate::result;

/// User + system CPU time of a process (all its threads), from `/proc/PID/stat`.
pub(crate) fn proc_cpu(pid: &str) -> Duration {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may hold spaces), from field 3:
    // utime is field 14, stime field 15.
    let Some((_, rest)) = text.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    ticks_to_duration(ticks(11) + ticks(12))
}

pub(crate) fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// CPU time the whole machine has spent busy (all CPUs), from `/proc/stat`.
pub(crate) fn machine_busy() -> Duration {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return Duration::ZERO;
    };
    let Some(line) = text.lines().next() else {
        return Duration::ZERO;
    };
    // cpu user nice system idle iowait irq softirq steal (guest is in user).
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum();
    ticks_to_duration(busy)
}

/// CPU used so far by the supervisor (this process), the workers, the server
/// and the whole machine; and the connections the server has accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSample {
    at: Instant,
    supervisor: Duration,
    workers: Duration,
    server: Duration,
    machine: Duration,
    pub(crate) accepted: u64,
}

pub(crate) async fn cpu_sample(pool: &Pool, url: &str) -> CpuSample {
    let mut workers = Duration::ZERO;
    for w in pool.workers().await {
        workers += proc_cpu(&w.pid.to_string());
    }
    let stats = server_stats(url, false).await.unwrap_or_default();
    CpuSample {
        at: Instant::now(),
        machine: machine_busy(),
        supervisor: proc_cpu("self"),
        workers,
        server: Duration::from_micros(stat_u64(&stats, "cpu_us")),
        accepted: stat_u64(&stats, "accepted"),
    }
}

/// Prints where the CPU went between two samples; returns the total per call (µs).
pub(crate) fn report_cpu(key: &str, before: CpuSample, after: CpuSample, calls: u64) -> f64 {
    let per_call =
        |a: Duration, b: Duration| a.saturating_sub(b).as_secs_f64() * 1e6 / calls.max(1) as f64;
    let (s, w, v) = (
        per_call(after.supervisor, before.supervisor),
        per_call(after.workers, before.workers),
        per_call(after.server, before.server),
    );
    // Everything else on the machine (other users' builds and tests), in % of
    // one CPU: this is a 2-core machine with no spare core.
    let ours = [
        after.supervisor.saturating_sub(before.supervisor),
        after.workers.saturating_sub(before.workers),
        after.server.saturating_sub(before.server),
    ]
    .iter()
    .sum::<Duration>();
    let others = after
        .machine
        .saturating_sub(before.machine)
        .saturating_sub(ours);
    let others_pct =
        others.as_secs_f64() * 100.0 / after.at.duration_since(before.at).as_secs_f64();
    println!(
        "    CPU per call: supervisor {s:.1} µs, workers {w:.1} µs, server {v:.1} µs \
         (total {:.1} µs; /proc tick = 10 ms, so short phases are coarse); \
         other processes: {others_pct:.0} % of a CPU",
        s + w + v
    );
    result(&format!("{key}.others_cpu_pct"), format!("{others_pct:.1}"));
    result(
        &format!("{key}.cpu_us_per_call.supervisor"),
        format!("{s:.1}"),
    );
    result(&format!("{key}.cpu_us_per_call.workers"), format!("{w:.1}"));
    result(&format!("{key}.cpu_us_per_call.server"), format!("{v:.1}"));
    s + w + v
}
