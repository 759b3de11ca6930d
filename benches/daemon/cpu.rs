//! CPU accounting: where the CPU time of a workload went (the daemon's
//! threads, its workers, this bench and its children, everything else) and
//! how busy the machine is before a run.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use jobvisor_client::Client;

use crate::daemon::Daemon;
use crate::Params;

/// Clock ticks of a `/proc/.../stat` file: (utime + stime, cutime + cstime).
pub(crate) fn stat_ticks(path: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(1)
        .map(|s| s.parse().unwrap_or(0))
        .collect();
    // After the state: ppid(0) ... utime(10) stime(11) cutime(12) cstime(13).
    Some((f.get(10)? + f.get(11)?, f.get(12)? + f.get(13)?))
}

pub(crate) fn comm_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub(crate) fn tick_secs(t: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    t as f64 / hz as f64
}

/// CPU time of the daemon (per thread kind), its workers and this process.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cpu {
    daemon: u64,
    threads: BTreeMap<String, u64>,
    /// Context switches (voluntary + involuntary) of live daemon threads, per kind.
    switches: BTreeMap<String, u64>,
    workers: BTreeMap<u32, u64>,
    me: u64,
    children: f64,
    /// Busy ticks of the whole machine.
    machine: u64,
}

impl Cpu {
    pub(crate) async fn take(d: &Daemon) -> Self {
        let mut cpu = Cpu {
            daemon: stat_ticks(Path::new(&format!("/proc/{}/stat", d.pid))).map_or(0, |t| t.0),
            me: stat_ticks(Path::new("/proc/self/stat")).map_or(0, |t| t.0),
            children: children_cpu(),
            machine: machine_busy_ticks(),
            ..Cpu::default()
        };
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{}/task", d.pid)) {
            for e in rd.flatten() {
                let comm = comm_of(&e.path().join("comm"));
                let kind = if comm.starts_with("tokio-r") {
                    "runtime threads".to_string()
                } else {
                    comm
                };
                let t = stat_ticks(&e.path().join("stat")).map_or(0, |t| t.0);
                *cpu.switches.entry(kind.clone()).or_default() +=
                    context_switches(&e.path().join("status"));
                *cpu.threads.entry(kind).or_default() += t;
            }
        }
        if let Ok(mut c) = Client::connect(&d.socket).await {
            if let Ok(ws) = c.workers().await {
                for w in ws {
                    // Own time and that of the commands it ran and reaped.
                    let t = stat_ticks(Path::new(&format!("/proc/{}/stat", w.pid)))
                        .map_or(0, |t| t.0 + t.1);
                    cpu.workers.insert(w.pid, t);
                }
            }
        }
        cpu
    }

    /// CPU seconds used by everything but the daemon, its workers, this
    /// process and its children between `before` and `self`.
    pub(crate) fn others(&self, before: &Cpu) -> f64 {
        let d = |a: u64, b: u64| tick_secs(a.saturating_sub(b));
        let workers: f64 = self
            .workers
            .iter()
            .map(|(pid, v)| d(*v, before.workers.get(pid).copied().unwrap_or(0)))
            .sum();
        let kids = (self.children - before.children).max(0.0);
        (d(self.machine, before.machine)
            - d(self.daemon, before.daemon)
            - workers
            - d(self.me, before.me)
            - kids)
            .max(0.0)
    }

    /// What happened between `before` and `self`, as one line.
    pub(crate) fn since(&self, before: &Cpu, wall: Duration) -> String {
        let d = |a: u64, b: u64| tick_secs(a.saturating_sub(b));
        let mut parts = Vec::new();
        let daemon = d(self.daemon, before.daemon);
        let mut named = 0.0;
        for (k, v) in &self.threads {
            let x = d(*v, before.threads.get(k).copied().unwrap_or(0));
            if x > 0.0 {
                named += x;
                parts.push(format!("{k} {x:.2}"));
            }
        }
        let other = (daemon - named).max(0.0);
        if other >= 0.01 {
            parts.push(format!("exited threads {other:.2}"));
        }
        let workers: f64 = self
            .workers
            .iter()
            .map(|(pid, v)| d(*v, before.workers.get(pid).copied().unwrap_or(0)))
            .sum();
        let me = d(self.me, before.me);
        let kids = (self.children - before.children).max(0.0);
        let mut s = format!(
            "cpu s: daemon {daemon:.2} ({}) | workers+their commands {workers:.2} | bench client {me:.2}",
            parts.join(", ")
        );
        if kids > 0.0 {
            s.push_str(&format!(" | bench's child processes {kids:.2}"));
        }
        let others = self.others(before);
        s.push_str(&format!(
            " | everything else on the machine (kernel threads, other processes) {others:.2}"
        ));
        s.push_str(&format!(" | wall {:.2}", wall.as_secs_f64()));
        let sw: Vec<String> = self
            .switches
            .iter()
            .map(|(k, v)| {
                let b = before.switches.get(k).copied().unwrap_or(0);
                format!("{k} {}", v.saturating_sub(b))
            })
            .collect();
        s.push_str(&format!("\n  context switches: {}", sw.join(", ")));
        s
    }
}

/// Voluntary + involuntary context switches from a `/proc/.../status` file.
pub(crate) fn context_switches(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Busy clock ticks of the whole machine since boot (all but idle and iowait).
pub(crate) fn machine_busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = text
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.iter().sum::<u64>() - f.get(3).unwrap_or(&0) - f.get(4).unwrap_or(&0)
}

/// CPU seconds of this process's reaped children (the anchors' pipelines).
pub(crate) fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy % of the whole machine over `over` (from /proc/stat).
pub(crate) fn busy_pct(over: Duration) -> u64 {
    pub(crate) fn sample() -> Vec<u64> {
        std::fs::read_to_string("/proc/stat")
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(|x| x.parse().unwrap_or(0))
            .collect()
    }
    let a = sample();
    std::thread::sleep(over);
    let b = sample();
    if a.len() < 8 || b.len() < 8 {
        return 0;
    }
    let total: u64 = (0..8).map(|i| b[i].saturating_sub(a[i])).sum();
    let idle = b[3].saturating_sub(a[3]) + b[4].saturating_sub(a[4]);
    100 - 100 * idle / total.max(1)
}

/// Notes how busy the machine is; with `--wait-idle` first waits (up to
/// 5 min) until it is under 10% busy. A 2-core machine has no spare core.
pub(crate) fn settle(p: &Params, what: &str) {
    let mut busy = busy_pct(Duration::from_secs(1));
    let t = Instant::now();
    while p.wait_idle && busy > 10 && t.elapsed() < Duration::from_secs(300) {
        busy = busy_pct(Duration::from_secs(1));
    }
    let waited = if t.elapsed() > Duration::from_secs(2) {
        format!(" (waited {:.0} s)", t.elapsed().as_secs_f64())
    } else {
        String::new()
    };
    println!("{what}: machine busy {busy}% over 1 s{waited}");
    if busy > 10 {
        println!("WARNING: the machine is not idle ({busy}% busy); figures will be noisy");
    }
}
