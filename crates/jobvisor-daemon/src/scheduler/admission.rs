//! Admission: whether a submit is accepted, and the jobs it becomes. A pure
//! function of the request, the configuration, the registry and what the
//! scheduler holds; nothing changes when it refuses.
//!
//! A submit is refused whole, naming the job of the batch at fault, when it
//! is empty or larger than `limits.max_batch_jobs`, when it would take the
//! unfinished jobs past `limits.max_queued_jobs`, or when one of its jobs
//! has an input over `limits.max_input_bytes`, a number out of range
//! ([`check_ranges`]), bad pipeline references, an unknown task or queue,
//! or an input its task does not accept. Missing defaults come from
//! `[jobs]`; dependencies the scheduler does not hold are returned so that
//! the store can be asked about them.

use std::sync::Arc;

use jobvisor_proto::control::ControlError;
use jobvisor_proto::control::{ErrorKind, JobRef, JobSpec, JobState, Payload};
use jobvisor_store::NewJob;
use jobvisor_worker::{ConvertError, Registry};

use super::job::{lane_of, Job};
use super::reply::err;
use crate::bounds::UrlError;
use crate::config::Config;
use crate::errors::chain;
use crate::pipeline;

/// The longest duration a job may ask for (delay, timeouts, backoff): ten years.
const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// What an accepted submit becomes.
#[derive(Debug)]
pub(super) struct Admitted {
    /// The jobs as the scheduler will hold them (ids once stored).
    pub(super) jobs: Vec<Job>,
    /// The same jobs as the store inserts them.
    pub(super) new_jobs: Vec<NewJob>,
    /// Dependencies the scheduler does not hold (finished long ago, or
    /// never were): the store is asked for their state.
    pub(super) unknown_deps: Vec<u64>,
}

/// What admission needs to know besides the request.
#[derive(Debug, Clone, Copy)]
pub(super) struct Context<'a, K: Fn(u64) -> bool> {
    pub(super) cfg: &'a Config,
    pub(super) registry: &'a Registry,
    /// Unfinished jobs, and jobs of submits not yet stored.
    pub(super) open: usize,
    /// Whether the scheduler holds job `id` (unfinished, or remembered finished).
    pub(super) known: K,
    pub(super) now_ms: u64,
}

/// Validates a submit of `specs` and builds its jobs.
///
/// # Errors
/// The first reason to refuse it, for the client.
pub(super) fn admit<K: Fn(u64) -> bool>(
    specs: Vec<JobSpec>,
    cx: &Context<'_, K>,
) -> Result<Admitted, ControlError> {
    let limits = &cx.cfg.limits;
    if specs.is_empty() {
        return Err(err(ErrorKind::BadRequest, "submit of no jobs"));
    }
    if specs.len() > limits.max_batch_jobs {
        return Err(err(
            ErrorKind::LimitReached,
            format!(
                "{} jobs in one submit exceed limits.max_batch_jobs ({})",
                specs.len(),
                limits.max_batch_jobs
            ),
        ));
    }
    let open = cx.open;
    if open + specs.len() > limits.max_queued_jobs {
        return Err(err(
            ErrorKind::LimitReached,
            format!(
                "queue full: {open} jobs are unfinished, {} more would exceed limits.max_queued_jobs ({})",
                specs.len(),
                limits.max_queued_jobs
            ),
        ));
    }
    let mut out = Admitted {
        jobs: Vec::with_capacity(specs.len()),
        new_jobs: Vec::with_capacity(specs.len()),
        unknown_deps: Vec::new(),
    };
    let many = specs.len() > 1;
    for (i, spec) in specs.into_iter().enumerate() {
        let at = |m: String| {
            if many {
                format!("job #{} of the batch: {m}", i + 1)
            } else {
                m
            }
        };
        let (job, new_job) = admit_one(spec, i, cx, &mut out.unknown_deps, at)?;
        out.jobs.push(job);
        out.new_jobs.push(new_job);
    }
    Ok(out)
}

