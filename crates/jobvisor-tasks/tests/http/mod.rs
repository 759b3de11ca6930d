//! `http`, `notify` and `sleep` against real sockets, through
//! `run_detached_async`, plus their inputs and outputs on the wire.

use std::collections::BTreeMap;
use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use jobvisor_proto::codec::{decode, encode};
use jobvisor_tasks::{
    builtin, Http, HttpInput, HttpOutput, Notify, NotifyInput, NotifyOutput, Sleep, SleepInput,
};
use jobvisor_worker::{run_detached_async, TaskError};

mod server;

use server::{Reply, Server};

fn http(input: HttpInput) -> Result<HttpOutput, TaskError> {
    run_detached_async(&Http, input, None)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A URL on 127.0.0.1 where nothing listens.
fn closed_port_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}/")
}

#[test]
fn http_get_returns_status_headers_and_body() {
    let server = Server::start(|_| {
        Reply::new(200, "hello, wörld")
            .header("X-Multi", "a")
            .header("x-multi", "b")
            .header("content-type", "text/plain")
    });
    let out = http(HttpInput::new(server.url("/path?q=1"))).expect("get");
    assert_eq!(out.status, 200);
    assert_eq!(out.body.as_deref(), Some("hello, wörld"));
    assert_eq!(out.body_bytes, "hello, wörld".len() as u64);
    assert!(!out.truncated);
    assert_eq!(out.saved_to, None);
    assert_eq!(out.headers["content-type"], "text/plain");
    assert_eq!(out.headers["x-multi"], "a, b");
    let req = server.received();
    assert_eq!(req.method, "GET");
    assert_eq!(req.target, "/path?q=1");
    assert!(
        req.headers["user-agent"].starts_with("jobvisor/"),
        "{req:?}"
    );
    assert!(req.body.is_empty());
}

#[test]
fn http_post_sends_method_headers_and_body_intact() {
    let server = Server::start(|req| Reply::new(201, req.body.clone()));
    let mut input = HttpInput::new(server.url("/submit"));
    input.method = "post".into();
    input.headers = BTreeMap::from([
        ("X-Token".into(), "abc 123".into()),
        ("content-type".into(), "text/csv".into()),
    ]);
    let body = "a,b\n1,\"ü\"\r\n".repeat(1000);
    input.body = Some(body.clone());
    let out = http(input).expect("post");
    assert_eq!(out.status, 201);
    assert_eq!(out.body.as_deref(), Some(body.as_str()));
    let req = server.received();
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/submit");
    assert_eq!(req.headers["x-token"], "abc 123");
    assert_eq!(req.headers["content-type"], "text/csv");
    assert_eq!(req.body, body.as_bytes());
}

#[test]
fn http_error_status_is_returned_unless_fail_on_status() {
    let server = Server::start(|_| Reply::new(404, "no such thing"));
    let out = http(HttpInput::new(server.url("/missing"))).expect("a 404 is an answer");
    assert_eq!(out.status, 404);
    assert_eq!(out.body.as_deref(), Some("no such thing"));

    let mut input = HttpInput::new(server.url("/missing"));
    input.fail_on_status = true;
    let err = http(input).expect_err("fail_on_status");
    let msg = err.to_string();
    assert!(msg.contains("404"), "{msg}");
    assert!(msg.contains("/missing"), "{msg}");
    assert!(!err.is_cancelled());
}

#[test]
fn http_does_not_follow_redirects() {
    let server = Server::start(|_| Reply::new(302, "").header("location", "/elsewhere"));
    let out = http(HttpInput::new(server.url("/old"))).expect("a 302 is an answer");
    assert_eq!(out.status, 302);
    assert_eq!(out.headers["location"], "/elsewhere");
    assert_eq!(server.received().target, "/old");
}

