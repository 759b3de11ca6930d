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

mod cpu;
mod daemon;
mod jobs;
mod report;
mod workloads;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use jobvisor_client::Client;

use crate::cpu::settle;
use crate::daemon::Daemon;
use crate::report::{table, Results};
use crate::workloads::{
    batch_submits, conc_submits, e2e, exec_vs_anchors, fsync_floor, latency, seq_submits,
};

/// Jobs per submit request in the batched workloads.
const BATCH: usize = 1_000;
/// Ids per `Wait` request (what the CLI uses too).
const WAIT_CHUNK: usize = 1_024;
/// Connections of the concurrent-submit workload.
const CONNECTIONS: usize = 64;

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
    // Relative to the workspace root, which is this package's manifest dir.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    root.join(p)
}

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