/// One job of a submit, at position `i` of its batch; `at` places a message
/// in the batch.
fn admit_one<K: Fn(u64) -> bool>(
    spec: JobSpec,
    i: usize,
    cx: &Context<'_, K>,
    unknown_deps: &mut Vec<u64>,
    at: impl Fn(String) -> String,
) -> Result<(Job, NewJob), ControlError> {
    let limits = &cx.cfg.limits;
    let registry = cx.registry;
    if spec.input.len() > limits.max_input_bytes {
        return Err(err(
            ErrorKind::LimitReached,
            at(format!(
                "input of {} bytes exceeds limits.max_input_bytes ({})",
                spec.input.len(),
                limits.max_input_bytes
            )),
        ));
    }
    if let Some(key) = spec.key.as_ref().filter(|k| k.len() > limits.max_key_bytes) {
        return Err(err(
            ErrorKind::LimitReached,
            at(format!(
                "idempotency key of {} bytes exceeds limits.max_key_bytes ({})",
                key.len(),
                limits.max_key_bytes
            )),
        ));
    }
    check_ranges(&spec).map_err(|e| err(ErrorKind::BadRequest, at(chain(&e))))?;
    let pipeline = !spec.input_from.is_empty();
    if pipeline {
        pipeline::check_refs(&spec.input_from, i, &spec.input)
            .map_err(|e| err(ErrorKind::BadRequest, at(chain(&e))))?;
        if !registry.contains(&spec.task) {
            return Err(err(
                ErrorKind::UnknownTask,
                at(format!("unknown task {:?}", spec.task)),
            ));
        }
        for r in &spec.input_from {
            if let JobRef::Id(d) = r.job {
                if !(cx.known)(d) {
                    unknown_deps.push(d);
                }
            }
        }
    }
    let (native, json) = match &spec.input {
        // A pipeline step's input is complete only once its sources
        // finished: it is converted (and checked) then.
        Payload::Json(_) if pipeline => (Ok(Vec::new()), true),
        Payload::Json(text) => (registry.json_to_native(&spec.task, text), true),
        Payload::Native(bytes) => (
            registry
                .check_native_input(&spec.task, bytes)
                .map(|()| bytes.clone()),
            false,
        ),
    };
    let native = native.map_err(|e| match e {
        ConvertError::UnknownTask { .. } => err(ErrorKind::UnknownTask, at(chain(&e))),
        other => err(ErrorKind::BadInput, at(chain(&other))),
    })?;
    let template = match (&spec.input, pipeline) {
        (Payload::Json(t), true) => Some(t.clone()),
        _ => None,
    };
    let queue = spec.queue.clone().unwrap_or_else(|| "default".into());
    if !cx.cfg.knows_queue(&queue) {
        return Err(err(
            ErrorKind::BadRequest,
            at(format!(
                "unknown queue {queue:?} (configure it under [queues.{queue}])"
            )),
        ));
    }
    let defaults = &cx.cfg.jobs;
    let max_attempts = spec.max_attempts.unwrap_or(defaults.max_attempts).max(1);
    let max_crashes = spec.max_crashes.unwrap_or(defaults.max_crashes);
    let backoff_base_ms = spec.backoff_base_ms.unwrap_or(defaults.backoff_base_ms);
    let backoff_max_ms = spec
        .backoff_max_ms
        .unwrap_or(defaults.backoff_max_ms)
        .max(backoff_base_ms);
    for d in &spec.after {
        if !(cx.known)(*d) {
            unknown_deps.push(*d);
        }
    }
    let run_at_ms = cx.now_ms.saturating_add(spec.delay_ms.unwrap_or(0));
    let new_job = NewJob {
        task: spec.task.clone(),
        input: spec.input,
        queue: queue.clone(),
        priority: spec.priority,
        max_attempts,
        max_crashes,
        backoff_base_ms,
        backoff_max_ms,
        timeout_ms: spec.timeout_ms,
        stall_timeout_ms: spec.stall_timeout_ms,
        input_from: spec.input_from.clone(),
        run_at_ms,
        created_ms: cx.now_ms,
        after: spec.after.clone(),
        key: spec.key,
        notify_url: spec.notify_url.clone(),
    };
    let job = Job {
        id: 0,
        lane: lane_of(registry, &spec.task),
        task: spec.task,
        queue,
        priority: spec.priority,
        max_attempts,
        max_crashes,
        budget_from: 1,
        epoch: 0,
        backoff_base_ms,
        backoff_max_ms,
        timeout_ms: spec.timeout_ms,
        stall_timeout_ms: spec.stall_timeout_ms,
        run_at_ms,
        input: Arc::new(native),
        template,
        input_from: spec.input_from,
        json,
        attempts: 0,
        failures: 0,
        crashes: 0,
        state: JobState::Queued,
        after: spec.after,
        deps_left: 0,
        call: None,
        cancel_requested: false,
        cancelling: false,
        notify_url: spec.notify_url,
    };
    Ok((job, new_job))
}

