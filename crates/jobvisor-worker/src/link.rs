//! The worker's end of its two pipes: a framed, blocking link.
//!
//! The read end is non-blocking and waited on with `poll(2)`, so the worker can
//! look for a cancel without blocking while a task runs. Writes are blocking:
//! a worker has nothing better to do than wait for the supervisor to read.
//!
//! The link knows bytes and frames; what a frame asks for is the `inbox`'s
//! business.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use jobvisor_proto::worker::{FromWorker, Reply};
use jobvisor_proto::{encode_frame, FrameBuf, FrameError, Hello, HELLO_BYTES};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::de::DeserializeOwned;

use crate::error::WorkerError;
use crate::reply::ReplyBatch;

/// The frame limit before `Configure` sets the real one.
pub(crate) const BOOTSTRAP_MAX_FRAME: usize = 64 * 1024;

/// The write end of the output pipe, shared by the CPU thread's [`Link`] and
/// the I/O lane: whole frames are written under the lock, so two threads'
/// frames never interleave on the pipe.
#[derive(Debug)]
pub(crate) struct SharedOut {
    fd: Mutex<OwnedFd>,
    /// Writes so far: the pulse sends nothing in an interval that had one.
    writes: AtomicU64,
}

impl SharedOut {
    /// Takes ownership of the output pipe's write end.
    pub(crate) fn new(fd: OwnedFd) -> Self {
        Self {
            fd: Mutex::new(fd),
            writes: AtomicU64::new(0),
        }
    }

    /// Writes `bytes` (whole frames) as one unit.
    pub(crate) fn write_all(&self, bytes: &[u8]) -> io::Result<()> {
        let fd = self
            .fd
            .lock()
            .map_err(|_| io::Error::other("output lock poisoned"))?;
        self.writes.fetch_add(1, Ordering::Relaxed);
        write_all(fd.as_fd(), bytes)
    }

