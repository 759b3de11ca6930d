//! End-to-end tests of the daemon with the real `jobvisor` binary: a temp
//! state dir per test, readiness through `jobvisor ping --wait`, the daemon's
//! process group killed and reaped in `Drop`.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use jobvisor_client::{ErrorKind, JobSpec, JobState};

use crate::util::cpu;
use crate::util::proc::signal;
use crate::util::wait::{job_when, until, workers_when};
use crate::util::*;

mod io;
mod notify;

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
    // A failing command is a job that succeeded with exit code 3 recorded.
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
fn kill_minus_nine_with_a_thousand_jobs_loses_nothing() {
    // A thousand spinning jobs keep both cores busy for a while.
    let _cpu = cpu::alone();
    let mut d = Daemon::start(&[]);
    // 1,000 jobs: many short, some longer, submitted in batches; every id we
    // get back was acknowledged after its commit.
    let mut acked: Vec<u64> = Vec::new();
    rt().block_on(async {
        let mut c = d.client().await;
        for batch in 0..10 {
            let specs: Vec<JobSpec> = (0..100)
                .map(|i| {
                    let ms = if (batch * 100 + i) % 10 == 0 { 300 } else { 20 };
                    json_spec("spin", &format!(r#"{{"ms": {ms}}}"#))
                })
                .collect();
            let ids = c.submit(specs).await.expect("submit");
            acked.extend(ids.iter().map(|s| s.id));
        }
    });
    assert_eq!(acked.len(), 1000);
    // Some are running, most are queued: now kill everything.
    d.kill9();
    d.spawn();
    let records = rt().block_on(async {
        let mut c = d.client().await;
        c.wait(acked.clone(), Some(Duration::from_secs(120)))
            .await
            .expect("wait")
    });
    assert_eq!(records.len(), 1000);
    let mut reruns = 0;
    for r in &records {
        assert_eq!(
            r.state,
            JobState::Succeeded,
            "job {} ended {:?}: {:?}",
            r.id,
            r.state,
            r.error
        );
        reruns += r
            .attempts
            .iter()
            .filter(|a| a.outcome == jobvisor_client::AttemptOutcome::Lost)
            .count();
    }
    let stats = rt().block_on(async { d.client().await.stats().await.unwrap() });
    assert!(
        stats.recovered > 0,
        "the restart recovered the unfinished jobs: {stats:?}"
    );
    println!("kill -9 with 1000 jobs: all 1000 succeeded; {} were recovered; {reruns} attempts were lost and re-run", stats.recovered);
}

#[test]
fn sigterm_drains_running_jobs_and_exits_zero() {
    let mut d = Daemon::start(&[]);
    let ids: Vec<u64> = rt().block_on(async {
        let mut c = d.client().await;
        let specs = (0..2)
            .map(|_| json_spec("sleep", r#"{"ms": 700}"#))
            .collect();
        let ids: Vec<u64> = submit_ids(&mut c, specs).await;
        // Wait until both run (their attempts are recorded as started).
        until(Duration::from_secs(30), "both jobs running", async || {
            let running = c.list(Some(JobState::Running), None, 10).await.unwrap();
            if running.len() == 2 {
                Ok(())
            } else {
                Err(format!("{running:?}"))
            }
        })
        .await;
        ids
    });
    let status = d.term_and_wait();
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(!d.socket.exists(), "socket removed");
    // Restart and check that both finished before the daemon exited.
    d.spawn();
    rt().block_on(async {
        let mut c = d.client().await;
        for id in ids {
            let r = c.status(id).await.unwrap();
            assert_eq!(r.state, JobState::Succeeded, "{r:?}");
            assert_eq!(r.attempts.len(), 1);
        }
    });
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

#[test]
fn another_uid_is_refused() {
    let d = Daemon::start(&[]);
    // Open the directory and socket to everyone, to show the peer check is a
    // second line and not just file permissions.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(d.state_dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = d
        .cli_command()
        .arg("ping")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("uid 65534 may not use this daemon"),
        "{}",
        text(&out)
    );
    assert!(d.cli(&["ping"]).status.success());
}

#[test]
fn queue_full_accepts_nothing_of_the_request() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("small.toml");
    std::fs::write(&cfg, "[limits]\nmax_queued_jobs = 5\n").unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    rt().block_on(async {
        let mut c = d.client().await;
        let specs: Vec<JobSpec> = (0..10)
            .map(|_| json_spec("sleep", r#"{"ms": 1}"#))
            .collect();
        let e = c.submit(specs).await.unwrap_err();
        match e {
            jobvisor_client::ClientError::Server(e) => {
                assert_eq!(e.kind, ErrorKind::LimitReached);
                assert!(e.message.contains("queue full"), "{e}");
            }
            other => panic!("{other}"),
        }
        assert!(
            c.list(None, None, 100).await.unwrap().is_empty(),
            "nothing half-accepted"
        );
        let ok = c
            .submit((0..5).map(|_| json_spec("noop", "1")).collect())
            .await
            .unwrap();
        assert_eq!(ok.len(), 5);
    });
}

/// Reads one response frame from a raw control connection.
async fn read_response(
    s: &mut tokio::net::UnixStream,
    fb: &mut jobvisor_proto::FrameBuf,
) -> jobvisor_proto::control::Response {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(r) = fb.decode_next().unwrap() {
            return r;
        }
        let n = s.read(fb.spare()).await.unwrap();
        assert!(n > 0, "the daemon closed the connection without an answer");
        fb.filled(n);
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_disturbs_nothing() {
    let d = Daemon::start(&[]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["submit", "no-such-task", "--input", "{}"],
            "unknown task",
        ),
        (
            vec!["submit", "spin", "--input", r#"{"seconds": 3}"#],
            "missing field `ms`",
        ),
        (
            vec!["submit", "noop", "--input", "1", "--after", "987654"],
            "missing job 987654",
        ),
    ];
    for (args, expect) in cases {
        let out = d.cli(&args);
        assert_exit(&format!("{args:?}"), &out, 7, expect);
    }
    // Malformed JSON: the CLI refuses it before sending (usage error) ...
    let out = d.cli(&["submit", "spin", "--input", "{not json"]);
    assert_exit("malformed JSON", &out, 2, "not valid JSON");
    // ... and the daemon refuses it from any other client.
    rt().block_on(async {
        let e = d
            .client()
            .await
            .submit(vec![json_spec("spin", "{not json")])
            .await
            .unwrap_err();
        match e {
            jobvisor_client::ClientError::Server(e) => {
                assert_eq!(e.kind, ErrorKind::BadInput);
                assert!(
                    e.message.contains("input does not fit task \"spin\""),
                    "{e}"
                );
            }
            other => panic!("{other}"),
        }
    });
    // Garbage bytes and an oversize frame on the socket.
    rt().block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        s.write_all(&jobvisor_proto::Hello::ours(jobvisor_proto::Role::Client).encode())
            .await
            .unwrap();
        let mut hello = [0u8; 24];
        s.read_exact(&mut hello).await.unwrap();
        // A well-framed payload of garbage: an error answer, the connection lives.
        s.write_all(&[3, 0, 0, 0, 0xff, 0xff, 0xff]).await.unwrap();
        let mut fb = jobvisor_proto::FrameBuf::new(1 << 20);
        let resp = read_response(&mut s, &mut fb).await;
        assert!(
            format!("{resp:?}").contains("malformed request"),
            "{resp:?}"
        );
        // A 4 GiB length: refused before reading, connection closed.
        s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
        let resp = read_response(&mut s, &mut fb).await;
        assert!(
            format!("{resp:?}").contains("exceeds limits.max_frame_bytes"),
            "{resp:?}"
        );
        let mut rest = Vec::new();
        assert_eq!(s.read_to_end(&mut rest).await.unwrap(), 0, "closed");
        // A peer that is not jobvisor at all.
        let mut s = tokio::net::UnixStream::connect(&d.socket).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
    });
    // The daemon and other jobs are unaffected.
    d.cli_ok(&["submit", "noop", "--input", "5", "--wait"]);
}

#[test]
fn idempotency_key_dedupes_and_dependencies_order_jobs() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let mut c = d.client().await;
        let mut a = json_spec("sleep", r#"{"ms": 50}"#);
        a.key = Some("k-1".into());
        let first = c.submit(vec![a.clone()]).await.unwrap()[0];
        let second = c.submit(vec![a]).await.unwrap()[0];
        assert_eq!(first.id, second.id);
        assert!(second.duplicate && !first.duplicate);
        let mut b = json_spec("noop", "7");
        b.after = vec![first.id];
        let b = c.submit(vec![b]).await.unwrap()[0];
        let recs = wait_succeeded(&mut c, vec![first.id, b.id], None).await;
        assert!(
            recs[1].attempts[0].started_ms >= recs[0].finished_ms.unwrap(),
            "b ran after a"
        );
        // A failed dependency fails the dependent with the reason.
        let bad = c
            .submit(vec![json_spec("hash", r#"{"path": "/nope"}"#)])
            .await
            .unwrap()[0];
        let mut dep = json_spec("noop", "1");
        dep.after = vec![bad.id];
        let dep = c.submit(vec![dep]).await.unwrap()[0];
        let recs = c.wait(vec![dep.id], None).await.unwrap();
        assert_eq!(recs[0].state, JobState::Failed);
        assert!(
            recs[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains(&format!("dependency {}", bad.id)),
            "{recs:?}"
        );
    });
}

#[test]
fn batch_submit_from_json_lines() {
    let d = Daemon::start(&[]);
    let lines: String = (0..50)
        .map(|i| format!("{{\"task\": \"noop\", \"input\": {i}}}\n"))
        .collect();
    let out = d.cli_stdin(&["submit", "--batch", "-", "--wait"], &lines);
    assert!(out.status.success(), "{}", text(&out));
    let ids: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(ids.len(), 50, "{}", text(&out));
    let res = d.cli(&["result", ids[49]]);
    assert_eq!(stdout(&res), "49");
}

#[test]
fn sighup_reloads_pool_size_and_queues_without_losing_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("jobvisor.toml");
    std::fs::write(&cfg, "workers = 1\n").unwrap();
    let d = Daemon::start_raw(&["--config", cfg.to_str().unwrap()]);
    rt().block_on(async {
        let mut c = d.client().await;
        assert_eq!(c.workers().await.unwrap().len(), 1);
        let mut heavy = json_spec("sleep", r#"{"ms": 1}"#);
        heavy.queue = Some("heavy".into());
        assert!(
            c.submit(vec![heavy.clone()]).await.is_err(),
            "queue unknown before the reload"
        );
        // Jobs in flight across the reload.
        let running: Vec<u64> = submit_ids(
            &mut c,
            (0..4)
                .map(|_| json_spec("sleep", r#"{"ms": 300}"#))
                .collect(),
        )
        .await;
        std::fs::write(&cfg, "workers = 3\n[queues.heavy]\nconcurrency = 1\n").unwrap();
        d.signal(libc::SIGHUP);
        // The reload is applied asynchronously; poll the observable result, bounded.
        workers_when(
            &mut c,
            Duration::from_secs(20),
            "pool did not grow to 3 workers",
            |rows| rows.iter().filter(|w| w.state.as_str() == "ready").count() == 3,
        )
        .await;
        let id = until(
            Duration::from_secs(20),
            "queue still unknown after the reload",
            async || match c.submit(vec![heavy.clone()]).await {
                Ok(v) => Ok(v[0].id),
                Err(e) => Err(e.to_string()),
            },
        )
        .await;
        let mut all = running.clone();
        all.push(id);
        wait_succeeded(&mut c, all, None).await;
    });
}

/// A job under which workers keep dying (here: killed from outside, as an OOM
/// killer would) is dead-lettered after `jobs.max_crashes` deaths with the
/// evidence of each; `list --state dead` shows it and `retry` re-queues it.
#[test]
fn poison_job_is_dead_lettered_with_evidence_and_can_be_retried() {
    let d = Daemon::start(&[]);
    // A long spin: its worker burning CPU is the sign that the call started
    // (a worker killed before it starts a call is not charged for it).
    let id: u64 = d
        .cli_ok(&[
            "submit",
            "spin",
            "--input",
            r#"{"ms": 60000}"#,
            "--backoff-ms",
            "10:20",
        ])
        .parse()
        .unwrap();
    rt().block_on(async {
        let mut c = d.client().await;
        for kill in 1..=3u32 {
            // Wait until a worker runs the job's attempt number `kill`, then
            // kill that worker.
            let pid = until(Duration::from_secs(30), "attempt running", async || {
                let r = c.status(id).await.unwrap();
                if r.state != JobState::Running || r.attempts.len() != kill as usize {
                    return Err(format!("attempt {kill}: {r:?}"));
                }
                let rows = c.workers().await.unwrap();
                match rows.iter().find(|w| w.running_job == Some(id)) {
                    Some(w) => Ok(w.pid),
                    None => Err(format!("attempt {kill}: no worker runs it: {rows:?}")),
                }
            })
            .await;
            // A worker of the daemon under test.
            assert!(signal(pid as i32, libc::SIGKILL), "kill worker {pid}");
        }
        let r = c
            .wait(vec![id], Some(Duration::from_secs(30)))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(r.state, JobState::Dead, "{r:?}");
        assert!(
            r.error
                .as_deref()
                .unwrap_or("")
                .contains("poison job: it killed 3 workers"),
            "{r:?}"
        );
        assert_eq!(r.attempts.len(), 3);
        for a in &r.attempts {
            match &a.outcome {
                jobvisor_client::AttemptOutcome::Crashed {
                    signal,
                    max_rss_kib,
                    ..
                } => {
                    assert_eq!(*signal, Some(libc::SIGKILL));
                    assert!(*max_rss_kib > 0);
                }
                other => panic!("{other:?}"),
            }
            assert!(a.worker_pid.is_some());
        }
        let dead = c.list(Some(JobState::Dead), None, 10).await.unwrap();
        assert_eq!(dead.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
    });
    let out = d.cli(&["list", "--state", "dead"]);
    assert!(stdout(&out).contains(&id.to_string()), "{}", text(&out));
    d.cli_ok(&["retry", &id.to_string()]);
    rt().block_on(async {
        let mut c = d.client().await;
        let r = job_when(&mut c, id, Duration::from_secs(30), "retried", |r| {
            r.state == JobState::Running && r.attempts.len() == 4
        })
        .await;
        assert_eq!(
            r.attempts.len(),
            4,
            "the retried job runs again, its history kept"
        );
        c.cancel(id).await.unwrap();
        let r = c.wait(vec![id], None).await.unwrap().remove(0);
        assert_eq!(r.state, JobState::Cancelled);
    });
    // Retrying a job that succeeded is refused.
    let out = d.cli(&["submit", "noop", "--input", "1", "--wait"]);
    let ok_id = stdout(&out);
    let out = d.cli(&["retry", &ok_id]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
}

#[test]
fn memory_limit_is_configured_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("mem.toml");
    std::fs::write(
        &cfg,
        "[pool]\nmemory_limit_bytes = 1073741824\n[jobs]\nmax_crashes = 1\n",
    )
    .unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    // The daemon says which mechanism enforces the limit; enforcement itself
    // (a task allocating without bound) is tested at the pool level, where a
    // test task can allocate: no built-in task does.
    let log = d.log();
    assert!(
        log.contains("worker memory limit enforced with RLIMIT_AS"),
        "{log}"
    );
    let out = d.cli(&["submit", "noop", "--input", "3", "--wait"]);
    assert!(
        out.status.success(),
        "workers run under the limit: {}",
        text(&out)
    );
}

#[test]
fn crash_task_is_dead_lettered_and_the_daemon_stays_healthy() {
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "submit",
        "crash",
        "--input",
        r#"{"exit_code": 7}"#,
        "--backoff-ms",
        "10",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(3), "dead: {}", text(&out));
    let id = stdout(&out).lines().next().unwrap_or("").to_string();
    rt().block_on(async {
        let mut c = d.client().await;
        let r = c.status(id.parse().unwrap()).await.unwrap();
        assert_eq!(r.state, JobState::Dead);
        assert_eq!(r.attempts.len(), 3, "jobs.max_crashes = 3");
        for a in &r.attempts {
            match &a.outcome {
                jobvisor_client::AttemptOutcome::Crashed {
                    code, stderr_tail, ..
                } => {
                    assert_eq!(*code, Some(7));
                    assert!(
                        stderr_tail.iter().any(|l| l.contains("on purpose")),
                        "{stderr_tail:?}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        let stats = c.stats().await.unwrap();
        assert!(
            !stats.degraded,
            "3 deaths stay within the restart intensity: {stats:?}"
        );
    });
    d.cli_ok(&["submit", "noop", "--input", "9", "--wait"]);
}

#[test]
fn stats_tell_cpu_bound_from_waiting_tasks() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let mut c = d.client().await;
        let mut specs: Vec<JobSpec> = (0..6).map(|_| json_spec("spin", r#"{"ms": 30}"#)).collect();
        // A CPU task that waits (it holds a worker's CPU thread while idle).
        specs.extend((0..6).map(|_| json_spec("exec", r#"{"argv": ["sleep", "0.03"]}"#)));
        // The async sleep waits on the event loop: the right kind, no advice.
        specs.extend((0..6).map(|_| json_spec("sleep", r#"{"ms": 30}"#)));
        let ids: Vec<u64> = submit_ids(&mut c, specs).await;
        c.wait(ids, None).await.unwrap();
        let stats = c.stats().await.unwrap();
        let row = |name: &str| {
            stats
                .tasks
                .iter()
                .find(|t| t.task == name)
                .cloned()
                .expect(name)
        };
        let (spin, sleep) = (row("spin"), row("exec"));
        assert_eq!((spin.attempts, sleep.attempts), (6, 6));
        let io = row("sleep");
        assert_eq!((io.kind.as_str(), io.attempts), ("io", 6), "{io:?}");
        assert_eq!(io.advice, None, "an async sleep is the right kind: {io:?}");
        assert_eq!((spin.kind.as_str(), sleep.kind.as_str()), ("cpu", "cpu"));
        assert!(
            sleep.wall_ms >= 180 && sleep.cpu_ms * 10 < sleep.wall_ms,
            "{sleep:?}"
        );
        assert!(
            sleep
                .advice
                .as_deref()
                .unwrap_or("")
                .contains("mostly waits"),
            "{sleep:?}"
        );
        // On an idle machine spin is ~100% CPU and gets no advice; on an
        // oversubscribed one it also waits for a CPU, so compare shares.
        assert!(
            spin.cpu_ms * sleep.wall_ms > 4 * sleep.cpu_ms.max(1) * spin.wall_ms,
            "{spin:?} vs {sleep:?}"
        );
    });
    let out = d.cli(&["stats"]);
    assert!(stdout(&out).contains("which kind is it?"), "{}", text(&out));
}

#[test]
fn events_follow_streams_job_and_worker_events() {
    let d = Daemon::start(&[]);
    let mut follower = d
        .cli_command()
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("events");
    let out_pipe = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out_pipe).lines() {
            let Ok(line) = line else { return };
            let Ok(v) = serde_json::from_str(&line) else {
                return;
            };
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    // The subscription is live once an event arrives: submit no-op jobs until
    // one does (bounded), then the job whose whole life we check.
    let mut live = false;
    for _ in 0..100 {
        assert!(d.cli(&["submit", "noop", "--input", "0"]).status.success());
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            live = true;
            break;
        }
    }
    assert!(live, "no event ever arrived");
    let out = d.cli(&[
        "submit",
        "crash",
        "--input",
        r#"{"exit_code": 3}"#,
        "--max-attempts",
        "1",
        "--backoff-ms",
        "5",
    ]);
    let id: u64 = stdout(&out).parse().unwrap();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let is_dead = |v: &serde_json::Value| {
        v.pointer("/kind/Job/id").and_then(|x| x.as_u64()) == Some(id)
            && v.pointer("/kind/Job/state").and_then(|s| s.as_str()) == Some("dead")
    };
    while !seen.iter().any(is_dead) {
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("stream stalled; saw {seen:?}"));
        seen.push(v);
    }
    let _ = follower.kill();
    let _ = follower.wait();
    let states: Vec<&str> = seen
        .iter()
        .filter(|v| v.pointer("/kind/Job/id").and_then(|x| x.as_u64()) == Some(id))
        .filter_map(|v| v.pointer("/kind/Job/state").and_then(|s| s.as_str()))
        .collect();
    assert_eq!(states.first(), Some(&"queued"), "{seen:?}");
    assert!(
        states.contains(&"running") && states.contains(&"retrying"),
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&"dead"));
    assert!(
        seen.iter()
            .any(|v| v.pointer("/kind/WorkerExited").is_some())
            && seen
                .iter()
                .any(|v| v.pointer("/kind/WorkerStarted").is_some()),
        "worker deaths and replacements are events too: {seen:?}"
    );
}

#[test]
fn pipelines_take_input_from_earlier_outputs() {
    let d = Daemon::start(&[]);
    let file = d.dir.path().join("data.txt");
    std::fs::write(&file, b"hello").unwrap();
    // A batch chain: hash → noop fed the byte count → noop fed that output whole.
    let lines = format!(
        "{{\"task\": \"hash\", \"input\": {{\"path\": \"{}\"}}}}\n\
         {{\"task\": \"noop\", \"input\": {{}}, \"input_from\": [\"#1:/bytes\"]}}\n\
         {{\"task\": \"noop\", \"input\": {{}}, \"input_from\": [{{\"job\": \"#2\"}}]}}\n",
        file.display()
    );
    let out = d.cli_stdin(&["submit", "--batch", "-", "--wait"], &lines);
    assert!(out.status.success(), "{}", text(&out));
    let ids: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        stdout(&d.cli(&["result", &ids[2]])),
        "5",
        "the byte count flowed through two steps"
    );
    // On the command line, with a field, next to static input.
    let out = d.cli(&[
        "submit",
        "compress",
        "--input",
        "{\"dst\": \"/nonexistent-dir/x.zst\", \"level\": 3}",
        "--input-from",
        &format!("{}:/path@src", ids[0]),
    ]);
    // hash's output has no /path: the step fails with the reason, not a hang.
    let id = stdout(&out);
    let out = d.cli(&["wait", &id]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let st = d.cli(&["status", &id, "--json"]);
    assert!(
        stdout(&st).contains("has nothing at /path"),
        "{}",
        text(&st)
    );
    // A failed step fails the steps after it, with the reason.
    let lines = "{\"task\": \"hash\", \"input\": {\"path\": \"/no/such\"}, \"max_attempts\": 1}\n\
                 {\"task\": \"noop\", \"input\": {}, \"input_from\": [\"#1:/bytes\"]}\n";
    let out = d.cli_stdin(&["submit", "--batch", "-", "--wait"], lines);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let second = stdout(&out).lines().nth(1).unwrap_or("").to_string();
    let st = d.cli(&["status", &second, "--json"]);
    assert!(
        stdout(&st).contains("dependency") && stdout(&st).contains("failed"),
        "{}",
        text(&st)
    );
}
