//! Daemon configuration: a TOML file (`config/jobvisor.toml` documents every
//! key with its default), overridden by command-line flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use jobvisor_pool::StartMethod;
use jobvisor_proto::control::{JobSpec, JobState};
use serde::Deserialize;

/// Values of duration keys: an integer in the key's unit (`_ms`: ms, `_secs`:
/// seconds), as every such key took before and still means, or a text
/// with units (`"1.5s"`, `"30m"`, `"7d"`) read by the CLI's parser.
mod human {
    use std::fmt;

    use serde::de::{self, Deserializer, Visitor};

    /// A `_ms` key: ms, or a human duration.
    pub(super) fn ms<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(InUnit { unit_ms: 1 })
    }

    /// A `_secs` key: seconds, or a human duration of whole seconds.
    pub(super) fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(InUnit { unit_ms: 1000 })
    }

    /// Reads a duration into a count of `unit_ms`.
    struct InUnit {
        unit_ms: u64,
    }

    impl Visitor<'_> for InUnit {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            let unit = if self.unit_ms == 1 { "ms" } else { "seconds" };
            write!(
                f,
                "a number of {unit} or a duration with units such as \"1.5s\", \"30m\", \"7d\""
            )
        }

        fn visit_u64<E: de::Error>(self, n: u64) -> Result<u64, E> {
            Ok(n)
        }

        fn visit_i64<E: de::Error>(self, n: i64) -> Result<u64, E> {
            u64::try_from(n).map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<u64, E> {
            in_unit(text, self.unit_ms).map_err(E::custom)
        }
    }

    /// `text` as a count of `unit_ms`; a remainder is refused, not rounded.
    pub(super) fn in_unit(text: &str, unit_ms: u64) -> Result<u64, String> {
        let d = jobvisor_proto::duration::parse_duration(text)?;
        let ms = u64::try_from(d.as_millis()).map_err(|_| format!("`{text}` is too long"))?;
        if ms % unit_ms != 0 {
            return Err(format!("`{text}` is not a whole number of seconds"));
        }
        Ok(ms / unit_ms)
    }
}

/// Largest `limits.event_history`: the kept events are memory.
const MAX_EVENT_HISTORY: usize = 1_000_000;

/// Largest `pool.max_deaths_per_call`: a call re-run that often is charged.
const MAX_DEATHS_PER_CALL: u32 = 1000;
/// Largest `pool.cancel_grace_ms` / `pool.term_grace_ms`.
const MAX_GRACE_MS: u64 = 3_600_000;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the job database, the lock and (by default) the socket live.
    pub state_dir: Option<PathBuf>,
    /// The control socket (default `<state_dir>/control.sock`).
    pub socket: Option<PathBuf>,
    /// Worker processes; 0 = one per core.
    pub workers: usize,
    /// `forkserver` or `spawn`.
    pub start_method: String,
    /// Limits.
    pub limits: Limits,
    /// Job defaults.
    pub jobs: JobDefaults,
    /// Retention of finished jobs.
    pub retention: Retention,
    /// Worker processes: memory limits and restart intensity.
    pub pool: PoolSettings,
    /// Completion notifications: limits shared by every queue and job.
    pub notify: NotifySettings,
    /// Named queues.
    pub queues: BTreeMap<String, QueueConfig>,
    /// Where the jobs are stored.
    pub store: StoreSettings,
    /// The HTTP/JSON API (off unless `listen` is set).
    pub http: HttpSettings,
    /// The audit log of mutations.
    pub audit: AuditSettings,
}

/// `[audit]`: the JSON-lines log of every mutation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// The log; default `<state_dir>/audit.log`, `""` = no audit log.
    pub file: Option<PathBuf>,
    /// Rotate when a line would take the file past this (bytes).
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` ... `.keep`).
    pub keep: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            file: None,
            max_bytes: 16 << 20,
            keep: 5,
        }
    }
}

/// `[http]`: the HTTP/JSON API, its limits and who may use it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// `host:port` to listen on; unset = no HTTP listener.
    pub listen: Option<String>,
    /// Listen on a non-loopback address without TLS (a warning is logged).
    pub allow_plaintext: bool,
    /// Largest request body (bytes); larger gets 413.
    pub max_body_bytes: usize,
    /// Largest request head, request line and headers (bytes).
    pub max_header_bytes: usize,
    /// A request's head must arrive within this of its first byte, and its
    /// body within this of its head; else the connection is closed.
    #[serde(deserialize_with = "human::ms")]
    pub request_timeout_ms: u64,
    /// A kept-alive connection that starts no request for this long is closed.
    #[serde(deserialize_with = "human::ms")]
    pub idle_timeout_ms: u64,
    /// Connections at once; more get 503 and are closed.
    pub max_connections: usize,
    /// Longest `GET /v1/jobs/{id}/wait?timeout=` (longer is cut to it).
    #[serde(deserialize_with = "human::ms")]
    pub max_wait_ms: u64,
    /// Bearer tokens, stored as SHA-256 (`jobvisor token new` prints one).
    pub tokens: Vec<crate::access::TokenConfig>,
    /// TLS: the listener speaks HTTPS only.
    pub tls: Option<TlsSettings>,
}

/// `[http.tls]`: a certificate chain and its key (PEM), and optionally the
/// CA whose client certificates are required (mutual TLS).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The server's certificate chain, PEM, leaf first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Require a client certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: None,
            allow_plaintext: false,
            max_body_bytes: 16 << 20,
            max_header_bytes: 16 << 10,
            request_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 256,
            max_wait_ms: 300_000,
            tokens: Vec::new(),
            tls: None,
        }
    }
}

/// `[store]`: where the jobs live and, on PostgreSQL, how this node takes
/// part in the cluster.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite:PATH` or `postgres://user@host:port/db`; default
    /// `sqlite:<state dir>/jobs.db`.
    pub url: Option<String>,
    /// On PostgreSQL: how long a silent node keeps its jobs before other
    /// nodes take them (1 s to 1 h).
    #[serde(deserialize_with = "human::ms")]
    pub lease_ms: u64,
    /// This node's name in the cluster; default `<host name>-<pid>`.
    pub node_name: Option<String>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: None,
            lease_ms: 10_000,
            node_name: None,
        }
    }
}

