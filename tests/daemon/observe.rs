//! What the daemon tells about itself: stats that tell CPU-bound tasks from
//! waiting ones, the event stream of jobs and workers, and its log.

use std::process::Stdio;
use std::time::Duration;

use jobvisor_client::JobSpec;

use crate::util::*;

#[test]
fn stats_tell_cpu_bound_from_waiting_tasks() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let mut c = d.client().await;
        let mut specs: Vec<JobSpec> = (0..6).map(|_| json_spec("spin", r#"{"ms": 30}"#)).collect();
        // A CPU task that waits (it holds a worker's CPU thread while idle).
        // Its command's own CPU (starting `sleep`, a few ms on a loaded
        // machine) counts as the job's: sleep long enough for that to be small.
        specs.extend((0..6).map(|_| json_spec("exec", r#"{"argv": ["sleep", "0.1"]}"#)));
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
            sleep.wall_ms >= 600 && sleep.cpu_ms * 10 < sleep.wall_ms,
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

/// The CPU an `exec` command spends counts as its job's (issue 13, 5):
/// `stats` shows at least what each command itself read from its own
/// `/proc/self/stat`, so a busy command is not judged "mostly waits".
/// Jobs run one at a time on one worker; the first may go unmeasured (the
/// worker samples short calls), so only the later ones are summed.
#[test]
fn an_exec_commands_cpu_counts_as_its_jobs() {
    let d = Daemon::start_raw(&["--workers", "1"]);
    let script =
        "i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done; cut -d' ' -f14,15 /proc/$$/stat";
    let mut counted_ms = 0;
    for n in 0..5 {
        let id = d.cli_ok(&["submit", "--wait", "exec", "--", "sh", "-c", script]);
        let out: serde_json::Value =
            serde_json::from_str(&d.cli_ok(&["result", &id, "--json"])).expect("json");
        let stdout = out["output"]["stdout"].as_str().expect("stdout text");
        let ticks: u64 = stdout
            .split_whitespace()
            .map(|t| t.parse::<u64>().unwrap())
            .sum();
        // Clock ticks of 10 ms (CLK_TCK is 100 on Linux).
        if n > 0 {
            counted_ms += ticks * 10;
        }
    }
    assert!(
        counted_ms >= 100,
        "the commands barely ran: {counted_ms} ms"
    );
    let stats = rt().block_on(async { d.client().await.stats().await.unwrap() });
    let exec = stats
        .tasks
        .iter()
        .find(|t| t.task == "exec")
        .expect("exec row");
    assert!(
        exec.cpu_ms >= counted_ms,
        "stats count {} ms of CPU for commands that used {counted_ms} ms: {exec:?}",
        exec.cpu_ms
    );
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
        v["kind"] == "job" && v["id"].as_u64() == Some(id) && v["state"].as_str() == Some("dead")
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
        .filter(|v| v["kind"] == "job" && v["id"].as_u64() == Some(id))
        .filter_map(|v| v["state"].as_str())
        .collect();
    assert_eq!(states.first(), Some(&"queued"), "{seen:?}");
    assert!(
        states.contains(&"running") && states.contains(&"retrying"),
        "{states:?}"
    );
    assert_eq!(states.last(), Some(&"dead"));
    assert!(
        seen.iter().any(|v| v["kind"] == "worker_exited")
            && seen.iter().any(|v| v["kind"] == "worker_started"),
        "worker deaths and replacements are events too: {seen:?}"
    );
}

/// Issue 10, E.19: the daemon's log, written to a file, has no ANSI escapes;
/// a worker's output line names the job that printed it (README: "each
/// attempt's log lines carry the job id"); an attempt's outcome is logged as
/// words (`outcome=crashed code=3 ...`), not as Rust's `Debug`.
#[test]
fn the_log_names_the_job_and_has_no_colours_or_debug_shapes() {
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "submit",
        "crash",
        "--input",
        r#"{"exit_code": 3}"#,
        "--max-attempts",
        "1",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let id = stdout(&out).lines().next().unwrap_or_default().to_string();
    let log = d.log();
    assert!(!log.contains('\x1b'), "ANSI escapes in a log file:\n{log}");
    let said: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("jobvisor::worker_output") && l.contains("down on purpose"))
        .collect();
    assert!(!said.is_empty(), "no worker output line:\n{log}");
    for line in &said {
        assert!(
            line.contains(&format!("job={id}")),
            "worker output without its job: {line}"
        );
    }
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("attempt ended"))
        .collect();
    assert!(!ended.is_empty(), "no attempt ended:\n{log}");
    for line in ended {
        let outcome = line
            .find("outcome=")
            .map(|at| &line[at..])
            .unwrap_or_else(|| panic!("no outcome= in {line}"));
        assert!(
            outcome.starts_with("outcome=crashed code=3 max_rss_kib="),
            "{line}"
        );
        assert!(!outcome.contains(['{', '}']), "Debug braces: {line}");
    }
}
