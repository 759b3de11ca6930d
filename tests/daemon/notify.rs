//! Completion notifications end to end: the real daemon POSTs to a receiver
//! in this test (hand-written HTTP/1.1 on 127.0.0.1) and runs commands.
//! Everything is awaited through the receiver's channel or the daemon's
//! counters (`stats`), each with a deadline; no sleep orders anything.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use jobvisor_client::Stats;
use serde_json::{json, Value};

use crate::util::http::{read_request, Request};
use crate::util::wait;
use crate::util::*;

/// How long a test waits for one notification.
const WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got, and what it answered.
#[derive(Debug)]
struct Hit {
    method: String,
    path: String,
    /// Lowercase names.
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

impl Hit {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A webhook receiver: one request per connection (it answers `connection:
/// close`), `500` to the first `fail_first` requests and `200` after, each
/// request sent to a channel. Stopped and joined in `Drop`.
struct Hook {
    url: String,
    addr: SocketAddr,
    hits: mpsc::Receiver<Hit>,
    stop: Arc<AtomicBool>,
    /// Answer `500` to everything while set ([`Hook::set_down`]).
    down: Arc<AtomicBool>,
    /// Read requests and never answer them while set ([`Hook::set_slow`]).
    slow: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hook {
    fn start(fail_first: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, hits) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let down = Arc::new(AtomicBool::new(false));
        let is_down = Arc::clone(&down);
        let slow = Arc::new(AtomicBool::new(false));
        let is_slow = Arc::clone(&slow);
        let served = AtomicUsize::new(0);
        let thread = std::thread::spawn(move || {
            // Connections read and left unanswered (slow), open until the end.
            let mut unanswered = Vec::new();
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                if is_slow.load(Ordering::SeqCst) {
                    if let Some(hit) = read_only(&mut conn) {
                        let _ = tx.send(hit);
                    }
                    unanswered.push(conn);
                    continue;
                }
                let fail = served.fetch_add(1, Ordering::SeqCst) < fail_first
                    || is_down.load(Ordering::SeqCst);
                if let Some(hit) = serve(&mut conn, fail) {
                    let _ = tx.send(hit);
                }
            }
        });
        Hook {
            url: format!("http://{addr}/hook"),
            addr,
            hits,
            stop,
            down,
            slow,
            thread: Some(thread),
        }
    }

    /// From the next request on, answer `500` (`true`) or as `start` said.
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// From the next request on, read it and never answer (`true`; its
    /// [`Hit::answered`] is 0), or answer again.
    fn set_slow(&self, slow: bool) {
        self.slow.store(slow, Ordering::SeqCst);
    }

    /// The next request, within [`WAIT`].
    fn next(&self) -> Hit {
        self.hits
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no notification within {WAIT:?}: {e}"))
    }

