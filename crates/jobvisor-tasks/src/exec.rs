//! `"exec"`: runs a program as a child process of the worker.
//!
//! The child gets its own process group, so that stopping it stops everything
//! it started too (as long as those stay in the group). The group dies with
//! the worker: the child has `PR_SET_PDEATHSIG`, and the group is published
//! (`jobvisor_worker::child_group`) for the worker's `SIGTERM` handler and for
//! whoever reaps a worker that died of `SIGKILL`. Output is captured up to a cap while
//! the pipes keep being drained, so a chatty child never blocks. Everything
//! runs on the worker's single thread: one `poll` loop watches the child's
//! pipes, a pidfd for its exit, and the call's cancellation.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use jobvisor_worker::{Ctx, Task, TaskError};
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{killpg, pthread_sigmask, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// `"exec"`: runs a program and collects its exit status and output.
///
/// The call succeeds only when the program exits with one of
/// [`ExecInput::ok_codes`] (by default just 0), as pueue, GNU parallel and
/// systemd have it: a nonzero exit, death by a signal or
/// [`ExecInput::timeout_ms`] passing is a task error, so the job's retry
/// policy applies and its dependents do not run. The error keeps the evidence:
/// the exit code or signal and the last [`ExecInput::error_tail_bytes`] of
/// stderr and stdout. Failing to start the program (not found, bad `cwd`, …)
/// is a task error too.
///
/// The program runs in a new process group. When the call is cancelled or
/// [`ExecInput::timeout_ms`] passes, the group gets `SIGTERM`, then `SIGKILL`
/// after [`ExecInput::kill_grace_ms`]. When the program exits on its own, any
/// process it left behind in its group is killed with `SIGKILL`. Processes
/// that moved to another group or session (`setsid`, daemons) escape both.
///
/// The child also gets `SIGKILL` if the thread that started it dies
/// (`PR_SET_PDEATHSIG`): right for a single-threaded worker, surprising if the
/// task is run from a short-lived thread of a multi-threaded program.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exec;

/// Input of [`Exec`]. [`ExecInput::new`] fills in the defaults; in JSON every
/// field but `argv` may be left out (`{"argv": ["ls", "-l"]}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecInput {
    /// The program and its arguments: any bytes but NUL. The program is
    /// looked up in `PATH` unless it contains a `/`. Must not be empty. In
    /// JSON each is a string, or `{"base64": "..."}` for bytes that are not
    /// UTF-8 (see [`crate::arg_json`]).
    #[serde(with = "crate::args::argv")]
    pub argv: Vec<OsString>,
    /// Environment variables to set, in order (a later entry wins). In JSON
    /// either `{"K": "V", ...}` or `[["K", "V"], ...]`.
    #[serde(default, deserialize_with = "crate::args::env_pairs")]
    pub env: Vec<(String, String)>,
    /// Start from an empty environment instead of the worker's.
    #[serde(default)]
    pub clear_env: bool,
    /// Working directory; the worker's when `None`.
    #[serde(default)]
    pub cwd: Option<String>,
    /// Bytes fed to the program's standard input, which is then closed.
    /// `None` connects standard input to `/dev/null`. If the program exits or
    /// closes its input early, the rest is dropped silently.
    #[serde(default, with = "serde_bytes")]
    pub stdin: Option<Vec<u8>>,
    /// Most bytes kept of each of stdout and stderr; the rest is read and
    /// dropped. 0 means [`ExecInput::DEFAULT_MAX_OUTPUT_BYTES`]. Both streams
    /// travel back in the reply, so keep the pool's output limit in mind.
    #[serde(default)]
    pub max_output_bytes: u64,
    /// Stop the program after this long: the call then fails, with what the
    /// program wrote so far in the error. `None` means no limit of its own
    /// (the call's deadline and cancellation still apply, and fail the call).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Time between `SIGTERM` and `SIGKILL` when stopping the program.
    /// 0 means [`ExecInput::DEFAULT_KILL_GRACE_MS`].
    #[serde(default)]
    pub kill_grace_ms: u64,
    /// Exit codes that count as success; `None` means `[0]`. A death by a
    /// signal or a timeout is a failure whatever this says. An empty list is
    /// refused (nothing could succeed).
    #[serde(default)]
    pub ok_codes: Option<Vec<i32>>,
    /// Most bytes of the end of each of stderr and stdout that a failure's
    /// error message quotes (at most what was captured). 0 means
    /// [`ExecInput::DEFAULT_ERROR_TAIL_BYTES`].
    #[serde(default)]
    pub error_tail_bytes: u64,
}

