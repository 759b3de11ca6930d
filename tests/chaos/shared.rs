//! What the chaos actors share: the run's paths and marker, the daemon's
//! child (started and SIGKILLed from several threads, so behind a mutex and a
//! condvar with its generation), the counters the report reads, and samples
//! of the daemon's descriptors.

use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jobvisor_client::ClientError;

use crate::util::daemon::{daemon_command, kill_group, wait_ready};
use crate::util::proc::{fd_targets, survivors_after};

/// The environment variable every process of a run inherits from the daemon.
pub(super) const MARK_VAR: &str = "JOBVISOR_CHAOS_MARK";

/// Where a run lives and how its processes are recognised.
#[derive(Debug)]
pub(super) struct RunEnv {
    pub(super) state: PathBuf,
    pub(super) socket: PathBuf,
    pub(super) log: PathBuf,
    pub(super) config: PathBuf,
    /// `MARK_VAR=<marker_value>`, as `/proc/<pid>/environ` holds it.
    pub(super) marker: Vec<u8>,
    pub(super) marker_value: String,
    pub(super) workers: usize,
}

impl RunEnv {
    /// The last `lines` lines of the daemon log, for a failure message.
    pub(super) fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The daemon's child and the actors' handshakes, behind [`Shared::st`].
#[derive(Debug, Default)]
pub(super) struct St {
    pub(super) child: Option<Child>,
    pub(super) daemon_pid: u32,
    /// The daemon answers (set after `ping --wait`, cleared before a kill).
    pub(super) up: bool,
    /// Bumped at every start: a connection made in an older generation is dead.
    pub(super) generation: u64,
    /// Daemon kills (each followed by a restart) done so far.
    pub(super) kills_done: usize,
    /// The driver asks the worker killer to pause (for an fd sample) ...
    pub(super) pause_kills: bool,
    /// ... and the worker killer says it has.
    pub(super) killer_paused: bool,
}

/// Everything the driver, the worker killer and the daemon killer share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) env: RunEnv,
    pub(super) st: Mutex<St>,
    pub(super) cv: Condvar,
    pub(super) stop: AtomicBool,
    pub(super) submitted: AtomicUsize,
    pub(super) worker_kills: AtomicU64,
    pub(super) sigstops: AtomicU64,
    pub(super) sigstop_resumed: AtomicBool,
    /// Every worker SIGKILL we sent.
    pub(super) kills: Mutex<Vec<Kill>>,
    /// The driver is inside a submit request (some daemon kills aim at that).
    pub(super) submitting: AtomicBool,
    /// Daemon kills that landed while a submit was in flight.
    pub(super) kills_mid_submit: AtomicUsize,
    /// Processes of a killed daemon found alive after it.
    pub(super) orphans: AtomicUsize,
    /// What the actors found wrong while the run went on.
    pub(super) problems: Mutex<Vec<String>>,
}

/// A worker SIGKILL we sent: the clock (unix ms) read just before and just
/// after `kill(2)`, so the kill happened within `[before_ms, after_ms]`
/// however long the killer was descheduled around it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Kill {
    pub(super) pid: u32,
    pub(super) before_ms: u64,
    pub(super) after_ms: u64,
}

