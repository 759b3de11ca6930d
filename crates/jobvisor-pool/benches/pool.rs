//! Benchmarks of the process pool, the jobvisor half of `scripts/bench-pool`
//! (which runs `scripts/bench_pool.py` for Python's `multiprocessing.Pool`
//! with the same sizes and prints both side by side).
//!
//! `harness = false`: `main` starts the fork server while the process is still
//! single-threaded, then builds a tokio runtime and runs the workloads:
//!
//! - (a) N no-op tasks submitted one by one, then all awaited;
//! - (b) the same N through `map` with the automatic chunksize;
//! - (c) sequential `apply` round trips (p50/p99), from `block_on` and from a
//!   spawned task, next to the floor: blocking 8-byte pipe ping-pong between
//!   this process and a child of the same binary (`__pingpong` mode), unpinned,
//!   both pinned to one CPU, and pinned to two different CPUs;
//! - (d) CPU-bound 10 ms tasks: serial in-process vs the pool (efficiency);
//! - (e) 1 MiB inputs: MiB/s, at most 64 calls outstanding
//!   (`JOBVISOR_BENCH_E_IN_FLIGHT` changes it);
//! - (f) SIGKILL of an idle worker to its replacement being ready, both start
//!   methods (restart intensity lifted, so the crash-loop guard stays out);
//! - (g) PSS of an idle worker and RSS of the supervisor.
//!
//! Every figure is printed as a machine-readable `RESULT <key> <value>` line
//! next to the human text.
//!
//! Arguments (unknown ones, like cargo's `--bench`, are ignored):
//! `--quick` (or `JOBVISOR_BENCH_QUICK=1`) scales every count down 10×;
//! `--workers N` (or `JOBVISOR_BENCH_WORKERS`) sets the pool size (default:
//! available cores); `--n N` (or `JOBVISOR_BENCH_N`) sets the task count of
//! (a) and (b); `--only LETTERS` (or `JOBVISOR_BENCH_ONLY`) runs a subset,
//! e.g. `--only ce`. `RUST_LOG` turns on the pool's tracing (to stderr).

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use jobvisor_pool::{
    bootstrap_with, Bootstrap, BootstrapOptions, Ctx, Pool, PoolBuilder, PoolEvent, Registry,
    StartMethod, Task, TaskError, WorkerState,
};
use jobvisor_tasks::{Noop, Spin, SpinInput};
use serde_bytes::ByteBuf;

/// argv[1] that turns this binary into the ping-pong echo child of (c).
const PINGPONG_ARG: &str = "__pingpong";
/// Bytes per ping-pong message (both ways).
const PING_BYTES: usize = 8;

/// `"bench.len"`: the length of a byte string. Measures input bandwidth.
#[derive(Debug)]
struct Len;

impl Task for Len {
    const NAME: &'static str = "bench.len";
    type Input = ByteBuf;
    type Output = u64;

    fn run(&self, input: ByteBuf, _ctx: &mut Ctx<'_>) -> Result<u64, TaskError> {
        Ok(input.len() as u64)
    }
}

fn registry() -> Registry {
    let mut r = jobvisor_tasks::builtin();
    r.register(Len);
    r
}

/// Sizes of one run.
#[derive(Debug, Clone)]
struct Params {
    quick: bool,
    workers: usize,
    /// Tasks of (a) and (b).
    n: u64,
    /// Round trips of (c) and of the floor.
    round_trips: usize,
    /// 10 ms tasks of (d).
    spin_tasks: usize,
    /// 1 MiB tasks of (e).
    mib_tasks: usize,
    /// Kills per start method in (f).
    kills: usize,
    /// Workloads to run (letters a–g); all by default.
    only: String,
}

