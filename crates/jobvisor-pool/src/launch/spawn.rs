//! The `spawn` start method: fork+exec of our own executable with the hidden
//! worker argument. `std::process::Command` does the fork+exec (only
//! async-signal-safe work happens between the two, ours included), so this is
//! safe from the multi-threaded supervisor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::unistd::pipe2;

use super::{ExitSender, SpawnedWorker};
use crate::sys;

/// argv[1] that turns our binary into a worker.
pub(crate) const WORKER_ARG: &str = "__jobvisor-worker";
/// Environment variable with the supervisor's pid, checked by the worker
/// against `getppid()` to close the race with `PR_SET_PDEATHSIG`.
pub(crate) const PARENT_ENV: &str = "JOBVISOR_PARENT_PID";

pub(crate) async fn spawn(exits: ExitSender) -> io::Result<(SpawnedWorker, Arc<Mutex<bool>>)> {
    let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (log_r, log_w) = pipe2(OFlag::O_CLOEXEC)?;
    sys::grow_pipe(in_w.as_fd(), super::forkserver::PIPE_BYTES);
    let exe = std::env::current_exe()?;
    let beacon = jobvisor_worker::Beacon::create()?;
    let beacon_fd = beacon.try_clone_fd()?;
    let (in_raw, out_raw, beacon_raw) =
        (in_r.as_raw_fd(), out_w.as_raw_fd(), beacon_fd.as_raw_fd());
    let mut cmd = Command::new(exe);
    cmd.arg(WORKER_ARG)
        .arg(in_raw.to_string())
        .arg(out_raw.to_string())
        .arg(beacon_raw.to_string())
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log_w.try_clone()?))
        .stderr(Stdio::from(log_w))
        .process_group(0);
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
    // close_range, fcntl) and does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            sys::set_parent_death_signal()?;
            // Let exactly stdio, the two protocol pipes and the beacon through
            // exec: not the descriptors the supervisor inherited without
            // close-on-exec (from the shell that started it, say).
            let mut keep = [in_raw, out_raw, beacon_raw];
            sys::close_fds_except(&mut keep, true)?;
            for fd in keep {
                if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = spawn_on_spawner_thread(cmd).await?;
    drop((in_r, out_w, beacon_fd));
    let pid = child.id();
    // We are the parent and nobody has waited for it: the pid is still this process.
    let pidfd = sys::pidfd_open(pid as i32)?;
    drop(child); // std does not kill or wait on drop; the reaper below owns that.
    let reaped = Arc::new(Mutex::new(false));
    let watch = sys::async_fd(pidfd.try_clone()?, tokio::io::Interest::READABLE)?;
    // Our own mapping: after the death, it names the command's group.
    let last_words = jobvisor_worker::Beacon::map(beacon.try_clone_fd()?)?;
    let reaped2 = reaped.clone();
    tokio::spawn(async move {
        // A pidfd becomes readable when the process exits.
        let _ = watch.readable().await;
        let status = {
            let Ok(mut done) = reaped2.lock() else { return };
            // The zombie keeps the pgid reserved: kill the group, then reap.
            let _ = sys::killpg(pid as i32, libc::SIGKILL);
            // The command it ran, in a group of its own. Its leader is no
            // child of ours: best effort, see docs/ARCHITECTURE.md.
            if let Some(group) = last_words.child_group() {
                let _ = sys::killpg(group, libc::SIGKILL);
            }
            let status = sys::wait4(pid as i32);
            *done = true;
            status
        };
        // Closed before the exit is reported (it ends in `WorkerExited`).
        drop(watch);
        if let Ok(status) = status {
            let _ = exits.send((pid, status));
        }
    });
    Ok((
        SpawnedWorker {
            pid,
            pidfd,
            to_worker: in_w,
            from_worker: out_r,
            log: log_r,
            beacon,
        },
        reaped,
    ))
}

type SpawnJob = (
    Command,
    tokio::sync::oneshot::Sender<io::Result<std::process::Child>>,
);

/// Runs `cmd.spawn()` on one long-lived thread.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, so
/// forking from tokio's blocking pool (whose idle threads exit after a few
/// seconds) would kill healthy workers. A fork of a large supervisor can also
/// take milliseconds, which must not stall the event loop.
async fn spawn_on_spawner_thread(cmd: Command) -> io::Result<std::process::Child> {
    static SPAWNER: std::sync::OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> =
        std::sync::OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        let started = std::thread::Builder::new()
            .name("jobvisor-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            });
        if let Err(e) = started {
            tracing::error!(error = %e, "cannot start the spawner thread");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawner
        .lock()
        .map_err(|_| io::Error::other("spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    rx.await
        .map_err(|_| io::Error::other("the spawner thread is gone"))?
}

/// The worker side of `spawn`: validates and adopts the three inherited fds
/// (input pipe, output pipe, beacon).
pub(crate) fn adopt_worker_fds(args: &[String]) -> io::Result<(OwnedFd, OwnedFd, OwnedFd)> {
    let parse = |s: Option<&String>| -> io::Result<i32> {
        s.and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::other("usage: <exe> __jobvisor-worker IN_FD OUT_FD BEACON_FD")
        })
    };
    let (input, output, beacon) = (
        parse(args.first())?,
        parse(args.get(1))?,
        parse(args.get(2))?,
    );
    if input < 3
        || output < 3
        || beacon < 3
        || input == output
        || beacon == input
        || beacon == output
    {
        return Err(io::Error::other("worker fds must be distinct and above 2"));
    }
    let mut fds = Vec::with_capacity(3);
    for fd in [input, output, beacon] {
        // SAFETY: F_GETFD only inspects the descriptor.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(io::Error::other(format!("worker fd {fd} is not open")));
        }
        // Keep them out of anything the worker's tasks exec.
        // SAFETY: F_SETFD on an fd just checked to be open.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        // SAFETY: the supervisor passed these to us and nothing else in this
        // fresh process owns them.
        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    let beacon = fds.pop().ok_or_else(|| io::Error::other("fd"))?;
    let output = fds.pop().ok_or_else(|| io::Error::other("fd"))?;
    let input = fds.pop().ok_or_else(|| io::Error::other("fd"))?;
    Ok((input, output, beacon))
}
