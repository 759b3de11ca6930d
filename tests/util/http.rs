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
