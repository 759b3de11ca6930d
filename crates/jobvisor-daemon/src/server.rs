//! The control server: a Unix socket (mode 0600) in a directory created 0700
//! if missing (an existing one keeps its mode), peers checked with `SO_PEERCRED` (the daemon's own uid and root)
//! before they may take one of the `limits.max_connections` slots, a handshake
//! with a timeout, frames bounded by `limits.max_frame_bytes`, request buffers
//! that together hold at most `limits.max_buffered_bytes`, and timeouts on
//! every wait for a client: `limits.idle_timeout_ms` for the next request,
//! `limits.request_timeout_ms` for the rest of one that has begun and for
//! the client to read an answer. One task per connection; requests
//! that change jobs go to the scheduler, reads go to the store directly.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobvisor_pool::Pool;
use jobvisor_proto::control::{ControlError, ErrorKind, Request, Response, WorkerRow, WorkerState};
use jobvisor_proto::{codec, encode_frame, FrameBuf, FrameError, Hello, Role, HELLO_BYTES};
use jobvisor_store::StoreHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::audit::Caller;
use crate::config::Config;
use crate::errors::{chain, Chain};
use crate::scheduler::SchedCmd;

/// Most jobs one `List` answers (a larger limit is cut to it; the CLI
/// tells that more exist and pages on with `--before`).
pub(crate) const MAX_LIST_JOBS: u32 = 10_000;

/// What a connection can reach.
#[derive(Clone)]
pub(crate) struct ServerCtx {
    pub(crate) cfg: Arc<Config>,
    pub(crate) sched: mpsc::Sender<SchedCmd>,
    pub(crate) store: StoreHandle,
    pub(crate) pool: Pool,
    /// Set to request a shutdown: `Some(graceful)`.
    pub(crate) stop: watch::Sender<Option<bool>>,
    /// Job and worker events, for `Events` subscribers.
    pub(crate) events: Arc<crate::events::EventFeed>,
    /// Bytes all connections' request buffers hold, against `limits.max_buffered_bytes`.
    pub(crate) buffered: BufferBudget,
    /// The audit log of mutations.
    pub(crate) audit: crate::audit::Audit,
}

/// The bytes shared by every connection's request buffer.
#[derive(Clone, Default)]
pub(crate) struct BufferBudget(Arc<AtomicUsize>);

/// One connection's share of a [`BufferBudget`], given back when dropped.
struct BufferCharge {
    budget: Arc<AtomicUsize>,
    held: usize,
}

impl BufferCharge {
    fn new(budget: &BufferBudget) -> Self {
        Self {
            budget: Arc::clone(&budget.0),
            held: 0,
        }
    }

    /// Holds `bytes` in place of what was held. `false`, and the old share
    /// kept, when the total would pass `max`.
    fn set(&mut self, bytes: usize, max: usize) -> bool {
        if bytes <= self.held {
            self.budget.fetch_sub(self.held - bytes, Ordering::Relaxed);
            self.held = bytes;
            return true;
        }
        let more = bytes - self.held;
        let before = self.budget.fetch_add(more, Ordering::Relaxed);
        if before.saturating_add(more) > max {
            self.budget.fetch_sub(more, Ordering::Relaxed);
            return false;
        }
        self.held = bytes;
        true
    }
}

impl Drop for BufferCharge {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.held, Ordering::Relaxed);
    }
}

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error(ControlError {
        kind,
        message: message.into(),
    })
}

/// Binds the socket: refuses if a live daemon answers there or if something
/// other than a socket is at `path`; removes a stale socket.
///
/// # Errors
/// I/O errors, or "already running".
pub(crate) async fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        create_private_dir(dir, false)?;
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            // Only a socket nobody answers on is ours to remove: anything else
            // at the path (a file, a symlink) belongs to someone else.
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a socket ({}): refusing to replace it",
                        path.display(),
                        kind_of(&meta.file_type())
                    ),
                ));
            }
            match UnixStream::connect(path).await {
                Ok(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        format!("a jobvisor daemon already answers on {}", path.display()),
                    ))
                }
                Err(_) => std::fs::remove_file(path)?,
            }
        }
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// What a file type is, for an error message.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "a symlink"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a fifo"
    } else {
        "a device"
    }
}