    /// Requests received and not taken yet.
    fn pending(&self) -> Vec<Hit> {
        self.hits.try_iter().collect()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request and answers it.
fn serve(conn: &mut TcpStream, fail: bool) -> Option<Hit> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let Request {
        method,
        path,
        headers,
        body,
    } = read_request(&mut BufReader::new(&*conn))?;
    let (answered, status_line) = if fail {
        (500, "500 Internal Server Error")
    } else {
        (200, "200 OK")
    };
    let response =
        format!("HTTP/1.1 {status_line}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    conn.write_all(response.as_bytes()).ok()?;
    Some(Hit {
        method,
        path,
        headers,
        body,
        answered,
    })
}

/// Reads one request and leaves it unanswered.
fn read_only(conn: &mut TcpStream) -> Option<Hit> {
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let r = read_request(&mut BufReader::new(&*conn))?;
    Some(Hit {
        method: r.method,
        path: r.path,
        headers: r.headers,
        body: r.body,
        answered: 0,
    })
}

/// The daemon's stats once `done` holds for them (bounded: a notification's
/// outcome is counted just after the receiver answered).
fn stats_when(d: &Daemon, done: impl Fn(&Stats) -> bool) -> Stats {
    rt().block_on(async {
        let mut c = d.client().await;
        wait::stats_when(&mut c, WAIT, "stats never got there", done).await
    })
}

fn submitted_id(out: &std::process::Output) -> String {
    assert!(out.status.success(), "{}", text(out));
    stdout(out).lines().next().unwrap_or("").trim().to_owned()
}

#[test]
fn a_jobs_notify_url_gets_one_post_with_its_record() {
    let hook = Hook::start(0);
    let d = Daemon::start(&[]);
    // A URL the daemon cannot use is refused at submit, naming the field.
    for bad in ["ftp://127.0.0.1/x", "not a url", "unix:/run/x.sock"] {
        let out = d.cli(&["submit", "noop", "--input", "1", "--notify-url", bad]);
        assert_exit(bad, &out, 7, "notify_url");
    }

    let out = d.cli(&[
        "submit",
        "noop",
        "--input",
        "42",
        "--notify-url",
        &hook.url,
        "--wait",
    ]);
    let id = submitted_id(&out);
    let hit = hook.next();
    assert_eq!((hit.method.as_str(), hit.path.as_str()), ("POST", "/hook"));
    assert_eq!(hit.header("content-type"), "application/json");
    assert_eq!(hit.header("x-jobvisor-event"), "job.succeeded");
    assert_eq!(
        hit.header("x-jobvisor-delivery"),
        format!("{id}-0-succeeded")
    );
    let body = hit.json();
    assert_eq!(body["id"], json!(id.parse::<u64>().unwrap()));
    assert_eq!(body["state"], json!("succeeded"));
    assert_eq!(body["output"], json!(42));
    assert_eq!(body["notify_url"], json!(hook.url));
    // No `[notify] secret`: not signed.
    assert!(!hit.headers.contains_key("x-jobvisor-signature"));
    assert!(!hit.headers.contains_key("x-jobvisor-timestamp"));
    // The shape `jobvisor status --json` prints.
    let status: Value =
        serde_json::from_str(&stdout(&d.cli(&["status", &id, "--json"]))).expect("status --json");
    assert_eq!(body, status);

    // Exactly one: counted as delivered (after the 200), nothing else came.
    let s = stats_when(&d, |s| s.notify_delivered >= 1);
    assert_eq!(
        (s.notify_delivered, s.notify_failed, s.notify_dropped),
        (1, 0, 0)
    );
    assert!(hook.pending().is_empty());
    let text = stdout(&d.cli(&["stats"]));
    assert!(text.contains("1 delivered, 0 failed, 0 dropped"), "{text}");
}

#[test]
fn a_queues_notify_url_hears_of_failures_only_when_told_so() {
    let hook = Hook::start(0);
    let d = Daemon::with_config(&format!(
        "[queues.alerts]\nnotify_url = \"{}\"\nnotify_on = [\"failed\", \"dead\"]\n",
        hook.url
    ));
    let ok = d.cli(&[
        "submit", "noop", "--input", "1", "--queue", "alerts", "--wait",
    ]);
    submitted_id(&ok);
    let out = d.cli(&[
        "submit",
        "hash",
        "--input",
        r#"{"path": "/nonexistent/notify-test"}"#,
        "--queue",
        "alerts",
        "--max-attempts",
        "1",
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let failed = stdout(&out).lines().next().unwrap_or("").trim().to_owned();

    let hit = hook.next();
    assert_eq!(hit.header("x-jobvisor-event"), "job.failed");
    assert_eq!(
        hit.header("x-jobvisor-delivery"),
        format!("{failed}-0-failed")
    );
    let body = hit.json();
    assert_eq!(body["id"], json!(failed.parse::<u64>().unwrap()));
    assert_eq!(
        (&body["state"], &body["queue"]),
        (&json!("failed"), &json!("alerts"))
    );
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("/nonexistent/notify-test")),
        "{body}"
    );
    assert_eq!(body["attempts"].as_array().map(Vec::len), Some(1));
    // The succeeded job (it ended first) was not notified.
    let s = stats_when(&d, |s| s.notify_delivered >= 1);
    assert_eq!((s.notify_delivered, s.notify_failed), (1, 0));
    assert!(hook.pending().is_empty());
}

#[test]
fn a_failing_receiver_is_retried_with_the_same_delivery_id() {
    // 500, 500, then 200: three POSTs of one delivery.
    let hook = Hook::start(2);
    let d = Daemon::with_config("[notify]\nbackoff_base_ms = 10\nbackoff_max_ms = 40\n");
    let out = d.cli(&[
        "submit",
        "noop",
        "--input",
        "7",
        "--notify-url",
        &hook.url,
        "--wait",
    ]);
    let id = submitted_id(&out);
    let hits: Vec<Hit> = (0..3).map(|_| hook.next()).collect();
    assert_eq!(
        hits.iter().map(|h| h.answered).collect::<Vec<_>>(),
        vec![500, 500, 200]
    );
    for h in &hits {
        assert_eq!(h.header("x-jobvisor-delivery"), format!("{id}-0-succeeded"));
        assert_eq!(h.json()["id"], json!(id.parse::<u64>().unwrap()));
    }
    let s = stats_when(&d, |s| s.notify_delivered >= 1);
    assert_eq!((s.notify_delivered, s.notify_failed), (1, 0));
    assert!(hook.pending().is_empty(), "no fourth attempt after the 200");
}

/// Issue 10 (stop 17, noticed): the delivery id was `<id>-<state>`, so a
/// job revived by `retry` that failed again sent the id of its first
/// failure, and a receiver that dedupes dropped a real event. The id names
/// the job's epoch now: the same on every attempt of one delivery, a new
/// one after each `retry`.
#[test]
fn a_retried_job_that_fails_again_gets_a_new_delivery_id() {
    let hook = Hook::start(0);
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "submit",
        "hash",
        "--input",
        r#"{"path": "/nonexistent/notify-epoch"}"#,
        "--max-attempts",
        "1",
        "--notify-url",
        &hook.url,
        "--wait",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let id = stdout(&out).lines().next().unwrap_or("").trim().to_owned();
    let first = hook.next();
    assert_eq!(first.header("x-jobvisor-event"), "job.failed");
    assert_eq!(
        first.header("x-jobvisor-delivery"),
        format!("{id}-0-failed")
    );
    d.cli_ok(&["retry", &id]);
    let out = d.cli(&["wait", &id]);
    assert_eq!(out.status.code(), Some(3), "failed again: {}", text(&out));
    let second = hook.next();
    assert_eq!(second.header("x-jobvisor-event"), "job.failed");
    assert_eq!(
        second.header("x-jobvisor-delivery"),
        format!("{id}-1-failed")
    );
    assert_eq!(second.json()["epoch"], json!(1));
    assert_eq!(second.json()["attempts"].as_array().map(Vec::len), Some(2));
    let s = stats_when(&d, |s| s.notify_delivered >= 2);
    assert_eq!((s.notify_delivered, s.notify_failed), (2, 0));
    assert!(hook.pending().is_empty());
}

#[test]
fn a_queues_notify_command_gets_the_job_on_stdin_and_in_its_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_file = dir.path().join("notified");
    // TOML literal strings: no escapes; the script's $0 is the output path.
    let d = Daemon::with_config(&format!(
        "[queues.default]\nnotify_command = ['/bin/sh', '-c', \
         'cat > \"$0.json\" && printf \"%s %s %s\" \"$JOBVISOR_JOB_ID\" \"$JOBVISOR_JOB_STATE\" \
         \"$JOBVISOR_JOB_QUEUE\" > \"$0\"', '{}']\n",
        out_file.display()
    ));
    let id = submitted_id(&d.cli(&["submit", "noop", "--input", "5", "--wait"]));
    let s = stats_when(&d, |s| s.notify_delivered + s.notify_failed >= 1);
    assert_eq!((s.notify_delivered, s.notify_failed), (1, 0), "{}", d.log());
    assert_eq!(
        std::fs::read_to_string(&out_file).expect("the command ran"),
        format!("{id} succeeded default")
    );
    let record: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("notified.json")).expect("stdin saved"),
    )
    .expect("stdin is the record as JSON");
    assert_eq!(record["id"], json!(id.parse::<u64>().unwrap()));
    assert_eq!(record["output"], json!(5));
}

