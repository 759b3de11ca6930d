//! End-to-end: the real `jobvisor` binary.

use std::process::Command;

mod commands;
mod config;
mod docs;
mod readme;
mod robust;

fn jobvisor() -> Command {
    Command::new(crate::util::bin())
}

#[test]
fn demo_runs_and_recovers_from_a_killed_worker() {
    for method in ["forkserver", "spawn"] {
        let out = jobvisor()
            .args(["demo", "--workers", "2", "--start-method", method])
            .output()
            .expect("run jobvisor demo");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{method}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("pool: 2 workers"), "{stdout}");
        assert!(
            stdout.contains("died while running the task: signal 9 (SIGKILL)"),
            "{stdout}"
        );
        assert!(stdout.contains("completed: 4/4"), "{stdout}");
        assert!(stdout.contains("timed out after 200 ms"), "{stdout}");
        assert!(stdout.contains("exit Some(0)"), "{stdout}");
        assert!(stdout.contains("every worker reaped"), "{stdout}");
    }
}

#[test]
fn a_worker_started_by_hand_refuses_to_run() {
    let out = jobvisor()
        .args(["__jobvisor-worker", "3", "4"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not started by a live jobvisor supervisor")
    );
}

/// Only the commands that run workers (`daemon`, `demo`, the worker entry)
/// fork the fork server. A `ping` is caught in the middle of its command (it
/// has sent its hello to a socket that never answers) and has no child; before,
/// every invocation, even `--version`, forked one first.
#[test]
fn a_client_command_forks_no_fork_server() {
    use std::io::Read;
    use std::os::unix::net::UnixListener;
    use std::process::Stdio;

    let dir = tempfile::tempdir().expect("temp dir");
    let sock = dir.path().join("mute.sock");
    let listener = UnixListener::bind(&sock).expect("bind");
    let mut cli = jobvisor()
        .arg("ping")
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run jobvisor ping");
    let (mut conn, _) = listener.accept().expect("accept");
    // Its first hello byte: the CLI is past the start of `main`, where the
    // fork server used to be forked, and waits for our hello.
    let mut byte = [0u8; 1];
    conn.read_exact(&mut byte).expect("the client's hello");
    let pid = i32::try_from(cli.id()).expect("pid");
    let children = crate::util::proc::children_of(pid);
    let _ = cli.kill();
    let _ = cli.wait();
    assert_eq!(children, Vec::<i32>::new(), "`jobvisor ping` has children");
}

/// A duration without a unit is refused before anything is sent (issue 10,
/// item 21: `--timeout 5` used to mean 5 ms); human forms are accepted.
#[test]
fn durations_need_a_unit_and_take_human_forms() {
    let bare = jobvisor()
        .args([
            "--socket",
            "/nonexistent/jobvisor.sock",
            "ping",
            "--wait",
            "5",
        ])
        .output()
        .expect("run jobvisor");
    crate::util::assert_exit("ping --wait 5", &bare, 2, "needs a unit");
    // A human form parses; the ping itself then finds no daemon (exit 5).
    let human = jobvisor()
        .args([
            "--socket",
            "/nonexistent/jobvisor.sock",
            "ping",
            "--wait",
            "0.1s",
        ])
        .output()
        .expect("run jobvisor");
    crate::util::assert_exit("ping --wait 0.1s", &human, 5, "cannot reach");
}
