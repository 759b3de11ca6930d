//! Completion notifications: when a job reaches a terminal state (succeeded,
//! failed, cancelled, dead), its record is POSTed as JSON to a webhook and/or
//! given to a command on its stdin.
//!
//! Who asks: the job itself (`JobSpec::notify_url`, stored with the job) and
//! its queue (`[queues.NAME]` `notify_url`, `notify_command`, filtered by
//! `notify_on`). [`Notifier::notice`] turns that into a [`Notice`] with one
//! delivery per target.
//!
//! A durable outbox: the scheduler writes a notice's deliveries into the
//! store's `outbox` table in the same transaction as the terminal state
//! that causes them ([`Notice::deliveries`]), so a state that committed has
//! its notifications and one that did not has none. Once it has committed,
//! [`Notice::send`] wakes the notifier task, which reads the rows written
//! since it last looked (at start: every row, so what a crash interrupted
//! goes out after the restart) and spawns a task per row. Each row takes
//! one of `notify.max_queued` slots from the notice until it is delivered
//! or given up on; with none free a delivery is dropped, logged at error
//! level and counted (`jobvisor stats`). At most `notify.max_concurrency`
//! attempts run at once (a semaphore); a delivery waiting out its backoff
//! holds no attempt permit.
//!
//! An attempt reads the job's record from the store (so memory holds at most
//! `max_concurrency` records, not `max_queued`), serializes it with
//! [`jobvisor_proto::json::record_json`] (the shape `jobvisor status --json` prints),
//! and POSTs it or runs the command (`send`). A 2xx answer or a command's exit 0 is
//! success: the row is deleted. Anything else (another status, a connection error, a timeout, a
//! non-zero exit, a signal) is recorded in the row (attempts made, when the
//! next is due) and retried with the jobs' backoff rule
//! ([`crate::policy::backoff_ms`]) up to `notify.max_attempts` in all,
//! across restarts; then the row is deleted and the failure logged at error
//! level with the job id and target.
//!
//! Guarantees: at-least-once, across a daemon crash too. A receiver can see
//! a delivery twice (an answer lost after it was processed, a crash after
//! the POST and before the row was deleted): every attempt of a delivery,
//! before or after a restart, carries the same `x-jobvisor-delivery` id
//! (`<job id>-<epoch>-<state>`, the epoch counting the job's `retry`s) to
//! dedupe on. With a secret (`notify.secret` or `secret_env`, a queue's
//! `notify_secret` for its `notify_url`; read at start), a webhook also
//! carries `x-jobvisor-signature: sha256=<hex HMAC-SHA256(secret, body)>` and
//! `x-jobvisor-timestamp`. A graceful stop gives pending
//! deliveries `notify.drain_grace_ms`; what is left goes out after the next start.

mod send;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use jobvisor_proto::control::JobState;
use jobvisor_store::{Delivery, NewDelivery, StoreError, StoreHandle};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::bounds::MAX_QUEUED;
use crate::config::{Config, NotifySettings};
use crate::errors::{chain, Chain};
use crate::policy;
use send::{post, run_command, DeliveryError, JobFacts};

/// Outbox rows read in one go.
const PAGE: u32 = 256;
/// After a failed read of the outbox, when to look again.
const REREAD: Duration = Duration::from_secs(1);

/// Where one delivery goes. Stored in the outbox row as JSON
/// (`{"url": "..."}`, `{"command": [...]}`), so it survives a restart as
/// it was decided, whatever the configuration says by then.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// The notifications due for one job's terminal state: write
/// [`Notice::deliveries`] with that state, then [`Notice::send`] once it
/// has committed. Dropped unsent (the write failed), it frees its slots.
#[derive(Debug)]
#[must_use = "a notice does nothing until it is sent"]
pub(crate) struct Notice {
    notifier: Notifier,
    state: JobState,
    /// One per target, each with its `max_queued` slot.
    targets: Vec<(Target, OwnedSemaphorePermit)>,
}

impl Notice {
    /// The outbox rows to write in the transaction of the job's state.
    pub(crate) fn deliveries(&self) -> Vec<NewDelivery> {
        self.targets
            .iter()
            .filter_map(|(target, _)| match serde_json::to_string(target) {
                Ok(target) => Some(NewDelivery {
                    state: self.state,
                    target,
                }),
                // Strings and lists of strings always encode.
                Err(_) => None,
            })
            .collect()
    }

