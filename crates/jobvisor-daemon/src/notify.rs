//! Completion notifications: when a job reaches a terminal state (succeeded,
//! failed, cancelled, dead), its record is POSTed as JSON to a webhook and/or
//! given to a command on its stdin.
//!
//! Who asks: the job itself (`JobSpec::notify_url`, stored with the job) and
//! its queue (`[queues.NAME]` `notify_url`, `notify_command`, filtered by
//! `notify_on`). [`Notifier::notice`] turns that into a [`Notice`] with one
//! delivery per target.
//!
//! The scheduler never waits for a notification: once a job's terminal state
//! has committed, [`Notice::send`] hands its deliveries to the notifier
//! without blocking. Each delivery first takes one of `notify.max_queued`
//! slots, held until it succeeds or is given up on; with none free it is
//! dropped, logged at error level and counted (`jobvisor stats`). The
//! notifier task spawns one task per delivery; at most
//! `notify.max_concurrency` attempts run at once (a semaphore), and a
//! delivery waiting out its backoff holds no attempt permit.
//!
//! An attempt reads the job's record from the store (so memory holds at most
//! `max_concurrency` records, not `max_queued`), serializes it with
//! [`jobvisor_proto::json::record_json`] (the shape `jobvisor status --json` prints),
//! and POSTs it or runs the command. A 2xx answer or a command's exit 0 is
//! success; anything else (another status, a connection error, a timeout, a
//! non-zero exit, a signal) is retried with the jobs' backoff rule
//! ([`crate::policy::backoff_ms`]) up to `notify.max_attempts`, then logged
//! at error level with the job id and target.
//!
//! Guarantees: at-least-once while the daemon runs (a receiver can see a
//! delivery twice: an answer lost after it was processed; dedupe on the
//! `x-jobvisor-delivery` header, `<job id>-<state>`); at-most-once across a
//! daemon stop or crash: pending deliveries live in memory only. A graceful
//! stop gives them `notify.drain_grace_ms`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobvisor_proto::control::JobState;
use jobvisor_store::StoreHandle;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use crate::bounds::MAX_QUEUED;
use crate::config::{Config, NotifySettings};
use crate::errors::{chain, Chain};
use crate::policy;

/// Bytes of a notification command's stderr kept for the log; the rest is read and discarded.
const STDERR_KEEP_BYTES: usize = 4096;
/// After a command exits, how long its stderr may take to reach EOF (a
/// background process it left may hold the pipe open).
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// Where one delivery goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// POST the record here.
    Url(String),
    /// Run this argv with the record on stdin.
    Command(Vec<String>),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Url(url) => f.write_str(&redacted(url)),
            Target::Command(argv) => write!(f, "command {argv:?}"),
        }
    }
}

/// A URL for the log, without a password it may carry.
fn redacted(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// The targets a job's terminal `state` is due at: the job's own URL (every
/// terminal state), then its queue's URL (unless the same) and command, when
/// the queue's `notify_on` lists the state.
fn targets(cfg: &Config, queue: &str, job_url: Option<&str>, state: JobState) -> Vec<Target> {
    let mut out = Vec::new();
    if !state.is_terminal() {
        return out;
    }
    if let Some(url) = job_url {
        out.push(Target::Url(url.to_owned()));
    }
    if let Some(q) = cfg.queues.get(queue).filter(|q| q.notifies_on(state)) {
        if let Some(url) = q.notify_url.as_deref().filter(|u| Some(*u) != job_url) {
            out.push(Target::Url(url.to_owned()));
        }
        if let Some(argv) = &q.notify_command {
            out.push(Target::Command(argv.clone()));
        }
    }
    out
}

/// Notification counters, reported by `jobvisor stats`.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// The notifications due for one job's terminal state; [`Notice::send`] them
/// once that state has committed.
#[derive(Debug)]
#[must_use = "a notice does nothing until it is sent"]
pub(crate) struct Notice {
    notifier: Notifier,
    job: JobFacts,
    targets: Vec<Target>,
}

/// What a delivery says about its job besides the record.
#[derive(Debug, Clone)]
struct JobFacts {
    id: u64,
    state: JobState,
    task: String,
    queue: String,
}

impl JobFacts {
    /// `<job id>-<state>`: the same for every attempt of every delivery of
    /// this transition, so receivers can dedupe.
    fn delivery_key(&self) -> String {
        format!("{}-{}", self.id, self.state.as_str())
    }
}

impl Notice {
    /// Hands the deliveries to the notifier. Never waits: a delivery for
    /// which no `notify.max_queued` slot is free is dropped (error log, counted).
    pub(crate) fn send(self) {
        let n = &self.notifier;
        for target in self.targets {
            let slot = match Arc::clone(&n.slots).try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    n.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        job = self.job.id,
                        state = self.job.state.as_str(),
                        %target,
                        max_queued = n.max_queued,
                        "notification dropped: notify.max_queued deliveries are pending"
                    );
                    continue;
                }
            };
            let d = Delivery {
                job: self.job.clone(),
                target,
                _slot: slot,
            };
            if let Err(mpsc::error::SendError(d)) = n.tx.send(d) {
                n.counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    job = d.job.id,
                    target = %d.target,
                    "notification dropped: the notifier has stopped"
                );
            }
        }
    }
}