#[test]
fn a_jobs_notify_url_survives_a_daemon_crash() {
    let hook = Hook::start(0);
    let mut d = Daemon::start(&[]);
    // Delayed, so it is still queued when the daemon is killed.
    let out = d.cli(&[
        "submit",
        "noop",
        "--input",
        "3",
        "--delay",
        "2s",
        "--notify-url",
        &hook.url,
    ]);
    let id = submitted_id(&out);
    d.kill9();
    d.spawn();
    let hit = hook.next();
    assert_eq!(
        hit.header("x-jobvisor-delivery"),
        format!("{id}-0-succeeded")
    );
    let s = stats_when(&d, |s| s.notify_delivered >= 1);
    assert!(s.recovered >= 1, "{s:?}");
}

/// The outbox is durable: the receiver is down when the job ends, and the
/// daemon is killed (-9) while it retries. After the restart the
/// notification still arrives, with the delivery id of the attempts before
/// the crash. (Pending deliveries once lived in memory only: a crash lost
/// them, and a receiver that was down when the job ended never heard of it.)
#[test]
fn a_pending_notification_survives_a_daemon_crash_with_its_delivery_id() {
    let hook = Hook::start(0);
    hook.set_down(true);
    let mut d = Daemon::with_config(
        "[notify]\nmax_attempts = 1000\nbackoff_base_ms = 20\nbackoff_max_ms = 100\n",
    );
    let id = submitted_id(&d.cli(&[
        "submit",
        "noop",
        "--input",
        "4",
        "--notify-url",
        &hook.url,
        "--wait",
    ]));
    let first = hook.next();
    assert_eq!(first.answered, 500);
    let key = first.header("x-jobvisor-delivery").to_owned();
    assert_eq!(key, format!("{id}-0-succeeded"));
    d.kill9();
    let before = hook.pending();
    assert!(before.iter().all(|h| h.answered == 500), "{before:?}");
    hook.set_down(false);
    d.spawn();
    // A request the dead daemon had sent may still be answered 500; then
    // the restarted daemon's attempts, answered 200.
    let hit = loop {
        let h = hook.next();
        assert_eq!(h.header("x-jobvisor-delivery"), key, "{h:?}");
        if h.answered == 200 {
            break h;
        }
    };
    assert_eq!(hit.json()["id"], json!(id.parse::<u64>().unwrap()));
    assert_eq!(hit.json()["state"], json!("succeeded"));
    let s = stats_when(&d, |s| s.notify_delivered >= 1);
    assert_eq!((s.notify_delivered, s.notify_failed), (1, 0), "{}", d.log());
}

