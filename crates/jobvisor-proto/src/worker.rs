//! Messages on the supervisor ↔ worker link.
//!
//! After the [`crate::Hello`] exchange the supervisor sends
//! [`ToWorker::Configure`], the worker answers [`FromWorker::Ready`] with its
//! task names (their positions are the task ids used in [`Call::task`]), and
//! then calls flow down in batches and replies flow up in batches. A worker runs
//! CPU calls one at a time, in the order they arrived, so replies to CPU calls
//! come back in order; I/O calls run many at once on the worker's event loop
//! and their replies come back in any order.

use serde::{Deserialize, Serialize};

/// Supervisor → worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ToWorker {
    /// Limits for this link; the first message after the hello.
    Configure {
        /// Largest frame either side may send.
        max_frame_bytes: u64,
        /// Largest encoded task output the worker may return; larger ones fail.
        max_output_bytes: u64,
        /// Soft memory limit: after a call, a worker whose resident set is
        /// above this many bytes announces `Retiring` and exits (0 = none).
        memory_soft_limit_bytes: u64,
        /// Hard memory limit: the worker caps its address space
        /// (`RLIMIT_AS`) at this many bytes, so an allocation past it fails
        /// (0 = none).
        memory_limit_bytes: u64,
        /// While it holds calls, the worker sends [`FromWorker::Pulse`] when
        /// it has sent nothing else for this many ms (0 = never).
        heartbeat_interval_ms: u64,
    },
    /// Calls to run, in order.
    Run(Vec<Call>),
    /// Cancel a call: a queued one is answered `Cancelled` at once, a running one
    /// sees `ctx.is_cancelled()`.
    Cancel {
        /// The call's id.
        id: u64,
    },
    /// Finish what is queued, then exit 0.
    Shutdown,
}

/// One unit of work for a worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// Supervisor-assigned id, unique per pool.
    pub id: u64,
    /// Index into the worker's task list (from [`FromWorker::Ready`]).
    pub task: u32,
    /// `input` is an encoded `Vec<Input>` and the output an encoded
    /// `Vec<Result<Output, TaskFailure>>` (a `chunksize` chunk).
    pub chunk: bool,
    /// The soft deadline the worker's `ctx` reports as cancellation.
    pub timeout_ms: Option<u64>,
    /// The call's stall timeout, enforced by the supervisor: the worker
    /// sends heartbeats often enough for it (at least 4 per stall timeout).
    pub stall_ms: Option<u64>,
    /// The encoded input.
    #[serde(with = "crate::bytes")]
    pub input: Vec<u8>,
}

/// A borrowed mirror of [`ToWorker`] for encoding `Run` batches without copying
/// the inputs (the supervisor keeps them to re-dispatch calls a dead worker
/// never started). Its encoding is identical to [`ToWorker`]'s; a unit test
/// holds the two together. Variant order must match.
#[derive(Debug, Serialize)]
pub enum ToWorkerRef<'a> {
    /// Never sent through the mirror; present to keep variant indices aligned.
    Configure {
        /// See [`ToWorker::Configure`].
        max_frame_bytes: u64,
        /// See [`ToWorker::Configure`].
        max_output_bytes: u64,
        /// See [`ToWorker::Configure`].
        memory_soft_limit_bytes: u64,
        /// See [`ToWorker::Configure`].
        memory_limit_bytes: u64,
        /// See [`ToWorker::Configure`].
        heartbeat_interval_ms: u64,
    },
    /// See [`ToWorker::Run`].
    Run(&'a [CallRef<'a>]),
}

/// Borrowed mirror of [`Call`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CallRef<'a> {
    /// See [`Call::id`].
    pub id: u64,
    /// See [`Call::task`].
    pub task: u32,
    /// See [`Call::chunk`].
    pub chunk: bool,
    /// See [`Call::timeout_ms`].
    pub timeout_ms: Option<u64>,
    /// See [`Call::stall_ms`].
    pub stall_ms: Option<u64>,
    /// See [`Call::input`].
    #[serde(serialize_with = "crate::bytes::serialize")]
    pub input: &'a [u8],
}

