//! `"http"` and `"notify"`: HTTP requests from a worker's event loop.
//!
//! Both are [`AsyncTask`]s built on one shared `reqwest` client per worker.
//! Choices that hold for both:
//!
//! - **One client per worker.** Clients live in a thread-local on the worker's
//!   event-loop thread (one per worker process), are created on first use and
//!   keep idle keep-alive connections (at most [`POOL_MAX_IDLE_PER_HOST`] per
//!   host, closed after [`POOL_IDLE_TIMEOUT`]). The connect timeout is a client
//!   setting in `reqwest`, so each distinct `connect_timeout_ms` gets its own
//!   client (a handful at most are kept). A client is never carried across a
//!   fork: the cache is keyed by pid as well.
//! - **No proxies from the environment.** `HTTP_PROXY`, `HTTPS_PROXY` and
//!   `NO_PROXY` are ignored: a worker's environment is the daemon's, and a
//!   proxy picked up from it would silently change where jobs connect.
//! - **No redirects are followed**, as `curl` without `-L`: a 3xx is the
//!   answer, with its `location` header. Following would turn a POST into a
//!   GET on 301/302 and could forward credentials to another host.
//! - **Bodies are passed through as sent**: no decompression.
//! - **Heartbeats** are sent while a request waits (a slow server is not a
//!   stalled task: the request's own timeout bounds the wait).
//! - Errors carry `reqwest`'s whole source chain, prefixed with the method and
//!   the URL (without its password).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobvisor_worker::{error_chain, AsyncCtx, AsyncTask, TaskError};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Client, Method, Response, Url};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::tmpfile::TempFile;

/// Default of [`HttpInput::max_body_bytes`]: 512 KiB, so that a full body
/// with its headers fits the daemon's default `limits.max_output_bytes`
/// (1 MiB). Larger downloads belong in `save_to`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 512 << 10;
/// Largest [`HttpInput::max_body_bytes`] accepted for a body returned in the
/// output (64 MiB): the output travels through the worker's pipe and the job
/// store. A body saved to a file has no such cap.
pub const MAX_RETURNED_BODY_BYTES: u64 = 64 << 20;
/// Default of [`HttpInput::connect_timeout_ms`].
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
/// Default of [`HttpInput::timeout_ms`] and [`NotifyInput::timeout_ms`].
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Timeouts above this (one day) count as one day: a way to say "no limit"
/// that keeps deadline arithmetic far from overflow.
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);
/// Idle keep-alive connections kept per host by a worker's client. At least
/// the event loop's concurrency (`io_concurrency_per_worker`, 256 by default):
/// with fewer, a burst to one host closes connections it reopens a moment
/// later (measured: 16 made half of 10,000 GETs open a new connection and cost
/// ~90 µs of CPU per GET; 1,024 made it ~48 µs and no new connections).
pub const POOL_MAX_IDLE_PER_HOST: usize = 1024;
/// How long an idle keep-alive connection is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients kept per worker, one per distinct connect timeout in use.
const MAX_CLIENTS: usize = 4;
/// How often a waiting request tells the supervisor it is alive (the context
/// rate-limits further).
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(250);
/// How much of an error response's body `notify` quotes in its error, and
/// reads (to keep the connection reusable) after a success.
const NOTIFY_BODY_BYTES: u64 = 64 << 10;
const NOTIFY_QUOTE_CHARS: usize = 512;

/// `"http"`: one HTTP request; the response's status, headers and body.
///
/// The body is read chunk by chunk, with progress reports (bytes so far out
/// of the `content-length`, or 0 when the server sent none), and is either
/// returned as text or streamed to [`HttpInput::save_to`]. Over
/// [`HttpInput::max_body_bytes`], a returned body is truncated (`truncated`
/// set) while a saved one fails the call: a truncated file is easily taken
/// for a whole one, a truncated text rarely.
///
/// A 4xx or 5xx status is a successful call unless
/// [`HttpInput::fail_on_status`] is set. Saving happens whatever the status
/// (as `curl -o`); set `fail_on_status` for downloads so an error page never
/// replaces the destination.
#[derive(Debug, Clone, Copy, Default)]
pub struct Http;