    /// The state (and its rows) has committed: the rows keep their slots
    /// until they are done, and the notifier goes to read them. Never waits.
    pub(crate) fn send(self) {
        for (_, slot) in self.targets {
            // Given back by the delivery task of its row.
            slot.forget();
        }
        self.notifier.wake.notify_one();
    }
}

/// Handle of the notifier: cheap to clone, never blocks.
#[derive(Debug, Clone)]
pub(crate) struct Notifier {
    /// One per outbox row (`max_queued`).
    slots: Arc<Semaphore>,
    max_queued: usize,
    counters: Arc<Counters>,
    /// Rows were written: read them.
    wake: Arc<Notify>,
}

/// What every delivery task shares.
#[derive(Debug)]
struct Shared {
    http: reqwest::Client,
    store: StoreHandle,
    attempts: Semaphore,
    slots: Arc<Semaphore>,
    settings: NotifySettings,
    counters: Arc<Counters>,
    /// Webhook signing secrets, read at start (`notify.secret[_env]`).
    secrets: Secrets,
}

/// Which secret signs which webhook.
#[derive(Debug, Default)]
struct Secrets {
    /// `notify.secret` (or its `secret_env`): jobs' own `--notify-url`, and
    /// queues without their own.
    global: Option<String>,
    /// Per queue: its `notify_url` and `notify_secret`.
    queues: std::collections::BTreeMap<String, (String, String)>,
}

impl Secrets {
    fn from_config(cfg: &Config) -> Result<Self, crate::config::ConfigError> {
        let queues = cfg
            .queues
            .iter()
            .filter_map(|(name, q)| {
                let pair = (q.notify_url.clone()?, q.notify_secret.clone()?);
                Some((name.clone(), pair))
            })
            .collect();
        Ok(Self {
            global: cfg.webhook_secret()?,
            queues,
        })
    }

    /// The secret for a POST to `url` about a job of `queue`: the queue's
    /// when `url` is its `notify_url`, else the global one.
    fn for_url(&self, queue: &str, url: &str) -> Option<&str> {
        match self.queues.get(queue) {
            Some((queue_url, secret)) if queue_url == url => Some(secret),
            _ => self.global.as_deref(),
        }
    }
}

