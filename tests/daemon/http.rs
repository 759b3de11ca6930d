//! The HTTP/JSON API over real TCP on loopback: every endpoint, the roles of
//! each token, the JSON errors with their statuses, the limits (body size,
//! stalled heads and bodies, the connection cap). Requests are written by
//! hand (`util::http::call`), so the test sees exactly what the daemon sent.

use std::io::{Read, Write};

use crate::util::daemon::Daemon;
use crate::util::http::{call, exchange, Answer};

const READ: &str = "jv_read_token_for_tests";
const SUBMIT: &str = "jv_submit_token_for_tests";
const ADMIN: &str = "jv_admin_token_for_tests";

fn sha256_hex(s: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_owned()
}

/// A daemon with the API on an ephemeral loopback port, the three test
/// tokens and `extra` config lines under `[http]`; its address.
fn api(extra: &str) -> (Daemon, String) {
    let mut toml = format!("[http]\nlisten = \"127.0.0.1:0\"\n{extra}\n");
    for (name, token, role) in [
        ("r", READ, "read"),
        ("s", SUBMIT, "submit"),
        ("a", ADMIN, "admin"),
    ] {
        toml.push_str(&format!(
            "[[http.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"{role}\"\n",
            sha256_hex(token)
        ));
    }
    let d = Daemon::with_config(&toml);
    let log = d.log();
    let addr = log
        .lines()
        .find(|l| l.contains("http API listening"))
        .and_then(|l| l.split("bound=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
        .unwrap_or_else(|| panic!("no listening line:\n{log}"));
    (d, addr)
}

fn ok(a: &Answer, status: u16) -> serde_json::Value {
    assert_eq!(a.status, status, "{}", String::from_utf8_lossy(&a.body));
    a.json()
}

#[test]
fn jobs_go_in_and_come_out_over_http() {
    let (_d, addr) = api("");
    let get = |path: &str| call(&addr, "GET", path, Some(READ), None);
    let post = |path: &str, body: &str| call(&addr, "POST", path, Some(SUBMIT), Some(body));

    assert_eq!(
        ok(&call(&addr, "GET", "/healthz", None, None), 200)["status"],
        "ok"
    );
    assert_eq!(
        ok(&call(&addr, "GET", "/readyz", None, None), 200)["status"],
        "ready"
    );

    let one = ok(
        &post(
            "/v1/jobs",
            r#"{"task": "noop", "input": 41, "queue": "default"}"#,
        ),
        201,
    );
    let id = one["id"].as_u64().expect("an id");
    assert_eq!(one["duplicate"], false);
    let done = ok(&get(&format!("/v1/jobs/{id}/wait?timeout=30s")), 200);
    assert_eq!(done["state"], "succeeded", "{done}");
    let result = ok(&get(&format!("/v1/jobs/{id}/result")), 200);
    assert_eq!(
        (result["output"].clone(), result["error"].clone()),
        (41.into(), serde_json::Value::Null)
    );
    assert_eq!(ok(&get(&format!("/v1/jobs/{id}")), 200)["task"], "noop");

    // A batch, all or nothing, with a reference to its own first job.
    let batch = ok(
        &post(
            "/v1/jobs",
            r##"{"jobs": [{"task": "noop", "input": 7},
                         {"task": "noop", "input": null, "input_from": ["#1"]}]}"##,
        ),
        201,
    );
    let ids: Vec<u64> = batch["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    let second = ok(&get(&format!("/v1/jobs/{}/wait", ids[1])), 200);
    assert_eq!(second["state"], "succeeded", "{second}");
    assert_eq!(
        ok(&get(&format!("/v1/jobs/{}/result", ids[1])), 200)["output"],
        7
    );
    let refused = post(
        "/v1/jobs",
        r#"{"jobs": [{"task": "noop", "input": 1}, {"task": "nope", "input": 1}]}"#,
    );
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (400, "unknown_task")
    );

    // Pages, newest first, with a cursor.
    let page = ok(&get("/v1/jobs?limit=2"), 200);
    let listed: Vec<u64> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_u64().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[1], ids[0]]);
    let next = page["next_before"].as_u64().expect("a cursor");
    let rest = ok(&get(&format!("/v1/jobs?limit=2&before={next}")), 200);
    assert_eq!(rest["jobs"][0]["id"].as_u64(), Some(id));
    assert_eq!(
        ok(&get("/v1/jobs?state=succeeded"), 200)["jobs"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Cancel and retry.
    let slow = ok(
        &post("/v1/jobs", r#"{"task": "sleep", "input": {"ms": 60000}}"#),
        201,
    )["id"]
        .as_u64()
        .unwrap();
    let early = get(&format!("/v1/jobs/{slow}/result"));
    assert_eq!((early.status, early.code().as_str()), (409, "conflict"));
    assert_eq!(
        ok(&post(&format!("/v1/jobs/{slow}/cancel"), ""), 200)["cancelled"],
        true
    );
    assert_eq!(
        ok(&get(&format!("/v1/jobs/{slow}")), 200)["state"],
        "cancelled"
    );
    let again = post(&format!("/v1/jobs/{slow}/cancel"), "");
    assert_eq!((again.status, again.code().as_str()), (409, "conflict"));
    assert_eq!(
        ok(&post(&format!("/v1/jobs/{slow}/retry"), ""), 200)["id"].as_u64(),
        Some(slow)
    );

    let workers = ok(&get("/v1/workers"), 200);
    assert_eq!(workers["workers"].as_array().unwrap().len(), 2, "{workers}");
    let stats = ok(&get("/v1/stats"), 200);
    assert_eq!(
        (stats["workers"].as_u64(), stats["submitted"].as_u64()),
        (Some(2), Some(4)),
        "{stats}"
    );
}

#[test]
fn each_token_may_do_what_its_role_allows_and_no_more() {
    let (mut d, addr) = api("");
    let none = call(&addr, "GET", "/v1/jobs", None, None);
    assert_eq!((none.status, none.code().as_str()), (401, "unauthorized"));
    assert_eq!(
        none.headers.get("www-authenticate").map(String::as_str),
        Some("Bearer")
    );
    let wrong = call(&addr, "GET", "/v1/jobs", Some("jv_not_a_token"), None);
    assert_eq!((wrong.status, wrong.code().as_str()), (401, "unauthorized"));
    // The stored hash is not a token either.
    let hash = call(&addr, "GET", "/v1/jobs", Some(&sha256_hex(READ)), None);
    assert_eq!(hash.status, 401);

    assert_eq!(call(&addr, "GET", "/v1/jobs", Some(READ), None).status, 200);
    let body = r#"{"task": "noop", "input": 1}"#;
    let read_submits = call(&addr, "POST", "/v1/jobs", Some(READ), Some(body));
    assert_eq!(
        (read_submits.status, read_submits.code().as_str()),
        (403, "permission_denied")
    );
    let msg = read_submits.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        msg.contains("\"r\"") && msg.contains("read") && msg.contains("needs submit"),
        "{msg}"
    );
    let listed = call(&addr, "GET", "/v1/jobs", Some(READ), None).json();
    assert_eq!(
        listed["jobs"].as_array().unwrap().len(),
        0,
        "a refused submit stored a job"
    );

    assert_eq!(
        call(&addr, "POST", "/v1/jobs", Some(SUBMIT), Some(body)).status,
        201
    );
    assert_eq!(
        call(&addr, "POST", "/v1/shutdown", Some(SUBMIT), None).status,
        403
    );
    assert_eq!(
        call(&addr, "POST", "/v1/shutdown", Some(ADMIN), None).status,
        202
    );
    let status = d.child.as_mut().unwrap().wait().expect("the daemon exits");
    assert!(status.success(), "{status:?}\n{}", d.log());
}

#[test]
fn errors_are_json_with_the_status_of_their_kind() {
    let (_d, addr) = api("max_body_bytes = 1048576\n");
    let post = |body: &str| call(&addr, "POST", "/v1/jobs", Some(SUBMIT), Some(body));
    let cases = [
        (post("{"), 400, "bad_request", "not JSON"),
        (post(r#"{"task": "noop"}"#), 400, "bad_request", "`input`"),
        (
            post(r#"{"task": "noop", "input": 1, "prio": 2}"#),
            400,
            "bad_request",
            "unknown field `prio`",
        ),
        (
            post(r#"{"task": "noop", "input": "x"}"#),
            400,
            "bad_input",
            "",
        ),
        (post(r#"{"jobs": 3}"#), 400, "bad_request", "`jobs`"),
        (
            call(&addr, "GET", "/v1/jobs/999", Some(READ), None),
            404,
            "not_found",
            "no job 999",
        ),
        (
            call(
                &addr,
                "GET",
                "/v1/jobs/18446744073709551615",
                Some(READ),
                None,
            ),
            404,
            "not_found",
            "",
        ),
        (
            call(&addr, "GET", "/v1/jobs/abc", Some(READ), None),
            404,
            "not_found",
            "",
        ),
        (
            call(&addr, "GET", "/v1/jobs?state=done", Some(READ), None),
            400,
            "bad_request",
            "state",
        ),
        (
            call(&addr, "GET", "/v1/jobs?limit=0", Some(READ), None),
            400,
            "bad_request",
            "limit",
        ),
        (
            call(&addr, "GET", "/v1/nothing", Some(READ), None),
            404,
            "not_found",
            "route",
        ),
        (
            call(&addr, "DELETE", "/v1/jobs", Some(ADMIN), None),
            405,
            "method_not_allowed",
            "",
        ),
    ];
    for (i, (a, status, code, says)) in cases.into_iter().enumerate() {
        let msg = a.json()["error"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        assert_eq!(
            (a.status, a.code().as_str()),
            (status, code),
            "case {i}: {msg}"
        );
        assert!(msg.contains(says), "case {i}: {msg}");
        assert_eq!(
            a.headers.get("content-type").map(String::as_str),
            Some("application/json"),
            "case {i}"
        );
    }
    // A 4 MiB body against a 1 MiB limit: 413, and nothing stored.
    let big = format!(r#"{{"task": "noop", "input": "{}"}}"#, "x".repeat(4 << 20));
    let a = post(&big);
    assert_eq!((a.status, a.code().as_str()), (413, "payload_too_large"));
    let listed = call(&addr, "GET", "/v1/jobs", Some(READ), None).json();
    assert_eq!(listed["jobs"].as_array().unwrap().len(), 0);
}

/// A silent connection and a slowloris head are closed after
/// `idle_timeout_ms`, a stalled body is answered 408 after
/// `request_timeout_ms`, and connections past `max_connections` get 503
/// until a slot frees. Awaited as events (EOF, answers), never timed.
#[test]
fn slow_and_surplus_connections_are_cut() {
    let (_d, addr) =
        api("idle_timeout_ms = \"300ms\"\nrequest_timeout_ms = \"300ms\"\nmax_connections = 2\n");
    let eof_after = |bytes: &[u8]| {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(bytes).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all)
            .expect("the server closes the connection");
        all
    };
    // Silent, and a head that never ends: closed (hyper may answer 408 first).
    for bytes in [&b""[..], b"GET /v1/jobs HTTP/1.1\r\nhost: x\r\n"] {
        let all = eof_after(bytes);
        assert!(
            all.is_empty() || all.starts_with(b"HTTP/1.1 408"),
            "{:?}",
            String::from_utf8_lossy(&all)
        );
    }
    // A body that stops halfway.
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SUBMIT}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"task\""
    );
    let all = eof_after(head.as_bytes());
    let a = crate::util::http::parse_answer(&all).expect("an answer");
    assert_eq!(
        (a.status, a.code().as_str()),
        (408, "request_timeout"),
        "{:?}",
        String::from_utf8_lossy(&all)
    );

    // Two idle connections hold both slots; a third is refused at once.
    let hold: Vec<std::net::TcpStream> = (0..2)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    // Until the daemon has accepted both, a third might still find a slot:
    // wait for the refusal, as the event it is.
    let refused = loop {
        let a = exchange(
            &addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        if a.status == 503 {
            break a;
        }
        assert_eq!(a.status, 200);
    };
    assert_eq!(refused.code(), "too_many_connections");
    drop(hold);
    // The slots free when the held connections close (or time out).
    loop {
        let a = exchange(
            &addr,
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        );
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 503);
    }
}

/// `jobvisor token new` prints a token and config lines holding only its
/// SHA-256; a daemon given those lines accepts the token with that role.
#[test]
fn a_new_token_works_once_its_lines_are_in_the_config() {
    let out = std::process::Command::new(crate::util::bin())
        .args(["token", "new", "--role", "submit", "--name", "ci"])
        .output()
        .expect("token new");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (token, lines) = text.split_once('\n').expect("a token, then config lines");
    assert!(token.starts_with("jv_") && !lines.contains(token), "{text}");
    assert!(lines.contains(&sha256_hex(token)), "{text}");
    let d = Daemon::with_config(&format!("[http]\nlisten = \"127.0.0.1:0\"\n{lines}"));
    let log = d.log();
    let addr = log
        .lines()
        .find_map(|l| l.split("bound=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .expect("listening")
        .to_owned();
    let a = call(
        &addr,
        "POST",
        "/v1/jobs",
        Some(token),
        Some(r#"{"task": "noop", "input": 1}"#),
    );
    assert_eq!(a.status, 201, "{}", String::from_utf8_lossy(&a.body));
    assert_eq!(
        call(&addr, "POST", "/v1/shutdown", Some(token), None).status,
        403
    );
}

/// Listening beyond loopback without TLS is refused unless the operator
/// says `allow_plaintext = true`.
#[test]
fn a_public_listen_address_needs_allow_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::util::config(&dir, "[http]\nlisten = \"0.0.0.0:0\"\n");
    let out = std::process::Command::new(crate::util::bin())
        .args(["daemon", "--config", &cfg, "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .expect("daemon");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http.listen") && err.contains("allow_plaintext"),
        "{err}"
    );
}

/// Reads server-sent events off `s` until `want` of them arrived: their
/// (id, event name, data) in order. The chunked framing's size lines are
/// skipped (they are not `field: value` lines).
fn read_events(
    s: &mut std::net::TcpStream,
    want: usize,
) -> Vec<(String, String, serde_json::Value)> {
    let mut got = Vec::new();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while got.len() < want {
        let n = s.read(&mut buf).expect("events within 30 s");
        assert!(n > 0, "the stream ended after {got:?}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                    .map(str::to_owned)
            };
            if let (Some(id), Some(data)) = (field("id"), field("data")) {
                let event = field("event").unwrap_or_default();
                got.push((id, event, serde_json::from_str(&data).expect("json data")));
            }
        }
    }
    got
}

fn open_events(addr: &str, last: Option<&str>) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let resume = last
        .map(|l| format!("last-event-id: {l}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {READ}\r\n{resume}\r\n"
    )
    .unwrap();
    s
}

/// `GET /v1/events` streams the kept history and then live events as
/// `text/event-stream`; a client that comes back with `Last-Event-ID` gets
/// exactly the events after that one.
#[test]
fn events_stream_over_sse_and_resume_after_the_last_one_seen() {
    let (_d, addr) = api("");
    let mut s = open_events(&addr, None);
    let id = call(
        &addr,
        "POST",
        "/v1/jobs",
        Some(SUBMIT),
        Some(r#"{"task": "noop", "input": 5}"#),
    )
    .json()["id"]
        .as_u64()
        .unwrap();
    // The job's events, live, until it has succeeded.
    let mut seen = Vec::new();
    while !seen
        .iter()
        .any(|(_, _, d): &(String, String, serde_json::Value)| {
            d["id"].as_u64() == Some(id) && d["state"] == "succeeded"
        })
    {
        seen.extend(read_events(&mut s, 1));
    }
    drop(s);
    let states: Vec<&str> = seen
        .iter()
        .filter(|(_, e, d)| e == "job" && d["id"].as_u64() == Some(id))
        .filter_map(|(_, _, d)| d["state"].as_str())
        .collect();
    assert_eq!(states, ["queued", "running", "succeeded"], "{seen:?}");
    // Ids grow by one.
    let seqs: Vec<u64> = seen
        .iter()
        .map(|(i, _, _)| i.split('-').nth(1).unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // Resume after the first job event: the rest again, same ids, nothing before.
    let at = seen.iter().position(|(_, e, _)| e == "job").unwrap();
    let mut again = open_events(&addr, Some(&seen[at].0));
    let rest = read_events(&mut again, seen.len() - at - 1);
    let ids = |v: &[(String, String, serde_json::Value)]| {
        v.iter().map(|(i, _, _)| i.clone()).collect::<Vec<_>>()
    };
    assert_eq!(ids(&rest), ids(&seen[at + 1..]));
    // The head says what it is.
    let mut head = open_events(&addr, None);
    let mut buf = [0u8; 1024];
    let n = head.read(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(
        text.starts_with("http/1.1 200") && text.contains("content-type: text/event-stream"),
        "{text}"
    );
}

/// `clients/python` (standard library only) against a real daemon: its
/// unittest suite, run by the machine's python3.
#[test]
fn the_python_client_drives_a_real_daemon() {
    let (_d, addr) = api("");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python");
    let out = std::process::Command::new("python3")
        .args(["-m", "unittest", "discover", "-v", "-s"])
        .arg(root.join("tests"))
        .env("PYTHONPATH", &root)
        .env("JOBVISOR_URL", format!("http://{addr}"))
        .env("JOBVISOR_TOKEN", SUBMIT)
        .env("JOBVISOR_READ_TOKEN", READ)
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("Ran 5 tests") && text.contains("OK"),
        "{text}"
    );
}

/// The audit log's lines once `done` holds for them (the writer is behind
/// a channel); fails after a minute.
fn audit_lines(d: &Daemon, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let path = d.state_dir().join("audit.log");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        if done(&lines) {
            return lines;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "audit log incomplete: {lines:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn mutations_on_both_transports_and_refused_tokens_are_audited() {
    use std::os::unix::fs::PermissionsExt;
    let (d, addr) = api("");
    // The socket: a submit and a cancel.
    let id: u64 = d
        .cli_ok(&["submit", "noop", "--input", "1", "--delay", "1h"])
        .trim()
        .parse()
        .unwrap();
    d.cli_ok(&["cancel", &id.to_string()]);
    // HTTP: a submit, an unknown token, a role too low, and a read (not logged).
    let one = ok(
        &call(
            &addr,
            "POST",
            "/v1/jobs",
            Some(SUBMIT),
            Some(r#"{"task": "noop", "input": 2}"#),
        ),
        201,
    );
    let hid = one["id"].as_u64().unwrap();
    assert_eq!(
        call(&addr, "POST", "/v1/jobs", Some("nope"), Some("{}")).status,
        401
    );
    assert_eq!(
        call(&addr, "POST", "/v1/jobs", Some(READ), Some("{}")).status,
        403
    );
    ok(
        &call(&addr, "GET", &format!("/v1/jobs/{hid}"), Some(READ), None),
        200,
    );
    let lines = audit_lines(&d, |l| l.len() >= 5);
    assert_eq!(lines.len(), 5, "{lines:?}");
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(d.state_dir()).unwrap());
    let (sub, cancel) = (&lines[0], &lines[1]);
    assert_eq!(sub["transport"], "socket");
    assert_eq!(sub["who"]["uid"], uid);
    assert!(sub["who"]["pid"].as_u64().is_some(), "{sub}");
    assert_eq!(sub["action"], "submit");
    assert_eq!(sub["target"]["ids"], serde_json::json!([id]));
    assert_eq!(sub["target"]["tasks"], serde_json::json!(["noop"]));
    assert_eq!(sub["target"]["count"], 1);
    assert_eq!(sub["outcome"], "ok");
    assert!(sub["at"].as_str().unwrap().ends_with('Z'), "{sub}");
    assert_eq!(
        (&cancel["action"], &cancel["target"], &cancel["outcome"]),
        (&"cancel".into(), &id.into(), &"ok".into())
    );
    let hsub = &lines[2];
    assert_eq!(hsub["transport"], "http");
    assert_eq!(hsub["who"], serde_json::json!({"token": "s"}));
    assert_eq!(hsub["target"]["ids"], serde_json::json!([hid]));
    let (unknown, low) = (&lines[3], &lines[4]);
    assert_eq!(unknown["who"], serde_json::json!({"token": null}));
    assert_eq!(
        (&unknown["action"], &unknown["outcome"], &unknown["error"]),
        (&"auth".into(), &"error".into(), &"unknown token".into())
    );
    assert_eq!(unknown["target"], "POST /v1/jobs");
    assert_eq!(low["who"], serde_json::json!({"token": "r"}));
    assert!(
        low["error"].as_str().unwrap().contains("needs submit"),
        "{low}"
    );
    let mode = std::fs::metadata(d.state_dir().join("audit.log"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn a_symlink_planted_at_the_audit_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, state.join("audit.log")).unwrap();
    let mut child = std::process::Command::new(crate::util::bin())
        .args(["daemon", "--state-dir"])
        .arg(&state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A daemon that followed the link would run on: stop it and fail.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the daemon started on a symlinked audit log");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let text = crate::util::text(&out);
    assert!(
        text.contains("audit log") && text.contains("symlink"),
        "{text}"
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
}