/// Why a directory the daemon did not create cannot be trusted, if it cannot:
/// the rule OpenSSH applies to `authorized_keys`' parents. `owner` and `mode`
/// are the directory's; `euid` the daemon's. A directory that is `private`
/// (the state dir itself) must be the daemon's and writable by nobody else;
/// any other (a parent, the socket's directory) may also be root's, and may
/// be group/world-writable only with the sticky bit (as `/tmp` is).
pub(crate) fn distrust(owner: u32, mode: u32, euid: u32, private: bool) -> Option<String> {
    let by_others = mode & 0o022 != 0;
    let sticky = mode & 0o1000 != 0;
    if private {
        if owner != euid {
            return Some(format!("it is owned by uid {owner}, not {euid}"));
        }
        if by_others {
            return Some(format!(
                "it is writable by others (mode {:o})",
                mode & 0o7777
            ));
        }
    } else {
        if owner != euid && owner != 0 {
            return Some(format!("it is owned by uid {owner}, not {euid} or root"));
        }
        if by_others && !sticky {
            return Some(format!(
                "it is writable by others without the sticky bit (mode {:o})",
                mode & 0o7777
            ));
        }
    }
    None
}

/// Makes sure `dir` exists and is safe to keep files in: creates each missing
/// component with mode 0700 (so what we create is private from its first
/// instant), and checks every component that already existed with
/// [`distrust`] (`private` applying to `dir` itself), refusing with the path
/// and why. It never changes the mode of an existing directory: it may be
/// `/tmp` or `/run`, and is not ours to tighten.
pub(crate) fn create_private_dir(dir: &Path, private: bool) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let euid = nix::unistd::geteuid().as_raw();
    let dir = std::path::absolute(dir)?;
    let mut chain: Vec<&Path> = dir.ancestors().collect();
    chain.reverse();
    for p in chain {
        let created = match std::fs::DirBuilder::new().mode(0o700).create(p) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            // `/` and the like: not creatable, and not missing either.
            Err(_) if p.exists() => false,
            Err(e) => return Err(e),
        };
        let meta = std::fs::metadata(p)?;
        if !meta.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                format!("{} is not a directory", p.display()),
            ));
        }
        if created {
            continue;
        }
        if let Some(why) = distrust(meta.uid(), meta.mode(), euid, private && p == dir) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!("refusing to use {}: {why}", p.display()),
            ));
        }
    }
    Ok(())
}

pub(crate) async fn serve(
    listener: UnixListener,
    ctx: ServerCtx,
    mut stopping: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(ctx.cfg.limits.max_connections));
    // Refusals are answered by a few short-lived tasks, never unboundedly many.
    let refusals = Arc::new(Semaphore::new(16));
    let handshake = Duration::from_millis(ctx.cfg.limits.handshake_timeout_ms);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stopping.changed() => return,
        };
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "accept failed");
                // EMFILE and friends: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before a slot is taken: a peer the daemon does not serve must not
        // be able to crowd out the ones it does.
        if let Err(e) = peer_allowed(&stream) {
            let why = chain(&e);
            tracing::warn!(%why, "refused a control connection");
            let answer = error(ErrorKind::PermissionDenied, why);
            spawn_refusal(&refusals, stream, answer, handshake);
            continue;
        }
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    connection(stream, &ctx).await;
                    drop(permit);
                });
            }
            Err(_) => {
                let max = ctx.cfg.limits.max_connections;
                let answer = error(
                    ErrorKind::LimitReached,
                    format!(
                        "too many connections (limits.max_connections = {max}); try again later"
                    ),
                );
                spawn_refusal(&refusals, stream, answer, handshake);
            }
        }
    }
}

/// Answers a connection the daemon will not serve (our hello, then `answer`)
/// from one of the few `refusals` permits, within `timeout`; with every
/// permit taken it is closed unanswered.
fn spawn_refusal(
    refusals: &Arc<Semaphore>,
    stream: UnixStream,
    answer: Response,
    timeout: Duration,
) {
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(timeout, refuse(stream, &answer, timeout)).await;
        drop(permit);
    });
}