/// Input of [`Http`]. In JSON, only `url` is required:
/// `{"url": "https://example.com/"}` is a GET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpInput {
    /// The request method (default `GET`). The standard methods are accepted
    /// in any case; others are sent as written.
    #[serde(default = "default_method")]
    pub method: String,
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// Request headers, e.g. `{"authorization": "Bearer ..."}`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The request body, as text.
    #[serde(default)]
    pub body: Option<String>,
    /// The most body bytes to keep (default 512 KiB). A returned body is cut
    /// there (at most [`MAX_RETURNED_BODY_BYTES`]); a saved body longer than
    /// this fails the call.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Stream the body into this file instead of returning it. It is written
    /// to a temporary file in the same directory and renamed over `save_to`
    /// once complete, so the file is either untouched or whole. Relative paths
    /// are relative to the worker's working directory; the directory must
    /// exist.
    #[serde(default)]
    pub save_to: Option<PathBuf>,
    /// Time allowed to establish the connection (default 10 s).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Time allowed for the whole request, from connecting to the last byte of
    /// the body (default 30 s).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Whether a 4xx or 5xx status fails the call (default: no, the status is
    /// returned).
    #[serde(default)]
    pub fail_on_status: bool,
}

fn default_method() -> String {
    "GET".to_owned()
}

impl HttpInput {
    /// A GET of `url` with every option at its default.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            method: default_method(),
            url: url.into(),
            headers: BTreeMap::new(),
            body: None,
            max_body_bytes: None,
            save_to: None,
            connect_timeout_ms: None,
            timeout_ms: None,
            fail_on_status: false,
        }
    }
}

/// Output of [`Http`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOutput {
    /// The response status, e.g. 200.
    pub status: u16,
    /// Response headers, names in lowercase; repeated headers are joined with
    /// `", "`, and bytes that are not UTF-8 are replaced (lossy).
    pub headers: BTreeMap<String, String>,
    /// The body as text (bytes that are not UTF-8 are replaced), or `None`
    /// when it was saved to a file.
    pub body: Option<String>,
    /// Body bytes received and kept: returned (before the lossy conversion to
    /// text) or written to the file.
    pub body_bytes: u64,
    /// Whether the returned body was cut at `max_body_bytes`.
    pub truncated: bool,
    /// Where the body was saved, when it was.
    pub saved_to: Option<PathBuf>,
}

impl AsyncTask for Http {
    const NAME: &'static str = "http";
    type Input = HttpInput;
    type Output = HttpOutput;

    async fn run(&self, input: HttpInput, ctx: AsyncCtx) -> Result<HttpOutput, TaskError> {
        let req = Request::new(
            &input.method,
            &input.url,
            &input.headers,
            input.connect_timeout_ms,
            input.timeout_ms,
        )?;
        let max_body_bytes = input.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
        let save_to = match input.save_to {
            Some(path) => Some(SaveTo::new(path)?),
            None if max_body_bytes > MAX_RETURNED_BODY_BYTES => {
                return Err(TaskError::bad_input(format!(
                    "max_body_bytes {max_body_bytes} is over the limit for a returned body \
                     ({MAX_RETURNED_BODY_BYTES}); use save_to for larger bodies"
                )))
            }
            None => None,
        };
        with_heartbeats(&ctx, async {
            let mut response = req.send(input.body).await?;
            let status = response.status();
            if input.fail_on_status && (status.is_client_error() || status.is_server_error()) {
                return Err(TaskError::msg(format!(
                    "{}: server answered {status}",
                    req.what()
                )));
            }
            let headers = lossy_headers(response.headers());
            let total = response.content_length().unwrap_or(0);
            let (body, body_bytes, truncated, saved_to) = match save_to {
                Some(dest) => {
                    let n = dest
                        .write(&mut response, max_body_bytes, &ctx, &req)
                        .await?;
                    (None, n, false, Some(dest.path))
                }
                None => {
                    let (bytes, truncated) =
                        read_capped(&mut response, max_body_bytes, total, Some(&ctx))
                            .await
                            .map_err(|e| req.error(e))?;
                    let text = String::from_utf8_lossy(&bytes).into_owned();
                    (Some(text), bytes.len() as u64, truncated, None)
                }
            };
            Ok(HttpOutput {
                status: status.as_u16(),
                headers,
                body,
                body_bytes,
                truncated,
                saved_to,
            })
        })
        .await
    }
}

