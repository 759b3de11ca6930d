//! Rust client of the jobvisor control socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), jobvisor_client::ClientError> {
//! use jobvisor_client::{Client, JobSpec, Payload};
//! let mut client = Client::connect("/run/user/1000/jobvisor/control.sock").await?;
//! let ids = client.submit(vec![JobSpec::new("sleep", Payload::Json(r#"{"ms":10}"#.into()))]).await?;
//! let done = client.wait(vec![ids[0].id], None).await?;
//! assert!(done[0].state.is_terminal());
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - `client`: [`Client`]: connect + handshake, one request at a time, typed helpers.

use std::path::Path;
use std::time::Duration;

use jobvisor_proto::control::{Request, Response};
use jobvisor_proto::{
    encode_frame, FrameBuf, FrameError, HandshakeError, Hello, Role, HELLO_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub use jobvisor_proto::control::{
    Attempt, AttemptOutcome, ControlError, ErrorKind, Event, EventKind, JobRecord, JobSpec,
    JobState, Payload, Stats, Submitted, WorkerRow, WorkerState,
};

/// Largest response frame the client accepts (the daemon bounds outputs below this).
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// Talking to the daemon failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No daemon answers at that path.
    #[error("cannot reach the jobvisor daemon at {path}")]
    Unreachable {
        /// Socket path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon speaks another protocol.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The connection broke.
    #[error("connection to the daemon failed")]
    Io(#[from] std::io::Error),
    /// A bad frame.
    #[error("bad frame from the daemon")]
    Frame(#[from] FrameError),
    /// The daemon answered with an error.
    #[error(transparent)]
    Server(#[from] ControlError),
    /// The daemon answered something unexpected.
    #[error("unexpected answer from the daemon: {0}")]
    Unexpected(String),
}

/// A connection to the daemon.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    rbuf: FrameBuf,
    wbuf: Vec<u8>,
}

impl Client {
    /// Connects and completes the handshake.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] when nothing listens; [`ClientError::Handshake`]
    /// when the daemon speaks another protocol version.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path = path.as_ref();
        let mut stream =
            UnixStream::connect(path)
                .await
                .map_err(|source| ClientError::Unreachable {
                    path: path.display().to_string(),
                    source,
                })?;
        let ours = Hello::ours(Role::Client);
        stream.write_all(&ours.encode()).await?;
        let mut hello = [0u8; HELLO_BYTES];
        stream.read_exact(&mut hello).await?;
        let peer = Hello::decode(&hello)?;
        ours.check_peer(&peer, Role::Supervisor)?;
        Ok(Self {
            stream,
            rbuf: FrameBuf::new(MAX_RESPONSE_BYTES),
            wbuf: Vec::new(),
        })
    }

    /// Sends one request and reads its response. An error response becomes
    /// [`ClientError::Server`].
    ///
    /// # Errors
    /// I/O, framing, or the daemon's error.
    pub async fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.wbuf.clear();
        encode_frame(&mut self.wbuf, req, MAX_RESPONSE_BYTES)?;
        if let Err(e) = self.stream.write_all(&self.wbuf).await {
            // The daemon may have refused us (permission, connection cap) and
            // closed: its answer is already in our receive buffer.
            return match self.read_response().await {
                Ok(Response::Error(err)) => Err(ClientError::Server(err)),
                _ => Err(ClientError::Io(e)),
            };
        }
        match self.read_response().await? {
            Response::Error(e) => Err(ClientError::Server(e)),
            other => Ok(other),
        }
    }

    async fn read_response(&mut self) -> Result<Response, ClientError> {
        loop {
            if let Some(resp) = self.rbuf.decode_next::<Response>()? {
                return Ok(resp);
            }
            let n = self.stream.read(self.rbuf.spare()).await?;
            if n == 0 {
                self.rbuf.check_eof()?;
                return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            self.rbuf.filled(n);
        }
    }

    /// Submits jobs; all or none are accepted, durably.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn submit(&mut self, jobs: Vec<JobSpec>) -> Result<Vec<Submitted>, ClientError> {
        match self.request(&Request::Submit(jobs)).await? {
            Response::Submitted(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// One job's record.
    ///
    /// # Errors
    /// As [`Client::request`]; `NotFound` as a server error.
    pub async fn status(&mut self, id: u64) -> Result<JobRecord, ClientError> {
        match self.request(&Request::Status { id }).await? {
            Response::Job(j) => Ok(*j),
            other => Err(unexpected(&other)),
        }
    }

    /// Waits until every job is terminal (the daemon pushes the answer), or the timeout.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn wait(
        &mut self,
        ids: Vec<u64>,
        timeout: Option<Duration>,
    ) -> Result<Vec<JobRecord>, ClientError> {
        let timeout_ms = timeout.map(|t| t.as_millis() as u64);
        match self.request(&Request::Wait { ids, timeout_ms }).await? {
            Response::Jobs(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Cancels a job.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn cancel(&mut self, id: u64) -> Result<(), ClientError> {
        self.expect_ok(&Request::Cancel { id }).await
    }

    /// Re-queues a finished job that did not succeed, with fresh budgets.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn retry(&mut self, id: u64) -> Result<(), ClientError> {
        self.expect_ok(&Request::Retry { id }).await
    }

    /// Lists jobs, newest first.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn list(
        &mut self,
        state: Option<JobState>,
        queue: Option<String>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, ClientError> {
        self.list_page(state, queue, None, limit).await
    }

    /// Lists jobs with an id below `before` (all for `None`), newest first:
    /// the page after one that ended at `before`.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn list_page(
        &mut self,
        state: Option<JobState>,
        queue: Option<String>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, ClientError> {
        match self
            .request(&Request::List {
                state,
                queue,
                before,
                limit,
            })
            .await?
        {
            Response::Jobs(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// The worker processes.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn workers(&mut self) -> Result<Vec<WorkerRow>, ClientError> {
        match self.request(&Request::Workers).await? {
            Response::Workers(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Daemon figures.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn stats(&mut self) -> Result<Stats, ClientError> {
        match self.request(&Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Liveness: the daemon's pid.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn ping(&mut self) -> Result<u32, ClientError> {
        match self.request(&Request::Ping).await? {
            Response::Pong { pid, .. } => Ok(pid),
            other => Err(unexpected(&other)),
        }
    }

    /// Asks the daemon to stop.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn shutdown(&mut self, graceful: bool) -> Result<(), ClientError> {
        self.expect_ok(&Request::Shutdown { graceful }).await
    }

    /// Job and worker events: the connection becomes a stream of the events
    /// the daemon kept (at or after `since_ms`; all for `None`), then, with
    /// `follow`, of every new one; without it the stream ends after the kept
    /// ones.
    ///
    /// # Errors
    /// As [`Client::request`].
    pub async fn events(
        mut self,
        since_ms: Option<u64>,
        follow: bool,
    ) -> Result<EventStream, ClientError> {
        self.wbuf.clear();
        let req = Request::Events { since_ms, follow };
        encode_frame(&mut self.wbuf, &req, MAX_RESPONSE_BYTES)?;
        self.stream.write_all(&self.wbuf).await?;
        Ok(EventStream { client: self })
    }

    async fn expect_ok(&mut self, req: &Request) -> Result<(), ClientError> {
        match self.request(req).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

/// Events pushed by the daemon, from [`Client::events`].
#[derive(Debug)]
pub struct EventStream {
    client: Client,
}

impl EventStream {
    /// The next event; `Ok(None)` at the end of the kept events (without
    /// `follow`) or when the daemon closed the stream.
    ///
    /// # Errors
    /// I/O, framing, or an error answer from the daemon.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        match self.client.read_response().await {
            Ok(Response::Event(e)) => Ok(Some(e)),
            Ok(Response::Ok) => Ok(None),
            Ok(Response::Error(e)) => Err(ClientError::Server(e)),
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
            Err(e) => Err(e),
        }
    }
}

fn unexpected(resp: &Response) -> ClientError {
    let mut s = format!("{resp:?}");
    s.truncate(200);
    ClientError::Unexpected(s)
}
