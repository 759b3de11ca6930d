//! A small HTTP/1.1 server for the `http` and `notify` tests: it answers each
//! request with what a handler says, one connection at a time, and records
//! what it received. Enough HTTP for reqwest's requests (content-length
//! bodies), nothing more.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// A request as the server read it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    /// The request target, e.g. `/path?q=1`.
    pub target: String,
    /// Header names in lowercase.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Announce `body.len() + 1` bytes, send `body`, then hold the connection
    /// open without ever finishing.
    pub stall: bool,
    /// Send no content-length: the body ends when the connection closes.
    pub until_close: bool,
}

impl Reply {
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: body.into(),
            stall: false,
            until_close: false,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn stalled(mut self) -> Self {
        self.stall = true;
        self
    }

    pub fn until_close(mut self) -> Self {
        self.until_close = true;
        self
    }
}

pub struct Server {
    addr: SocketAddr,
    received: mpsc::Receiver<Received>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on 127.0.0.1 (a free port) and answers with `handler`.
    pub fn start(handler: impl Fn(&Received) -> Reply + Send + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let (tx, received) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            // Stalled connections stay open until the server stops.
            let mut held = Vec::new();
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let Some(req) = read_request(&stream) else {
                    continue;
                };
                let reply = handler(&req);
                // The test may be gone (or the client may have stopped
                // reading, on purpose): nothing to do about it here.
                let _ = tx.send(req);
                let _ = write_reply(&mut stream, &reply);
                if reply.stall {
                    held.push(stream);
                }
            }
        });
        Self {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The next request the server received.
    ///
    /// # Panics
    /// When none arrives within 10 s.
    pub fn received(&self) -> Received {
        self.received
            .recv_timeout(Duration::from_secs(10))
            .expect("the server received no request")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_request(stream: &TcpStream) -> Option<Received> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':')?;
        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
    }
    let len: usize = headers
        .get("content-length")
        .map_or(Some(0), |v| v.parse().ok())?;
    let mut body = vec![0; len];
    reader.read_exact(&mut body).ok()?;
    Some(Received {
        method,
        target,
        headers,
        body,
    })
}

fn write_reply(stream: &mut TcpStream, reply: &Reply) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} Whatever\r\nconnection: close\r\n",
        reply.status
    );
    if !reply.until_close {
        let len = reply.body.len() + usize::from(reply.stall);
        head.push_str(&format!("content-length: {len}\r\n"));
    }
    for (name, value) in &reply.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(&reply.body)?;
    stream.flush()
}