/// A job's numbers or webhook out of range.
#[derive(Debug, thiserror::Error)]
pub(super) enum RangeError {
    #[error("{name} must be at most {MAX_DURATION_MS} (ten years)")]
    TooLong { name: &'static str },
    #[error("{0} is not a job id")]
    NotAnId(u64),
    #[error("max_crashes must be 1 to {max}, not {0}", max = JobSpec::MAX_CRASHES)]
    MaxCrashes(u32),
    #[error("notify_url")]
    NotifyUrl(#[source] UrlError),
}

/// Numbers a client sent that the store could not keep, refused as bad requests.
///
/// # Errors
/// The first out of range.
pub(super) fn check_ranges(spec: &JobSpec) -> Result<(), RangeError> {
    let durations = [
        ("delay_ms", spec.delay_ms),
        ("timeout_ms", spec.timeout_ms),
        ("stall_timeout_ms", spec.stall_timeout_ms),
        ("backoff_base_ms", spec.backoff_base_ms),
        ("backoff_max_ms", spec.backoff_max_ms),
    ];
    for (name, v) in durations {
        if v.is_some_and(|v| v > MAX_DURATION_MS) {
            return Err(RangeError::TooLong { name });
        }
    }
    if let Some(n) = spec
        .max_crashes
        .filter(|n| !(1..=JobSpec::MAX_CRASHES).contains(n))
    {
        return Err(RangeError::MaxCrashes(n));
    }
    let ids = spec
        .after
        .iter()
        .copied()
        .chain(spec.input_from.iter().filter_map(|r| match r.job {
            JobRef::Id(id) => Some(id),
            JobRef::Batch(_) => None,
        }));
    for id in ids {
        if id > i64::MAX as u64 {
            return Err(RangeError::NotAnId(id));
        }
    }
    if let Some(url) = &spec.notify_url {
        crate::bounds::check_url(url).map_err(RangeError::NotifyUrl)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_proto::control::InputRef;
    use jobvisor_worker::{Ctx, Task, TaskError};

    struct Echo;
    impl Task for Echo {
        const NAME: &'static str = "echo";
        type Input = u32;
        type Output = u32;
        fn run(&self, input: u32, _: &mut Ctx<'_>) -> Result<u32, TaskError> {
            Ok(input)
        }
    }

    fn registry() -> Registry {
        Registry::new().with(Echo)
    }

    fn spec() -> JobSpec {
        JobSpec::new("echo", Payload::Json("7".into()))
    }

    /// Admits `specs` with `open` unfinished jobs, of which only job 1 is known.
    fn run(cfg: &Config, open: usize, specs: Vec<JobSpec>) -> Result<Admitted, ControlError> {
        let registry = registry();
        let cx = Context {
            cfg,
            registry: &registry,
            open,
            known: |id| id == 1,
            now_ms: 1_000,
        };
        admit(specs, &cx)
    }

    fn refused(cfg: &Config, open: usize, specs: Vec<JobSpec>) -> ControlError {
        run(cfg, open, specs).expect_err("refused")
    }

    #[test]
    fn a_job_takes_the_configured_defaults_and_its_delay() {
        let mut cfg = Config::default();
        cfg.jobs.max_attempts = 4;
        cfg.jobs.backoff_base_ms = 50;
        cfg.jobs.backoff_max_ms = 70;
        let mut s = spec();
        s.delay_ms = Some(500);
        let a = run(&cfg, 0, vec![s]).unwrap();
        let (job, new) = (&a.jobs[0], &a.new_jobs[0]);
        assert_eq!(
            (job.max_attempts, job.backoff_base_ms, job.backoff_max_ms),
            (4, 50, 70)
        );
        assert_eq!(
            (job.run_at_ms, new.run_at_ms, new.created_ms),
            (1_500, 1_500, 1_000)
        );
        assert_eq!(
            (job.queue.as_str(), job.state, job.json),
            ("default", JobState::Queued, true)
        );
        assert_eq!(
            job.input.as_slice(),
            registry().json_to_native("echo", "7").unwrap()
        );
        // A job's own numbers win, but never below one attempt or below the base.
        let mut s = spec();
        s.max_attempts = Some(0);
        s.backoff_base_ms = Some(900);
        s.backoff_max_ms = Some(10);
        let job = &run(&cfg, 0, vec![s]).unwrap().jobs[0];
        assert_eq!(
            (job.max_attempts, job.backoff_base_ms, job.backoff_max_ms),
            (1, 900, 900)
        );
    }

    #[test]
    fn a_crash_budget_is_the_jobs_own_or_the_default_and_in_range() {
        let mut cfg = Config::default();
        cfg.jobs.max_crashes = 5;
        let a = run(&cfg, 0, vec![spec()]).unwrap();
        assert_eq!((a.jobs[0].max_crashes, a.new_jobs[0].max_crashes), (5, 5));
        assert_eq!((a.jobs[0].budget_from, a.jobs[0].epoch), (1, 0));
        let mut s = spec();
        s.max_crashes = Some(1);
        let a = run(&cfg, 0, vec![s]).unwrap();
        assert_eq!((a.jobs[0].max_crashes, a.new_jobs[0].max_crashes), (1, 1));
        for n in [0, JobSpec::MAX_CRASHES + 1] {
            let mut s = spec();
            s.max_crashes = Some(n);
            let e = refused(&cfg, 0, vec![s]);
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert_eq!(
                e.message,
                format!("max_crashes must be 1 to 1000, not {n}"),
                "{e:?}"
            );
        }
    }

    #[test]
    fn batch_and_queue_caps_refuse_the_whole_submit() {
        let mut cfg = Config::default();
        cfg.limits.max_batch_jobs = 2;
        cfg.limits.max_queued_jobs = 5;
        let e = refused(&cfg, 0, vec![]);
        assert_eq!(e.kind, ErrorKind::BadRequest);
        let e = refused(&cfg, 0, vec![spec(), spec(), spec()]);
        assert_eq!(e.kind, ErrorKind::LimitReached);
        assert!(
            e.message.contains("limits.max_batch_jobs (2)"),
            "{}",
            e.message
        );
        let e = refused(&cfg, 4, vec![spec(), spec()]);
        assert_eq!(e.kind, ErrorKind::LimitReached);
        assert!(
            e.message.starts_with("queue full: 4 jobs are unfinished"),
            "{}",
            e.message
        );
        assert_eq!(run(&cfg, 3, vec![spec(), spec()]).unwrap().jobs.len(), 2);
    }

    #[test]
    fn a_bad_job_is_named_by_its_place_in_the_batch() {
        let mut cfg = Config::default();
        cfg.limits.max_input_bytes = 4096;
        let big = JobSpec::new("echo", Payload::Native(vec![0; 4097]));
        let e = refused(&cfg, 0, vec![spec(), big]);
        assert_eq!(e.kind, ErrorKind::LimitReached);
        assert!(
            e.message
                .starts_with("job #2 of the batch: input of 4097 bytes"),
            "{}",
            e.message
        );
        let mut q = spec();
        q.queue = Some("nightly".into());
        let e = refused(&cfg, 0, vec![q]);
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(
            e.message.starts_with("unknown queue \"nightly\""),
            "{}",
            e.message
        );
        let e = refused(
            &cfg,
            0,
            vec![JobSpec::new("nope", Payload::Json("1".into()))],
        );
        assert_eq!(e.kind, ErrorKind::UnknownTask);
        let e = refused(
            &cfg,
            0,
            vec![JobSpec::new("echo", Payload::Json("\"x\"".into()))],
        );
        assert_eq!(e.kind, ErrorKind::BadInput);
        let mut slow = spec();
        slow.timeout_ms = Some(MAX_DURATION_MS + 1);
        let e = refused(&cfg, 0, vec![slow]);
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(
            e.message.starts_with("timeout_ms must be at most"),
            "{}",
            e.message
        );
    }

    #[test]
    fn dependencies_the_scheduler_does_not_hold_are_looked_up() {
        let cfg = Config::default();
        let mut s = spec();
        s.after = vec![1, 2];
        let mut step = JobSpec::new("echo", Payload::Json("{}".into()));
        step.input_from = vec![
            InputRef {
                job: JobRef::Id(3),
                pointer: None,
                field: None,
            },
            InputRef {
                job: JobRef::Batch(0),
                pointer: None,
                field: None,
            },
        ];
        let a = run(&cfg, 0, vec![s, step]).unwrap();
        assert_eq!(a.unknown_deps, [2, 3]);
        // A pipeline step's input is converted once its sources are done.
        let step = &a.jobs[1];
        assert_eq!(
            (step.input.len(), step.template.as_deref()),
            (0, Some("{}"))
        );
        let mut bad = spec();
        bad.after = vec![u64::MAX];
        assert!(refused(&cfg, 0, vec![bad])
            .message
            .contains("is not a job id"));
        let mut hook = spec();
        hook.notify_url = Some("ftp://example.com/".into());
        let e = refused(&cfg, 0, vec![hook]);
        assert!(
            e.message
                .starts_with("notify_url: the URL must be http or https"),
            "{}",
            e.message
        );
    }
}
