//! End-to-end: the binary under misuse of its own process environment (a
//! broken stderr, inherited descriptors, arguments that are not UTF-8).

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Stdio;
use std::time::Duration;

use crate::util::daemon::{daemon_command, wait_ready};
use crate::util::{text, Daemon};

/// A pipe whose read end is already closed: every write to the other end
/// fails with `EPIPE` (Rust ignores `SIGPIPE`).
fn broken_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-int buffer; the fds returned are ours.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    assert_eq!(rc, 0, "pipe2: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    write
}

/// Issue 10 item 15: logging to a stderr whose reader is gone used to panic
/// the task that logged (tracing's internal `eprintln!`), after which every
/// request got "shutting down" and SIGTERM did nothing.
#[test]
fn a_broken_stderr_does_not_wedge_the_daemon() {
    let mut d = Daemon::new(
        tempfile::tempdir().expect("tempdir"),
        None,
        &["--workers", "2"],
    );
    let child = daemon_command(&d.state_dir(), &d.dir.path().join("daemon.log"))
        .args(&d.extra)
        .stderr(Stdio::from(broken_pipe()))
        .spawn()
        .expect("spawn daemon");
    d.child = Some(child);
    wait_ready(&d.socket, Duration::from_secs(20), String::new);
    let out = d.cli(&[
        "submit",
        "crash",
        "--input",
        r#"{"exit_code": 7}"#,
        "--backoff-ms",
        "10",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(3), "dead-lettered: {}", text(&out));
    for _ in 0..3 {
        let out = d.cli(&["submit", "noop", "--input", "1", "--wait"]);
        assert!(out.status.success(), "noop: {}", text(&out));
    }
    let status = d.term_and_wait();
    assert_eq!(status.code(), Some(0), "SIGTERM drains and exits 0");
}

/// Issue 10 item 16: an argument that is not UTF-8 used to panic the binary
/// (exit 101 and a backtrace) in the bootstrap's `std::env::args()`. A path
/// may hold any bytes, so the daemon starts; and so may the words of an
/// `exec` command, which reach the command as the same bytes.
#[test]
fn a_non_utf8_argument_never_panics() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join(OsStr::from_bytes(b"state-\xff"));
    let socket = state.join("control.sock");
    let log = dir.path().join("daemon.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mut daemon = daemon_command(&state, &log)
        .args(["--workers", "1", "--socket"])
        .arg(&socket)
        .spawn()
        .expect("spawn daemon");
    let ready = crate::util::daemon::cli_command(&socket)
        .args(["ping", "--wait", "20000ms"])
        .output()
        .expect("run ping");
    if !ready.status.success() {
        crate::util::daemon::kill_group(&mut daemon);
    }
    assert!(
        ready.status.success(),
        "{}\nlog:\n{}",
        text(&ready),
        read_log()
    );
    crate::util::proc::signal(daemon.id() as i32, libc::SIGTERM);
    let status = daemon.wait().expect("wait daemon");
    assert_eq!(status.code(), Some(0), "log:\n{}", read_log());
    assert!(!read_log().contains("panicked"), "{}", read_log());

    let out = crate::util::daemon::cli_command(&socket)
        .args(["submit", "exec", "--"])
        .arg("ls")
        .arg(OsStr::from_bytes(b"\xff"))
        .output()
        .expect("run submit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Accepted (the bytes go to the command, `daemon::exec` checks that),
    // so the only error left is the daemon that was stopped above.
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
    assert!(!stderr.contains("UTF-8"), "{stderr}");
}
