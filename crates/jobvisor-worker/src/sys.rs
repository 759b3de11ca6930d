//! The two Linux process calls nix does not wrap that both sides of a worker
//! need: `pidfd_open` (the pool watches workers with it, `exec` its commands)
//! and `PR_SET_PDEATHSIG` (the fork server and workers die with their
//! parent, and so do the commands `exec` starts).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// `pidfd_open(2)`: a handle on a process that cannot be confused with a later
/// process that reuses the pid. Only valid to call while the pid is known not
/// to be reaped (we are its parent and have not waited, or the fork server
/// opened it right after `fork`).
///
/// # Errors
/// The kernel's: `ESRCH` for no such process, `ENOSYS` before Linux 5.3.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments; the returned fd is new and ours.
    let rc = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(rc)
        .ok()
        .filter(|fd| *fd >= 0)
        .ok_or_else(io::Error::last_os_error)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    // pidfd_open sets O_CLOEXEC on it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Ask the kernel to send `SIGKILL` to the calling thread's process when its
/// parent thread exits. Async-signal-safe (one syscall, no allocation), so it
/// may run between `fork` and `exec`.
///
/// # Errors
/// The kernel's (`EINVAL` cannot happen with these arguments).
pub fn set_parent_death_signal() -> io::Result<()> {
    // SAFETY: prctl with integer arguments; touches no memory of ours.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