/// One target of one job's notification, holding its `max_queued` slot.
#[derive(Debug)]
struct Delivery {
    job: JobFacts,
    target: Target,
    _slot: OwnedSemaphorePermit,
}

/// Handle of the notifier: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    /// Unbounded, but never longer than `max_queued`: a delivery is sent
    /// only with a slot.
    tx: mpsc::UnboundedSender<Delivery>,
    slots: Arc<Semaphore>,
    max_queued: usize,
    counters: Arc<Counters>,
}

/// What every delivery task shares.
#[derive(Debug)]
struct Shared {
    http: reqwest::Client,
    store: StoreHandle,
    attempts: Semaphore,
    settings: NotifySettings,
    counters: Arc<Counters>,
}

/// The notifier could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error("cannot build the notification HTTP client")]
pub struct NotifyStartError(#[source] reqwest::Error);

impl Notifier {
    /// Starts the notifier task. `settings` are validated (see [`Config::validate`]).
    ///
    /// # Errors
    /// The HTTP client could not be built (TLS set-up).
    pub(crate) fn spawn(
        settings: &NotifySettings,
        store: StoreHandle,
    ) -> Result<Self, NotifyStartError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("jobvisor/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_millis(settings.timeout_ms))
            // A redirect is an answer that is not 2xx: retried, not followed
            // (a POST turned into a GET would lose the record).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(NotifyStartError)?;
        let max_queued = settings.max_queued.clamp(1, MAX_QUEUED);
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            http,
            store,
            attempts: Semaphore::new(settings.max_concurrency.max(1)),
            settings: settings.clone(),
            counters: Arc::clone(&counters),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, shared));
        Ok(Self {
            tx,
            slots: Arc::new(Semaphore::new(max_queued)),
            max_queued,
            counters,
        })
    }

    /// The notifications due when job `id` (of `task`, in `queue`, with its
    /// own `job_url`) reaches `state` under `cfg`; `None` when there are none
    /// (not a terminal state, or nobody asked).
    pub(crate) fn notice(
        &self,
        cfg: &Config,
        id: u64,
        task: &str,
        queue: &str,
        job_url: Option<&str>,
        state: JobState,
    ) -> Option<Notice> {
        let targets = targets(cfg, queue, job_url, state);
        (!targets.is_empty()).then(|| Notice {
            notifier: self.clone(),
            job: JobFacts {
                id,
                state,
                task: task.to_owned(),
                queue: queue.to_owned(),
            },
            targets,
        })
    }

    /// Deliveries (delivered, failed for good, dropped) since start.
    pub(crate) fn counts(&self) -> (u64, u64, u64) {
        let c = &self.counters;
        (
            c.delivered.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.dropped.load(Ordering::Relaxed),
        )
    }

    /// Waits up to `grace` until no delivery is pending; returns how many
    /// still are (they are abandoned when the daemon exits).
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        let all = u32::try_from(self.max_queued).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, self.slots.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => self.max_queued - self.slots.available_permits(),
        }
    }
}

/// The notifier task: one delivery task per delivery received.
async fn run(mut rx: mpsc::UnboundedReceiver<Delivery>, shared: Arc<Shared>) {
    while let Some(d) = rx.recv().await {
        tokio::spawn(deliver(Arc::clone(&shared), d));
    }
}