/// Worker → supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FromWorker {
    /// The worker is ready; `tasks[i]` is the name of task id `i`.
    Ready {
        /// The worker's pid.
        pid: u32,
        /// Registered task names, in id order.
        tasks: Vec<String>,
        /// The kind of each task, in the same order.
        kinds: Vec<TaskKind>,
    },
    /// Finished calls.
    Done(Vec<Reply>),
    /// The running call is alive (sent when the task calls `ctx.heartbeat()`).
    Heartbeat {
        /// The running call.
        id: u64,
    },
    /// The worker will exit after this frame (soft memory limit): the calls it
    /// has not answered never started.
    Retiring {
        /// Why.
        reason: String,
    },
    /// Progress of the running call.
    Progress {
        /// The running call.
        id: u64,
        /// Units done.
        done: u64,
        /// Units in all (0 when unknown).
        total: u64,
    },
    /// The worker is over its soft memory limit while async calls run on
    /// its event loop: send it nothing more; it finishes what it holds and
    /// is then stopped with `Shutdown` like any recycled worker.
    Draining {
        /// Why.
        reason: String,
    },
    /// The worker holds calls and is alive: its event loop turns and its
    /// process runs. Sent by a thread of its own, neither the CPU thread nor
    /// the event loop, every `heartbeat_interval_ms` in which the worker sent
    /// nothing else; never while it holds no call. Unlike
    /// [`FromWorker::Heartbeat`], it says nothing about any one call (a
    /// call's stall timeout still needs the task's own heartbeats).
    Pulse,
}

/// The result of one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The call's id.
    pub id: u64,
    /// What happened.
    pub outcome: Outcome,
    /// CPU time the worker's thread spent in the call, in µs (0 with
    /// `wall_us` 0: not measured).
    pub cpu_us: u64,
    /// Wall time of the call, in µs; 0 when the worker did not measure this
    /// call (short calls are sampled).
    pub wall_us: u64,
    /// Async calls only: the longest single poll of the call's future, in µs,
    /// i.e. the longest time it held its worker's event loop (0 for CPU calls).
    pub max_poll_us: u64,
}

/// The two kinds of task (see the worker crate's `Task` and `AsyncTask`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskKind {
    /// CPU-bound: runs alone on the worker's CPU thread, one call at a time,
    /// in arrival order.
    Cpu,
    /// I/O-bound: many calls at once on the worker's event loop; they finish
    /// in any order.
    Io,
}

/// Success with the encoded output, or a failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// The encoded output.
    Ok(#[serde(with = "crate::bytes")] Vec<u8>),
    /// The call failed inside the worker.
    Err(TaskFailure),
}

/// A failure reported by the worker for one call (the worker lives on).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailure {
    /// What kind of failure.
    pub kind: FailureKind,
    /// Human-readable detail.
    pub message: String,
}

/// Kinds of in-worker failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureKind {
    /// The task returned an error.
    Error,
    /// The task panicked; the panic was caught.
    Panic,
    /// The input did not decode as the task's input type.
    BadInput,
    /// No task with that id.
    UnknownTask,
    /// The call was cancelled before or while running.
    Cancelled,
    /// The encoded output exceeded `max_output_bytes`.
    OutputTooLarge,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureKind::Error => "task error",
            FailureKind::Panic => "task panicked",
            FailureKind::BadInput => "bad input",
            FailureKind::UnknownTask => "unknown task",
            FailureKind::Cancelled => "cancelled",
            FailureKind::OutputTooLarge => "output too large",
        })
    }
}

impl std::fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;

    #[test]
    fn borrowed_mirror_encodes_like_the_owned_message() {
        let calls = vec![
            Call {
                id: 1,
                task: 2,
                chunk: false,
                timeout_ms: None,
                stall_ms: Some(7),
                input: vec![1, 2, 3],
            },
            Call {
                id: u64::MAX,
                task: 0,
                chunk: true,
                timeout_ms: Some(5),
                stall_ms: None,
                input: vec![],
            },
        ];
        let refs: Vec<CallRef<'_>> = calls
            .iter()
            .map(|c| CallRef {
                id: c.id,
                task: c.task,
                chunk: c.chunk,
                timeout_ms: c.timeout_ms,
                stall_ms: c.stall_ms,
                input: &c.input,
            })
            .collect();
        assert_eq!(
            encode(&ToWorker::Run(calls.clone())).unwrap(),
            encode(&ToWorkerRef::Run(&refs)).unwrap()
        );
        let cfg = ToWorker::Configure {
            max_frame_bytes: 9,
            max_output_bytes: 7,
            memory_soft_limit_bytes: 5,
            memory_limit_bytes: 3,
            heartbeat_interval_ms: 1,
        };
        let cfg_ref = ToWorkerRef::Configure {
            max_frame_bytes: 9,
            max_output_bytes: 7,
            memory_soft_limit_bytes: 5,
            memory_limit_bytes: 3,
            heartbeat_interval_ms: 1,
        };
        assert_eq!(encode(&cfg).unwrap(), encode(&cfg_ref).unwrap());
    }
}