impl ExecInput {
    /// What `max_output_bytes: 0` stands for: 1 MiB per stream.
    pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 1 << 20;
    /// What `kill_grace_ms: 0` stands for: 2 s.
    pub const DEFAULT_KILL_GRACE_MS: u64 = 2000;
    /// What `error_tail_bytes: 0` stands for: 4 KiB per stream, enough for
    /// the last screenful of a failed build without bloating the job record.
    pub const DEFAULT_ERROR_TAIL_BYTES: u64 = 4096;

    /// Runs `argv` with the worker's environment and directory, no input, the
    /// default output cap and grace period, and no timeout of its own.
    #[must_use]
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            clear_env: false,
            cwd: None,
            stdin: None,
            max_output_bytes: 0,
            timeout_ms: None,
            kill_grace_ms: 0,
            ok_codes: None,
            error_tail_bytes: 0,
        }
    }
}

/// Output of [`Exec`]: what a program that exited with one of
/// [`ExecInput::ok_codes`] left (any other end is a task error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    /// Exit code: one of [`ExecInput::ok_codes`]. An `Option` for the sake
    /// of stored records of earlier versions, which kept failures here too.
    pub code: Option<i32>,
    /// The signal that killed the program: always `None` now that a signal
    /// fails the call (kept for stored records of earlier versions).
    pub signal: Option<i32>,
    /// Captured standard output, at most `max_output_bytes`. In JSON a
    /// string, or `{"base64": "..."}` when it is not UTF-8.
    #[serde(with = "jobvisor_proto::json::text")]
    pub stdout: Vec<u8>,
    /// Captured standard error, at most `max_output_bytes`; in JSON as `stdout`.
    #[serde(with = "jobvisor_proto::json::text")]
    pub stderr: Vec<u8>,
    /// Whether stdout had more than was kept.
    pub stdout_truncated: bool,
    /// Whether stderr had more than was kept.
    pub stderr_truncated: bool,
    /// Wall time from start to exit, in milliseconds.
    pub duration_ms: u64,
}

impl ExecOutput {
    /// Whether the program exited with code 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Longest wait in one `poll`: bounds how late a cancel or a pidfd-less exit
/// is noticed.
const TICK: Duration = Duration::from_millis(10);
/// After the program exits (and its group is killed), how long to keep
/// reading for output still in the pipes. Only a process that escaped the
/// group and kept the pipes open makes us wait this long.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);
const IO_CHUNK: usize = 64 * 1024;
/// Reads per stream per wake-up, so a fast writer cannot starve the checks.
const READS_PER_WAKE: usize = 16;

impl Task for Exec {
    const NAME: &'static str = "exec";
    type Input = ExecInput;
    type Output = ExecOutput;

    fn run(&self, input: ExecInput, ctx: &mut Ctx<'_>) -> Result<ExecOutput, TaskError> {
        validate(&input)?;
        let limit = match input.max_output_bytes {
            0 => ExecInput::DEFAULT_MAX_OUTPUT_BYTES,
            n => n,
        };
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let grace = Duration::from_millis(match input.kill_grace_ms {
            0 => ExecInput::DEFAULT_KILL_GRACE_MS,
            n => n,
        });

        let Some((program, args)) = input.argv.split_first() else {
            return Err(TaskError::bad_input("argv is empty"));
        };
        let mut cmd = command(program, args, &input);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| TaskError::msg(format!("cannot run {program:?}: {e}")))?;
        let mut group = Group::new(child)?;
        // Opened before anything can reap the child, so the pid is still ours.
        let pidfd = pidfd_open(group.pid);

        let tail = match input.error_tail_bytes {
            0 => ExecInput::DEFAULT_ERROR_TAIL_BYTES,
            n => n,
        };
        let tail = usize::try_from(tail).unwrap_or(usize::MAX);
        let mut stdout = Capture::new(group.child.stdout.take().map(OwnedFd::from), limit, tail)?;
        let mut stderr = Capture::new(group.child.stderr.take().map(OwnedFd::from), limit, tail)?;
        let mut feed = Feed::new(group.child.stdin.take().map(OwnedFd::from), input.stdin)?;