/// An attempt's failure: retried, or not worth retrying.
#[derive(Debug)]
enum AttemptError {
    Retry(DeliveryError),
    GiveUp(DeliveryError),
}

/// Why one attempt of a delivery failed.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("cannot read the job")]
    ReadJob(#[source] jobvisor_store::StoreError),
    #[error("job {0} is no longer in the store (pruned?)")]
    Gone(u64),
    #[error("cannot encode the job as JSON")]
    Encode(#[source] serde_json::Error),
    /// The request failed (connection, timeout, ...).
    #[error(transparent)]
    Http(reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("empty notify_command")]
    EmptyCommand,
    #[error("cannot start {program:?}")]
    Start {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for {program:?}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program:?} did not finish within {timeout_ms} ms; killed")]
    TimedOut { program: String, timeout_ms: u128 },
    #[error("{program:?} ended with {status}{}", stderr_note(.stderr))]
    Exited {
        program: String,
        status: std::process::ExitStatus,
        /// The start of its stderr, trimmed.
        stderr: String,
    },
}

/// `; stderr: ...` after a failed command's status, when it said anything.
fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// Tries one delivery up to `notify.max_attempts` times; the slot is
/// released when this returns.
async fn deliver(shared: Arc<Shared>, d: Delivery) {
    let s = &shared.settings;
    let mut last = String::new();
    let mut attempts = 0;
    for attempt in 1..=s.max_attempts.max(1) {
        attempts = attempt;
        let result = {
            // Never closed: the semaphore lives as long as `shared`.
            let Ok(_permit) = shared.attempts.acquire().await else {
                return;
            };
            attempt_once(&shared, &d).await
        };
        match result {
            Ok(()) => {
                shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job = d.job.id, target = %d.target, attempt, "notification delivered");
                return;
            }
            Err(AttemptError::GiveUp(e)) => {
                last = chain(&e);
                break;
            }
            Err(AttemptError::Retry(e)) => {
                if attempt < s.max_attempts {
                    let delay = retry_delay(s, attempt, policy::jitter_seed());
                    tracing::warn!(
                        job = d.job.id,
                        target = %d.target,
                        attempt,
                        error = %Chain(&e),
                        retry_in_ms = delay.as_millis() as u64,
                        "notification attempt failed"
                    );
                    tokio::time::sleep(delay).await;
                }
                last = chain(&e);
            }
        }
    }
    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        job = d.job.id,
        state = d.job.state.as_str(),
        target = %d.target,
        attempts,
        error = %last,
        "notification failed; giving up"
    );
}

/// The delay after failed attempt `attempt` (1-based): the jobs' rule,
/// `backoff_base_ms × 2^(attempt−1)` capped at `backoff_max_ms`, half of it random.
fn retry_delay(s: &NotifySettings, attempt: u32, random: u64) -> Duration {
    Duration::from_millis(policy::backoff_ms(
        s.backoff_base_ms,
        s.backoff_max_ms,
        attempt,
        random,
    ))
}

async fn attempt_once(shared: &Shared, d: &Delivery) -> Result<(), AttemptError> {
    let record = match shared.store.get(d.job.id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(AttemptError::GiveUp(DeliveryError::Gone(d.job.id))),
        Err(e) => return Err(AttemptError::Retry(DeliveryError::ReadJob(e))),
    };
    let body = jobvisor_proto::json::record_json(&record)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| AttemptError::GiveUp(DeliveryError::Encode(e)))?;
    drop(record);
    let timeout = Duration::from_millis(shared.settings.timeout_ms);
    match &d.target {
        Target::Url(url) => post(&shared.http, url, &d.job, body).await,
        Target::Command(argv) => run_command(argv, &d.job, body, timeout).await,
    }
    .map_err(AttemptError::Retry)
}

/// One webhook POST; `Ok` for a 2xx answer.
async fn post(
    http: &reqwest::Client,
    url: &str,
    job: &JobFacts,
    body: Vec<u8>,
) -> Result<(), DeliveryError> {
    let response = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-jobvisor-event", format!("job.{}", job.state.as_str()))
        .header("x-jobvisor-delivery", job.delivery_key())
        .body(body)
        .send()
        .await
        .map_err(DeliveryError::Http)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Status(status))
    }
}

