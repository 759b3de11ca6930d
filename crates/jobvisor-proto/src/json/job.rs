//! A job record in the public JSON ([`Job`]), with its attempts, how each
//! ended ([`Outcome`]) and where a pipeline step takes its input from
//! ([`InputFrom`]). Built from [`crate::control::JobRecord`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::time::rfc3339;
use crate::control;
use crate::forkserver::signal_name;

/// Everything about a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Id.
    pub id: u64,
    /// Task name.
    pub task: String,
    /// Where the job is.
    pub state: JobState,
    /// Queue.
    pub queue: String,
    /// Higher runs first.
    pub priority: i32,
    /// Idempotency key.
    pub key: Option<String>,
    /// When it was accepted.
    pub created_at: String,
    /// Not before.
    pub run_at: String,
    /// When it became terminal.
    pub finished_at: Option<String>,
    /// Attempts in all, the first included, counted from `budget_from`.
    pub max_attempts: u32,
    /// Crash budget (worker deaths, and daemon deaths during an attempt),
    /// counted from `budget_from`; `null` for a job stored before budgets
    /// were kept per job (the daemon's `jobs.max_crashes` applies).
    pub max_crashes: Option<u32>,
    /// The number of the first attempt the current budgets count: 1, or
    /// the attempt after the last one before a client's `retry`.
    pub budget_from: u32,
    /// How many times a client's `retry` revived the job (0 at first).
    pub epoch: u32,
    /// Per-attempt timeout.
    pub timeout_ms: Option<u64>,
    /// Stall timeout (no heartbeat for this long).
    pub stall_timeout_ms: Option<u64>,
    /// First retry delay.
    pub backoff_base_ms: u64,
    /// Retry delay cap.
    pub backoff_max_ms: u64,
    /// Jobs that must succeed first.
    pub after: Vec<u64>,
    /// Pipeline inputs.
    pub input_from: Vec<InputFrom>,
    /// The job's own completion webhook.
    pub notify_url: Option<String>,
    /// The input (`null` in lists), see [`payload_json`].
    pub input: Value,
    /// The output, when succeeded, see [`payload_json`].
    pub output: Value,
    /// Why it failed, was cancelled or is dead.
    pub error: Option<String>,
    /// Attempts so far, oldest first.
    pub attempts: Vec<Attempt>,
}

/// Where a job is: `"queued"`, `"running"`, `"retrying"`, `"succeeded"`,
/// `"failed"`, `"cancelled"` or `"dead"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// See [`control::JobState::Queued`].
    Queued,
    /// See [`control::JobState::Running`].
    Running,
    /// See [`control::JobState::Retrying`].
    Retrying,
    /// See [`control::JobState::Succeeded`].
    Succeeded,
    /// See [`control::JobState::Failed`].
    Failed,
    /// See [`control::JobState::Cancelled`].
    Cancelled,
    /// See [`control::JobState::Dead`].
    Dead,
}

/// One attempt of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1-based.
    pub number: u32,
    /// The worker that ran it, when known.
    pub worker_pid: Option<u32>,
    /// When it started.
    pub started_at: String,
    /// When it ended.
    pub finished_at: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
}

/// How an attempt ended: an object whose `kind` says which.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Still running.
    Running,
    /// Succeeded.
    Ok,
    /// The task returned an error.
    Error {
        /// The task's error.
        message: String,
    },
    /// The task panicked.
    Panic {
        /// The panic's message.
        message: String,
    },
    /// The worker died under it; or, with cause
    /// [`control::DAEMON_DIED`], the daemon did (found at its next start).
    Crashed {
        /// Exit code, when it exited.
        code: Option<i32>,
        /// The signal that killed it, when one did.
        signal: Option<i32>,
        /// That signal's name (`"SIGKILL"`), when it has one.
        signal_name: Option<String>,
        /// Peak resident set, KiB.
        max_rss_kib: u64,
        /// Last lines of the worker's output.
        stderr_tail: Vec<String>,
        /// What killed it, when known (`"memory limit exceeded"`).
        cause: Option<String>,
    },
    /// Past its timeout.
    TimedOut {
        /// How it was stopped.
        how: String,
    },
    /// Cut off by the daemon's shutdown (or found running by a daemon
    /// older than budgets per job): not charged.
    Lost,
    /// Cancelled.
    Cancelled,
}

