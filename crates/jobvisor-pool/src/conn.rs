//! The supervisor's end of one worker: start-up handshake, and the tasks that
//! move bytes (a reader that turns frames into dispatcher events, a writer
//! that drains a queue of encoded frames into the pipe, and a drain that logs
//! the worker's stdout/stderr and keeps its last lines for crash reports).
//!
//! Pipes are non-blocking and driven by tokio's `AsyncFd`; nothing here blocks
//! the event loop.

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobvisor_proto::worker::{FromWorker, ToWorker};
use jobvisor_proto::{encode_frame, FrameBuf, Hello, Role, HELLO_BYTES};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use crate::config::PoolConfig;
use crate::launch::{self, ExitSender, ProcHandle};
use crate::sys;

/// What the I/O tasks tell the dispatcher.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// A frame from worker `worker`.
    Frame { worker: u64, msg: FromWorker },
    /// The worker's output pipe closed or carried garbage.
    Closed { worker: u64, error: Option<String> },
}

/// A worker that completed its handshake.
#[derive(Debug)]
pub(crate) struct WorkerConn {
    pub(crate) proc: ProcHandle,
    pub(crate) tasks: Vec<String>,
    /// Their kinds, in the same order.
    pub(crate) kinds: Vec<jobvisor_proto::worker::TaskKind>,
    /// Encoded frames for the writer task.
    pub(crate) tx: mpsc::UnboundedSender<Vec<u8>>,
    /// The writer task: it ends, closing its end of the pipe, once every
    /// `tx` is dropped.
    pub(crate) writer: tokio::task::JoinHandle<()>,
    /// The last lines of the worker's output.
    pub(crate) tail: Arc<Mutex<VecDeque<String>>>,
    /// Fires when the worker's output pipe reaches EOF (all its output is in `tail`).
    pub(crate) log_eof: oneshot::Receiver<()>,
    /// Which call the worker runs (read when it dies).
    pub(crate) beacon: jobvisor_worker::Beacon,
}

pub(crate) async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(io::Error::from))
        {
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

pub(crate) async fn write_all(fd: &AsyncFd<OwnedFd>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let mut guard = fd.writable().await?;
        match guard
            .try_io(|inner| nix::unistd::write(inner.get_ref(), buf).map_err(io::Error::from))
        {
            Ok(Ok(n)) => buf = &buf[n..],
            Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Starts worker `id`: launch, handshake, `Configure`, wait for `Ready`; then
/// starts its I/O tasks, which report to `events`.
pub(crate) async fn start(
    id: u64,
    cfg: &PoolConfig,
    exits: ExitSender,
    events: mpsc::UnboundedSender<LinkEvent>,
) -> io::Result<WorkerConn> {
    let (spawned, proc) = launch::launch(cfg.start_method, exits).await?;
    let beacon = spawned.beacon;
    let pid = spawned.pid;
    let kill_on_error = |e: io::Error| {
        let _ = proc.signal(libc::SIGKILL);
        e
    };
    let writer = sys::async_fd(spawned.to_worker, Interest::WRITABLE).map_err(kill_on_error)?;
    let reader = sys::async_fd(spawned.from_worker, Interest::READABLE).map_err(kill_on_error)?;
    let log = sys::async_fd(spawned.log, Interest::READABLE).map_err(kill_on_error)?;

    // The log drain starts first, so a worker that dies during the handshake
    // still leaves its last words.
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (eof_tx, log_eof) = oneshot::channel();
    tokio::spawn(drain_log(
        log,
        pid,
        tail.clone(),
        cfg.stderr_tail_lines,
        cfg.max_log_line_bytes,
        eof_tx,
    ));

    let handshake = handshake(&writer, &reader, cfg);
    let (fb, tasks, kinds) = match tokio::time::timeout(cfg.start_timeout, handshake).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let _ = proc.signal(libc::SIGKILL);
            let tail = tail
                .lock()
                .map(|t| t.iter().cloned().collect::<Vec<_>>().join(" | "))
                .unwrap_or_default();
            return Err(io::Error::new(
                e.kind(),
                format!("worker {pid} failed its handshake: {e}; output: {tail}"),
            ));
        }
        Err(_) => {
            let _ = proc.signal(libc::SIGKILL);
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "worker {pid} did not become ready within {:?}",
                    cfg.start_timeout
                ),
            ));
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_loop(writer, rx));
    tokio::spawn(read_loop(reader, fb, id, events));
    Ok(WorkerConn {
        proc,
        tasks,
        kinds,
        tx,
        writer,
        tail,
        log_eof,
        beacon,
    })
}

