//! Integration tests of the process pool with real worker processes, for both
//! start methods. `harness = false`: `main` starts the fork server while the
//! process is still single-threaded, then runs the tests (see `helper`).

mod helper;

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Duration;

use helper::{Test, TestFn};
use jobvisor_pool::{
    bootstrap_with, Bootstrap, BootstrapOptions, CallOptions, Ctx, FailureKind, Pool, PoolError,
    PoolEvent, Registry, StartMethod, Task, TaskError,
};
use jobvisor_pool::{AsyncCtx, AsyncTask};
use jobvisor_tasks::{Noop, Sleep, SleepInput, Spin, SpinInput};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---- tasks only these tests use -------------------------------------------

/// Dies the way it is told to.
struct Die;
#[derive(Serialize, Deserialize)]
enum DieHow {
    Signal(i32),
    Exit(i32),
}
impl Task for Die {
    const NAME: &'static str = "test.die";
    type Input = DieHow;
    type Output = ();
    fn run(&self, how: DieHow, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        eprintln!("about to die: last words");
        match how {
            DieHow::Signal(sig) => {
                // SAFETY: raising a signal on ourselves.
                unsafe { libc::raise(sig) };
            }
            DieHow::Exit(code) => std::process::exit(code),
        }
        Ok(())
    }
}

struct Panics;
impl Task for Panics {
    const NAME: &'static str = "test.panic";
    type Input = String;
    type Output = ();
    fn run(&self, msg: String, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        panic!("{msg}");
    }
}

struct Fails;
impl Task for Fails {
    const NAME: &'static str = "test.fail";
    type Input = String;
    type Output = ();
    fn run(&self, msg: String, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        Err(TaskError::msg(msg))
    }
}

/// Returns the worker's pid.
struct Pid;
impl Task for Pid {
    const NAME: &'static str = "test.pid";
    type Input = ();
    type Output = u32;
    fn run(&self, _: (), _ctx: &mut Ctx<'_>) -> Result<u32, TaskError> {
        Ok(std::process::id())
    }
}

/// Spins without ever looking at ctx, optionally ignoring SIGTERM.
struct Forever;
impl Task for Forever {
    const NAME: &'static str = "test.forever";
    type Input = bool;
    type Output = ();
    fn run(&self, ignore_term: bool, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        if ignore_term {
            // SAFETY: setting a signal disposition to SIG_IGN.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
        }
        let mut x: u64 = 1;
        loop {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

/// Writes its pid into a FIFO (the test's readiness event), then sleeps
/// cooperatively for the given ms.
struct Announce;
impl Task for Announce {
    const NAME: &'static str = "test.announce";
    type Input = (String, u64);
    type Output = ();
    fn run(&self, (fifo, ms): (String, u64), ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&fifo)?;
        writeln!(f, "{}", std::process::id())?;
        drop(f);
        let t = std::time::Instant::now();
        let full = ctx.sleep(Duration::from_millis(ms));
        eprintln!(
            "announce slept {:?} full={full} cancelled={}",
            t.elapsed(),
            ctx.is_cancelled()
        );
        if full {
            Ok(())
        } else {
            Err(TaskError::cancelled())
        }
    }
}

/// Floods stdout and stderr, including bytes that look like frames.
struct Chatty;
impl Task for Chatty {
    const NAME: &'static str = "test.chatty";
    type Input = u32;
    type Output = u32;
    fn run(&self, n: u32, _ctx: &mut Ctx<'_>) -> Result<u32, TaskError> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for i in 0..n {
            out.write_all(&[4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff])?;
            writeln!(out, "line {i} of noise on stdout")?;
        }
        out.flush()?;
        eprintln!("and some on stderr");
        Ok(n * 2)
    }
}

/// Allocates (and touches) memory without bound.
struct Hog;
impl Task for Hog {
    const NAME: &'static str = "test.hog";
    type Input = ();
    type Output = ();
    fn run(&self, _: (), _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        let mut keep: Vec<Vec<u8>> = Vec::new();
        loop {
            keep.push(vec![1u8; 16 << 20]);
            std::hint::black_box(&keep);
        }
    }
}

/// Allocates `mib` MiB, touches it and keeps it (a leak), then returns its pid.
struct Hold;
impl Task for Hold {
    const NAME: &'static str = "test.hold";
    type Input = usize;
    type Output = u32;
    fn run(&self, mib: usize, _ctx: &mut Ctx<'_>) -> Result<u32, TaskError> {
        let v = vec![7u8; mib << 20];
        std::mem::forget(std::hint::black_box(v));
        Ok(std::process::id())
    }
}

/// Announces its pid on a FIFO, then heartbeats every 10 ms for `ms`.
struct Beat;
impl Task for Beat {
    const NAME: &'static str = "test.beat";
    type Input = (String, u64);
    type Output = ();
    fn run(&self, (fifo, ms): (String, u64), ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&fifo)?;
        writeln!(f, "{}", std::process::id())?;
        drop(f);
        let until = std::time::Instant::now() + Duration::from_millis(ms);
        while std::time::Instant::now() < until {
            if ctx.heartbeat() || !ctx.sleep(Duration::from_millis(10)) {
                return Err(TaskError::cancelled());
            }
        }
        Ok(())
    }
}

/// Env var naming a file whose existence makes every new worker exit at start-up.
const DIE_FLAG_ENV: &str = "JOBVISOR_TEST_DIE_FLAG";

fn die_if_flagged() {
    if let Some(p) = std::env::var_os(DIE_FLAG_ENV) {
        if std::path::Path::new(&p).exists() {
            eprintln!("worker refuses to start: {} exists", p.to_string_lossy());
            std::process::exit(1);
        }
    }
}

fn die_flag() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os(DIE_FLAG_ENV).expect("set in main"))
}

static PRELOADED: OnceLock<u64> = OnceLock::new();

/// Returns what the initializer preloaded.
struct Preloaded;
impl Task for Preloaded {
    const NAME: &'static str = "test.preloaded";
    type Input = ();
    type Output = Option<u64>;
    fn run(&self, _: (), _ctx: &mut Ctx<'_>) -> Result<Option<u64>, TaskError> {
        Ok(PRELOADED.get().copied())
    }
}

// ---- async tasks only these tests use ---------------------------------------

/// What an async test task says first on its connection to the test.
const TAG_WAIT: u8 = b'W';
const TAG_BLOCK: u8 = b'B';
const TAG_ABORT: u8 = b'A';

/// Connects to the test's listener, says `tag` and its pid, and returns the
/// pid once the test answers one byte. A rendezvous: the test holds every
/// call until all of them are connected, which only concurrent calls can be.
async fn meet(port: u16, tag: u8) -> Result<u32, TaskError> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut hello = vec![tag];
    hello.extend_from_slice(&std::process::id().to_le_bytes());
    s.write_all(&hello).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(std::process::id())
}

