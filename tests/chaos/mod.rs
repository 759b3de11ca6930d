//! The chaos proof: thousands of mixed jobs (spin, exec, hash, async sleep
//! and http on the workers' event loops, some failing,
//! some poison) through the real `jobvisor` daemon while workers are SIGKILLed
//! at random every few ms, one worker is SIGSTOPped for a while, and the
//! daemon itself is SIGKILLed and restarted several times. At the end one line
//! gives the figures, and the run fails if any is off: acknowledged = terminal
//! (nothing lost), re-runs within their budgets, dead-lettered = exactly the
//! poison jobs, no zombie, no orphan process, no fd growth in the supervisor.
//!
//! `cargo test --test tests chaos::` runs a short configuration (1,000
//! jobs, 2 daemon kills); `JOBVISOR_CHAOS_FULL=1` (what `scripts/chaos` sets)
//! selects the full one (20,000 jobs, 5 daemon kills). `JOBVISOR_CHAOS_SEED`,
//! `JOBVISOR_CHAOS_JOBS`, `JOBVISOR_CHAOS_KILL_MS` and
//! `JOBVISOR_CHAOS_DAEMON_KILLS` override the seed and sizes.
//!
//! Every process the daemon starts (fork server, workers, the commands of
//! `exec` jobs) inherits a marker environment variable unique to the run, so
//! "no orphan" is checked by scanning `/proc` for live processes carrying it,
//! however they were started. The run's directory (daemon log, database) is
//! printed first and kept when the run fails.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use jobvisor_client::{
    AttemptOutcome, Client, ClientError, ErrorKind, JobRecord, JobSpec, JobState, Payload,
    Submitted,
};

use crate::util::daemon::{daemon_command, kill_group, wait_ready};
use crate::util::proc::{
    fd_targets, has_marker, lasting_zombies, proc_info, signal, survivors_after,
};
use crate::util::rng::Rng;
use crate::util::rt;

/// The environment variable every process of a run inherits from the daemon.
const MARK_VAR: &str = "JOBVISOR_CHAOS_MARK";

/// Rough time a job attempt occupies a worker (spin averages 3 ms, plus
/// dispatch), for the a-priori estimate of how often a random kill hits it.
const ATTEMPT_MS_ESTIMATE: f64 = 4.0;

// ---- configuration and report -----------------------------------------------

/// What a chaos run does.
#[derive(Debug, Clone)]
struct ChaosConfig {
    /// Jobs submitted in all.
    jobs: usize,
    /// Jobs per submit request.
    batch: usize,
    /// Batch `b` is submitted once the jobs of batch `b - lag_batches` that are
    /// meant to succeed are terminal, so the submissions (and the daemon kills,
    /// placed by submission progress) are spread over the whole run instead of
    /// all landing in its first second, and the workers stay busy with regular
    /// jobs while the poison and failing ones trail through their retries.
    lag_batches: usize,
    /// Worker processes.
    workers: usize,
    /// SIGKILLs of the daemon (each followed by a restart).
    daemon_kills: usize,
    /// Mean interval between two worker SIGKILLs (uniform jitter of ±50%).
    worker_kill_every: Duration,
    /// How long the one SIGSTOPped worker stays stopped.
    sigstop_for: Duration,
    /// `jobs.max_attempts`: attempt budget (task errors).
    max_attempts: u32,
    /// `jobs.max_crashes`: crash budget (worker deaths) before `dead`.
    max_crashes: u32,
    /// Seed of every random choice of the run.
    seed: u64,
    /// Give up waiting for the jobs after this long.
    deadline: Duration,
}

impl ChaosConfig {
    /// The run inside the test suite: well under a minute in a debug build on
    /// two cores.
    fn short() -> Self {
        Self {
            jobs: 1_000,
            batch: 50,
            lag_batches: 4,
            workers: 2,
            daemon_kills: 2,
            worker_kill_every: Duration::from_millis(20),
            sigstop_for: Duration::from_millis(500),
            max_attempts: 3,
            // With a kill every ~20 ms over 2 workers an attempt is hit with
            // p ≈ 4 ms / 40 ms = 0.1; 10 crashes in a row: 1e-10 per job.
            max_crashes: 10,
            seed: 0,
            deadline: Duration::from_secs(120),
        }
    }

    /// The full proof (`scripts/chaos`).
    fn full() -> Self {
        Self {
            jobs: 20_000,
            batch: 200,
            lag_batches: 5,
            workers: 2,
            daemon_kills: 5,
            worker_kill_every: Duration::from_millis(10),
            sigstop_for: Duration::from_millis(500),
            max_attempts: 3,
            // A kill every ~10 ms over 2 workers: p ≈ 4 ms / 20 ms = 0.2 per
            // attempt (measured: ~0.1); 18 crashes: 2.6e-13 per succeeding
            // job, ≈ 1e-7 for the whole run (see the printed estimate).
            max_crashes: 18,
            seed: 0,
            deadline: Duration::from_secs(1800),
        }
    }

    fn with_env_overrides(mut self) -> Self {
        fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
            std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
        }
        self.seed = var("JOBVISOR_CHAOS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        if let Some(n) = var("JOBVISOR_CHAOS_JOBS") {
            self.jobs = n;
        }
        if let Some(ms) = var("JOBVISOR_CHAOS_KILL_MS") {
            self.worker_kill_every = Duration::from_millis(ms);
        }
        if let Some(n) = var("JOBVISOR_CHAOS_DAEMON_KILLS") {
            self.daemon_kills = n;
        }
        self
    }

    /// A-priori probability that a random worker kill hits a given attempt.
    fn p_hit_prior(&self) -> f64 {
        let every = self.worker_kill_every.as_secs_f64() * 1000.0;
        (ATTEMPT_MS_ESTIMATE / (self.workers as f64 * every.max(0.001))).min(1.0)
    }
}