        let deadline = input
            .timeout_ms
            .and_then(|ms| started.checked_add(Duration::from_millis(ms)));
        let mut phase = Phase::Running;
        let mut cancelled = false;
        let mut timed_out = false;
        let mut exited_at: Option<Instant> = None;
        let mut scratch = vec![0u8; IO_CHUNK];

        loop {
            // heartbeat, not just is_cancelled: a long-running program should
            // still look alive to the supervisor.
            if !cancelled && ctx.heartbeat() {
                cancelled = true;
            }
            let now = Instant::now();
            if exited_at.is_none() {
                if phase == Phase::Running {
                    let expired = deadline.is_some_and(|d| now >= d);
                    if cancelled || expired {
                        timed_out = !cancelled;
                        group.signal(Signal::SIGTERM);
                        phase = Phase::Terminating {
                            kill_at: now.checked_add(grace),
                        };
                    }
                }
                if let Phase::Terminating { kill_at: Some(k) } = phase {
                    if now >= k {
                        group.signal(Signal::SIGKILL);
                        phase = Phase::Killed;
                    }
                }
                if group.has_exited()? {
                    // The leader is a zombie until reaped, so its pid (= the
                    // group id) cannot be reused yet: killing the group now
                    // cannot hit a stranger. This takes out leftovers that
                    // would otherwise hold the pipes open.
                    group.signal(Signal::SIGKILL);
                    exited_at = Some(now);
                }
            }
            let drain_until = exited_at.and_then(|t| t.checked_add(DRAIN_AFTER_EXIT));
            if exited_at.is_some() {
                let drained = stdout.fd.is_none() && stderr.fd.is_none();
                if cancelled || drained || drain_until.is_some_and(|d| now >= d) {
                    break;
                }
            }

            let mut wait = TICK;
            let mut wake_at = |t: Option<Instant>| {
                if let Some(t) = t {
                    wait = wait.min(t.saturating_duration_since(now));
                }
            };
            match phase {
                Phase::Running if exited_at.is_none() => wake_at(deadline),
                Phase::Terminating { kill_at } if exited_at.is_none() => wake_at(kill_at),
                _ => {}
            }
            wake_at(drain_until);

            let ready = wait_io(
                &stdout,
                &stderr,
                &feed,
                pidfd.as_ref().filter(|_| exited_at.is_none()),
                wait,
            )?;
            if ready.stdout {
                stdout.read_some(&mut scratch)?;
            }
            if ready.stderr {
                stderr.read_some(&mut scratch)?;
            }
            if ready.stdin {
                feed.write_some()?;
            }
        }

        // Whatever was not written will not be: let the program see EOF.
        drop(feed);
        let status = group.reap()?;
        if cancelled {
            return Err(TaskError::cancelled());
        }
        let end = End {
            code: status.code(),
            signal: status.signal(),
            timed_out: timed_out.then_some(input.timeout_ms.unwrap_or(0)),
        };
        if let Some(why) = why_failed(&end, input.ok_codes.as_deref()) {
            let head = format!("{program:?} {why}");
            let tails = [("stderr", stderr.tail()), ("stdout", stdout.tail())];
            return Err(TaskError::msg(failure_message(&head, &tails)));
        }
        let ended = exited_at.unwrap_or_else(Instant::now);
        Ok(ExecOutput {
            code: end.code,
            signal: end.signal,
            stdout_truncated: stdout.truncated,
            stderr_truncated: stderr.truncated,
            stdout: stdout.buf,
            stderr: stderr.buf,
            duration_ms: u64::try_from(ended.duration_since(started).as_millis())
                .unwrap_or(u64::MAX),
        })
    }
}

/// How a program ended, as far as success is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct End {
    code: Option<i32>,
    signal: Option<i32>,
    /// `Some(timeout_ms)` when the program was stopped for its timeout.
    timed_out: Option<u64>,
}

/// Why the program's end is a failure, or `None` when it is a success: an
/// exit with one of `ok_codes` (`None`: just 0), not stopped for a timeout.
fn why_failed(end: &End, ok_codes: Option<&[i32]>) -> Option<String> {
    let ok = ok_codes.unwrap_or(&[0]);
    let how = match (end.code, end.signal) {
        (_, Some(sig)) => match jobvisor_proto::forkserver::signal_name(sig) {
            Some(name) => format!("was killed by signal {sig} ({name})"),
            None => format!("was killed by signal {sig}"),
        },
        (Some(c), None) => format!("exited with code {c}"),
        (None, None) => "ended without an exit code or signal".to_owned(),
    };
    if let Some(ms) = end.timed_out {
        return Some(format!("timed out after {ms} ms (timeout_ms) and {how}"));
    }
    match end.code {
        Some(c) if end.signal.is_none() && ok.contains(&c) => None,
        Some(_) if end.signal.is_none() => Some(format!("{how} (ok_codes: {ok:?})")),
        _ => Some(how),
    }
}