impl Params {
    fn from_env_and_args() -> Self {
        let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let mut quick = std::env::var("JOBVISOR_BENCH_QUICK")
            .is_ok_and(|v| !v.is_empty() && v != "0" && v != "false");
        let mut workers = env_num("JOBVISOR_BENCH_WORKERS").map(|w| w as usize);
        let mut n = env_num("JOBVISOR_BENCH_N");
        let mut only = std::env::var("JOBVISOR_BENCH_ONLY").unwrap_or_default();
        let args: Vec<String> = std::env::args().skip(1).collect();
        let mut i = 0;
        while i < args.len() {
            let next = args.get(i + 1).and_then(|v| v.parse::<u64>().ok());
            match args[i].as_str() {
                "--quick" => quick = true,
                "--workers" if next.is_some() => {
                    workers = next.map(|w| w as usize);
                    i += 1;
                }
                "--n" if next.is_some() => {
                    n = next;
                    i += 1;
                }
                "--only" if i + 1 < args.len() => {
                    only = args[i + 1].clone();
                    i += 1;
                }
                // cargo passes `--bench`; anything else is not ours either.
                _ => {}
            }
            i += 1;
        }
        let scale = if quick { 10 } else { 1 };
        let workers = workers
            .filter(|&w| w > 0)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        Self {
            quick,
            workers,
            n: n.unwrap_or(100_000 / scale),
            round_trips: 20_000 / scale as usize,
            spin_tasks: 200 / scale as usize,
            mib_tasks: 2_000 / scale as usize,
            kills: 200 / scale as usize,
            only,
        }
    }

    fn runs(&self, workload: char) -> bool {
        self.only.is_empty() || self.only.contains(workload)
    }
}

fn result(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key} {value}");
}

/// Nearest-rank percentile of sorted samples (the same rule as the Python side).
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `Pss:` or `Rss:` of a process from `/proc/PID/smaps_rollup`, in KiB.
fn smaps_kib(pid: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A field of `/proc/self/status` in KiB (e.g. `VmHWM`).
fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

// ---- the ping-pong floor ---------------------------------------------------

/// The child side: echo `PING_BYTES`-byte messages from stdin to stdout until
/// EOF, pinned to the CPU given as the next argument, if any.
fn pingpong_server() -> ExitCode {
    if let Some(cpu) = std::env::args().nth(2).and_then(|c| c.parse().ok()) {
        if !set_affinity(&single_cpu(cpu)) {
            return ExitCode::FAILURE;
        }
    }
    let mut input = std::io::stdin().lock();
    let mut output = std::io::stdout().lock();
    let mut buf = [0u8; PING_BYTES];
    loop {
        if input.read_exact(&mut buf).is_err() {
            return ExitCode::SUCCESS;
        }
        if output
            .write_all(&buf)
            .and_then(|()| output.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
}

/// The calling thread's CPU affinity.
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    (r == 0).then_some(set)
}

/// Sets the calling thread's CPU affinity.
fn set_affinity(set: &libc::cpu_set_t) -> bool {
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(set), set) == 0 }
}

fn single_cpu(cpu: usize) -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is plain data; all zeroes is an empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET bounds-checks `cpu` against the set's size.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set
}

/// The CPUs this thread may run on.
fn allowed_cpus(set: &libc::cpu_set_t) -> Vec<usize> {
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET bounds-checks its index.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, set) })
        .collect()
}