/// `"notify"`: POSTs a JSON document (a webhook). Any status but 2xx fails the
/// call, so the job's retry policy applies; the error quotes the start of the
/// response body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Notify;

/// Input of [`Notify`].
///
/// In a JSON input, `json` is the document itself (`{"url": "...", "json":
/// {"event": "done"}}`); a JSON string there is posted as a JSON string. On
/// the wire (and in Rust) it is the document's text: bincode cannot carry a
/// self-describing `serde_json::Value`. Converting from JSON parses and
/// re-prints the document, so whitespace is normalised and object keys come
/// out sorted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyInput {
    /// An absolute `http` or `https` URL.
    pub url: String,
    /// The JSON document to post, as JSON text.
    #[serde(with = "json_text")]
    pub json: String,
    /// Extra request headers. `content-type` defaults to `application/json`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Time allowed for the whole request (default 30 s). The connect timeout
    /// is the default 10 s.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

impl NotifyInput {
    /// A notification of `url` with the document `json` (JSON text).
    pub fn new(url: impl Into<String>, json: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            json: json.into(),
            headers: BTreeMap::new(),
            timeout_ms: None,
        }
    }
}

/// Output of [`Notify`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyOutput {
    /// The response status (always 2xx: others fail the call).
    pub status: u16,
}

impl AsyncTask for Notify {
    const NAME: &'static str = "notify";
    type Input = NotifyInput;
    type Output = NotifyOutput;

    async fn run(&self, input: NotifyInput, ctx: AsyncCtx) -> Result<NotifyOutput, TaskError> {
        let mut req = Request::new("POST", &input.url, &input.headers, None, input.timeout_ms)?;
        serde_json::from_str::<serde::de::IgnoredAny>(&input.json)
            .map_err(|e| TaskError::bad_input(format!("json is not a JSON document: {e}")))?;
        if !req.headers.contains_key(CONTENT_TYPE) {
            req.headers
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        with_heartbeats(&ctx, async {
            let mut response = req.send(Some(input.json)).await?;
            let status = response.status();
            // Read a bounded body either way: quoted in an error, and read to
            // the end after a success so the connection can be reused. A
            // failure to read it changes nothing: the status is the answer.
            let body = read_capped(&mut response, NOTIFY_BODY_BYTES, 0, None).await;
            if !status.is_success() {
                let body = body.map(|(b, _)| b).unwrap_or_default();
                return Err(TaskError::msg(format!(
                    "{}: server answered {status}{}",
                    req.what(),
                    quote(&body)
                )));
            }
            Ok(NotifyOutput {
                status: status.as_u16(),
            })
        })
        .await
    }
}

/// `": <the start of the body>"`, or nothing for an empty body.
fn quote(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    match text.char_indices().nth(NOTIFY_QUOTE_CHARS) {
        Some((cut, _)) => format!(": {}...", &text[..cut]),
        None => format!(": {text}"),
    }
}

/// A validated request: what both tasks send.
struct Request {
    method: Method,
    url: Url,
    headers: HeaderMap,
    connect_timeout: Duration,
    timeout: Duration,
}

impl Request {
    /// Validates the parts of a request.
    ///
    /// # Errors
    /// [`TaskError::bad_input`] for a bad method, URL, header or timeout.
    fn new(
        method: &str,
        url: &str,
        headers: &BTreeMap<String, String>,
        connect_timeout_ms: Option<u64>,
        timeout_ms: Option<u64>,
    ) -> Result<Self, TaskError> {
        Ok(Self {
            method: parse_method(method)?,
            url: parse_url(url)?,
            headers: header_map(headers)?,
            connect_timeout: timeout(
                "connect_timeout_ms",
                connect_timeout_ms,
                DEFAULT_CONNECT_TIMEOUT_MS,
            )?,
            timeout: timeout("timeout_ms", timeout_ms, DEFAULT_TIMEOUT_MS)?,
        })
    }

    /// Sends the request and waits for the response's head.
    async fn send(&self, body: Option<String>) -> Result<Response, TaskError> {
        let mut rb = client(self.connect_timeout)?
            .request(self.method.clone(), self.url.clone())
            .headers(self.headers.clone())
            .timeout(self.timeout);
        if let Some(body) = body {
            rb = rb.body(body);
        }
        rb.send().await.map_err(|e| self.error(e))
    }

