//! `shutdown`: ask the daemon to stop, draining running jobs unless `--now`;
//! with `--wait`, return only once the daemon process has exited.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use jobvisor_client::ClientError;
use serde_json::json;
use tokio::io::unix::AsyncFd;

use super::connect;
use crate::exit::{CmdResult, Failure, EXIT_ERROR, EXIT_OK};
use crate::output::{emit, emit_json};

/// What `shutdown` was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownArgs {
    /// Let running jobs finish first.
    pub graceful: bool,
    /// Return after the daemon has exited.
    pub wait: bool,
    /// Print a JSON object instead of a sentence.
    pub json: bool,
}

/// Asks for a shutdown; with `wait`, waits for the daemon's process to end.
pub async fn shutdown(a: ShutdownArgs, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    // Before the request: afterwards the daemon may be gone.
    let exited = if a.wait {
        let pid = client.ping().await?;
        Some((pid, pidfd(pid)?))
    } else {
        None
    };
    match client.shutdown(a.graceful).await {
        Ok(()) => {}
        // The daemon may close the connection as it goes away.
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) => {}
        Err(e) => return Err(e.into()),
    }
    drop(client);
    let pid = match exited {
        Some((pid, fd)) => {
            wait_exit(pid, fd).await?;
            Some(pid)
        }
        None => None,
    };
    let how = if a.graceful { "graceful" } else { "now" };
    if a.json {
        emit_json(&json!({ "shutdown": how, "stopped": a.wait, "pid": pid }))?;
    } else {
        let text = match (pid, a.graceful) {
            (Some(pid), _) => format!("daemon (pid {pid}) stopped"),
            (None, true) => "shutdown requested; running jobs will finish first".into(),
            (None, false) => "immediate shutdown requested".into(),
        };
        emit(&format!("{text}\n"))?;
    }
    Ok(EXIT_OK)
}

/// A pidfd of the daemon's process (`pidfd_open(2)`), readable once it has
/// exited: no pid can be recycled under it while we wait.
fn pidfd(pid: u32) -> Result<OwnedFd, Failure> {
    let raw_pid = libc::pid_t::try_from(pid)
        .map_err(|_| Failure::msg(EXIT_ERROR, format!("the daemon reported pid {pid}")))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        let what = format!(
            "cannot watch the daemon's process (pid {pid}) to wait for its end; \
             the daemon must run in this pid namespace"
        );
        return Err(Failure::new(
            EXIT_ERROR,
            anyhow::Error::new(e).context(what),
        ));
    }
    let fd = i32::try_from(fd)
        .map_err(|_| Failure::msg(EXIT_ERROR, "pidfd_open returned a bad descriptor"))?;
    // SAFETY: `fd` is a descriptor we own, just returned by pidfd_open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Waits until the process behind `fd` has exited.
async fn wait_exit(pid: u32, fd: OwnedFd) -> Result<(), Failure> {
    let watch = |e: std::io::Error| {
        Failure::new(
            EXIT_ERROR,
            anyhow::Error::new(e).context(format!("waiting for the daemon (pid {pid}) to stop")),
        )
    };
    // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which keeps it open
    // (and the same descriptor) until it is dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| watch(e.into_parts().1))?;
    let _ready = fd.readable().await.map_err(watch)?;
    Ok(())
}
