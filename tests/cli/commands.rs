//! The client commands end to end, against a real daemon (issue 10, item
//! F.22): `list` pages and times, `events` history, `wait --all`,
//! `shutdown --wait`, and `--json` of `cancel`, `retry`, `shutdown`.

use std::time::Duration;

use serde_json::Value;

use crate::util::*;

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Five finished jobs, ids 1..=5.
fn five_jobs(d: &Daemon) {
    rt().block_on(async {
        let mut c = d.client().await;
        let ids = submit_ids(
            &mut c,
            (0..5).map(|i| json_spec("noop", &i.to_string())).collect(),
        )
        .await;
        wait_succeeded(&mut c, ids, Some(Duration::from_secs(60))).await;
    });
}

/// A full page says on stderr that more exist and how to see them; the
/// table shows when each job was created and finished and how long it ran.
#[test]
fn list_tells_when_more_exist_and_pages_on_with_before() {
    let d = Daemon::start(&[]);
    five_jobs(&d);
    let out = d.cli(&["list", "--limit", "2"]);
    assert!(out.status.success(), "{}", text(&out));
    let table = stdout(&out);
    let header = table.lines().next().unwrap_or_default();
    for col in ["CREATED", "FINISHED", "DURATION"] {
        assert!(header.contains(col), "{table}");
    }
    let ids: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(ids, ["5", "4"], "{table}");
    assert!(stderr(&out).contains("--before 4"), "{}", text(&out));
    let out = d.cli(&["list", "--limit", "2", "--before", "4", "--json"]);
    let page: Vec<u64> = json(&out)
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(page, [3, 2]);
    assert!(stderr(&out).contains("--before 2"), "{}", text(&out));
    // The last page, and a page that holds everything, say nothing more.
    let out = d.cli(&["list", "--limit", "2", "--before", "2"]);
    assert!(
        out.status.success() && stderr(&out).is_empty(),
        "{}",
        text(&out)
    );
    let out = d.cli(&["list"]);
    assert!(stderr(&out).is_empty(), "{}", text(&out));
}

/// `events` prints the recent history and exits; `--since` filters it.
#[test]
fn events_prints_recent_history_and_exits() {
    let d = Daemon::start(&[]);
    five_jobs(&d);
    let out = d.cli(&["events"]);
    assert!(out.status.success(), "{}", text(&out));
    let history = stdout(&out);
    assert!(history.contains("job 5 noop succeeded"), "{history}");
    let out = d.cli(&["events", "--json"]);
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.len() >= 10, "{lines:?}");
    let out = d.cli(&["events", "--since", "1h"]);
    assert_eq!(stdout(&out), history, "everything is younger than an hour");
}