    /// `"GET http://host/path"`, for messages; without the URL's password.
    fn what(&self) -> String {
        let mut url = self.url.clone();
        // Fails only for URLs that cannot have a password, which have none.
        let _ = url.set_password(None);
        format!("{} {url}", self.method)
    }

    /// A task error for `e`: what was asked, then reqwest's source chain
    /// (its own copy of the URL is dropped: it is in the prefix already, and
    /// would keep the password).
    fn error(&self, e: reqwest::Error) -> TaskError {
        TaskError::msg(format!(
            "{}: {}",
            self.what(),
            error_chain(&e.without_url())
        ))
    }
}

fn parse_method(method: &str) -> Result<Method, TaskError> {
    const STANDARD: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    let upper = method.to_ascii_uppercase();
    // Method names are case-sensitive (RFC 9110), but "get" is never meant
    // as an extension method.
    let name = if STANDARD.contains(&upper.as_str()) {
        upper.as_str()
    } else {
        method
    };
    Method::from_bytes(name.as_bytes())
        .map_err(|_| TaskError::bad_input(format!("invalid HTTP method {method:?}")))
}

fn parse_url(url: &str) -> Result<Url, TaskError> {
    let parsed =
        Url::parse(url).map_err(|e| TaskError::bad_input(format!("invalid URL {url:?}: {e}")))?;
    match parsed.scheme() {
        "http" | "https" => Ok(parsed),
        other => Err(TaskError::bad_input(format!(
            "URL {url:?} has scheme {other:?}; only http and https are supported"
        ))),
    }
}

fn header_map(headers: &BTreeMap<String, String>) -> Result<HeaderMap, TaskError> {
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let key = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| TaskError::bad_input(format!("invalid header name {name:?}")))?;
        // The value is left out of the message: it may be a credential.
        let value = HeaderValue::from_str(value)
            .map_err(|_| TaskError::bad_input(format!("invalid value for header {name:?}")))?;
        // BTreeMap keys are unique, but "Accept" and "accept" are one header:
        // keep both values rather than silently dropping one.
        map.append(key, value);
    }
    Ok(map)
}

/// A timeout field: `default_ms` when absent, capped at [`MAX_TIMEOUT`].
fn timeout(field: &str, ms: Option<u64>, default_ms: u64) -> Result<Duration, TaskError> {
    match ms.unwrap_or(default_ms) {
        0 => Err(TaskError::bad_input(format!(
            "{field} must be at least 1 (leave it out for the default, {default_ms})"
        ))),
        ms => Ok(Duration::from_millis(ms).min(MAX_TIMEOUT)),
    }
}

/// Response headers as text: lowercase names, repeated values joined.
fn lossy_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out = BTreeMap::<String, String>::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    out
}

/// Reads the body up to `cap` bytes; `true` when there was more (the rest is
/// not read). Reports progress to `ctx`, out of `total`.
async fn read_capped(
    response: &mut Response,
    cap: u64,
    total: u64,
    ctx: Option<&AsyncCtx>,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    // Grown as bytes arrive, never sized from the peer's content-length.
    let mut buf = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap - buf.len() as u64;
        if chunk.len() as u64 > room {
            // room < chunk.len(), so it fits a usize.
            buf.extend_from_slice(&chunk[..room as usize]);
            return Ok((buf, true));
        }
        buf.extend_from_slice(&chunk);
        if let Some(ctx) = ctx {
            ctx.progress(buf.len() as u64, total);
        }
    }
    Ok((buf, false))
}

/// A validated [`HttpInput::save_to`].
struct SaveTo {
    path: PathBuf,
}

impl SaveTo {
    fn new(path: PathBuf) -> Result<Self, TaskError> {
        if path.file_name().is_none() {
            return Err(TaskError::bad_input(format!(
                "save_to {path:?} does not name a file"
            )));
        }
        Ok(Self { path })
    }

