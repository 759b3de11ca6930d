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

use std::io::{self, BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use jobvisor_pool::{bootstrap, Bootstrap, Pool};
use jobvisor_tasks::{Http, HttpInput, Spin, SpinInput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

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

// ---- the delay server ---------------------------------------------------------

mod server {
    //! The loopback delay server: minimal HTTP/1.1, keep-alive, one
    //! current-thread runtime.

    use super::*;

    /// Largest request head (request line and headers) read; larger ones get 431.
    const MAX_HEAD_BYTES: usize = 8 * 1024;
    /// Largest request body accepted (and discarded); larger ones get 413.
    const MAX_BODY_BYTES: u64 = 1024 * 1024;
    /// Pending connections the kernel queues before `accept` (capped by
    /// `net.core.somaxconn`): a thousand clients connect at once.
    const LISTEN_BACKLOG: u32 = 4096;
    const BODY: &[u8] = b"ok\n";

    /// Counters shared by the connections (atomics: the runtime is
    /// current-thread, but `tokio::spawn` wants `Send`).
    #[derive(Debug, Default)]
    struct Stats {
        delay_ms: u64,
        requests: AtomicU64,
        in_flight: AtomicU64,
        peak_in_flight: AtomicU64,
        connections: AtomicU64,
        peak_connections: AtomicU64,
        accepted: AtomicU64,
    }

    impl Stats {
        fn enter(now: &AtomicU64, peak: &AtomicU64) {
            let n = now.fetch_add(1, Ordering::Relaxed) + 1;
            peak.fetch_max(n, Ordering::Relaxed);
        }

        fn leave(now: &AtomicU64) {
            now.fetch_sub(1, Ordering::Relaxed);
        }

        fn json(&self, reset: bool) -> String {
            let cpu = cpu_of_self();
            let take = |peak: &AtomicU64, now: &AtomicU64| {
                if reset {
                    peak.swap(now.load(Ordering::Relaxed), Ordering::Relaxed)
                } else {
                    peak.load(Ordering::Relaxed)
                }
            };
            format!(
                r#"{{"delay_ms":{},"requests":{},"in_flight":{},"peak_in_flight":{},"connections":{},"peak_connections":{},"accepted":{},"cpu_us":{}}}"#,
                self.delay_ms,
                self.requests.load(Ordering::Relaxed),
                self.in_flight.load(Ordering::Relaxed),
                take(&self.peak_in_flight, &self.in_flight),
                self.connections.load(Ordering::Relaxed),
                take(&self.peak_connections, &self.connections),
                self.accepted.load(Ordering::Relaxed),
                cpu.as_micros(),
            )
        }
    }

    /// User + system CPU time of this process.
    fn cpu_of_self() -> Duration {
        // SAFETY: rusage is plain data; getrusage fills the local struct.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a local struct.
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
            return Duration::ZERO;
        }
        let tv = |t: libc::timeval| {
            Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
        };
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    /// One parsed request head.
    #[derive(Debug)]
    struct Head {
        target: String,
        keep_alive: bool,
        content_length: u64,
    }

    /// What a request head said, or why it cannot be served.
    #[derive(Debug)]
    enum Parsed {
        Ok(Head),
        Bad(&'static str),
    }

    fn parse_head(head: &[u8]) -> Parsed {
        let Ok(text) = std::str::from_utf8(head) else {
            return Parsed::Bad("400 Bad Request");
        };
        let mut lines = text.split("\r\n");
        let mut parts = lines.next().unwrap_or("").split(' ');
        let (Some(_method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Parsed::Bad("400 Bad Request");
        };
        let mut keep_alive = version == "HTTP/1.1";
        let mut content_length = 0;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            if name.eq_ignore_ascii_case("connection") {
                if value.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            } else if name.eq_ignore_ascii_case("content-length") {
                match value.parse::<u64>() {
                    Ok(n) if n <= MAX_BODY_BYTES => content_length = n,
                    Ok(_) => return Parsed::Bad("413 Content Too Large"),
                    Err(_) => return Parsed::Bad("400 Bad Request"),
                }
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Parsed::Bad("501 Not Implemented");
            }
        }
        Parsed::Ok(Head {
            target: target.to_string(),
            keep_alive,
            content_length,
        })
    }

    /// `?ms=N` in the request target, if any.
    fn delay_of(target: &str, default: Duration) -> Duration {
        target
            .split_once('?')
            .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
            .and_then(|v| v.parse().ok())
            .map_or(default, Duration::from_millis)
    }

    fn response(status: &str, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
            body.len(),
            if keep_alive {
                ""
            } else {
                "Connection: close\r\n"
            }
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    }

    /// Serves one connection until the client closes it (or asks to).
    async fn connection(
        mut stream: TcpStream,
        delay: Duration,
        stats: Arc<Stats>,
    ) -> io::Result<()> {
        let mut buf = vec![0u8; MAX_HEAD_BYTES];
        let mut filled = 0;
        loop {
            let head_end = loop {
                if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if filled == buf.len() {
                    let r = response(
                        "431 Request Header Fields Too Large",
                        "text/plain",
                        b"",
                        false,
                    );
                    return stream.write_all(&r).await;
                }
                let n = stream.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Ok(()); // the client closed (between requests, or mid-head)
                }
                filled += n;
            };
            let head = match parse_head(&buf[..head_end]) {
                Parsed::Ok(h) => h,
                Parsed::Bad(status) => {
                    let r = response(status, "text/plain", b"", false);
                    return stream.write_all(&r).await;
                }
            };
            // Discard the body: first what is already buffered, then the rest.
            let buffered = (filled - head_end) as u64;
            let in_buf = head.content_length.min(buffered) as usize;
            let mut body_left = head.content_length - in_buf as u64;
            buf.copy_within(head_end + in_buf..filled, 0);
            filled -= head_end + in_buf;
            while body_left > 0 {
                let want = body_left.min(buf.len() as u64) as usize;
                let n = stream.read(&mut buf[..want]).await?;
                if n == 0 {
                    return Ok(());
                }
                body_left -= n as u64;
            }
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let path = head.target.split('?').next().unwrap_or("");
            let r = if path == "/_stats" {
                let reset = head.target.contains("reset");
                response(
                    "200 OK",
                    "application/json",
                    stats.json(reset).as_bytes(),
                    head.keep_alive,
                )
            } else {
                Stats::enter(&stats.in_flight, &stats.peak_in_flight);
                tokio::time::sleep(delay_of(&head.target, delay)).await;
                Stats::leave(&stats.in_flight);
                response("200 OK", "text/plain", BODY, head.keep_alive)
            };
            stream.write_all(&r).await?;
            if !head.keep_alive {
                return Ok(());
            }
        }
    }

    async fn serve(port: u16, delay: Duration, lifetime: Duration) -> Result<()> {
        let socket = TcpSocket::new_v4().context("socket")?;
        socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        socket.bind(addr).with_context(|| format!("bind {addr}"))?;
        let listener = socket.listen(LISTEN_BACKLOG).context("listen")?;
        let local = listener.local_addr().context("local_addr")?;
        println!("URL http://{local}/");
        eprintln!(
            "delay server: listening on http://{local}/, delay {} ms, pid {}",
            delay.as_millis(),
            std::process::id()
        );
        // SAFETY: getppid has no preconditions.
        let parent = unsafe { libc::getppid() };
        let mut parent_check = tokio::time::interval(Duration::from_millis(500));
        let end = tokio::time::sleep(lifetime);
        tokio::pin!(end);
        let stats = Arc::new(Stats {
            delay_ms: delay.as_millis() as u64,
            ..Stats::default()
        });
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        let stats = Arc::clone(&stats);
                        Stats::enter(&stats.connections, &stats.peak_connections);
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            let _ = connection(stream, delay, Arc::clone(&stats)).await;
                            Stats::leave(&stats.connections);
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        eprintln!("delay server: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                () = &mut end => {
                    eprintln!("delay server: lifetime of {} s over, exiting", lifetime.as_secs());
                    return Ok(());
                }
                _ = parent_check.tick() => {
                    // SAFETY: getppid has no preconditions.
                    if unsafe { libc::getppid() } != parent {
                        eprintln!("delay server: parent gone, exiting");
                        return Ok(());
                    }
                }
            }
        }
    }

    /// `--serve [--port N] [--delay-ms MS] [--max-secs S]`.
    pub(super) fn main(args: &[String]) -> Result<()> {
        let port = flag_value::<u16>(args, "--port")?.unwrap_or(0);
        let lifetime = Duration::from_secs(flag_value::<u64>(args, "--max-secs")?.unwrap_or(3600));
        let delay = Duration::from_millis(flag_value::<u64>(args, "--delay-ms")?.unwrap_or(100));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("runtime")?;
        rt.block_on(serve(port, delay, lifetime))
    }
}