/// Bounds of `[store] lease_ms`.
const LEASE_MS: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;

/// Every bound, each with its key.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Jobs accepted and not finished (queued, waiting, running, retrying).
    pub max_queued_jobs: usize,
    /// Largest job input (bytes).
    pub max_input_bytes: usize,
    /// Largest job output kept (bytes); a larger output fails its job at once
    /// (see `policy::on_output`).
    pub max_output_bytes: usize,
    /// Concurrent control connections.
    pub max_connections: usize,
    /// Largest control-socket frame (bytes).
    pub max_frame_bytes: usize,
    /// Bytes all control connections' request buffers may hold at once; a
    /// connection whose buffer would pass it is refused and closed.
    pub max_buffered_bytes: usize,
    /// Jobs in one submit request.
    pub max_batch_jobs: usize,
    /// Distinct job ids in one `wait` request (repeated ids count once).
    pub max_wait_ids: usize,
    /// Client requests waiting for the scheduler to take them; one more
    /// is refused as busy (`LimitReached`) instead of being buffered.
    pub max_pending_requests: usize,
    /// Longest idempotency key (bytes).
    pub max_key_bytes: usize,
    /// A client must complete its hello within this (ms).
    #[serde(deserialize_with = "human::ms")]
    pub handshake_timeout_ms: u64,
    /// A connection that starts no request for this long after its hello or
    /// its last answer is closed (ms), so silent clients give their slot back.
    #[serde(deserialize_with = "human::ms")]
    pub idle_timeout_ms: u64,
    /// A request that has begun must arrive whole within this (ms), and each
    /// answer (or event of a subscription) must be taken by the client within
    /// it: a client that trickles bytes cannot keep its slot. Not the time a
    /// request takes to be answered (`wait` and `events --follow` may last).
    #[serde(deserialize_with = "human::ms")]
    pub request_timeout_ms: u64,
    /// Recent job and worker events kept for `jobvisor events` (the oldest
    /// is dropped past it); 0 keeps none.
    pub event_history: usize,
}

/// Defaults for jobs that do not say.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobDefaults {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// First retry delay (ms); doubles per attempt, with jitter.
    #[serde(deserialize_with = "human::ms")]
    pub backoff_base_ms: u64,
    /// Retry delay cap (ms).
    #[serde(deserialize_with = "human::ms")]
    pub backoff_max_ms: u64,
    /// Default crash budget (1 to 1000; a job may set its own,
    /// `max_crashes`): a job under which this many workers died, or the
    /// daemon itself, is dead-lettered (`dead`), whatever its attempt budget.
    pub max_crashes: u32,
    /// On SIGTERM, how long running jobs may finish before they are stopped
    /// (and re-queued for the next start).
    #[serde(deserialize_with = "human::ms")]
    pub drain_grace_ms: u64,
}

/// Retention of finished jobs.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Finished jobs older than this are deleted (seconds).
    #[serde(deserialize_with = "human::secs")]
    pub max_age_secs: u64,
    /// At most this many finished jobs are kept.
    pub max_jobs: u64,
    /// How often pruning runs (seconds).
    #[serde(deserialize_with = "human::secs")]
    pub prune_interval_secs: u64,
}