#[test]
fn http_truncates_a_returned_body_at_max_body_bytes() {
    let body: Vec<u8> = (0..1_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let server = Server::start(move |_| Reply::new(200, body.clone()));
    let mut input = HttpInput::new(server.url("/big"));
    input.max_body_bytes = Some(100);
    let out = http(input).expect("get");
    assert!(out.truncated);
    assert_eq!(out.body_bytes, 100);
    let text = out.body.expect("body");
    assert_eq!(text.len(), 100);
    assert!(text.starts_with("abcdefghijklmnopqrstuvwxyzabcd"), "{text}");

    // Exactly at the limit is whole, not truncated.
    let mut input = HttpInput::new(server.url("/big"));
    input.max_body_bytes = Some(1_000_000);
    let out = http(input).expect("get");
    assert!(!out.truncated);
    assert_eq!(out.body_bytes, 1_000_000);
}

#[test]
fn http_save_to_writes_the_exact_bytes_atomically() {
    // Not UTF-8, larger than any one read.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = body.clone();
    let server = Server::start(move |_| Reply::new(200, body.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = dir.path().join("download.bin");
    fs::write(&dst, b"old").expect("write");
    let mut input = HttpInput::new(server.url("/file"));
    input.save_to = Some(dst.clone());
    input.max_body_bytes = Some(4 << 20);
    input.fail_on_status = true;
    let out = http(input).expect("download");
    assert_eq!(out.status, 200);
    assert_eq!(out.body, None);
    assert_eq!(out.body_bytes, expected.len() as u64);
    assert!(!out.truncated);
    assert_eq!(out.saved_to.as_deref(), Some(dst.as_path()));
    assert!(fs::read(&dst).expect("read") == expected, "different bytes");
    assert_eq!(entries(dir.path()), ["download.bin"], "temp file left");
}

#[test]
fn http_save_to_over_the_limit_fails_and_keeps_the_destination() {
    let server = Server::start(|_| Reply::new(200, vec![7u8; 5000]));
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = dir.path().join("out");
    fs::write(&dst, b"old").expect("write");
    let mut input = HttpInput::new(server.url("/file"));
    input.save_to = Some(dst.clone());
    input.max_body_bytes = Some(4999);
    let err = http(input).expect_err("over the limit");
    assert!(err.to_string().contains("max_body_bytes"), "{err}");
    assert_eq!(fs::read(&dst).expect("read"), b"old");
    assert_eq!(entries(dir.path()), ["out"]);
}

#[test]
fn http_save_to_without_content_length_stops_at_the_limit() {
    let server = Server::start(|_| Reply::new(200, vec![7u8; 300_000]).until_close());
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = dir.path().join("out");
    let mut input = HttpInput::new(server.url("/stream"));
    input.save_to = Some(dst.clone());
    input.max_body_bytes = Some(100_000);
    let err = http(input).expect_err("over the limit");
    assert!(err.to_string().contains("max_body_bytes"), "{err}");
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));

    // Within the limit, the same until_close body is saved whole.
    let mut input = HttpInput::new(server.url("/stream"));
    input.save_to = Some(dst.clone());
    input.max_body_bytes = Some(300_000);
    let out = http(input).expect("download");
    assert_eq!(out.body_bytes, 300_000);
    assert_eq!(fs::read(&dst).expect("read"), vec![7u8; 300_000]);
    assert_eq!(entries(dir.path()), ["out"]);
}

#[test]
fn http_cancelled_download_leaves_no_temp_file() {
    // Headers and part of the body arrive, then nothing: the call is
    // cancelled (its future dropped) at its deadline while the temp file is
    // being written. The deadline runs from the start of the call, so it
    // covers building the runtime and the HTTP client, connecting, and
    // writing what arrives: generous, for a loaded machine. Before it passes
    // the test sees the request reach the server and the temp file appear.
    const DEADLINE: Duration = Duration::from_secs(5);
    let server = Server::start(|_| Reply::new(200, vec![1u8; 100_000]).stalled());
    let dir = tempfile::tempdir().expect("tempdir");
    let dst = dir.path().join("out");
    let mut input = HttpInput::new(server.url("/slow"));
    input.save_to = Some(dst);
    let call = std::thread::spawn(move || run_detached_async(&Http, input, Some(DEADLINE)));
    // The request did reach the server, so the download had started.
    assert_eq!(server.received().target, "/slow");
    // And its temp file is there (until the call is cancelled).
    let until = Instant::now() + Duration::from_secs(30);
    while entries(dir.path()).is_empty() {
        assert!(
            !call.is_finished(),
            "the call ended before its temp file was seen: {:?}",
            call.join()
        );
        assert!(Instant::now() < until, "no temp file within 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    match call.join().expect("the call's thread") {
        Err(e) => assert!(e.is_cancelled(), "{e:?}"),
        Ok(out) => panic!("not cancelled: {out:?}"),
    }
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
}

#[test]
fn http_to_a_closed_port_is_an_error() {
    let url = closed_port_url();
    let err = http(HttpInput::new(url.clone())).expect_err("nothing listens");
    let msg = err.to_string();
    assert!(!err.is_cancelled());
    assert!(!format!("{err:?}").contains("BadInput"), "{err:?}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.to_lowercase().contains("connect"), "{msg}");
}

#[test]
fn http_times_out_against_a_server_that_never_answers() {
    // Connections complete in the kernel's backlog; nobody ever reads them.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut input = HttpInput::new(format!("http://{}/", silent.local_addr().expect("addr")));
    input.timeout_ms = Some(300);
    let start = Instant::now();
    let err = http(input).expect_err("must time out");
    let took = start.elapsed();
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn http_times_out_in_the_middle_of_the_body() {
    let server = Server::start(|_| Reply::new(200, "partial").stalled());
    let mut input = HttpInput::new(server.url("/"));
    input.timeout_ms = Some(300);
    let start = Instant::now();
    let err = http(input).expect_err("must time out");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn notify_posts_the_document_as_json() {
    let server = Server::start(|_| Reply::new(204, ""));
    let mut input = NotifyInput::new(server.url("/hook"), r#"{"event":"done","id":7}"#);
    input.headers.insert("x-signature".into(), "s1".into());
    let out = run_detached_async(&Notify, input, None).expect("notify");
    assert_eq!(out, NotifyOutput { status: 204 });
    let req = server.received();
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/hook");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-signature"], "s1");
    let doc: serde_json::Value = serde_json::from_slice(&req.body).expect("JSON body");
    assert_eq!(doc, serde_json::json!({"event": "done", "id": 7}));
}

#[test]
fn notify_keeps_a_content_type_given_by_the_user() {
    let server = Server::start(|_| Reply::new(200, "ok"));
    let mut input = NotifyInput::new(server.url("/"), "[1]");
    input
        .headers
        .insert("Content-Type".into(), "application/cloudevents+json".into());
    run_detached_async(&Notify, input, None).expect("notify");
    let req = server.received();
    assert_eq!(req.headers["content-type"], "application/cloudevents+json");
}

#[test]
fn notify_fails_on_a_non_2xx_status() {
    let server = Server::start(|_| Reply::new(500, "database on fire"));
    let err = run_detached_async(&Notify, NotifyInput::new(server.url("/hook"), "{}"), None)
        .expect_err("a 500 fails the call");
    let msg = err.to_string();
    assert!(msg.contains("500"), "{msg}");
    assert!(msg.contains("database on fire"), "{msg}");
    assert!(!format!("{err:?}").contains("BadInput"), "{err:?}");
    assert_eq!(server.received().body, b"{}");
}

#[test]
fn notify_to_a_closed_port_is_an_error() {
    let err = run_detached_async(&Notify, NotifyInput::new(closed_port_url(), "{}"), None)
        .expect_err("nothing listens");
    assert!(!err.is_cancelled());
    assert!(!format!("{err:?}").contains("BadInput"), "{err:?}");
}

#[test]
fn notify_document_from_a_json_input_reaches_the_server() {
    let server = Server::start(|_| Reply::new(200, ""));
    let json = format!(
        r#"{{"url": "{}", "json": {{"b": [true, null, 1.5], "a": "x"}}}}"#,
        server.url("/")
    );
    let native = builtin()
        .json_to_native("notify", &json)
        .expect("to native");
    let input: NotifyInput = decode(&native).expect("decode");
    assert_eq!(input.json, r#"{"a":"x","b":[true,null,1.5]}"#);
    run_detached_async(&Notify, input, None).expect("notify");
    let body: serde_json::Value = serde_json::from_slice(&server.received().body).expect("JSON");
    assert_eq!(body, serde_json::json!({"a": "x", "b": [true, null, 1.5]}));
}

#[test]
fn http_and_notify_types_survive_the_wire_codec() {
    let mut input = HttpInput::new("https://example.invalid/x");
    input.method = "PUT".into();
    input.headers.insert("a".into(), "b".into());
    input.body = Some("body".into());
    input.max_body_bytes = Some(5);
    input.save_to = Some("/tmp/x".into());
    input.connect_timeout_ms = Some(1);
    input.timeout_ms = Some(2);
    input.fail_on_status = true;
    for i in [input, HttpInput::new("http://h/")] {
        let back: HttpInput = decode(&encode(&i).expect("encode")).expect("decode");
        assert_eq!(back, i);
    }
    let out = HttpOutput {
        status: 418,
        headers: BTreeMap::from([("k".into(), "v".into())]),
        body: Some("tea".into()),
        body_bytes: 3,
        truncated: true,
        saved_to: None,
    };
    let saved = HttpOutput {
        body: None,
        saved_to: Some("/srv/f".into()),
        ..out.clone()
    };
    for o in [out, saved] {
        let back: HttpOutput = decode(&encode(&o).expect("encode")).expect("decode");
        assert_eq!(back, o);
    }
    let mut n = NotifyInput::new("http://h/", r#"{"a": [1, 2]}"#);
    n.timeout_ms = Some(9);
    n.headers.insert("x".into(), "y".into());
    let back: NotifyInput = decode(&encode(&n).expect("encode")).expect("decode");
    assert_eq!(back, n);
    let s = NotifyOutput { status: 202 };
    assert_eq!(
        decode::<NotifyOutput>(&encode(&s).expect("encode")).ok(),
        Some(s)
    );
}

#[test]
fn json_inputs_take_defaults_and_reject_typos() {
    let r = builtin();
    let native = r
        .json_to_native("http", r#"{"url": "http://h/"}"#)
        .expect("minimal input");
    assert_eq!(
        decode::<HttpInput>(&native).expect("decode"),
        HttpInput::new("http://h/")
    );
    let err = r
        .json_to_native("http", r#"{"url": "http://h/", "timout_ms": 5}"#)
        .expect_err("unknown field");
    assert!(err.to_string().contains("timout_ms"), "{err}");
    assert!(r.json_to_native("http", r#"{"method": "GET"}"#).is_err());

    // A JSON string as the document is posted as a JSON string.
    let native = r
        .json_to_native("notify", r#"{"url": "http://h/", "json": "hi \"you\""}"#)
        .expect("string document");
    let n: NotifyInput = decode(&native).expect("decode");
    assert_eq!(n.json, r#""hi \"you\"""#);
    assert!(r
        .json_to_native("notify", r#"{"url": "http://h/"}"#)
        .is_err());

    // Outputs convert to JSON for the daemon's clients.
    let out = HttpOutput {
        status: 200,
        headers: BTreeMap::new(),
        body: Some("x".into()),
        body_bytes: 1,
        truncated: false,
        saved_to: None,
    };
    let json = r
        .native_output_to_json("http", &encode(&out).expect("encode"))
        .expect("to JSON");
    let v: serde_json::Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(v["status"], 200);
    assert_eq!(v["body"], "x");
    assert_eq!(v["saved_to"], serde_json::Value::Null);
    let json = r
        .native_output_to_json(
            "notify",
            &encode(&NotifyOutput { status: 204 }).expect("encode"),
        )
        .expect("to JSON");
    assert_eq!(json, r#"{"status":204}"#);
}

#[test]
fn sleep_is_async_and_waits_at_least_the_duration() {
    let start = Instant::now();
    run_detached_async(&Sleep, SleepInput { ms: 40 }, None).expect("sleep");
    assert!(start.elapsed() >= Duration::from_millis(40));
    let res = run_detached_async(
        &Sleep,
        SleepInput { ms: 60_000 },
        Some(Duration::from_millis(30)),
    );
    assert!(res.is_err_and(|e| e.is_cancelled()));
    assert!(start.elapsed() < Duration::from_secs(30));
    assert_eq!(builtin().kind("sleep"), Some(jobvisor_worker::TaskKind::Io));
}
