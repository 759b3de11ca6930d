//! End-to-end: the real `jobvisor` binary.

use std::process::Command;

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