async fn handshake(
    writer: &AsyncFd<OwnedFd>,
    reader: &AsyncFd<OwnedFd>,
    cfg: &PoolConfig,
) -> io::Result<(FrameBuf, Vec<String>, Vec<jobvisor_proto::worker::TaskKind>)> {
    let ours = Hello::ours(Role::Supervisor);
    let mut out = ours.encode().to_vec();
    let configure = ToWorker::Configure {
        max_frame_bytes: cfg.max_frame_bytes as u64,
        max_output_bytes: cfg.max_payload_bytes() as u64,
        memory_soft_limit_bytes: cfg.memory_soft_limit_bytes.unwrap_or(0),
        memory_limit_bytes: cfg.memory_limit_bytes.unwrap_or(0),
    };
    encode_frame(&mut out, &configure, cfg.max_frame_bytes).map_err(io::Error::other)?;
    write_all(writer, &out).await?;

    let mut hello = [0u8; HELLO_BYTES];
    let mut have = 0;
    while have < HELLO_BYTES {
        let n = read_some(reader, &mut hello[have..]).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "worker closed its pipe before its hello",
            ));
        }
        have += n;
    }
    let peer = Hello::decode(&hello).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    ours.check_peer(&peer, Role::Worker)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;

    let mut fb = FrameBuf::new(cfg.max_frame_bytes);
    loop {
        if let Some(msg) = fb
            .decode_next::<FromWorker>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            return match msg {
                FromWorker::Ready { tasks, kinds, .. } if kinds.len() == tasks.len() => {
                    Ok((fb, tasks, kinds))
                }
                other => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("expected Ready from the worker, got {other:?}"),
                )),
            };
        }
        let n = read_some(reader, fb.spare()).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "worker closed its pipe before Ready",
            ));
        }
        fb.filled(n);
    }
}

async fn write_loop(fd: AsyncFd<OwnedFd>, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        // Coalesce whatever else is queued into one write.
        let buf = if rx.is_empty() {
            first
        } else {
            batch.clear();
            batch.extend_from_slice(&first);
            while let Ok(more) = rx.try_recv() {
                batch.extend_from_slice(&more);
            }
            std::mem::take(&mut batch)
        };
        if write_all(&fd, &buf).await.is_err() {
            // The worker is gone; the reader reports it. Close the pipe now
            // and keep draining so senders never notice.
            drop(fd);
            while rx.recv().await.is_some() {}
            return;
        }
    }
}

async fn read_loop(
    fd: AsyncFd<OwnedFd>,
    mut fb: FrameBuf,
    worker: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
) {
    let error = 'link: loop {
        loop {
            match fb.decode_next::<FromWorker>() {
                Ok(Some(msg)) => {
                    if events.send(LinkEvent::Frame { worker, msg }).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'link Some(e.to_string()),
            }
        }
        match read_some(&fd, fb.spare()).await {
            Ok(0) => break fb.check_eof().err().map(|e| e.to_string()),
            Ok(n) => fb.filled(n),
            Err(e) => break Some(e.to_string()),
        }
    };
    // Closed before it is reported: a reaped worker holds no fd of ours.
    drop(fd);
    let _ = events.send(LinkEvent::Closed { worker, error });
}

async fn drain_log(
    fd: AsyncFd<OwnedFd>,
    pid: u32,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
    max_line: usize,
    eof: oneshot::Sender<()>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let emit = |line: &mut Vec<u8>, cut: bool| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if cut {
            text.push_str(" [line cut]");
        }
        tracing::info!(target: "jobvisor::worker_output", pid, "{text}");
        if keep > 0 {
            if let Ok(mut t) = tail.lock() {
                if t.len() == keep {
                    t.pop_front();
                }
                t.push_back(text);
            }
        }
        line.clear();
    };
    loop {
        let n = match read_some(&fd, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&mut line, cut);
                cut = false;
            } else if line.len() < max_line {
                line.push(b);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        emit(&mut line, cut);
    }
    drop(fd);
    let _ = eof.send(());
}

/// How long to wait for a dead worker's last output before reporting its death.
pub(crate) const LOG_EOF_WAIT: Duration = Duration::from_millis(200);