async fn refuse(mut stream: UnixStream, answer: &Response, timeout: Duration) {
    let mut out = Hello::ours(Role::Supervisor).encode().to_vec();
    if encode_frame(&mut out, answer, 64 * 1024).is_ok() {
        let _ = stream.write_all(&out).await;
    }
    linger(stream, timeout.as_millis() as u64).await;
}

/// Before closing a refused connection, read (and drop) what the client sends
/// for a moment: closing with unread data makes the kernel reset the
/// connection, and the client would see "broken pipe" instead of our answer.
async fn linger(mut stream: UnixStream, timeout_ms: u64) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(timeout_ms.min(1000)), async {
        while let Ok(n) = stream.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// A peer that may not use the control socket.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    #[error("cannot read peer credentials")]
    Credentials(#[source] std::io::Error),
    #[error("permission denied: uid {uid} may not use this daemon (it serves uid {me} and root)")]
    Denied { uid: u32, me: u32 },
}

/// The peers the daemon serves: its own uid, and root.
fn uid_allowed(uid: u32, me: u32) -> Result<(), PeerError> {
    if uid == me || uid == 0 {
        Ok(())
    } else {
        Err(PeerError::Denied { uid, me })
    }
}

fn peer_allowed(stream: &UnixStream) -> Result<(), PeerError> {
    let cred = stream.peer_cred().map_err(PeerError::Credentials)?;
    uid_allowed(cred.uid(), nix::unistd::geteuid().as_raw())
}

/// What a connection waits for from its client, which decides the timeout
/// of the wait: the start of a request (`limits.idle_timeout_ms` from the
/// hello or the last answer), or the rest of one (`limits.request_timeout_ms`
/// from its first byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Request,
    RestOfRequest,
}

impl Awaiting {
    /// Bytes of an unfinished request are buffered: its rest is due.
    fn given(buffered: usize) -> Self {
        if buffered == 0 {
            Self::Request
        } else {
            Self::RestOfRequest
        }
    }

    /// When the wait ends, for a wait that began at `since` (the hello or
    /// last answer, or the request's first byte).
    fn deadline(self, since: Instant, limits: &crate::config::Limits) -> Instant {
        let ms = match self {
            Self::Request => limits.idle_timeout_ms,
            Self::RestOfRequest => limits.request_timeout_ms,
        };
        since + Duration::from_millis(ms)
    }

    /// What the client is told when the wait ends.
    fn expired(self, limits: &crate::config::Limits) -> String {
        match self {
            Self::Request => format!(
                "no request for {} ms (limits.idle_timeout_ms); connection closed",
                limits.idle_timeout_ms
            ),
            Self::RestOfRequest => format!(
                "request not received whole within {} ms of its first byte \
                 (limits.request_timeout_ms); connection closed",
                limits.request_timeout_ms
            ),
        }
    }
}

/// Sends a last answer and closes: reads (and drops) what the client still
/// sends for a moment, so that the close does not reset the connection and
/// lose the answer.
async fn close_with(mut stream: UnixStream, msg: String, ctx: &ServerCtx) {
    let limits = &ctx.cfg.limits;
    let mut out = Vec::new();
    if encode_frame(
        &mut out,
        &error(ErrorKind::LimitReached, msg),
        limits.max_frame_bytes,
    )
    .is_ok()
    {
        let timeout = Duration::from_millis(limits.request_timeout_ms);
        let _ = tokio::time::timeout(timeout, stream.write_all(&out)).await;
    }
    linger(stream, limits.handshake_timeout_ms).await;
}

/// Writes `bytes` unless the client takes longer than `limits.request_timeout_ms`
/// to read them; `false` when the connection is to be closed.
async fn send(stream: &mut UnixStream, bytes: &[u8], limits: &crate::config::Limits) -> bool {
    let timeout = Duration::from_millis(limits.request_timeout_ms);
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Ok(Ok(())) => true,
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!("a client did not read its answer in time; closed");
            false
        }
    }
}

