//! Messages on the control socket (clients ↔ daemon).
//!
//! After the [`crate::Hello`] exchange (client role `Client`, daemon role
//! `Supervisor`), the client sends one [`Request`] frame at a time and reads one
//! [`Response`] frame for it. `Wait` is answered when the jobs are terminal
//! (the daemon pushes; the client never polls).

use serde::{Deserialize, Serialize};

/// A job's input or output: JSON text (what the CLI and any client send) or
/// the codec's native encoding of the task's type (what a typed Rust client may send).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// JSON text.
    Json(String),
    /// Native (bincode) encoding of the task's input or output type.
    Native(#[serde(with = "crate::bytes")] Vec<u8>),
}

impl Payload {
    /// Bytes it takes.
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(s) => s.len(),
            Payload::Native(b) => b.len(),
        }
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a client asks to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Task name.
    pub task: String,
    /// Task input.
    pub input: Payload,
    /// Named queue (default `default`).
    pub queue: Option<String>,
    /// Higher runs first; FIFO within a priority (default 0).
    pub priority: i32,
    /// Attempts in all, the first included (default from config).
    pub max_attempts: Option<u32>,
    /// Crash budget: worker deaths (and daemon deaths during an attempt)
    /// after which the job is dead-lettered, 1..=[`JobSpec::MAX_CRASHES`]
    /// (default: the daemon's `jobs.max_crashes`).
    pub max_crashes: Option<u32>,
    /// First retry delay; doubles per attempt, with jitter (default from config).
    pub backoff_base_ms: Option<u64>,
    /// Cap on the retry delay (default from config).
    pub backoff_max_ms: Option<u64>,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Do not start before this many ms from now.
    pub delay_ms: Option<u64>,
    /// Run only after all these jobs succeeded; a failed or cancelled one fails this job.
    pub after: Vec<u64>,
    /// Idempotency key: a second submit with the same key returns the first job.
    pub key: Option<String>,
    /// Stall timeout: an attempt that sends no heartbeat or progress for this
    /// long is stopped (cancel, SIGTERM, SIGKILL) and counted as timed out.
    pub stall_timeout_ms: Option<u64>,
    /// Pipeline: take (part of) the outputs of these jobs into the input. Each
    /// one is also a dependency. Needs a JSON input (or none: `{}`).
    pub input_from: Vec<InputRef>,
    /// Completion webhook: when the job reaches a terminal state the daemon
    /// POSTs its record as JSON here (http or https; at most 2,048 bytes).
    /// Kept with the job, so it survives a restart. Delivery is at-least-once
    /// while the daemon runs; see the daemon's notification docs.
    pub notify_url: Option<String>,
}

/// A job named in a submit: by id, or by its position in the same batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobRef {
    /// An existing job.
    Id(u64),
    /// The job at this 0-based position of the same submit batch (an earlier one).
    Batch(u32),
}

/// Where a pipeline step takes part of its input from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// The job whose (JSON) output is used.
    pub job: JobRef,
    /// A JSON pointer into that output (RFC 6901, e.g. `/sha256`); the whole output when `None`.
    pub pointer: Option<String>,
    /// Put the value under this key of the input; without it, an object value is
    /// merged into the input (keys the input already has are kept).
    pub field: Option<String>,
}

impl JobSpec {
    /// The largest crash budget a job may ask for ([`JobSpec::max_crashes`]).
    pub const MAX_CRASHES: u32 = 1000;