/// Probability that any of `normal` succeeding jobs and `failing` failing jobs
/// is dead-lettered by random kills alone, when each attempt is hit with
/// probability `p`: a succeeding job needs `C` crashes before its first clean
/// attempt (p^C); a failing job may interleave its `A - 1` errors with them, so
/// at most binom(A-1+C, C)·p^C.
fn p_wrongly_dead(normal: usize, failing: usize, p: f64, a: u32, c: u32) -> f64 {
    let pc = p.powi(c as i32);
    let mut binom = 1.0;
    for i in 1..a {
        binom = binom * f64::from(c + i) / f64::from(i);
    }
    (normal as f64 * pc + failing as f64 * binom * pc).min(1.0)
}

/// What a chaos run found.
#[derive(Debug)]
struct ChaosReport {
    /// The one summary line.
    line: String,
    /// Every figure that is off, with its evidence.
    problems: Vec<String>,
    /// The run's directory (daemon log, database); kept when there are problems.
    dir: PathBuf,
}

// ---- the job mix --------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `spin` 1..5 ms: succeeds.
    Spin,
    /// `exec true`: succeeds with code 0.
    ExecTrue,
    /// `exec sh -c "exit 3"`: succeeds (the job ran) with code 3 recorded.
    ExecExit3,
    /// `hash` of a small file: succeeds with its digest.
    Hash,
    /// `hash` of a missing file: fails after `max_attempts` task errors.
    HashMissing,
    /// `crash` with SIGKILL: dead after `max_crashes` worker deaths.
    Poison,
    /// Async `sleep` 1..20 ms on the workers' event loops: succeeds.
    Sleep,
    /// Async `http` to a closed port: fails after `max_attempts` task errors.
    HttpRefused,
}

impl Kind {
    /// Jobs that fail by design (task errors every attempt).
    fn fails(self) -> bool {
        matches!(self, Kind::HashMissing | Kind::HttpRefused)
    }
}

#[derive(Debug)]
struct Planned {
    kind: Kind,
    spec: JobSpec,
}