struct Rendezvous;
impl AsyncTask for Rendezvous {
    const NAME: &'static str = "test.rendezvous";
    type Input = u16;
    type Output = u32;
    async fn run(&self, port: u16, _ctx: AsyncCtx) -> Result<u32, TaskError> {
        meet(port, TAG_WAIT).await
    }
}

/// Meets the test, then blocks its event loop for good (a CPU task written
/// as an async one).
struct BlockLoop;
impl AsyncTask for BlockLoop {
    const NAME: &'static str = "test.block_loop";
    type Input = u16;
    type Output = ();
    async fn run(&self, port: u16, _ctx: AsyncCtx) -> Result<(), TaskError> {
        meet(port, TAG_BLOCK).await?;
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}

/// Meets the test, then aborts the worker from inside its poll.
struct AbortInPoll;
impl AsyncTask for AbortInPoll {
    const NAME: &'static str = "test.abort_in_poll";
    type Input = u16;
    type Output = ();
    async fn run(&self, port: u16, _ctx: AsyncCtx) -> Result<(), TaskError> {
        meet(port, TAG_ABORT).await?;
        std::process::abort();
    }
}

/// Never finishes, but yields (a well-behaved wait).
struct Pending;
impl AsyncTask for Pending {
    const NAME: &'static str = "test.pending";
    type Input = ();
    type Output = ();
    async fn run(&self, _: (), _ctx: AsyncCtx) -> Result<(), TaskError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// Holds its event loop for `ms` (a blocking sleep inside an async task).
struct HoldLoop;
impl AsyncTask for HoldLoop {
    const NAME: &'static str = "test.hold_loop";
    type Input = u64;
    type Output = ();
    async fn run(&self, ms: u64, _ctx: AsyncCtx) -> Result<(), TaskError> {
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(ms));
        Ok(())
    }
}

/// Leaks `mib` MiB on the event loop (touched, kept), then returns its pid.
struct IoLeak;
impl AsyncTask for IoLeak {
    const NAME: &'static str = "test.io_leak";
    type Input = usize;
    type Output = u32;
    async fn run(&self, mib: usize, _ctx: AsyncCtx) -> Result<u32, TaskError> {
        tokio::task::yield_now().await;
        let v = vec![7u8; mib << 20];
        std::mem::forget(std::hint::black_box(v));
        Ok(std::process::id())
    }
}

/// An input whose decoding panics (a user's `Deserialize` can): outside the
/// task's own `catch_unwind`.
#[derive(Debug)]
struct PanicsOnDecode;
impl Serialize for PanicsOnDecode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}
impl<'de> Deserialize<'de> for PanicsOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("decode boom")
    }
}

struct CpuDecodePanics;
impl Task for CpuDecodePanics {
    const NAME: &'static str = "test.cpu_decode_panics";
    type Input = PanicsOnDecode;
    type Output = ();
    fn run(&self, _: PanicsOnDecode, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        Ok(())
    }
}