    /// A spec with defaults for everything but the task and its input.
    pub fn new(task: impl Into<String>, input: Payload) -> Self {
        Self {
            task: task.into(),
            input,
            queue: None,
            priority: 0,
            max_attempts: None,
            max_crashes: None,
            backoff_base_ms: None,
            backoff_max_ms: None,
            timeout_ms: None,
            delay_ms: None,
            after: Vec::new(),
            key: None,
            stall_timeout_ms: None,
            input_from: Vec::new(),
            notify_url: None,
        }
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobState {
    /// Accepted; waiting for its time, its dependencies or a worker.
    Queued,
    /// An attempt is running.
    Running,
    /// An attempt failed; waiting out the backoff before the next.
    Retrying,
    /// Done with an output.
    Succeeded,
    /// Done with an error (attempts spent, a failed dependency, ...).
    Failed,
    /// Cancelled by a client.
    Cancelled,
    /// Dead-lettered: its crash budget or attempt budget is spent after worker deaths.
    Dead,
}

impl JobState {
    /// Whether the job will not change any more.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::Dead
        )
    }
    /// Lowercase name, as the CLI prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Dead => "dead",
        }
    }
    /// Parses [`JobState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "retrying" => JobState::Retrying,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "dead" => JobState::Dead,
            _ => return None,
        })
    }

    /// Whether a job in this state may move to `next`: the legal transitions,
    /// which the daemon's scheduler asserts on every change of state.
    ///
    /// | from | to | when |
    /// |---|---|---|
    /// | `queued`, `retrying` | `running` | an attempt starts |
    /// | `queued`, `retrying` | `cancelled` | a client cancels a job that waits |
    /// | `queued`, `retrying` | `failed` | a dependency did not succeed, or the job's input cannot be built or converted |
    /// | `running` | `succeeded`, `failed`, `retrying`, `cancelled`, `dead` | the attempt ends (see the daemon's failure policy) |
    /// | `running` | `queued` | the pool was stopped under the attempt (daemon shutdown) |
    /// | `queued` | `dead` | a restarted daemon finds its crash budget spent: the daemon died under its last attempt |
    /// | `failed`, `cancelled`, `dead` | `retrying` | a client's `retry` revives a job that did not succeed |
    ///
    /// Nothing leaves `succeeded`, and no state becomes itself.
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued | Retrying, Running | Cancelled | Failed)
                | (Queued, Dead)
                | (
                    Running,
                    Succeeded | Failed | Retrying | Cancelled | Dead | Queued
                )
                | (Failed | Cancelled | Dead, Retrying)
        )
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptOutcome {
    /// Still running.
    Running,
    /// Succeeded.
    Ok,
    /// The task returned an error.
    Error(String),
    /// The task panicked.
    Panic(String),
    /// The worker died: code or signal, peak RSS, last output lines.
    Crashed {
        /// Exit code.
        code: Option<i32>,
        /// Signal.
        signal: Option<i32>,
        /// Peak RSS in KiB.
        max_rss_kib: u64,
        /// Last lines of the worker's output.
        stderr_tail: Vec<String>,
        /// What killed it, when known (e.g. "memory limit exceeded").
        cause: Option<String>,
    },
    /// Past its timeout; how it was stopped.
    TimedOut(String),
    /// Cut off by the daemon's own shutdown (past the drain's grace), or
    /// found running by a restarted daemon older than budgets per job. A
    /// restarted daemon now records an attempt it finds running as
    /// [`AttemptOutcome::daemon_died`].
    Lost,
    /// Cancelled.
    Cancelled,
}

/// The cause of an attempt a restarted daemon found still running: the
/// daemon died under it, a crash of the whole supervisor.
pub const DAEMON_DIED: &str = "the daemon died while it ran";

impl AttemptOutcome {
    /// How a restarted daemon records an attempt it finds still running: a
    /// crash (so it is charged to the job's crash budget) with cause
    /// [`DAEMON_DIED`], and no exit status or output, which died with the
    /// daemon.
    pub fn daemon_died() -> Self {
        AttemptOutcome::Crashed {
            code: None,
            signal: None,
            max_rss_kib: 0,
            stderr_tail: Vec::new(),
            cause: Some(DAEMON_DIED.to_owned()),
        }
    }

    /// Whether it is [`AttemptOutcome::daemon_died`]'s.
    pub fn is_daemon_died(&self) -> bool {
        matches!(self, AttemptOutcome::Crashed { cause: Some(c), .. } if c == DAEMON_DIED)
    }
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    /// Worker pid, when known.
    pub worker_pid: Option<u32>,
    /// Unix ms.
    pub started_ms: u64,
    /// Unix ms.
    pub finished_ms: Option<u64>,
    /// How it ended.
    pub outcome: AttemptOutcome,
}