async fn connection(mut stream: UnixStream, ctx: &ServerCtx) {
    let caller = match stream.peer_cred() {
        Ok(c) => Caller::Socket {
            uid: c.uid(),
            pid: c.pid(),
        },
        Err(_) => return,
    };
    let ours = Hello::ours(Role::Supervisor);
    let limits = &ctx.cfg.limits;
    let max_frame = limits.max_frame_bytes;
    if stream.write_all(&ours.encode()).await.is_err() {
        return;
    }
    let timeout = Duration::from_millis(limits.handshake_timeout_ms);
    let mut hello = [0u8; HELLO_BYTES];
    match tokio::time::timeout(timeout, stream.read_exact(&mut hello)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!("client sent no hello in time; closed");
            return;
        }
    }
    let checked = Hello::decode(&hello).and_then(|peer| ours.check_peer(&peer, Role::Client));
    if let Err(e) = checked {
        tracing::warn!(error = %Chain(&e), "control handshake failed");
        let mut out = Vec::new();
        if encode_frame(
            &mut out,
            &error(ErrorKind::BadRequest, chain(&e)),
            max_frame,
        )
        .is_ok()
        {
            let _ = stream.write_all(&out).await;
        }
        return;
    }
    let mut rbuf = FrameBuf::new(max_frame);
    let mut charge = BufferCharge::new(&ctx.buffered);
    let max_buffered = limits.max_buffered_bytes;
    let mut wbuf = Vec::new();
    // When the current wait for the client began (see `Awaiting`).
    let mut since = Instant::now();
    loop {
        let req = match rbuf.next_payload() {
            Ok(Some(payload)) => decode_request(payload, limits).map_err(|e| (Response::Error(e), false)),
            Ok(None) => {
                // The buffer grows in `spare`; charge it before reading into it.
                let _ = rbuf.spare();
                if !charge.set(rbuf.capacity(), max_buffered) {
                    tracing::warn!(
                        max_buffered,
                        "control request buffers full; connection closed"
                    );
                    drop(charge);
                    let msg = format!("the daemon's request buffers are full (limits.max_buffered_bytes = {max_buffered}); connection closed");
                    close_with(stream, msg, ctx).await;
                    return;
                }
                let awaiting = Awaiting::given(rbuf.buffered());
                let deadline = awaiting.deadline(since, limits);
                match tokio::time::timeout_at(deadline.into(), stream.read(rbuf.spare())).await {
                    Ok(Ok(0) | Err(_)) => return,
                    Ok(Ok(n)) => {
                        rbuf.filled(n);
                        if awaiting == Awaiting::Request {
                            since = Instant::now();
                        }
                    }
                    Err(_) => {
                        tracing::debug!(?awaiting, "control client too slow; closed");
                        drop(charge);
                        close_with(stream, awaiting.expired(limits), ctx).await;
                        return;
                    }
                }
                continue;
            }
            Err(FrameError::TooLarge { len, max }) => Err((
                error(
                    ErrorKind::LimitReached,
                    format!("request frame of {len} bytes exceeds limits.max_frame_bytes ({max}); connection closed"),
                ),
                true,
            )),
            Err(e) => Err((Response::Error(malformed(&e)), false)),
        };
        let (resp, close) = match req {
            Ok(Request::Events { since_ms, follow }) => {
                stream_events(&mut stream, ctx, since_ms, follow).await;
                return;
            }
            Ok(req) => (handle(req, ctx, &caller).await, false),
            Err(refused) => refused,
        };
        wbuf.clear();
        if let Err(e) = encode_frame(&mut wbuf, &resp, max_frame) {
            wbuf.clear();
            let msg = error(
                ErrorKind::LimitReached,
                format!(
                    "response too large: {} (limits.max_frame_bytes); ask for less (e.g. list --limit)",
                    chain(&e)
                ),
            );
            if encode_frame(&mut wbuf, &msg, max_frame).is_err() {
                return;
            }
        }
        if !send(&mut stream, &wbuf, limits).await || close {
            return;
        }
        // The next request is awaited from this answer on (or, if it has
        // begun already, from now: its first bytes came in with this one's).
        since = Instant::now();
    }
}

