//! The public JSON (issue 10, E.18), held by fixtures: what `submit`,
//! `status`, `list` and `events` print with `--json` for real jobs of a real
//! daemon, compared with the files in `tests/data/json/` after the values
//! that differ from run to run (times, pids, peak RSS, durations) are
//! replaced by placeholders. `docs/json.md` documents every field.
//!
//! A change of shape fails here. When the change is on purpose, rewrite the
//! fixtures with `JOBVISOR_BLESS=1 cargo test --test tests daemon::json`,
//! review the diff, and update `docs/json.md` with it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

/// Keys whose values differ from run to run, and what stands for them.
const VOLATILE: &[(&str, &str)] = &[
    ("at", "<time>"),
    ("created_at", "<time>"),
    ("run_at", "<time>"),
    ("started_at", "<time>"),
    ("finished_at", "<time>"),
    ("worker_pid", "<pid>"),
    ("pid", "<pid>"),
    ("duration_ms", "<ms>"),
    ("max_rss_kib", "<kib>"),
];

/// `v` with every [`VOLATILE`] value that is set replaced by its placeholder.
fn normalise(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            for (k, x) in obj.iter_mut() {
                match VOLATILE.iter().find(|(key, _)| key == k) {
                    Some((_, stand_in)) if !x.is_null() => {
                        if *stand_in == "<time>" {
                            assert_rfc3339(k, x);
                        }
                        *x = Value::from(*stand_in);
                    }
                    _ => normalise(x),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// Times are RFC 3339 in UTC with milliseconds: `2026-12-02T18:29:02.123Z`.
fn assert_rfc3339(key: &str, v: &Value) {
    let t = v.as_str().unwrap_or_default().as_bytes();
    let digits = |r: std::ops::Range<usize>| t[r].iter().all(u8::is_ascii_digit);
    let ok = t.len() == 24
        && [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (23, b'Z'),
        ]
        .iter()
        .all(|&(i, c)| t[i] == c)
        && [0..4, 5..7, 8..10, 11..13, 14..16, 17..19, 20..23]
            .into_iter()
            .all(digits);
    assert!(ok, "`{key}` is not an RFC 3339 time: {v}");
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/json")
        .join(name)
}

/// Compares `got` (normalised) with fixture `name`, or rewrites the fixture
/// under `JOBVISOR_BLESS=1`.
fn check(name: &str, mut got: Value) {
    normalise(&mut got);
    let path = fixture_path(name);
    let text = serde_json::to_string_pretty(&got).expect("encode") + "\n";
    if std::env::var_os("JOBVISOR_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("fixture dir");
        std::fs::write(&path, &text).expect("write fixture");
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {}: {e} (JOBVISOR_BLESS=1 writes it)",
            path.display()
        )
    });
    let want: Value = serde_json::from_str(&want).expect("fixture is JSON");
    assert!(
        got == want,
        "{name} changed shape; got:\n{text}\nwant:\n{}\n(if on purpose: JOBVISOR_BLESS=1, and docs/json.md)",
        serde_json::to_string_pretty(&want).unwrap_or_default()
    );
}

fn json_of(d: &Daemon, args: &[&str]) -> Value {
    let out = d.cli_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {out}"))
}

#[test]
fn json_output_matches_the_fixtures() {
    let d = Daemon::start_raw(&["--workers", "1"]);
    // 1: a command whose stdout is UTF-8 and whose stderr is not.
    let submitted = json_of(
        &d,
        &[
            "submit",
            "exec",
            "--json",
            "--",
            "sh",
            "-c",
            r"printf 'h\303\251llo\n'; printf '\377\376' >&2",
        ],
    );
    check("submit.json", submitted);
    d.cli_ok(&["wait", "1"]);
    // 2: a pipeline step: its input is the exit code of job 1.
    d.cli_ok(&[
        "submit",
        "noop",
        "--input",
        "null",
        "--input-from",
        "1:/code",
        "--wait",
    ]);
    // 3: a job that fails: a task error, no retry.
    let out = d.cli(&[
        "submit",
        "hash",
        "--input",
        r#"{"path": "/nonexistent/jobvisor-fixture"}"#,
        "--max-attempts",
        "1",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));

    let exec = json_of(&d, &["status", "1", "--json"]);
    assert_eq!(exec["output"]["stdout"], "h\u{e9}llo\n", "{exec}");
    assert_eq!(exec["output"]["stderr"]["base64"], "//4=", "{exec}");
    check("status-exec.json", exec);
    check(
        "status-pipeline.json",
        json_of(&d, &["status", "2", "--json"]),
    );
    check(
        "status-failed.json",
        json_of(&d, &["status", "3", "--json"]),
    );
    check("list.json", json_of(&d, &["list", "--json"]));
    check("events.json", events_of_one_job(&d));
}

/// The events of one `noop` job, as `events --follow --json` prints them.
fn events_of_one_job(d: &Daemon) -> Value {
    let mut follower = d
        .cli_command()
        .args(["events", "--follow", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("events");
    let pipe = follower.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines() {
            let Ok(v) = line.map(|l| serde_json::from_str(&l)) else {
                return;
            };
            if tx.send(v.unwrap_or(Value::Null)).is_err() {
                return;
            }
        }
    });
    // Live once an event arrives (bounded); then the job we keep.
    let live = (0..100).any(|_| {
        d.cli_ok(&["submit", "noop", "--input", "0"]);
        rx.recv_timeout(Duration::from_millis(100)).is_ok()
    });
    assert!(live, "no event ever arrived");
    let id: u64 = d
        .cli_ok(&["submit", "noop", "--input", "7"])
        .parse()
        .expect("id");
    let mut mine = Vec::new();
    while mine.last().map(|v: &Value| v["state"].clone()) != Some(Value::from("succeeded")) {
        let v = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("event stream stalled; saw {mine:?}"));
        if v["kind"] == "job" && v["id"] == id {
            mine.push(v);
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    for v in &mut mine {
        v["id"] = Value::from("<id>");
    }
    Value::Array(mine)
}
