//! What a worker holds: only the descriptors the pool gave it, never those
//! the program that started the supervisor left open (issue 10, G.29).

use std::os::fd::AsRawFd;

use crate::support::*;
use crate::tasks::*;

/// Descriptors [`leave_inheritable_fds`] opens without close-on-exec, as a
/// shell or a careless parent would.
const LEFT_OPEN: [i32; 2] = [10, 251];

/// The file the left-open descriptors name.
fn marker() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("jobvisor-inherited-{}", std::process::id()))
}

/// Run in the supervisor before `bootstrap`, so the fork server inherits them
/// too: opens [`LEFT_OPEN`] on a marker file, inheritable.
pub(crate) fn leave_inheritable_fds() {
    let path = marker();
    let file = std::fs::File::create(&path).expect("create the marker file");
    let _ = std::fs::remove_file(&path);
    for fd in LEFT_OPEN {
        // SAFETY: dup2 onto descriptor numbers this process does not use yet;
        // the copy is not close-on-exec, and is never closed (on purpose).
        assert!(unsafe { libc::dup2(file.as_raw_fd(), fd) } == fd);
    }
}

/// What each of `pid`'s descriptors names.
fn fds_of(pid: u32) -> Vec<(i32, String)> {
    let dir = format!("/proc/{pid}/fd");
    let mut out: Vec<(i32, String)> = std::fs::read_dir(&dir)
        .expect("read the worker's fd table")
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_string_lossy().parse().ok()?;
            let to = std::fs::read_link(e.path()).ok()?;
            Some((fd, to.to_string_lossy().into_owned()))
        })
        .collect();
    out.sort();
    out
}

pub(crate) async fn a_worker_holds_only_its_own_fds(method: StartMethod) {
    // The supervisor holds them (else the test proves nothing).
    let ours = fds_of(std::process::id());
    for fd in LEFT_OPEN {
        assert!(ours.iter().any(|(n, _)| *n == fd), "{ours:?}");
    }
    let pool = pool(method, 1).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let theirs = fds_of(pid);
    // stdio, the two protocol pipes, and the event loop's own epoll and
    // eventfd: nothing that names a file, the marker or the beacon memfd.
    let strangers: Vec<_> = theirs
        .iter()
        .filter(|(fd, to)| {
            !(to.starts_with("pipe:")
                || to.starts_with("anon_inode:")
                || (*fd == 0 && to == "/dev/null"))
        })
        .collect();
    assert!(
        strangers.is_empty(),
        "worker {pid} holds descriptors it was not given: {strangers:?} (all: {theirs:?})"
    );
    pool.shutdown().await;
}