/// Decodes one request frame's payload. A submit of more jobs than
/// `limits.max_batch_jobs` is refused from the count it announces, before a
/// single spec is decoded: decoding first let a 60 MB frame of 4 million
/// empty specs cost a gigabyte before the limit was checked.
///
/// # Errors
/// The answer that refuses the request.
fn decode_request(payload: &[u8], limits: &crate::config::Limits) -> Result<Request, ControlError> {
    let max = limits.max_batch_jobs;
    if let Some(jobs) = Request::announced_jobs(payload).filter(|&n| n > max as u64) {
        return Err(ControlError {
            kind: ErrorKind::LimitReached,
            message: format!("{jobs} jobs in one submit exceed limits.max_batch_jobs ({max})"),
        });
    }
    codec::decode(payload).map_err(|e| malformed(&e))
}

fn malformed(e: &(dyn std::error::Error + 'static)) -> ControlError {
    ControlError {
        kind: ErrorKind::BadRequest,
        message: format!("malformed request: {}", chain(e)),
    }
}

/// Sends a subscriber the kept events (at or after `since_ms`), then, with
/// `follow`, every new one until it goes away (or the daemon stops); without
/// it, `Ok` marks the end. A slow subscriber never slows the daemon: it
/// misses events and is told how many. A subscriber that does not read an
/// event within `limits.request_timeout_ms` is closed (it would hold its slot
/// for ever).
async fn stream_events(
    stream: &mut UnixStream,
    ctx: &ServerCtx,
    since_ms: Option<u64>,
    follow: bool,
) {
    let max_frame = ctx.cfg.limits.max_frame_bytes;
    use tokio::sync::broadcast::error::RecvError;
    let (past, mut rx) = ctx.events.subscribe(since_ms);
    let mut buf = Vec::new();
    for ev in past {
        buf.clear();
        if encode_frame(&mut buf, &Response::Event(ev), max_frame).is_err() {
            continue;
        }
        if !send(stream, &buf, &ctx.cfg.limits).await {
            return;
        }
    }
    if !follow {
        buf.clear();
        if encode_frame(&mut buf, &Response::Ok, max_frame).is_ok() {
            let _ = send(stream, &buf, &ctx.cfg.limits).await;
        }
        return;
    }
    let mut probe = [0u8; 64];
    loop {
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            // The client closed (or wrote something, which it should not).
            _ = stream.read(&mut probe) => return,
        };
        let ev = match ev {
            Ok((_, ev)) => ev,
            Err(RecvError::Lagged(missed)) => jobvisor_proto::control::Event {
                at_ms: crate::scheduler::now_ms(),
                kind: jobvisor_proto::control::EventKind::Lagged { missed },
            },
            Err(RecvError::Closed) => return,
        };
        buf.clear();
        if encode_frame(&mut buf, &Response::Event(ev), max_frame).is_err() {
            continue;
        }
        if !send(stream, &buf, &ctx.cfg.limits).await {
            return;
        }
    }
}

/// Hands a client's request to the scheduler and awaits its answer; the
/// answer to give instead when the scheduler is busy or gone.
async fn ask<T>(
    ctx: &ServerCtx,
    make: impl FnOnce(oneshot::Sender<T>) -> SchedCmd,
) -> Result<T, Response> {
    ask_on(&ctx.sched, make).await
}

/// [`ask`] on the scheduler's channel `sched`. A request that finds
/// `limits.max_pending_requests` (the channel's capacity) waiting is
/// refused at once: nothing of it is done, and nothing waits in memory for
/// room.
async fn ask_on<T>(
    sched: &mpsc::Sender<SchedCmd>,
    make: impl FnOnce(oneshot::Sender<T>) -> SchedCmd,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    match sched.try_send(make(tx)) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            let max = sched.max_capacity();
            return Err(error(
                ErrorKind::LimitReached,
                format!(
                    "the daemon is busy: {max} requests wait for its scheduler \
                     (limits.max_pending_requests); try again"
                ),
            ));
        }
        Err(mpsc::error::TrySendError::Closed(_)) => return Err(gone()),
    }
    rx.await.map_err(|_| gone())
}

fn gone() -> Response {
    error(ErrorKind::ShuttingDown, "the daemon is shutting down")
}