/// A slow receiver: it has read the POST and not answered when the daemon
/// is killed (-9). After the restart the delivery is made again, with the
/// same delivery id, so a receiver that did process the first one can
/// tell it is the same (at-least-once).
#[test]
fn a_notification_in_flight_at_a_crash_is_sent_again_with_the_same_id() {
    let hook = Hook::start(0);
    hook.set_slow(true);
    let mut d = Daemon::with_config("[notify]\ntimeout_ms = 600000\n");
    let id = submitted_id(&d.cli(&[
        "submit",
        "noop",
        "--input",
        "6",
        "--notify-url",
        &hook.url,
        "--wait",
    ]));
    let first = hook.next();
    assert_eq!(first.answered, 0, "read, never answered");
    let key = first.header("x-jobvisor-delivery").to_owned();
    assert_eq!(key, format!("{id}-0-succeeded"));
    d.kill9();
    hook.set_slow(false);
    d.spawn();
    let hit = hook.next();
    assert_eq!(hit.answered, 200);
    assert_eq!(hit.header("x-jobvisor-delivery"), key);
    assert_eq!(hit.json()["id"], json!(id.parse::<u64>().unwrap()));
    let s = stats_when(&d, |s| s.notify_delivered >= 1);
    assert_eq!((s.notify_delivered, s.notify_failed), (1, 0), "{}", d.log());
}

