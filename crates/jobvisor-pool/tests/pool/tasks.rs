//! The tasks only these tests use (each dies, hangs, leaks or reports in the
//! way one test needs), and the registry every worker of the binary has.

use std::sync::OnceLock;

use crate::support::*;

// ---- tasks only these tests use -------------------------------------------

/// Dies the way it is told to.
pub(crate) struct Die;
#[derive(Serialize, Deserialize)]
pub(crate) enum DieHow {
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

/// Misbehaves with the descriptors and memory the pool gave its worker:
/// counts its run in a file, then may write over the beacon page (through
/// `/proc/self/mem`, so it needs no descriptor), then dies, writes a frame
/// that does not decode to the reply pipe, or writes half a frame to it.
pub(crate) struct Misbehave;
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MisbehaveHow {
    /// A line is appended here per run.
    pub(crate) runs: String,
    /// Zero the beacon page's slots first.
    pub(crate) scribble: bool,
    pub(crate) then: Then,
}
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) enum Then {
    /// SIGKILL itself.
    Die,
    /// A whole frame that does not decode, and return.
    Garbage,
    /// A frame header that promises bytes that never come, and return.
    HalfFrame,
}
impl Task for Misbehave {
    const NAME: &'static str = "test.misbehave";
    type Input = MisbehaveHow;
    type Output = ();
    fn run(&self, how: MisbehaveHow, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        use std::io::Write;
        let mut runs = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&how.runs)
            .map_err(TaskError::msg)?;
        writeln!(runs, "{}", std::process::id()).map_err(TaskError::msg)?;
        if how.scribble {
            scribble_on_the_beacon();
        }
        match how.then {
            Then::Die => {
                // SAFETY: raising a signal on ourselves.
                unsafe { libc::raise(libc::SIGKILL) };
            }
            Then::Garbage => write_reply_pipe(&[&8u32.to_le_bytes()[..], &[0xff; 8]].concat()),
            Then::HalfFrame => {
                write_reply_pipe(&[&1000u32.to_le_bytes()[..], &[0xff; 10]].concat())
            }
        }
        Ok(())
    }
}

/// Zeroes the first 64 bytes of this process's beacon mapping.
fn scribble_on_the_beacon() {
    use std::io::{Seek, SeekFrom, Write};
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let line = maps
        .lines()
        .find(|l| l.contains("jobvisor-beacon"))
        .expect("the beacon is mapped");
    let start = u64::from_str_radix(line.split('-').next().unwrap(), 16).unwrap();
    let mut mem = std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/self/mem")
        .expect("open /proc/self/mem");
    mem.seek(SeekFrom::Start(start)).unwrap();
    mem.write_all(&[0u8; 64]).expect("write over the beacon");
}

/// Writes `bytes` to the worker's reply pipe: its only write-only pipe above
/// stderr.
fn write_reply_pipe(bytes: &[u8]) {
    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .find(|&fd| {
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            let info =
                std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())
                .unwrap_or(0);
            fd > 2
                && target.to_string_lossy().starts_with("pipe:")
                && flags & libc::O_ACCMODE == libc::O_WRONLY
        })
        .expect("the reply pipe");
    // SAFETY: a write(2) of a borrowed buffer to a descriptor we hold.
    unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
}

pub(crate) struct Panics;
impl Task for Panics {
    const NAME: &'static str = "test.panic";
    type Input = String;
    type Output = ();
    fn run(&self, msg: String, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        panic!("{msg}");
    }
}

pub(crate) struct Fails;
impl Task for Fails {
    const NAME: &'static str = "test.fail";
    type Input = String;
    type Output = ();
    fn run(&self, msg: String, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        Err(TaskError::msg(msg))
    }
}

/// Returns the worker's pid.
pub(crate) struct Pid;
impl Task for Pid {
    const NAME: &'static str = "test.pid";
    type Input = ();
    type Output = u32;
    fn run(&self, _: (), _ctx: &mut Ctx<'_>) -> Result<u32, TaskError> {
        Ok(std::process::id())
    }
}

/// Spins without ever looking at ctx, optionally ignoring SIGTERM.
pub(crate) struct Forever;
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

/// Busy-loops for `ms` without a word to the supervisor (no heartbeat, no
/// look at ctx), then returns its worker's pid.
pub(crate) struct Busy;
impl Task for Busy {
    const NAME: &'static str = "test.busy";
    type Input = u64;
    type Output = u32;
    fn run(&self, ms: u64, _ctx: &mut Ctx<'_>) -> Result<u32, TaskError> {
        let until = std::time::Instant::now() + Duration::from_millis(ms);
        let mut x: u64 = 1;
        while std::time::Instant::now() < until {
            for _ in 0..1024 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        }
        Ok(std::process::id())
    }
}