/// Blocking round trips to a child of this same binary over two pipes;
/// `pin` = (this thread's CPU, the child's CPU).
fn pipe_floor(round_trips: usize, pin: Option<(usize, usize)>) -> std::io::Result<Vec<Duration>> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg(PINGPONG_ARG);
    let saved = affinity();
    if let Some((ours, theirs)) = pin {
        cmd.arg(theirs.to_string());
        if !set_affinity(&single_cpu(ours)) {
            return Err(std::io::Error::last_os_error());
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut to = child.stdin.take().expect("piped stdin");
    let mut from = child.stdout.take().expect("piped stdout");
    let mut buf = [0u8; PING_BYTES];
    let warmup = (round_trips / 10).max(100);
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..warmup + round_trips {
        let msg = (i as u64).to_le_bytes();
        let t = Instant::now();
        to.write_all(&msg)?;
        from.read_exact(&mut buf)?;
        let took = t.elapsed();
        assert_eq!(buf, msg, "ping-pong echo mismatch");
        if i >= warmup {
            samples.push(took);
        }
    }
    drop(to);
    let status = child.wait()?;
    if let Some(set) = saved {
        set_affinity(&set);
    }
    if !status.success() {
        return Err(std::io::Error::other(format!("ping-pong child: {status}")));
    }
    samples.sort();
    Ok(samples)
}

/// The ping-pong floors of (c): unpinned (where the scheduler puts the two
/// processes), both on one CPU, and on two different CPUs.
#[derive(Debug, Default)]
struct Floors {
    unpinned: Vec<Duration>,
    same_cpu: Vec<Duration>,
    cross_cpu: Vec<Duration>,
}

impl Floors {
    /// Measured from the main thread while the process has no other thread.
    fn measure(round_trips: usize) -> std::io::Result<Self> {
        let cpus = affinity().map(|s| allowed_cpus(&s)).unwrap_or_default();
        let mut f = Floors {
            unpinned: pipe_floor(round_trips, None)?,
            ..Floors::default()
        };
        if let Some(&first) = cpus.first() {
            f.same_cpu = pipe_floor(round_trips, Some((first, first)))?;
        }
        if let [first, second, ..] = cpus[..] {
            f.cross_cpu = pipe_floor(round_trips, Some((first, second)))?;
        }
        Ok(f)
    }

    fn report(&self) {
        for (key, what, samples) in [
            ("floor", "unpinned", &self.unpinned),
            ("floor_same", "both on one CPU", &self.same_cpu),
            ("floor_cross", "on two different CPUs", &self.cross_cpu),
        ] {
            if samples.is_empty() {
                continue;
            }
            let (p50, p99) = (percentile(samples, 50.0), percentile(samples, 99.0));
            println!(
                "(c) floor, {what}: {} blocking 8-byte pipe round trips to a child process: p50 {:.1} µs, p99 {:.1} µs",
                samples.len(),
                us(p50),
                us(p99)
            );
            result(&format!("{key}.p50_us"), format!("{:.1}", us(p50)));
            result(&format!("{key}.p99_us"), format!("{:.1}", us(p99)));
        }
    }

    /// `apply_p50` over each floor's p50, as `RESULT <key>.p50_over_<floor>`.
    fn ratios(&self, key: &str, apply_p50: Duration) {
        for (name, samples) in [
            ("floor", &self.unpinned),
            ("floor_same", &self.same_cpu),
            ("floor_cross", &self.cross_cpu),
        ] {
            if samples.is_empty() {
                continue;
            }
            let ratio = apply_p50.as_secs_f64() / percentile(samples, 50.0).as_secs_f64();
            println!("(c) {key} apply p50 / {name} p50 = {ratio:.2}×");
            result(&format!("{key}.p50_over_{name}"), format!("{ratio:.2}"));
        }
    }
}

// ---- workloads ---------------------------------------------------------------

async fn build_pool(builder: PoolBuilder, workers: usize, method: StartMethod) -> Pool {
    let pool = builder
        .workers(workers)
        .start_method(method)
        .build()
        .await
        .expect("pool starts");
    // Warm-up: every worker has answered a few calls.
    let outs = pool
        .map::<Noop>((0..(64 * workers as u64)).collect(), 1)
        .await
        .expect("warm-up");
    assert_eq!(outs.len(), 64 * workers);
    pool
}

/// (a) N tasks submitted one by one, then all awaited.
async fn submit_one_by_one(pool: &Pool, n: u64) -> f64 {
    let t = Instant::now();
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        handles.push(pool.submit::<Noop>(&i).await.expect("submit"));
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.expect("noop"), i as u64);
    }
    let wall = t.elapsed();
    let rate = n as f64 / wall.as_secs_f64();
    println!(
        "(a) {n} no-op tasks, submit one by one: {:.3} s, {rate:.0} tasks/s",
        wall.as_secs_f64()
    );
    result("a.wall_s", format!("{:.4}", wall.as_secs_f64()));
    result("a.tasks_per_s", format!("{rate:.0}"));
    rate
}

