//! End-to-end tests of the built-in tasks through `run_detached` (and
//! `run_detached_async`), plus the wire encoding of their inputs and outputs.

mod http;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use jobvisor_tasks::{
    builtin, CompressInput, Exec, ExecInput, ExecOutput, HashInput, SpinInput, SpinOutput,
};
use jobvisor_worker::{run_detached, TaskError};
use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;

fn exec(input: ExecInput) -> ExecOutput {
    let argv = input.argv.clone();
    run_detached(&Exec, input, None).unwrap_or_else(|e| panic!("exec {argv:?} failed: {e:?}"))
}

/// The error message of an exec that must fail (not a cancel, not bad input).
fn exec_err(input: ExecInput) -> String {
    let argv = input.argv.clone();
    let e = run_detached(&Exec, input, None)
        .err()
        .unwrap_or_else(|| panic!("exec {argv:?} must fail"));
    assert!(!e.is_cancelled() && !is_bad_input(&e), "{e:?}");
    e.to_string()
}

/// The text a failure's error quotes under `label:` (up to the next label).
fn quoted<'a>(message: &'a str, label: &str) -> &'a str {
    let Some((_, rest)) = message.split_once(&format!("\n{label}:\n")) else {
        panic!("no {label} in {message:?}")
    };
    rest.split("\nstdout:\n").next().unwrap_or(rest)
}

fn sh(script: &str) -> ExecInput {
    ExecInput::new(["sh", "-c", script])
}

fn is_bad_input(e: &TaskError) -> bool {
    format!("{e:?}").contains("BadInput")
}

/// Waits (bounded) until no process is left in group `pgid`. Group members
/// that were just SIGKILLed take a moment to be torn down, so poll rather than
/// check once.
fn assert_group_gone(pgid: i32) {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let res = killpg(Pid::from_raw(pgid), None);
        // Killed members whose parent exited are reparented to init and stay
        // zombies until it reaps them, which some inits do only every few
        // seconds. A zombie is dead: only live members count.
        if res == Err(Errno::ESRCH) || live_members(pgid).is_empty() {
            return;
        }
        if Instant::now() >= until {
            panic!(
                "process group {pgid} still has live members 10 s later: {:?}",
                live_members(pgid)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pids of the processes in group `pgid` that are not zombies, from /proc.
fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // The process may be gone by now; then it is not live.
            let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name, which ends at the last ')':
            // state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let mut fields = rest.split_whitespace();
            let state = fields.next();
            let group = fields.nth(1).and_then(|g| g.parse::<i32>().ok());
            group == Some(pgid) && state != Some("Z")
        })
        .collect()
}

fn first_line_pid(out: &[u8]) -> i32 {
    let text = String::from_utf8_lossy(out);
    let line = text.lines().next().unwrap_or_default();
    line.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in output {text:?}"))
}

#[test]
fn builtin_registry_lists_all_tasks() {
    let names: Vec<_> = builtin().names().collect();
    assert_eq!(
        names,
        ["noop", "spin", "sleep", "exec", "hash", "compress", "crash", "http", "notify"]
    );
}

