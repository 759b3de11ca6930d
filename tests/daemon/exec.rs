//! `exec` jobs end to end: a failing command fails its job (and is retried by
//! the job's policy) with its output in the error, `--ok-codes` opts out;
//! arguments that are not UTF-8 pass through as bytes; nothing a command
//! started outlives its worker or the daemon, with either start method.

use std::time::{Duration, Instant};

use jobvisor_client::JobState;

use crate::util::proc::{all_pids, cmdline, proc_info};
use crate::util::wait::until;
use crate::util::*;

/// The job id `submit` printed on its first line.
fn first_id(out: &std::process::Output) -> u64 {
    let id = stdout(out).lines().next().unwrap_or("").trim().to_string();
    id.parse()
        .unwrap_or_else(|_| panic!("no job id: {}", text(out)))
}

/// Issue 10, item E.17: `false` failed nothing (the job `succeeded`, `--wait`
/// exited 0). Now each attempt fails, the policy retries it, the CLI exits 3,
/// the error and `status` quote the exit code and the command's output, and a
/// job after it does not run.
#[test]
fn a_failing_command_fails_its_job_and_is_retried() {
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "submit",
        "exec",
        "--max-attempts",
        "2",
        "--backoff-ms",
        "10",
        "--wait",
        "--",
        "false",
    ]);
    assert_exit("submit exec -- false", &out, 3, "exited with code 1");
    let id = first_id(&out);
    let rec = rt().block_on(async { d.client().await.status(id).await.unwrap() });
    assert_eq!(rec.state, JobState::Failed, "{rec:?}");
    assert_eq!(rec.attempts.len(), 2, "retried per policy: {rec:?}");
    let error = rec.error.unwrap_or_default();
    assert!(
        error.starts_with(
            r#"task error: "false" exited with code 1 (ok_codes: [0]) (attempt 2 of 2)"#
        ),
        "{error}"
    );

    // The output is kept: in the error `--wait` prints and in `status`.
    let script = "echo some output; echo it broke >&2; exit 4";
    let out = d.cli(&[
        "submit",
        "exec",
        "--max-attempts",
        "1",
        "--wait",
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert_exit("exit 4", &out, 3, "exited with code 4");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\nstderr:\nit broke"), "{err}");
    assert!(err.contains("\nstdout:\nsome output"), "{err}");
    let id = first_id(&out).to_string();
    let status = d.cli_ok(&["status", &id]);
    assert!(status.contains("| it broke"), "{status}");
    assert!(
        status.contains(r#"error: "sh" exited with code 4 (ok_codes: [0])"#),
        "{status}"
    );

    // A job after the failed one does not run.
    let out = d.cli(&["submit", "noop", "--input", "1", "--after", &id, "--wait"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let after = first_id(&out);
    let rec = rt().block_on(async { d.client().await.status(after).await.unwrap() });
    assert!(rec.attempts.is_empty(), "the dependent ran: {rec:?}");
}

/// Issue 10, item E.17: the opt-out. `--ok-codes 0,1` makes `exit 1` a
/// success, with the code in the output; a code outside the list still fails.
#[test]
fn ok_codes_make_an_exit_code_a_success() {
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "submit",
        "exec",
        "--ok-codes",
        "0,1",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo fine; exit 1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id = first_id(&out).to_string();
    let res = d.cli_ok(&["result", &id, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&res).expect(&res);
    assert_eq!(v["output"]["code"], 1, "{res}");

    let out = d.cli(&[
        "submit",
        "exec",
        "--ok-codes",
        "0,1",
        "--max-attempts",
        "1",
        "--wait",
        "--",
        "sh",
        "-c",
        "exit 2",
    ]);
    assert_exit("exit 2", &out, 3, "exited with code 2 (ok_codes: [0, 1])");

    // The same through the JSON input.
    let out = d.cli(&[
        "submit",
        "exec",
        "--wait",
        "--input",
        r#"{"argv": ["sh", "-c", "exit 7"], "ok_codes": [7]}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out));
}

/// Issue 10, item E.17: a command killed by a signal fails, whatever
/// `--ok-codes` says.
#[test]
fn a_command_killed_by_a_signal_fails() {
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "submit",
        "exec",
        "--ok-codes",
        "0,143",
        "--max-attempts",
        "1",
        "--wait",
        "--",
        "sh",
        "-c",
        "echo before; kill -TERM $$",
    ]);
    assert_exit(
        "kill -TERM $$",
        &out,
        3,
        "was killed by signal 15 (SIGTERM)",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\nstdout:\nbefore"),
        "{}",
        text(&out)
    );
}

/// Issue 10, item D.16: an argument that is not UTF-8 reaches the command as
/// the same bytes (it was refused as a usage error, and before that
/// panicked the CLI). The command writes its `$1` to a file, compared here.
#[test]
fn a_non_utf8_argument_reaches_the_command_unchanged() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let d = Daemon::start(&[]);
    let file = d.dir.path().join("arg");
    let given: &[u8] = b"\xff\xfe caf\xc3\xa9 \x80-\x01";
    let out = d
        .cli_command()
        .args([
            "submit",
            "exec",
            "--wait",
            "--",
            "sh",
            "-c",
            r#"printf %s "$1" > "$2""#,
            "sh",
        ])
        .arg(OsStr::from_bytes(given))
        .arg(&file)
        .output()
        .expect("run submit");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&file).expect("the command wrote $1"), given);

    // The stored input says so in its documented JSON form.
    let id = first_id(&out).to_string();
    let status = d.cli_ok(&["status", &id, "--json"]);
    assert!(status.contains(r#""base64""#), "{status}");
}

/// Who is killed with `SIGKILL` under a running command.
#[derive(Debug, Clone, Copy)]
enum Victim {
    Worker,
    Daemon,
}

/// Live processes whose command line starts with `prefix` and holds `tag`.
fn alive(prefix: &str, tag: &str) -> Vec<(i32, String)> {
    all_pids()
        .into_iter()
        .filter(|&p| proc_info(p).is_some_and(|i| i.is_alive()))
        .map(|p| (p, cmdline(p)))
        .filter(|(_, c)| c.starts_with(prefix) && c.contains(tag))
        .collect()
}

/// Live `sleep`s with argument `arg`, described.
fn alive_with(arg: &str) -> Vec<String> {
    alive(&format!("sleep {arg}"), arg)
        .into_iter()
        .map(|(p, c)| format!("pid {p}: {c}"))
        .collect()
}

/// Issue 10, item D.14: `sh -c 'sleep A & sleep B'` runs; `victim` is killed
/// with `SIGKILL`; no process with those unique sleep arguments may remain
/// (both were reparented to init and ran on). A killed worker's job is
/// retried, and the retry (which finds the flag file and exits 0) succeeds.
fn nothing_of_the_command_survives(method: &str, victim: Victim) {
    let mut d = Daemon::start_raw(&["--workers", "1", "--start-method", method]);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    let tag = format!("{}{nanos:09}", std::process::id());
    let (a, b) = (format!("1006.{tag}"), format!("1007.{tag}"));
    let flag = d.dir.path().join("started");
    let script = format!(
        "if [ -e '{f}' ]; then exit 0; fi; touch '{f}'; sleep {a} & sleep {b}",
        f = flag.display()
    );
    let id: u64 = d
        .cli_ok(&["submit", "exec", "--", "sh", "-c", &script])
        .parse()
        .expect("job id");
    let worker = rt().block_on(async {
        let mut c = d.client().await;
        until(Duration::from_secs(30), "both sleeps running", async || {
            let r = c.status(id).await.map_err(|e| e.to_string())?;
            // The worker is the shell's parent.
            let shell = alive("sh -c", &tag);
            let worker = shell
                .first()
                .and_then(|(p, _)| proc_info(*p))
                .map(|i| i.ppid);
            let (sa, sb) = (alive_with(&a), alive_with(&b));
            match worker {
                Some(p) if r.state == JobState::Running && sa.len() == 1 && sb.len() == 1 => Ok(p),
                _ => Err(format!("{r:?}; shell {shell:?}, sleeps {sa:?} {sb:?}")),
            }
        })
        .await
    });
    match victim {
        Victim::Worker => assert!(proc::signal(worker, libc::SIGKILL), "kill worker"),
        Victim::Daemon => d.kill9(),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = Vec::new();
    while Instant::now() < deadline {
        left = [alive_with(&a), alive_with(&b)].concat();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        left.is_empty(),
        "{method}, {victim:?} killed: the command's processes survive: {left:?}"
    );
    if let Victim::Worker = victim {
        let out = d.cli(&["wait", &id.to_string()]);
        assert!(out.status.success(), "the retry: {}", text(&out));
    }
}

#[test]
fn a_killed_worker_takes_its_command_with_it_forkserver() {
    nothing_of_the_command_survives("forkserver", Victim::Worker);
}

#[test]
fn a_killed_worker_takes_its_command_with_it_spawn() {
    nothing_of_the_command_survives("spawn", Victim::Worker);
}

#[test]
fn a_killed_daemon_leaves_no_process_of_a_job_forkserver() {
    nothing_of_the_command_survives("forkserver", Victim::Daemon);
}

#[test]
fn a_killed_daemon_leaves_no_process_of_a_job_spawn() {
    nothing_of_the_command_survives("spawn", Victim::Daemon);
}