/// The first id of `req` that no job can have: the store's ids are SQLite
/// integers, so one above `i64::MAX` names no job (and is no store error).
fn impossible_id(req: &Request) -> Option<u64> {
    let too_big = |id: u64| i64::try_from(id).is_err();
    match req {
        Request::Status { id } | Request::Cancel { id } | Request::Retry { id } => {
            Some(*id).filter(|&id| too_big(id))
        }
        Request::Wait { ids, .. } => ids.iter().copied().find(|&id| too_big(id)),
        _ => None,
    }
}

/// Answers `req` for `caller`; a mutation (submit, cancel, retry,
/// shutdown) is written to the audit log once its answer is known.
pub(crate) async fn handle(req: Request, ctx: &ServerCtx, caller: &Caller) -> Response {
    let mutation = match &req {
        Request::Submit(specs) => Some((
            "submit",
            serde_json::json!({
                "count": specs.len(),
                "tasks": specs.iter().map(|s| s.task.as_str()).collect::<Vec<_>>(),
            }),
        )),
        Request::Cancel { id } => Some(("cancel", serde_json::json!(id))),
        Request::Retry { id } => Some(("retry", serde_json::json!(id))),
        Request::Shutdown { graceful } => {
            Some(("shutdown", serde_json::json!({ "graceful": graceful })))
        }
        _ => None,
    };
    let resp = answer(req, ctx).await;
    if let Some((action, mut target)) = mutation {
        if let Response::Submitted(v) = &resp {
            target["ids"] = v.iter().map(|s| s.id).collect::<Vec<_>>().into();
        }
        let outcome = match &resp {
            Response::Error(e) => Err(e.message.as_str()),
            _ => Ok(()),
        };
        ctx.audit.record(caller, action, target, outcome);
    }
    resp
}

async fn answer(req: Request, ctx: &ServerCtx) -> Response {
    if let Some(id) = impossible_id(&req) {
        return error(ErrorKind::NotFound, format!("no job {id}"));
    }
    match req {
        Request::Ping => Response::Pong {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        },
        Request::Submit(specs) => match ask(ctx, |reply| SchedCmd::Submit { specs, reply }).await {
            Ok(Ok(v)) => Response::Submitted(v),
            Ok(Err(e)) => Response::Error(e),
            Err(refused) => refused,
        },
        Request::Cancel { id } => match ask(ctx, |reply| SchedCmd::Cancel { id, reply }).await {
            Ok(Ok(())) => Response::Ok,
            Ok(Err(e)) => Response::Error(e),
            Err(refused) => refused,
        },
        Request::Retry { id } => match ask(ctx, |reply| SchedCmd::Retry { id, reply }).await {
            Ok(Ok(())) => Response::Ok,
            Ok(Err(e)) => Response::Error(e),
            Err(refused) => refused,
        },
        Request::Wait { ids, timeout_ms } => {
            match ask(ctx, |reply| SchedCmd::Wait {
                ids,
                timeout_ms,
                reply,
            })
            .await
            {
                Ok(Ok(v)) => Response::Jobs(v),
                Ok(Err(e)) => Response::Error(e),
                Err(refused) => refused,
            }
        }
        Request::Status { id } => match ctx.store.get(id).await {
            Ok(Some(rec)) => Response::Job(Box::new(rec)),
            Ok(None) => error(ErrorKind::NotFound, format!("no job {id}")),
            Err(e) => error(ErrorKind::Storage, chain(&e)),
        },
        Request::List {
            state,
            queue,
            before,
            limit,
        } => match ctx
            .store
            .list_page(state, queue, before, limit.clamp(1, MAX_LIST_JOBS))
            .await
        {
            Ok(v) => Response::Jobs(v),
            Err(e) => error(ErrorKind::Storage, chain(&e)),
        },
        Request::Workers => {
            let workers = ctx.pool.workers().await;
            let calls: Vec<u64> = workers.iter().filter_map(|w| w.running).collect();
            let n = calls.len();
            // The workers are worth showing even without their jobs.
            let jobs = ask(ctx, |reply| SchedCmd::JobsOfCalls { calls, reply })
                .await
                .unwrap_or_else(|_| vec![None; n]);
            let mut jobs = jobs.into_iter();
            Response::Workers(
                workers
                    .into_iter()
                    .map(|w| WorkerRow {
                        id: w.id,
                        pid: w.pid,
                        state: worker_state(w.state),
                        in_flight: w.in_flight as u64,
                        calls_done: w.calls_done,
                        running_job: w.running.and_then(|_| jobs.next().flatten()),
                    })
                    .collect(),
            )
        }
        Request::Stats => match ask(ctx, |reply| SchedCmd::Stats { reply }).await {
            Ok(s) => Response::Stats(s),
            Err(refused) => refused,
        },
        // Handled by the connection loop (a stream, not one answer).
        Request::Events { .. } => error(ErrorKind::BadRequest, "events is a subscription"),
        Request::Shutdown { graceful } => {
            let _ = ctx.stop.send(Some(graceful));
            Response::Ok
        }
    }
}

