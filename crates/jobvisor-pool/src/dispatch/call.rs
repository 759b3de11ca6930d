//! The records of a call as it moves through the dispatcher: accepted
//! ([`Pending`], with the command that carries it), sent to a worker
//! ([`InFlight`], [`IoFlight`]), answered ([`CallResult`]).

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::escalation::Escalation;
use crate::error::PoolError;
use crate::types::{CallUsage, WorkerInfo};

/// A call's result and the pid of the worker that ran it (when one did).
#[derive(Debug)]
pub(crate) struct CallResult {
    pub(crate) pid: Option<u32>,
    pub(crate) result: Result<Vec<u8>, PoolError>,
    /// CPU and wall time of the call in the worker, when it ran to an answer.
    pub(crate) usage: Option<CallUsage>,
}

pub(crate) type Responder = oneshot::Sender<CallResult>;

pub(super) fn answer(reply: Responder, pid: Option<u32>, result: Result<Vec<u8>, PoolError>) {
    let _ = reply.send(CallResult {
        pid,
        result,
        usage: None,
    });
}

/// A call accepted by the pool.
#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) id: u64,
    pub(crate) task: u32,
    pub(crate) chunk: bool,
    pub(crate) timeout: Option<Duration>,
    pub(crate) stall: Option<Duration>,
    pub(crate) input: Vec<u8>,
    pub(crate) reply: Responder,
    /// Worker deaths that charged no call while this one was in flight (see
    /// `blame`): above 0, the call is a suspect and runs alone.
    pub(crate) deaths: u32,
}

#[derive(Debug)]
pub(crate) enum Command {
    Submit(Pending),
    Cancel(u64),
    Shutdown {
        graceful: bool,
        done: oneshot::Sender<()>,
    },
    Workers(oneshot::Sender<Vec<WorkerInfo>>),
    Resize(usize),
}

/// Sent once, when the first `workers` workers are ready (or one failed).
pub(crate) type StartedReply = oneshot::Sender<Result<Vec<String>, PoolError>>;

pub(crate) struct Channels {
    /// Submits (bounded: submitters wait while the queue is full).
    pub(crate) commands: mpsc::Receiver<Command>,
    /// Everything else, always read.
    pub(crate) control: mpsc::UnboundedReceiver<Command>,
}

/// A call sent to a worker.
pub(super) struct InFlight {
    pub(super) id: u64,
    pub(super) task: u32,
    pub(super) chunk: bool,
    pub(super) timeout: Option<Duration>,
    pub(super) stall: Option<Duration>,
    pub(super) input: Vec<u8>,
    pub(super) reply: Responder,
    pub(super) cancel_requested: bool,
    /// As [`Pending::deaths`].
    pub(super) deaths: u32,
}

impl InFlight {
    /// A queued call, as sent to a worker.
    pub(super) fn sent(p: Pending) -> Self {
        Self {
            id: p.id,
            task: p.task,
            chunk: p.chunk,
            timeout: p.timeout,
            stall: p.stall,
            input: p.input,
            reply: p.reply,
            cancel_requested: false,
            deaths: p.deaths,
        }
    }
}

/// An async call on a worker's event loop: it runs from the moment it is
/// sent, beside the worker's other async calls, and finishes in any order.
pub(super) struct IoFlight {
    pub(super) f: InFlight,
    pub(super) since: Instant,
    pub(super) last_beat: Instant,
    pub(super) esc: Option<Escalation>,
}
