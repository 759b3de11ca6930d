//! I/O jobs end to end: async tasks (`http`, `notify`) on the workers' event
//! loops, beside CPU jobs, and a download → hash → notify pipeline. The HTTP
//! server is this test's own (hand-written HTTP/1.1 on 127.0.0.1); every wait
//! is for an event (a request arriving, a job finishing), each with a deadline.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;

use crate::util::http::{read_request, Request};
use crate::util::*;

/// A server that holds every `GET /hold` until released, serves `GET /data`
/// and records everything it receives.
struct Server {
    url: String,
    requests: mpsc::Receiver<Request>,
    release: Arc<(Mutex<bool>, Condvar)>,
}

const DATA: &[u8] = b"hello world";

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, requests) = mpsc::channel();
        let release = Arc::new((Mutex::new(false), Condvar::new()));
        let rel = Arc::clone(&release);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let tx = tx.clone();
                let rel = Arc::clone(&rel);
                std::thread::spawn(move || serve(stream, &tx, &rel));
            }
        });
        Self {
            url,
            requests,
            release,
        }
    }

    fn next(&self) -> Request {
        self.requests
            .recv_timeout(Duration::from_secs(60))
            .expect("a request within 60 s")
    }

    fn release(&self) {
        let (lock, cv) = &*self.release;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }
}

fn serve(stream: TcpStream, tx: &mpsc::Sender<Request>, release: &(Mutex<bool>, Condvar)) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        let hold = request.path == "/hold";
        let _ = tx.send(request);
        if hold {
            let (lock, cv) = release;
            let mut go = lock.lock().unwrap();
            while !*go {
                go = cv.wait(go).unwrap();
            }
        }
        let answer = if hold { &b"held"[..] } else { DATA };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n",
            answer.len()
        );
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(answer).is_err() {
            return;
        }
    }
}

#[test]
fn io_jobs_run_together_on_one_worker_beside_cpu_jobs() {
    let d = Daemon::start_raw(&["--workers", "1"]);
    let server = Server::start();
    const N: usize = 40;
    rt().block_on(async {
        let mut c = d.client().await;
        let input = format!(r#"{{"url": "{}/hold", "timeout_ms": 60000}}"#, server.url);
        let ids: Vec<u64> =
            submit_ids(&mut c, (0..N).map(|_| json_spec("http", &input)).collect()).await;
        // All N requests are in the server at once, from one worker: its
        // event loop runs them concurrently (one at a time, the second
        // would never arrive).
        for _ in 0..N {
            let r = server.next();
            assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/hold"));
        }
        // Meanwhile the same worker's CPU thread runs CPU jobs.
        let spin = c
            .submit(vec![json_spec("spin", r#"{"ms": 5}"#)])
            .await
            .unwrap()[0]
            .id;
        wait_succeeded(&mut c, vec![spin], Some(Duration::from_secs(60))).await;
        server.release();
        wait_succeeded(&mut c, ids.clone(), Some(Duration::from_secs(60))).await;
    });
    let out = d.cli(&["result", "1"]);
    let result: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON result");
    assert_eq!(result["status"], 200, "{}", text(&out));
    let out = d.cli(&["stats"]);
    assert!(
        stdout(&out).contains("http") && stdout(&out).contains(" io "),
        "{}",
        text(&out)
    );
}

#[test]
fn download_hash_notify_is_three_jobs_and_no_glue() {
    let d = Daemon::start(&[]);
    let server = Server::start();
    let file = d.dir.path().join("download.bin");
    let lines = format!(
        "{{\"task\": \"http\", \"input\": {{\"url\": \"{url}/data\", \"save_to\": \"{file}\", \"fail_on_status\": true}}}}\n\
         {{\"task\": \"hash\", \"input\": {{}}, \"input_from\": [\"#1:/saved_to@path\"]}}\n\
         {{\"task\": \"notify\", \"input\": {{\"url\": \"{url}/hook\"}}, \"input_from\": [\"#2@json\"]}}\n",
        url = server.url,
        file = file.display()
    );
    let out = d.cli_stdin(&["submit", "--batch", "-", "--wait"], &lines);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&file).unwrap(), DATA);
    let get = server.next();
    assert_eq!((get.method.as_str(), get.path.as_str()), ("GET", "/data"));
    let hook = server.next();
    assert_eq!(
        (hook.method.as_str(), hook.path.as_str()),
        ("POST", "/hook")
    );
    let doc: serde_json::Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(
        doc["sha256"], "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9",
        "the hash of the download reached the notification: {doc}"
    );
    assert_eq!(doc["bytes"], DATA.len());
}
