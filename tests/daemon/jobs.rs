//! A job's life through the CLI and the client: every built-in task from
//! submit to result, a task error retried to its budget and the exit codes
//! that say so, and a cancelled command that leaves no process behind.

use std::path::Path;
use std::time::Duration;

use jobvisor_client::JobState;

use crate::util::wait::until;
use crate::util::*;

#[test]
fn every_builtin_task_through_submit_wait_result() {
    let d = Daemon::start(&[]);
    let dir = d.dir.path();
    let file = dir.join("data.txt");
    std::fs::write(&file, b"abc").unwrap();
    let f = file.display().to_string();
    let z = dir.join("data.zst").display().to_string();
    let cases: Vec<(&str, String, &str)> = vec![
        ("noop", "42".into(), "42"),
        ("spin", r#"{"ms": 5}"#.into(), "iterations"),
        ("sleep", r#"{"ms": 5}"#.into(), "null"),
        (
            "hash",
            format!(r#"{{"path": "{f}"}}"#),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            "compress",
            format!(r#"{{"src": "{f}", "dst": "{z}", "level": 3}}"#),
            "bytes_out",
        ),
    ];
    for (task, input, expect) in cases {
        let out = d.cli(&["submit", task, "--input", &input, "--wait"]);
        assert!(out.status.success(), "{task}: {}", text(&out));
        let id = stdout(&out).lines().next().unwrap_or("").trim().to_string();
        let res = d.cli(&["result", &id]);
        assert!(res.status.success(), "{task}: {}", text(&res));
        assert!(stdout(&res).contains(expect), "{task}: {}", text(&res));
    }
    let out = d.cli(&[
        "submit",
        "exec",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo hi; exit 0",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id = stdout(&out).lines().next().unwrap_or("").to_string();
    let res = d.cli(&["result", &id, "--json"]);
    assert!(stdout(&res).contains("\"code\""), "{}", text(&res));
    // Without --json, an exec job's result is its captured output.
    let res = d.cli(&["result", &id]);
    assert_eq!(stdout(&res), "hi", "{}", text(&res));
    assert!(
        String::from_utf8_lossy(&res.stderr).contains("exit code 0"),
        "{}",
        text(&res)
    );
    // A command that exits 0 is a job that succeeded.
    let status = d.cli(&["status", &id, "--json"]);
    assert!(
        stdout(&status).contains("\"succeeded\""),
        "{}",
        text(&status)
    );
}

#[test]
fn failed_job_exit_code_and_retries() {
    let d = Daemon::start(&[]);
    // A task error (missing file) is retried max_attempts times, then fails.
    let out = d.cli(&[
        "submit",
        "hash",
        "--input",
        r#"{"path": "/nonexistent/x"}"#,
        "--max-attempts",
        "2",
        "--backoff-ms",
        "10",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let id = stdout(&out).lines().next().unwrap_or("").to_string();
    rt().block_on(async {
        let rec = d.client().await.status(id.parse().unwrap()).await.unwrap();
        assert_eq!(rec.state, JobState::Failed);
        assert_eq!(rec.attempts.len(), 2, "{rec:?}");
        assert!(rec.error.unwrap_or_default().contains("/nonexistent/x"));
    });
    let out = d.cli(&["status", "999999"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
}

#[test]
fn cancel_a_running_exec_and_nothing_of_it_survives() {
    let d = Daemon::start(&[]);
    let pidfile = d.dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 1000", pidfile.display());
    let id: u64 = d
        .cli_ok(&["submit", "exec", "--", "sh", "-c", &script])
        .parse()
        .unwrap();
    let pid: i32 = rt().block_on(async {
        let mut c = d.client().await;
        until(Duration::from_secs(30), "the command running", async || {
            let r = c.status(id).await.unwrap();
            let pid = std::fs::read_to_string(&pidfile).ok();
            match pid.as_deref().map(str::trim).map(str::parse) {
                Some(Ok(p)) if r.state == JobState::Running => Ok(p),
                _ => Err(format!("pid file {pid:?}, {r:?}")),
            }
        })
        .await
    });
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    d.cli_ok(&["cancel", &id.to_string()]);
    let out = d.cli(&["wait", &id.to_string()]);
    assert_eq!(out.status.code(), Some(6), "cancelled: {}", text(&out));
    // The command's process is gone (killed with its group), not a zombie either.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z"),
        "sleep survived: {stat}"
    );
}