/// The error of a failed run: `head` on the first line, then the tail of
/// each stream that is not empty, as text.
fn failure_message(head: &str, tails: &[(&str, Tail<'_>)]) -> String {
    let mut msg = head.to_owned();
    for (name, t) in tails {
        if t.bytes.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(t.bytes);
        let text = text.strip_suffix('\n').unwrap_or(&text);
        let label = if t.total > t.bytes.len() as u64 {
            format!("{name} (last {} of {} bytes)", t.bytes.len(), t.total)
        } else {
            (*name).to_owned()
        };
        msg.push_str(&format!("\n{label}:\n{text}"));
    }
    msg
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// `SIGTERM` sent; `SIGKILL` due at `kill_at` (`None`: a grace too long to
    /// represent, i.e. never).
    Terminating {
        kill_at: Option<Instant>,
    },
    Killed,
}

/// Rejects what `Command` would fail on obscurely or silently mangle.
fn validate(input: &ExecInput) -> Result<(), TaskError> {
    if input.argv.is_empty() {
        return Err(TaskError::bad_input("argv is empty"));
    }
    if input.ok_codes.as_ref().is_some_and(Vec::is_empty) {
        return Err(TaskError::bad_input(
            "ok_codes is empty, so no exit could succeed; leave it out for [0]",
        ));
    }
    if let Some(a) = input.argv.iter().find(|a| a.as_bytes().contains(&0)) {
        return Err(TaskError::bad_input(format!(
            "argument {a:?} contains a NUL byte"
        )));
    }
    for (k, v) in &input.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(TaskError::bad_input(format!(
                "{k:?} is not a valid environment variable name"
            )));
        }
        if v.contains('\0') {
            return Err(TaskError::bad_input(format!(
                "the value of {k:?} contains a NUL byte"
            )));
        }
    }
    if let Some(cwd) = input.cwd.as_ref().filter(|c| c.contains('\0')) {
        return Err(TaskError::bad_input(format!(
            "cwd {cwd:?} contains a NUL byte"
        )));
    }
    Ok(())
}

fn command(program: &OsStr, args: &[OsString], input: &ExecInput) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    if input.clear_env {
        cmd.env_clear();
    }
    for (k, v) in &input.env {
        cmd.env(k, v);
    }
    if let Some(cwd) = &input.cwd {
        cmd.current_dir(cwd);
    }
    cmd.stdin(if input.stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    cmd.stdout(Stdio::piped());
    cmd.stderr(Stdio::piped());
    cmd.process_group(0);
    let parent = nix::unistd::getpid().as_raw();
    // SAFETY: the closure runs between fork and exec, where only
    // async-signal-safe calls are allowed; it makes two plain syscalls and
    // builds an io::Error from an errno, which does not allocate.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    cmd
}

/// In the child, before exec: ask for `SIGKILL` when the parent dies. Checks
/// the parent afterwards, because if it died before the `prctl` the signal
/// will never come.
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    jobvisor_worker::sys::set_parent_death_signal()?;
    // SAFETY: getppid cannot fail and has no preconditions.
    if unsafe { libc::getppid() } != parent {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// A pidfd for `pid`, or `None` where the kernel has none (before 5.3); the
/// loop then notices the exit at its next tick instead.
fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    jobvisor_worker::sys::pidfd_open(pid.as_raw()).ok()
}

/// The child and its process group. Until the child is reaped, dropping this
/// kills the whole group and reaps the child, so no error path or panic
/// leaves processes (or a zombie) behind.
struct Group {
    child: Child,
    /// The child's pid, which is also its process group id.
    pid: Pid,
    reaped: bool,
}