/// `wait --all` waits for every unfinished job, and its exit code is the
/// worst job's.
#[test]
fn wait_all_waits_for_every_unfinished_job() {
    let d = Daemon::start(&[]);
    let out = d.cli(&["wait", "--all"]);
    assert!(
        out.status.success() && stdout(&out).is_empty(),
        "nothing to wait for: {}",
        text(&out)
    );
    // Long enough to be unfinished when `wait --all` starts.
    for ms in [3000, 2500, 2000] {
        d.cli_ok(&["submit", "sleep", "--input", &format!("{{\"ms\": {ms}}}")]);
    }
    let out = d.cli(&["wait", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out), "1 succeeded\n2 succeeded\n3 succeeded");
    d.cli_ok(&[
        "submit",
        "hash",
        "--input",
        "{\"path\": \"/nonexistent/file\"}",
        "--max-attempts",
        "1",
        "--delay",
        "300ms",
    ]);
    let out = d.cli(&["wait", "--all"]);
    assert_exit("wait --all with a failed job", &out, 3, "");
    assert_eq!(
        stdout(&out).lines().count(),
        1,
        "only job 4 was unfinished: {}",
        text(&out)
    );
    d.cli_ok(&["submit", "sleep", "--input", "{\"ms\": 600000}"]);
    let out = d.cli(&["wait", "--all", "--timeout", "1s", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "unfinished at the deadline: {}",
        text(&out)
    );
    let ids: Vec<u64> = json(&out)
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(ids, [5]);
}

/// `cancel`, `retry` and `shutdown` answer in JSON; `shutdown --wait`
/// returns once the daemon process has exited.
#[test]
fn cancel_retry_and_shutdown_speak_json_and_shutdown_waits() {
    let mut d = Daemon::start(&[]);
    let id = d.cli_ok(&["submit", "sleep", "--input", "{\"ms\": 600000}"]);
    let out = d.cli(&["cancel", &id, "--json"]);
    assert_eq!(
        json(&out),
        serde_json::json!({"id": id.parse::<u64>().unwrap(), "cancelled": true})
    );
    let out = d.cli(&["wait", &id, "--timeout", "60s"]);
    assert_exit("wait for the cancelled job", &out, 6, "");
    let out = d.cli(&["retry", &id, "--json"]);
    assert_eq!(
        json(&out),
        serde_json::json!({"id": id.parse::<u64>().unwrap(), "state": "queued"})
    );
    d.cli_ok(&["cancel", &id]);
    let pid = d.pid();
    let out = d.cli(&["shutdown", "--wait", "--json"]);
    assert_eq!(
        json(&out),
        serde_json::json!({"shutdown": "graceful", "stopped": true, "pid": pid})
    );
    // Gone already: the daemon's exit status is there to collect at once.
    let child = d.child.as_mut().expect("running");
    let status = child.try_wait().expect("try_wait");
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        d.log()
    );
    d.child = None;
}

/// A missing `--input` gets a hint from the task's real input type: `noop`
/// takes a number, not `null` (issue 10, item F.24).
#[test]
fn a_missing_input_gets_the_tasks_own_shape_as_hint() {
    let out = std::process::Command::new(bin())
        .args(["--socket", "/nonexistent/jobvisor.sock", "submit", "noop"])
        .output()
        .expect("run jobvisor");
    assert_exit("submit noop without --input", &out, 2, "--input 1");
    assert!(!stderr(&out).contains("--input null"), "{}", text(&out));
    let out = std::process::Command::new(bin())
        .args(["--socket", "/nonexistent/jobvisor.sock", "submit", "spin"])
        .output()
        .expect("run jobvisor");
    assert_exit("submit spin without --input", &out, 2, "\"ms\"");
}

/// Times for people are in the local zone (`TZ`), with its offset (issue
/// 10, item F.25); before, they were UTC whatever the zone.
#[test]
fn times_are_shown_in_the_local_time_zone() {
    let d = Daemon::start(&[]);
    let id = d.cli_ok(&["submit", "noop", "--input", "1", "--wait"]);
    let in_zone = |tz: &str, args: &[&str]| {
        let out = d
            .cli_command()
            .env("TZ", tz)
            .args(args)
            .output()
            .expect("run cli");
        assert!(out.status.success(), "{}", text(&out));
        stdout(&out)
    };
    let created = |status: &str| {
        status
            .lines()
            .find(|l| l.starts_with("created:"))
            .unwrap_or_else(|| panic!("{status}"))
            .to_owned()
    };
    // POSIX TZ: "JVT-3" is 3 hours east of UTC.
    let east = created(&in_zone("JVT-3", &["status", &id]));
    let utc = created(&in_zone("UTC0", &["status", &id]));
    assert!(
        east.ends_with("+03:00") && utc.ends_with("+00:00"),
        "{east}\n{utc}"
    );
    let hour = |l: &str| -> u32 {
        let time = l.split_whitespace().nth(2).expect("time");
        time[..2].parse().expect("hour")
    };
    assert_eq!((hour(&utc) + 3) % 24, hour(&east), "{east}\n{utc}");
    let events = in_zone("JVT-3", &["events"]);
    assert!(events.lines().all(|l| l.contains(" +03:00 ")), "{events}");
}