    /// Streams the body into a temporary file next to `path` and renames it
    /// over `path`; returns the bytes written. The temporary file is removed
    /// on any error, and on cancellation (when the future is dropped).
    async fn write(
        &self,
        response: &mut Response,
        cap: u64,
        ctx: &AsyncCtx,
        req: &Request,
    ) -> Result<u64, TaskError> {
        let too_big = |n: &dyn std::fmt::Display| {
            TaskError::msg(format!(
                "{}: the body ({n} bytes) is over max_body_bytes ({cap}); nothing was saved",
                req.what()
            ))
        };
        let total = response.content_length();
        if let Some(len) = total.filter(|&len| len > cap) {
            return Err(too_big(&len));
        }
        let total = total.unwrap_or(0);
        let dir = match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let name = self.path.file_name().unwrap_or_default();
        // Creating the file is one open(2), as cheap as the unlink when the
        // guard drops: not worth a trip through the blocking pool.
        // A download has no source whose mode to take: the umask decides, as
        // for any file a program creates.
        let mut tmp = TempFile::create(dir, name, 0o666)?;
        let write_err = tmp.write_err();
        let file = tmp.take_file()?;
        // tokio's file does its writes on the blocking pool, off the event loop.
        let mut file = tokio::fs::File::from_std(file);
        let mut written: u64 = 0;
        while let Some(chunk) = response.chunk().await.map_err(|e| req.error(e))? {
            written += chunk.len() as u64;
            if written > cap {
                return Err(too_big(&format!("more than {cap}")));
            }
            file.write_all(&chunk).await.map_err(&write_err)?;
            ctx.progress(written, total);
        }
        file.flush().await.map_err(&write_err)?;
        // On disk before the rename, so a crash cannot leave a renamed but
        // empty file.
        file.sync_all().await.map_err(&write_err)?;
        drop(file);
        tokio::fs::rename(&tmp.path, &self.path)
            .await
            .map_err(|e| tmp.rename_err(&self.path, &e))?;
        tmp.persisted = true;
        Ok(written)
    }
}

/// Runs `fut`, sending heartbeats while it waits.
async fn with_heartbeats<F: Future>(ctx: &AsyncCtx, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
    loop {
        tokio::select! {
            out = fut.as_mut() => return out,
            _ = tick.tick() => ctx.heartbeat(),
        }
    }
}

/// This worker's clients, by connect timeout.
#[derive(Default)]
struct Clients {
    /// The process the clients were built in: a forked child starts afresh
    /// (a client's connections belong to its parent's event loop).
    pid: u32,
    by_connect_timeout: Vec<(Duration, Client)>,
}

thread_local! {
    // A worker runs every async call on one event-loop thread, so this is one
    // cache per worker, used without locking.
    static CLIENTS: RefCell<Clients> = RefCell::new(Clients::default());
}

/// The worker's client for `connect_timeout`, built on first use.
fn client(connect_timeout: Duration) -> Result<Client, TaskError> {
    CLIENTS.with_borrow_mut(|clients| {
        let pid = std::process::id();
        if clients.pid != pid {
            clients.pid = pid;
            clients.by_connect_timeout.clear();
        }
        if let Some((_, c)) = clients
            .by_connect_timeout
            .iter()
            .find(|(t, _)| *t == connect_timeout)
        {
            return Ok(c.clone());
        }
        let c = Client::builder()
            .connect_timeout(connect_timeout)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .user_agent(concat!("jobvisor/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                TaskError::msg(format!("cannot build the HTTP client: {}", error_chain(&e)))
            })?;
        if clients.by_connect_timeout.len() >= MAX_CLIENTS {
            clients.by_connect_timeout.remove(0);
        }
        clients
            .by_connect_timeout
            .push((connect_timeout, c.clone()));
        Ok(c)
    })
}