/// Worker memory limits and restart intensity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Hard memory limit per worker (bytes, address space); 0 = none. A task
    /// that allocates past it kills its worker and is charged "memory limit
    /// exceeded" (a crash, counted against `jobs.max_crashes`).
    pub memory_limit_bytes: u64,
    /// Soft memory limit per worker (bytes, resident); 0 = none. A worker
    /// above it after a task is recycled; nothing fails.
    pub memory_soft_limit_bytes: u64,
    /// More than this many worker deaths within `restart_window_ms` and
    /// restarts are delayed (the daemon reports itself degraded).
    pub max_restarts: u32,
    /// See `max_restarts`.
    #[serde(deserialize_with = "human::ms")]
    pub restart_window_ms: u64,
    /// First restart delay once degraded; doubles per further death.
    #[serde(deserialize_with = "human::ms")]
    pub restart_backoff_ms: u64,
    /// Cap of the restart delay.
    #[serde(deserialize_with = "human::ms")]
    pub restart_backoff_max_ms: u64,
    /// Degraded → healthy after this long without a worker death.
    #[serde(deserialize_with = "human::ms")]
    pub healthy_after_ms: u64,
    /// Async (I/O) tasks running at once on each worker's event loop. They
    /// do not take CPU slots: a worker runs one CPU task and up to this many
    /// I/O tasks at the same time.
    pub io_concurrency_per_worker: usize,
    /// After a job's timeout (or cancel, or stall), how long its task gets to
    /// stop by itself before its worker's process group gets SIGTERM (ms).
    #[serde(deserialize_with = "human::ms")]
    pub cancel_grace_ms: u64,
    /// After that SIGTERM, how long before SIGKILL (ms).
    #[serde(deserialize_with = "human::ms")]
    pub term_grace_ms: u64,
    /// A task in flight at this many worker deaths that no task was charged
    /// with (its worker's beacon named none) is charged with the crash
    /// itself, instead of re-running uncharged for ever. 1 to 1000.
    pub max_deaths_per_call: u32,
    /// How long a frame from a worker may take to arrive whole once it has
    /// begun (ms); longer means its link is corrupt (a task wrote garbage to
    /// it), and the worker is killed. 1 to 3600000.
    #[serde(deserialize_with = "human::ms")]
    pub frame_timeout_ms: u64,
    /// While a worker holds tasks, it says it is alive at least this often
    /// (ms), from a thread no task runs on. 1 to 3600000.
    #[serde(deserialize_with = "human::ms")]
    pub heartbeat_interval_ms: u64,
    /// A worker that holds tasks and has sent nothing (no result, no
    /// heartbeat) for this long (ms) is unresponsive (stopped, or its event
    /// loop stuck): it is killed and replaced, and its running task is
    /// charged with a crash. Longer than `heartbeat_interval_ms`, at most
    /// 3600000.
    #[serde(deserialize_with = "human::ms")]
    pub liveness_timeout_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 0,
            memory_soft_limit_bytes: 0,
            max_restarts: 10,
            restart_window_ms: 10_000,
            restart_backoff_ms: 100,
            restart_backoff_max_ms: 30_000,
            healthy_after_ms: 30_000,
            io_concurrency_per_worker: 256,
            cancel_grace_ms: 100,
            term_grace_ms: 1000,
            max_deaths_per_call: 3,
            frame_timeout_ms: 10_000,
            heartbeat_interval_ms: 1000,
            liveness_timeout_ms: 10_000,
        }
    }
}

/// Limits of completion notifications (`[notify]`). Read at start only.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotifySettings {
    /// Deliveries (HTTP requests, commands) running at once.
    pub max_concurrency: usize,
    /// Deliveries pending (waiting, running or between attempts); beyond it a
    /// new one is dropped, logged and counted (`jobvisor stats`).
    pub max_queued: usize,
    /// Attempts per delivery, the first included.
    pub max_attempts: u32,
    /// First retry delay (ms); doubles per attempt, with jitter.
    #[serde(deserialize_with = "human::ms")]
    pub backoff_base_ms: u64,
    /// Retry delay cap (ms).
    #[serde(deserialize_with = "human::ms")]
    pub backoff_max_ms: u64,
    /// One HTTP request or command may take this long (ms); a command is
    /// killed then.
    #[serde(deserialize_with = "human::ms")]
    pub timeout_ms: u64,
    /// On a graceful stop, how long pending deliveries may finish (ms).
    #[serde(deserialize_with = "human::ms")]
    pub drain_grace_ms: u64,
    /// Sign every webhook with this secret (`x-jobvisor-signature`); a
    /// queue's `notify_secret` wins for that queue's `notify_url`.
    pub secret: Option<String>,
    /// Or read the secret from this environment variable at start.
    pub secret_env: Option<String>,
}

impl Default for NotifySettings {
    fn default() -> Self {
        Self {
            max_concurrency: 16,
            max_queued: 10_000,
            max_attempts: 5,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            timeout_ms: 10_000,
            drain_grace_ms: 5_000,
            secret: None,
            secret_env: None,
        }
    }
}

/// One named queue.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Jobs of this queue running at once; 0 = no cap beyond the pool.
    pub concurrency: usize,
    /// POST the record of each of its jobs that ends (see `notify_on`) here.
    pub notify_url: Option<String>,
    /// Run this command (argv, no shell) for each of its jobs that ends, the
    /// record as JSON on its stdin.
    pub notify_command: Option<Vec<String>>,
    /// Which terminal states `notify_url`/`notify_command` are told of
    /// (default: all of them).
    pub notify_on: Option<Vec<TerminalState>>,
    /// Sign this queue's `notify_url` webhooks with this secret instead of
    /// `notify.secret`.
    pub notify_secret: Option<String>,
}

