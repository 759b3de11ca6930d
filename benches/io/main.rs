//! The I/O benchmark of issue 5, the jobvisor half of `scripts/bench-io`
//! (which runs `scripts/bench_io.py` for aiomultiprocess and
//! `multiprocessing.Pool` against the same server and prints both side by side).
//!
//! `harness = false`. Two modes in one binary:
//!
//! - `--serve [--port N] [--delay-ms MS] [--max-secs S]`: the loopback delay
//!   server. A hand-written HTTP/1.1 server with keep-alive on a current-thread tokio
//!   runtime of its own: read a request head (up to `\r\n\r\n`, at most 8 KiB),
//!   discard a `Content-Length` body, wait `delay` (default 100 ms, or `?ms=N`
//!   in the target), answer `200 OK` with a 3-byte body. `GET /_stats` answers
//!   at once with JSON counters (requests, peak in-flight, CPU time; `?reset`
//!   zeroes the peaks). It prints `URL http://127.0.0.1:PORT/` on stdout when
//!   it listens and exits when its parent process goes away, or after
//!   `--max-secs` (default 3,600).
//! - Otherwise the benchmark, on a pool of `--workers` (default 2) with
//!   `io_concurrency_per_worker` = `--concurrency` (default 500). It uses the
//!   server at `--url URL`, or starts its own (this binary with `--serve`):
//!   - (a) `--n` (default 10,000) `http` GETs, all submitted at once, then all
//!     awaited: wall time, calls/s, and the ratio to the ideal
//!     `n × delay ÷ (workers × concurrency)`;
//!   - (b) `spin` alone: a closed loop of `--spin-in-flight` (default 2 ×
//!     workers) calls of `{"ms": 10}` for `--mix-secs` (default 3 s); `http`
//!     alone: a closed loop of `--io-in-flight` (default 200) GETs, as long;
//!   - (c) both loops at once: each kind's throughput next to its own (b), and
//!     the drop in %. A `spin` call lasts its 10 ms of wall time whatever CPU
//!     it gets, so the rounds of arithmetic it did per second are reported as
//!     well, next to the drop that the CPU the `http` calls need themselves
//!     forces on a machine with no spare core.
//!
//! Each phase also reports CPU per call of the supervisor (this process), the
//! workers (`/proc/PID/stat`) and the server (its `/_stats`), the connections
//! the server accepted, and the CPU other processes used meanwhile.
//!
//! Every figure is printed as a `RESULT <key> <value>` line next to the human
//! text. `--quick` divides the counts by 10 and shortens the loops to 1 s.
//! Unknown arguments (cargo's `--bench`) are ignored. `RUST_LOG` turns on the
//! pool's tracing (to stderr).
//!
//! The process raises its `RLIMIT_NOFILE` soft limit to the hard limit first
//! thing (before the fork server, whose workers inherit it): 1,000 keep-alive
//! connections need 1,000 descriptors on each side.

mod client;
mod cpu;
mod server;
mod workloads;

use std::io;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use jobvisor_pool::{bootstrap, Bootstrap, Pool};

use crate::client::{server_stats, stat_u64, ServerChild};
use crate::workloads::{burst, mixed};

/// argv[1] that turns this binary into the delay server.
const SERVE_ARG: &str = "--serve";

fn result(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key} {value}");
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the new soft limit.
fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into a valid, local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: setrlimit reads a valid, local struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// The value after `flag` in `args`, parsed.
fn flag_value<T: std::str::FromStr>(args: &[String], flag: &str) -> Result<Option<T>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => {
            let v = args
                .get(i + 1)
                .ok_or_else(|| anyhow!("{flag} needs a value"))?;
            v.parse()
                .map(Some)
                .map_err(|_| anyhow!("{flag}: cannot parse '{v}'"))
        }
    }
}

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Params {
    quick: bool,
    workers: usize,
    /// `io_concurrency_per_worker`.
    concurrency: usize,
    /// GETs of (a).
    n: u64,
    /// The server's delay: `--delay-ms` for a server this bench starts; the
    /// server's own (from `/_stats`) with `--url`.
    delay_ms: u64,
    url: Option<String>,
    /// Length of each closed loop of (b) and (c).
    mix: Duration,
    spin_ms: u64,
    spin_in_flight: usize,
    io_in_flight: usize,
    /// Workloads to run (letters a–c); all by default.
    only: String,
}