/// The pool's view of a worker, as the control protocol carries it.
fn worker_state(state: jobvisor_pool::WorkerState) -> WorkerState {
    match state {
        jobvisor_pool::WorkerState::Ready => WorkerState::Ready,
        jobvisor_pool::WorkerState::Retiring => WorkerState::Retiring,
        jobvisor_pool::WorkerState::Stopping => WorkerState::Stopping,
        jobvisor_pool::WorkerState::Dead => WorkerState::Dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With `limits.max_pending_requests` requests waiting, one more is
    /// refused at once, naming the key (it used to wait for room, held in
    /// memory by its connection); once there is room, it is taken.
    #[tokio::test(start_paused = true)]
    async fn a_request_past_the_pending_limit_is_refused_as_busy() {
        let (sched, mut rx) = mpsc::channel(1);
        let (filler, _) = oneshot::channel();
        sched.try_send(SchedCmd::Stats { reply: filler }).unwrap();
        // A wait that never ends would be the old behaviour: the paused
        // clock makes the hour pass at once.
        let asked = tokio::time::timeout(
            Duration::from_secs(3600),
            ask_on(&sched, |reply| SchedCmd::JobsOfCalls {
                calls: vec![7],
                reply,
            }),
        )
        .await
        .expect("refused at once, not held until there is room");
        let Err(Response::Error(e)) = asked else {
            panic!("not refused: {asked:?}")
        };
        assert_eq!(e.kind, ErrorKind::LimitReached);
        assert!(e.message.contains("busy"), "{}", e.message);
        assert!(
            e.message
                .contains("1 requests wait for its scheduler (limits.max_pending_requests)"),
            "{}",
            e.message
        );
        // Room again: the request reaches the scheduler, which answers it.
        drop(rx.recv().await);
        let answer = tokio::spawn(async move {
            if let Some(SchedCmd::JobsOfCalls { calls, reply }) = rx.recv().await {
                let _ = reply.send(calls.iter().map(|&c| Some(c * 2)).collect());
            }
        });
        let asked = ask_on(&sched, |reply| SchedCmd::JobsOfCalls {
            calls: vec![7],
            reply,
        })
        .await;
        assert_eq!(asked.ok(), Some(vec![Some(14)]));
        answer.await.unwrap();
    }
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_the_daemons_own_uid_and_root_are_served() {
        assert!(uid_allowed(1000, 1000).is_ok());
        assert!(uid_allowed(0, 1000).is_ok());
        let e = uid_allowed(1001, 1000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "permission denied: uid 1001 may not use this daemon (it serves uid 1000 and root)"
        );
    }

    #[test]
    fn the_state_dir_is_created_private_and_an_existing_one_keeps_its_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let fresh = tmp.path().join("a/b");
        create_private_dir(&fresh, true).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700, "a created parent too");
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open, true).unwrap();
        // Issue 10 A.2: an existing directory is checked, never chmodded.
        assert_eq!(mode(&open), 0o755);
    }

    #[test]
    fn a_directory_is_trusted_only_when_no_one_else_can_write_in_it() {
        // (owner, mode, private) -> trusted?, for a daemon of uid 1000.
        let table = [
            (1000, 0o700, true, true),
            (1000, 0o755, true, true),
            (1000, 0o775, true, false),
            (1000, 0o1777, true, false),
            (0, 0o700, true, false),
            (65534, 0o700, true, false),
            (0, 0o755, false, true),
            (0, 0o1777, false, true),
            (0, 0o777, false, false),
            (1000, 0o770, false, false),
            (65534, 0o755, false, false),
            (65534, 0o1777, false, false),
        ];
        for (owner, mode, private, trusted) in table {
            let why = distrust(owner, mode, 1000, private);
            assert_eq!(
                why.is_none(),
                trusted,
                "{owner} {mode:o} {private}: {why:?}"
            );
        }
    }

    #[test]
    fn buffer_charges_share_one_budget_and_give_it_back() {
        let budget = BufferBudget::default();
        let mut a = BufferCharge::new(&budget);
        let mut b = BufferCharge::new(&budget);
        assert!(a.set(60, 100));
        assert!(!b.set(50, 100), "60 + 50 passes 100");
        assert_eq!(budget.0.load(Ordering::Relaxed), 60);
        assert!(b.set(40, 100));
        assert!(a.set(10, 100), "shrinking always fits");
        drop(b);
        assert_eq!(budget.0.load(Ordering::Relaxed), 10);
        drop(a);
        assert_eq!(budget.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_wait_for_a_request_is_idle_until_its_first_byte() {
        let limits = crate::config::Limits {
            idle_timeout_ms: 100,
            request_timeout_ms: 7,
            ..Default::default()
        };
        let t = Instant::now();
        assert_eq!(Awaiting::given(0), Awaiting::Request);
        assert_eq!(Awaiting::given(1), Awaiting::RestOfRequest);
        assert_eq!(
            Awaiting::Request.deadline(t, &limits),
            t + Duration::from_millis(100)
        );
        assert_eq!(
            Awaiting::RestOfRequest.deadline(t, &limits),
            t + Duration::from_millis(7)
        );
        assert!(Awaiting::Request
            .expired(&limits)
            .contains("no request for 100 ms (limits.idle_timeout_ms)"));
        assert!(Awaiting::RestOfRequest
            .expired(&limits)
            .contains("within 7 ms of its first byte (limits.request_timeout_ms)"));
    }

    #[test]
    fn a_submit_over_max_batch_jobs_is_refused_from_its_count() {
        use jobvisor_proto::control::{JobSpec, Payload};
        let limits = crate::config::Limits {
            max_batch_jobs: 2,
            ..Default::default()
        };
        let spec = JobSpec::new("noop", Payload::Json("1".into()));
        let two = codec::encode(&Request::Submit(vec![spec.clone(); 2])).unwrap();
        assert!(matches!(decode_request(&two, &limits), Ok(Request::Submit(v)) if v.len() == 2));
        let three = codec::encode(&Request::Submit(vec![spec; 3])).unwrap();
        // Its head alone is refused: the specs are never decoded.
        let e = decode_request(&three[..2], &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LimitReached);
        assert_eq!(
            e.message,
            "3 jobs in one submit exceed limits.max_batch_jobs (2)"
        );
        let e = decode_request(&[0xff, 0xff], &limits).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.starts_with("malformed request: "), "{e}");
    }

    #[test]
    fn ids_past_i64_max_name_no_job() {
        let big = i64::MAX as u64 + 1;
        assert_eq!(
            impossible_id(&Request::Status { id: u64::MAX }),
            Some(u64::MAX)
        );
        assert_eq!(impossible_id(&Request::Cancel { id: big }), Some(big));
        assert_eq!(
            impossible_id(&Request::Retry {
                id: i64::MAX as u64
            }),
            None
        );
        let wait = Request::Wait {
            ids: vec![1, big],
            timeout_ms: None,
        };
        assert_eq!(impossible_id(&wait), Some(big));
        assert_eq!(impossible_id(&Request::Ping), None);
    }

    #[test]
    fn worker_states_travel_as_their_protocol_enum() {
        use jobvisor_pool::WorkerState as Pool;
        assert_eq!(worker_state(Pool::Ready), WorkerState::Ready);
        assert_eq!(worker_state(Pool::Retiring), WorkerState::Retiring);
        assert_eq!(worker_state(Pool::Stopping), WorkerState::Stopping);
        assert_eq!(worker_state(Pool::Dead), WorkerState::Dead);
    }
}