/// A terminal job state as the configuration names it: `succeeded`,
/// `failed`, `cancelled` or `dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TerminalState(pub JobState);

/// A name that is not a terminal job state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a terminal job state (succeeded, failed, cancelled, dead)")]
pub struct NotTerminal(pub String);

impl TryFrom<String> for TerminalState {
    type Error = NotTerminal;
    fn try_from(s: String) -> Result<Self, NotTerminal> {
        match JobState::parse(&s) {
            Some(state) if state.is_terminal() => Ok(Self(state)),
            _ => Err(NotTerminal(s)),
        }
    }
}

impl QueueConfig {
    /// Whether this queue's `notify_url`/`notify_command` are told of `state`.
    pub fn notifies_on(&self, state: JobState) -> bool {
        state.is_terminal()
            && self
                .notify_on
                .as_ref()
                .is_none_or(|on| on.iter().any(|t| t.0 == state))
    }
}

/// Longest webhook signing secret, bytes.
pub const MAX_SECRET_BYTES: usize = 4096;

/// A signing secret is not empty and at most [`MAX_SECRET_BYTES`].
fn check_secret(key: &str, secret: &str) -> Result<(), ConfigError> {
    if secret.is_empty() || secret.len() > MAX_SECRET_BYTES {
        return Err(ConfigError::Invalid(format!(
            "{key} must be between 1 and {MAX_SECRET_BYTES} bytes (it has {})",
            secret.len()
        )));
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Self {
            state_dir: None,
            socket: None,
            workers: 0,
            start_method: "forkserver".into(),
            limits: Limits::default(),
            jobs: JobDefaults::default(),
            retention: Retention::default(),
            pool: PoolSettings::default(),
            notify: NotifySettings::default(),
            queues: BTreeMap::new(),
            store: StoreSettings::default(),
            http: HttpSettings::default(),
            audit: AuditSettings::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_queued_jobs: 100_000,
            max_input_bytes: 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_connections: 256,
            max_frame_bytes: 64 * 1024 * 1024,
            max_buffered_bytes: 256 * 1024 * 1024,
            max_batch_jobs: 100_000,
            max_wait_ids: 100_000,
            max_pending_requests: 1024,
            max_key_bytes: 1024,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 60_000,
            request_timeout_ms: 30_000,
            event_history: 1_000,
        }
    }
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff_base_ms: 1_000,
            backoff_max_ms: 60_000,
            max_crashes: 3,
            drain_grace_ms: 30_000,
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age_secs: 7 * 24 * 3600,
            max_jobs: 100_000,
            prune_interval_secs: 60,
        }
    }
}

