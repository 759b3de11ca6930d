//! The actor's client commands: submit (admission, then the store, then
//! placing the jobs), cancel, retry, wait and stats.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use jobvisor_proto::control::ControlError;
use jobvisor_proto::control::{ErrorKind, JobRecord, JobRef, JobSpec, JobState, Stats, Submitted};
use jobvisor_store::{Finish, StoreError};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::admission::{self, Admitted};
use super::deps;
use super::job::{lane_of, now_ms, Job, Lane};
use super::reply::{err, store_err, Reply};
use super::stats::job_counts;
use super::waiters::Added;
use super::{Internal, Scheduler};
use crate::errors::{chain, Chain};
use crate::notify::Notice;

impl Scheduler {
    pub(super) fn submit(&mut self, specs: Vec<JobSpec>, reply: Reply<Vec<Submitted>>) {
        if self.quiesce.draining {
            let _ = reply.send(Err(err(
                ErrorKind::ShuttingDown,
                "the daemon is shutting down; no new jobs",
            )));
            return;
        }
        let (jobs, deps) = (&self.jobs, &self.deps);
        let cx = admission::Context {
            cfg: &self.cfg,
            registry: &self.registry,
            open: self.jobs.len() + self.quiesce.reserved,
            known: |id| jobs.contains_key(&id) || deps.finished(id).is_some(),
            now_ms: now_ms(),
        };
        let Admitted {
            jobs,
            new_jobs,
            unknown_deps,
        } = match admission::admit(specs, &cx) {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        self.quiesce.reserved += jobs.len();
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let mut dep_states = HashMap::new();
            let mut result = Ok(());
            for d in unknown_deps {
                match store.get(d).await {
                    Ok(Some(rec)) => {
                        dep_states.insert(d, rec.state);
                    }
                    Ok(None) => {
                        result = Err(err(
                            ErrorKind::BadRequest,
                            format!("dependency on a missing job {d}"),
                        ));
                        break;
                    }
                    Err(e) => {
                        result = Err(store_err(&e));
                        break;
                    }
                }
            }
            let result = match result {
                Ok(()) => store.insert_all(new_jobs).await.map_err(|e| store_err(&e)),
                Err(e) => Err(e),
            };
            let _ = tx
                .send(Internal::Inserted {
                    jobs,
                    result,
                    dep_states,
                    reply,
                })
                .await;
        });
    }

    pub(super) fn on_inserted(
        &mut self,
        mut jobs: Vec<Job>,
        result: Result<Vec<Submitted>, ControlError>,
        dep_states: &HashMap<u64, JobState>,
        reply: Reply<Vec<Submitted>>,
    ) {
        self.quiesce.reserved -= jobs.len();
        let submitted = match result {
            Ok(s) => s,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let ids: Vec<u64> = submitted.iter().map(|s| s.id).collect();
        let mut fresh = Vec::new();
        for (job, s) in jobs.iter_mut().zip(&submitted) {
            if s.duplicate {
                continue;
            }
            job.id = s.id;
            // As the store did: batch positions become ids and dependencies.
            for r in &mut job.input_from {
                if let JobRef::Batch(b) = r.job {
                    r.job = JobRef::Id(ids[b as usize]);
                }
                if let JobRef::Id(d) = r.job {
                    if !job.after.contains(&d) {
                        job.after.push(d);
                    }
                }
            }
            fresh.push(job.clone());
        }
        self.report
            .counters
            .submitted
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        self.admit(fresh, dep_states);
        let _ = reply.send(Ok(submitted));
    }

    /// Puts new (or recovered) jobs where they belong.
    pub(super) fn admit(&mut self, jobs: Vec<Job>, dep_states: &HashMap<u64, JobState>) {
        for job in &jobs {
            self.jobs.insert(job.id, job.clone());
            self.report
                .emit(job.id, job.task.clone(), job.state, None, None, None);
        }
        let mut failed = Vec::new();
        for job in jobs {
            let v = deps::verdict(
                &job.after,
                |d| self.jobs.contains_key(&d),
                |d| {
                    self.deps
                        .finished(d)
                        .or_else(|| dep_states.get(&d).copied())
                },
            );
            for &d in &v.waits_for {
                self.deps.wait(job.id, d);
            }
            if let Some((d, s)) = v.broken {
                failed.push((job.id, format!("dependency {d} is {s}")));
                continue;
            }
            let left = v.waits_for.len();
            if let Some(j) = self.jobs.get_mut(&job.id) {
                j.deps_left = left;
            }
            if left == 0 {
                self.place(job.id);
            }
        }
        for (id, why) in failed {
            self.end_job(id, Finish::Failed { error: why }, None);
        }
    }

    pub(super) fn cancel(&mut self, id: u64, reply: Reply<()>) {
        let Some(job) = self.jobs.get_mut(&id) else {
            let store = self.store.clone();
            tokio::spawn(async move {
                let r = match store.get(id).await {
                    Ok(None) => Err(err(ErrorKind::NotFound, format!("no job {id}"))),
                    Ok(Some(rec)) => Err(err(
                        ErrorKind::Conflict,
                        format!("job {id} has already finished ({})", rec.state.as_str()),
                    )),
                    Err(e) => Err(store_err(&e)),
                };
                let _ = reply.send(r);
            });
            return;
        };
        if job.state == JobState::Running {
            // Answered once the attempt's end (cancelled, or what it
            // reached first) has committed (`spawn_state_write`).
            job.cancel_requested = true;
            if let (Some(call), Some(pool)) = (job.call, self.pool.clone()) {
                tokio::spawn(async move { pool.cancel(call).await });
            }
            self.cancels.entry(id).or_default().push(reply);
            return;
        }
        if job.cancelling {
            // Its cancel is being written: answered with it, not written
            // (and notified of) twice.
            self.cancels.entry(id).or_default().push(reply);
            return;
        }
        // Answered once the cancel has committed (`on_cancelled`): until
        // then the job is out of its queue and is not started.
        job.cancelling = true;
        self.unplace(id);
        let next = Finish::Cancelled {
            error: "cancelled by a client".into(),
        };
        // Its notifications are written with it, and go out once it committed.
        let notice = self.notice(id, JobState::Cancelled);
        let rows = notice.as_ref().map(Notice::deliveries).unwrap_or_default();
        let write = self.store.try_finish_job(id, now_ms(), next.clone(), rows);
        self.quiesce.pending_writes += 1;
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = write.await;
            if let (Ok(()), Some(n)) = (&result, notice) {
                n.send();
            }
            let _ = tx
                .send(Internal::Cancelled {
                    id,
                    next,
                    result,
                    reply,
                })
                .await;
        });
    }

    /// A queued job's cancel has committed: it ends in memory as it has in
    /// the store. Or the write failed: the job is placed again as it was,
    /// and the client hears why.
    pub(super) fn on_cancelled(
        &mut self,
        id: u64,
        next: Finish,
        result: Result<(), StoreError>,
        reply: Reply<()>,
    ) {
        self.quiesce.pending_writes -= 1;
        let cancelling = self.jobs.get(&id).is_some_and(|j| j.cancelling);
        // The clients that asked to cancel it too meanwhile hear the same.
        let mut replies = self.cancels.remove(&id).unwrap_or_default();
        replies.push(reply);
        let answer = match result {
            Ok(()) if cancelling => {
                let released = self.settle(id, &next, None);
                self.answer_waiters(id);
                self.release(id, JobState::Cancelled, released);
                Ok(())
            }
            // Nothing else ends a job whose cancel is being written (see
            // `release`), but should something have, its write came after
            // this one: the client hears what the store holds last.
            Ok(()) => match self.deps.finished(id) {
                Some(s) if s != JobState::Cancelled => Err(err(
                    ErrorKind::BadRequest,
                    format!(
                        "job {id} ended {} before the cancel took effect",
                        s.as_str()
                    ),
                )),
                _ => Ok(()),
            },
            Err(e) => {
                tracing::warn!(job = id, error = %Chain(&e), "cannot record a cancel; the job stays queued");
                if let Some(job) = self.jobs.get_mut(&id).filter(|_| cancelling) {
                    job.cancelling = false;
                    // A dependency may have ended badly meanwhile (`release`
                    // left the job to its cancel): it fails now.
                    let deps = &self.deps;
                    let broken = job.after.iter().find_map(|&d| {
                        deps.finished(d)
                            .filter(|s| *s != JobState::Succeeded)
                            .map(|s| (d, s))
                    });
                    if let Some((d, s)) = broken {
                        let error = format!("dependency {d} {}", s.as_str());
                        self.end_job(id, Finish::Failed { error }, None);
                    } else if job.deps_left == 0 {
                        self.place(id);
                    }
                }
                Err(store_err(&e))
            }
        };
        for reply in replies {
            let _ = reply.send(answer.clone());
        }
    }

    /// `jobvisor retry ID`: a finished job that did not succeed goes back to
    /// the queue with fresh budgets (its attempts stay in its record).
    pub(super) fn retry(&mut self, id: u64, reply: Reply<()>) {
        if self.quiesce.draining {
            let _ = reply.send(Err(err(
                ErrorKind::ShuttingDown,
                "the daemon is shutting down",
            )));
            return;
        }
        if let Some(job) = self.jobs.get(&id) {
            let _ = reply.send(Err(err(
                ErrorKind::Conflict,
                format!("job {id} is {}, not finished", job.state.as_str()),
            )));
            return;
        }
        let store = self.store.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            match store.get(id).await {
                Ok(Some(rec)) if rec.state == JobState::Succeeded => {
                    let _ = reply.send(Err(err(
                        ErrorKind::Conflict,
                        format!("job {id} already succeeded"),
                    )));
                }
                Ok(Some(rec)) => {
                    let _ = tx
                        .send(Internal::Revive {
                            record: Box::new(rec),
                            reply,
                        })
                        .await;
                }
                Ok(None) => {
                    let _ = reply.send(Err(err(ErrorKind::NotFound, format!("no job {id}"))));
                }
                Err(e) => {
                    let _ = reply.send(Err(store_err(&e)));
                }
            }
        });
    }

    pub(super) fn revive(&mut self, r: JobRecord, reply: Reply<()>) {
        if self.jobs.contains_key(&r.id) || !r.state.is_terminal() {
            let _ = reply.send(Err(err(
                ErrorKind::Conflict,
                format!("job {} is not finished", r.id),
            )));
            return;
        }
        let now = now_ms();
        let id = r.id;
        let mut job = match Job::from_record(r, &self.registry, self.cfg.jobs.max_crashes) {
            Ok(job) => job,
            Err((_, e)) => {
                let _ = reply.send(Err(err(
                    ErrorKind::BadInput,
                    format!("cannot retry: {}", chain(&e)),
                )));
                return;
            }
        };
        if !self.reviving.insert(id) {
            let _ = reply.send(Err(err(
                ErrorKind::Conflict,
                format!("job {id} is being retried already"),
            )));
            return;
        }
        // Fresh budgets from the next attempt on, in a new epoch (both
        // stored, so a restart counts the same), no dependencies to wait
        // for; the history stays.
        job.failures = 0;
        job.crashes = 0;
        job.budget_from = job.attempts + 1;
        job.epoch += 1;
        job.after.clear();
        job.set_state(JobState::Retrying);
        job.run_at_ms = now;
        // Answered once it has committed (`on_revived`); on a full disk it
        // fails, and the job stays finished.
        let write = self.store.try_finish_job(
            id,
            now,
            Finish::Revive {
                run_at_ms: now,
                error: "retried by a client".into(),
                budget_from: job.budget_from,
                epoch: job.epoch,
            },
            Vec::new(),
        );
        self.quiesce.pending_writes += 1;
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let result = write.await;
            let _ = tx
                .send(Internal::Revived {
                    job: Box::new(job),
                    result,
                    reply,
                })
                .await;
        });
    }

    /// A finished job's retry has committed: it goes back to its queue. Or
    /// the write failed: it stays finished, and the client hears why.
    pub(super) fn on_revived(
        &mut self,
        job: Job,
        result: Result<(), StoreError>,
        reply: Reply<()>,
    ) {
        self.quiesce.pending_writes -= 1;
        let id = job.id;
        self.reviving.remove(&id);
        if let Err(e) = result {
            tracing::warn!(job = id, error = %Chain(&e), "cannot record a retry; the job stays finished");
            let _ = reply.send(Err(store_err(&e)));
            return;
        }
        self.deps.forget(id);
        self.jobs.insert(id, job);
        self.place(id);
        tracing::info!(job = id, "re-queued by a client");
        let _ = reply.send(Ok(()));
    }

    pub(super) fn wait(
        &mut self,
        ids: Vec<u64>,
        timeout_ms: Option<u64>,
        reply: Reply<Vec<JobRecord>>,
    ) {
        let ids = match wait_ids(ids, self.cfg.limits.max_wait_ids) {
            Ok(ids) => ids,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let jobs = &self.jobs;
        // Past what an instant can hold: no timeout.
        let deadline =
            timeout_ms.and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)));
        let live = |id| jobs.contains_key(&id);
        if let Added::Now(ids, reply) = self.waiters.add(ids, live, deadline, reply) {
            self.answer_wait(ids, reply);
        }
    }

    pub(super) fn answer_wait(&self, ids: Vec<u64>, reply: Reply<Vec<JobRecord>>) {
        // All reads are queued now, so the store thread serves them in one
        // transaction (one round trip per wait, not per id).
        let reads: Vec<_> = ids.iter().map(|&id| (id, self.store.get(id))).collect();
        tokio::spawn(async move {
            let mut out = Vec::with_capacity(reads.len());
            for (id, read) in reads {
                match read.await {
                    Ok(Some(rec)) => out.push(rec),
                    Ok(None) => {
                        let _ = reply.send(Err(err(ErrorKind::NotFound, format!("no job {id}"))));
                        return;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(store_err(&e)));
                        return;
                    }
                }
            }
            let _ = reply.send(Ok(out));
        });
    }

    pub(super) fn stats(&self, reply: oneshot::Sender<Stats>) {
        let mut mem: HashMap<JobState, u64> = HashMap::new();
        for j in self.jobs.values() {
            *mem.entry(j.state).or_default() += 1;
        }
        let store = self.store.clone();
        let c = self.report.counters.clone();
        let workers = self.pool_cfg.workers as u64;
        let uptime_s = self.report.started.elapsed().as_secs();
        let (notify_delivered, notify_failed, notify_dropped) = self.notifier.counts();
        let recovered = self.report.recovered;
        let health = self.pool.as_ref().map_or(
            jobvisor_pool::PoolHealth {
                degraded: false,
                restart_delay: Duration::ZERO,
                deaths: 0,
            },
            jobvisor_pool::Pool::health,
        );
        let tasks = self
            .report
            .task_rows(|task| lane_of(&self.registry, task) == Lane::Io);
        tokio::spawn(async move {
            let counts = store.counts().await.unwrap_or_default();
            let _ = reply.send(Stats {
                pid: std::process::id(),
                uptime_s,
                workers,
                jobs: job_counts(&counts, &mem),
                submitted: c.submitted.load(Ordering::Relaxed),
                attempts_finished: c.attempts_finished.load(Ordering::Relaxed),
                worker_restarts: c.worker_restarts.load(Ordering::Relaxed),
                recovered,
                degraded: health.degraded,
                restart_delay_ms: health.restart_delay.as_millis() as u64,
                tasks,
                notify_delivered,
                notify_failed,
                notify_dropped,
            });
        });
    }
}

