//! Benchmarks of the jobvisor daemon, run by `scripts/bench-daemon`.
//!
//! `harness = false`. Starts the `jobvisor` binary as a daemon with a
//! temporary `--state-dir` and config (limits.max_queued_jobs raised to
//! 1,000,000, pruning pushed out of the way), waits for it with
//! `jobvisor ping --wait 20s`, drives it with the Rust client over its control
//! socket, and stops it at the end (killed if it does not stop in time):
//!
//! - `seq`: durable submits, one `noop` job per request, sequential, one connection;
//! - `batch`: durable submits in requests of 1,000 jobs (100,000 jobs), then
//!   the time until all of them have finished (end to end at that size);
//! - `conc`: durable submits, one job per request, from 64 connections at once
//!   (what group commit exploits);
//! - `lat`: submit → completion of one no-op job, sequential (p50/p99), split
//!   into the submit acknowledgement and the wait;
//! - `exec`: 10,000 `exec true` jobs (submitted in batches of 1,000, then
//!   waited for), next to `seq N | xargs -P W -n 1 true` and
//!   `seq N | parallel -j W true` (GNU parallel) on the same machine;
//! - `e2e`: 10,000 no-op jobs, batch submit → every result stored;
//! - `fsync`: the disk's floor: 4 KiB write + fdatasync in the temp dir (p50).
//!
//! Every submitted job is waited for (and checked to have succeeded) before
//! the next workload starts, so workloads do not overlap. Each workload also
//! prints where the CPU time went: the daemon's store thread, its runtime
//! threads, the worker processes (with the commands they ran), and this client.
//!
//! Every figure is printed as a machine-readable `RESULT <key> <value>` line;
//! the table at the end shows medians over `--repeat` runs (with min–max). A
//! measurement during which other processes used more than 15% of its wall
//! time in CPU (from /proc/stat, minus the daemon, its workers, this bench and
//! its children) is marked `disturbed` and left out of the medians when an
//! undisturbed run of it exists: this is a 2-core machine with no spare core.
//!
//! Arguments (unknown ones, like cargo's `--bench`, are ignored):
//! `--bin PATH` the jobvisor binary (default: the one cargo built next to this
//! bench); `--quick` scales every count down 10× and runs once; `--workers N`
//! (default: available cores); `--repeat K` (default 3, 1 with `--quick`);
//! `--only a,b` runs a subset of the workloads named above; `--socket PATH`
//! uses a daemon that is already running instead of starting one;
//! `--wait-idle` waits (up to 5 min) before each run until the machine is idle.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobvisor_client::{Client, JobRecord, JobSpec, JobState, Payload};

/// Jobs per submit request in the batched workloads.
const BATCH: usize = 1_000;
/// Ids per `Wait` request (what the CLI uses too).
const WAIT_CHUNK: usize = 1_024;
/// Connections of the concurrent-submit workload.
const CONNECTIONS: usize = 64;
/// How long the daemon gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

// ---- parameters -----------------------------------------------------------

#[derive(Debug, Clone)]
struct Params {
    bin: PathBuf,
    socket: Option<PathBuf>,
    quick: bool,
    workers: usize,
    repeat: usize,
    only: Vec<String>,
    wait_idle: bool,
    seq_submits: usize,
    batch_jobs: usize,
    conc_jobs: usize,
    lat_jobs: usize,
    exec_jobs: usize,
    e2e_jobs: usize,
    fsyncs: usize,
}