/// Runs a notification command (fork+exec, its own process group) with the
/// record on stdin and the job in its environment; `Ok` for exit 0. Past
/// `timeout` its process group is killed. The child is always reaped.
async fn run_command(
    argv: &[String],
    job: &JobFacts,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(DeliveryError::EmptyCommand);
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("JOBVISOR_JOB_ID", job.id.to_string())
        .env("JOBVISOR_JOB_STATE", job.state.as_str())
        .env("JOBVISOR_JOB_TASK", &job.task)
        .env("JOBVISOR_JOB_QUEUE", &job.queue)
        .env("JOBVISOR_DELIVERY", job.delivery_key())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DeliveryError::Start {
            program: program.clone(),
            source,
        })?;
    let stdin = child.stdin.take();
    let stderr = tokio::spawn(read_capped(child.stderr.take(), STDERR_KEEP_BYTES));
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its stdin is not an error.
            let _ = stdin.write_all(&body).await;
        }
        // Dropped here: the command sees EOF.
    };
    let waited = tokio::time::timeout(timeout, async {
        let ((), status) = tokio::join!(feed, child.wait());
        status
    })
    .await;
    let status = match waited {
        Ok(status) => status.map_err(|source| DeliveryError::Wait {
            program: program.clone(),
            source,
        })?,
        Err(_) => {
            if let Some(pid) = child.id() {
                // Its process group (pgid = its pid): whatever it started too.
                // The pgid stays reserved until we reap the leader below.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            stderr.abort();
            return Err(DeliveryError::TimedOut {
                program: program.clone(),
                timeout_ms: timeout.as_millis(),
            });
        }
    };
    if status.success() {
        stderr.abort();
        return Ok(());
    }
    let tail = match tokio::time::timeout(STDERR_GRACE, stderr).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        _ => String::new(),
    };
    Err(DeliveryError::Exited {
        program: program.clone(),
        status,
        stderr: tail,
    })
}

