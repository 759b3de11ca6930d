//! The loopback delay server (`--serve`): minimal HTTP/1.1, keep-alive, one
//! current-thread runtime, and its `/_stats` counters.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::flag_value;

/// Largest request head (request line and headers) read; larger ones get 431.
const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Largest request body accepted (and discarded); larger ones get 413.
const MAX_BODY_BYTES: u64 = 1024 * 1024;
/// Pending connections the kernel queues before `accept` (capped by
/// `net.core.somaxconn`): a thousand clients connect at once.
const LISTEN_BACKLOG: u32 = 4096;
const BODY: &[u8] = b"ok\n";

/// Counters shared by the connections (atomics: the runtime is
/// current-thread, but `tokio::spawn` wants `Send`).
#[derive(Debug, Default)]
struct Stats {
    delay_ms: u64,
    requests: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    connections: AtomicU64,
    peak_connections: AtomicU64,
    accepted: AtomicU64,
}

impl Stats {
    fn enter(now: &AtomicU64, peak: &AtomicU64) {
        let n = now.fetch_add(1, Ordering::Relaxed) + 1;
        peak.fetch_max(n, Ordering::Relaxed);
    }

    fn leave(now: &AtomicU64) {
        now.fetch_sub(1, Ordering::Relaxed);
    }

    fn json(&self, reset: bool) -> String {
        let cpu = cpu_of_self();
        let take = |peak: &AtomicU64, now: &AtomicU64| {
            if reset {
                peak.swap(now.load(Ordering::Relaxed), Ordering::Relaxed)
            } else {
                peak.load(Ordering::Relaxed)
            }
        };
        format!(
            r#"{{"delay_ms":{},"requests":{},"in_flight":{},"peak_in_flight":{},"connections":{},"peak_connections":{},"accepted":{},"cpu_us":{}}}"#,
            self.delay_ms,
            self.requests.load(Ordering::Relaxed),
            self.in_flight.load(Ordering::Relaxed),
            take(&self.peak_in_flight, &self.in_flight),
            self.connections.load(Ordering::Relaxed),
            take(&self.peak_connections, &self.connections),
            self.accepted.load(Ordering::Relaxed),
            cpu.as_micros(),
        )
    }
}

/// User + system CPU time of this process.
fn cpu_of_self() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills the local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local struct.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// One parsed request head.
#[derive(Debug)]
struct Head {
    target: String,
    keep_alive: bool,
    content_length: u64,
}

/// What a request head said, or why it cannot be served.
#[derive(Debug)]
enum Parsed {
    Ok(Head),
    Bad(&'static str),
}

fn parse_head(head: &[u8]) -> Parsed {
    let Ok(text) = std::str::from_utf8(head) else {
        return Parsed::Bad("400 Bad Request");
    };
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(_method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad("400 Bad Request");
    };
    let mut keep_alive = version == "HTTP/1.1";
    let mut content_length = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            match value.parse::<u64>() {
                Ok(n) if n <= MAX_BODY_BYTES => content_length = n,
                Ok(_) => return Parsed::Bad("413 Content Too Large"),
                Err(_) => return Parsed::Bad("400 Bad Request"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Bad("501 Not Implemented");
        }
    }
    Parsed::Ok(Head {
        target: target.to_string(),
        keep_alive,
        content_length,
    })
}

/// `?ms=N` in the request target, if any.
fn delay_of(target: &str, default: Duration) -> Duration {
    target
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("ms=")))
        .and_then(|v| v.parse().ok())
        .map_or(default, Duration::from_millis)
}

fn response(status: &str, content_type: &str, body: &[u8], keep_alive: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Serves one connection until the client closes it (or asks to).
async fn connection(mut stream: TcpStream, delay: Duration, stats: Arc<Stats>) -> io::Result<()> {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut filled = 0;
    loop {
        let head_end = loop {
            if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if filled == buf.len() {
                let r = response(
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    b"",
                    false,
                );
                return stream.write_all(&r).await;
            }
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(()); // the client closed (between requests, or mid-head)
            }
            filled += n;
        };
        let head = match parse_head(&buf[..head_end]) {
            Parsed::Ok(h) => h,
            Parsed::Bad(status) => {
                let r = response(status, "text/plain", b"", false);
                return stream.write_all(&r).await;
            }
        };
        // Discard the body: first what is already buffered, then the rest.
        let buffered = (filled - head_end) as u64;
        let in_buf = head.content_length.min(buffered) as usize;
        let mut body_left = head.content_length - in_buf as u64;
        buf.copy_within(head_end + in_buf..filled, 0);
        filled -= head_end + in_buf;
        while body_left > 0 {
            let want = body_left.min(buf.len() as u64) as usize;
            let n = stream.read(&mut buf[..want]).await?;
            if n == 0 {
                return Ok(());
            }
            body_left -= n as u64;
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let path = head.target.split('?').next().unwrap_or("");
        let r = if path == "/_stats" {
            let reset = head.target.contains("reset");
            response(
                "200 OK",
                "application/json",
                stats.json(reset).as_bytes(),
                head.keep_alive,
            )
        } else {
            Stats::enter(&stats.in_flight, &stats.peak_in_flight);
            tokio::time::sleep(delay_of(&head.target, delay)).await;
            Stats::leave(&stats.in_flight);
            response("200 OK", "text/plain", BODY, head.keep_alive)
        };
        stream.write_all(&r).await?;
        if !head.keep_alive {
            return Ok(());
        }
    }
}

async fn serve(port: u16, delay: Duration, lifetime: Duration) -> Result<()> {
    let socket = TcpSocket::new_v4().context("socket")?;
    socket.set_reuseaddr(true).context("SO_REUSEADDR")?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    socket.bind(addr).with_context(|| format!("bind {addr}"))?;
    let listener = socket.listen(LISTEN_BACKLOG).context("listen")?;
    let local = listener.local_addr().context("local_addr")?;
    println!("URL http://{local}/");
    eprintln!(
        "delay server: listening on http://{local}/, delay {} ms, pid {}",
        delay.as_millis(),
        std::process::id()
    );
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let mut parent_check = tokio::time::interval(Duration::from_millis(500));
    let end = tokio::time::sleep(lifetime);
    tokio::pin!(end);
    let stats = Arc::new(Stats {
        delay_ms: delay.as_millis() as u64,
        ..Stats::default()
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let stats = Arc::clone(&stats);
                    Stats::enter(&stats.connections, &stats.peak_connections);
                    stats.accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let _ = connection(stream, delay, Arc::clone(&stats)).await;
                        Stats::leave(&stats.connections);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    eprintln!("delay server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            () = &mut end => {
                eprintln!("delay server: lifetime of {} s over, exiting", lifetime.as_secs());
                return Ok(());
            }
            _ = parent_check.tick() => {
                // SAFETY: getppid has no preconditions.
                if unsafe { libc::getppid() } != parent {
                    eprintln!("delay server: parent gone, exiting");
                    return Ok(());
                }
            }
        }
    }
}

/// `--serve [--port N] [--delay-ms MS] [--max-secs S]`.
pub(super) fn main(args: &[String]) -> Result<()> {
    let port = flag_value::<u16>(args, "--port")?.unwrap_or(0);
    let lifetime = Duration::from_secs(flag_value::<u64>(args, "--max-secs")?.unwrap_or(3600));
    let delay = Duration::from_millis(flag_value::<u64>(args, "--delay-ms")?.unwrap_or(100));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("runtime")?;
    rt.block_on(serve(port, delay, lifetime))
}
