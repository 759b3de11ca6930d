//! One event of the daemon's event stream in the public JSON: `at` and a
//! `kind`, with the kind's fields beside them on the same object
//! (`{"at": "…", "kind": "job", "id": 3, "state": "running", …}`), one
//! object a line in `jobvisor events --json`.

use serde::{Deserialize, Serialize};

use super::job::JobState;
use super::time::rfc3339;
use crate::control;

/// Something that happened in the daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When.
    pub at: String,
    /// What, with its fields.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// Kinds of [`Event`], told apart by `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
        /// How (exit code or signal, peak RSS), in words.
        status: String,
    },
    /// This reader fell behind and missed this many events.
    Lagged {
        /// Events missed.
        missed: u64,
    },
}

impl From<&control::Event> for Event {
    fn from(e: &control::Event) -> Self {
        use control::EventKind as K;
        let kind = match &e.kind {
            K::Job {
                id,
                task,
                state,
                attempt,
                worker_pid,
                error,
            } => EventKind::Job {
                id: *id,
                task: task.clone(),
                state: (*state).into(),
                attempt: *attempt,
                worker_pid: *worker_pid,
                error: error.clone(),
            },
            K::WorkerStarted { pid } => EventKind::WorkerStarted { pid: *pid },
            K::WorkerExited { pid, status } => EventKind::WorkerExited {
                pid: *pid,
                status: status.clone(),
            },
            K::Lagged { missed } => EventKind::Lagged { missed: *missed },
        };
        Event {
            at: rfc3339(e.at_ms),
            kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn json_of(kind: control::EventKind) -> serde_json::Value {
        let e = control::Event { at_ms: 0, kind };
        let v = serde_json::to_value(Event::from(&e)).unwrap();
        assert_eq!(
            serde_json::from_value::<Event>(v.clone()).unwrap(),
            Event::from(&e),
            "round trip of {v}"
        );
        v
    }

    #[test]
    fn events_are_flat_objects_with_a_kind() {
        assert_eq!(
            json_of(control::EventKind::Job {
                id: 3,
                task: "noop".into(),
                state: control::JobState::Running,
                attempt: Some(1),
                worker_pid: Some(77),
                error: None,
            }),
            json!({
                "at": "1970-01-01T00:00:00.000Z", "kind": "job", "id": 3, "task": "noop",
                "state": "running", "attempt": 1, "worker_pid": 77, "error": null,
            })
        );
        assert_eq!(
            json_of(control::EventKind::WorkerStarted { pid: 5 }),
            json!({"at": "1970-01-01T00:00:00.000Z", "kind": "worker_started", "pid": 5})
        );
        assert_eq!(
            json_of(control::EventKind::WorkerExited {
                pid: 5,
                status: "killed by SIGKILL".into()
            }),
            json!({
                "at": "1970-01-01T00:00:00.000Z", "kind": "worker_exited", "pid": 5,
                "status": "killed by SIGKILL",
            })
        );
        assert_eq!(
            json_of(control::EventKind::Lagged { missed: 9 }),
            json!({"at": "1970-01-01T00:00:00.000Z", "kind": "lagged", "missed": 9})
        );
    }
}
