//! The HTTP/1.1 the tests' own servers speak (a download source, a webhook
//! receiver): reading one request off a connection, by hand, so that a test
//! sees exactly the bytes the daemon sent.

use std::collections::HashMap;
use std::io::BufRead;

/// The most a request's head may take; a larger one is refused.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// The largest body a test server accepts.
const MAX_BODY_BYTES: usize = 16 << 20;

/// One request as a test server read it.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// Names in lowercase.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

/// Reads the next request on a connection: the request line, the headers,
/// then `content-length` bytes of body (none without that header). `None`
/// at EOF, on a read error (a read timeout included), or when the request is
/// malformed or larger than a test server takes.
pub fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut head_bytes = line.len();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        let n = r.read_line(&mut h).ok()?;
        head_bytes += n;
        if n == 0 || head_bytes > MAX_HEAD_BYTES {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let len: usize = match headers.get("content-length") {
        Some(v) => v.parse().ok()?,
        None => 0,
    };
    if len > MAX_BODY_BYTES {
        return None;
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// An answer of the daemon's HTTP API, read by hand.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Names in lowercase.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `error.code` of an error body.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// One request to `addr` on a connection of its own (`connection: close`),
/// with a bearer `token` if given and a JSON `body` if given; the answer,
/// read to EOF (30 s read timeout: a bound, not a pace).
pub fn call(
    addr: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or("");
    if method != "GET" {
        head.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body.as_bytes());
    exchange(addr, &raw)
}

/// Sends `raw` on a fresh connection and reads the answer to EOF.
pub fn exchange(addr: &str, raw: &[u8]) -> Answer {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the API");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // A server may answer (413, 503) and close before it has read it all:
    // a failed send still has an answer to read.
    let sent = s.write_all(raw);
    let mut all = Vec::new();
    let read = s.read_to_end(&mut all);
    if all.is_empty() {
        read.expect("read the answer");
        sent.expect("send");
    }
    parse_answer(&all)
        .unwrap_or_else(|| panic!("not an HTTP answer: {:?}", String::from_utf8_lossy(&all)))
}

/// An HTTP/1.1 answer from its bytes (a body of `content-length`, or all
/// that follows the head).
pub fn parse_answer(all: &[u8]) -> Option<Answer> {
    let end = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&all[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &all[end + 4..];
    let body = match headers
        .get("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) => rest.get(..n)?.to_vec(),
        None => rest.to_vec(),
    };
    Some(Answer {
        status,
        headers,
        body,
    })
}