impl Params {
    fn from_args(args: &[String]) -> Result<Self> {
        let quick = args.iter().any(|a| a == "--quick");
        let scale = if quick { 10 } else { 1 };
        let workers = flag_value(args, "--workers")?.unwrap_or(2).max(1);
        Ok(Self {
            quick,
            workers,
            concurrency: flag_value(args, "--concurrency")?.unwrap_or(500).max(1),
            n: flag_value(args, "--n")?.unwrap_or(10_000 / scale),
            delay_ms: flag_value(args, "--delay-ms")?.unwrap_or(100),
            url: flag_value(args, "--url")?,
            mix: Duration::from_secs_f64(flag_value(args, "--mix-secs")?.unwrap_or(if quick {
                1.0
            } else {
                3.0
            })),
            spin_ms: flag_value(args, "--spin-ms")?.unwrap_or(10),
            spin_in_flight: flag_value(args, "--spin-in-flight")?.unwrap_or(2 * workers),
            io_in_flight: flag_value(args, "--io-in-flight")?.unwrap_or(200),
            only: flag_value(args, "--only")?.unwrap_or_default(),
        })
    }

    fn runs(&self, workload: char) -> bool {
        self.only.is_empty() || self.only.contains(workload)
    }
}

async fn run(mut p: Params, url: String) -> Result<()> {
    let stats = server_stats(&url, true)
        .await
        .with_context(|| format!("asking {url} for /_stats"))?;
    p.delay_ms = stat_u64(&stats, "delay_ms");
    println!(
        "jobvisor I/O benchmark: {} workers × io_concurrency_per_worker {}, quick={}, n={}, \
         server {url} (delay {} ms)",
        p.workers, p.concurrency, p.quick, p.n, p.delay_ms
    );
    result("workers", p.workers);
    result("concurrency_per_worker", p.concurrency);
    result("delay_ms", p.delay_ms);
    result("quick", u8::from(p.quick));
    let pool = Pool::builder()
        .workers(p.workers)
        .io_concurrency_per_worker(p.concurrency)
        .build()
        .await
        .context("starting the pool")?;
    if p.runs('a') {
        burst(&pool, &p, &url).await?;
    }
    if p.runs('b') || p.runs('c') {
        mixed(&pool, &p, &url).await?;
    }
    pool.shutdown().await;
    Ok(())
}

fn bench(args: &[String]) -> Result<()> {
    let p = Params::from_args(args)?;
    let (_server, url) = match &p.url {
        Some(url) => (None, url.clone()),
        None => {
            let (s, url) = ServerChild::start(p.delay_ms)?;
            (Some(s), url)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    let t = Instant::now();
    rt.block_on(run(p, url))?;
    println!("total {:.1} s", t.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    // First, while single-threaded: the fork server and its workers inherit it.
    let nofile = raise_nofile_limit();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(SERVE_ARG) {
        return match server::main(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("delay server: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match bootstrap(jobvisor_tasks::builtin()) {
        Ok(Bootstrap::Worker(code)) => return code,
        Ok(Bootstrap::Supervisor) => {}
        Err(e) => {
            eprintln!("io bench: bootstrap: {e}");
            return ExitCode::FAILURE;
        }
    }
    match nofile {
        Ok(n) if n < 4096 => eprintln!("io bench: RLIMIT_NOFILE is only {n}; GETs may fail"),
        Ok(_) => {}
        Err(e) => eprintln!("io bench: raising RLIMIT_NOFILE: {e}"),
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("io bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