/// Everything about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: u64,
    /// Task name.
    pub task: String,
    /// Queue.
    pub queue: String,
    /// Priority.
    pub priority: i32,
    /// State.
    pub state: JobState,
    /// Attempts in all, the first included, counted from `budget_from`.
    pub max_attempts: u32,
    /// Crash budget, counted from `budget_from`; `None` for a job stored
    /// before budgets were kept per job (the daemon's `jobs.max_crashes`
    /// applies).
    pub max_crashes: Option<u32>,
    /// The number of the first attempt the current budgets count (1 until
    /// a client's `retry` starts fresh budgets at the next attempt).
    pub budget_from: u32,
    /// How many times a client's `retry` revived the job (0 at first): the
    /// epoch of its notifications' delivery ids.
    pub epoch: u32,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Stall timeout (no heartbeat for this long).
    pub stall_timeout_ms: Option<u64>,
    /// Pipeline inputs (resolved to job ids).
    pub input_from: Vec<InputRef>,
    /// First retry delay.
    pub backoff_base_ms: u64,
    /// Retry delay cap.
    pub backoff_max_ms: u64,
    /// Dependencies.
    pub after: Vec<u64>,
    /// Idempotency key.
    pub key: Option<String>,
    /// Unix ms.
    pub created_ms: u64,
    /// Not before (unix ms).
    pub run_at_ms: u64,
    /// Unix ms, when terminal.
    pub finished_ms: Option<u64>,
    /// Input (omitted in lists).
    pub input: Option<Payload>,
    /// Output, when succeeded.
    pub output: Option<Payload>,
    /// Why it failed, was cancelled or is dead.
    pub error: Option<String>,
    /// Attempts so far.
    pub attempts: Vec<Attempt>,
    /// The job's own completion webhook ([`JobSpec::notify_url`]).
    pub notify_url: Option<String>,
}

/// The answer to one spec of a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The job's id.
    pub id: u64,
    /// An earlier job with the same idempotency key was returned instead.
    pub duplicate: bool,
}

/// A worker's state, as `workers` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Takes calls.
    Ready,
    /// Reached `max_tasks_per_worker`: finishes its calls, then stops.
    Retiring,
    /// Told to exit.
    Stopping,
    /// Exited or lost; waiting to be reaped.
    Dead,
}

impl WorkerState {
    /// The lowercase name (`"ready"`), as the CLI and the JSON show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Retiring => "retiring",
            Self::Stopping => "stopping",
            Self::Dead => "dead",
        }
    }
}

/// A worker, as `workers` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRow {
    /// Pool-local id.
    pub id: u64,
    /// Pid.
    pub pid: u32,
    /// What it is doing.
    pub state: WorkerState,
    /// Calls sent and not answered.
    pub in_flight: u64,
    /// Calls answered.
    pub calls_done: u64,
    /// The job whose CPU task it is running right now (`None`: its CPU
    /// thread is idle). Async jobs share the worker's event loop and are not
    /// shown here.
    pub running_job: Option<u64>,
}

/// Daemon figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Daemon pid.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Worker processes.
    pub workers: u64,
    /// Jobs per state (name, count) among jobs in memory and in the store.
    pub jobs: Vec<(String, u64)>,
    /// Jobs accepted since start.
    pub submitted: u64,
    /// Attempts finished since start.
    pub attempts_finished: u64,
    /// Worker restarts since start.
    pub worker_restarts: u64,
    /// Jobs recovered from the store at start.
    pub recovered: u64,
    /// Workers die faster than the restart intensity allows: restarts are
    /// being delayed (the queue is kept).
    pub degraded: bool,
    /// The current delay before a worker restart, in ms (0 when healthy).
    pub restart_delay_ms: u64,
    /// Per task: CPU time against wall time, and what it suggests.
    pub tasks: Vec<TaskUsage>,
    /// Completion notifications (webhook POSTs, commands) delivered since start.
    pub notify_delivered: u64,
    /// Notifications given up on after their last attempt since start.
    pub notify_failed: u64,
    /// Notifications dropped since start because `notify.max_queued` were pending.
    pub notify_dropped: u64,
}