/// Writes its pid into a FIFO (the test's readiness event), then sleeps
/// cooperatively for the given ms.
pub(crate) struct Announce;
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
pub(crate) struct Chatty;
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
pub(crate) struct Hog;
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
pub(crate) struct Hold;
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
pub(crate) struct Beat;
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
pub(crate) const DIE_FLAG_ENV: &str = "JOBVISOR_TEST_DIE_FLAG";

pub(crate) fn die_if_flagged() {
    if let Some(p) = std::env::var_os(DIE_FLAG_ENV) {
        if std::path::Path::new(&p).exists() {
            eprintln!("worker refuses to start: {} exists", p.to_string_lossy());
            std::process::exit(1);
        }
    }
}

pub(crate) fn die_flag() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os(DIE_FLAG_ENV).expect("set in main"))
}

pub(crate) static PRELOADED: OnceLock<u64> = OnceLock::new();

/// Returns what the initializer preloaded.
pub(crate) struct Preloaded;
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
pub(crate) const TAG_WAIT: u8 = b'W';
pub(crate) const TAG_BLOCK: u8 = b'B';
pub(crate) const TAG_ABORT: u8 = b'A';

/// Connects to the test's listener, says `tag` and its pid, and returns the
/// pid once the test answers one byte. A rendezvous: the test holds every
/// call until all of them are connected, which only concurrent calls can be.
pub(crate) async fn meet(port: u16, tag: u8) -> Result<u32, TaskError> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut hello = vec![tag];
    hello.extend_from_slice(&std::process::id().to_le_bytes());
    s.write_all(&hello).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(std::process::id())
}

pub(crate) struct Rendezvous;
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
pub(crate) struct BlockLoop;
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
pub(crate) struct AbortInPoll;
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
pub(crate) struct Pending;
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
pub(crate) struct HoldLoop;
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
pub(crate) struct IoLeak;
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
pub(crate) struct PanicsOnDecode;
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

pub(crate) struct CpuDecodePanics;
impl Task for CpuDecodePanics {
    const NAME: &'static str = "test.cpu_decode_panics";
    type Input = PanicsOnDecode;
    type Output = ();
    fn run(&self, _: PanicsOnDecode, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        Ok(())
    }
}

/// An input whose decoding panics with its message, under `RUST_BACKTRACE=1`
/// (set in the worker first): the worker's last lines of output are then all
/// backtrace.
#[derive(Debug, Serialize)]
pub(crate) struct PanicsLoudlyOnDecode(pub(crate) String);
impl<'de> Deserialize<'de> for PanicsLoudlyOnDecode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let message = String::deserialize(d)?;
        std::env::set_var("RUST_BACKTRACE", "1");
        panic!("{message}")
    }
}

pub(crate) struct CpuDecodePanicsLoudly;
impl Task for CpuDecodePanicsLoudly {
    const NAME: &'static str = "test.cpu_decode_panics_loudly";
    type Input = PanicsLoudlyOnDecode;
    type Output = ();
    fn run(&self, _: PanicsLoudlyOnDecode, _ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
        Ok(())
    }
}

pub(crate) struct IoDecodePanics;
impl AsyncTask for IoDecodePanics {
    const NAME: &'static str = "test.io_decode_panics";
    type Input = PanicsOnDecode;
    type Output = ();
    async fn run(&self, _: PanicsOnDecode, _ctx: AsyncCtx) -> Result<(), TaskError> {
        Ok(())
    }
}

/// Holds `mib` MiB while it meets the test, then returns its pid.
pub(crate) struct IoHoldMeet;
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
pub(crate) struct IoBeat;
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
pub(crate) struct AsyncPanics;
impl AsyncTask for AsyncPanics {
    const NAME: &'static str = "test.async_panics";
    type Input = ();
    type Output = u32;
    async fn run(&self, _: (), _ctx: AsyncCtx) -> Result<u32, TaskError> {
        tokio::task::yield_now().await;
        panic!("async boom");
    }
}

pub(crate) fn registry() -> Registry {
    let mut r = jobvisor_tasks::builtin();
    r.register(Die)
        .register(Panics)
        .register(Fails)
        .register(Pid)
        .register(Forever)
        .register(Busy)
        .register(Announce)
        .register(Chatty)
        .register(Preloaded)
        .register(Hog)
        .register(Hold)
        .register(Beat)
        .register(CpuDecodePanics)
        .register(CpuDecodePanicsLoudly)
        .register(Misbehave);
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
