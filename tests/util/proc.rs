//! What `/proc` says about processes: their state and parent, the marker in
//! their environment, their open descriptors; and `kill(2)`. The tests use it
//! to prove that nothing of a daemon survives it (no orphan), that it reaps
//! its children (no zombie) and that it leaks no descriptor.

use std::collections::HashSet;
use std::time::{Duration, Instant};

/// One process, as `/proc/<pid>/stat` describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub pid: i32,
    /// `R`, `S`, `T` (stopped), `Z` (zombie), ...
    pub state: char,
    pub ppid: i32,
    /// Start time in clock ticks since boot: with the pid, it names one
    /// process even when pids are recycled.
    pub start: u64,
}

impl ProcInfo {
    /// The process is alive (neither a zombie nor dead).
    pub fn is_alive(&self) -> bool {
        self.state != 'Z' && self.state != 'X'
    }
}

/// `/proc/<pid>/stat`, or `None` if the process is gone.
pub fn proc_info(pid: i32) -> Option<ProcInfo> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain anything, ')' included: fields start after the last one.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcInfo {
        pid,
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        start: f.get(19)?.parse().ok()?,
    })
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The live children of `pid`.
pub fn children_of(pid: i32) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter_map(proc_info)
        .filter(|p| p.ppid == pid && p.is_alive())
        .map(|p| p.pid)
        .collect()
}

/// The process's environment holds exactly `needle` (`NAME=value`).
pub fn has_marker(pid: i32, needle: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|v| v == needle))
        .unwrap_or(false)
}

/// The command line, arguments separated by spaces.
pub fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            String::from_utf8_lossy(&c)
                .replace('\0', " ")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// Live (not zombie) processes whose environment holds `needle`.
pub fn marked_alive(needle: &[u8]) -> Vec<ProcInfo> {
    all_pids()
        .into_iter()
        .filter_map(proc_info)
        .filter(|p| p.is_alive() && has_marker(p.pid, needle))
        .collect()
}

/// One line for a failure message: pid, state, parent, command line.
pub fn describe(p: &ProcInfo) -> String {
    format!(
        "pid {} (state {}, parent {}): {}",
        p.pid,
        p.state,
        p.ppid,
        cmdline(p.pid)
    )
}

/// Waits (bounded) until no process marked with `needle` is alive; returns
/// the survivors.
pub fn survivors_after(needle: &[u8], grace: Duration) -> Vec<String> {
    let deadline = Instant::now() + grace;
    loop {
        let alive = marked_alive(needle);
        if alive.is_empty() {
            return Vec::new();
        }
        if Instant::now() >= deadline {
            return alive.iter().map(describe).collect();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Zombies whose parent is a live process marked with `needle` (the daemon,
/// its fork server, a worker) and that stay unreaped for `grace`.
pub fn lasting_zombies(needle: &[u8], grace: Duration) -> Vec<String> {
    let zombies = || -> HashSet<(i32, u64)> {
        let parents: HashSet<i32> = marked_alive(needle).iter().map(|p| p.pid).collect();
        all_pids()
            .into_iter()
            .filter_map(proc_info)
            .filter(|p| p.state == 'Z' && parents.contains(&p.ppid))
            .map(|p| (p.pid, p.start))
            .collect()
    };
    let deadline = Instant::now() + grace;
    let mut z = zombies();
    while !z.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = zombies();
        z.retain(|k| now.contains(k));
    }
    z.iter()
        .map(|(pid, _)| proc_info(*pid).map_or_else(|| format!("pid {pid}"), |p| describe(&p)))
        .collect()
}

/// What each open descriptor of `pid` points at (`pipe:[…]`,
/// `socket:[…]`, a path, ...).
pub fn fd_targets(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// How many descriptors `pid` holds open.
///
/// # Panics
/// If `/proc/<pid>/fd` cannot be read: the process is gone or not ours.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// `kill(2)`; `true` if the signal was sent. A negative `pid` names a process
/// group.
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; callers only signal
    // processes the test started (a daemon's group, or a process whose
    // marker they checked just before).
    unsafe { libc::kill(pid, sig) == 0 }
}