impl Params {
    fn from_args() -> Result<Self> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut bin = None;
        let mut socket = None;
        let mut quick = false;
        let mut workers = None;
        let mut repeat = None;
        let mut only = Vec::new();
        let mut wait_idle = false;
        let mut i = 0;
        while i < args.len() {
            let value = args.get(i + 1).cloned();
            let mut took = true;
            match (args[i].as_str(), value) {
                ("--bin", Some(v)) => bin = Some(PathBuf::from(v)),
                ("--socket", Some(v)) => socket = Some(PathBuf::from(v)),
                ("--workers", Some(v)) => {
                    workers = Some(v.parse::<usize>().context("--workers takes a number")?)
                }
                ("--repeat", Some(v)) => {
                    repeat = Some(v.parse::<usize>().context("--repeat takes a number")?)
                }
                ("--only", Some(v)) => {
                    only = v.split(',').map(|s| s.trim().to_string()).collect();
                }
                ("--quick", _) => {
                    quick = true;
                    took = false;
                }
                ("--wait-idle", _) => {
                    wait_idle = true;
                    took = false;
                }
                // cargo passes `--bench`; anything else is not ours either.
                _ => took = false,
            }
            i += if took { 2 } else { 1 };
        }
        let bin = match bin {
            Some(b) => resolve(b),
            None => PathBuf::from(env!("CARGO_BIN_EXE_jobvisor")),
        };
        let workers = workers
            .filter(|&w| w > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let repeat = repeat.unwrap_or(if quick { 1 } else { 3 }).max(1);
        let s = if quick { 10 } else { 1 };
        Ok(Self {
            bin,
            socket,
            quick,
            workers,
            repeat,
            only,
            wait_idle,
            seq_submits: 2_000 / s,
            batch_jobs: 100_000 / s,
            conc_jobs: 20_000 / s,
            lat_jobs: 1_000 / s,
            exec_jobs: 10_000 / s,
            e2e_jobs: 10_000 / s,
            fsyncs: 500 / s,
        })
    }

    fn runs(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }
}