/// How a task spends its time, over the attempts since the daemon started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// Task name.
    pub task: String,
    /// Attempts measured.
    pub attempts: u64,
    /// CPU time of the worker thread in those attempts, ms.
    pub cpu_ms: u64,
    /// Wall time of those attempts, ms.
    pub wall_ms: u64,
    /// A hint when the task looks misplaced (a CPU task that mostly waits,
    /// an async task that blocks its event loop).
    pub advice: Option<String>,
    /// `"cpu"` for a `Task`, `"io"` for an `AsyncTask`.
    pub kind: String,
    /// Async tasks: the longest single poll seen, ms — the longest the task
    /// held its worker's event loop, stalling every other I/O task there.
    pub max_poll_ms: u64,
}

/// Something that happened in the daemon, as `jobvisor events --follow` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix ms.
    pub at_ms: u64,
    /// What.
    pub kind: EventKind,
}

/// Kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A job changed state.
    Job {
        /// Job id.
        id: u64,
        /// Task name.
        task: String,
        /// The new state.
        state: JobState,
        /// The attempt concerned, when one is.
        attempt: Option<u32>,
        /// The worker that ran it, when known.
        worker_pid: Option<u32>,
        /// The error, for failures.
        error: Option<String>,
    },
    /// A worker process started.
    WorkerStarted {
        /// Its pid.
        pid: u32,
    },
    /// A worker process exited.
    WorkerExited {
        /// Its pid.
        pid: u32,
        /// How (exit code or signal, peak RSS).
        status: String,
    },
    /// This subscriber fell behind and missed this many events.
    Lagged {
        /// Missed events.
        missed: u64,
    },
}

/// Client → daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Submit jobs; all are accepted (durably) or none.
    Submit(Vec<JobSpec>),
    /// One job's record.
    Status {
        /// Job id.
        id: u64,
    },
    /// Answered when every job is terminal (or the timeout passes).
    Wait {
        /// Job ids.
        ids: Vec<u64>,
        /// Give up after this long (answer with the records as they are).
        timeout_ms: Option<u64>,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// Job id.
        id: u64,
    },
    /// Re-queue a finished (dead, failed or cancelled) job with fresh budgets.
    Retry {
        /// Job id.
        id: u64,
    },
    /// Jobs, newest first.
    List {
        /// Only this state.
        state: Option<JobState>,
        /// Only this queue.
        queue: Option<String>,
        /// Only jobs with an id below this (the next page after it).
        before: Option<u64>,
        /// At most this many.
        limit: u32,
    },
    /// The worker processes.
    Workers,
    /// Figures.
    Stats,
    /// Liveness.
    Ping,
    /// Events: the daemon sends the kept ones (at or after `since_ms`, all
    /// of them for `None`) as [`Response::Event`] frames; then, with
    /// `follow`, every new one until the client closes the connection, and
    /// without it [`Response::Ok`], the end.
    Events {
        /// Only events at or after this time (Unix ms).
        since_ms: Option<u64>,
        /// Keep streaming new events after the kept ones.
        follow: bool,
    },
    /// Stop the daemon (draining running jobs when `graceful`).
    Shutdown {
        /// Drain first.
        graceful: bool,
    },
}

impl Request {
    /// How many jobs `payload` announces if it encodes a [`Request::Submit`]:
    /// read from its first bytes, before a single spec is decoded, so that a
    /// receiver can refuse a batch over its limit at the cost of those bytes
    /// (4 million empty specs fit in 60 MB and take a gigabyte decoded).
    /// `None` for any other request.
    pub fn announced_jobs(payload: &[u8]) -> Option<u64> {
        let (tag, jobs) = crate::codec::variant_and_seq_len(payload)?;
        (tag == submit_tag()?).then_some(jobs)
    }
}