/// The configuration could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// Path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("invalid config file {path}")]
    Parse {
        /// Path.
        path: PathBuf,
        /// The parser's error (line, column, key).
        #[source]
        source: toml::de::Error,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Parse`], [`ConfigError::Invalid`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        self.start_method()?;
        if self.limits.max_queued_jobs == 0 {
            return bad("limits.max_queued_jobs must be at least 1");
        }
        if self.audit.max_bytes < 4096 {
            return bad("audit.max_bytes must be at least 4096");
        }
        if self.audit.keep > 1000 {
            return bad("audit.keep must be at most 1000");
        }
        if self.limits.max_connections == 0 {
            return bad("limits.max_connections must be at least 1");
        }
        if self.limits.max_pending_requests == 0 {
            return bad("limits.max_pending_requests must be at least 1");
        }
        if self.limits.idle_timeout_ms == 0 || self.limits.request_timeout_ms == 0 {
            return bad("limits.idle_timeout_ms and limits.request_timeout_ms must be at least 1");
        }
        if self.limits.max_frame_bytes < 4096 {
            return bad("limits.max_frame_bytes must be at least 4096");
        }
        if self.limits.max_buffered_bytes < self.limits.max_frame_bytes.saturating_add(64 * 1024) {
            // Else one request of the largest allowed size could never arrive.
            return bad(
                "limits.max_buffered_bytes must be at least limits.max_frame_bytes + 64 KiB",
            );
        }
        if self.limits.max_input_bytes + 4096 > self.limits.max_frame_bytes {
            return bad(
                "limits.max_input_bytes must be at least 4 KiB below limits.max_frame_bytes",
            );
        }
        if self.limits.event_history > MAX_EVENT_HISTORY {
            return bad("limits.event_history must be at most 1000000");
        }
        if !(1..=JobSpec::MAX_CRASHES).contains(&self.jobs.max_crashes) {
            return bad("jobs.max_crashes must be 1 to 1000");
        }
        if self.jobs.max_attempts == 0 {
            return bad("jobs.max_attempts must be at least 1");
        }
        if self.jobs.backoff_base_ms > self.jobs.backoff_max_ms {
            return bad("jobs.backoff_base_ms must not exceed jobs.backoff_max_ms");
        }
        if self.pool.cancel_grace_ms > MAX_GRACE_MS || self.pool.term_grace_ms > MAX_GRACE_MS {
            return bad(
                "pool.cancel_grace_ms and pool.term_grace_ms must be at most 3600000 (1 h)",
            );
        }
        if !(1..=MAX_DEATHS_PER_CALL).contains(&self.pool.max_deaths_per_call) {
            return bad("pool.max_deaths_per_call must be between 1 and 1000");
        }
        if !(1..=MAX_GRACE_MS).contains(&self.pool.heartbeat_interval_ms) {
            return bad("pool.heartbeat_interval_ms must be between 1 and 3600000 (1 h)");
        }
        if self.pool.liveness_timeout_ms <= self.pool.heartbeat_interval_ms
            || self.pool.liveness_timeout_ms > MAX_GRACE_MS
        {
            return bad(
                "pool.liveness_timeout_ms must be longer than pool.heartbeat_interval_ms and at \
                 most 3600000 (1 h)",
            );
        }
        if !(1..=MAX_GRACE_MS).contains(&self.pool.frame_timeout_ms) {
            return bad("pool.frame_timeout_ms must be between 1 and 3600000 (1 h)");
        }
        self.validate_store()?;
        self.validate_http()?;
        self.validate_notify()
    }

    fn validate_store(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.store_url()?;
        if !LEASE_MS.contains(&self.store.lease_ms) {
            return bad("store.lease_ms must be between 1000 (1 s) and 3600000 (1 h)".into());
        }
        if let Some(name) = &self.store.node_name {
            if let Err(e) = crate::store_url::check_node_name(name) {
                return bad(format!("store.node_name {e}"));
            }
        }
        Ok(())
    }

    fn validate_http(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let h = &self.http;
        if let Some(listen) = &h.listen {
            if let Err(e) = crate::access::listen_addr(listen, h.allow_plaintext || h.tls.is_some())
            {
                return bad(format!("http.listen: {e}"));
            }
        }
        if !(1024..=(1 << 30)).contains(&h.max_body_bytes) {
            return bad("http.max_body_bytes must be between 1024 and 1073741824 (1 GiB)".into());
        }
        if !(8192..=(1 << 20)).contains(&h.max_header_bytes) {
            return bad("http.max_header_bytes must be between 8192 and 1048576".into());
        }
        if h.request_timeout_ms == 0 || h.idle_timeout_ms == 0 || h.max_wait_ms == 0 {
            return bad(
                "http.request_timeout_ms, http.idle_timeout_ms and http.max_wait_ms must be at least 1"
                    .into(),
            );
        }
        if h.max_connections == 0 || h.max_connections > 100_000 {
            return bad("http.max_connections must be between 1 and 100000".into());
        }
        let mut names = std::collections::HashSet::new();
        for (i, t) in h.tokens.iter().enumerate() {
            if let Err(e) = crate::access::check_token_config(t) {
                return bad(format!("http.tokens[{i}] ({}): {e}", t.name));
            }
            if !names.insert(&t.name) {
                return bad(format!(
                    "http.tokens[{i}]: the name {:?} is used twice",
                    t.name
                ));
            }
        }
        Ok(())
    }

    /// The job store: `[store] url`, else `sqlite:<state dir>/jobs.db`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `store.url`.
    pub fn store_url(&self) -> Result<crate::store_url::StoreUrl, ConfigError> {
        use crate::store_url::StoreUrl;
        let Some(url) = &self.store.url else {
            return Ok(StoreUrl::Sqlite(self.state_dir().join("jobs.db")));
        };
        let base = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        StoreUrl::parse(url, &base).map_err(|e| ConfigError::Invalid(format!("store.url: {e}")))
    }

    /// This node's name: `[store] node_name`, else `<host name>-<pid>`.
    pub fn node_name(&self) -> String {
        self.store
            .node_name
            .clone()
            .unwrap_or_else(crate::store_url::default_node_name)
    }

    fn validate_notify(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let n = &self.notify;
        if n.max_concurrency == 0 || n.max_concurrency > crate::bounds::MAX_CONCURRENCY {
            return bad(format!(
                "notify.max_concurrency must be between 1 and {}",
                crate::bounds::MAX_CONCURRENCY
            ));
        }
        if n.max_queued == 0 {
            return bad("notify.max_queued must be at least 1".into());
        }
        // The semaphore that bounds pending deliveries holds at most this many permits.
        if n.max_queued > crate::bounds::MAX_QUEUED {
            return bad(format!(
                "notify.max_queued must be at most {}",
                crate::bounds::MAX_QUEUED
            ));
        }
        if n.max_attempts == 0 {
            return bad("notify.max_attempts must be at least 1".into());
        }
        if n.backoff_base_ms > n.backoff_max_ms {
            return bad("notify.backoff_base_ms must not exceed notify.backoff_max_ms".into());
        }
        if n.timeout_ms == 0 {
            return bad("notify.timeout_ms must be at least 1".into());
        }
        if n.secret.is_some() && n.secret_env.is_some() {
            return bad("notify.secret and notify.secret_env are exclusive: set one".into());
        }
        if let Some(secret) = &n.secret {
            check_secret("notify.secret", secret)?;
        }
        if n.secret_env.as_deref() == Some("") {
            return bad("notify.secret_env must name an environment variable".into());
        }
        for (name, q) in &self.queues {
            if let Some(secret) = &q.notify_secret {
                check_secret(&format!("queues.{name}.notify_secret"), secret)?;
            }
            if let Some(url) = &q.notify_url {
                if let Err(e) = crate::bounds::check_url(url) {
                    let e = crate::errors::chain(&e);
                    return bad(format!("queues.{name}.notify_url: {e}"));
                }
            }
            if let Some(argv) = &q.notify_command {
                if argv.first().is_none_or(|p| p.is_empty()) {
                    return bad(format!(
                        "queues.{name}.notify_command must name a program (a non-empty list)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The webhook signing secret: `notify.secret`, or the value of the
    /// variable `notify.secret_env` names (read now), checked like the first.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an unset, empty or too long variable.
    pub fn webhook_secret(&self) -> Result<Option<String>, ConfigError> {
        let Some(var) = &self.notify.secret_env else {
            return Ok(self.notify.secret.clone());
        };
        let key = format!("notify.secret_env ({var})");
        let secret = std::env::var(var)
            .map_err(|e| ConfigError::Invalid(format!("{key}: cannot read the variable: {e}")))?;
        check_secret(&key, &secret)?;
        Ok(Some(secret))
    }

    /// The start method.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] for an unknown name.
    pub fn start_method(&self) -> Result<StartMethod, ConfigError> {
        self.start_method
            .parse()
            .map_err(|e: String| ConfigError::Invalid(format!("start_method: {e}")))
    }

    /// The state directory: configured, else `$XDG_STATE_HOME/jobvisor`, else
    /// `~/.local/state/jobvisor`.
    pub fn state_dir(&self) -> PathBuf {
        if let Some(d) = &self.state_dir {
            return d.clone();
        }
        default_state_dir()
    }

    /// The audit log's path; `None` when `[audit] file = ""` turns it off.
    pub fn audit_file(&self) -> Option<PathBuf> {
        match &self.audit.file {
            Some(f) if f.as_os_str().is_empty() => None,
            Some(f) => Some(f.clone()),
            None => Some(self.state_dir().join("audit.log")),
        }
    }

    /// The control socket path.
    pub fn socket(&self) -> PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| self.state_dir().join("control.sock"))
    }

    /// Worker count, with 0 resolved to the number of cores.
    pub fn worker_count(&self) -> usize {
        if self.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.workers
        }
    }

    /// A queue's concurrency cap (0 = none).
    pub fn queue_cap(&self, queue: &str) -> usize {
        self.queues.get(queue).map_or(0, |q| q.concurrency)
    }

    /// Whether jobs may name this queue: `default` and every configured one.
    pub fn knows_queue(&self, queue: &str) -> bool {
        queue == "default" || self.queues.contains_key(queue)
    }
}

/// Where a daemon started without `--config` looks for its file, in order
/// (the first that exists is read, alone): `$XDG_CONFIG_HOME/jobvisor/jobvisor.toml`
/// (`$XDG_CONFIG_HOME` unset, empty or relative: `$HOME/.config/...`), then
/// `/etc/jobvisor/jobvisor.toml`. Pure: the caller passes the environment.
pub fn standard_paths(
    xdg_config_home: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Vec<PathBuf> {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    let user = absolute(xdg_config_home).or_else(|| absolute(home).map(|h| h.join(".config")));
    user.map(|dir| dir.join("jobvisor").join("jobvisor.toml"))
        .into_iter()
        .chain(std::iter::once(PathBuf::from(
            "/etc/jobvisor/jobvisor.toml",
        )))
        .collect()
}

/// The first of [`standard_paths`] (for this process's environment) that
/// exists, and every place looked in (for the log when none does). A path
/// that exists but cannot be read is still returned: loading it then names
/// the error, rather than silently falling back to the next one.
pub fn discover() -> (Option<PathBuf>, Vec<PathBuf>) {
    let paths = standard_paths(
        std::env::var_os("XDG_CONFIG_HOME"),
        std::env::var_os("HOME"),
    );
    let found = paths
        .iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .cloned();
    (found, paths)
}

/// `$XDG_STATE_HOME/jobvisor`, else `$HOME/.local/state/jobvisor`, else
/// `./.jobvisor`: the rule clients share, [`jobvisor_proto::paths`].
pub fn default_state_dir() -> PathBuf {
    jobvisor_proto::paths::default_state_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_file_parses_to_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/jobvisor.toml");
        let cfg = Config::load(&path).unwrap();
        let mut expected = Config::default();
        expected
            .queues
            .insert("default".into(), QueueConfig::default());
        assert_eq!(cfg, expected);
    }

    #[test]
    fn the_store_section_parses_and_is_checked() {
        use crate::store_url::StoreUrl;
        let cfg: Config = toml::from_str(
            r#"
            state_dir = "/srv/jv"
            [store]
            url = "postgres://jv:pw@db:5432/jobs"
            lease_ms = "30s"
            node_name = "node-a"
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.store.lease_ms, 30_000);
        assert_eq!(cfg.node_name(), "node-a");
        assert_eq!(
            cfg.store_url().unwrap(),
            StoreUrl::Postgres("postgres://jv:pw@db:5432/jobs".into())
        );
        let default = Config {
            state_dir: Some("/srv/jv".into()),
            ..Config::default()
        };
        assert_eq!(
            default.store_url().unwrap(),
            StoreUrl::Sqlite("/srv/jv/jobs.db".into())
        );
        assert!(default
            .node_name()
            .ends_with(&format!("-{}", std::process::id())));
        let invalid = |edit: fn(&mut Config), key: &str| {
            let mut c = Config::default();
            edit(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid(m)) => assert!(m.contains(key), "{m}"),
                other => panic!("{key}: {other:?}"),
            }
        };
        invalid(|c| c.store.lease_ms = 999, "store.lease_ms");
        invalid(|c| c.store.lease_ms = 3_600_001, "store.lease_ms");
        invalid(|c| c.store.url = Some("redis://x".into()), "store.url");
        invalid(
            |c| c.store.node_name = Some("a b".into()),
            "store.node_name",
        );
    }

    #[test]
    fn notify_settings_and_queue_notifications_parse() {
        let cfg: Config = toml::from_str(
            r#"
            [notify]
            max_concurrency = 4
            max_queued = 100
            max_attempts = 2
            backoff_base_ms = 10
            backoff_max_ms = 20
            timeout_ms = 300
            drain_grace_ms = 0

            [queues.reports]
            notify_url = "https://hooks.example.com/jobvisor"
            notify_command = ["/usr/bin/logger", "-t", "jobvisor"]
            notify_on = ["failed", "dead"]

            [queues.plain]
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(
            cfg.notify,
            NotifySettings {
                max_concurrency: 4,
                max_queued: 100,
                max_attempts: 2,
                backoff_base_ms: 10,
                backoff_max_ms: 20,
                timeout_ms: 300,
                drain_grace_ms: 0,
                secret: None,
                secret_env: None,
            }
        );
        let q = &cfg.queues["reports"];
        assert_eq!(
            q.notify_url.as_deref(),
            Some("https://hooks.example.com/jobvisor")
        );
        assert_eq!(q.notify_command.as_ref().map(Vec::len), Some(3));
        assert!(q.notifies_on(JobState::Failed) && q.notifies_on(JobState::Dead));
        assert!(!q.notifies_on(JobState::Succeeded) && !q.notifies_on(JobState::Cancelled));
        let plain = &cfg.queues["plain"];
        assert_eq!((&plain.notify_url, &plain.notify_command), (&None, &None));
        for s in [
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
            JobState::Dead,
        ] {
            assert!(plain.notifies_on(s), "all terminal states by default");
        }
        assert!(!plain.notifies_on(JobState::Retrying));
    }

    #[test]
    fn the_webhook_secret_comes_from_the_file_or_the_named_variable() {
        let mut cfg = Config::default();
        assert_eq!(cfg.webhook_secret().unwrap(), None);
        cfg.notify.secret = Some("in-file".into());
        assert_eq!(cfg.webhook_secret().unwrap().as_deref(), Some("in-file"));
        // A name no other test uses: the environment is the process's.
        let var = "JOBVISOR_TEST_WEBHOOK_SECRET_7f3a";
        cfg.notify.secret = None;
        cfg.notify.secret_env = Some(var.into());
        cfg.validate().unwrap();
        let m = cfg.webhook_secret().unwrap_err().to_string();
        assert!(m.contains("notify.secret_env") && m.contains(var), "{m}");
        std::env::set_var(var, "from-env");
        assert_eq!(cfg.webhook_secret().unwrap().as_deref(), Some("from-env"));
        std::env::set_var(var, "");
        let m = cfg.webhook_secret().unwrap_err().to_string();
        assert!(m.contains("between 1 and 4096"), "{m}");
        std::env::remove_var(var);
    }

    #[test]
    fn bad_notify_settings_are_refused_with_their_key() {
        let err = toml::from_str::<Config>("[queues.q]\nnotify_on = [\"running\"]\n").unwrap_err();
        assert!(
            err.to_string().contains("not a terminal job state"),
            "{err}"
        );
        let invalid = |toml: &str| match toml::from_str::<Config>(toml).unwrap().validate() {
            Err(ConfigError::Invalid(m)) => m,
            other => panic!("{toml}: {other:?}"),
        };
        let m = invalid("[queues.q]\nnotify_url = \"ftp://x/\"\n");
        assert!(
            m.contains("queues.q.notify_url") && m.contains("http"),
            "{m}"
        );
        let m = invalid("[queues.q]\nnotify_command = []\n");
        assert!(m.contains("queues.q.notify_command"), "{m}");
        let m = invalid("[notify]\nmax_concurrency = 0\n");
        assert!(m.contains("notify.max_concurrency"), "{m}");
        let m = invalid("[notify]\nmax_concurrency = 1000000000\n");
        assert!(m.contains("notify.max_concurrency"), "{m}");
        let m = invalid("[notify]\nmax_queued = 0\n");
        assert!(m.contains("notify.max_queued"), "{m}");
        let m = invalid("[notify]\nbackoff_base_ms = 10\nbackoff_max_ms = 5\n");
        assert!(m.contains("notify.backoff_base_ms"), "{m}");
        let m = invalid("[notify]\nsecret = \"\"\n");
        assert!(m.contains("notify.secret"), "{m}");
        let long = "x".repeat(MAX_SECRET_BYTES + 1);
        let m = invalid(&format!("[queues.q]\nnotify_secret = \"{long}\"\n"));
        assert!(m.contains("queues.q.notify_secret"), "{m}");
        let m = invalid("[notify]\nsecret = \"a\"\nsecret_env = \"B\"\n");
        assert!(m.contains("exclusive"), "{m}");
        let m = invalid("[notify]\nmax_attempts = 0\n");
        assert!(m.contains("notify.max_attempts"), "{m}");
    }

    #[test]
    fn a_file_error_tells_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = Config::load(&missing).unwrap_err();
        let chain = crate::errors::chain(&e);
        assert!(chain.starts_with("cannot read config file "), "{chain}");
        assert_eq!(chain.matches("os error 2").count(), 1, "{chain}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "workers = \"many\"\n").unwrap();
        let e = Config::load(&bad).unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }), "{e:?}");
        let chain = crate::errors::chain(&e);
        assert!(chain.starts_with("invalid config file "), "{chain}");
        assert!(chain.contains("workers"), "{chain}");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = toml::from_str::<Config>("[limits]\nmax_queue_jobs = 5\n").unwrap_err();
        assert!(err.to_string().contains("max_queue_jobs"), "{err}");
    }

    /// Issue 10, item F.21: duration keys take human values; an integer
    /// means what it meant before (ms for `_ms`, seconds for `_secs`).
    #[test]
    fn duration_keys_take_human_values_and_integers_as_before() {
        let cfg: Config = toml::from_str(
            r#"
            [limits]
            handshake_timeout_ms = "1.5s"
            [jobs]
            backoff_base_ms = 250
            backoff_max_ms = "1m 30s"
            drain_grace_ms = "500ms"
            [retention]
            max_age_secs = "7d"
            prune_interval_secs = 30
            [pool]
            restart_window_ms = "1h30m"
            [notify]
            timeout_ms = "2s"
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.limits.handshake_timeout_ms, 1_500);
        assert_eq!(cfg.jobs.backoff_base_ms, 250);
        assert_eq!(cfg.jobs.backoff_max_ms, 90_000);
        assert_eq!(cfg.jobs.drain_grace_ms, 500);
        assert_eq!(cfg.retention.max_age_secs, 7 * 24 * 3600);
        assert_eq!(cfg.retention.prune_interval_secs, 30);
        assert_eq!(cfg.pool.restart_window_ms, 5_400_000);
        assert_eq!(cfg.notify.timeout_ms, 2_000);
        for (bad, says) in [
            ("[jobs]\ndrain_grace_ms = \"5\"\n", "needs a unit"),
            ("[jobs]\ndrain_grace_ms = \"soon\"\n", "invalid duration"),
            ("[jobs]\ndrain_grace_ms = -1\n", "a number of ms"),
            (
                "[retention]\nmax_age_secs = \"1.5s\"\n",
                "whole number of seconds",
            ),
        ] {
            let e = toml::from_str::<Config>(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    /// Issue 10, item F.23: the places a daemon without `--config` looks in.
    #[test]
    fn standard_paths_follow_xdg_then_etc() {
        let s = |v: &str| Some(std::ffi::OsString::from(v));
        let etc = PathBuf::from("/etc/jobvisor/jobvisor.toml");
        assert_eq!(
            standard_paths(s("/x/conf"), s("/home/u")),
            [PathBuf::from("/x/conf/jobvisor/jobvisor.toml"), etc.clone()]
        );
        let home = PathBuf::from("/home/u/.config/jobvisor/jobvisor.toml");
        for xdg in [None, s(""), s("relative/dir")] {
            assert_eq!(
                standard_paths(xdg, s("/home/u")),
                [home.clone(), etc.clone()]
            );
        }
        assert_eq!(standard_paths(None, None), [etc]);
    }

    #[test]
    fn ranges_are_checked() {
        let mut c = Config::default();
        c.jobs.max_attempts = 0;
        assert!(
            matches!(c.validate(), Err(ConfigError::Invalid(m)) if m.contains("jobs.max_attempts"))
        );
        let c = Config {
            start_method: "vfork".into(),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