/// For logs: the `kind`, then its fields as `key=value` (strings quoted),
/// e.g. `crashed signal=SIGKILL max_rss_kib=2048` or `error message="boom"`.
/// The worker's last lines are left out: the log has them already.
impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Running => f.write_str("running"),
            Outcome::Ok => f.write_str("ok"),
            Outcome::Error { message } => write!(f, "error message={message:?}"),
            Outcome::Panic { message } => write!(f, "panic message={message:?}"),
            Outcome::Crashed {
                code,
                signal,
                signal_name,
                max_rss_kib,
                cause,
                ..
            } => {
                f.write_str("crashed")?;
                if let Some(code) = code {
                    write!(f, " code={code}")?;
                }
                match (signal_name, signal) {
                    (Some(name), _) => write!(f, " signal={name}")?,
                    (None, Some(sig)) => write!(f, " signal={sig}")?,
                    (None, None) => {}
                }
                write!(f, " max_rss_kib={max_rss_kib}")?;
                if let Some(cause) = cause {
                    write!(f, " cause={cause:?}")?;
                }
                Ok(())
            }
            Outcome::TimedOut { how } => write!(f, "timed_out how={how:?}"),
            Outcome::Lost => f.write_str("lost"),
            Outcome::Cancelled => f.write_str("cancelled"),
        }
    }
}

/// Where a pipeline step takes part of its input from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFrom {
    /// The job whose output is used.
    pub job: JobTarget,
    /// A JSON pointer into that output (RFC 6901); the whole output when `null`.
    pub pointer: Option<String>,
    /// Put the value under this key of the input; merge an object when `null`.
    pub field: Option<String>,
}

/// The job an [`InputFrom`] names: its id (what a record always shows), or
/// `{"batch": n}`, the n-th spec of the same submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JobTarget {
    /// An existing job.
    Id(u64),
    /// A spec of the same batch.
    Batch {
        /// 0-based position in the batch.
        batch: u32,
    },
}

/// A task's input or output as JSON: the value itself for JSON text (the
/// text as a string if it does not parse), `{"native_base64": "…"}` for the
/// native encoding.
pub fn payload_json(p: &control::Payload) -> Value {
    match p {
        control::Payload::Json(t) => {
            serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.clone()))
        }
        control::Payload::Native(b) => serde_json::json!({ "native_base64": BASE64.encode(b) }),
    }
}

fn opt_payload(p: Option<&control::Payload>) -> Value {
    p.map_or(Value::Null, payload_json)
}

impl From<&control::JobRecord> for Job {
    fn from(r: &control::JobRecord) -> Self {
        Job {
            id: r.id,
            task: r.task.clone(),
            state: r.state.into(),
            queue: r.queue.clone(),
            priority: r.priority,
            key: r.key.clone(),
            created_at: rfc3339(r.created_ms),
            run_at: rfc3339(r.run_at_ms),
            finished_at: r.finished_ms.map(rfc3339),
            max_attempts: r.max_attempts,
            max_crashes: r.max_crashes,
            budget_from: r.budget_from,
            epoch: r.epoch,
            timeout_ms: r.timeout_ms,
            stall_timeout_ms: r.stall_timeout_ms,
            backoff_base_ms: r.backoff_base_ms,
            backoff_max_ms: r.backoff_max_ms,
            after: r.after.clone(),
            input_from: r.input_from.iter().map(InputFrom::from).collect(),
            notify_url: r.notify_url.clone(),
            input: opt_payload(r.input.as_ref()),
            output: opt_payload(r.output.as_ref()),
            error: r.error.clone(),
            attempts: r.attempts.iter().map(Attempt::from).collect(),
        }
    }
}

impl From<control::JobState> for JobState {
    fn from(s: control::JobState) -> Self {
        match s {
            control::JobState::Queued => JobState::Queued,
            control::JobState::Running => JobState::Running,
            control::JobState::Retrying => JobState::Retrying,
            control::JobState::Succeeded => JobState::Succeeded,
            control::JobState::Failed => JobState::Failed,
            control::JobState::Cancelled => JobState::Cancelled,
            control::JobState::Dead => JobState::Dead,
        }
    }
}

