//! Flows of several commands against the stand-in daemon ([`super::mock`]):
//! the exit code of each, and what reaches the daemon.

use std::path::Path;
use std::time::Duration;

use jobvisor_proto::control::Payload;
use tokio::time::Instant;

use super::{dispatch, mock};
use crate::args::testing::submit_args;
use crate::args::ClientCommand;
use crate::exit::{EXIT_UNREACHABLE, EXIT_USAGE};

fn submit_cmd(args: &[&str]) -> ClientCommand {
    ClientCommand::Submit(Box::new(submit_args(args)))
}

async fn code(cmd: ClientCommand, sock: &Path) -> u8 {
    match dispatch(cmd, sock).await {
        Ok(c) => c,
        Err(f) => f.code,
    }
}

#[tokio::test]
async fn against_a_mock_daemon() {
    let m = mock::start("flows");
    let sock = m.sock.as_path();

    // submit without --wait: 0, job left queued.
    assert_eq!(
        code(submit_cmd(&["submit", "ok", "--input", "{}"]), sock).await,
        0
    );
    // submit --wait: the job's code.
    assert_eq!(
        code(
            submit_cmd(&["submit", "ok", "--input", "1", "--wait"]),
            sock
        )
        .await,
        0
    );
    assert_eq!(
        code(
            submit_cmd(&["submit", "fail", "--input", "1", "--wait"]),
            sock
        )
        .await,
        3
    );
    assert_eq!(
        code(
            submit_cmd(&["submit", "cancel", "--input", "1", "--wait"]),
            sock
        )
        .await,
        6
    );
    // Refused by the daemon.
    assert_eq!(
        code(submit_cmd(&["submit", "nope", "--input", "1"]), sock).await,
        7
    );
    // Usage errors never reach the daemon.
    let before = m.state.lock().unwrap().requests.len();
    assert_eq!(
        code(submit_cmd(&["submit", "ok", "--input", "{bad"]), sock).await,
        2
    );
    assert_eq!(m.state.lock().unwrap().requests.len(), before);
    // Idempotency key: same id back.
    let k = ["submit", "ok", "--input", "1", "--key", "K", "--json"];
    assert_eq!(code(submit_cmd(&k), sock).await, 0);
    assert_eq!(code(submit_cmd(&k), sock).await, 0);
    {
        let st = m.state.lock().unwrap();
        let subs: Vec<_> = st
            .requests
            .iter()
            .filter_map(|r| match r {
                jobvisor_proto::control::Request::Submit(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        let last = subs.last().unwrap();
        assert_eq!(last[0].key.as_deref(), Some("K"));
        assert_eq!(st.jobs.values().filter(|j| j.key.is_some()).count(), 1);
    }

    // exec: the daemon gets the full ExecInput JSON.
    assert_eq!(
        code(submit_cmd(&["submit", "exec", "--", "echo", "hi"]), sock).await,
        0
    );
    {
        let st = m.state.lock().unwrap();
        let j = st.jobs.values().last().unwrap();
        let Some(Payload::Json(t)) = &j.input else {
            panic!("json input")
        };
        let input: jobvisor_tasks::ExecInput = serde_json::from_str(t).unwrap();
        assert_eq!(input.argv, ["echo", "hi"]);
    }

    // status / result / cancel / not found.
    assert_eq!(
        code(ClientCommand::Status { id: 2, json: false }, sock).await,
        0
    );
    assert_eq!(
        code(ClientCommand::Status { id: 2, json: true }, sock).await,
        0
    );
    assert_eq!(
        code(
            ClientCommand::Status {
                id: 999,
                json: false
            },
            sock
        )
        .await,
        4
    );
    assert_eq!(
        code(ClientCommand::Result { id: 2, json: false }, sock).await,
        0
    );
    assert_eq!(
        code(ClientCommand::Result { id: 3, json: false }, sock).await,
        3
    );
    assert_eq!(
        code(ClientCommand::Result { id: 4, json: true }, sock).await,
        6
    );
    assert_eq!(
        code(ClientCommand::Result { id: 1, json: false }, sock).await,
        1,
        "queued"
    );
    assert_eq!(
        code(
            ClientCommand::Result {
                id: 999,
                json: false
            },
            sock
        )
        .await,
        4
    );
    let cancel = |id| ClientCommand::Cancel { id, json: false };
    assert_eq!(code(cancel(1), sock).await, 0);
    assert_eq!(code(cancel(999), sock).await, 4);

    // wait: worst state; unknown id is not found.
    let w = |ids: Vec<u64>| ClientCommand::Wait {
        ids,
        all: false,
        timeout: None,
        json: false,
    };
    assert_eq!(code(w(vec![2]), sock).await, 0);
    assert_eq!(code(w(vec![2, 1]), sock).await, 6);
    assert_eq!(code(w(vec![2, 1, 3]), sock).await, 3);
    assert_eq!(code(w(vec![2, 999]), sock).await, 4);

    // Read commands, human and JSON.
    for json in [false, true] {
        let list = ClientCommand::List {
            state: None,
            queue: None,
            limit: 50,
            before: None,
            json,
        };
        assert_eq!(code(list, sock).await, 0);
        assert_eq!(code(ClientCommand::Workers { json }, sock).await, 0);
        assert_eq!(code(ClientCommand::Stats { json }, sock).await, 0);
        assert_eq!(
            code(ClientCommand::Ping { wait: None, json }, sock).await,
            0
        );
    }
    let shutdown = ClientCommand::Shutdown {
        now: false,
        wait: false,
        json: false,
    };
    assert_eq!(code(shutdown, sock).await, 0);
}

// Paused time: the deadlines and retries run on tokio's clock, which
// jumps to the next timer whenever everything waits.
#[tokio::test(start_paused = true)]
async fn wait_with_a_deadline_and_a_never_ending_job() {
    let m = mock::start("deadline");
    let sock = m.sock.as_path();
    assert_eq!(
        code(submit_cmd(&["submit", "never", "--input", "1"]), sock).await,
        0
    );
    assert_eq!(
        code(submit_cmd(&["submit", "ok", "--input", "1"]), sock).await,
        0
    );
    let started = Instant::now();
    let cmd = ClientCommand::Wait {
        ids: vec![1, 2],
        all: false,
        timeout: Some(Duration::from_millis(300)),
        json: true,
    };
    assert_eq!(code(cmd, sock).await, 1, "unfinished at the deadline");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn batch_submit_is_one_request() {
    let m = mock::start("batch");
    let file = m.dir.join("jobs.jsonl");
    std::fs::write(
        &file,
        "{\"task\":\"ok\",\"input\":{\"a\":1}}\n\n{\"task\":\"fail\",\"input\":null,\"priority\":5}\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // --wait: exit code from the worst job (stdout is not a terminal under test).
    assert_eq!(
        code(submit_cmd(&["submit", "--batch", f, "--wait"]), &m.sock).await,
        3
    );
    {
        let st = m.state.lock().unwrap();
        let submits: Vec<_> = st
            .requests
            .iter()
            .filter_map(|r| match r {
                jobvisor_proto::control::Request::Submit(s) => Some(s.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(submits.len(), 1);
        assert_eq!(submits[0].len(), 2);
        assert_eq!(submits[0][1].priority, 5);
    }
    // A bad line: usage error naming the line, nothing sent.
    std::fs::write(&file, "{\"task\":\"ok\",\"input\":1}\n{\"task\":\"ok\"}\n").unwrap();
    let err = dispatch(submit_cmd(&["submit", "--batch", f]), &m.sock)
        .await
        .unwrap_err();
    assert_eq!(err.code, EXIT_USAGE);
    assert!(
        err.message().contains("line 2: missing field `input`"),
        "{}",
        err.message()
    );
    let missing = m.dir.join("missing.jsonl");
    let err = dispatch(
        submit_cmd(&["submit", "--batch", missing.to_str().unwrap()]),
        &m.sock,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, EXIT_USAGE);
}

// Paused time: the deadlines and retries run on tokio's clock, which
// jumps to the next timer whenever everything waits.
#[tokio::test(start_paused = true)]
async fn ping_wait_waits_for_the_socket() {
    let (dir, sock) = mock::socket_path("ping");
    let bind_at = sock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let listener = tokio::net::UnixListener::bind(&bind_at).unwrap();
        mock::serve(listener, Default::default());
    });
    let started = Instant::now();
    let cmd = ClientCommand::Ping {
        wait: Some(Duration::from_secs(5)),
        json: false,
    };
    assert_eq!(code(cmd, &sock).await, 0);
    assert!(started.elapsed() >= Duration::from_millis(250));
    let _ = std::fs::remove_dir_all(dir);
}

// Paused time: the deadlines and retries run on tokio's clock, which
// jumps to the next timer whenever everything waits.
#[tokio::test(start_paused = true)]
async fn unreachable_socket_exits_5() {
    let dir = std::env::temp_dir().join(format!("jobvisor-cli-test-{}", std::process::id()));
    let sock = dir.join("nope.sock");
    let code = dispatch(
        ClientCommand::Ping {
            wait: None,
            json: false,
        },
        &sock,
    )
    .await;
    assert_eq!(code.unwrap_err().code, EXIT_UNREACHABLE);
    let started = Instant::now();
    let code = dispatch(
        ClientCommand::Ping {
            wait: Some(Duration::from_millis(200)),
            json: false,
        },
        &sock,
    )
    .await;
    assert_eq!(code.unwrap_err().code, EXIT_UNREACHABLE);
    assert!(started.elapsed() >= Duration::from_millis(100));
    let code = dispatch(ClientCommand::Status { id: 1, json: false }, &sock).await;
    assert_eq!(code.unwrap_err().code, EXIT_UNREACHABLE);
}