/// (b) N tasks through `map` with the automatic chunksize.
async fn map_auto_chunks(pool: &Pool, n: u64) {
    let inputs: Vec<u64> = (0..n).collect();
    let t = Instant::now();
    let outs = pool.map::<Noop>(inputs, 0).await.expect("map");
    let wall = t.elapsed();
    assert!(outs.iter().enumerate().all(|(i, &o)| o == i as u64));
    let rate = n as f64 / wall.as_secs_f64();
    let chunk = (n as usize).div_ceil(4 * pool.config().workers).max(1);
    println!(
        "(b) {n} no-op tasks, map chunksize 0 (= {chunk}): {:.3} s, {rate:.0} tasks/s",
        wall.as_secs_f64()
    );
    result("b.wall_s", format!("{:.4}", wall.as_secs_f64()));
    result("b.chunksize", chunk);
    result("b.tasks_per_s", format!("{rate:.0}"));
}

/// (c) sequential apply round trips; results under `key` (`c` for the main
/// figure), `from` says where the loop runs.
async fn apply_latency(pool: &Pool, round_trips: usize, key: &str, from: &str) -> Duration {
    for i in 0..(round_trips / 10).max(100) as u64 {
        pool.apply::<Noop>(&i).await.expect("warm-up apply");
    }
    let mut samples = Vec::with_capacity(round_trips);
    for i in 0..round_trips as u64 {
        let t = Instant::now();
        let out = pool.apply::<Noop>(&i).await.expect("apply");
        samples.push(t.elapsed());
        assert_eq!(out, i);
    }
    samples.sort();
    let (p50, p99) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "(c) {round_trips} sequential apply round trips {from}: p50 {:.1} µs, p99 {:.1} µs, mean {:.1} µs, max {:.1} µs",
        us(p50),
        us(p99),
        us(mean),
        us(*samples.last().unwrap_or(&Duration::ZERO))
    );
    result(&format!("{key}.p50_us"), format!("{:.1}", us(p50)));
    result(&format!("{key}.p99_us"), format!("{:.1}", us(p99)));
    result(&format!("{key}.mean_us"), format!("{:.1}", us(mean)));
    p50
}

/// (d) CPU-bound tasks: serial in this thread vs the pool.
async fn cpu_bound(pool: &Pool, tasks: usize) {
    let input = SpinInput { ms: 10 };
    let t = Instant::now();
    let mut serial_iters = 0u64;
    for _ in 0..tasks {
        serial_iters += jobvisor_worker::run_detached(&Spin, input, None)
            .expect("serial spin")
            .iterations;
    }
    let serial = t.elapsed();
    let t = Instant::now();
    let outs = pool
        .map::<Spin>(vec![input; tasks], 1)
        .await
        .expect("parallel spin");
    let parallel = t.elapsed();
    assert_eq!(outs.len(), tasks);
    // Spin runs for wall time: fewer rounds per task in the pool than in the
    // serial loop means the workers were not on a CPU all the time.
    let pool_iters: u64 = outs.iter().map(|o| o.iterations).sum();
    let cpu_share = pool_iters as f64 / serial_iters as f64;
    let cores = pool.config().workers;
    let speedup = serial.as_secs_f64() / parallel.as_secs_f64();
    let efficiency = speedup / cores as f64;
    println!(
        "(d) {tasks} × 10 ms spin: serial {:.3} s, pool of {cores} {:.3} s, speedup {speedup:.3}, efficiency {:.1} %",
        serial.as_secs_f64(),
        parallel.as_secs_f64(),
        efficiency * 100.0
    );
    result("d.serial_s", format!("{:.4}", serial.as_secs_f64()));
    result("d.parallel_s", format!("{:.4}", parallel.as_secs_f64()));
    result("d.tasks", tasks);
    result("d.cores", cores);
    result("d.speedup", format!("{speedup:.4}"));
    result("d.efficiency_pct", format!("{:.2}", efficiency * 100.0));
    // The ideal parallel time is the serial one over the cores; the gap per task:
    let gap = (parallel.as_secs_f64() * cores as f64 - serial.as_secs_f64()) / tasks as f64;
    println!(
        "(d) spin rounds in the pool / serially: {:.3} (CPU share of a worker during its task); \
         extra wall time per task in the pool: {:.3} ms",
        cpu_share,
        gap * 1e3
    );
    result("d.cpu_share", format!("{cpu_share:.4}"));
    result("d.gap_per_task_ms", format!("{:.3}", gap * 1e3));
}