/// The variant index [`Request::Submit`] is encoded with, taken from an
/// encoding so that it follows the enum's order.
fn submit_tag() -> Option<u32> {
    let empty = crate::codec::encode(&Request::Submit(Vec::new())).ok()?;
    crate::codec::variant_and_seq_len(&empty).map(|(tag, _)| tag)
}

/// What kind of error a request met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Malformed or contradictory request.
    BadRequest,
    /// No task by that name.
    UnknownTask,
    /// The input does not fit the task.
    BadInput,
    /// No such job.
    NotFound,
    /// A limit was hit (queue full, input too large, ...).
    LimitReached,
    /// The daemon is shutting down.
    ShuttingDown,
    /// The store failed (disk full, I/O error); nothing was accepted.
    Storage,
    /// This peer may not do that.
    PermissionDenied,
    /// The job's state does not allow it (cancel of a finished job, retry
    /// of an unfinished one).
    Conflict,
    /// A bug.
    Internal,
}

/// An error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    /// Kind.
    pub kind: ErrorKind,
    /// What happened, for a human.
    pub message: String,
}

/// Daemon → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Submit: one entry per spec, in order.
    Submitted(Vec<Submitted>),
    /// Status.
    Job(Box<JobRecord>),
    /// Wait and List.
    Jobs(Vec<JobRecord>),
    /// Workers.
    Workers(Vec<WorkerRow>),
    /// Stats.
    Stats(Stats),
    /// Ping.
    Pong {
        /// Daemon pid.
        pid: u32,
        /// Daemon version.
        version: String,
    },
    /// One event of an `Events` subscription.
    Event(Event),
    /// Cancel, Shutdown.
    Ok,
    /// The request failed; nothing was changed.
    Error(ControlError),
}

#[cfg(test)]
mod tests {
    use super::JobState::{self, *};
    use super::{JobSpec, Payload, Request};

    #[test]
    fn only_a_submit_announces_jobs_and_it_says_how_many() {
        let spec = JobSpec::new("noop", Payload::Json("1".into()));
        let submit = crate::codec::encode(&Request::Submit(vec![spec; 3])).unwrap();
        assert_eq!(Request::announced_jobs(&submit), Some(3));
        // Read from the head alone: the specs themselves need not be there.
        assert_eq!(Request::announced_jobs(&submit[..2]), Some(3));
        let others = [
            Request::Wait {
                ids: vec![1, 2, 3],
                timeout_ms: None,
            },
            Request::Status { id: 3 },
            Request::List {
                state: None,
                queue: None,
                limit: 3,
                before: None,
            },
            Request::Ping,
            Request::Events {
                since_ms: None,
                follow: true,
            },
        ];
        for r in others {
            let bytes = crate::codec::encode(&r).unwrap();
            assert_eq!(Request::announced_jobs(&bytes), None, "{r:?}");
        }
        assert_eq!(Request::announced_jobs(&[]), None);
    }

    const ALL: [JobState; 7] = [
        Queued, Running, Retrying, Succeeded, Failed, Cancelled, Dead,
    ];

    #[test]
    fn job_state_transitions_follow_the_table() {
        let legal: Vec<(JobState, JobState)> = ALL
            .iter()
            .flat_map(|&a| ALL.iter().map(move |&b| (a, b)))
            .filter(|&(a, b)| a.can_become(b))
            .collect();
        assert_eq!(legal.len(), 16, "{legal:?}");
        for s in ALL {
            assert!(!s.can_become(s), "{s:?} becomes itself");
            assert!(!Succeeded.can_become(s), "succeeded is final");
        }
        // Only a running attempt ends in success; a dead letter follows a
        // running attempt, or one the daemon died under (found queued).
        for s in ALL {
            assert_eq!(s.can_become(Succeeded), s == Running, "{s:?}");
            assert_eq!(s.can_become(Dead), matches!(s, Running | Queued), "{s:?}");
        }
        // Every terminal state but success can be revived, to `retrying` only.
        for s in [Failed, Cancelled, Dead] {
            let to: Vec<_> = ALL.iter().filter(|&&b| s.can_become(b)).collect();
            assert_eq!(to, [&Retrying], "{s:?}");
        }
    }
}
