//! The control socket's gates: a peer of another uid is refused, a full
//! queue accepts nothing of a request, and bad input (unknown task, wrong
//! fields, garbage bytes, an oversize frame, a peer that is not jobvisor)
//! gets a clear error and disturbs nothing.

use std::os::unix::process::CommandExt;

use jobvisor_client::{ErrorKind, JobSpec};

use crate::util::*;

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
            "unknown field `seconds`",
        ),
        (
            vec!["submit", "spin", "--input", "{}"],
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

/// Cancelling a job that has ended says so in words a person would use
/// (it said "job 1 is already succeeded").
#[test]
fn cancelling_a_finished_job_says_it_has_finished() {
    let d = Daemon::start(&[]);
    let id = d.cli_ok(&["submit", "noop", "--input", "1"]);
    let id = id.trim();
    d.cli_ok(&["wait", id]);
    let out = d.cli(&["cancel", id]);
    assert_exit(
        "cancel of a finished job",
        &out,
        7,
        &format!("job {id} has already finished (succeeded)"),
    );
}

/// A daemon that is not there: the error says how to start one or where to
/// point the CLI, not only the io error.
#[test]
fn an_unreachable_daemon_gets_a_hint_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = crate::util::daemon::cli_command(&dir.path().join("none.sock"))
        .arg("ping")
        .output()
        .expect("run cli");
    assert_exit(
        "ping, no daemon",
        &out,
        5,
        "start one with `jobvisor daemon`",
    );
}
