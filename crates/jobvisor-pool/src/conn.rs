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
use std::time::{Duration, Instant};

use jobvisor_proto::worker::{FromWorker, ToWorker};
use jobvisor_proto::{encode_frame, FrameBuf, Hello, Role, HELLO_BYTES};
use jobvisor_worker::BeaconLook;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, oneshot};

use crate::config::PoolConfig;
use crate::launch::{self, ExitSender, ProcHandle};
use crate::output::{writer_of, CallJobs};
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
    /// Which call the worker runs (read when it dies, and by the log drain).
    pub(crate) beacon: Arc<jobvisor_worker::Beacon>,
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
    call_jobs: Arc<CallJobs>,
) -> io::Result<WorkerConn> {
    let (spawned, proc) = launch::launch(cfg.start_method, exits).await?;
    let beacon = Arc::new(spawned.beacon);
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
        LogSource {
            pid,
            beacon: beacon.clone(),
            call_jobs,
        },
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
    tokio::spawn(read_loop(reader, fb, id, events, cfg.frame_timeout));
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
        heartbeat_interval_ms: (cfg.heartbeat_interval.as_millis() as u64).max(1),
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

/// Reads frames until EOF or a corrupt link: a frame that does not decode,
/// or one that does not complete within `frame_timeout` of its first bytes
/// (garbage whose first four bytes read as a length would otherwise hold
/// the link, and the calls behind it, for ever).
async fn read_loop(
    fd: AsyncFd<OwnedFd>,
    mut fb: FrameBuf,
    worker: u64,
    events: mpsc::UnboundedSender<LinkEvent>,
    frame_timeout: Duration,
) {
    // When the first bytes of the frame being received arrived.
    let mut started = None;
    let error = 'link: loop {
        loop {
            match fb.decode_next::<FromWorker>() {
                Ok(Some(msg)) => {
                    started = None;
                    if events.send(LinkEvent::Frame { worker, msg }).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => break 'link Some(e.to_string()),
            }
        }
        let deadline = frame_deadline(&mut started, fb.buffered(), Instant::now(), frame_timeout);
        let read = read_some(&fd, fb.spare());
        let read = match deadline {
            None => read.await,
            Some(at) => match tokio::time::timeout_at(at.into(), read).await {
                Ok(r) => r,
                Err(_) => {
                    break Some(format!(
                        "a frame did not complete within {frame_timeout:?} of its first \
                         bytes (frame_timeout): the link is corrupt"
                    ))
                }
            },
        };
        match read {
            Ok(0) => break fb.check_eof().err().map(|e| e.to_string()),
            Ok(n) => fb.filled(n),
            Err(e) => break Some(e.to_string()),
        }
    };
    // Closed before it is reported: a reaped worker holds no fd of ours.
    drop(fd);
    let _ = events.send(LinkEvent::Closed { worker, error });
}

/// When the frame being received must be complete: `timeout` after its first
/// bytes arrived (`started`, set here on the first look), or never while
/// nothing is buffered.
fn frame_deadline(
    started: &mut Option<Instant>,
    buffered: usize,
    now: Instant,
    timeout: Duration,
) -> Option<Instant> {
    if buffered == 0 {
        *started = None;
        return None;
    }
    Some(*started.get_or_insert(now) + timeout)
}

/// Whose output a log drain reads: the worker, and what tells which of its
/// calls (and so which job) wrote a line (see [`crate::output`]).
struct LogSource {
    pid: u32,
    beacon: Arc<jobvisor_worker::Beacon>,
    call_jobs: Arc<CallJobs>,
}

impl LogSource {
    /// The job whose call wrote output read between looks `since` and `now`.
    fn job(&self, since: Option<BeaconLook>, now: Option<BeaconLook>) -> Option<u64> {
        writer_of(since, now).and_then(|call| self.call_jobs.job_of(call))
    }
}

/// Logs each line of a worker's output (with the job that wrote it, when
/// known) and keeps the last `keep` for crash reports.
async fn drain_log(
    fd: AsyncFd<OwnedFd>,
    src: LogSource,
    tail: Arc<Mutex<VecDeque<String>>>,
    keep: usize,
    max_line: usize,
    eof: oneshot::Sender<()>,
) {
    let pid = src.pid;
    let mut buf = vec![0u8; 16 * 1024];
    let mut lines = LineSplitter::new(max_line);
    let emit = |text: String, job: Option<u64>| {
        match job {
            Some(job) => tracing::info!(target: "jobvisor::worker_output", pid, job, "{text}"),
            None => tracing::info!(target: "jobvisor::worker_output", pid, "{text}"),
        }
        if let Ok(mut t) = tail.lock() {
            keep_last(&mut t, keep, text);
        }
    };
    // Output in the pipe now was written after `since`: a look taken before
    // the last read that emptied the pipe (the worker's start, at first).
    let mut since = src.beacon.look();
    // Where the partial line at the end of the last read began.
    let mut carried = since;
    loop {
        let before = src.beacon.look();
        let n = match read_some(&fd, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = src.beacon.look();
        // A line begun in an earlier read was partly written before `since`.
        let had_partial = lines.has_partial();
        let first = src.job(if had_partial { carried } else { since }, now);
        let rest = src.job(since, now);
        let mut emitted = false;
        lines.push(&buf[..n], |text| {
            emit(text, if emitted { rest } else { first });
            emitted = true;
        });
        if lines.has_partial() && (emitted || !had_partial) {
            carried = since;
        }
        if n < buf.len() {
            since = before;
        }
    }
    let now = src.beacon.look();
    lines.finish(|text| emit(text, src.job(carried, now)));
    drop(fd);
    let _ = eof.send(());
}

/// Splits a worker's output into lines, cutting each one at `max_line`
/// bytes (the rest of it is dropped and the line is marked), so a worker
/// that writes without newlines cannot make us hold unbounded text.
#[derive(Debug)]
struct LineSplitter {
    line: Vec<u8>,
    cut: bool,
    max_line: usize,
}

impl LineSplitter {
    fn new(max_line: usize) -> Self {
        Self {
            line: Vec::new(),
            cut: false,
            max_line,
        }
    }

    /// Feeds `bytes`, handing each finished line to `emit`.
    fn push(&mut self, bytes: &[u8], mut emit: impl FnMut(String)) {
        for &b in bytes {
            if b == b'\n' {
                emit(self.take());
            } else if self.line.len() < self.max_line {
                self.line.push(b);
            } else {
                self.cut = true;
            }
        }
    }

    /// Whether part of a line is waiting for its newline.
    fn has_partial(&self) -> bool {
        !self.line.is_empty() || self.cut
    }

    /// At EOF: hands a last line without a newline to `emit`.
    fn finish(&mut self, emit: impl FnOnce(String)) {
        if !self.line.is_empty() {
            emit(self.take());
        }
    }

    fn take(&mut self) -> String {
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.cut {
            text.push_str(" [line cut]");
        }
        self.line.clear();
        self.cut = false;
        text
    }
}

/// Appends `line` to `tail`, keeping its last `keep` lines.
fn keep_last(tail: &mut VecDeque<String>, keep: usize, line: String) {
    if keep == 0 {
        return;
    }
    if tail.len() == keep {
        tail.pop_front();
    }
    tail.push_back(line);
}

/// How long to wait for a dead worker's last output before reporting its death.
pub(crate) const LOG_EOF_WAIT: Duration = Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use jobvisor_proto::worker::TaskKind;
    use nix::fcntl::OFlag;
    use nix::unistd::pipe2;

    use super::*;

    /// A pipe whose read end is registered with tokio, and its write end.
    fn async_pipe(interest: Interest) -> (AsyncFd<OwnedFd>, std::fs::File) {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        (sys::async_fd(r, interest).expect("async fd"), w.into())
    }

    fn lines_of(max_line: usize, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max_line);
        for c in chunks {
            s.push(c, |l| out.push(l));
        }
        s.finish(|l| out.push(l));
        out
    }

    #[test]
    fn a_frame_must_complete_within_the_timeout_of_its_first_bytes() {
        let t0 = Instant::now();
        let timeout = Duration::from_secs(10);
        let mut started = None;
        assert_eq!(frame_deadline(&mut started, 0, t0, timeout), None);
        // Bytes arrive: the clock starts, and does not move while they wait.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            frame_deadline(&mut started, 4, t0, timeout),
            Some(t0 + timeout)
        );
        assert_eq!(
            frame_deadline(&mut started, 9, later, timeout),
            Some(t0 + timeout)
        );
        // A frame completed (the caller resets `started`): the next one has
        // its own clock.
        started = None;
        assert_eq!(
            frame_deadline(&mut started, 2, later, timeout),
            Some(later + timeout)
        );
        assert_eq!(frame_deadline(&mut started, 0, later, timeout), None);
        assert_eq!(started, None);
    }

    #[test]
    fn output_is_split_into_lines_across_reads() {
        assert_eq!(
            lines_of(80, &[b"one\ntw", b"o\n\nthree"]),
            ["one", "two", "", "three"]
        );
        assert!(lines_of(80, &[b""]).is_empty());
        // Invalid UTF-8 is shown, not dropped.
        assert_eq!(lines_of(80, &[b"a\xffb\n"]), ["a\u{fffd}b"]);
    }

    #[test]
    fn long_lines_are_cut_and_marked() {
        assert_eq!(
            lines_of(4, &[b"abcdefgh\nok\nxyzzy"]),
            ["abcd [line cut]", "ok", "xyzz [line cut]"]
        );
        // The mark does not carry over to the next line.
        assert_eq!(lines_of(2, &[b"abc\nab\n"]), ["ab [line cut]", "ab"]);
    }

    #[test]
    fn the_tail_keeps_the_last_lines() {
        let mut tail = VecDeque::new();
        for l in ["1", "2", "3", "4"] {
            keep_last(&mut tail, 2, l.to_string());
        }
        assert_eq!(tail, ["3", "4"]);
        keep_last(&mut tail, 0, "5".into());
        assert_eq!(tail, ["3", "4"]);
    }

    fn frame<T: serde::Serialize>(msg: &T) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, msg, 1 << 20).expect("encode");
        out
    }

    fn ready(kinds: Vec<TaskKind>) -> FromWorker {
        FromWorker::Ready {
            pid: 7,
            tasks: vec!["a".into(), "b".into()],
            kinds,
        }
    }

    /// Runs the supervisor's handshake against `worker_says`, written before
    /// the worker's end closes. Returns the result and what we sent.
    async fn handshake_with(worker_says: Vec<u8>) -> (io::Result<Vec<String>>, Vec<u8>) {
        let cfg = PoolConfig::default();
        let (to_worker_r, to_worker_w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let to_worker = sys::async_fd(to_worker_w, Interest::WRITABLE).expect("async fd");
        let (from_worker, mut worker_w) = async_pipe(Interest::READABLE);
        worker_w.write_all(&worker_says).expect("write");
        drop(worker_w);
        let result = handshake(&to_worker, &from_worker, &cfg).await;
        drop(to_worker);
        let mut sent = Vec::new();
        std::fs::File::from(to_worker_r)
            .read_to_end(&mut sent)
            .expect("read");
        (result.map(|(_, tasks, _)| tasks), sent)
    }

    #[tokio::test]
    async fn handshake_sends_hello_and_limits_then_reads_ready() {
        let mut says = Hello::ours(Role::Worker).encode().to_vec();
        says.extend(frame(&ready(vec![TaskKind::Cpu, TaskKind::Io])));
        let (result, sent) = handshake_with(says).await;
        assert_eq!(result.expect("handshake"), ["a", "b"]);
        let hello: [u8; HELLO_BYTES] = sent[..HELLO_BYTES].try_into().expect("hello");
        assert_eq!(Hello::decode(&hello).expect("hello").role, Role::Supervisor);
        let mut fb = FrameBuf::new(1 << 20);
        fb.spare()[..sent.len() - HELLO_BYTES].copy_from_slice(&sent[HELLO_BYTES..]);
        fb.filled(sent.len() - HELLO_BYTES);
        let configure = fb.decode_next::<ToWorker>().expect("frame");
        let max = PoolConfig::default().max_frame_bytes as u64;
        assert!(matches!(
            configure,
            Some(ToWorker::Configure { max_frame_bytes, .. }) if max_frame_bytes == max
        ));
    }

    #[tokio::test]
    async fn handshake_fails_on_eof_a_bad_ready_or_the_wrong_peer() {
        let hello = Hello::ours(Role::Worker).encode().to_vec();
        let (result, _) = handshake_with(hello[..10].to_vec()).await;
        assert_eq!(
            result.expect_err("eof").kind(),
            io::ErrorKind::UnexpectedEof
        );
        let (result, _) = handshake_with(hello.clone()).await;
        assert_eq!(
            result.expect_err("eof").kind(),
            io::ErrorKind::UnexpectedEof
        );
        // One kind for two tasks.
        let mut says = hello.clone();
        says.extend(frame(&ready(vec![TaskKind::Cpu])));
        let (result, _) = handshake_with(says).await;
        assert_eq!(
            result.expect_err("bad ready").kind(),
            io::ErrorKind::InvalidData
        );
        // Something other than Ready first.
        let mut says = hello;
        says.extend(frame(&FromWorker::Heartbeat { id: 1 }));
        let (result, _) = handshake_with(says).await;
        assert_eq!(
            result.expect_err("not ready").kind(),
            io::ErrorKind::InvalidData
        );
        // A supervisor's hello where a worker's belongs.
        let (result, _) = handshake_with(Hello::ours(Role::Supervisor).encode().to_vec()).await;
        assert_eq!(result.expect_err("role").kind(), io::ErrorKind::InvalidData);
    }

    async fn link_events(bytes: Vec<u8>) -> Vec<LinkEvent> {
        let (fd, mut w) = async_pipe(Interest::READABLE);
        w.write_all(&bytes).expect("write");
        drop(w);
        let (tx, mut rx) = mpsc::unbounded_channel();
        read_loop(fd, FrameBuf::new(1 << 20), 3, tx, Duration::from_secs(60)).await;
        let mut events = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            events.push(ev);
        }
        events
    }

    #[tokio::test]
    async fn the_reader_reports_frames_then_a_clean_close() {
        let mut bytes = frame(&FromWorker::Heartbeat { id: 1 });
        bytes.extend(frame(&FromWorker::Heartbeat { id: 2 }));
        let events = link_events(bytes).await;
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(
            events[0],
            LinkEvent::Frame {
                worker: 3,
                msg: FromWorker::Heartbeat { id: 1 }
            }
        ));
        assert!(matches!(
            events[1],
            LinkEvent::Frame {
                msg: FromWorker::Heartbeat { id: 2 },
                ..
            }
        ));
        assert!(matches!(
            events[2],
            LinkEvent::Closed {
                worker: 3,
                error: None
            }
        ));
    }

    #[tokio::test]
    async fn the_reader_reports_a_torn_frame_as_an_error() {
        let whole = frame(&FromWorker::Heartbeat { id: 1 });
        let events = link_events(whole[..whole.len() - 1].to_vec()).await;
        assert!(
            matches!(events[..], [LinkEvent::Closed { error: Some(_), .. }]),
            "{events:?}"
        );
        // A length past the limit is refused before anything is read.
        let events = link_events(u32::MAX.to_le_bytes().to_vec()).await;
        assert!(
            matches!(events[..], [LinkEvent::Closed { error: Some(_), .. }]),
            "{events:?}"
        );
    }

    #[tokio::test]
    async fn the_writer_sends_every_frame_in_order() {
        let (r, w) = pipe2(OFlag::O_CLOEXEC).expect("pipe");
        let fd = sys::async_fd(w, Interest::WRITABLE).expect("async fd");
        let (tx, rx) = mpsc::unbounded_channel();
        for chunk in [&b"one"[..], b"two", b"three"] {
            tx.send(chunk.to_vec()).expect("send");
        }
        drop(tx);
        write_loop(fd, rx).await;
        let mut got = Vec::new();
        std::fs::File::from(r).read_to_end(&mut got).expect("read");
        assert_eq!(got, b"onetwothree");
    }
}