/// `serde(with)` for [`NotifyInput::json`]: a JSON document kept as its text.
///
/// Human-readable formats (the JSON a user submits) carry the document itself;
/// the native encoding (bincode, not self-describing) carries the text, as
/// bincode cannot decode a `serde_json::Value`.
mod json_text {
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| S::Error::custom(format!("json is not a JSON document: {e}")))?
                .serialize(s)
        } else {
            s.serialize_str(text)
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        if d.is_human_readable() {
            let doc = serde_json::Value::deserialize(d)?;
            serde_json::to_string(&doc).map_err(D::Error::custom)
        } else {
            String::deserialize(d)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_worker::run_detached_async;

    fn bad_input<T: std::fmt::Debug>(res: Result<T, TaskError>) -> String {
        match res {
            Err(e) => {
                assert!(format!("{e:?}").contains("BadInput"), "{e:?}");
                e.to_string()
            }
            Ok(v) => panic!("expected bad input, got {v:?}"),
        }
    }

    // None of these reach the network: validation comes first.
    #[test]
    fn http_rejects_bad_inputs() {
        let run = |f: &dyn Fn(&mut HttpInput)| {
            let mut input = HttpInput::new("http://127.0.0.1:9/");
            f(&mut input);
            bad_input(run_detached_async(&Http, input, None))
        };
        assert!(run(&|i| i.method = "GE T".into()).contains("method"));
        assert!(run(&|i| i.method = String::new()).contains("method"));
        assert!(run(&|i| i.url = "not a url".into()).contains("URL"));
        assert!(run(&|i| i.url = "ftp://host/x".into()).contains("scheme"));
        let msg = run(&|i| {
            i.headers.insert("x-token".into(), "secret\nvalue".into());
        });
        assert!(msg.contains("x-token") && !msg.contains("secret"), "{msg}");
        assert!(run(&|i| {
            i.headers.insert("bad header".into(), "v".into());
        })
        .contains("header"));
        assert!(run(&|i| i.timeout_ms = Some(0)).contains("timeout_ms"));
        assert!(run(&|i| i.connect_timeout_ms = Some(0)).contains("connect_timeout_ms"));
        assert!(
            run(&|i| i.max_body_bytes = Some(MAX_RETURNED_BODY_BYTES + 1))
                .contains("max_body_bytes")
        );
        assert!(run(&|i| i.save_to = Some(PathBuf::from("/"))).contains("save_to"));
    }

    #[test]
    fn notify_rejects_bad_inputs() {
        let msg = bad_input(run_detached_async(
            &Notify,
            NotifyInput::new("http://127.0.0.1:9/", "{nope"),
            None,
        ));
        assert!(msg.contains("JSON"), "{msg}");
        bad_input(run_detached_async(
            &Notify,
            NotifyInput::new("file:///etc/passwd", "{}"),
            None,
        ));
    }

    #[test]
    fn notify_json_is_the_document_in_json_and_text_natively() {
        let input = NotifyInput::new("http://h/", r#"{"a": [1, "x"]}"#);
        let v = serde_json::to_value(&input).expect("to JSON");
        assert_eq!(v["json"], serde_json::json!({"a": [1, "x"]}));
        let back: NotifyInput = serde_json::from_value(v).expect("from JSON");
        assert_eq!(back.json, r#"{"a":[1,"x"]}"#);
        let broken = NotifyInput::new("http://h/", "{nope");
        assert!(serde_json::to_string(&broken).is_err());
    }

    #[test]
    fn methods_are_normalised_only_when_standard() {
        assert_eq!(parse_method("get").ok(), Some(Method::GET));
        assert_eq!(parse_method("Patch").ok(), Some(Method::PATCH));
        let custom = parse_method("purge").expect("token");
        assert_eq!(custom.as_str(), "purge");
    }

    #[test]
    fn huge_timeouts_are_capped() {
        assert_eq!(timeout("t", Some(u64::MAX), 1).ok(), Some(MAX_TIMEOUT));
        assert_eq!(
            timeout("t", None, 1500).ok(),
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn messages_leave_out_the_password() {
        let req = Request::new(
            "GET",
            "http://user:hunter2@example.invalid/x",
            &BTreeMap::new(),
            None,
            None,
        )
        .expect("valid");
        let what = req.what();
        assert!(what.contains("user@example.invalid") && !what.contains("hunter2"));
    }

    #[test]
    fn quotes_are_short_and_char_safe() {
        assert_eq!(quote(b"  "), "");
        assert_eq!(quote(b"oops\n"), ": oops");
        let long = "é".repeat(NOTIFY_QUOTE_CHARS + 10);
        let q = quote(long.as_bytes());
        assert_eq!(q.chars().filter(|&c| c == 'é').count(), NOTIFY_QUOTE_CHARS);
        assert!(q.ends_with("..."));
    }
}
