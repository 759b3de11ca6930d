//! Where waiting jobs wait, and which one runs next.
//!
//! Ready jobs wait per lane (CPU, I/O) and per queue, highest priority first
//! and FIFO (job id) within a priority; the best head among the queues under
//! their concurrency cap runs next ([`Queues::pick`]). Delayed and retrying
//! jobs wait in one time-ordered set until they are due, on the monotonic
//! clock (tokio's [`Instant`]): the durable `run_at_ms` is wall time, turned
//! into an instant when the job is placed ([`super::job::due_at`]), so a
//! wall-clock jump moves no timer. [`Load`] counts
//! what runs, per lane against the lane's cap and per queue against its cap.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use tokio::time::Instant;

use super::job::{Job, Lane};

/// Ready jobs of one lane: per queue, best first (highest priority, then
/// oldest id).
type ReadySet = BTreeMap<String, BTreeSet<(Reverse<i32>, u64)>>;

/// The jobs that wait for their time or for a slot.
#[derive(Debug, Default)]
pub(super) struct Queues {
    /// Ready jobs per lane (by [`Lane::index`]), per queue.
    ready: [ReadySet; 2],
    /// `(due, id)` of the jobs that wait for their time.
    delayed: BTreeSet<(Instant, u64)>,
    /// When each job of `delayed` is due (to take it out by id).
    due: HashMap<u64, Instant>,
}

impl Queues {
    /// Makes `job` ready to run.
    pub(super) fn push(&mut self, job: &Job) {
        self.ready[job.lane.index()]
            .entry(job.queue.clone())
            .or_default()
            .insert((Reverse(job.priority), job.id));
    }

    /// Makes job `id` wait until `at` (instead of any time it waited for).
    pub(super) fn delay(&mut self, at: Instant, id: u64) {
        if let Some(old) = self.due.insert(id, at) {
            self.delayed.remove(&(old, id));
        }
        self.delayed.insert((at, id));
    }

    /// Whether `job` is ready (not delayed, not taken to run).
    #[cfg(test)]
    pub(super) fn is_ready(&self, job: &Job) -> bool {
        self.ready[job.lane.index()]
            .get(&job.queue)
            .is_some_and(|set| set.contains(&(Reverse(job.priority), job.id)))
    }

    /// Takes `job` out of wherever it waits.
    pub(super) fn remove(&mut self, job: &Job) {
        if let Some(at) = self.due.remove(&job.id) {
            self.delayed.remove(&(at, job.id));
        }
        if let Some(set) = self.ready[job.lane.index()].get_mut(&job.queue) {
            set.remove(&(Reverse(job.priority), job.id));
        }
    }

    /// When the next delayed job is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|&(t, _)| t)
    }

    /// Makes every delayed job due by `now` ready; `job` finds a job by
    /// id (one that is gone is dropped).
    pub(super) fn promote_due<'a>(&mut self, now: Instant, job: impl Fn(u64) -> Option<&'a Job>) {
        while let Some(&(t, id)) = self.delayed.first() {
            if t > now {
                break;
            }
            self.delayed.pop_first();
            self.due.remove(&id);
            if let Some(job) = job(id) {
                self.push(job);
            }
        }
    }

    /// Takes the job of `lane` to run next, if any may: the best head among
    /// the queues below their cap (`cap`, 0 for none) given what `load` runs.
    pub(super) fn pick(
        &mut self,
        lane: Lane,
        cap: impl Fn(&str) -> usize,
        load: &Load,
    ) -> Option<u64> {
        let mut best: Option<((Reverse<i32>, u64), &String)> = None;
        for (q, set) in &self.ready[lane.index()] {
            let Some(head) = set.first() else { continue };
            let cap = cap(q);
            if cap > 0 && load.running(q) >= cap {
                continue;
            }
            if best.as_ref().is_none_or(|(b, _)| head < b) {
                best = Some((*head, q));
            }
        }
        let (key, queue) = best?;
        let queue = queue.clone();
        if let Some(set) = self.ready[lane.index()].get_mut(&queue) {
            set.remove(&key);
        }
        Some(key.1)
    }
}

/// What runs: attempts in the pool per lane, against the lane's cap, and
/// per queue.
#[derive(Debug)]
pub(super) struct Load {
    /// Attempts in the pool, per lane.
    inflight: [usize; 2],
    /// Cap of `inflight`, per lane: a few pool windows of CPU calls, and the
    /// workers' event-loop slots (plus a little to keep them full) of I/O calls.
    max_inflight: [usize; 2],
    running_per_queue: HashMap<String, usize>,
}

impl Load {
    /// Nothing runs; at most `caps` per lane.
    pub(super) fn new(caps: [usize; 2]) -> Self {
        Self {
            inflight: [0, 0],
            max_inflight: caps,
            running_per_queue: HashMap::new(),
        }
    }

    /// New lane caps (the pool was resized).
    pub(super) fn set_caps(&mut self, caps: [usize; 2]) {
        self.max_inflight = caps;
    }

    /// Whether `lane` may hand the pool one more attempt.
    pub(super) fn has_room(&self, lane: Lane) -> bool {
        self.inflight[lane.index()] < self.max_inflight[lane.index()]
    }

    /// Attempts of `queue` running.
    pub(super) fn running(&self, queue: &str) -> usize {
        self.running_per_queue.get(queue).copied().unwrap_or(0)
    }

    /// Attempts in the pool, both lanes.
    pub(super) fn inflight(&self) -> usize {
        self.inflight[0] + self.inflight[1]
    }

    /// An attempt of `queue` went to the pool.
    pub(super) fn started(&mut self, lane: Lane, queue: &str) {
        self.inflight[lane.index()] += 1;
        *self.running_per_queue.entry(queue.to_owned()).or_default() += 1;
    }