impl From<&control::Attempt> for Attempt {
    fn from(a: &control::Attempt) -> Self {
        Attempt {
            number: a.number,
            worker_pid: a.worker_pid,
            started_at: rfc3339(a.started_ms),
            finished_at: a.finished_ms.map(rfc3339),
            outcome: Outcome::from(&a.outcome),
        }
    }
}

impl From<&control::AttemptOutcome> for Outcome {
    fn from(o: &control::AttemptOutcome) -> Self {
        use control::AttemptOutcome as O;
        match o {
            O::Running => Outcome::Running,
            O::Ok => Outcome::Ok,
            O::Error(m) => Outcome::Error { message: m.clone() },
            O::Panic(m) => Outcome::Panic { message: m.clone() },
            O::Crashed {
                code,
                signal,
                max_rss_kib,
                stderr_tail,
                cause,
            } => Outcome::Crashed {
                code: *code,
                signal: *signal,
                signal_name: signal.and_then(signal_name).map(str::to_owned),
                max_rss_kib: *max_rss_kib,
                stderr_tail: stderr_tail.clone(),
                cause: cause.clone(),
            },
            O::TimedOut(how) => Outcome::TimedOut { how: how.clone() },
            O::Lost => Outcome::Lost,
            O::Cancelled => Outcome::Cancelled,
        }
    }
}