impl Group {
    fn new(mut child: Child) -> Result<Self, TaskError> {
        let Ok(pid) = i32::try_from(child.id()) else {
            // Cannot happen on Linux (pids stay below 2^22); there is no valid
            // group id to aim at, so kill just the child, through std.
            let _ = child.kill();
            let _ = child.wait();
            return Err(TaskError::msg("child pid does not fit a pid_t"));
        };
        // Now whoever reaps a dead worker can kill this group too.
        jobvisor_worker::child_group::set(pid);
        Ok(Self {
            child,
            pid: Pid::from_raw(pid),
            reaped: false,
        })
    }

    /// Signals every process in the group. Errors mean the group is already
    /// empty, which is what we wanted anyway.
    fn signal(&self, sig: Signal) {
        if !self.reaped {
            let _ = killpg(self.pid, sig);
        }
    }

    /// Whether the child has exited, without reaping it (`WNOWAIT`): an
    /// unreaped child keeps its pid, and so the group id, reserved.
    fn has_exited(&self) -> Result<bool, TaskError> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.pid), flags) {
            Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => Ok(false),
            Ok(_) => Ok(true),
            Err(e) => Err(TaskError::msg(format!("cannot check on the child: {e}"))),
        }
    }

    fn reap(&mut self) -> Result<ExitStatus, TaskError> {
        // Withdrawn first: once reaped, the pid may name a stranger's group.
        jobvisor_worker::child_group::clear();
        let status = self
            .child
            .wait()
            .map_err(|e| TaskError::msg(format!("cannot reap the child: {e}")))?;
        self.reaped = true;
        Ok(status)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal(Signal::SIGKILL);
            jobvisor_worker::child_group::clear();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), TaskError> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)
        .map_err(|e| TaskError::msg(format!("cannot configure a child pipe: {e}")))?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|e| TaskError::msg(format!("cannot configure a child pipe: {e}")))?;
    Ok(())
}

/// One output stream: its pipe until EOF, what was kept of it (the first
/// `limit` bytes), and its last `tail_limit` bytes, which a failure quotes.
struct Capture {
    fd: Option<OwnedFd>,
    buf: Vec<u8>,
    limit: usize,
    truncated: bool,
    /// The end of the stream: at most `2 × tail_limit` bytes, cut back to
    /// `tail_limit` when it grows past that (amortised, no ring buffer).
    tail: Vec<u8>,
    tail_limit: usize,
    /// Bytes read in all.
    total: u64,
}

/// The end of a stream and how long the stream was.
#[derive(Debug, Clone, Copy)]
struct Tail<'a> {
    bytes: &'a [u8],
    total: u64,
}

impl Capture {
    fn new(fd: Option<OwnedFd>, limit: usize, tail_limit: usize) -> Result<Self, TaskError> {
        if let Some(fd) = &fd {
            set_nonblocking(fd)?;
        }
        Ok(Self {
            fd,
            buf: Vec::new(),
            limit,
            truncated: false,
            tail: Vec::new(),
            tail_limit,
            total: 0,
        })
    }