fn plan(cfg: &ChaosConfig, dir: &Path, data: &Path) -> Vec<Planned> {
    let mut rng = Rng::new(cfg.seed);
    (0..cfg.jobs)
        .map(|n| {
            let r = rng.below(100);
            let (kind, task, input) = match r {
                0..=49 => (
                    Kind::Spin,
                    "spin",
                    format!(r#"{{"ms": {}}}"#, 1 + rng.below(5)),
                ),
                50..=57 => (
                    Kind::Sleep,
                    "sleep",
                    format!(r#"{{"ms": {}}}"#, 1 + rng.below(20)),
                ),
                58..=59 => (
                    Kind::HttpRefused,
                    "http",
                    r#"{"url": "http://127.0.0.1:1/", "connect_timeout_ms": 2000}"#.to_string(),
                ),
                60..=67 => (Kind::ExecTrue, "exec", r#"{"argv": ["true"]}"#.to_string()),
                68..=74 => (
                    Kind::ExecExit3,
                    "exec",
                    r#"{"argv": ["sh", "-c", "exit 3"]}"#.to_string(),
                ),
                75..=84 => (
                    Kind::Hash,
                    "hash",
                    serde_json::json!({ "path": data }).to_string(),
                ),
                85..=94 => (
                    Kind::HashMissing,
                    "hash",
                    serde_json::json!({ "path": dir.join(format!("missing-{n}")) }).to_string(),
                ),
                _ => (Kind::Poison, "crash", r#"{"signal": 9}"#.to_string()),
            };
            let mut spec = JobSpec::new(task, Payload::Json(input));
            // The key makes a resubmit after an unknown outcome (the daemon
            // killed mid-request) return the job it may already have stored.
            spec.key = Some(format!("chaos-{n}"));
            Planned { kind, spec }
        })
        .collect()
}

// ---- the daemon's descriptors -------------------------------------------------

/// A sample of the daemon's open descriptors.
#[derive(Debug, Clone, Copy, Default)]
struct Fds {
    /// All of them.
    total: usize,
    /// Those that are not a worker's (its pipes and pidfd come and go with
    /// every worker death while jobs run; everything else must not grow).
    other: usize,
}

/// The least of a few samples over ~100 ms, so a connection the daemon is
/// just closing, or a dead worker it is just reaping, does not count.
fn daemon_fds(pid: u32) -> Fds {
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

/// A log line without its colour codes.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- the daemon and the shared state -------------------------------------------

#[derive(Debug)]
struct RunEnv {
    state: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    config: PathBuf,
    marker: Vec<u8>,
    marker_value: String,
    workers: usize,
}

impl RunEnv {
    fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

#[derive(Debug, Default)]
struct St {
    child: Option<Child>,
    daemon_pid: u32,
    /// The daemon answers (set after `ping --wait`, cleared before a kill).
    up: bool,
    /// Bumped at every start: a connection made in an older generation is dead.
    generation: u64,
    kills_done: usize,
    pause_kills: bool,
    killer_paused: bool,
}

#[derive(Debug)]
struct Shared {
    env: RunEnv,
    st: Mutex<St>,
    cv: Condvar,
    stop: AtomicBool,
    submitted: AtomicUsize,
    worker_kills: AtomicU64,
    sigstops: AtomicU64,
    sigstop_resumed: AtomicBool,
    /// Every worker SIGKILL we sent.
    kills: Mutex<Vec<Kill>>,
    /// The driver is inside a submit request (some daemon kills aim at that).
    submitting: AtomicBool,
    /// Daemon kills that landed while a submit was in flight.
    kills_mid_submit: AtomicUsize,
    orphans: AtomicUsize,
    problems: Mutex<Vec<String>>,
}

/// A worker SIGKILL we sent: the clock (unix ms) read just before and just
/// after `kill(2)`, so the kill happened within `[before_ms, after_ms]`
/// however long the killer was descheduled around it.
#[derive(Debug, Clone, Copy)]
struct Kill {
    pid: u32,
    before_ms: u64,
    after_ms: u64,
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn st(&self) -> MutexGuard<'_, St> {
        relock(&self.st)
    }

    fn problem(&self, p: String) {
        eprintln!("chaos: PROBLEM: {p}");
        relock(&self.problems).push(p);
    }

    fn notify(&self) {
        let _g = self.st();
        self.cv.notify_all();
    }

    /// Starts a daemon and waits until it answers.
    fn start_daemon(&self) {
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
    fn kill_daemon(&self) {
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
    fn wait_up(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut st = self.st();
        while !st.up {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the daemon did not come back within 60 s");
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.generation
    }

    /// A connection of generation `gen` failed: that is only expected when
    /// the daemon was killed, so a newer daemon must come up soon.
    fn wait_newer(&self, gen: u64, why: &ClientError) {
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
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
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
struct StopGuard<'a>(&'a Shared);

impl Drop for StopGuard<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::SeqCst);
        self.0.notify();
    }
}

fn is_connection_error(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable { .. }
            | ClientError::Io(_)
            | ClientError::Frame(_)
            | ClientError::Handshake(_)
    )
}

/// A client connection that survives daemon restarts.
struct Conn<'a> {
    shared: &'a Shared,
    client: Option<Client>,
    gen: u64,
}

impl<'a> Conn<'a> {
    fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            client: None,
            gen: 0,
        }
    }

    async fn get(&mut self) -> &mut Client {
        while self.client.is_none() {
            let gen = self.shared.wait_up();
            match Client::connect(&self.shared.env.socket).await {
                Ok(c) => {
                    self.client = Some(c);
                    self.gen = gen;
                }
                Err(e) => self.shared.wait_newer(gen, &e),
            }
        }
        self.client.as_mut().expect("connected")
    }

    fn broken(&mut self, e: &ClientError) {
        self.client = None;
        self.shared.wait_newer(self.gen, e);
    }
}

async fn submit(conn: &mut Conn<'_>, specs: &[JobSpec]) -> Vec<Submitted> {
    loop {
        match conn.get().await.submit(specs.to_vec()).await {
            Ok(v) => {
                assert_eq!(v.len(), specs.len(), "one answer per job");
                return v;
            }
            Err(e) if is_connection_error(&e) => conn.broken(&e),
            Err(e) => panic!("the daemon refused a submit: {e}"),
        }
    }
}

/// Waits until every job is terminal. Returns the terminal records, and the
/// ids of jobs the daemon does not know (lost).
async fn wait_terminal(
    conn: &mut Conn<'_>,
    ids: &[u64],
    deadline: Instant,
) -> Result<(HashMap<u64, JobRecord>, Vec<u64>), Vec<JobRecord>> {
    let mut done: HashMap<u64, JobRecord> = HashMap::with_capacity(ids.len());
    let mut missing = Vec::new();
    let mut pending: Vec<u64> = ids.to_vec();
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            let mut stuck = Vec::new();
            for id in pending.iter().take(20) {
                if let Ok(r) = conn.get().await.status(*id).await {
                    stuck.push(r);
                }
            }
            return Err(stuck);
        }
        for chunk in pending.chunks(1000) {
            let c = conn.get().await;
            match c.wait(chunk.to_vec(), Some(Duration::from_secs(5))).await {
                Ok(recs) => {
                    for r in recs {
                        if r.state.is_terminal() {
                            done.insert(r.id, r);
                        }
                    }
                }
                Err(ClientError::Server(e)) if e.kind == ErrorKind::NotFound => {
                    // Which one? Ask one by one.
                    for id in chunk {
                        match c.status(*id).await {
                            Err(ClientError::Server(e)) if e.kind == ErrorKind::NotFound => {
                                missing.push(*id)
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    conn.broken(&e);
                    break;
                }
                Err(e) => panic!("wait failed: {e}"),
            }
        }
        pending.retain(|id| !done.contains_key(id) && !missing.contains(id));
    }
    Ok((done, missing))
}

/// Waits (bounded) until the pool has all its workers, alive and ready.
async fn settle_pool(conn: &mut Conn<'_>, workers: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match conn.get().await.workers().await {
            Ok(rows)
                if rows.len() == workers && rows.iter().all(|w| w.state.as_str() == "ready") =>
            {
                return
            }
            Ok(rows) => assert!(
                Instant::now() < deadline,
                "the pool did not settle: {rows:?}"
            ),
            Err(e) if is_connection_error(&e) => conn.broken(&e),
            Err(e) => panic!("workers failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---- the chaos actors ---------------------------------------------------------

/// SIGKILLs a random worker every few ms; once, SIGSTOPs one for a while.
fn worker_killer(shared: &Shared, cfg: &ChaosConfig) {
    let mut rng = Rng::new(cfg.seed ^ 0x5157_0b0b);
    let stop_at = cfg.jobs / 3;
    rt().block_on(async {
        let mut client: Option<(Client, u64)> = None;
        // (pid, when, calls done at the stop)
        let mut stopped: Option<(u32, Instant, u64)> = None;
        // A worker resumed, until it is seen doing calls again.
        let mut resumed: Option<(u32, u64)> = None;
        let mut stop_done = false;
        while !shared.stop.load(Ordering::SeqCst) {
            // Paused (the driver samples the daemon's descriptors).
            if shared.st().pause_kills {
                client = None;
                let mut st = shared.st();
                st.killer_paused = true;
                shared.cv.notify_all();
                while st.pause_kills && !shared.stop.load(Ordering::SeqCst) {
                    st = shared
                        .cv
                        .wait_timeout(st, Duration::from_millis(100))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                st.killer_paused = false;
                continue;
            }
            tokio::time::sleep(rng.jitter(cfg.worker_kill_every)).await;
            if let Some((pid, at, calls)) = stopped {
                if at.elapsed() >= cfg.sigstop_for {
                    if has_marker(pid as i32, &shared.env.marker) {
                        signal(pid as i32, libc::SIGCONT);
                        eprintln!("chaos: SIGCONT worker {pid}");
                    } else {
                        eprintln!("chaos: the SIGSTOPped worker {pid} is gone (a daemon kill)");
                    }
                    stopped = None;
                    resumed = Some((pid, calls));
                }
            }
            let (up, gen) = {
                let st = shared.st();
                (st.up, st.generation)
            };
            if !up {
                client = None;
                continue;
            }
            if client.as_ref().is_some_and(|(_, g)| *g != gen) {
                client = None;
            }
            if client.is_none() {
                match Client::connect(&shared.env.socket).await {
                    Ok(c) => client = Some((c, gen)),
                    Err(_) => continue,
                }
            }
            let Some((c, _)) = client.as_mut() else {
                continue;
            };
            let rows = match c.workers().await {
                Ok(rows) => rows,
                Err(_) => {
                    client = None;
                    continue;
                }
            };
            if let Some((pid, calls)) = resumed {
                match rows.iter().find(|w| w.pid == pid) {
                    Some(w) if w.calls_done > calls => {
                        eprintln!(
                            "chaos: worker {pid} resumed: {calls} -> {} calls done",
                            w.calls_done
                        );
                        shared.sigstop_resumed.store(true, Ordering::SeqCst);
                        resumed = None;
                    }
                    Some(_) => {}
                    None => {
                        // A poison job on it, or a daemon kill.
                        eprintln!("chaos: worker {pid} died before it was seen resuming");
                        resumed = None;
                    }
                }
            }
            let spared = stopped.map(|s| s.0).or(resumed.map(|r| r.0));
            let candidates: Vec<_> = rows
                .iter()
                .filter(|w| w.state.as_str() == "ready" && Some(w.pid) != spared)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            if !stop_done && shared.submitted.load(Ordering::SeqCst) >= stop_at {
                if let Some(w) = candidates.iter().find(|w| w.in_flight > 0) {
                    if has_marker(w.pid as i32, &shared.env.marker)
                        && signal(w.pid as i32, libc::SIGSTOP)
                    {
                        // It is stopped once /proc says so (state T).
                        let until = Instant::now() + Duration::from_millis(200);
                        let mut state = '?';
                        while Instant::now() < until {
                            state = proc_info(w.pid as i32).map_or('?', |p| p.state);
                            if state == 'T' {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        eprintln!(
                            "chaos: SIGSTOP worker {} ({} calls in flight; state {state}) for {:?}",
                            w.pid, w.in_flight, cfg.sigstop_for
                        );
                        stopped = Some((w.pid, Instant::now(), w.calls_done));
                        stop_done = true;
                        shared.sigstops.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let w = candidates[rng.below(candidates.len() as u64) as usize];
            if has_marker(w.pid as i32, &shared.env.marker) {
                let before_ms = unix_ms();
                let sent = signal(w.pid as i32, libc::SIGKILL);
                let after_ms = unix_ms();
                if sent {
                    shared.worker_kills.fetch_add(1, Ordering::Relaxed);
                    relock(&shared.kills).push(Kill {
                        pid: w.pid,
                        before_ms,
                        after_ms,
                    });
                }
            }
        }
        if let Some((pid, _, _)) = stopped {
            if has_marker(pid as i32, &shared.env.marker) {
                signal(pid as i32, libc::SIGCONT);
            }
        }
    });
}

/// SIGKILLs and restarts the daemon `daemon_kills` times, spread over the
/// submissions, each at a random moment (sometimes in the middle of a submit).
fn daemon_killer(shared: &Shared, cfg: &ChaosConfig) {
    let mut rng = Rng::new(cfg.seed ^ 0xdead_d00d);
    for k in 0..cfg.daemon_kills {
        let threshold = cfg.jobs * (k + 1) / (cfg.daemon_kills + 2);
        {
            let mut st = shared.st();
            while shared.submitted.load(Ordering::SeqCst) < threshold {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                st = shared
                    .cv
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        if k % 2 == 0 {
            // In the middle of a submit: its outcome is unknown to the client,
            // which resubmits with the same keys after the restart.
            let mut st = shared.st();
            while !shared.submitting.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
                st = shared
                    .cv
                    .wait_timeout(st, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            drop(st);
            std::thread::sleep(Duration::from_micros(rng.below(1000)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(40)));
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        shared.kill_daemon();
        shared.start_daemon();
        let mut st = shared.st();
        st.kills_done += 1;
        shared.cv.notify_all();
        drop(st);
        eprintln!(
            "chaos: daemon kill {} of {} at {} submitted; restarted",
            k + 1,
            cfg.daemon_kills,
            shared.submitted.load(Ordering::SeqCst)
        );
    }
}

/// Pauses the worker killer (it closes its connection) and samples the
/// daemon's descriptors once its pool is whole again.
async fn sample_fds_paused(shared: &Shared, conn: &mut Conn<'_>, workers: usize) -> Fds {
    {
        let mut st = shared.st();
        st.pause_kills = true;
        shared.cv.notify_all();
        while !st.killer_paused && !shared.stop.load(Ordering::SeqCst) {
            st = shared
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    settle_pool(conn, workers).await;
    let pid = shared.st().daemon_pid;
    let n = daemon_fds(pid);
    let mut st = shared.st();
    st.pause_kills = false;
    shared.cv.notify_all();
    n
}

// ---- the run ------------------------------------------------------------------

#[derive(Debug, Default)]
struct Driven {
    ids: Vec<u64>,
    duplicates: usize,
    records: HashMap<u64, JobRecord>,
    missing: Vec<u64>,
    stuck: Vec<JobRecord>,
    fds_warm: Option<Fds>,
}

/// Submits every batch (with the lag), takes the warm fd sample on the final
/// daemon, and waits until every acknowledged job is terminal.
async fn drive(shared: &Shared, cfg: &ChaosConfig, plan: &[Planned], started: Instant) -> Driven {
    let mut conn = Conn::new(shared);
    let mut out = Driven {
        ids: Vec::with_capacity(plan.len()),
        ..Driven::default()
    };
    let deadline = started + cfg.deadline;
    let batches: Vec<&[Planned]> = plan.chunks(cfg.batch.max(1)).collect();
    // Per batch, the ids of its jobs that are meant to succeed.
    let mut pace: Vec<Vec<u64>> = Vec::new();
    let mut final_from: Option<usize> = None;
    for (b, batch) in batches.iter().enumerate() {
        if b >= cfg.lag_batches {
            let ids = std::mem::take(&mut pace[b - cfg.lag_batches]);
            if let Err(stuck) = wait_terminal(&mut conn, &ids, deadline).await {
                out.stuck = stuck;
                return out;
            }
        }
        let specs: Vec<JobSpec> = batch.iter().map(|p| p.spec.clone()).collect();
        shared.submitting.store(true, Ordering::SeqCst);
        shared.notify();
        let subs = submit(&mut conn, &specs).await;
        shared.submitting.store(false, Ordering::SeqCst);
        out.duplicates += subs.iter().filter(|s| s.duplicate).count();
        out.ids.extend(subs.iter().map(|s| s.id));
        pace.push(
            batch
                .iter()
                .zip(&subs)
                .filter(|(p, _)| p.kind != Kind::Poison && !p.kind.fails())
                .map(|(_, s)| s.id)
                .collect(),
        );
        shared.submitted.fetch_add(subs.len(), Ordering::SeqCst);
        shared.notify();
        // The warm sample: on the final daemon, after it has run a little.
        if out.fds_warm.is_none() && shared.st().kills_done == cfg.daemon_kills {
            let from = *final_from.get_or_insert(b);
            if b >= from + 2 {
                out.fds_warm = Some(sample_fds_paused(shared, &mut conn, cfg.workers).await);
            }
        }
    }
    // Every daemon kill happens before the last batch (see daemon_killer).
    {
        let mut st = shared.st();
        while st.kills_done < cfg.daemon_kills {
            assert!(Instant::now() < deadline, "the daemon kills did not happen");
            st = shared
                .cv
                .wait_timeout(st, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
    if out.fds_warm.is_none() {
        out.fds_warm = Some(sample_fds_paused(shared, &mut conn, cfg.workers).await);
    }
    match wait_terminal(&mut conn, &out.ids, deadline).await {
        Ok((records, missing)) => {
            out.records = records;
            out.missing = missing;
        }
        Err(stuck) => out.stuck = stuck,
    }
    out
}

#[derive(Debug, Default)]
struct Figures {
    succeeded: usize,
    failed: usize,
    dead: usize,
    reruns: usize,
    lost: usize,
    /// Crashed attempts of jobs that are not poison: random kills that hit.
    hits: usize,
    /// Crashed attempts of jobs that are not poison on a worker we did not kill.
    misattributed: usize,
    /// Attempts of jobs that are not poison, lost ones excluded.
    normal_attempts: usize,
    normal: usize,
    failing: usize,
}

fn short(r: &JobRecord) -> String {
    let attempts: Vec<String> = r
        .attempts
        .iter()
        .map(|a| {
            let o = match &a.outcome {
                AttemptOutcome::Crashed { code, signal, .. } => {
                    format!("crashed(code {code:?}, signal {signal:?})")
                }
                other => format!("{other:?}").chars().take(80).collect(),
            };
            format!("#{} pid {:?}: {o}", a.number, a.worker_pid)
        })
        .collect();
    format!(
        "job {} ({}) {:?} error {:?} attempts [{}]",
        r.id,
        r.task,
        r.state,
        r.error,
        attempts.join("; ")
    )
}

/// Checks every record against what its kind must end as.
fn check_records(
    cfg: &ChaosConfig,
    plan: &[Planned],
    ids: &[u64],
    records: &HashMap<u64, JobRecord>,
    digest: Option<&str>,
    kills: &[Kill],
) -> (Figures, Vec<String>, Vec<u32>) {
    let mut by_pid: HashMap<u32, Vec<Kill>> = HashMap::new();
    for k in kills {
        by_pid.entry(k.pid).or_default().push(*k);
    }
    // Did we SIGKILL this worker while the attempt was open? (pids are
    // recycled over a long run, hence the time window.) The kill happened
    // within [before_ms, after_ms]; the daemon stamps the attempt's end
    // (finished_ms, same clock) after it saw the worker die, so a kill that
    // ended it has before_ms <= finished_ms exactly. Its start (started_ms)
    // is stamped when the call is handed to the pool, which can be a moment
    // after the kill when the daemon has not noticed the death yet:
    // KILL_NOTICE_SLACK_MS of that is allowed. A crash charged to an attempt
    // that ended before the kill, or began later than that after it, is not
    // ours.
    const KILL_NOTICE_SLACK_MS: u64 = 50;
    let we_killed = |a: &jobvisor_client::Attempt| {
        a.worker_pid.and_then(|p| by_pid.get(&p)).is_some_and(|ks| {
            let end = a.finished_ms.unwrap_or(u64::MAX);
            ks.iter()
                .any(|k| k.before_ms <= end && k.after_ms + KILL_NOTICE_SLACK_MS >= a.started_ms)
        })
    };
    let mut misattributed: Vec<u32> = Vec::new();
    let mut f = Figures::default();
    let mut problems: Vec<String> = Vec::new();
    let mut wrong: HashMap<&'static str, (usize, Vec<String>)> = HashMap::new();
    let mut flag = |what: &'static str, r: &JobRecord| {
        let e = wrong.entry(what).or_default();
        e.0 += 1;
        if e.1.len() < 5 {
            e.1.push(short(r));
        }
    };
    for (n, p) in plan.iter().enumerate() {
        let Some(r) = ids.get(n).and_then(|id| records.get(id)) else {
            continue;
        };
        match r.state {
            JobState::Succeeded => f.succeeded += 1,
            JobState::Failed => f.failed += 1,
            JobState::Dead => f.dead += 1,
            _ => {}
        }
        let mut crashes = 0u32;
        let mut failures = 0u32;
        let mut lost = 0u32;
        let mut oks = 0u32;
        let mut odd = 0u32;
        for a in &r.attempts {
            match a.outcome {
                AttemptOutcome::Crashed { .. } => crashes += 1,
                AttemptOutcome::Error(_)
                | AttemptOutcome::Panic(_)
                | AttemptOutcome::TimedOut(_) => failures += 1,
                AttemptOutcome::Lost => lost += 1,
                AttemptOutcome::Ok => oks += 1,
                AttemptOutcome::Running | AttemptOutcome::Cancelled => odd += 1,
            }
        }
        f.reruns += r.attempts.len().saturating_sub(1);
        f.lost += lost as usize;
        if p.kind != Kind::Poison {
            let mut foreign = 0;
            for a in &r.attempts {
                if !matches!(a.outcome, AttemptOutcome::Crashed { .. }) {
                    continue;
                }
                if we_killed(a) {
                    f.hits += 1;
                } else {
                    foreign += 1;
                    if misattributed.len() < 3 {
                        misattributed.extend(a.worker_pid);
                    }
                }
            }
            if foreign > 0 {
                f.misattributed += foreign;
                flag(
                    "job charged with a crash of a worker we did not kill (and it does not crash)",
                    r,
                );
            }
            f.normal_attempts += r.attempts.len() - lost as usize;
            if p.kind.fails() {
                f.failing += 1;
            } else {
                f.normal += 1;
            }
        }
        let numbers_ok = r
            .attempts
            .iter()
            .enumerate()
            .all(|(i, a)| a.number as usize == i + 1);
        if !numbers_ok || odd > 0 {
            flag("attempts misnumbered or left running/cancelled", r);
        }
        if crashes > cfg.max_crashes || failures > cfg.max_attempts {
            flag(
                "over budget (crashes > max_crashes or failures > max_attempts)",
                r,
            );
        }
        if lost as usize > cfg.daemon_kills {
            flag("more lost attempts than daemon kills", r);
        }
        let expect = match p.kind {
            Kind::Poison => JobState::Dead,
            k if k.fails() => JobState::Failed,
            _ => JobState::Succeeded,
        };
        if r.state != expect {
            flag(
                match (p.kind, r.state) {
                    (Kind::Poison, JobState::Failed) => "poison job failed instead of dead",
                    (Kind::Poison, _) => "poison job not dead",
                    (_, JobState::Dead) => "job dead-lettered that is not poison",
                    (k, _) if k.fails() => "failing job not failed",
                    _ => "job did not succeed",
                },
                r,
            );
            continue;
        }
        match r.state {
            JobState::Succeeded => {
                let last_ok = matches!(
                    r.attempts.last().map(|a| &a.outcome),
                    Some(AttemptOutcome::Ok)
                );
                if oks != 1 || !last_ok {
                    flag("succeeded without exactly one final ok attempt", r);
                }
                let out: serde_json::Value = match &r.output {
                    Some(Payload::Json(s)) => serde_json::from_str(s).unwrap_or_default(),
                    _ => serde_json::Value::Null,
                };
                let good = match p.kind {
                    Kind::Spin => out["iterations"].as_u64().is_some_and(|n| n > 0),
                    Kind::ExecTrue => out["code"] == 0,
                    Kind::ExecExit3 => out["code"] == 3,
                    Kind::Hash => match digest {
                        Some(d) => out["sha256"] == d,
                        None => out["sha256"].as_str().is_some_and(|s| s.len() == 64),
                    },
                    _ => true,
                };
                if !good {
                    flag("succeeded with a wrong output", r);
                }
            }
            JobState::Dead
                if crashes != cfg.max_crashes
                    || !r.error.as_deref().unwrap_or("").contains("poison job") =>
            {
                flag("dead without spending exactly its crash budget", r);
            }
            JobState::Failed => {
                let error = r.error.as_deref().unwrap_or("");
                // Its attempt budget spent by task errors; or, as documented,
                // by task errors plus attempts lost to daemon kills.
                let by_design = error.contains("missing-") || error.contains("127.0.0.1:1/");
                let spent = (failures == cfg.max_attempts && by_design)
                    || (lost > 0 && failures + lost >= cfg.max_attempts && error.contains("lost"));
                if !spent {
                    flag("failed without spending exactly its attempt budget", r);
                }
            }
            _ => {}
        }
    }
    let mut kinds: Vec<_> = wrong.into_iter().collect();
    kinds.sort_by_key(|(k, _)| *k);
    for (what, (n, examples)) in kinds {
        problems.push(format!("{n} × {what}; e.g.:\n  {}", examples.join("\n  ")));
    }
    (f, problems, misattributed)
}

fn run_chaos(cfg: ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("jobvisor-chaos-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let state = dir.join("state");
    let config = dir.join("chaos.toml");
    let marker_value = format!("{}-{}", std::process::id(), cfg.seed);
    std::fs::write(
        &config,
        format!(
            "# Written by tests/chaos.rs.\n\
             [limits]\n\
             max_queued_jobs = {queued}\n\
             [jobs]\n\
             max_attempts = {a}\n\
             # High enough that random kills (not the job) almost never spend it: see the estimate printed.\n\
             max_crashes = {c}\n\
             # Small backoff: retries (thousands of them) should not stretch the run.\n\
             backoff_base_ms = 5\n\
             backoff_max_ms = 50\n\
             [pool]\n\
             # Restart intensity guards production from crash loops by delaying restarts (up to\n\
             # restart_backoff_max_ms). Here worker deaths are the point (hundreds per second from\n\
             # kills and poison jobs); a degraded pool would only stretch the run, and poison jobs\n\
             # are stopped by the crash budget anyway. So: effectively unlimited.\n\
             max_restarts = 1000000\n\
             restart_window_ms = 1000\n",
            queued = cfg.jobs.max(100_000),
            a = cfg.max_attempts,
            c = cfg.max_crashes,
        ),
    )
    .expect("write config");
    let data = dir.join("data.txt");
    std::fs::write(&data, b"jobvisor chaos: hash me\n").expect("write data");
    let digest = Command::new("sha256sum")
        .arg(&data)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_string)
        });
    let plan = plan(&cfg, &dir, &data);
    let n_poison = plan.iter().filter(|p| p.kind == Kind::Poison).count();
    let n_failing = plan.iter().filter(|p| p.kind.fails()).count();
    let n_normal = plan.len() - n_poison - n_failing;
    let p_prior = cfg.p_hit_prior();
    println!(
        "chaos: seed={} jobs={} (poison {n_poison}, failing {n_failing}) workers={} \
         worker kill every ~{:?} daemon kills={} dir={}",
        cfg.seed,
        cfg.jobs,
        cfg.workers,
        cfg.worker_kill_every,
        cfg.daemon_kills,
        dir.display()
    );
    println!(
        "chaos: a random kill hits an attempt with p ≈ {p_prior:.3} (a priori); \
         max_crashes={} ⇒ P(any non-poison job dead-lettered by chance) ≈ {:.1e}",
        cfg.max_crashes,
        p_wrongly_dead(
            n_normal,
            n_failing,
            p_prior,
            cfg.max_attempts,
            cfg.max_crashes
        )
    );
    let shared = Shared {
        env: RunEnv {
            socket: state.join("control.sock"),
            log: dir.join("daemon.log"),
            state,
            config,
            marker: format!("{MARK_VAR}={marker_value}").into_bytes(),
            marker_value,
            workers: cfg.workers,
        },
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
    };
    shared.start_daemon();
    // The baseline: a fresh daemon, idle, its pool whole, one client connection.
    let fds_idle = rt().block_on(async {
        let mut conn = Conn::new(&shared);
        settle_pool(&mut conn, cfg.workers).await;
        daemon_fds(shared.st().daemon_pid)
    });

    let driven = std::thread::scope(|s| {
        let wk = s.spawn(|| worker_killer(&shared, &cfg));
        let dk = s.spawn(|| daemon_killer(&shared, &cfg));
        let guard = StopGuard(&shared);
        let driven = rt().block_on(drive(&shared, &cfg, &plan, started));
        drop(guard);
        if wk.join().is_err() || dk.join().is_err() {
            panic!("a chaos thread panicked");
        }
        driven
    });
    let mut problems: Vec<String> = std::mem::take(&mut *relock(&shared.problems));
    if !driven.stuck.is_empty() {
        problems.push(format!(
            "jobs still not terminal after {:?}:\n  {}",
            cfg.deadline,
            driven
                .stuck
                .iter()
                .map(short)
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !driven.missing.is_empty() {
        problems.push(format!(
            "{} acknowledged jobs unknown to the daemon (lost): {:?}",
            driven.missing.len(),
            &driven.missing[..driven.missing.len().min(20)]
        ));
    }
    let unique: HashSet<u64> = driven.ids.iter().copied().collect();
    if unique.len() != driven.ids.len() {
        problems.push(format!(
            "{} distinct ids for {} acknowledged jobs",
            unique.len(),
            driven.ids.len()
        ));
    }

    // Quiet now: no kill any more. The pool, zombies, descriptors, the store's view.
    let (fds_end, zombies, store_total) = rt().block_on(async {
        let mut conn = Conn::new(&shared);
        settle_pool(&mut conn, cfg.workers).await;
        let zombies = lasting_zombies(&shared.env.marker, Duration::from_secs(2));
        let pid = shared.st().daemon_pid;
        let fds_end = daemon_fds(pid);
        let stats = conn.get().await.stats().await.expect("stats");
        let total: u64 = stats.jobs.iter().map(|(_, n)| n).sum();
        (fds_end, zombies, total)
    });
    if !zombies.is_empty() {
        problems.push(format!("zombies: {zombies:?}"));
    }
    if store_total != cfg.jobs as u64 {
        problems.push(format!(
            "the store holds {store_total} jobs for {} submitted (a resubmit was not deduplicated?)",
            cfg.jobs
        ));
    }
    // Idle with a whole pool and one client connection, like the first
    // daemon before any job: the totals must match; under load on the final
    // daemon, the descriptors that are not a worker's must not have grown.
    let fds_warm = driven.fds_warm.unwrap_or_default();
    if fds_end.total > fds_idle.total + 2 || fds_end.other > fds_warm.other + 2 {
        problems.push(format!(
            "daemon descriptors grew: idle {} -> {}, not a worker's {} (under load) -> {}: {:?}",
            fds_idle.total,
            fds_end.total,
            fds_warm.other,
            fds_end.other,
            fd_targets(shared.st().daemon_pid)
        ));
    }

    // A graceful stop; then nothing of the run may be left.
    rt().block_on(async {
        if let Ok(mut c) = Client::connect(&shared.env.socket).await {
            let _ = c.shutdown(true).await;
        }
    });
    let child = shared.st().child.take();
    if let Some(mut child) = child {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !status.is_some_and(|s| s.success()) {
            problems.push(format!(
                "the final graceful shutdown did not exit 0: {status:?}"
            ));
        }
    }
    let left = survivors_after(&shared.env.marker, Duration::from_secs(5));
    let orphans = shared.orphans.load(Ordering::Relaxed) + left.len();
    if !left.is_empty() {
        problems.push(format!("processes left after the shutdown: {left:?}"));
    }

    let kills = std::mem::take(&mut *relock(&shared.kills));
    // Kept with the run's directory, for correlating with the daemon log.
    let _ = std::fs::write(
        dir.join("worker-kills.txt"),
        kills
            .iter()
            .map(|k| format!("{}..{} SIGKILL worker {}\n", k.before_ms, k.after_ms, k.pid))
            .collect::<String>(),
    );
    let (f, record_problems, misattributed) = check_records(
        &cfg,
        &plan,
        &driven.ids,
        &driven.records,
        digest.as_deref(),
        &kills,
    );
    problems.extend(record_problems);
    if !misattributed.is_empty() {
        // The evidence: what the daemon logged about those workers.
        let log = std::fs::read_to_string(&shared.env.log).unwrap_or_default();
        let mut lines = Vec::new();
        for pid in &misattributed {
            let needle = format!("pid={pid}");
            lines.extend(
                log.lines()
                    .map(strip_ansi)
                    .filter(|l| {
                        l.split(|c: char| c.is_whitespace() || c == '}' || c == '{')
                            .any(|w| w == needle || w == format!("worker_{needle}"))
                    })
                    .take(6),
            );
        }
        problems.push(format!(
            "daemon log for the workers of misattributed crashes:\n  {}",
            lines.join("\n  ")
        ));
    }
    let acknowledged = driven.ids.len();
    let terminal = driven.records.len();
    if acknowledged != cfg.jobs || terminal != acknowledged {
        problems.push(format!(
            "acknowledged {acknowledged} of {} jobs, {terminal} terminal",
            cfg.jobs
        ));
    }
    if f.dead != n_poison {
        problems.push(format!("dead {} != poison {n_poison}", f.dead));
    }
    if shared.sigstops.load(Ordering::Relaxed) != 1 {
        problems.push("the worker SIGSTOP did not happen".into());
    }
    let p_hat = if f.normal_attempts > 0 {
        f.hits as f64 / f.normal_attempts as f64
    } else {
        0.0
    };
    let p_dead = p_wrongly_dead(
        f.normal,
        f.failing,
        p_hat,
        cfg.max_attempts,
        cfg.max_crashes,
    );
    let ok = problems.is_empty();
    let line = format!(
        "chaos: acknowledged={acknowledged} terminal={terminal} succeeded={} failed={} \
         (failing={}) dead={} (poison={n_poison}) reruns={} lost={} duplicates={} \
         worker_kills={} kill_hits={} misattributed={} (p={p_hat:.3}, P(chance dead)={p_dead:.0e}) sigstop={}{} \
         daemon_kills={} (mid-submit {}) zombies={} orphans={orphans} fds={}->{} (not a worker's {}->{}) time={:.1}s {}",
        f.succeeded,
        f.failed,
        f.failing,
        f.dead,
        f.reruns,
        f.lost,
        driven.duplicates,
        shared.worker_kills.load(Ordering::Relaxed),
        f.hits,
        f.misattributed,
        shared.sigstops.load(Ordering::Relaxed),
        if shared.sigstop_resumed.load(Ordering::Relaxed) {
            " (resumed)"
        } else {
            ""
        },
        shared.st().kills_done,
        shared.kills_mid_submit.load(Ordering::Relaxed),
        zombies.len(),
        fds_idle.total,
        fds_end.total,
        fds_warm.other,
        fds_end.other,
        started.elapsed().as_secs_f64(),
        if ok { "ok" } else { "FAILED" },
    );
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    }
    ChaosReport {
        line,
        problems,
        dir,
    }
}

#[test]
fn chaos() {
    let full = std::env::var("JOBVISOR_CHAOS_FULL").is_ok_and(|v| v == "1");
    let cfg = if full {
        ChaosConfig::full()
    } else {
        ChaosConfig::short()
    }
    .with_env_overrides();
    let report = run_chaos(cfg);
    println!("{}", report.line);
    assert!(
        report.problems.is_empty(),
        "{}\n{} problem(s); the run's directory (daemon.log, state/jobs.db) is kept: {}\n{}",
        report.line,
        report.problems.len(),
        report.dir.display(),
        report.problems.join("\n")
    );
}