/// The notifier could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyStartError {
    /// The HTTP client could not be built (TLS set-up).
    #[error("cannot build the notification HTTP client")]
    Http(#[source] reqwest::Error),
    /// The outbox could not be read.
    #[error("cannot read the notification outbox")]
    Outbox(#[source] StoreError),
    /// The webhook secret could not be read (`notify.secret_env`).
    #[error("no webhook signing secret")]
    Secret(#[source] crate::config::ConfigError),
}

impl Notifier {
    /// Reads the outbox (every notification a previous run left pending
    /// takes a slot), then starts the notifier task, which delivers them
    /// and every one written later. `cfg` is validated (see
    /// [`Config::validate`]); its `[notify]` settings and signing secrets
    /// are read now only.
    ///
    /// # Errors
    /// The HTTP client could not be built, the outbox could not be read, or
    /// `notify.secret_env` names no usable variable.
    pub(crate) async fn spawn(cfg: &Config, store: StoreHandle) -> Result<Self, NotifyStartError> {
        let settings = &cfg.notify;
        let secrets = Secrets::from_config(cfg).map_err(NotifyStartError::Secret)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("jobvisor/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_millis(settings.timeout_ms))
            // A redirect is an answer that is not 2xx: retried, not followed
            // (a POST turned into a GET would lose the record).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(NotifyStartError::Http)?;
        let mut left = Vec::new();
        loop {
            let after = left.last().map_or(0, |d: &Delivery| d.id);
            let page = store
                .deliveries_after(after, PAGE)
                .await
                .map_err(NotifyStartError::Outbox)?;
            let more = page.len() == PAGE as usize;
            left.extend(page);
            if !more {
                break;
            }
        }
        let max_queued = settings.max_queued.clamp(1, MAX_QUEUED);
        let slots = Arc::new(Semaphore::new(max_queued));
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            http,
            store,
            attempts: Semaphore::new(settings.max_concurrency.max(1)),
            slots: Arc::clone(&slots),
            settings: settings.clone(),
            counters: Arc::clone(&counters),
            secrets,
        });
        if !left.is_empty() {
            tracing::info!(
                pending = left.len(),
                "notifications left pending by the previous run go out again"
            );
        }
        let seen = left.last().map_or(0, |d| d.id);
        for d in left {
            // More rows than slots (a lowered notify.max_queued): all go out.
            let holds_slot = slots.try_acquire().map(|p| p.forget()).is_ok();
            tokio::spawn(deliver(Arc::clone(&shared), d, holds_slot));
        }
        let wake = Arc::new(Notify::new());
        tokio::spawn(run(shared, Arc::clone(&wake), seen));
        Ok(Self {
            slots,
            max_queued,
            counters,
            wake,
        })
    }

    /// The notifications due when job `id` (of `task`, in `queue`, with its
    /// own `job_url`) reaches `state` under `cfg`; `None` when there are none
    /// (not a terminal state, or nobody asked, or no slot was free: then each
    /// is dropped, logged and counted).
    pub(crate) fn notice(
        &self,
        cfg: &Config,
        id: u64,
        queue: &str,
        job_url: Option<&str>,
        state: JobState,
    ) -> Option<Notice> {
        let mut slotted = Vec::new();
        for target in targets(cfg, queue, job_url, state) {
            match Arc::clone(&self.slots).try_acquire_owned() {
                Ok(slot) => slotted.push((target, slot)),
                Err(_) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        job = id,
                        state = state.as_str(),
                        %target,
                        max_queued = self.max_queued,
                        "notification dropped: notify.max_queued deliveries are pending"
                    );
                }
            }
        }
        (!slotted.is_empty()).then(|| Notice {
            notifier: self.clone(),
            state,
            targets: slotted,
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
    /// still are (they stay in the outbox and go out after the next start).
    pub(crate) async fn drain(&self, grace: Duration) -> usize {
        let all = u32::try_from(self.max_queued).unwrap_or(u32::MAX);
        match tokio::time::timeout(grace, self.slots.acquire_many(all)).await {
            Ok(_) => 0,
            Err(_) => self.max_queued - self.slots.available_permits(),
        }
    }
}

/// Milliseconds since the Unix epoch: the clock of the outbox's times (the
/// scheduler's, which `notify` does not reach up to).
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The notifier task: whenever woken, reads the outbox rows written since
/// the last one it saw (`seen`) and spawns a delivery task per row. Rows
/// are written by one store thread, so their ids grow in commit order.
async fn run(shared: Arc<Shared>, wake: Arc<Notify>, mut seen: u64) {
    loop {
        match shared.store.deliveries_after(seen, PAGE).await {
            Ok(rows) => {
                let more = rows.len() == PAGE as usize;
                for d in rows {
                    seen = seen.max(d.id);
                    tokio::spawn(deliver(Arc::clone(&shared), d, true));
                }
                if more {
                    continue;
                }
                // A wake sent meanwhile is kept: this returns at once then.
                wake.notified().await;
            }
            Err(StoreError::Closed) => return,
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "cannot read the notification outbox; trying again");
                tokio::time::sleep(REREAD).await;
            }
        }
    }
}

/// An attempt's failure: retried, or not worth retrying.
#[derive(Debug)]
enum AttemptError {
    Retry(DeliveryError),
    GiveUp(DeliveryError),
}

/// Delivers one outbox row: waits until it is due, tries it up to
/// `notify.max_attempts` in all (attempts made before a restart count),
/// recording each failure in the row, and deletes the row when it is
/// delivered or given up on. Gives its slot back (`holds_slot`) at the end.
async fn deliver(shared: Arc<Shared>, d: Delivery, holds_slot: bool) {
    deliver_row(&shared, &d).await;
    if holds_slot {
        shared.slots.add_permits(1);
    }
}