impl From<&control::InputRef> for InputFrom {
    fn from(r: &control::InputRef) -> Self {
        InputFrom {
            job: match r.job {
                control::JobRef::Id(id) => JobTarget::Id(id),
                control::JobRef::Batch(batch) => JobTarget::Batch { batch },
            },
            pointer: r.pointer.clone(),
            field: r.field.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::control::{AttemptOutcome, InputRef, JobRecord, JobRef, Payload};

    fn record() -> JobRecord {
        JobRecord {
            id: 7,
            task: "exec".into(),
            queue: "default".into(),
            priority: 0,
            state: control::JobState::Succeeded,
            max_attempts: 3,
            max_crashes: Some(3),
            budget_from: 1,
            epoch: 0,
            timeout_ms: Some(5_000),
            stall_timeout_ms: None,
            input_from: vec![
                InputRef {
                    job: JobRef::Id(21),
                    pointer: Some("/sha256".into()),
                    field: Some("digest".into()),
                },
                InputRef {
                    job: JobRef::Batch(0),
                    pointer: None,
                    field: None,
                },
            ],
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            after: vec![21],
            key: None,
            created_ms: 1_700_000_000_000,
            run_at_ms: 1_700_000_000_000,
            finished_ms: Some(1_700_000_001_500),
            input: Some(Payload::Json(r#"{"argv":["echo","hi"]}"#.into())),
            output: Some(Payload::Json(
                r#"{"code":0,"stdout":"hi\n","stderr":{"base64":"/w=="}}"#.into(),
            )),
            error: None,
            attempts: vec![
                control::Attempt {
                    number: 1,
                    worker_pid: Some(42),
                    started_ms: 1_700_000_000_100,
                    finished_ms: Some(1_700_000_000_200),
                    outcome: AttemptOutcome::Crashed {
                        code: None,
                        signal: Some(9),
                        max_rss_kib: 2_048,
                        stderr_tail: vec!["boom".into()],
                        cause: None,
                    },
                },
                control::Attempt {
                    number: 2,
                    worker_pid: None,
                    started_ms: 1_700_000_001_000,
                    finished_ms: Some(1_700_000_001_500),
                    outcome: AttemptOutcome::Ok,
                },
            ],
            notify_url: None,
        }
    }

    #[test]
    fn a_record_has_snake_case_tags_plain_ids_and_rfc3339_times() {
        let v = serde_json::to_value(Job::from(&record())).unwrap();
        assert_eq!(v["state"], json!("succeeded"));
        assert_eq!(v["created_at"], json!("2023-11-14T22:13:20.000Z"));
        assert_eq!(v["finished_at"], json!("2023-11-14T22:13:21.500Z"));
        assert_eq!(
            v["input_from"],
            json!([
                {"job": 21, "pointer": "/sha256", "field": "digest"},
                {"job": {"batch": 0}, "pointer": null, "field": null},
            ])
        );
        assert_eq!(v["input"], json!({"argv": ["echo", "hi"]}));
        assert_eq!(v["output"]["stdout"], json!("hi\n"));
        assert_eq!(
            v["attempts"][0]["outcome"],
            json!({
                "kind": "crashed", "code": null, "signal": 9, "signal_name": "SIGKILL",
                "max_rss_kib": 2048, "stderr_tail": ["boom"], "cause": null,
            })
        );
        assert_eq!(v["attempts"][1]["outcome"], json!({"kind": "ok"}));
        assert_eq!(
            v["attempts"][1]["started_at"],
            json!("2023-11-14T22:13:21.000Z")
        );
        // Nothing of Rust's enum shapes: no capitalised tag anywhere.
        let text = v.to_string();
        for leak in ["\"Ok\"", "Crashed", "\"Id\"", "\"Succeeded\"", "_ms\":17"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        // And it reads back.
        assert_eq!(
            serde_json::from_value::<Job>(v).unwrap(),
            Job::from(&record())
        );
    }

    #[test]
    fn every_outcome_is_an_object_with_a_kind() {
        let cases = [
            (AttemptOutcome::Running, json!({"kind": "running"})),
            (AttemptOutcome::Ok, json!({"kind": "ok"})),
            (
                AttemptOutcome::Error("bad".into()),
                json!({"kind": "error", "message": "bad"}),
            ),
            (
                AttemptOutcome::Panic("oops".into()),
                json!({"kind": "panic", "message": "oops"}),
            ),
            (
                AttemptOutcome::TimedOut("SIGTERM".into()),
                json!({"kind": "timed_out", "how": "SIGTERM"}),
            ),
            (AttemptOutcome::Lost, json!({"kind": "lost"})),
            (AttemptOutcome::Cancelled, json!({"kind": "cancelled"})),
        ];
        for (wire, want) in cases {
            assert_eq!(serde_json::to_value(Outcome::from(&wire)).unwrap(), want);
        }
    }

    #[test]
    fn outcomes_display_as_kind_and_fields_for_logs() {
        let crashed = AttemptOutcome::Crashed {
            code: None,
            signal: Some(9),
            max_rss_kib: 2_048,
            stderr_tail: vec!["last {words}".into()],
            cause: Some("memory limit exceeded".into()),
        };
        let cases = [
            (
                crashed,
                r#"crashed signal=SIGKILL max_rss_kib=2048 cause="memory limit exceeded""#,
            ),
            (
                AttemptOutcome::Crashed {
                    code: Some(3),
                    signal: None,
                    max_rss_kib: 1,
                    stderr_tail: vec![],
                    cause: None,
                },
                "crashed code=3 max_rss_kib=1",
            ),
            (
                AttemptOutcome::Error("no \"x\"".into()),
                r#"error message="no \"x\"""#,
            ),
            (
                AttemptOutcome::Panic("oops".into()),
                r#"panic message="oops""#,
            ),
            (
                AttemptOutcome::TimedOut("after 5s".into()),
                r#"timed_out how="after 5s""#,
            ),
            (AttemptOutcome::Ok, "ok"),
            (AttemptOutcome::Lost, "lost"),
            (AttemptOutcome::Cancelled, "cancelled"),
            (AttemptOutcome::Running, "running"),
        ];
        for (wire, want) in cases {
            assert_eq!(Outcome::from(&wire).to_string(), want);
        }
    }

    #[test]
    fn payloads_show_json_as_itself_and_native_as_base64() {
        assert_eq!(
            payload_json(&Payload::Json("{\"a\":1}".into())),
            json!({"a": 1})
        );
        assert_eq!(payload_json(&Payload::Json("nope".into())), json!("nope"));
        assert_eq!(
            payload_json(&Payload::Native(vec![0, 0xab])),
            json!({"native_base64": "AKs="})
        );
        let mut r = record();
        r.input = None;
        r.output = None;
        let v = serde_json::to_value(Job::from(&r)).unwrap();
        assert_eq!((&v["input"], &v["output"]), (&json!(null), &json!(null)));
    }
}
