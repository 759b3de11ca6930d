//! Recovery at start: the unfinished jobs the store holds (after its own
//! `recover` re-queued the attempts a dead daemon left running, recorded
//! as crashes of the daemon) become the scheduler's again, but for those
//! whose crash budget that spent ([`policy::on_recovery`]): they are dead.

use std::collections::{HashMap, HashSet};

use jobvisor_proto::control::{JobRecord, JobState};
use jobvisor_store::{Finish, StoreError};

use super::job::{now_ms, Job};
use super::Scheduler;
use crate::errors::chain;
use crate::policy::{self, Spent};

/// The dependencies of `records` that are not among them (finished jobs,
/// or missing ones), each once, in order of appearance.
fn outside_deps(records: &[JobRecord]) -> Vec<u64> {
    let ids: HashSet<u64> = records.iter().map(|r| r.id).collect();
    let mut seen = HashSet::new();
    records
        .iter()
        .flat_map(|r| r.after.iter().copied())
        .filter(|d| !ids.contains(d) && seen.insert(*d))
        .collect()
}

impl Scheduler {
    /// Loads every unfinished job from the store; returns how many.
    pub(crate) async fn recover(&mut self) -> Result<u64, StoreError> {
        let records = self.store.recover(now_ms()).await?;
        let mut dep_states = HashMap::new();
        for d in outside_deps(&records) {
            let state = self.store.get(d).await?.map(|j| j.state);
            dep_states.insert(d, state.unwrap_or(JobState::Failed));
        }
        let n = records.len() as u64;
        let mut jobs = Vec::with_capacity(records.len());
        let mut dead = Vec::new();
        for r in records {
            // Used only if the job cannot resume (None unless someone asked).
            let url = r.notify_url.as_deref();
            let state = JobState::Failed;
            debug_assert!(r.state.can_become(state), "job {}: {:?}", r.id, r.state);
            let notice = self.notifier.notice(&self.cfg, r.id, &r.queue, url, state);
            match Job::from_record(r, &self.registry, self.cfg.jobs.max_crashes) {
                Ok(job) => {
                    let spent = Spent {
                        failures: job.failures,
                        crashes: job.crashes,
                    };
                    // Only a job that was running is found queued with its
                    // budget newly spent (a retrying one is judged when
                    // its next attempt ends).
                    let end = policy::on_recovery(spent, job.max_crashes)
                        .filter(|_| job.state == JobState::Queued);
                    if let Some(end) = end {
                        dead.push((job.id, end));
                    }
                    jobs.push(job);
                }
                Err((id, e)) => {
                    let error = format!("cannot resume: {}", chain(&e));
                    self.spawn_finish_job(id, Finish::Failed { error }, true, notice);
                }
            }
        }
        self.admit(jobs, &dep_states);
        // Admitted first, so that the jobs waiting for them hear of it.
        for (id, end) in dead {
            tracing::warn!(
                job = id,
                "the daemon died under the job's attempts: its crash budget is spent"
            );
            self.unplace(id);
            self.end_job(id, end, None);
        }
        self.report.recovered = n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_proto::control::Payload;

    fn record(id: u64, after: Vec<u64>) -> JobRecord {
        JobRecord {
            id,
            task: "t".into(),
            queue: "default".into(),
            priority: 0,
            state: JobState::Queued,
            max_attempts: 1,
            max_crashes: Some(3),
            budget_from: 1,
            epoch: 0,
            timeout_ms: None,
            stall_timeout_ms: None,
            input_from: Vec::new(),
            backoff_base_ms: 0,
            backoff_max_ms: 0,
            after,
            key: None,
            created_ms: 0,
            run_at_ms: 0,
            finished_ms: None,
            input: Some(Payload::Native(Vec::new())),
            output: None,
            error: None,
            attempts: Vec::new(),
            notify_url: None,
        }
    }

    #[test]
    fn only_dependencies_outside_the_recovered_jobs_are_looked_up_once() {
        let records = [
            record(1, vec![9]),
            record(2, vec![1, 8, 9]),
            record(3, vec![]),
        ];
        assert_eq!(outside_deps(&records), [9, 8]);
        assert!(outside_deps(&[]).is_empty());
    }
}