/// A relative `--bin` is taken against the current directory, else against
/// the workspace root (cargo runs benches from the package directory).
fn resolve(p: PathBuf) -> PathBuf {
    if p.is_absolute() || p.exists() {
        return p;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.join(p)
}

// ---- the daemon -------------------------------------------------------------

#[derive(Debug)]
struct Daemon {
    child: Option<Child>,
    pid: u32,
    socket: PathBuf,
    log: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    fn start(p: &Params) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("jobvisor-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        let state = dir.path().join("state");
        let socket = state.join("control.sock");
        let config = dir.path().join("jobvisor.toml");
        // Everything else at its default. The queue limit is raised so that the
        // 100,000-job batch fits; pruning is kept out of the measurements.
        std::fs::write(
            &config,
            "[limits]\nmax_queued_jobs = 1000000\n\n\
             [retention]\nmax_jobs = 100000000\nprune_interval_secs = 86400\n",
        )?;
        let log = dir.path().join("daemon.log");
        let child = Command::new(&p.bin)
            .arg("--socket")
            .arg(&socket)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("--workers")
            .arg(p.workers.to_string())
            .env("JOBVISOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", p.bin.display()))?;
        let pid = child.id();
        let d = Self {
            child: Some(child),
            pid,
            socket,
            log: Some(log),
            dir: Some(dir),
        };
        let t = Instant::now();
        let ready = Command::new(&p.bin)
            .arg("--socket")
            .arg(&d.socket)
            .args(["ping", "--wait", "20s"])
            .stdout(Stdio::null())
            .status()?;
        if !ready.success() {
            bail!(
                "the daemon did not answer within 20 s ({ready}); its log:\n{}",
                d.log_tail()
            );
        }
        eprintln!(
            "daemon pid {pid} ready in {:.0} ms (state dir {})",
            t.elapsed().as_secs_f64() * 1e3,
            d.dir
                .as_ref()
                .map_or(Path::new("?"), |d| d.path())
                .display()
        );
        Ok(d)
    }

    /// A daemon someone else started.
    async fn attach(socket: PathBuf) -> Result<Self> {
        let mut c = Client::connect(&socket).await?;
        let pid = c.ping().await?;
        Ok(Self {
            child: None,
            pid,
            socket,
            log: None,
            dir: None,
        })
    }

    fn scratch_dir(&self) -> PathBuf {
        match &self.dir {
            Some(d) => d.path().to_path_buf(),
            None => std::env::temp_dir(),
        }
    }

    fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Asks the daemon to stop now; kills it if it has not exited in time.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut c) = Client::connect(&self.socket).await {
            let _ = c.shutdown(false).await;
        }
        let t = Instant::now();
        while t.elapsed() < STOP_GRACE {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("daemon stopped ({status})");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("daemon did not stop within {STOP_GRACE:?}: killed");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---- CPU accounting -----------------------------------------------------------

/// Clock ticks of a `/proc/.../stat` file: (utime + stime, cutime + cstime).
fn stat_ticks(path: &Path) -> Option<(u64, u64)> {
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

fn comm_of(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn tick_secs(t: u64) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    t as f64 / hz as f64
}

/// CPU time of the daemon (per thread kind), its workers and this process.
#[derive(Debug, Clone, Default)]
struct Cpu {
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
    async fn take(d: &Daemon) -> Self {
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
    fn others(&self, before: &Cpu) -> f64 {
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
    fn since(&self, before: &Cpu, wall: Duration) -> String {
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
fn context_switches(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ctxt_switches:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// Busy clock ticks of the whole machine since boot (all but idle and iowait).
fn machine_busy_ticks() -> u64 {
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
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the struct we hand it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

// ---- helpers ----------------------------------------------------------------------

fn noop(i: usize) -> JobSpec {
    JobSpec::new("noop", Payload::Json(i.to_string()))
}

fn exec_true() -> JobSpec {
    JobSpec::new("exec", Payload::Json(r#"{"argv":["true"]}"#.into()))
}

/// Waits (in chunks, over one connection) until every job is terminal; fails
/// unless all succeeded (and, for `exec`, exited 0). Returns the latest
/// `finished_ms` (unix ms) among them: when the daemon ended the last one.
async fn wait_all(c: &mut Client, ids: &[u64]) -> Result<u64> {
    let mut last = 0;
    for chunk in ids.chunks(WAIT_CHUNK) {
        let recs = c.wait(chunk.to_vec(), None).await?;
        for r in &recs {
            check(r)?;
            last = last.max(r.finished_ms.unwrap_or(0));
        }
    }
    Ok(last)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "the last job ended X s after the first submit", from the records.
fn last_ended(t0_unix_ms: u64, last_finished_ms: u64) -> Duration {
    Duration::from_millis(last_finished_ms.saturating_sub(t0_unix_ms))
}

fn check(r: &JobRecord) -> Result<()> {
    if r.state != JobState::Succeeded {
        bail!(
            "job {} ({}) ended {}: {}",
            r.id,
            r.task,
            r.state.as_str(),
            r.error.as_deref().unwrap_or("")
        );
    }
    if r.task == "exec" {
        let Some(Payload::Json(out)) = &r.output else {
            bail!("exec job {} has no JSON output", r.id);
        };
        let v: serde_json::Value = serde_json::from_str(out)?;
        if v["code"] != 0 {
            bail!("exec job {}: {out}", r.id);
        }
    }
    Ok(())
}

async fn submit_batched(c: &mut Client, specs: Vec<JobSpec>) -> Result<Vec<u64>> {
    let mut ids = Vec::with_capacity(specs.len());
    let mut it = specs.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<JobSpec> = it.by_ref().take(BATCH).collect();
        ids.extend(c.submit(batch).await?.into_iter().map(|s| s.id));
    }
    Ok(ids)
}

fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Figures of all runs, by key, each marked when other load on the machine
/// disturbed its measurement.
#[derive(Debug, Default)]
struct Results {
    values: BTreeMap<&'static str, Vec<(f64, bool)>>,
    /// Applies to the figures added next (see [`Results::mark`]).
    disturbed: bool,
}

impl Results {
    /// Marks the figures added from now on as disturbed (or not), from the CPU
    /// that other processes used during the measurement.
    fn mark(&mut self, before: &Cpu, after: &Cpu, wall: Duration) {
        let others = after.others(before);
        self.disturbed = others > (0.15 * wall.as_secs_f64()).max(0.05);
        if self.disturbed {
            println!(
                "  DISTURBED: other load used {others:.2} CPU s during this {:.2} s measurement; \
                 left out of the medians when an undisturbed run exists",
                wall.as_secs_f64()
            );
        }
    }
    fn add(&mut self, key: &'static str, v: f64) {
        let tag = if self.disturbed { " disturbed" } else { "" };
        println!("RESULT {key} {v:.4}{tag}");
        self.values
            .entry(key)
            .or_default()
            .push((v, self.disturbed));
    }
    /// The figures the table uses: the undisturbed ones when there are any.
    fn used(&self, key: &str) -> Option<(Vec<f64>, usize)> {
        let all = self.values.get(key)?;
        let clean: Vec<f64> = all.iter().filter(|x| !x.1).map(|x| x.0).collect();
        if clean.is_empty() {
            Some((all.iter().map(|x| x.0).collect(), 0))
        } else {
            let left_out = all.len() - clean.len();
            Some((clean, left_out))
        }
    }
    fn median(&self, key: &str) -> Option<f64> {
        let (mut v, _) = self.used(key)?;
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
    fn spread(&self, key: &str) -> Option<(f64, f64)> {
        let (v, _) = self.used(key)?;
        if v.len() < 2 {
            return None;
        }
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some((lo, hi))
    }
    /// A note on the runs behind a median: left out, or all disturbed.
    fn note(&self, key: &str) -> String {
        let Some(all) = self.values.get(key) else {
            return String::new();
        };
        let bad = all.iter().filter(|x| x.1).count();
        match bad {
            0 => String::new(),
            b if b == all.len() => " [every run disturbed]".into(),
            b => format!(" [{b} disturbed run(s) left out]"),
        }
    }
}

// ---- workloads ----------------------------------------------------------------------

async fn seq_submits(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.seq_submits;
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let mut lat = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let s = c.submit(vec![noop(i)]).await?;
        lat.push(t.elapsed());
        ids.push(s[0].id);
    }
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    wait_all(&mut c, &ids).await?;
    let what = format!("{n} submits of 1 job, sequential, one connection");
    let keys = ("seq", "seq_submits_per_s", "seq_ack_p50_ms");
    report_submits(keys, &what, n, el, lat, (&before, &after), r);
    Ok(())
}

/// Prints and records a run of single-job submits: rate and ack latency.
fn report_submits(
    (key, rate_key, p50_key): (&str, &'static str, &'static str),
    what: &str,
    n: usize,
    el: Duration,
    mut lat: Vec<Duration>,
    (before, after): (&Cpu, &Cpu),
    r: &mut Results,
) {
    lat.sort();
    println!(
        "{key}: {what}: {:.2} s, {:.0} jobs/s; ack p50 {:.3} ms p99 {:.3} ms",
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
    );
    println!("  {}", after.since(before, el));
    r.mark(before, after, el);
    r.add(rate_key, n as f64 / el.as_secs_f64());
    r.add(p50_key, ms(pct(&lat, 0.5)));
}

async fn batch_submits(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.batch_jobs;
    let specs: Vec<JobSpec> = (0..n).map(noop).collect();
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let t0_unix = unix_ms();
    let t0 = Instant::now();
    let ids = submit_batched(&mut c, specs).await?;
    let el = t0.elapsed();
    let mid = Cpu::take(d).await;
    let last = last_ended(t0_unix, wait_all(&mut c, &ids).await?);
    let all = t0.elapsed();
    let after = Cpu::take(d).await;
    println!(
        "batch: {n} jobs in requests of {BATCH}: accepted in {:.2} s, {:.0} jobs/s; all finished after {:.2} s, {:.0} jobs/s end to end",
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64(),
        all.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
    );
    println!(
        "  the daemon ended the last job {:.2} s after the first submit ({:.0} jobs/s); the waits returned {:.2} s later",
        last.as_secs_f64(),
        n as f64 / last.as_secs_f64().max(1e-3),
        (all.saturating_sub(last)).as_secs_f64()
    );
    println!("  submitting: {}", mid.since(&before, el));
    println!("  whole:      {}", after.since(&before, all));
    r.mark(&before, &mid, el);
    r.add("batch_submits_per_s", n as f64 / el.as_secs_f64());
    r.mark(&before, &after, all);
    r.add("batch_e2e_per_s", n as f64 / all.as_secs_f64());
    Ok(())
}

async fn conc_submits(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.conc_jobs;
    let per = n / CONNECTIONS;
    let n = per * CONNECTIONS;
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(&d.socket).await?);
    }
    let before = Cpu::take(d).await;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        set.spawn(async move {
            let mut ids = Vec::with_capacity(per);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                let s = c.submit(vec![noop(k * per + i)]).await?;
                lat.push(t.elapsed());
                ids.push(s[0].id);
            }
            Ok::<_, anyhow::Error>((ids, lat))
        });
    }
    let mut ids = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    while let Some(res) = set.join_next().await {
        let (i, l) = res??;
        ids.extend(i);
        lat.extend(l);
    }
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    let mut c = Client::connect(&d.socket).await?;
    wait_all(&mut c, &ids).await?;
    let what = format!("{n} submits of 1 job from {CONNECTIONS} connections");
    let keys = ("conc", "conc_submits_per_s", "conc_ack_p50_ms");
    report_submits(keys, &what, n, el, lat, (&before, &after), r);
    Ok(())
}

async fn latency(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.lat_jobs;
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let mut total = Vec::with_capacity(n);
    let mut submit = Vec::with_capacity(n);
    let mut wait = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let id = c.submit(vec![noop(i)]).await?[0].id;
        let acked = t.elapsed();
        let recs = c.wait(vec![id], None).await?;
        let done = t.elapsed();
        check(&recs[0])?;
        total.push(done);
        submit.push(acked);
        wait.push(done - acked);
    }
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    total.sort();
    submit.sort();
    wait.sort();
    println!(
        "lat: {n} no-op jobs, submit then wait, sequential: p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms \
         (submit ack p50 {:.3} ms p99 {:.3} ms; wait p50 {:.3} ms p99 {:.3} ms)",
        ms(pct(&total, 0.5)),
        ms(pct(&total, 0.99)),
        ms(el) / n as f64,
        ms(pct(&submit, 0.5)),
        ms(pct(&submit, 0.99)),
        ms(pct(&wait, 0.5)),
        ms(pct(&wait, 0.99)),
    );
    println!("  {}", after.since(&before, el));
    r.mark(&before, &after, el);
    r.add("lat_p50_ms", ms(pct(&total, 0.5)));
    r.add("lat_p99_ms", ms(pct(&total, 0.99)));
    r.add("lat_submit_p50_ms", ms(pct(&submit, 0.5)));
    r.add("lat_wait_p50_ms", ms(pct(&wait, 0.5)));
    Ok(())
}

/// Submits `specs` in batches, waits for all; returns the wall time and how
/// long a second `Wait` for all of them (all finished by then) took.
async fn run_all(
    d: &Daemon,
    specs: Vec<JobSpec>,
    label: &str,
    r: &mut Results,
) -> Result<(Duration, Duration)> {
    let n = specs.len();
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let t0_unix = unix_ms();
    let t0 = Instant::now();
    let ids = submit_batched(&mut c, specs).await?;
    let sub = t0.elapsed();
    let last = last_ended(t0_unix, wait_all(&mut c, &ids).await?);
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    println!(
        "{label}: {n} jobs: submitted in {:.2} s, all finished after {:.2} s: {:.0} jobs/s",
        sub.as_secs_f64(),
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64()
    );
    println!(
        "  the daemon ended the last job {:.2} s after the first submit ({:.0} jobs/s); the waits returned {:.2} s later",
        last.as_secs_f64(),
        n as f64 / last.as_secs_f64().max(1e-3),
        (el.saturating_sub(last)).as_secs_f64()
    );
    println!("  {}", after.since(&before, el));
    r.mark(&before, &after, el);
    // The cost of answering waits alone: every job is finished now.
    let t = Instant::now();
    wait_all(&mut c, &ids).await?;
    let rewait = t.elapsed();
    println!(
        "  waiting again for the {n} finished jobs ({} requests of at most {WAIT_CHUNK} ids): {:.3} s",
        n.div_ceil(WAIT_CHUNK),
        rewait.as_secs_f64()
    );
    Ok((el, rewait))
}

/// Runs a shell pipeline; its wall time, or None when `needs` is missing.
fn anchor(script: &str, needs: &str) -> Result<Option<Duration>> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {needs}"))
        .stdout(Stdio::null())
        .status()?
        .success();
    if !found {
        println!("anchor: {needs} is not installed; skipped");
        return Ok(None);
    }
    let kids = children_cpu();
    let t0 = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let el = t0.elapsed();
    if !out.status.success() {
        bail!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "anchor: `{script}`: {:.2} s, cpu {:.2} s",
        el.as_secs_f64(),
        children_cpu() - kids
    );
    Ok(Some(el))
}

async fn exec_vs_anchors(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.exec_jobs;
    let w = p.workers;
    let (el, _) = run_all(d, (0..n).map(|_| exec_true()).collect(), "exec true", r).await?;
    r.add("exec_jobvisor_per_s", n as f64 / el.as_secs_f64());
    let before = Cpu::take(d).await;
    if let Some(el) = anchor(&format!("seq {n} | xargs -P {w} -n 1 true"), "xargs")? {
        r.mark(&before, &Cpu::take(d).await, el);
        r.add("exec_xargs_per_s", n as f64 / el.as_secs_f64());
    }
    let before = Cpu::take(d).await;
    if let Some(el) = anchor(&format!("seq {n} | parallel -j {w} true"), "parallel")? {
        r.mark(&before, &Cpu::take(d).await, el);
        r.add("exec_parallel_per_s", n as f64 / el.as_secs_f64());
    }
    Ok(())
}

async fn e2e(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.e2e_jobs;
    let (el, rewait) = run_all(d, (0..n).map(noop).collect(), "e2e no-op", r).await?;
    r.add("e2e_per_s", n as f64 / el.as_secs_f64());
    r.add("e2e_rewait_s", rewait.as_secs_f64());
    Ok(())
}

/// The disk's floor: 4 KiB written (in place, then appended) and fdatasync'd.
fn fsync_floor(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let path = d.scratch_dir().join("fsync-probe");
    let f = File::create(&path)?;
    let buf = vec![7u8; 4096];
    let mut inplace = Vec::with_capacity(p.fsyncs);
    let mut append = Vec::with_capacity(p.fsyncs);
    f.write_all_at(&buf, 0)?;
    f.sync_all()?;
    for i in 0..p.fsyncs {
        let t = Instant::now();
        f.write_all_at(&buf, 0)?;
        f.sync_data()?;
        inplace.push(t.elapsed());
        let t = Instant::now();
        f.write_all_at(&buf, 4096 * (i as u64 + 1))?;
        f.sync_data()?;
        append.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    inplace.sort();
    append.sort();
    println!(
        "fsync: 4 KiB write + fdatasync in {}: in place p50 {:.3} ms p99 {:.3} ms; appending p50 {:.3} ms p99 {:.3} ms",
        d.scratch_dir().display(),
        ms(pct(&inplace, 0.5)),
        ms(pct(&inplace, 0.99)),
        ms(pct(&append, 0.5)),
        ms(pct(&append, 0.99)),
    );
    r.disturbed = false;
    r.add("fsync_inplace_p50_ms", ms(pct(&inplace, 0.5)));
    r.add("fsync_append_p50_ms", ms(pct(&append, 0.5)));
    Ok(())
}

// ---- the table --------------------------------------------------------------------------

fn fmt_num(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn table(p: &Params, r: &Results) -> String {
    let rate = |k: &str| -> String {
        let note = r.note(k);
        match (r.median(k), r.spread(k)) {
            (Some(m), Some((lo, hi))) => {
                format!("{}/s ({}–{}){note}", fmt_num(m), fmt_num(lo), fmt_num(hi))
            }
            (Some(m), None) => format!("{}/s{note}", fmt_num(m)),
            _ => "n/a".into(),
        }
    };
    let millis = |k: &str| -> String {
        let note = r.note(k);
        match (r.median(k), r.spread(k)) {
            (Some(m), Some((lo, hi))) => format!("{m:.3} ms ({lo:.3}–{hi:.3}){note}"),
            (Some(m), None) => format!("{m:.3} ms{note}"),
            _ => "n/a".into(),
        }
    };
    let met = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "n/a",
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let fr = |x: Option<f64>| x.map_or("—".to_string(), |x| format!("{x:.2}×"));
    let m = |k: &str| r.median(k);
    let fsync_floor = match (m("fsync_inplace_p50_ms"), m("fsync_append_p50_ms")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut rows: Vec<[String; 6]> = Vec::new();
    let w = p.workers;
    rows.push([
        format!(
            "durable submits, 1 job/request, sequential, 1 connection ({} requests)",
            fmt_num(p.seq_submits as f64)
        ),
        rate("seq_submits_per_s"),
        fsync_floor.map_or("n/a".into(), |f| {
            format!("{}/s (1 / fsync p50)", fmt_num(1e3 / f))
        }),
        fr(ratio(m("seq_submits_per_s"), fsync_floor.map(|f| 1e3 / f))),
        "—".into(),
        "—".into(),
    ]);
    let batch = m("batch_submits_per_s");
    rows.push([
        format!(
            "durable submits, batches of {} ({} jobs)",
            fmt_num(BATCH as f64),
            fmt_num(p.batch_jobs as f64)
        ),
        rate("batch_submits_per_s"),
        "—".into(),
        "—".into(),
        "≥ 100,000/s".into(),
        met(batch.map(|b| b >= 100_000.0)).into(),
    ]);
    rows.push([
        format!(
            "durable submits, 1 job/request, {CONNECTIONS} connections ({} jobs)",
            fmt_num(p.conc_jobs as f64)
        ),
        rate("conc_submits_per_s"),
        "—".into(),
        "—".into(),
        "—".into(),
        "—".into(),
    ]);
    let lat = m("lat_p50_ms");
    rows.push([
        format!(
            "no-op job submit → completion, p50 ({} sequential jobs, fsync included)",
            fmt_num(p.lat_jobs as f64)
        ),
        millis("lat_p50_ms"),
        fsync_floor.map_or("n/a".into(), |f| format!("{f:.3} ms (one fsync, p50)")),
        fr(ratio(lat, fsync_floor)),
        "≤ 1 ms".into(),
        met(lat.map(|l| l <= 1.0)).into(),
    ]);
    rows.push([
        "no-op job submit → completion, p99".into(),
        millis("lat_p99_ms"),
        "—".into(),
        "—".into(),
        "—".into(),
        "—".into(),
    ]);
    let ex = m("exec_jobvisor_per_s");
    let xr = ratio(ex, m("exec_xargs_per_s"));
    rows.push([
        format!(
            "`exec true` × {} vs `xargs -P {w}`",
            fmt_num(p.exec_jobs as f64)
        ),
        rate("exec_jobvisor_per_s"),
        rate("exec_xargs_per_s"),
        fr(xr),
        "≥ 0.8× (within 20%)".into(),
        met(xr.map(|x| x >= 0.8)).into(),
    ]);
    let pr = ratio(ex, m("exec_parallel_per_s"));
    rows.push([
        format!(
            "`exec true` × {} vs GNU `parallel -j {w}`",
            fmt_num(p.exec_jobs as f64)
        ),
        rate("exec_jobvisor_per_s"),
        rate("exec_parallel_per_s"),
        fr(pr),
        "≥ 2×".into(),
        met(pr.map(|x| x >= 2.0)).into(),
    ]);
    let e = m("e2e_per_s");
    rows.push([
        format!(
            "no-op jobs end to end, batch submit → all results stored ({} jobs)",
            fmt_num(p.e2e_jobs as f64)
        ),
        rate("e2e_per_s"),
        "—".into(),
        "—".into(),
        "≥ 20,000/s".into(),
        met(e.map(|e| e >= 20_000.0)).into(),
    ]);
    rows.push([
        format!(
            "no-op jobs end to end at {} jobs (the batch above)",
            fmt_num(p.batch_jobs as f64)
        ),
        rate("batch_e2e_per_s"),
        "—".into(),
        "—".into(),
        "(≥ 20,000/s)".into(),
        met(m("batch_e2e_per_s").map(|e| e >= 20_000.0)).into(),
    ]);
    let mut out = String::new();
    out.push_str("| workload | jobvisor | anchor | ratio | target | met? |\n");
    out.push_str("|---|---|---|---|---|---|\n");
    for row in rows {
        if row[1] == "n/a" && row[2] == "—" {
            continue;
        }
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

// ---- main ----------------------------------------------------------------------------------

async fn run(p: &Params) -> Result<Results> {
    let mut d = match &p.socket {
        Some(s) => Daemon::attach(s.clone()).await?,
        None => Daemon::start(p)?,
    };
    let res = run_with(p, &d).await;
    if let Ok(mut c) = Client::connect(&d.socket).await {
        if let Ok(s) = c.stats().await {
            println!("daemon stats: {s:?}");
        }
    }
    if res.is_err() {
        eprintln!("daemon log (tail):\n{}", d.log_tail());
    }
    d.stop().await;
    res
}

/// Busy % of the whole machine over `over` (from /proc/stat).
fn busy_pct(over: Duration) -> u64 {
    fn sample() -> Vec<u64> {
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
fn settle(p: &Params, what: &str) {
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

async fn run_with(p: &Params, d: &Daemon) -> Result<Results> {
    let mut r = Results::default();
    for k in 1..=p.repeat {
        println!("== run {k}/{}", p.repeat);
        settle(p, &format!("before run {k}"));
        if p.runs("fsync") {
            fsync_floor(p, d, &mut r)?;
        }
        if p.runs("seq") {
            seq_submits(p, d, &mut r).await.context("seq")?;
        }
        if p.runs("batch") {
            batch_submits(p, d, &mut r).await.context("batch")?;
        }
        if p.runs("conc") {
            conc_submits(p, d, &mut r).await.context("conc")?;
        }
        if p.runs("lat") {
            latency(p, d, &mut r).await.context("lat")?;
        }
        if p.runs("exec") {
            exec_vs_anchors(p, d, &mut r).await.context("exec")?;
        }
        if p.runs("e2e") {
            e2e(p, d, &mut r).await.context("e2e")?;
        }
    }
    Ok(r)
}

fn main() -> ExitCode {
    let p = match Params::from_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("bench daemon: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!(
        "jobvisor daemon bench: binary {}, {} workers, {} run(s){}",
        p.bin.display(),
        p.workers,
        p.repeat,
        if p.quick {
            ", quick (10× smaller)"
        } else {
            ""
        }
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench daemon: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(&p)) {
        Ok(r) => {
            println!();
            print!("{}", table(&p, &r));
            let _ = std::io::stdout().flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench daemon: {e:#}");
            ExitCode::FAILURE
        }
    }
}