// ---- talking to the server ----------------------------------------------------

/// The delay server as a child process of the benchmark (killed and reaped on drop).
#[derive(Debug)]
struct ServerChild {
    child: Child,
}

impl ServerChild {
    fn start(delay_ms: u64) -> Result<(Self, String)> {
        let exe = std::env::current_exe().context("current_exe")?;
        let mut child = Command::new(exe)
            .args([SERVE_ARG, "--delay-ms", &delay_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the delay server")?;
        let out = child.stdout.take().context("server stdout")?;
        let server = Self { child };
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .context("reading the server's URL")?;
        let url = line
            .trim()
            .strip_prefix("URL ")
            .ok_or_else(|| anyhow!("delay server printed {line:?}, not its URL"))?
            .to_string();
        Ok((server, url))
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `host:port` of an `http://host:port/...` URL.
fn authority(url: &str) -> Result<&str> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// The server's `/_stats` counters (`reset` zeroes the peaks after reading).
async fn server_stats(url: &str, reset: bool) -> Result<serde_json::Value> {
    let host = authority(url)?;
    let mut s = TcpStream::connect(host)
        .await
        .context("connect to server")?;
    let target = if reset { "/_stats?reset" } else { "/_stats" };
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let resp = String::from_utf8_lossy(&resp);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow!("bad stats response {resp:?}"))?;
    serde_json::from_str(body).context("stats JSON")
}

fn stat_u64(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}

// ---- CPU accounting -----------------------------------------------------------

/// User + system CPU time of a process (all its threads), from `/proc/PID/stat`.
fn proc_cpu(pid: &str) -> Duration {
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

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// CPU time the whole machine has spent busy (all CPUs), from `/proc/stat`.
fn machine_busy() -> Duration {
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
struct CpuSample {
    at: Instant,
    supervisor: Duration,
    workers: Duration,
    server: Duration,
    machine: Duration,
    accepted: u64,
}

async fn cpu_sample(pool: &Pool, url: &str) -> CpuSample {
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
fn report_cpu(key: &str, before: CpuSample, after: CpuSample, calls: u64) -> f64 {
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

// ---- the benchmark ------------------------------------------------------------

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

/// One `http` GET of `url` through the pool; fails unless the answer is 200.
async fn get(pool: &Pool, url: &str) -> Result<()> {
    let out = pool
        .apply_io::<Http>(&HttpInput::new(url))
        .await
        .with_context(|| format!("GET {url}"))?;
    if out.status != 200 {
        bail!("GET {url}: status {}", out.status);
    }
    Ok(())
}

/// (a) `n` GETs submitted at once, then all awaited.
async fn burst(pool: &Pool, p: &Params, url: &str) -> Result<()> {
    let total = (p.workers * p.concurrency) as u64;
    // Warm-up: one round at full concurrency opens the keep-alive connections.
    run_gets(pool, url, total).await?;
    let delay_ms = p.delay_ms as f64;
    let ideal = Duration::from_secs_f64(p.n as f64 * delay_ms / 1e3 / total as f64);
    server_stats(url, true).await?;
    let before = cpu_sample(pool, url).await;
    let t = Instant::now();
    let failed = run_gets(pool, url, p.n).await?;
    let wall = t.elapsed();
    let after = cpu_sample(pool, url).await;
    let stats = server_stats(url, true).await?;
    // Minus the connection that asked for the second sample.
    let opened = after.accepted.saturating_sub(before.accepted + 1);
    let rate = p.n as f64 / wall.as_secs_f64();
    let over = wall.as_secs_f64() / ideal.as_secs_f64();
    println!(
        "(a) {} GETs × {delay_ms} ms, {} workers × {} concurrency: {:.3} s, {rate:.0} calls/s; \
         ideal {:.3} s, wall / ideal {over:.3}; peak in flight at the server {}, \
         {opened} connections opened, {failed} failed",
        p.n,
        p.workers,
        p.concurrency,
        wall.as_secs_f64(),
        ideal.as_secs_f64(),
        stat_u64(&stats, "peak_in_flight"),
    );
    result("io.n", p.n);
    result("io.wall_s", format!("{:.4}", wall.as_secs_f64()));
    result("io.calls_per_s", format!("{rate:.0}"));
    result("io.ideal_s", format!("{:.4}", ideal.as_secs_f64()));
    result("io.over_ideal", format!("{over:.4}"));
    result("io.peak_in_flight", stat_u64(&stats, "peak_in_flight"));
    result("io.peak_connections", stat_u64(&stats, "peak_connections"));
    result("io.connections_opened", opened);
    result("io.failed", failed);
    report_cpu("io", before, after, p.n);
    Ok(())
}

/// `n` GETs submitted at once, then awaited; returns how many failed.
async fn run_gets(pool: &Pool, url: &str, n: u64) -> Result<u64> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (pool, url) = (pool.clone(), url.to_string());
        set.spawn(async move { get(&pool, &url).await });
    }
    let mut failed = 0;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.context("join")? {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        if failed == n {
            return Err(e.context("every GET failed"));
        }
        eprintln!("io bench: {failed} of {n} GETs failed; the first: {e:#}");
    }
    Ok(failed)
}

/// What one closed loop did.
#[derive(Debug, Clone, Copy)]
struct LoopResult {
    calls: u64,
    wall: Duration,
    /// `spin`: rounds of arithmetic done, over all calls. A spin runs for wall
    /// time, so fewer rounds per call means its worker was off the CPU part
    /// of the time.
    spin_rounds: u64,
}

impl LoopResult {
    fn rate(self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64()
    }

    fn rounds_per_s(self) -> f64 {
        self.spin_rounds as f64 / self.wall.as_secs_f64()
    }
}

/// The two kinds of call of (b) and (c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Spin,
    Http,
}

/// A closed loop: `in_flight` callers, each calling again as soon as its call
/// returns, until `length` has passed; the calls still running then finish.
async fn closed_loop(
    pool: &Pool,
    url: &str,
    kind: Kind,
    in_flight: usize,
    spin_ms: u64,
    length: Duration,
) -> Result<LoopResult> {
    let start = Instant::now();
    let deadline = start + length;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (pool, url) = (pool.clone(), url.to_string());
        set.spawn(async move {
            let (mut calls, mut rounds) = (0u64, 0u64);
            while Instant::now() < deadline {
                match kind {
                    Kind::Spin => {
                        let out = pool
                            .apply::<Spin>(&SpinInput { ms: spin_ms })
                            .await
                            .context("spin")?;
                        rounds += out.iterations;
                    }
                    Kind::Http => get(&pool, &url).await?,
                }
                calls += 1;
            }
            anyhow::Ok((calls, rounds))
        });
    }
    let (mut calls, mut spin_rounds) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (c, r) = r.context("join")??;
        calls += c;
        spin_rounds += r;
    }
    Ok(LoopResult {
        calls,
        wall: start.elapsed(),
        spin_rounds,
    })
}

/// (b) each kind alone, then (c) both at once.
async fn mixed(pool: &Pool, p: &Params, url: &str) -> Result<()> {
    let spin = |len| closed_loop(pool, url, Kind::Spin, p.spin_in_flight, p.spin_ms, len);
    let io = |len| closed_loop(pool, url, Kind::Http, p.io_in_flight, p.spin_ms, len);
    let spin_ideal = p.workers as f64 * 1e3 / p.spin_ms as f64;
    let io_ideal = p.io_in_flight as f64 * 1e3 / p.delay_ms as f64;
    // Warm-up of both kinds.
    spin(Duration::from_millis(100)).await?;
    io(Duration::from_millis(200)).await?;

    let before = cpu_sample(pool, url).await;
    let spin_alone = spin(p.mix).await?;
    let mid = cpu_sample(pool, url).await;
    let io_alone = io(p.mix).await?;
    let after_io = cpu_sample(pool, url).await;
    let (spin_mixed, io_mixed) = tokio::join!(spin(p.mix), io(p.mix));
    let (spin_mixed, io_mixed) = (spin_mixed?, io_mixed?);
    let after = cpu_sample(pool, url).await;

    println!(
        "(b) spin {} ms alone, {} in flight, {:.1} s: {} calls, {:.1} calls/s (ideal {spin_ideal:.0})",
        p.spin_ms,
        p.spin_in_flight,
        spin_alone.wall.as_secs_f64(),
        spin_alone.calls,
        spin_alone.rate()
    );
    report_cpu("mix.spin_alone", before, mid, spin_alone.calls);
    println!(
        "(b) http alone, {} in flight, {:.1} s: {} calls, {:.1} calls/s (ideal {io_ideal:.0})",
        p.io_in_flight,
        io_alone.wall.as_secs_f64(),
        io_alone.calls,
        io_alone.rate()
    );
    let io_cpu_us = report_cpu("mix.io_alone", mid, after_io, io_alone.calls);

    let drop_pct =
        |alone: LoopResult, mixed: LoopResult| (1.0 - mixed.rate() / alone.rate()) * 100.0;
    let (spin_drop, io_drop) = (
        drop_pct(spin_alone, spin_mixed),
        drop_pct(io_alone, io_mixed),
    );
    // A spin call lasts 10 ms of wall time whatever CPU it gets, so its calls/s
    // hides lost CPU; the rounds of arithmetic it did per second do not.
    let work_drop = (1.0 - spin_mixed.rounds_per_s() / spin_alone.rounds_per_s()) * 100.0;
    // What the http calls need for themselves (supervisor, workers, server),
    // in CPUs, and so the most CPU left for the spinning workers.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let io_cpus = io_cpu_us * io_mixed.rate() / 1e6;
    let work_bound = ((cpus - io_cpus) / p.workers as f64).min(1.0);
    println!(
        "(c) both at once, {:.1} s: spin {:.1} calls/s ({spin_drop:+.1} % drop), \
         http {:.1} calls/s ({io_drop:+.1} % drop)",
        spin_mixed.wall.max(io_mixed.wall).as_secs_f64(),
        spin_mixed.rate(),
        io_mixed.rate(),
    );
    println!(
        "    spin CPU work: {:.3e} rounds/s alone, {:.3e} mixed ({work_drop:+.1} % drop); the http \
         calls need {io_cpus:.2} of the {cpus} CPUs, which leaves the spinning workers at most \
         {:.1} % of what they had alone",
        spin_alone.rounds_per_s(),
        spin_mixed.rounds_per_s(),
        work_bound * 100.0
    );
    report_cpu(
        "mix.both",
        after_io,
        after,
        spin_mixed.calls + io_mixed.calls,
    );
    result("mix.spin_ms", p.spin_ms);
    result("mix.spin_in_flight", p.spin_in_flight);
    result("mix.io_in_flight", p.io_in_flight);
    result("mix.secs", format!("{:.1}", p.mix.as_secs_f64()));
    result("mix.spin_ideal_per_s", format!("{spin_ideal:.1}"));
    result("mix.io_ideal_per_s", format!("{io_ideal:.1}"));
    result("mix.spin_alone_per_s", format!("{:.1}", spin_alone.rate()));
    result("mix.io_alone_per_s", format!("{:.1}", io_alone.rate()));
    result("mix.spin_mixed_per_s", format!("{:.1}", spin_mixed.rate()));
    result("mix.io_mixed_per_s", format!("{:.1}", io_mixed.rate()));
    result("mix.spin_drop_pct", format!("{spin_drop:.2}"));
    result("mix.io_drop_pct", format!("{io_drop:.2}"));
    result(
        "mix.spin_rounds_alone_per_s",
        format!("{:.0}", spin_alone.rounds_per_s()),
    );
    result(
        "mix.spin_rounds_mixed_per_s",
        format!("{:.0}", spin_mixed.rounds_per_s()),
    );
    result("mix.spin_work_drop_pct", format!("{work_drop:.2}"));
    result("mix.io_cpus", format!("{io_cpus:.3}"));
    result(
        "mix.spin_work_bound_drop_pct",
        format!("{:.2}", (1.0 - work_bound) * 100.0),
    );
    Ok(())
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
