//! What the scheduler reports: counters, CPU and wall time per task ("which
//! kind is it?", judged by `policy`), job counts per state, and the job
//! events `jobvisor events --follow` subscribers see.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use jobvisor_pool::CallUsage;
use jobvisor_proto::control::{Event, EventKind, JobState, TaskUsage};

use super::job::now_ms;
use crate::events::EventFeed;
use crate::policy;

/// Counters shared with whoever reports them.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) submitted: AtomicU64,
    pub(crate) attempts_finished: AtomicU64,
    pub(crate) worker_restarts: AtomicU64,
}

/// Time spent by the attempts of one task.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Usage {
    attempts: u64,
    cpu_us: u64,
    wall_us: u64,
    max_poll_us: u64,
    /// Attempts with a poll of `policy::LONG_POLL_US` or more.
    long_poll_attempts: u64,
}

/// The scheduler's reporting state.
#[derive(Debug)]
pub(super) struct Report {
    pub(super) counters: std::sync::Arc<Counters>,
    /// Job events for `jobvisor events --follow` subscribers.
    events: std::sync::Arc<EventFeed>,
    /// CPU and wall time per task name since start ("which kind is it?").
    usage: HashMap<String, Usage>,
    pub(super) started: Instant,
    /// Jobs loaded at start.
    pub(super) recovered: u64,
}

impl Report {
    pub(super) fn new(
        counters: std::sync::Arc<Counters>,
        events: std::sync::Arc<EventFeed>,
    ) -> Self {
        Self {
            counters,
            events,
            usage: HashMap::new(),
            started: Instant::now(),
            recovered: 0,
        }
    }

    /// Adds an attempt of `task` to its usage.
    pub(super) fn record(&mut self, task: &str, u: &CallUsage) {
        let e = self.usage.entry(task.to_owned()).or_default();
        e.attempts += 1;
        e.cpu_us += u.cpu.as_micros() as u64;
        e.wall_us += u.wall.as_micros() as u64;
        let max_poll_us = u.max_poll.as_micros() as u64;
        e.max_poll_us = e.max_poll_us.max(max_poll_us);
        if max_poll_us >= policy::LONG_POLL_US {
            e.long_poll_attempts += 1;
        }
    }

    /// Usage per task, by name, with `policy`'s advice; `is_io` tells async
    /// tasks apart.
    pub(super) fn task_rows(&self, is_io: impl Fn(&str) -> bool) -> Vec<TaskUsage> {
        let mut tasks: Vec<TaskUsage> = self
            .usage
            .iter()
            .map(|(task, u)| {
                let io = is_io(task);
                TaskUsage {
                    task: task.clone(),
                    attempts: u.attempts,
                    cpu_ms: u.cpu_us / 1000,
                    wall_ms: u.wall_us / 1000,
                    advice: if io {
                        policy::async_advice(
                            u.attempts,
                            u.cpu_us,
                            u.wall_us,
                            u.max_poll_us,
                            u.long_poll_attempts,
                        )
                    } else {
                        policy::advice(u.attempts, u.cpu_us, u.wall_us)
                    },
                    kind: if io { "io" } else { "cpu" }.to_string(),
                    max_poll_ms: u.max_poll_us / 1000,
                }
            })
            .collect();
        tasks.sort_by(|a, b| a.task.cmp(&b.task));
        tasks
    }

    /// Publishes a job event to the feed (kept, and sent to subscribers).
    pub(super) fn emit(
        &self,
        id: u64,
        task: String,
        state: JobState,
        attempt: Option<u32>,
        worker_pid: Option<u32>,
        error: Option<String>,
    ) {
        self.events.publish(Event {
            at_ms: now_ms(),
            kind: EventKind::Job {
                id,
                task,
                state,
                attempt,
                worker_pid,
                error,
            },
        });
    }
}

/// Jobs per state, by name: finished states as the store counts them,
/// unfinished ones from memory (`mem`; the store may lag by a write).
pub(super) fn job_counts(
    store: &[(JobState, u64)],
    mem: &HashMap<JobState, u64>,
) -> Vec<(String, u64)> {
    let mut jobs: Vec<(String, u64)> = Vec::new();
    for &(state, n) in store {
        let n = if state.is_terminal() {
            n
        } else {
            mem.get(&state).copied().unwrap_or(0)
        };
        jobs.push((state.as_str().to_string(), n));
    }
    for (&state, &n) in mem {
        if !jobs.iter().any(|(s, _)| s == state.as_str()) {
            jobs.push((state.as_str().to_string(), n));
        }
    }
    jobs.sort();
    jobs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unfinished_counts_come_from_memory_and_finished_from_the_store() {
        let store = [
            (JobState::Queued, 5),
            (JobState::Succeeded, 7),
            (JobState::Running, 1),
        ];
        let mem = HashMap::from([(JobState::Queued, 2), (JobState::Retrying, 1)]);
        assert_eq!(
            job_counts(&store, &mem),
            [
                ("queued".to_string(), 2),
                ("retrying".to_string(), 1),
                ("running".to_string(), 0),
                ("succeeded".to_string(), 7),
            ]
        );
        assert_eq!(job_counts(&[], &HashMap::new()), []);
    }

    #[test]
    fn usage_adds_up_per_task_and_counts_long_polls() {
        let mut r = Report::new(Default::default(), EventFeed::new(0));
        let usage = |cpu_ms, wall_ms, poll_ms| CallUsage {
            cpu: Duration::from_millis(cpu_ms),
            wall: Duration::from_millis(wall_ms),
            max_poll: Duration::from_millis(poll_ms),
        };
        r.record("fetch", &usage(1, 100, 50));
        r.record("fetch", &usage(2, 100, 1));
        r.record("hash", &usage(90, 100, 0));
        let rows = r.task_rows(|t| t == "fetch");
        assert_eq!(rows.len(), 2);
        let (fetch, hash) = (&rows[0], &rows[1]);
        assert_eq!((fetch.task.as_str(), fetch.kind.as_str()), ("fetch", "io"));
        assert_eq!(
            (
                fetch.attempts,
                fetch.cpu_ms,
                fetch.wall_ms,
                fetch.max_poll_ms
            ),
            (2, 3, 200, 50)
        );
        assert_eq!(r.usage["fetch"].long_poll_attempts, 1);
        assert_eq!((hash.task.as_str(), hash.kind.as_str()), ("hash", "cpu"));
    }
}