    /// Writes begun so far, by any thread.
    pub(crate) fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

pub(crate) struct Link {
    rfd: OwnedFd,
    out: Arc<SharedOut>,
    rbuf: FrameBuf,
    wbuf: Vec<u8>,
    /// Replies not yet framed; framed together into one `Done` at flush.
    replies: ReplyBatch,
    max_frame_bytes: usize,
}

fn poll_timeout(t: Option<Duration>) -> PollTimeout {
    match t {
        None => PollTimeout::NONE,
        Some(d) => {
            // Round up so a 0.5 ms wait does not become a busy loop.
            let ms = d.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

impl Link {
    pub(crate) fn new(rfd: OwnedFd, wfd: OwnedFd, max_frame_bytes: usize) -> io::Result<Self> {
        let flags = fcntl(&rfd, FcntlArg::F_GETFL)?;
        fcntl(
            &rfd,
            FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
        )?;
        Ok(Self {
            rfd,
            out: Arc::new(SharedOut::new(wfd)),
            rbuf: FrameBuf::new(max_frame_bytes),
            wbuf: Vec::with_capacity(64 * 1024),
            replies: ReplyBatch::new(max_frame_bytes),
            max_frame_bytes,
        })
    }

    /// Reads everything available without blocking. `Ok(false)` means EOF.
    pub(crate) fn fill_nonblocking(&mut self) -> io::Result<bool> {
        loop {
            let spare = self.rbuf.spare();
            match nix::unistd::read(&self.rfd, spare) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    let full = n == spare.len();
                    self.rbuf.filled(n);
                    if !full {
                        return Ok(true);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits until the input pipe is readable (or hung up). `Ok(false)` on timeout.
    pub(crate) fn wait_readable(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.rfd.as_fd(), PollFlags::POLLIN)];
        loop {
            match poll(&mut fds, poll_timeout(timeout)) {
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits on another fd and the input pipe together: `(fd ready, link ready)`.
    pub(crate) fn poll_two(
        &self,
        fd: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> io::Result<(bool, bool)> {
        let mut fds = [
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(self.rfd.as_fd(), PollFlags::POLLIN),
        ];
        loop {
            match poll(&mut fds, poll_timeout(timeout)) {
                Ok(_) => {
                    let ready = |p: &PollFd<'_>| {
                        p.revents().is_some_and(|r| {
                            r.intersects(
                                PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR,
                            )
                        })
                    };
                    return Ok((ready(&fds[0]), ready(&fds[1])));
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads exactly one hello, blocking up to `timeout`.
    ///
    /// # Errors
    /// [`WorkerError::Protocol`] when none came in time,
    /// [`WorkerError::Handshake`] when it is not a jobvisor hello,
    /// [`WorkerError::Io`] when the pipe failed or closed.
    pub(crate) fn read_hello(&mut self, timeout: Duration) -> Result<Hello, WorkerError> {
        let mut bytes = [0u8; HELLO_BYTES];
        let mut have = 0;
        let until = std::time::Instant::now() + timeout;
        while have < HELLO_BYTES {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.wait_readable(Some(left))? {
                return Err(WorkerError::Protocol("no hello from the supervisor".into()));
            }
            match nix::unistd::read(&self.rfd, &mut bytes[have..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => have += n,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        Ok(Hello::decode(&bytes)?)
    }

    pub(crate) fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)
    }

    /// The shared write end, for the I/O lane.
    pub(crate) fn shared_out(&self) -> Arc<SharedOut> {
        Arc::clone(&self.out)
    }

    /// The frame limit, both ways.
    pub(crate) fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Sets the frame limit, both ways (from `Configure`).
    pub(crate) fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max;
        self.rbuf.set_max_frame_bytes(max);
        self.replies.set_max_frame_bytes(max);
    }

    /// Decodes the next complete frame in the read buffer, if there is one.
    pub(crate) fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        self.rbuf.decode_next()
    }

    pub(crate) fn send(&mut self, msg: &FromWorker) -> Result<(), FrameError> {
        self.frame_replies()?;
        encode_frame(&mut self.wbuf, msg, self.max_frame_bytes)
    }

    pub(crate) fn send_heartbeat(&mut self, id: u64) -> Result<(), WorkerError> {
        self.send(&FromWorker::Heartbeat { id })?;
        self.flush()
    }

    pub(crate) fn send_progress(
        &mut self,
        id: u64,
        done: u64,
        total: u64,
    ) -> Result<(), WorkerError> {
        self.send(&FromWorker::Progress { id, done, total })?;
        self.flush()
    }

    /// Queues a reply; replies are framed together. `reply_bytes` is the size of
    /// its payload, used to keep a `Done` frame under the maximum.
    pub(crate) fn push_reply(
        &mut self,
        reply: Reply,
        reply_bytes: usize,
    ) -> Result<(), FrameError> {
        match self.replies.push(reply, reply_bytes) {
            Some(full) => self.frame(full),
            None => Ok(()),
        }
    }

    fn frame_replies(&mut self) -> Result<(), FrameError> {
        match self.replies.take() {
            Some(replies) => self.frame(replies),
            None => Ok(()),
        }
    }

    fn frame(&mut self, replies: Vec<Reply>) -> Result<(), FrameError> {
        encode_frame(
            &mut self.wbuf,
            &FromWorker::Done(replies),
            self.max_frame_bytes,
        )
    }

    /// Frames pending replies and writes everything out.
    ///
    /// # Errors
    /// A reply that cannot be framed ([`WorkerError::Frame`]) or a failed
    /// write ([`WorkerError::Io`]).
    pub(crate) fn flush(&mut self) -> Result<(), WorkerError> {
        self.frame_replies()?;
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let res = self.out.write_all(&self.wbuf);
        self.wbuf.clear();
        if self.wbuf.capacity() > 1 << 20 {
            self.wbuf.shrink_to(64 * 1024);
        }
        Ok(res?)
    }
}

pub(crate) fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use jobvisor_proto::worker::{FailureKind, Outcome, TaskFailure};

    use super::*;

    fn pipes() -> (Link, std::fs::File, std::fs::File) {
        let (r_in, w_in) = nix::unistd::pipe().unwrap();
        let (r_out, w_out) = nix::unistd::pipe().unwrap();
        let link = Link::new(r_in, w_out, BOOTSTRAP_MAX_FRAME).unwrap();
        (link, w_in.into(), r_out.into())
    }

    fn frames(bytes: &[u8]) -> Vec<FromWorker> {
        let mut buf = FrameBuf::new(BOOTSTRAP_MAX_FRAME);
        buf.extend(bytes);
        std::iter::from_fn(|| buf.decode_next().unwrap()).collect()
    }

    #[test]
    fn poll_timeouts_round_up_to_whole_milliseconds() {
        assert_eq!(poll_timeout(None), PollTimeout::NONE);
        assert_eq!(poll_timeout(Some(Duration::ZERO)), PollTimeout::ZERO);
        // Half a millisecond is one, not a busy loop of zeros.
        let one = PollTimeout::try_from(1).unwrap();
        assert_eq!(poll_timeout(Some(Duration::from_micros(500))), one);
        assert_eq!(
            poll_timeout(Some(Duration::from_secs(u64::MAX))),
            PollTimeout::MAX
        );
    }

    #[test]
    fn reads_what_is_there_and_sees_the_close() {
        let (mut link, mut to_link, _from_link) = pipes();
        // Nothing yet: not an EOF, and the non-blocking read does not wait.
        assert!(link.fill_nonblocking().unwrap());
        assert!(!link.wait_readable(Some(Duration::ZERO)).unwrap());
        to_link.write_all(b"x").unwrap();
        assert!(link.wait_readable(None).unwrap());
        drop(to_link);
        // The byte first, then the close.
        assert!(link.fill_nonblocking().unwrap());
        assert!(!link.fill_nonblocking().unwrap());
    }

    #[test]
    fn no_hello_in_time_breaks_the_protocol() {
        let (mut link, _to_link, _from_link) = pipes();
        let e = link.read_hello(Duration::ZERO).unwrap_err();
        assert!(matches!(e, WorkerError::Protocol(_)), "{e:?}");
    }

    #[test]
    fn replies_are_framed_before_a_later_message() {
        let (mut link, _to_link, mut from_link) = pipes();
        let reply = Reply {
            id: 1,
            outcome: Outcome::Err(TaskFailure {
                kind: FailureKind::Error,
                message: "no".into(),
            }),
            cpu_us: 0,
            wall_us: 0,
            max_poll_us: 0,
        };
        link.push_reply(reply.clone(), 2).unwrap();
        link.send(&FromWorker::Heartbeat { id: 2 }).unwrap();
        link.flush().unwrap();
        // Nothing buffered: a flush writes nothing more.
        link.flush().unwrap();
        drop(link);
        let mut bytes = Vec::new();
        from_link.read_to_end(&mut bytes).unwrap();
        assert_eq!(
            frames(&bytes),
            [
                FromWorker::Done(vec![reply]),
                FromWorker::Heartbeat { id: 2 }
            ]
        );
    }
}