    /// An attempt that [`Load::started`] ended.
    pub(super) fn finished(&mut self, lane: Lane, queue: &str) {
        self.inflight[lane.index()] -= 1;
        if let Some(n) = self.running_per_queue.get_mut(queue) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::job::Lane::{Cpu, Io};
    use super::*;
    use jobvisor_proto::control::JobState;
    use std::sync::Arc;

    fn job(id: u64, lane: Lane, queue: &str, priority: i32) -> Job {
        Job {
            id,
            task: "t".into(),
            lane,
            queue: queue.into(),
            priority,
            max_attempts: 1,
            max_crashes: 1,
            budget_from: 1,
            epoch: 0,
            backoff_base_ms: 0,
            backoff_max_ms: 0,
            timeout_ms: None,
            stall_timeout_ms: None,
            run_at_ms: 0,
            input: Arc::new(Vec::new()),
            template: None,
            input_from: Vec::new(),
            json: false,
            attempts: 0,
            failures: 0,
            crashes: 0,
            state: JobState::Queued,
            after: Vec::new(),
            deps_left: 0,
            call: None,
            cancel_requested: false,
            cancelling: false,
            notify_url: None,
        }
    }

    fn no_cap(_: &str) -> usize {
        0
    }

    #[test]
    fn the_highest_priority_runs_first_then_the_oldest() {
        let mut q = Queues::default();
        let load = Load::new([10, 10]);
        for j in [
            job(5, Cpu, "a", 0),
            job(3, Cpu, "b", 0),
            job(9, Cpu, "a", 2),
            job(4, Cpu, "b", -1),
        ] {
            q.push(&j);
        }
        let order: Vec<_> = std::iter::from_fn(|| q.pick(Cpu, no_cap, &load)).collect();
        assert_eq!(order, [9, 3, 5, 4]);
    }

    #[test]
    fn a_queue_at_its_cap_is_passed_over_and_lanes_do_not_wait_for_each_other() {
        let mut q = Queues::default();
        let mut load = Load::new([1, 10]);
        q.push(&job(1, Cpu, "capped", 5));
        q.push(&job(2, Cpu, "open", 0));
        q.push(&job(3, Io, "capped", 0));
        load.started(Io, "capped");
        let cap = |name: &str| usize::from(name == "capped");
        assert_eq!(q.pick(Cpu, cap, &load), Some(2));
        assert_eq!(
            q.pick(Cpu, cap, &load),
            None,
            "capped queue runs one already"
        );
        assert_eq!(q.pick(Io, no_cap, &load), Some(3));
        assert!(load.has_room(Cpu));
        load.started(Cpu, "open");
        assert!(!load.has_room(Cpu) && load.has_room(Io));
        assert_eq!((load.inflight(), load.running("capped")), (2, 1));
        load.finished(Io, "capped");
        assert_eq!(q.pick(Cpu, cap, &load), Some(1));
    }

    proptest::proptest! {
        /// Whatever waits where: each pick is the best ready job (highest
        /// priority, then lowest id) among the queues below their cap, and
        /// every job of an uncapped queue is picked exactly once.
        #[test]
        fn each_pick_is_the_best_job_a_cap_allows(
            jobs in proptest::collection::btree_map(0u64..1000, (0usize..3, -2i32..3), 0..40),
            caps in proptest::collection::vec(0usize..3, 3),
            running in proptest::collection::vec(0usize..3, 3),
        ) {
            let names = ["a", "b", "c"];
            let mut q = Queues::default();
            let mut load = Load::new([usize::MAX, usize::MAX]);
            for (i, &n) in running.iter().enumerate() {
                for _ in 0..n {
                    load.started(Io, names[i]);
                }
            }
            let all: Vec<Job> = jobs
                .iter()
                .map(|(&id, &(queue, priority))| job(id, Cpu, names[queue], priority))
                .collect();
            for j in &all {
                q.push(j);
            }
            let cap = |name: &str| caps[names.iter().position(|n| *n == name).unwrap()];
            let open = |j: &&Job| cap(&j.queue) == 0 || load.running(&j.queue) < cap(&j.queue);
            let mut eligible: Vec<&Job> = all.iter().filter(open).collect();
            eligible.sort_by_key(|j| (Reverse(j.priority), j.id));
            let picked: Vec<u64> = std::iter::from_fn(|| q.pick(Cpu, cap, &load)).collect();
            let expected: Vec<u64> = eligible.iter().map(|j| j.id).collect();
            proptest::prop_assert_eq!(picked, expected);
        }
    }

    #[test]
    fn delayed_jobs_become_ready_when_due() {
        let mut q = Queues::default();
        let load = Load::new([10, 10]);
        let t0 = Instant::now();
        let at = |ms| t0 + std::time::Duration::from_millis(ms);
        let jobs = [job(1, Cpu, "a", 0), job(2, Cpu, "a", 9)];
        q.delay(at(2_000), 1);
        q.delay(at(1_000), 2);
        q.delay(at(1_500), 42); // gone meanwhile
        let find = |id| jobs.iter().find(|j| j.id == id);
        assert_eq!(q.next_due(), Some(at(1_000)));
        q.promote_due(at(999), find);
        assert_eq!(q.pick(Cpu, no_cap, &load), None);
        q.promote_due(at(1_500), find);
        assert_eq!(q.next_due(), Some(at(2_000)));
        assert_eq!(q.pick(Cpu, no_cap, &load), Some(2));
        // Delayed again: it waits for the new time only.
        q.delay(at(3_000), 1);
        q.promote_due(at(2_500), find);
        assert_eq!(q.pick(Cpu, no_cap, &load), None);
        q.remove(&job(1, Cpu, "a", 0));
        assert_eq!(q.next_due(), None);
    }
}