    /// Keeps `chunk` in the tail, dropping what falls out of it.
    fn keep_tail(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(self.tail_limit)..];
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > self.tail_limit.saturating_mul(2) {
            let cut = self.tail.len() - self.tail_limit;
            self.tail.drain(..cut);
        }
    }

    /// The last `tail_limit` bytes read.
    fn tail(&self) -> Tail<'_> {
        Tail {
            bytes: &self.tail[self.tail.len().saturating_sub(self.tail_limit)..],
            total: self.total,
        }
    }

    /// Reads what is available (bounded), keeping up to `limit` bytes in all
    /// and dropping the rest. Closes the pipe at EOF.
    fn read_some(&mut self, scratch: &mut [u8]) -> Result<(), TaskError> {
        for _ in 0..READS_PER_WAKE {
            let Some(fd) = &self.fd else { return Ok(()) };
            match nix::unistd::read(fd, scratch) {
                Ok(0) => {
                    self.fd = None;
                    return Ok(());
                }
                Ok(n) => {
                    self.total = self.total.saturating_add(n as u64);
                    self.keep_tail(&scratch[..n]);
                    let keep = n.min(self.limit.saturating_sub(self.buf.len()));
                    self.buf.extend_from_slice(&scratch[..keep]);
                    if keep < n {
                        self.truncated = true;
                    }
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => {
                    return Err(TaskError::msg(format!(
                        "cannot read the child's output: {e}"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// Standard input: the bytes still to write, and the pipe until they are
/// written or the child stops reading.
struct Feed {
    fd: Option<OwnedFd>,
    data: Vec<u8>,
    pos: usize,
}

impl Feed {
    fn new(fd: Option<OwnedFd>, data: Option<Vec<u8>>) -> Result<Self, TaskError> {
        let data = data.unwrap_or_default();
        // Nothing to write: close now so the child sees EOF at once.
        let fd = fd.filter(|_| !data.is_empty());
        if let Some(fd) = &fd {
            set_nonblocking(fd)?;
        }
        Ok(Self { fd, data, pos: 0 })
    }

    /// Writes what the pipe takes without blocking; closes it when all is
    /// written or the child has closed its end.
    fn write_some(&mut self) -> Result<(), TaskError> {
        loop {
            let Some(fd) = &self.fd else { return Ok(()) };
            let end = self.data.len().min(self.pos + IO_CHUNK);
            match write_no_sigpipe(fd.as_fd(), &self.data[self.pos..end]) {
                Ok(n) => {
                    self.pos += n;
                    if self.pos >= self.data.len() {
                        self.fd = None;
                        return Ok(());
                    }
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => {}
                // The child does not want the rest; that is its business.
                Err(Errno::EPIPE) => {
                    self.fd = None;
                    return Ok(());
                }
                Err(e) => {
                    return Err(TaskError::msg(format!(
                        "cannot write the child's input: {e}"
                    )))
                }
            }
        }
    }
}

/// `write(2)` that cannot kill the worker with `SIGPIPE` when the child has
/// closed its input, whatever the process's `SIGPIPE` disposition (Rust
/// programs ignore it by default, but a worker embedded elsewhere may not).
/// `SIGPIPE` is blocked around the write and, if the write raised it,
/// consumed before unblocking.
fn write_no_sigpipe(fd: BorrowedFd<'_>, bytes: &[u8]) -> Result<usize, Errno> {
    let mut pipe = SigSet::empty();
    pipe.add(Signal::SIGPIPE);
    let mut old = SigSet::empty();
    pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&pipe), Some(&mut old))?;
    let res = nix::unistd::write(fd, bytes);
    // If SIGPIPE was blocked before, a pending one may not be ours: leave it.
    if res == Err(Errno::EPIPE) && !old.contains(Signal::SIGPIPE) {
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: both pointers are to live, initialised values; a null
        // siginfo pointer is allowed. With a zero timeout it never blocks.
        unsafe {
            libc::sigtimedwait(pipe.as_ref(), std::ptr::null_mut(), &raw const zero);
        }
    }
    pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None)?;
    res
}

#[derive(Debug, Default)]
struct Ready {
    stdout: bool,
    stderr: bool,
    stdin: bool,
}

/// Waits up to `wait` for any of the pipes, or the pidfd (exit), to be ready.
fn wait_io(
    stdout: &Capture,
    stderr: &Capture,
    feed: &Feed,
    pidfd: Option<&OwnedFd>,
    wait: Duration,
) -> Result<Ready, TaskError> {
    const IN: PollFlags = PollFlags::POLLIN;
    let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
    let mut slots = [None; 3];
    for (slot, fd, flags) in [
        (0, stdout.fd.as_ref(), IN),
        (1, stderr.fd.as_ref(), IN),
        (2, feed.fd.as_ref(), PollFlags::POLLOUT),
    ] {
        if let Some(fd) = fd {
            slots[slot] = Some(fds.len());
            fds.push(PollFd::new(fd.as_fd(), flags));
        }
    }
    if let Some(fd) = pidfd {
        fds.push(PollFd::new(fd.as_fd(), IN));
    }
    // Rounded up, so a sub-millisecond wait does not become a busy loop.
    let ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match poll(&mut fds, timeout) {
        Ok(_) | Err(Errno::EINTR) => {}
        Err(e) => {
            return Err(TaskError::msg(format!(
                "poll on the child's pipes failed: {e}"
            )))
        }
    }
    // Hang-up and error count as ready: the read or write then reports them.
    let any = PollFlags::POLLIN | PollFlags::POLLOUT | PollFlags::POLLHUP | PollFlags::POLLERR;
    let ready = |slot: Option<usize>| {
        slot.and_then(|i| fds.get(i))
            .and_then(PollFd::revents)
            .is_some_and(|r| r.intersects(any))
    };
    Ok(Ready {
        stdout: ready(slots[0]),
        stderr: ready(slots[1]),
        stdin: ready(slots[2]),
    })
}
