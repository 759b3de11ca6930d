//! Thin wrappers over the Linux calls nix does not cover (pidfds, `wait4`),
//! each with the reason it is needed; `pidfd_open` and `PR_SET_PDEATHSIG` are
//! [`jobvisor_worker::sys`]'s, which `exec` shares.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use jobvisor_proto::forkserver::ExitStatus;

pub(crate) use jobvisor_worker::sys::{pidfd_open, set_parent_death_signal};

/// `pidfd_send_signal(2)`. `ESRCH` (already exited) is not an error.
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: syscall on a valid borrowed fd; null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// `kill(-pgid, sig)`; `ESRCH` (group already empty) is not an error.
pub(crate) fn killpg(pgid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) with integer arguments.
    if unsafe { libc::kill(-pgid, signal) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// `kill(pid, sig)`; `ESRCH` is not an error.
pub(crate) fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) with integer arguments.
    if unsafe { libc::kill(pid, signal) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            return Ok(());
        }
        return Err(e);
    }
    Ok(())
}

/// Blocking `wait4(pid)`, retried on `EINTR`, with the peak RSS from rusage.
pub(crate) fn wait4(pid: i32) -> io::Result<ExitStatus> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
    Ok(exit_status(status, usage.ru_maxrss))
}

pub(crate) fn exit_status(status: libc::c_int, maxrss_kib: libc::c_long) -> ExitStatus {
    let (code, signal) = if libc::WIFEXITED(status) {
        (Some(libc::WEXITSTATUS(status)), None)
    } else if libc::WIFSIGNALED(status) {
        (None, Some(libc::WTERMSIG(status)))
    } else {
        (None, None)
    };
    ExitStatus {
        code,
        signal,
        core_dumped: libc::WIFSIGNALED(status) && libc::WCOREDUMP(status),
        max_rss_kib: u64::try_from(maxrss_kib).unwrap_or(0),
    }
}

/// Number of threads in this process, from `/proc/self/status`.
pub(crate) fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// Sets `O_NONBLOCK` on an fd (for tokio's `AsyncFd`).
pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    fcntl(
        fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )?;
    Ok(())
}

/// Registers an owned fd with tokio's reactor for `interest`, non-blocking.
pub(crate) fn async_fd(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    use std::os::fd::AsFd;
    set_nonblocking(fd.as_fd())?;
    // SAFETY: an OwnedFd is open, owned by the AsyncFd from here on, and its
    // as_raw_fd() always returns the same descriptor until it is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}

/// Grows a pipe's buffer (best effort: the kernel caps it at
/// `/proc/sys/fs/pipe-max-size` for unprivileged users). A 1 MiB input then
/// crosses in one read instead of sixteen 64 KiB ones.
pub(crate) fn grow_pipe(fd: BorrowedFd<'_>, bytes: i32) {
    // SAFETY: fcntl(F_SETPIPE_SZ) on a valid borrowed fd; failure is harmless.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, bytes) };
}

/// Closes every descriptor from 3 up but `keep` (with `cloexec`, marks them
/// close-on-exec instead, for a child that still has to `exec`), so a worker
/// holds only the descriptors the pool gave it, never what the program that
/// started the supervisor left open. Async-signal-safe: `close_range(2)` calls
/// and an in-place sort of `keep`, no allocation, so it may run between
/// `fork` and `exec` of a multi-threaded process.
///
/// # Errors
/// The kernel's: `ENOSYS` before Linux 5.9, `EINVAL` for `cloexec` before 5.11.
pub(crate) fn close_fds_except(keep: &mut [RawFd], cloexec: bool) -> io::Result<()> {
    let flags = if cloexec {
        libc::CLOSE_RANGE_CLOEXEC
    } else {
        0
    };
    keep.sort_unstable();
    let mut from: RawFd = 3;
    for &fd in keep.iter() {
        if fd < from {
            continue;
        }
        if fd > from {
            close_range(from as u32, (fd - 1) as u32, flags)?;
        }
        from = fd + 1;
    }
    close_range(from as u32, u32::MAX, flags)
}

fn close_range(first: u32, last: u32, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: close_range(2) with integer arguments; the descriptors it closes
    // have no owner that will use them (see `close_fds_except`).
    if unsafe { libc::syscall(libc::SYS_close_range, first, last, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