/// Reads `from` to EOF, keeping the first `keep` bytes.
async fn read_capped(from: Option<impl AsyncRead + Unpin>, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut from) = from else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QueueConfig, TerminalState};

    #[test]
    fn retry_delays_double_with_jitter_within_their_bounds() {
        let s = NotifySettings::default(); // 500 ms, capped at 30 s
        for random in [0, 1, 12_345, u64::MAX] {
            for attempt in 1..=12u32 {
                let full = (500u64 << (attempt - 1)).min(30_000);
                let d = retry_delay(&s, attempt, random).as_millis() as u64;
                assert!(
                    (full / 2..=full).contains(&d),
                    "attempt {attempt}: {d} ms not in [{}, {full}]",
                    full / 2
                );
            }
        }
        let zero = NotifySettings {
            backoff_base_ms: 0,
            backoff_max_ms: 0,
            ..NotifySettings::default()
        };
        assert_eq!(retry_delay(&zero, 3, 99), Duration::ZERO);
    }

    #[test]
    fn urls_in_the_log_hide_their_password() {
        assert_eq!(
            redacted("https://u:secret@example.com/x"),
            "https://u:***@example.com/x"
        );
    }

    #[test]
    fn targets_follow_the_job_and_its_queue() {
        let mut cfg = Config::default();
        cfg.queues.insert(
            "q".into(),
            QueueConfig {
                notify_url: Some("http://queue/".into()),
                notify_command: Some(vec!["true".into()]),
                notify_on: Some(vec![TerminalState(JobState::Failed)]),
                ..QueueConfig::default()
            },
        );
        let url = |u: &str| Target::Url(u.into());
        let cmd = Target::Command(vec!["true".into()]);
        // The job's own URL hears of every terminal state; the queue only of `notify_on`.
        assert_eq!(
            targets(&cfg, "q", Some("http://job/"), JobState::Succeeded),
            vec![url("http://job/")]
        );
        assert_eq!(
            targets(&cfg, "q", Some("http://job/"), JobState::Failed),
            vec![url("http://job/"), url("http://queue/"), cmd.clone()]
        );
        // The same URL twice is one delivery.
        assert_eq!(
            targets(&cfg, "q", Some("http://queue/"), JobState::Failed),
            vec![url("http://queue/"), cmd]
        );
        assert!(targets(&cfg, "q", Some("http://job/"), JobState::Retrying).is_empty());
        assert!(targets(&cfg, "default", None, JobState::Dead).is_empty());
        assert!(targets(&cfg, "gone", None, JobState::Failed).is_empty());
    }

    fn facts() -> JobFacts {
        JobFacts {
            id: 42,
            state: JobState::Dead,
            task: "hash".into(),
            queue: "io".into(),
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_command_gets_the_record_on_stdin_and_the_job_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "cat > '{o}'; echo \"$JOBVISOR_JOB_ID $JOBVISOR_JOB_STATE $JOBVISOR_JOB_TASK \
             $JOBVISOR_JOB_QUEUE $JOBVISOR_DELIVERY\" >> '{o}'",
            o = out.display()
        );
        run_command(
            &sh(&script),
            &facts(),
            b"{\"id\":42}\n".to_vec(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":42}\n42 dead hash io 42-dead\n"
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_capped_stderr() {
        let e = run_command(
            &sh("head -c 100000 /dev/zero | tr '\\0' x >&2; exit 3"),
            &facts(),
            Vec::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(
            e.len() < STDERR_KEEP_BYTES + 200,
            "stderr is capped: {} bytes",
            e.len()
        );
        let e = run_command(
            &["/nonexistent/notify".into()],
            &facts(),
            Vec::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot start"), "{e}");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A child in the background, too: the whole group goes. The shell
        // writes the pid file before its own `sleep`, but the timeout runs
        // from the spawn: it must leave a loaded machine time to start the
        // shell and the background child and write the file, or the shell
        // is killed first and there is no pid to check. The file is written
        // by then or never (its writer is dead), so there is nothing to wait
        // for afterwards: a missing pid is a timeout that was too short for
        // the machine, and says so.
        const TIMEOUT: Duration = Duration::from_secs(3);
        let script = format!("sleep 30 & echo $! > '{}'; sleep 30", pids.display());
        let started = std::time::Instant::now();
        let e = run_command(&sh(&script), &facts(), Vec::new(), TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish"), "{e}");
        let took = started.elapsed();
        assert!(took >= TIMEOUT, "killed after {took:?}");
        // The shell and its background child sleep 30 s.
        assert!(took < Duration::from_secs(20), "killed after {took:?}");
        let written = std::fs::read_to_string(&pids).unwrap_or_default();
        let bg: i32 = written.trim().parse().unwrap_or_else(|_| {
            panic!("the shell wrote no background pid ({written:?}) within the {TIMEOUT:?} timeout")
        });
        // The background sleep was SIGKILLed (it is a zombie of init, or gone).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            let zombie_or_gone = state.is_empty()
                || state
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            if zombie_or_gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "background child lives: {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn deliveries_past_max_queued_are_dropped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = jobvisor_store::SqliteStore::open(&dir.path().join("jobs.db")).unwrap();
        let store = StoreHandle::spawn(store).unwrap();
        let settings = NotifySettings {
            max_queued: 2,
            max_concurrency: 1,
            max_attempts: 1,
            ..NotifySettings::default()
        };
        let n = Notifier::spawn(&settings, store).unwrap();
        let mut cfg = Config::default();
        cfg.queues.insert(
            "q".into(),
            QueueConfig {
                notify_command: Some(vec!["true".into()]),
                ..QueueConfig::default()
            },
        );
        // Sent without yielding: no delivery task has run (nor freed its slot) yet.
        let hook = Some("http://127.0.0.1:9/");
        n.notice(&cfg, 1, "t", "q", hook, JobState::Failed)
            .expect("two targets")
            .send();
        n.notice(&cfg, 2, "t", "q", None, JobState::Succeeded)
            .expect("the queue's command")
            .send();
        assert_eq!(n.counts(), (0, 0, 1), "two slots, three deliveries");
        assert!(n
            .notice(&cfg, 3, "t", "default", None, JobState::Failed)
            .is_none());
        // Job 1 is not in the store: both its deliveries give up after reading it.
        assert_eq!(n.drain(Duration::from_secs(10)).await, 0);
        assert_eq!(n.counts(), (0, 2, 1));
    }
}