/// Locks `m`, also after a thread panicked holding it: the test reports
/// that panic itself, and the data behind the lock stays usable for the
/// report.
pub(super) fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(super) fn new(env: RunEnv) -> Self {
        Shared {
            env,
            st: Mutex::new(St::default()),
            cv: Condvar::new(),
            stop: AtomicBool::new(false),
            submitted: AtomicUsize::new(0),
            worker_kills: AtomicU64::new(0),
            sigstops: AtomicU64::new(0),
            sigstop_resumed: AtomicBool::new(false),
            orphans: AtomicUsize::new(0),
            kills: Mutex::new(Vec::new()),
            submitting: AtomicBool::new(false),
            kills_mid_submit: AtomicUsize::new(0),
            problems: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn st(&self) -> MutexGuard<'_, St> {
        relock(&self.st)
    }

    pub(super) fn problem(&self, p: String) {
        eprintln!("chaos: PROBLEM: {p}");
        relock(&self.problems).push(p);
    }

    /// Waits on the condvar (at most `timeout`) with the state's lock,
    /// which is taken again however the other thread left it.
    pub(super) fn wait<'a>(
        &'a self,
        st: MutexGuard<'a, St>,
        timeout: Duration,
    ) -> MutexGuard<'a, St> {
        self.cv
            .wait_timeout(st, timeout)
            .unwrap_or_else(|e| e.into_inner())
            .0
    }

    pub(super) fn notify(&self) {
        let _g = self.st();
        self.cv.notify_all();
    }

    /// Starts a daemon and waits until it answers.
    pub(super) fn start_daemon(&self) {
        let child = daemon_command(&self.env.state, &self.env.log)
            .arg("--config")
            .arg(&self.env.config)
            .arg("--workers")
            .arg(self.env.workers.to_string())
            .env(MARK_VAR, &self.env.marker_value)
            .spawn()
            .expect("spawn the daemon");
        let pid = child.id();
        self.st().child = Some(child);
        wait_ready(&self.env.socket, Duration::from_secs(30), || {
            self.env.log_tail(40)
        });
        let mut st = self.st();
        st.daemon_pid = pid;
        st.up = true;
        st.generation += 1;
        self.cv.notify_all();
    }

    /// SIGKILLs the daemon's process group (the daemon alone: its fork server
    /// and workers have groups of their own and must follow by
    /// `PR_SET_PDEATHSIG`), reaps it, and checks that nothing of it survives.
    pub(super) fn kill_daemon(&self) {
        let child = {
            let mut st = self.st();
            st.up = false;
            st.child.take()
        };
        let Some(mut child) = child else { return };
        if let Ok(Some(status)) = child.try_wait() {
            self.problem(format!(
                "the daemon exited by itself before kill -9: {status}; log:\n{}",
                self.env.log_tail(40)
            ));
        }
        if self.submitting.load(Ordering::SeqCst) {
            self.kills_mid_submit.fetch_add(1, Ordering::Relaxed);
        }
        kill_group(&mut child);
        let left = survivors_after(&self.env.marker, Duration::from_secs(5));
        if !left.is_empty() {
            self.orphans.fetch_add(left.len(), Ordering::Relaxed);
            self.problem(format!(
                "{} processes of the killed daemon still alive 5 s later: {left:?}",
                left.len()
            ));
        }
    }

    /// Blocks until the daemon is up; returns its generation.
    pub(super) fn wait_up(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut st = self.st();
        while !st.up {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the daemon did not come back within 60 s");
            st = self.wait(st, left);
        }
        st.generation
    }

    /// A connection of generation `gen` failed: that is only expected when
    /// the daemon was killed, so a newer daemon must come up soon.
    pub(super) fn wait_newer(&self, gen: u64, why: &ClientError) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut st = self.st();
        while st.generation == gen || !st.up {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(st);
                panic!(
                    "the connection to the daemon failed ({why}) but it was not killed; log:\n{}",
                    self.env.log_tail(60)
                );
            }
            st = self.wait(st, left);
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let st = self.st.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(mut c) = st.child.take() {
            kill_group(&mut c);
        }
    }
}

/// Stops the chaos threads when the driver returns or panics.
pub(super) struct StopGuard<'a>(pub(super) &'a Shared);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.notify();
    }
}

// ---- the daemon's descriptors -------------------------------------------------

/// A sample of the daemon's open descriptors.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Fds {
    /// All of them.
    pub(super) total: usize,
    /// Those that are not a worker's (its pipes and pidfd come and go with
    /// every worker death while jobs run; everything else must not grow).
    pub(super) other: usize,
}

/// The least of a few samples over ~100 ms, so a connection the daemon is
/// just closing, or a dead worker it is just reaping, does not count.
pub(super) fn daemon_fds(pid: u32) -> Fds {
    let mut best: Option<Fds> = None;
    for i in 0..6 {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = fd_targets(pid);
        let worker = t
            .iter()
            .filter(|p| p.starts_with("pipe:") || p.as_str() == "anon_inode:[pidfd]")
            .count();
        let f = Fds {
            total: t.len(),
            other: t.len() - worker,
        };
        best = Some(best.map_or(f, |b| Fds {
            total: b.total.min(f.total),
            other: b.other.min(f.other),
        }));
    }
    best.unwrap_or_default()
}
