//! The daemon's other answers in the public JSON: what a submit returns
//! ([`Submitted`]), its workers ([`Worker`]) and its figures ([`Stats`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::control;

/// The answer to one spec of a submit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Submitted {
    /// The job's id.
    pub id: u64,
    /// An earlier job with the same idempotency key was returned instead.
    pub duplicate: bool,
}

/// A worker process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    /// Pool-local id.
    pub id: u64,
    /// Pid.
    pub pid: u32,
    /// `"ready"`, `"retiring"`, `"stopping"` or `"dead"`.
    pub state: String,
    /// Calls sent and not answered.
    pub in_flight: u64,
    /// Calls answered.
    pub calls_done: u64,
    /// The job whose CPU task it runs right now.
    pub running_job: Option<u64>,
}

/// The daemon's figures since it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Daemon pid.
    pub pid: u32,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Worker processes.
    pub workers: u64,
    /// Jobs per state (`{"queued": 4}`), states without jobs left out.
    pub jobs: BTreeMap<String, u64>,
    /// Jobs accepted.
    pub submitted: u64,
    /// Attempts finished.
    pub attempts_finished: u64,
    /// Worker restarts.
    pub worker_restarts: u64,
    /// Jobs recovered from the store at start.
    pub recovered: u64,
    /// Worker restarts are being delayed (restart intensity passed).
    pub degraded: bool,
    /// The current delay before a worker restart (0 when healthy).
    pub restart_delay_ms: u64,
    /// Per task: CPU time against wall time.
    pub tasks: Vec<TaskUsage>,
    /// Completion notifications delivered.
    pub notify_delivered: u64,
    /// Notifications given up on.
    pub notify_failed: u64,
    /// Notifications dropped because too many were pending.
    pub notify_dropped: u64,
}

/// How a task spends its time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskUsage {
    /// Task name.
    pub task: String,
    /// `"cpu"` for a `Task`, `"io"` for an `AsyncTask`.
    pub kind: String,
    /// Attempts measured.
    pub attempts: u64,
    /// CPU time of the worker thread in those attempts.
    pub cpu_ms: u64,
    /// Wall time of those attempts.
    pub wall_ms: u64,
    /// Async tasks: the longest single poll (how long it held its event loop).
    pub max_poll_ms: u64,
    /// A hint when the task looks misplaced.
    pub advice: Option<String>,
}

impl From<&control::Submitted> for Submitted {
    fn from(s: &control::Submitted) -> Self {
        Submitted {
            id: s.id,
            duplicate: s.duplicate,
        }
    }
}

impl From<&control::WorkerRow> for Worker {
    fn from(w: &control::WorkerRow) -> Self {
        Worker {
            id: w.id,
            pid: w.pid,
            state: w.state.as_str().to_owned(),
            in_flight: w.in_flight,
            calls_done: w.calls_done,
            running_job: w.running_job,
        }
    }
}

impl From<&control::Stats> for Stats {
    fn from(s: &control::Stats) -> Self {
        Stats {
            pid: s.pid,
            uptime_s: s.uptime_s,
            workers: s.workers,
            jobs: s.jobs.iter().cloned().collect(),
            submitted: s.submitted,
            attempts_finished: s.attempts_finished,
            worker_restarts: s.worker_restarts,
            recovered: s.recovered,
            degraded: s.degraded,
            restart_delay_ms: s.restart_delay_ms,
            tasks: s.tasks.iter().map(TaskUsage::from).collect(),
            notify_delivered: s.notify_delivered,
            notify_failed: s.notify_failed,
            notify_dropped: s.notify_dropped,
        }
    }
}

impl From<&control::TaskUsage> for TaskUsage {
    fn from(t: &control::TaskUsage) -> Self {
        TaskUsage {
            task: t.task.clone(),
            kind: t.kind.clone(),
            attempts: t.attempts,
            cpu_ms: t.cpu_ms,
            wall_ms: t.wall_ms,
            max_poll_ms: t.max_poll_ms,
            advice: t.advice.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stats_count_jobs_in_an_object_and_workers_name_their_state() {
        let stats = control::Stats {
            pid: 1,
            uptime_s: 2,
            workers: 3,
            jobs: vec![("queued".into(), 4), ("dead".into(), 1)],
            submitted: 5,
            attempts_finished: 6,
            worker_restarts: 7,
            recovered: 8,
            degraded: false,
            restart_delay_ms: 0,
            tasks: vec![control::TaskUsage {
                task: "spin".into(),
                attempts: 1,
                cpu_ms: 2,
                wall_ms: 3,
                advice: None,
                kind: "cpu".into(),
                max_poll_ms: 0,
            }],
            notify_delivered: 9,
            notify_failed: 10,
            notify_dropped: 11,
        };
        let v = serde_json::to_value(Stats::from(&stats)).unwrap();
        assert_eq!(v["jobs"], json!({"queued": 4, "dead": 1}));
        assert_eq!(v["notify_dropped"], json!(11));
        assert_eq!(v["tasks"][0]["kind"], json!("cpu"));
        let w = control::WorkerRow {
            id: 1,
            pid: 2,
            state: control::WorkerState::Retiring,
            in_flight: 0,
            calls_done: 4,
            running_job: None,
        };
        assert_eq!(
            serde_json::to_value(Worker::from(&w)).unwrap(),
            json!({"id": 1, "pid": 2, "state": "retiring", "in_flight": 0, "calls_done": 4, "running_job": null})
        );
        assert_eq!(
            serde_json::to_value(Submitted::from(&control::Submitted {
                id: 3,
                duplicate: true
            }))
            .unwrap(),
            json!({"id": 3, "duplicate": true})
        );
    }
}