/// The ids a `wait` asks for, each once, in the order first given; refused
/// past `max` distinct ids (`limits.max_wait_ids`), so a small request cannot
/// make the daemon read and send one record per repeated id.
fn wait_ids(ids: Vec<u64>, max: usize) -> Result<Vec<u64>, ControlError> {
    let mut seen = std::collections::HashSet::with_capacity(ids.len().min(max.saturating_add(1)));
    let mut out = Vec::new();
    for id in ids {
        if seen.insert(id) {
            if out.len() == max {
                return Err(err(
                    ErrorKind::LimitReached,
                    format!("a wait for more than limits.max_wait_ids ({max}) jobs"),
                ));
            }
            out.push(id);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_wait_ids_count_once_and_keep_their_first_place() {
        assert_eq!(wait_ids(vec![3, 1, 3, 3, 2, 1], 10).unwrap(), vec![3, 1, 2]);
        assert_eq!(wait_ids(vec![7; 300], 1).unwrap(), vec![7]);
    }

    #[test]
    fn more_distinct_wait_ids_than_the_limit_are_refused() {
        let e = wait_ids(vec![1, 2, 3], 2).unwrap_err();
        assert_eq!(e.kind, ErrorKind::LimitReached);
        assert!(
            e.message.contains("limits.max_wait_ids (2)"),
            "{}",
            e.message
        );
        assert_eq!(wait_ids(vec![1, 2, 2, 1], 2).unwrap(), vec![1, 2]);
    }
}