struct IoDecodePanics;
impl AsyncTask for IoDecodePanics {
    const NAME: &'static str = "test.io_decode_panics";
    type Input = PanicsOnDecode;
    type Output = ();
    async fn run(&self, _: PanicsOnDecode, _ctx: AsyncCtx) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Holds `mib` MiB while it meets the test, then returns its pid.
struct IoHoldMeet;
impl AsyncTask for IoHoldMeet {
    const NAME: &'static str = "test.io_hold_meet";
    type Input = (u16, usize);
    type Output = u32;
    async fn run(&self, (port, mib): (u16, usize), _ctx: AsyncCtx) -> Result<u32, TaskError> {
        let v = std::hint::black_box(vec![7u8; mib << 20]);
        let pid = meet(port, TAG_WAIT).await?;
        drop(v);
        Ok(pid)
    }
}

/// Heartbeats every 20 ms for `ms`.
struct IoBeat;
impl AsyncTask for IoBeat {
    const NAME: &'static str = "test.io_beat";
    type Input = u64;
    type Output = ();
    async fn run(&self, ms: u64, ctx: AsyncCtx) -> Result<(), TaskError> {
        let until = tokio::time::Instant::now() + Duration::from_millis(ms);
        while tokio::time::Instant::now() < until {
            ctx.heartbeat();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Panics on the event loop.
struct AsyncPanics;
impl AsyncTask for AsyncPanics {
    const NAME: &'static str = "test.async_panics";
    type Input = ();
    type Output = u32;
    async fn run(&self, _: (), _ctx: AsyncCtx) -> Result<u32, TaskError> {
        tokio::task::yield_now().await;
        panic!("async boom");
    }
}

fn registry() -> Registry {
    let mut r = jobvisor_tasks::builtin();
    r.register(Die)
        .register(Panics)
        .register(Fails)
        .register(Pid)
        .register(Forever)
        .register(Announce)
        .register(Chatty)
        .register(Preloaded)
        .register(Hog)
        .register(Hold)
        .register(Beat)
        .register(CpuDecodePanics);
    r.register_async(IoDecodePanics)
        .register_async(IoHoldMeet)
        .register_async(IoBeat);
    r.register_async(Rendezvous)
        .register_async(BlockLoop)
        .register_async(AbortInPoll)
        .register_async(Pending)
        .register_async(AsyncPanics)
        .register_async(HoldLoop)
        .register_async(IoLeak);
    r
}

// ---- helpers ---------------------------------------------------------------

async fn pool(method: StartMethod, workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .start_method(method)
        .build()
        .await
        .expect("pool starts")
}

/// One worker, with the settings `knobs` adds.
async fn one_worker_pool(
    method: StartMethod,
    knobs: impl FnOnce(jobvisor_pool::PoolBuilder) -> jobvisor_pool::PoolBuilder,
) -> Pool {
    knobs(Pool::builder().workers(1).start_method(method))
        .build()
        .await
        .expect("pool starts")
}

/// One worker, with a grace before SIGTERM that a loaded machine cannot run
/// out of: for tests of tasks that stop when told (a task that did not would
/// still lose its worker, 5 s later).
async fn patient_pool(method: StartMethod) -> Pool {
    one_worker_pool(method, |b| b.cancel_grace(Duration::from_secs(5))).await
}

/// One worker, with short grace periods before SIGTERM and SIGKILL.
async fn quick_kill_pool(method: StartMethod) -> Pool {
    one_worker_pool(method, |b| {
        b.cancel_grace(Duration::from_millis(50))
            .term_grace(Duration::from_millis(200))
    })
    .await
}

/// One worker recycled once its resident set passes 64 MiB.
async fn soft_limit_pool(method: StartMethod) -> Pool {
    one_worker_pool(method, |b| b.memory_soft_limit_bytes(64 << 20)).await
}

async fn next_ready(events: &mut tokio::sync::broadcast::Receiver<PoolEvent>) -> u32 {
    loop {
        match events.recv().await.expect("events") {
            PoolEvent::WorkerReady { pid, .. } => return pid,
            _ => continue,
        }
    }
}

async fn assert_no_zombies() {
    let z = helper::zombie_children();
    assert!(z.is_empty(), "zombie children: {z:?}");
}

macro_rules! tests {
    ($($name:ident $(only $m:ident)?),* $(,)?) => {
        vec![$(Test {
            name: stringify!($name),
            run: (|m| Box::pin($name(m))) as TestFn,
            only: None $(.or(Some(StartMethod::$m)))?,
        }),*]
    };
}

// ---- tests -----------------------------------------------------------------

async fn results_are_correct(method: StartMethod) {
    let pool = pool(method, 2).await;
    assert_eq!(pool.apply::<Noop>(&41).await.unwrap(), 41);
    let outs = pool.map::<Noop>((0..1000).collect(), 1).await.unwrap();
    assert_eq!(outs, (0..1000).collect::<Vec<u64>>());
    let outs = pool.map::<Noop>((0..1000).collect(), 0).await.unwrap();
    assert_eq!(outs, (0..1000).collect::<Vec<u64>>());
    let mut seen = HashSet::new();
    let mut it = pool.imap_unordered::<Noop, _>(0..500u64, 7);
    while let Some((i, r)) = it.next().await {
        assert_eq!(r.unwrap(), i as u64);
        assert!(seen.insert(i));
    }
    assert_eq!(seen.len(), 500);
    let spun = pool.apply::<Spin>(&SpinInput { ms: 5 }).await.unwrap();
    assert!(spun.iterations > 0);
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn hundred_thousand_tasks(method: StartMethod) {
    let pool = pool(method, 2).await;
    let n = 100_000u64;
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        handles.push(pool.submit::<Noop>(&(i * 3)).await.unwrap());
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i as u64 * 3);
    }
    let outs = pool.map::<Noop>((0..n).collect(), 0).await.unwrap();
    assert!(outs.iter().enumerate().all(|(i, &o)| o == i as u64));
    pool.shutdown().await;
}

async fn sigkill_mid_task_fails_only_that_task(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let pool = pool(method, 2).await;
    let mut events = pool.events();
    let victim = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    let pid: u32 = helper::read_fifo_line(fifo.clone()).await.parse().unwrap();
    // Others keep flowing while the victim is running.
    let others: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..200u64 {
            v.push(pool.submit::<Noop>(&i).await.unwrap());
        }
        v
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (p, status) = died(victim.await);
    assert_eq!((p, status.signal), (pid, Some(libc::SIGKILL)));
    for (i, h) in others.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i as u64);
    }
    // The replacement comes up and the pool is back to two live workers.
    let new_pid = next_ready(&mut events).await;
    assert_ne!(new_pid, pid);
    let workers = pool.workers().await;
    let live: Vec<_> = workers.iter().filter(|w| helper::alive(w.pid)).collect();
    assert_eq!(live.len(), 2, "{workers:?}");
    assert!(!helper::alive(pid));
    assert_no_zombies().await;
    pool.shutdown().await;
}

async fn crash_reports_exit_code_and_last_output(method: StartMethod) {
    let pool = pool(method, 1).await;
    match pool.apply::<Die>(&DieHow::Exit(7)).await {
        Err(PoolError::WorkerDied {
            status,
            stderr_tail,
            ..
        }) => {
            assert_eq!(status.code, Some(7));
            assert!(
                stderr_tail.iter().any(|l| l.contains("last words")),
                "{stderr_tail:?}"
            );
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // (Not SIGSEGV: std's stack-overflow handler swallows a raised SIGSEGV.)
    match pool.apply::<Die>(&DieHow::Signal(libc::SIGABRT)).await {
        Err(e @ PoolError::WorkerDied { .. }) => {
            assert!(e.to_string().contains("SIGABRT"), "{e}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // The pool is not broken.
    assert_eq!(pool.apply::<Noop>(&5).await.unwrap(), 5);
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn panic_and_error_keep_the_worker(method: StartMethod) {
    let pool = pool(method, 1).await;
    let before = pool.apply::<Pid>(&()).await.unwrap();
    match pool.apply::<Panics>(&"boom 17".into()).await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Panic);
            assert!(f.message.contains("boom 17"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    match pool.apply::<Fails>(&"nope".into()).await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Error);
            assert_eq!(f.message, "nope");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    assert_eq!(
        pool.apply::<Pid>(&()).await.unwrap(),
        before,
        "the worker was replaced"
    );
    pool.shutdown().await;
}

async fn infinite_loop_hits_timeout_and_worker_is_replaced(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let mut events = pool.events();
    let before = pool.apply::<Pid>(&()).await.unwrap();
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    let h = pool.submit_with::<Forever>(&false, opts).await.unwrap();
    match h.await {
        Err(PoolError::TimedOut { timeout_ms, how }) => {
            assert_eq!(timeout_ms, 100);
            assert!(how.contains("SIGTERM"), "{how}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    // One that ignores SIGTERM needs SIGKILL.
    let h = pool.submit_with::<Forever>(&true, opts).await.unwrap();
    match h.await {
        Err(PoolError::TimedOut { how, .. }) => assert!(how.contains("SIGKILL"), "{how}"),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    let after = next_ready(&mut events).await;
    assert_ne!(after, before);
    pool.shutdown().await;
    // A cooperative task stops at its soft deadline without losing the
    // worker.
    let pool = patient_pool(method).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let h = pool
        .submit_with::<Spin>(&SpinInput { ms: 60_000 }, opts)
        .await
        .unwrap();
    match h.await {
        Err(PoolError::TimedOut { how, .. }) => assert!(how.contains("soft deadline"), "{how}"),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// Waits until a worker's beacon shows call `id` running; its pid.
async fn running_on(pool: &Pool, id: u64) -> u32 {
    loop {
        if let Some(w) = pool.workers().await.iter().find(|w| w.running == Some(id)) {
            return w.pid;
        }
        tokio::task::yield_now().await;
    }
}

async fn a_crash_past_the_deadline_is_a_crash_not_a_timeout(method: StartMethod) {
    let pool = patient_pool(method).await;
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    // Past its deadline, ignoring it: the pool waits out the grace (5 s)
    // before it signals anything.
    let h = pool.submit_with::<Forever>(&false, opts).await.unwrap();
    let pid = running_on(&pool, h.id()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Then the worker dies of something else (here: an outside SIGKILL, as
    // from the OOM killer): the call reports that death, not a timeout.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (died_pid, status) = died(h.await);
    assert_eq!((died_pid, status.signal), (pid, Some(libc::SIGKILL)));
    assert_eq!(pool.health().deaths, 1, "counted as a death");
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn a_hung_call_queued_behind_a_finished_one_still_times_out(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(300)),
        ..CallOptions::default()
    };
    // While a spin holds the worker, a quick call and a hung one with a
    // timeout queue up behind it in the worker: it runs them back to back.
    let spin = pool.submit::<Spin>(&SpinInput { ms: 300 }).await.unwrap();
    let quick = pool.submit::<Noop>(&5).await.unwrap();
    let hung = pool.submit_with::<Forever>(&false, opts).await.unwrap();
    spin.await.unwrap();
    // The quick call's answer is not held back for the hung call's whole
    // run (for ever: it never looks at its ctx, the worker never flushes)...
    let r = tokio::time::timeout(Duration::from_secs(30), quick)
        .await
        .expect("the finished call is answered while the next one hangs");
    assert_eq!(r.unwrap(), 5);
    // ... and the hung call's deadline is watched: it is killed at it.
    let r = tokio::time::timeout(Duration::from_secs(30), hung)
        .await
        .expect("the hung call's timeout is enforced");
    assert!(
        matches!(&r, Err(PoolError::TimedOut { how, .. }) if how.contains("SIGTERM")),
        "{r:?}"
    );
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn a_timeout_counts_from_when_the_worker_starts_the_call(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let worker = nix::unistd::Pid::from_raw(pid as i32);
    // A worker that cannot get to the call (stopped here; on a loaded
    // machine, not scheduled yet) has not started its clock.
    nix::sys::signal::kill(worker, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    let h = pool
        .submit_with::<Spin>(&SpinInput { ms: 60_000 }, opts)
        .await
        .unwrap();
    // Let the whole escalation the supervisor would run on its own clock
    // pass (100 ms + 50 ms grace + 200 ms to SIGKILL): there is no event
    // for "nothing happened", only time.
    tokio::time::sleep(Duration::from_millis(700)).await;
    nix::sys::signal::kill(worker, nix::sys::signal::Signal::SIGCONT).unwrap();
    match h.await {
        Err(PoolError::TimedOut { how, .. }) => assert!(how.contains("soft deadline"), "{how}"),
        other => panic!("expected TimedOut at the worker's own deadline, got {other:?}"),
    }
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid, "not killed");
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn stdout_noise_does_not_corrupt_the_protocol(method: StartMethod) {
    let pool = pool(method, 2).await;
    let outs = pool.map::<Chatty>(vec![2000; 8], 1).await.unwrap();
    assert_eq!(outs, vec![4000; 8]);
    assert_eq!(pool.apply::<Noop>(&9).await.unwrap(), 9);
    pool.shutdown().await;
}

async fn thousand_restarts_leak_no_fds(method: StartMethod) {
    let pool = Pool::builder()
        .workers(2)
        .start_method(method)
        .max_tasks_per_worker(1)
        .build()
        .await
        .unwrap();
    // Quiescent: two fresh workers, nothing in flight.
    let before = helper::fd_count();
    let calls = 1000u64;
    // Every call retires its worker and starts a replacement; wait until all
    // of them have been started and every retired one reaped.
    let mut events = pool.events();
    let settled = tokio::spawn(async move {
        let (mut ready, mut exited) = (0u64, 0u64);
        while !(ready == calls && exited == calls) {
            match events.recv().await.expect("events") {
                PoolEvent::WorkerReady { .. } => ready += 1,
                PoolEvent::WorkerExited { .. } => exited += 1,
                _ => {}
            }
        }
    });
    let outs = pool.map::<Noop>((0..calls).collect(), 1).await.unwrap();
    assert_eq!(outs, (0..calls).collect::<Vec<_>>());
    settled.await.expect("1000 restarts, all reaped");
    let after = helper::fd_count();
    assert_eq!(
        after, before,
        "fds went from {before} to {after} over 1000 worker restarts"
    );
    let pids: HashSet<u32> = {
        let mut s = HashSet::new();
        for _ in 0..4 {
            s.insert(pool.apply::<Pid>(&()).await.unwrap());
        }
        s
    };
    assert_eq!(pids.len(), 4, "every call ran in a fresh worker");
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn bad_input_fails_only_that_call(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.max_frame_bytes(64 * 1024)).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    match pool
        .submit_raw("no.such.task", vec![], CallOptions::default())
        .await
    {
        Err(PoolError::UnknownTask { name, known }) => {
            assert_eq!(name, "no.such.task");
            assert!(known.contains("spin"));
        }
        other => panic!("expected UnknownTask, got {other:?}"),
    }
    let h = pool
        .submit_raw("spin", vec![0xff; 3], CallOptions::default())
        .await
        .unwrap();
    match h.raw().await {
        Err(PoolError::Task(f)) => assert_eq!(f.kind, FailureKind::BadInput),
        other => panic!("expected BadInput, got {other:?}"),
    }
    match pool.submit::<Chatty>(&0).await.map(|_| ()) {
        Ok(()) => {}
        Err(e) => panic!("small input refused: {e}"),
    }
    let big = "x".repeat(100 * 1024);
    match pool.submit::<Fails>(&big).await {
        Err(PoolError::InputTooLarge { bytes, max }) => assert!(bytes > max),
        other => panic!("expected InputTooLarge, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        pool.apply::<Pid>(&()).await.unwrap(),
        pid,
        "worker unaffected"
    );
    pool.shutdown().await;
}

async fn cancel_queued_and_running(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let pool = patient_pool(method).await;
    let running = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    let running_id = running.id();
    let queued = pool
        .submit_io::<Sleep>(&SleepInput { ms: 60_000 })
        .await
        .unwrap();
    let pid: u32 = helper::read_fifo_line(fifo).await.parse().unwrap();
    // The worker says what it runs (its beacon): the async call it holds is
    // not a CPU call.
    let shown: Vec<Option<u64>> = pool.workers().await.iter().map(|w| w.running).collect();
    assert_eq!(shown, vec![Some(running_id)]);
    queued.cancel().await;
    assert!(matches!(queued.await, Err(PoolError::Cancelled)));
    running.cancel().await;
    let r = running.await;
    assert!(matches!(r, Err(PoolError::Cancelled)), "{r:?}");
    assert_eq!(
        pool.apply::<Pid>(&()).await.unwrap(),
        pid,
        "cooperative cancel keeps the worker"
    );
    let shown: Vec<Option<u64>> = pool.workers().await.iter().map(|w| w.running).collect();
    assert_eq!(shown, vec![None], "idle");
    pool.shutdown().await;
}

async fn graceful_shutdown_drains(method: StartMethod) {
    let pool = pool(method, 2).await;
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(pool.submit::<Spin>(&SpinInput { ms: 10 }).await.unwrap());
    }
    let p2 = pool.clone();
    let stop = tokio::spawn(async move { p2.shutdown().await });
    for h in handles {
        assert!(h.await.is_ok());
    }
    stop.await.unwrap();
    // After shutdown, new work is refused and no worker is left.
    assert!(matches!(
        pool.submit::<Noop>(&1).await,
        Err(PoolError::Closed)
    ));
    if let Some(fs) = jobvisor_pool::fork_server_pid() {
        let left = helper::children_of(fs);
        let cmd: Vec<String> = left
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
            .collect();
        assert_eq!(left, Vec::<u32>::new(), "{cmd:?}");
    }
    assert_eq!(helper::children_of(std::process::id()), Vec::<u32>::new());
    assert_no_zombies().await;
}

async fn terminate_fails_running_and_queued(method: StartMethod) {
    let pool = pool(method, 1).await;
    let a = pool
        .submit_io::<Sleep>(&SleepInput { ms: 60_000 })
        .await
        .unwrap();
    let b = pool
        .submit_io::<Sleep>(&SleepInput { ms: 60_000 })
        .await
        .unwrap();
    pool.clone().terminate().await;
    assert!(matches!(a.await, Err(PoolError::Closed)));
    assert!(matches!(b.await, Err(PoolError::Closed)));
    assert_no_zombies().await;
}

async fn initializer_state_reaches_workers(method: StartMethod) {
    let pool = pool(method, 2).await;
    let outs = pool.map::<Preloaded>(vec![(); 4], 1).await.unwrap();
    assert!(outs.iter().all(|o| *o == Some(4242)), "{outs:?}");
    pool.shutdown().await;
}

async fn exec_task_through_the_pool(method: StartMethod) {
    use jobvisor_tasks::{Exec, ExecInput};
    let pool = pool(method, 2).await;
    let out = pool
        .apply::<Exec>(&ExecInput::new(["sh", "-c", "echo hello; exit 3"]))
        .await
        .unwrap();
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout, b"hello\n");
    pool.shutdown().await;
}

async fn resize_grows_and_shrinks_without_losing_calls(method: StartMethod) {
    let pool = pool(method, 2).await;
    let mut events = pool.events();
    let running: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(pool.submit::<Spin>(&SpinInput { ms: 30 }).await.unwrap());
        }
        v
    };
    pool.resize(3).await;
    next_ready(&mut events).await;
    pool.resize(1).await;
    let mut exited = 0;
    while exited < 2 {
        if let PoolEvent::WorkerExited { status, .. } = events.recv().await.unwrap() {
            assert_eq!(
                status.code,
                Some(0),
                "surplus workers exit cleanly: {status}"
            );
            exited += 1;
        }
    }
    for h in running {
        assert!(h.await.is_ok());
    }
    let live = pool.workers().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(pool.apply::<Noop>(&3).await.unwrap(), 3);
    pool.shutdown().await;
}

async fn memory_limit_fails_the_task_and_replaces_the_worker(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.memory_limit_bytes(1 << 30)).await;
    match pool.apply::<Hog>(&()).await {
        Err(e @ PoolError::WorkerDied { .. }) => {
            let PoolError::WorkerDied { ref cause, .. } = e else {
                unreachable!()
            };
            assert_eq!(
                cause.as_deref(),
                Some("memory limit exceeded (1024 MiB)"),
                "{e}"
            );
        }
        other => panic!("expected a memory-limit death, got {other:?}"),
    }
    assert_eq!(pool.apply::<Noop>(&1).await.unwrap(), 1, "the pool goes on");
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn soft_memory_limit_recycles_between_calls(method: StartMethod) {
    let pool = soft_limit_pool(method).await;
    let mut events = pool.events();
    // Queue a second call behind the one that leaks: it must not fail.
    let first = pool.submit::<Hold>(&128).await.unwrap();
    let second = pool.submit::<Pid>(&()).await.unwrap();
    let fat = first
        .await
        .expect("the call that crossed the soft limit succeeds");
    let next = second
        .await
        .expect("queued calls are re-dispatched, not failed");
    assert_ne!(fat, next, "the worker over its soft limit was recycled");
    loop {
        if let PoolEvent::WorkerExited { pid, status, .. } = events.recv().await.unwrap() {
            assert_eq!(pid, fat);
            assert_eq!(status.code, Some(0), "recycled cleanly: {status}");
            break;
        }
    }
    pool.shutdown().await;
}

async fn soft_memory_limit_drains_a_worker_with_async_calls(method: StartMethod) {
    let pool = soft_limit_pool(method).await;
    let mut events = pool.events();
    // Async calls beside the leak keep running: draining fails nothing.
    let (listener, port) = loopback().await;
    let waiter = pool.submit_io::<Rendezvous>(&port).await.unwrap();
    let mut met = accept_met(&listener).await;
    let fat = pool.apply_io::<IoLeak>(&128).await.unwrap();
    assert_eq!(met.pid, fat);
    // The worker announced it drains: a replacement starts, and new calls go
    // there while the old one finishes what it holds.
    let fresh = tokio::time::timeout(Duration::from_secs(30), next_ready(&mut events))
        .await
        .expect("the draining worker gets a replacement");
    assert_ne!(fresh, fat);
    assert_eq!(pool.apply_io::<IoLeak>(&0).await.unwrap(), fresh);
    assert!(helper::alive(fat), "still finishing its async call");
    met.stream.write_all(b"x").await.unwrap();
    assert_eq!(waiter.await.unwrap(), fat);
    loop {
        if let PoolEvent::WorkerExited { pid, status, .. } = events.recv().await.unwrap() {
            assert_eq!(pid, fat);
            assert_eq!(status.code, Some(0), "recycled cleanly: {status}");
            break;
        }
    }
    pool.shutdown().await;
}

async fn stall_timeout_catches_a_stopped_worker(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let pool = one_worker_pool(method, |b| {
        b.cancel_grace(Duration::from_millis(100))
            .term_grace(Duration::from_millis(100))
    })
    .await;
    let opts = CallOptions {
        stall_timeout: Some(Duration::from_millis(300)),
        ..CallOptions::default()
    };
    // A task that heartbeats is not stalled, however long it runs.
    let fifo = helper::mkfifo(dir.path(), "a");
    let h = pool
        .submit_with::<Beat>(&(fifo.to_string_lossy().into_owned(), 900), opts)
        .await
        .unwrap();
    helper::read_fifo_line(fifo).await;
    h.await.expect("a beating task runs to the end");
    // The same task, its worker SIGSTOPped: caught by the watchdog.
    let fifo = helper::mkfifo(dir.path(), "b");
    let h = pool
        .submit_with::<Beat>(&(fifo.to_string_lossy().into_owned(), 60_000), opts)
        .await
        .unwrap();
    let pid: i32 = helper::read_fifo_line(fifo).await.parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    match h.await {
        Err(PoolError::Stalled { stall_ms, how }) => {
            assert_eq!(stall_ms, 300);
            assert!(
                how.contains("SIGKILL"),
                "a stopped worker needs SIGKILL: {how}"
            );
        }
        other => panic!("expected Stalled, got {other:?}"),
    }
    assert_eq!(pool.apply::<Noop>(&2).await.unwrap(), 2);
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// Replies travel in batches, so when a worker dies some finished calls may
/// not have been reported yet: the death must be charged to the call that was
/// running (the worker's beacon says which), never to one that had finished.
async fn a_death_is_charged_to_the_call_that_caused_it(method: StartMethod) {
    // 50 deliberate crashes: lift the restart intensity, which would
    // otherwise (rightly) slow the restarts down.
    let pool = one_worker_pool(method, |b| {
        b.restart_intensity(1000, Duration::from_secs(1))
    })
    .await;
    let mut noops = Vec::new();
    let mut crashes = Vec::new();
    for i in 0..50u64 {
        noops.push(pool.submit::<Noop>(&i).await.unwrap());
        crashes.push(
            pool.submit::<Die>(&DieHow::Signal(libc::SIGKILL))
                .await
                .unwrap(),
        );
    }
    for (i, h) in noops.into_iter().enumerate() {
        assert_eq!(
            h.await.unwrap(),
            i as u64,
            "an innocent call was charged with a crash"
        );
    }
    for h in crashes {
        assert!(matches!(h.await, Err(PoolError::WorkerDied { .. })));
    }
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn call_usage_tells_computing_from_waiting(method: StartMethod) {
    let pool = pool(method, 1).await;
    let input = jobvisor_proto_input(&SpinInput { ms: 60 });
    let spin = pool
        .submit_raw("spin", input, CallOptions::default())
        .await
        .unwrap()
        .report()
        .await;
    // The worker's event loop starts with its first async call: start it
    // first, so that its start-up is not measured as the sleep's.
    pool.submit_io::<Sleep>(&SleepInput { ms: 0 })
        .await
        .unwrap()
        .await
        .unwrap();
    // Long enough that a poll preempted on a loaded machine (the hold is
    // timed by the wall clock) stays well under a tenth of it.
    let input = jobvisor_proto_input(&SleepInput { ms: 250 });
    let sleep = pool
        .submit_raw("sleep", input, CallOptions::default())
        .await
        .unwrap()
        .report()
        .await;
    let (spin, sleep) = (spin.usage.unwrap(), sleep.usage.unwrap());
    assert!(spin.wall >= Duration::from_millis(60) && sleep.wall >= Duration::from_millis(60));
    // Sleeping is almost no CPU; spinning is CPU whenever it has a core (on
    // an oversubscribed machine it also waits for one): compare the shares.
    assert!(sleep.cpu * 10 < sleep.wall, "sleep: {sleep:?}");
    let share = |u: jobvisor_pool::CallUsage| u.cpu.as_secs_f64() / u.wall.as_secs_f64();
    assert!(
        share(spin) > 4.0 * share(sleep).max(0.001),
        "spin {spin:?} vs sleep {sleep:?}"
    );
    // An async task that blocks its loop shows it in its longest poll; one
    // that awaits does not.
    let hold = pool
        .submit_raw(
            "test.hold_loop",
            jobvisor_proto_input(&40u64),
            CallOptions::default(),
        )
        .await
        .unwrap()
        .report()
        .await
        .usage
        .unwrap();
    assert!(hold.max_poll >= Duration::from_millis(40), "{hold:?}");
    assert!(
        sleep.max_poll < hold.max_poll,
        "sleep {sleep:?} vs hold {hold:?}"
    );
    assert_eq!(spin.max_poll, Duration::ZERO, "CPU calls have no polls");
    pool.shutdown().await;
}

/// The codec's encoding of an input, as `submit` produces it.
fn jobvisor_proto_input<T: Serialize>(v: &T) -> Vec<u8> {
    jobvisor_proto::codec::encode(v).expect("encode")
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14..17 of stat, 12..15 after the ')'.
    let ticks: f64 = f.get(11..15).map_or(0.0, |v| {
        v.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

async fn restart_intensity_bounds_a_crash_loop(method: StartMethod) {
    let flag = die_flag();
    let _ = std::fs::remove_file(&flag);
    let pool = Pool::builder()
        .workers(2)
        .start_method(method)
        .restart_intensity(3, Duration::from_secs(1))
        .restart_backoff(
            Duration::from_millis(100),
            Duration::from_millis(400),
            // Far above a failed start plus the longest delay, even on a
            // loaded machine where a spawned worker takes long to exec:
            // the crash loop never looks healthy in between.
            Duration::from_secs(3),
        )
        .build()
        .await
        .unwrap();
    let mut events = pool.events();
    std::fs::write(&flag, b"x").unwrap();
    let cpu_before =
        cpu_seconds(std::process::id()) + jobvisor_pool::fork_server_pid().map_or(0.0, cpu_seconds);
    let wall = std::time::Instant::now();
    for w in pool.workers().await {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let mut exited = 0;
    let mut failed = 0u32;
    while exited < 2 {
        match events.recv().await.unwrap() {
            PoolEvent::WorkerExited { .. } => exited += 1,
            PoolEvent::WorkerStartFailed { .. } => failed += 1,
            _ => {}
        }
    }
    // Work submitted while no worker can start is kept, not failed.
    let kept = pool.submit::<Noop>(&77).await.unwrap();
    // Count failed starts over 1.5 s of a crash loop.
    let window = tokio::time::sleep(Duration::from_millis(1500));
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => break,
            ev = events.recv() => {
                if let Ok(PoolEvent::WorkerStartFailed { .. }) = ev {
                    failed += 1;
                }
            }
        }
    }
    let cpu = cpu_seconds(std::process::id())
        + jobvisor_pool::fork_server_pid().map_or(0.0, cpu_seconds)
        - cpu_before;
    let health = pool.health();
    assert!(health.degraded, "{health:?}");
    assert!(failed >= 3, "the loop was observed: {failed}");
    // Unbounded, this loop forks hundreds of workers a second; with the
    // intensity rule it is a handful plus one per backoff step.
    assert!(
        failed <= 20,
        "restarts were not bounded: {failed} failed starts in 1.5 s"
    );
    assert!(
        cpu < 0.5 * wall.elapsed().as_secs_f64(),
        "CPU was pegged: {cpu:.2}s in {:?}",
        wall.elapsed()
    );
    // The cause goes away: the pool recovers by itself and runs the kept work.
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(kept.await.unwrap(), 77);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pool.health().degraded {
        assert!(
            std::time::Instant::now() < deadline,
            "still degraded: {:?}",
            pool.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
    assert_no_zombies().await;
}

// ---- async calls on the workers' event loops --------------------------------

/// A connection from an async test task: its tag and its worker's pid.
struct Met {
    tag: u8,
    pid: u32,
    stream: tokio::net::TcpStream,
}

async fn accept_met(listener: &tokio::net::TcpListener) -> Met {
    try_accept_met(listener)
        .await
        .expect("the async call says hello before it goes")
}

/// The next connection, or `None` when it closed before its hello: its
/// worker was killed between `connect` and `write`.
async fn try_accept_met(listener: &tokio::net::TcpListener) -> Option<Met> {
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
        .await
        .expect("an async call connects within 60 s")
        .unwrap();
    let mut hello = [0u8; 5];
    match stream.read_exact(&mut hello).await {
        Ok(_) => Some(Met {
            tag: hello[0],
            pid: u32::from_le_bytes([hello[1], hello[2], hello[3], hello[4]]),
            stream,
        }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(e) => panic!("reading an async call's hello: {e}"),
    }
}

async fn loopback() -> (tokio::net::TcpListener, u16) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Answers every async test task that connects, on any worker, until
/// aborted; says who connected (tag, worker pid) on the channel.
fn answer_everyone(
    listener: tokio::net::TcpListener,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(u8, u32)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            // Tests here kill workers: a caller may die before its hello.
            let Some(mut m) = try_accept_met(&listener).await else {
                continue;
            };
            let _ = tx.send((m.tag, m.pid));
            let _ = m.stream.write_all(b"x").await;
            held.push(m);
        }
    });
    (acceptor, rx)
}

/// The pid and exit status of a call that failed with `WorkerDied`.
fn died<T: std::fmt::Debug>(r: Result<T, PoolError>) -> (u32, jobvisor_pool::ExitStatus) {
    match r {
        Err(PoolError::WorkerDied { pid, status, .. }) => (pid, status),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

async fn io_calls_run_together_beside_cpu_calls(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.io_concurrency_per_worker(64)).await;
    let (listener, port) = loopback().await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        calls.push(pool.submit_io::<Rendezvous>(&port).await.unwrap());
    }
    // All 50 are connected at once: one worker runs them concurrently (a
    // worker running them one by one would never get past the second).
    let mut met = Vec::new();
    for _ in 0..50 {
        met.push(accept_met(&listener).await);
    }
    let pid = met[0].pid;
    assert!(met.iter().all(|m| m.tag == TAG_WAIT && m.pid == pid));
    // While they all wait, the same worker's CPU thread still answers.
    assert_eq!(pool.apply::<Noop>(&7).await.unwrap(), 7);
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    for m in &mut met {
        m.stream.write_all(b"x").await.unwrap();
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), pid);
    }
    // And the converse: an async call finishes while a CPU call holds the
    // worker's CPU thread.
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let cpu = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    assert_eq!(
        helper::read_fifo_line(fifo).await.parse::<u32>().unwrap(),
        pid
    );
    let io = pool.submit_io::<Rendezvous>(&port).await.unwrap();
    let mut m = accept_met(&listener).await;
    m.stream.write_all(b"x").await.unwrap();
    assert_eq!(io.await.unwrap(), pid);
    cpu.cancel().await;
    assert!(matches!(cpu.await, Err(PoolError::Cancelled)));
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn io_timeout_cancel_and_panic_keep_the_worker(method: StartMethod) {
    let pool = pool(method, 1).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    let r = pool
        .submit_io_with::<Pending>(&(), opts)
        .await
        .unwrap()
        .await;
    assert!(matches!(r, Err(PoolError::TimedOut { .. })), "{r:?}");
    let waiting = pool.submit_io::<Pending>(&()).await.unwrap();
    let panics = pool.submit_io::<AsyncPanics>(&()).await.unwrap();
    match panics.await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Panic);
            assert!(f.message.contains("async boom"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    waiting.cancel().await;
    let r = waiting.await;
    assert!(matches!(r, Err(PoolError::Cancelled)), "{r:?}");
    // Dropping futures is how async calls stop: the worker lives on.
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    pool.shutdown().await;
}

async fn a_blocked_event_loop_is_killed_and_only_its_blocker_fails(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let (listener, port) = loopback().await;
    // Long enough for the blocker to meet the test before its deadline on a
    // loaded machine: dropped at its deadline while still meeting, it would
    // end cooperatively, with no kill to see.
    let opts = CallOptions {
        timeout: Some(Duration::from_secs(1)),
        ..CallOptions::default()
    };
    let blocker = pool.submit_io_with::<BlockLoop>(&port, opts).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(pool.submit_io::<Rendezvous>(&port).await.unwrap());
    }
    // Answer every waiter that connects, on the old worker or on its
    // replacement; remember the blocker's worker.
    let (acceptor, mut met) = answer_everyone(listener);
    let blocked_pid = loop {
        match met.recv().await.unwrap() {
            (TAG_BLOCK, pid) => break pid,
            _ => continue,
        }
    };
    let r = blocker.await;
    assert!(
        matches!(&r, Err(PoolError::TimedOut { how, .. }) if how.contains("SIG")),
        "{r:?}"
    );
    // The waiters were innocent: they ran again (or had finished) and succeed.
    for w in waiters {
        w.await.unwrap();
    }
    let now = pool.apply::<Pid>(&()).await.unwrap();
    assert_ne!(now, blocked_pid, "the blocked worker was replaced");
    assert!(!helper::alive(blocked_pid));
    acceptor.abort();
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn a_crash_in_a_poll_is_charged_to_that_call(method: StartMethod) {
    let pool = pool(method, 1).await;
    let (listener, port) = loopback().await;
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(pool.submit_io::<Rendezvous>(&port).await.unwrap());
    }
    let crasher = pool.submit_io::<AbortInPoll>(&port).await.unwrap();
    let (acceptor, _met) = answer_everyone(listener);
    // A crash charged to nobody would re-run the crasher forever: bound it.
    let r = tokio::time::timeout(Duration::from_secs(60), crasher)
        .await
        .expect("the crash is charged to the call that was being polled");
    assert_eq!(died(r).1.signal, Some(libc::SIGABRT));
    for w in waiters {
        w.await.unwrap();
    }
    acceptor.abort();
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn panics_outside_the_task_body_fail_one_call(method: StartMethod) {
    let pool = pool(method, 1).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    // On the event loop: caught, the call fails, the worker lives on.
    match pool.apply_io::<IoDecodePanics>(&PanicsOnDecode).await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Panic);
            assert!(f.message.contains("decode boom"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    // On the CPU thread, outside the task's catch_unwind: the worker dies
    // (rather than hang with its event loop still up), the call is charged,
    // and the pool goes on.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        pool.apply::<CpuDecodePanics>(&PanicsOnDecode),
    )
    .await
    .expect("answered, not hung");
    let (p, status) = died(r);
    assert_eq!((p, status.signal), (pid, Some(libc::SIGABRT)));
    assert_ne!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn an_abort_on_the_event_loop_is_not_charged_to_the_cpu_call(method: StartMethod) {
    let pool = pool(method, 1).await;
    let (listener, port) = loopback().await;
    let spin = pool.submit::<Spin>(&SpinInput { ms: 300 }).await.unwrap();
    let crasher = pool.submit_io::<AbortInPoll>(&port).await.unwrap();
    let (acceptor, _met) = answer_everyone(listener);
    let r = tokio::time::timeout(Duration::from_secs(60), crasher)
        .await
        .expect("charged, not re-run forever");
    assert_eq!(died(r).1.signal, Some(libc::SIGABRT));
    // The worker's SIGABRT handler said the lane aborted: the spin that was
    // running on the CPU thread is innocent and runs again.
    spin.await.expect("the CPU call is not charged");
    acceptor.abort();
    pool.shutdown().await;
    assert_no_zombies().await;
}

async fn cpu_calls_over_the_soft_limit_drain_a_worker_holding_async_calls(method: StartMethod) {
    let pool = soft_limit_pool(method).await;
    let mut events = pool.events();
    let (listener, port) = loopback().await;
    let held = pool.submit_io::<IoHoldMeet>(&(port, 100)).await.unwrap();
    let mut met = accept_met(&listener).await;
    // CPU calls finish while the async call holds the memory: the worker
    // must drain, not leave (which would re-run the async call for ever).
    for i in 0..3u64 {
        assert_eq!(pool.apply::<Noop>(&i).await.unwrap(), i);
    }
    let fresh = tokio::time::timeout(Duration::from_secs(30), next_ready(&mut events))
        .await
        .expect("the draining worker gets a replacement");
    assert_ne!(fresh, met.pid);
    met.stream.write_all(b"x").await.unwrap();
    assert_eq!(held.await.unwrap(), met.pid, "finished where it ran");
    // It ran once: no second connection from a re-run.
    let again = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(again.is_err(), "the async call ran again");
    pool.shutdown().await;
}

async fn control_commands_do_not_wait_behind_a_full_queue(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let pool = one_worker_pool(method, |b| b.max_queued(4).window(1)).await;
    let running = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    helper::read_fifo_line(fifo).await;
    // Fill the queue, then keep submitters waiting for room.
    let mut queued = Vec::new();
    for i in 0..4u64 {
        queued.push(pool.submit::<Noop>(&i).await.unwrap());
    }
    let mut blocked = Vec::new();
    for i in 0..8u64 {
        let p = pool.clone();
        blocked.push(tokio::spawn(async move { p.submit::<Noop>(&i).await }));
    }
    // A snapshot and a cancel get through while the submits wait.
    let within = Duration::from_secs(10);
    let workers = tokio::time::timeout(within, pool.workers())
        .await
        .expect("workers() waited behind the submits");
    assert_eq!(workers.len(), 1);
    tokio::time::timeout(within, queued[0].cancel())
        .await
        .expect("cancel waited behind the submits");
    assert!(matches!(queued.remove(0).await, Err(PoolError::Cancelled)));
    // And terminate stops everything now.
    tokio::time::timeout(within, pool.clone().terminate())
        .await
        .expect("terminate waited behind the submits");
    assert!(matches!(running.await, Err(PoolError::Closed)));
    for h in queued {
        assert!(matches!(h.await, Err(PoolError::Closed)));
    }
    for b in blocked {
        match b.await.unwrap() {
            Err(PoolError::Closed) => {}
            Ok(h) => assert!(matches!(h.await, Err(PoolError::Closed))),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_no_zombies().await;
}

async fn async_stall_timeouts_follow_heartbeats(method: StartMethod) {
    let pool = pool(method, 1).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let opts = CallOptions {
        stall_timeout: Some(Duration::from_millis(400)),
        ..CallOptions::default()
    };
    // Heartbeats every 20 ms (the worker sends at most one per 100 ms) keep
    // a 1.2 s call alive past a 400 ms stall timeout.
    pool.submit_io_with::<IoBeat>(&1200, opts)
        .await
        .unwrap()
        .await
        .expect("heartbeats reach the supervisor");
    // Silence does not.
    let r = pool
        .submit_io_with::<Pending>(&(), opts)
        .await
        .unwrap()
        .await;
    assert!(matches!(r, Err(PoolError::Stalled { .. })), "{r:?}");
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid, "no kill needed");
    pool.shutdown().await;
}

async fn recycling_counts_calls_of_both_kinds(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.max_tasks_per_worker(4)).await;
    let (listener, port) = loopback().await;
    let held = [
        pool.submit_io::<Rendezvous>(&port).await.unwrap(),
        pool.submit_io::<Rendezvous>(&port).await.unwrap(),
    ];
    let mut met = [accept_met(&listener).await, accept_met(&listener).await];
    let first = met[0].pid;
    let mut cpu = Vec::new();
    for _ in 0..4 {
        cpu.push(pool.submit::<Pid>(&()).await.unwrap());
    }
    let mut cpu = cpu.into_iter();
    // Two async calls and two CPU calls make the worker's four.
    for h in cpu.by_ref().take(2) {
        assert_eq!(h.await.unwrap(), first);
    }
    for m in &mut met {
        m.stream.write_all(b"x").await.unwrap();
    }
    for h in held {
        assert_eq!(h.await.unwrap(), first);
    }
    // The other two run on its replacement.
    for h in cpu {
        assert_ne!(h.await.unwrap(), first);
    }
    pool.shutdown().await;
}

fn main() -> ExitCode {
    // Set before the fork server starts, so every worker inherits it (a
    // spawned worker re-runs main and keeps the inherited value).
    if std::env::var_os(DIE_FLAG_ENV).is_none() {
        std::env::set_var(
            DIE_FLAG_ENV,
            std::env::temp_dir().join(format!("jobvisor-die-{}", std::process::id())),
        );
    }
    let options = BootstrapOptions {
        fork_server: true,
        initializer: Some(Box::new(|| {
            let _ = PRELOADED.set(4242);
        })),
        worker_init: Some(die_if_flagged),
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
    let tests = tests![
        results_are_correct,
        hundred_thousand_tasks,
        sigkill_mid_task_fails_only_that_task,
        crash_reports_exit_code_and_last_output,
        panic_and_error_keep_the_worker,
        infinite_loop_hits_timeout_and_worker_is_replaced,
        a_timeout_counts_from_when_the_worker_starts_the_call,
        a_crash_past_the_deadline_is_a_crash_not_a_timeout,
        a_hung_call_queued_behind_a_finished_one_still_times_out,
        stdout_noise_does_not_corrupt_the_protocol,
        thousand_restarts_leak_no_fds,
        bad_input_fails_only_that_call,
        cancel_queued_and_running,
        graceful_shutdown_drains,
        terminate_fails_running_and_queued,
        initializer_state_reaches_workers,
        exec_task_through_the_pool,
        resize_grows_and_shrinks_without_losing_calls,
        memory_limit_fails_the_task_and_replaces_the_worker,
        soft_memory_limit_recycles_between_calls,
        soft_memory_limit_drains_a_worker_with_async_calls,
        stall_timeout_catches_a_stopped_worker,
        restart_intensity_bounds_a_crash_loop,
        call_usage_tells_computing_from_waiting,
        a_death_is_charged_to_the_call_that_caused_it,
        io_calls_run_together_beside_cpu_calls,
        io_timeout_cancel_and_panic_keep_the_worker,
        a_blocked_event_loop_is_killed_and_only_its_blocker_fails,
        a_crash_in_a_poll_is_charged_to_that_call,
        panics_outside_the_task_body_fail_one_call,
        an_abort_on_the_event_loop_is_not_charged_to_the_cpu_call,
        cpu_calls_over_the_soft_limit_drain_a_worker_holding_async_calls,
        control_commands_do_not_wait_behind_a_full_queue,
        async_stall_timeouts_follow_heartbeats,
        recycling_counts_calls_of_both_kinds,
    ];
    helper::run_all(&tests)
}