async fn deliver_row(shared: &Shared, d: &Delivery) {
    let s = &shared.settings;
    let target: Target = match serde_json::from_str(&d.target) {
        Ok(t) => t,
        Err(e) => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(job = d.job_id, row = d.id, error = %e, target = %d.target, "notification target unreadable; giving up");
            finish(shared, d).await;
            return;
        }
    };
    let wait = d.next_at_ms.saturating_sub(now_ms());
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let max = s.max_attempts.max(1);
    let mut last = String::from("no attempt left (notify.max_attempts)");
    let mut attempt = d.attempts;
    while attempt < max {
        attempt += 1;
        let result = {
            // Never closed: the semaphore lives as long as `shared`.
            let Ok(_permit) = shared.attempts.acquire().await else {
                return;
            };
            attempt_once(shared, d, &target).await
        };
        match result {
            Ok(()) => {
                shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(job = d.job_id, %target, attempt, "notification delivered");
                finish(shared, d).await;
                return;
            }
            Err(AttemptError::GiveUp(e)) => {
                last = chain(&e);
                break;
            }
            Err(AttemptError::Retry(e)) => {
                last = chain(&e);
                if attempt < max {
                    let delay = retry_delay(s, attempt, policy::jitter_seed());
                    tracing::warn!(
                        job = d.job_id,
                        %target,
                        attempt,
                        error = %Chain(&e),
                        retry_in_ms = delay.as_millis() as u64,
                        "notification attempt failed"
                    );
                    let next_at = now_ms().saturating_add(delay.as_millis() as u64);
                    let record =
                        shared
                            .store
                            .delivery_attempted(d.id, attempt, next_at, last.clone());
                    if let Err(e) = record.await {
                        tracing::warn!(job = d.job_id, error = %Chain(&e), "cannot record a notification attempt");
                    }
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
    shared.counters.failed.fetch_add(1, Ordering::Relaxed);
    tracing::error!(
        job = d.job_id,
        state = d.state.as_str(),
        %target,
        attempts = attempt,
        error = %last,
        "notification failed; giving up"
    );
    finish(shared, d).await;
}

/// Deletes a row that is done with. If that fails, the row stays: it goes
/// out again after a restart (at-least-once).
async fn finish(shared: &Shared, d: &Delivery) {
    if let Err(e) = shared.store.delivery_done(d.id).await {
        tracing::warn!(job = d.job_id, row = d.id, error = %Chain(&e), "cannot remove a finished notification from the outbox; it may go out again after a restart");
    }
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

async fn attempt_once(shared: &Shared, d: &Delivery, target: &Target) -> Result<(), AttemptError> {
    let record = match shared.store.get(d.job_id).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(AttemptError::GiveUp(DeliveryError::Gone(d.job_id))),
        Err(e) => return Err(AttemptError::Retry(DeliveryError::ReadJob(e))),
    };
    let body = jobvisor_proto::json::record_json(&record)
        .and_then(|v| serde_json::to_vec(&v))
        .map_err(|e| AttemptError::GiveUp(DeliveryError::Encode(e)))?;
    let job = JobFacts {
        id: d.job_id,
        epoch: d.epoch,
        state: d.state,
        task: record.task,
        queue: record.queue,
    };
    let timeout = Duration::from_millis(shared.settings.timeout_ms);
    match target {
        Target::Url(url) => {
            let secret = shared.secrets.for_url(&job.queue, url);
            post(&shared.http, url, &job, body, secret).await
        }
        Target::Command(argv) => run_command(argv, &job, body, timeout).await,
    }
    .map_err(AttemptError::Retry)
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

    #[test]
    fn targets_are_stored_as_json_and_read_back() {
        let url = Target::Url("http://h/x".into());
        let cmd = Target::Command(vec!["/bin/true".into(), "a b".into()]);
        assert_eq!(
            serde_json::to_string(&url).unwrap(),
            r#"{"url":"http://h/x"}"#
        );
        assert_eq!(
            serde_json::to_string(&cmd).unwrap(),
            r#"{"command":["/bin/true","a b"]}"#
        );
        for t in [url, cmd] {
            let text = serde_json::to_string(&t).unwrap();
            assert_eq!(serde_json::from_str::<Target>(&text).unwrap(), t);
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
        let n = Notifier::spawn(
            &Config {
                notify: settings,
                ..Config::default()
            },
            store,
        )
        .await
        .unwrap();
        let mut cfg = Config::default();
        cfg.queues.insert(
            "q".into(),
            QueueConfig {
                notify_command: Some(vec!["true".into()]),
                ..QueueConfig::default()
            },
        );
        let hook = Some("http://127.0.0.1:9/");
        let first = n
            .notice(&cfg, 1, "q", hook, JobState::Failed)
            .expect("two targets");
        assert_eq!(first.deliveries().len(), 2);
        let second = n.notice(&cfg, 2, "q", None, JobState::Succeeded);
        assert!(second.is_none(), "both slots are taken");
        assert_eq!(n.counts(), (0, 0, 1), "two slots, three deliveries");
        assert!(n
            .notice(&cfg, 3, "default", None, JobState::Failed)
            .is_none());
        // Unsent (its state's write failed): the slots are free again.
        drop(first);
        assert_eq!(n.drain(Duration::from_secs(10)).await, 0);
        let again = n.notice(&cfg, 2, "q", None, JobState::Succeeded);
        assert_eq!(again.expect("a slot is free").deliveries().len(), 1);
    }
}