/// (e) 1 MiB inputs. At most 64 calls (`JOBVISOR_BENCH_E_IN_FLIGHT`) outstanding, so memory stays
/// bounded (Python's `imap` over a generator is bounded by its pipe).
async fn bandwidth(pool: &Pool, tasks: usize) {
    let in_flight: usize = std::env::var("JOBVISOR_BENCH_E_IN_FLIGHT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let mib = 1usize << 20;
    let buf = ByteBuf::from(vec![b'x'; mib]);
    let t = Instant::now();
    let mut handles = VecDeque::with_capacity(in_flight);
    let mut total = 0u64;
    for _ in 0..tasks {
        if handles.len() >= in_flight {
            let h: jobvisor_pool::TaskHandle<u64> = handles.pop_front().expect("non-empty");
            total += h.await.expect("len");
        }
        handles.push_back(pool.submit::<Len>(&buf).await.expect("submit len"));
    }
    for h in handles {
        total += h.await.expect("len");
    }
    let wall = t.elapsed();
    assert_eq!(total, (tasks * mib) as u64);
    let rate = tasks as f64 / wall.as_secs_f64();
    println!(
        "(e) {tasks} × 1 MiB inputs ({in_flight} in flight): {:.3} s, {rate:.0} MiB/s",
        wall.as_secs_f64()
    );
    result("e.tasks", tasks);
    result("e.wall_s", format!("{:.4}", wall.as_secs_f64()));
    result("e.mib_per_s", format!("{rate:.0}"));
}

/// (f) SIGKILL of an idle worker → its replacement ready, `kills` times.
async fn replacement(workers: usize, method: StartMethod, kills: usize) {
    // The default restart intensity (a crash-loop guard) delays restarts after
    // 10 deaths in 10 s, by design; this measures the restart path itself.
    let builder = Pool::builder().restart_intensity(u32::MAX, Duration::from_secs(1));
    let pool = build_pool(builder, workers, method).await;
    let mut events = pool.events();
    let mut samples = Vec::with_capacity(kills);
    let deadline = Duration::from_secs(30);
    for _ in 0..kills {
        let victim = pool
            .workers()
            .await
            .into_iter()
            .find(|w| w.state == WorkerState::Ready)
            .expect("a ready worker")
            .pid;
        let t_kill = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(victim as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill");
        // Wait for both: a new worker ready, and the victim reaped (so the
        // next round starts from a settled pool).
        let (mut ready_at, mut exited) = (None, false);
        while ready_at.is_none() || !exited {
            match tokio::time::timeout(deadline, events.recv()).await {
                Ok(Ok(PoolEvent::WorkerReady { at, .. })) => {
                    ready_at.get_or_insert(at);
                }
                Ok(Ok(PoolEvent::WorkerExited { pid, .. })) if pid == victim => exited = true,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("events: {e}"),
                Err(_) => panic!("{method}: no replacement within {deadline:?}"),
            }
        }
        let at = ready_at.expect("ready");
        samples.push(at.saturating_duration_since(t_kill));
    }
    // The pool still works.
    assert_eq!(pool.apply::<Noop>(&7).await.expect("after kills"), 7);
    pool.shutdown().await;
    samples.sort();
    let (p50, p99) = (percentile(&samples, 50.0), percentile(&samples, 99.0));
    println!(
        "(f) {method}: {kills} SIGKILLs → replacement ready: median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms(p50),
        ms(p99),
        ms(*samples.last().unwrap_or(&Duration::ZERO))
    );
    let deciles: Vec<String> = (1..10)
        .map(|d| format!("{:.2}", ms(percentile(&samples, f64::from(d) * 10.0))))
        .collect();
    println!("(f) {method}: deciles (ms): {}", deciles.join(" "));
    result(&format!("f.{method}.p50_ms"), format!("{:.3}", ms(p50)));
    result(&format!("f.{method}.p99_ms"), format!("{:.3}", ms(p99)));
}

/// (g) idle worker PSS and supervisor RSS, on a freshly warmed-up pool.
async fn memory(pool: &Pool) {
    let workers = pool.workers().await;
    let pss: Vec<u64> = workers
        .iter()
        .filter_map(|w| smaps_kib(&w.pid.to_string(), "Pss"))
        .collect();
    let worker_pss = pss.iter().copied().max().unwrap_or(0);
    let sup_rss = smaps_kib("self", "Rss").unwrap_or(0);
    let fs_pss = jobvisor_pool::fork_server_pid()
        .and_then(|p| smaps_kib(&p.to_string(), "Pss"))
        .unwrap_or(0);
    println!(
        "(g) idle worker PSS {worker_pss} KiB (all: {pss:?}), supervisor RSS {sup_rss} KiB, fork server PSS {fs_pss} KiB"
    );
    result("g.worker_pss_kib", worker_pss);
    result("g.supervisor_rss_kib", sup_rss);
    result("g.forkserver_pss_kib", fs_pss);
}

fn hwm_checkpoint(after: &str) {
    let hwm = status_kib("VmHWM").unwrap_or(0);
    result(&format!("hwm_after.{after}_kib"), hwm);
}

async fn run(p: Params, floors: Floors) {
    let pool = build_pool(Pool::builder(), p.workers, StartMethod::ForkServer).await;
    if p.runs('g') {
        memory(&pool).await;
    }
    if p.runs('a') {
        submit_one_by_one(&pool, p.n).await;
        hwm_checkpoint("a");
    }
    if p.runs('b') {
        map_auto_chunks(&pool, p.n).await;
        hwm_checkpoint("b");
    }
    if p.runs('c') {
        floors.report();
        // The main figure: the loop in `block_on`, like `#[tokio::main]` code.
        let p50 = apply_latency(&pool, p.round_trips, "c", "in block_on").await;
        floors.ratios("c", p50);
        // The same loop inside a task on the runtime's worker threads.
        let (pool2, n) = (pool.clone(), p.round_trips);
        let p50 =
            tokio::spawn(
                async move { apply_latency(&pool2, n, "c_task", "in a spawned task").await },
            )
            .await
            .expect("spawned apply loop");
        floors.ratios("c_task", p50);
    }
    if p.runs('d') {
        cpu_bound(&pool, p.spin_tasks).await;
    }
    if p.runs('e') {
        bandwidth(&pool, p.mib_tasks).await;
        hwm_checkpoint("e");
    }
    pool.shutdown().await;

    if p.runs('f') {
        for method in [StartMethod::ForkServer, StartMethod::Spawn] {
            replacement(p.workers, method, p.kills).await;
        }
    }
    let hwm = status_kib("VmHWM").unwrap_or(0);
    println!("supervisor peak RSS (VmHWM) over the whole run: {hwm} KiB");
    result("supervisor_hwm_kib", hwm);
}

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some(PINGPONG_ARG) {
        return pingpong_server();
    }
    let options = BootstrapOptions {
        fork_server: true,
        initializer: None,
        worker_init: None,
    };
    match bootstrap_with(registry(), options).expect("bootstrap") {
        Bootstrap::Worker(code) => return code,
        Bootstrap::Supervisor => {}
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let p = Params::from_env_and_args();
    println!(
        "jobvisor pool benchmark: {} workers, quick={}, N={}, round trips={}, spin tasks={}, 1 MiB tasks={}, kills={}",
        p.workers, p.quick, p.n, p.round_trips, p.spin_tasks, p.mib_tasks, p.kills
    );
    result("workers", p.workers);
    result("quick", u8::from(p.quick));
    result("n", p.n);
    // The floor first, from the single-threaded process, before the runtime.
    let floors = if p.runs('c') {
        Floors::measure(p.round_trips).expect("ping-pong floor")
    } else {
        Floors::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let t = Instant::now();
    rt.block_on(run(p, floors));
    println!("total {:.1} s", t.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