/// `docs/webhooks.py`, the README's verification example, run for real on
/// what `hit` received: `true` when it accepts the signature for `secret`.
/// `tamper` flips the body's last byte first.
fn python_verifies(hit: &Hit, secret: &str, tamper: bool) -> bool {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut body = hit.body.clone();
    if tamper {
        *body.last_mut().expect("a body") ^= 1;
    }
    let body_file = dir.path().join("body");
    std::fs::write(&body_file, &body).expect("write body");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/webhooks.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(secret)
        .arg(&body_file)
        .arg(hit.header("x-jobvisor-signature"))
        .output()
        .expect("run python3");
    match out.status.code() {
        Some(0) => true,
        Some(1) => false,
        _ => panic!("webhooks.py failed: {}", text(&out)),
    }
}

#[test]
fn a_signed_webhook_verifies_with_the_readmes_python_example() {
    let hook = Hook::start(0);
    let d = Daemon::with_config("[notify]\nsecret = \"s3cret\"\n");
    let out = d.cli(&[
        "submit",
        "noop",
        "--input",
        "7",
        "--notify-url",
        &hook.url,
        "--wait",
    ]);
    submitted_id(&out);
    let hit = hook.next();
    assert!(
        hit.header("x-jobvisor-signature").starts_with("sha256="),
        "{:?}",
        hit.headers
    );
    let ts: u64 = hit
        .header("x-jobvisor-timestamp")
        .parse()
        .expect("x-jobvisor-timestamp in unix seconds");
    assert!(ts > 0);
    assert!(
        python_verifies(&hit, "s3cret", false),
        "genuine body refused"
    );
    assert!(
        !python_verifies(&hit, "s3cret", true),
        "tampered body accepted"
    );
    assert!(
        !python_verifies(&hit, "other", false),
        "wrong secret accepted"
    );
}

#[test]
fn a_queues_notify_secret_wins_for_its_webhooks_only() {
    let queue_hook = Hook::start(0);
    let job_hook = Hook::start(0);
    let d = Daemon::with_config(&format!(
        "[notify]\nsecret = \"global\"\n\n[queues.alerts]\nnotify_url = \"{}\"\n\
         notify_secret = \"queue\"\n",
        queue_hook.url
    ));
    let out = d.cli(&[
        "submit",
        "noop",
        "--input",
        "1",
        "--queue",
        "alerts",
        "--notify-url",
        &job_hook.url,
        "--wait",
    ]);
    submitted_id(&out);
    let q = queue_hook.next();
    assert!(python_verifies(&q, "queue", false), "{:?}", q.headers);
    assert!(!python_verifies(&q, "global", false));
    // The job's own --notify-url is signed with the global secret.
    let j = job_hook.next();
    assert!(python_verifies(&j, "global", false), "{:?}", j.headers);
    assert!(!python_verifies(&j, "queue", false));
}

#[test]
fn the_readme_shows_the_python_verification_example_verbatim() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let example = std::fs::read_to_string(root.join("docs/webhooks.py")).expect("webhooks.py");
    assert!(
        readme.contains(&format!("```python\n{example}```")),
        "README.md must show docs/webhooks.py verbatim in a ```python block"
    );
}