/// Issue 10, item 24: a misspelled field is refused for every task (it was
/// silently ignored for `spin` and `exec`), and `exec.env` takes the object
/// form people write as well as the list of pairs.
#[test]
fn json_inputs_refuse_unknown_fields_and_exec_env_takes_an_object() {
    use jobvisor_proto::codec::decode;
    let reg = builtin();
    for (task, json) in [
        ("spin", r#"{"ms": 1, "msx": 2}"#),
        ("sleep", r#"{"ms": 1, "oops": 1}"#),
        ("exec", r#"{"argv": ["true"], "timout_ms": 5}"#),
        ("hash", r#"{"path": "/x", "algo": "md5"}"#),
        ("compress", r#"{"src": "/a", "dst": "/b", "lvl": 3}"#),
    ] {
        let e = reg.json_to_native(task, json).expect_err(task).to_string();
        assert!(e.contains("unknown field"), "{task}: {e}");
    }
    let object = reg
        .json_to_native("exec", r#"{"argv": ["env"], "env": {"A": "1", "B": "2"}}"#)
        .expect("object form");
    let list = reg
        .json_to_native(
            "exec",
            r#"{"argv": ["env"], "env": [["A", "1"], ["B", "2"]]}"#,
        )
        .expect("list form");
    assert_eq!(object, list, "both forms give the same native input");
    let input: ExecInput = decode(&object).expect("decode");
    assert_eq!(
        input.env,
        vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "2".to_owned())
        ]
    );
}

/// Issue 10, E.18: exec's output in JSON (what the daemon stores and `status
/// --json` shows) has its streams as text, not arrays of numbers, and bytes
/// that are not UTF-8 as `{"base64": ...}`.
#[test]
fn exec_output_in_json_is_text() {
    let out = exec(sh(r"printf 'h\303\251llo\n'; printf '\377\376' >&2"));
    let registry = builtin();
    let native = jobvisor_proto::codec::encode(&out).expect("encode");
    let text = registry
        .native_output_to_json("exec", &native)
        .expect("to json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["stdout"], serde_json::json!("héllo\n"), "{text}");
    assert_eq!(v["stderr"], serde_json::json!({"base64": "//4="}), "{text}");
    let back: ExecOutput = serde_json::from_str(&text).expect("back");
    assert_eq!(back, out);
}

#[test]
fn inputs_and_outputs_survive_the_wire_codec() {
    use jobvisor_proto::codec::{decode, encode};
    let mut input = sh("cat");
    input.env = vec![("A".into(), "1".into())];
    input.cwd = Some("/".into());
    input.stdin = Some(b"bytes\0\xff".to_vec());
    input.timeout_ms = Some(5);
    let back: ExecInput = decode(&encode(&input).expect("encode")).expect("decode");
    assert_eq!(back, input);
    input.stdin = None;
    let back: ExecInput = decode(&encode(&input).expect("encode")).expect("decode");
    assert_eq!(back, input);

    let out = exec(ExecInput::new(["echo", "hi"]));
    let back: ExecOutput = decode(&encode(&out).expect("encode")).expect("decode");
    assert_eq!(back, out);

    let spin = SpinOutput { iterations: 7 };
    assert_eq!(
        decode::<SpinOutput>(&encode(&spin).expect("encode")).ok(),
        Some(spin)
    );
    let c = CompressInput {
        src: "a".into(),
        dst: "b".into(),
        level: -5,
    };
    assert_eq!(
        decode::<CompressInput>(&encode(&c).expect("encode")).ok(),
        Some(c)
    );
    let h = HashInput { path: "p".into() };
    assert_eq!(
        decode::<HashInput>(&encode(&h).expect("encode")).ok(),
        Some(h)
    );
    let s = SpinInput { ms: 3 };
    assert_eq!(
        decode::<SpinInput>(&encode(&s).expect("encode")).ok(),
        Some(s)
    );
}

#[test]
fn exec_echo() {
    let out = exec(ExecInput::new(["echo", "hi"]));
    assert_eq!(out.stdout, b"hi\n");
    assert!(out.stderr.is_empty());
    assert_eq!(out.code, Some(0));
    assert_eq!(out.signal, None);
    assert!(out.success());
    assert!(!out.stdout_truncated && !out.stderr_truncated);
}

/// Issue 10, item E.17: a nonzero exit fails the call (it succeeded with
/// `code: 3` before), and the error keeps the code and both streams.
#[test]
fn exec_fails_on_a_nonzero_exit_with_its_output_in_the_error() {
    let e = exec_err(sh("echo out; echo err >&2; exit 3"));
    assert!(
        e.starts_with(r#""sh" exited with code 3 (ok_codes: [0])"#),
        "{e}"
    );
    assert_eq!(quoted(&e, "stderr"), "err");
    assert_eq!(quoted(&e, "stdout"), "out");
}

#[test]
fn exec_ok_codes_make_other_exits_a_success() {
    let mut input = sh("echo out; exit 3");
    input.ok_codes = Some(vec![0, 3]);
    let out = exec(input);
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout, b"out\n");

    let mut input = sh("exit 0");
    input.ok_codes = Some(vec![1]);
    let e = exec_err(input);
    assert!(e.contains("exited with code 0 (ok_codes: [1])"), "{e}");

    let mut input = ExecInput::new(["true"]);
    input.ok_codes = Some(Vec::new());
    let e = run_detached(&Exec, input, None).expect_err("no code could succeed");
    assert!(is_bad_input(&e), "{e:?}");
}

#[test]
fn exec_fails_on_a_killing_signal_whatever_the_ok_codes() {
    let mut input = sh("kill -9 $$");
    input.ok_codes = Some(vec![0, 137]);
    let e = exec_err(input);
    assert!(
        e.starts_with(r#""sh" was killed by signal 9 (SIGKILL)"#),
        "{e}"
    );
}

#[test]
fn exec_failure_quotes_the_end_of_long_output() {
    let mut input = sh("seq 1 5000 >&2; echo last >&2; exit 1");
    input.error_tail_bytes = 100;
    input.max_output_bytes = 1000;
    let e = exec_err(input);
    let total = (1..=5000)
        .map(|i: u32| i.to_string().len() + 1)
        .sum::<usize>()
        + 5;
    assert!(
        e.contains(&format!("\nstderr (last 100 of {total} bytes):\n")),
        "{e}"
    );
    let tail = quoted(&e, &format!("stderr (last 100 of {total} bytes)"));
    assert!(tail.ends_with("4999\n5000\nlast"), "{tail:?}");
    assert!(tail.len() <= 100, "{}", tail.len());
}

#[test]
fn exec_pipes_stdin_through_cat() {
    // Far more than a pipe buffer, so writing and reading must interleave.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut input = ExecInput::new(["cat"]);
    input.stdin = Some(data.clone());
    input.max_output_bytes = 4 << 20;
    let out = exec(input);
    assert_eq!(out.code, Some(0));
    assert!(!out.stdout_truncated);
    assert_eq!(out.stdout.len(), data.len());
    assert!(out.stdout == data, "cat returned different bytes");
}

#[test]
fn exec_without_stdin_reads_dev_null() {
    let out = exec(sh("readlink /proc/self/fd/0; cat"));
    assert_eq!(out.stdout, b"/dev/null\n");
    assert_eq!(out.code, Some(0));
}

#[test]
fn exec_survives_a_child_that_stops_reading_stdin() {
    let mut input = ExecInput::new(["head", "-c", "1"]);
    input.stdin = Some(vec![b'x'; 4 << 20]);
    let out = exec(input);
    assert_eq!(out.stdout, b"x");
    assert_eq!(out.code, Some(0));
}

#[test]
fn exec_sets_and_clears_the_environment() {
    let mut input = sh("printf %s \"$JOBVISOR_TASKS_TEST\"");
    input.env = vec![
        ("JOBVISOR_TASKS_TEST".into(), "first".into()),
        ("JOBVISOR_TASKS_TEST".into(), "value with spaces".into()),
    ];
    assert_eq!(exec(input).stdout, b"value with spaces");

    // Inherited by default: the test process certainly has a PATH.
    let out = exec(ExecInput::new(["env"]));
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("PATH=")),
        "no PATH inherited: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );

    let mut input = ExecInput::new(["env"]);
    input.clear_env = true;
    input.env = vec![("ONLY".into(), "this".into())];
    let out = exec(input);
    assert_eq!(
        out.code,
        Some(0),
        "stderr: {:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"ONLY=this\n");
}

#[test]
fn exec_runs_in_cwd() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut input = sh("pwd -P");
    input.cwd = Some(dir.path().to_string_lossy().into_owned());
    let out = exec(input);
    let want = fs::canonicalize(dir.path()).expect("canonicalize");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        want.to_string_lossy()
    );

    let mut input = ExecInput::new(["true"]);
    input.cwd = Some(dir.path().join("missing").to_string_lossy().into_owned());
    let err = run_detached(&Exec, input, None).expect_err("a missing cwd must fail");
    assert!(!err.is_cancelled() && !is_bad_input(&err), "{err:?}");
}

#[test]
fn exec_truncates_output_but_lets_the_child_finish() {
    let mut input = ExecInput::new(["head", "-c", "1000000", "/dev/zero"]);
    input.max_output_bytes = 1000;
    let out = exec(input);
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.stdout_truncated);
    assert!(!out.stderr_truncated);
    // Exited normally: it was drained, not killed by a closed pipe.
    assert_eq!(out.code, Some(0), "signal {:?}", out.signal);

    let mut input = sh("head -c 5000 /dev/zero >&2");
    input.max_output_bytes = 10;
    let out = exec(input);
    assert_eq!(out.stderr.len(), 10);
    assert!(out.stderr_truncated && !out.stdout_truncated);
}

#[test]
fn exec_output_exactly_at_the_limit_is_not_truncated() {
    let mut input = ExecInput::new(["printf", "12345"]);
    input.max_output_bytes = 5;
    let out = exec(input);
    assert_eq!(out.stdout, b"12345");
    assert!(!out.stdout_truncated);
}

/// Long enough for a shell on a loaded machine to get to the start of its
/// script (a trap, an `echo`) before its `timeout_ms` passes. The timeout
/// starts with the program, so it also covers fork, exec and the shell's own
/// start-up: too short, and the shell is stopped before it says its pid (or
/// ignores SIGTERM) and the test has nothing to check. Each script prints
/// `ready` once that part is done, so such a miss fails by saying so.
const SHELL_START_TIMEOUT_MS: u64 = 3000;

/// The pid a script printed on its first line, once it also printed
/// `ready`, read from the stdout that the error of its timeout quotes.
fn pid_of_ready_shell(error: &str) -> i32 {
    let text = error.split_once("\nstdout:\n").map_or("", |(_, t)| t);
    assert!(
        text.lines().nth(1) == Some("ready"),
        "the shell did not get to its script within {SHELL_START_TIMEOUT_MS} ms: {error:?}"
    );
    first_line_pid(text.as_bytes())
}

#[test]
fn exec_own_timeout_stops_the_whole_group() {
    let mut input = sh("echo $$; echo ready; sleep 100 & sleep 100; wait");
    input.timeout_ms = Some(SHELL_START_TIMEOUT_MS);
    let start = Instant::now();
    let e = exec_err(input);
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    let pid = pid_of_ready_shell(&e);
    assert!(
        e.starts_with(&format!(
            r#""sh" timed out after {SHELL_START_TIMEOUT_MS} ms (timeout_ms) and was killed by signal 15 (SIGTERM)"#
        )),
        "{e}"
    );
    assert_group_gone(pid);
}

#[test]
fn exec_escalates_to_sigkill_after_the_grace_period() {
    // An ignored SIGTERM is inherited by `sleep`, so only SIGKILL stops them.
    // `ready` comes after the trap: once it is printed, SIGTERM is ignored.
    let mut input = sh("trap '' TERM; echo $$; echo ready; sleep 100 & sleep 100; wait");
    input.timeout_ms = Some(SHELL_START_TIMEOUT_MS);
    input.kill_grace_ms = 200;
    let start = Instant::now();
    let e = exec_err(input);
    let took = start.elapsed();
    let pid = pid_of_ready_shell(&e);
    assert!(e.contains("timed out after"), "{e}");
    assert!(e.contains("killed by signal 9 (SIGKILL)"), "{e}");
    assert!(
        took >= Duration::from_millis(SHELL_START_TIMEOUT_MS + 200),
        "took {took:?}"
    );
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_group_gone(pid);
}

#[test]
fn exec_cancellation_kills_the_whole_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pidfile = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}'; sleep 1000 & sleep 1000; wait",
        pidfile.to_string_lossy()
    );
    let start = Instant::now();
    let err = run_detached(&Exec, sh(&script), Some(Duration::from_secs(3)))
        .expect_err("must be cancelled");
    assert!(err.is_cancelled(), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    let pid = first_line_pid(&fs::read(&pidfile).expect("the shell wrote its pid"));
    assert_group_gone(pid);
}

#[test]
fn exec_kills_leftovers_when_the_program_exits() {
    // The background sleep keeps stdout open; without killing the group the
    // task would wait on the pipe, and the sleep would outlive the call.
    let start = Instant::now();
    let out = exec(sh("echo $$; sleep 1000 &"));
    assert_eq!(out.code, Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "took {:?}",
        start.elapsed()
    );
    assert_group_gone(first_line_pid(&out.stdout));
}

#[test]
fn exec_rejects_empty_argv_as_bad_input() {
    let err = run_detached(&Exec, ExecInput::new(Vec::<String>::new()), None)
        .expect_err("empty argv must fail");
    assert!(is_bad_input(&err), "{err:?}");

    let err = run_detached(&Exec, ExecInput::new(["echo", "a\0b"]), None)
        .expect_err("NUL in argv must fail");
    assert!(is_bad_input(&err), "{err:?}");

    let mut input = ExecInput::new(["true"]);
    input.env = vec![("A=B".into(), "c".into())];
    let err = run_detached(&Exec, input, None).expect_err("'=' in a name must fail");
    assert!(is_bad_input(&err), "{err:?}");
}

#[test]
fn exec_of_a_missing_program_is_a_task_error() {
    let name = "jobvisor-tasks-no-such-program";
    let err = run_detached(&Exec, ExecInput::new([name]), None).expect_err("must fail");
    assert!(!err.is_cancelled() && !is_bad_input(&err), "{err:?}");
    assert!(err.to_string().contains(name), "{err}");
}

#[test]
fn hash_and_compress_through_the_public_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("in");
    fs::write(&src, b"abc").expect("write");
    let p = |p: &Path| p.to_string_lossy().into_owned();
    let h = run_detached(&jobvisor_tasks::Hash, HashInput { path: p(&src) }, None).expect("hash");
    assert_eq!(
        h.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    let dst = dir.path().join("in.zst");
    let c = run_detached(
        &jobvisor_tasks::Compress,
        CompressInput {
            src: p(&src),
            dst: p(&dst),
            level: 0,
        },
        None,
    )
    .expect("compress");
    assert_eq!(c.bytes_in, 3);
    let packed = fs::read(&dst).expect("read");
    assert_eq!(c.bytes_out, packed.len() as u64);
    assert_eq!(zstd::decode_all(&packed[..]).expect("decode"), b"abc");
}
