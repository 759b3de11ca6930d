//! The jobvisor daemon: a long-lived supervisor that accepts jobs over a
//! control socket, keeps them durably in the job store, runs them on its
//! worker processes, and retries or fails them by policy.
//!
//! # Layout
//! Lowest first: a module names only modules above it in this list
//! (`scripts/check-module-cycles` holds it to that).
//! - `errors`: an error and its causes as one line, for logs and clients.
//! - `bounds`: hard bounds (URL length, notifier sizes) and the webhook URL
//!   check, shared by the configuration that validates them and the parts
//!   that enforce them.
//! - [`policy`]: what an attempt's end means for its job (retry, fail, ...):
//!   pure functions.
//! - `pipeline`: jobs that take their input from other jobs' outputs.
//! - [`store_url`]: `[store] url` (`sqlite:PATH`, `postgres://...`) and node names.
//! - [`sdnotify`]: systemd's notification protocol (READY, STOPPING, WATCHDOG).
//! - [`access`]: roles and the HTTP API's tokens (hashed, compared in
//!   constant time).
//! - [`config`]: the TOML configuration and its defaults.
//! - `events`: the event feed (job and worker events, the recent ones kept).
//! - `notify`: completion notifications (webhooks, commands) from a durable
//!   outbox in the store, in their own tasks; the scheduler writes their rows
//!   with the terminal state and wakes the notifier.
//! - `scheduler`: the actor that owns unfinished jobs: queues, priorities,
//!   delays, dependencies, attempts, waiters.
//! - `server`: the control socket (permissions, peer check, handshake, limits).
//! - `http`: the HTTP/JSON API, answering through the socket's handler.
//! - [`run`] (here): start-up (lock, store, pool, recovery, socket), signals,
//!   and the shutdown order.

pub mod access;
mod audit;
mod bounds;
pub mod config;
mod errors;
mod events;
mod http;
mod notify;
mod pipeline;
pub mod policy;
mod scheduler;
pub mod sdnotify;
mod server;
pub mod store_url;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use jobvisor_pool::{Pool, PoolBuilder, PoolEvent};
use jobvisor_proto::control::{Event, EventKind};
use jobvisor_store::{SqliteStore, StoreHandle};
use jobvisor_worker::Registry;
use tokio::sync::{mpsc, watch};

pub use config::Config;
pub use notify::NotifyStartError;
use store_url::StoreUrl;

use scheduler::{Counters, SchedCmd, Scheduler};

/// The daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Another daemon owns the state directory.
    #[error("another jobvisor daemon is running with state directory {0}")]
    Locked(PathBuf),
    /// I/O while setting up (state dir, socket, lock).
    #[error("{what}")]
    Io {
        /// What we were doing.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The job store failed.
    #[error(transparent)]
    Store(#[from] jobvisor_store::StoreError),
    /// The worker pool could not start.
    #[error(transparent)]
    Pool(#[from] jobvisor_pool::PoolError),
    /// The notifier could not start.
    #[error(transparent)]
    Notify(#[from] NotifyStartError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// How to start the daemon.
#[derive(Debug)]
pub struct Options {
    /// The configuration (file + flags already merged).
    pub config: Config,
    /// Re-read on SIGHUP, when set.
    pub config_path: Option<PathBuf>,
    /// Without `config_path`: on SIGHUP, look for a file in the standard
    /// places ([`config::discover`]) and read the first found.
    pub discover_config: bool,
    /// `--workers` given on the command line: wins over the file, at start and on reload.
    pub workers_override: Option<usize>,
    /// The same tasks the workers have: used to validate and convert inputs at submit time.
    pub registry: Registry,
    /// systemd's notification socket, when run by a `Type=notify` unit
    /// ([`sdnotify::SdNotify::take_from_env`], taken before any thread).
    pub systemd: Option<sdnotify::SdNotify>,
}

/// The worker pool `cfg` asks for.
fn pool_builder(cfg: &Config) -> Result<PoolBuilder, DaemonError> {
    let p = &cfg.pool;
    let mut builder = Pool::builder()
        .workers(cfg.worker_count())
        .start_method(cfg.start_method()?)
        .max_frame_bytes(cfg.limits.max_input_bytes.max(cfg.limits.max_output_bytes) + 64 * 1024)
        .io_concurrency_per_worker(p.io_concurrency_per_worker.clamp(1, 100_000))
        .cancel_grace(Duration::from_millis(p.cancel_grace_ms))
        .term_grace(Duration::from_millis(p.term_grace_ms))
        .max_deaths_per_call(p.max_deaths_per_call)
        .frame_timeout(Duration::from_millis(p.frame_timeout_ms))
        .liveness(
            Duration::from_millis(p.heartbeat_interval_ms),
            Duration::from_millis(p.liveness_timeout_ms),
        )
        .restart_intensity(p.max_restarts, Duration::from_millis(p.restart_window_ms))
        .restart_backoff(
            Duration::from_millis(p.restart_backoff_ms),
            Duration::from_millis(p.restart_backoff_max_ms),
            Duration::from_millis(p.healthy_after_ms),
        );
    if p.memory_limit_bytes > 0 {
        builder = builder.memory_limit_bytes(p.memory_limit_bytes);
        tracing::info!(
            bytes = p.memory_limit_bytes,
            "worker memory limit enforced with RLIMIT_AS (cgroup v2 memory.max is not used)"
        );
    }
    if p.memory_soft_limit_bytes > 0 {
        builder = builder.memory_soft_limit_bytes(p.memory_soft_limit_bytes);
    }
    Ok(builder)
}

/// Runs the daemon until SIGTERM/SIGINT or a `shutdown` request; returns
/// after draining and persisting.
///
/// Shutdown order: stop accepting connections and submits; let running
/// attempts finish for up to `jobs.drain_grace_ms` (a second SIGINT skips the
/// wait); stop the pool (attempts still running are recorded `lost` and their
/// jobs re-queued for the next start); wait for every store write to commit;
/// remove the socket.
///
/// # Errors
/// [`DaemonError`] for start-up failures.
pub async fn run(opts: Options) -> Result<(), DaemonError> {
    let cfg = opts.config;
    cfg.validate()?;
    let state_dir = cfg.state_dir();
    server::create_private_dir(&state_dir, true).map_err(io(format!(
        "cannot use state directory {}",
        state_dir.display()
    )))?;
    let _lock = lock(&state_dir)?;

    let store_url = cfg.store_url()?;
    let node = cfg.node_name();
    let store = open_store(&store_url)?;
    let store = StoreHandle::spawn(store).map_err(io("cannot start the store thread"))?;

    let workers = cfg.worker_count();
    let pool = pool_builder(&cfg)?.build().await?;
    let counters = Arc::new(Counters::default());
    let events_tx = events::EventFeed::new(cfg.limits.event_history);
    {
        let mut events = pool.events();
        let c = counters.clone();
        let out = events_tx.clone();
        tokio::spawn(async move {
            let publish = |kind: EventKind| {
                out.publish(Event {
                    at_ms: scheduler::now_ms(),
                    kind,
                })
            };
            loop {
                match events.recv().await {
                    Ok(PoolEvent::WorkerExited { pid, status, .. }) => {
                        c.worker_restarts.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(worker_pid = pid, %status, "worker exited");
                        publish(EventKind::WorkerExited {
                            pid,
                            status: status.to_string(),
                        });
                    }
                    Ok(PoolEvent::WorkerReady { pid, .. }) => {
                        publish(EventKind::WorkerStarted { pid })
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        c.worker_restarts.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(_) => return,
                }
            }
        });
    }

    let registry = Arc::new(opts.registry);
    let notifier = notify::Notifier::spawn(&cfg, store.clone()).await?;
    let mut scheduler = Scheduler::new(
        cfg.clone(),
        pool.clone(),
        store.clone(),
        registry,
        counters.clone(),
        events_tx.clone(),
        notifier.clone(),
    );
    let recovered = scheduler.recover().await?;
    // Client requests fail as busy when it is full (`server::ask`); the
    // daemon's own (drain, flush, reload) wait for room.
    let (sched_tx, sched_rx) = mpsc::channel(cfg.limits.max_pending_requests);
    let sched_task = tokio::spawn(scheduler.run(sched_rx));

    let audit = match cfg.audit_file() {
        Some(f) => audit::Audit::open(&f, cfg.audit.max_bytes, cfg.audit.keep)
            .map_err(io("cannot open the audit log ([audit] file)".to_string()))?,
        None => audit::Audit::default(),
    };
    let socket = cfg.socket();
    let listener = server::bind(&socket)
        .await
        .map_err(io(format!("cannot listen on {}", socket.display())))?;
    let (stop_tx, mut stop_rx) = watch::channel(None::<bool>);
    let (stopping_tx, stopping_rx) = watch::channel(false);
    let ctx = server::ServerCtx {
        cfg: Arc::new(cfg.clone()),
        sched: sched_tx.clone(),
        store: store.clone(),
        pool: pool.clone(),
        stop: stop_tx.clone(),
        events: events_tx.clone(),
        buffered: Default::default(),
        audit: audit.clone(),
    };
    let http = match &cfg.http.listen {
        Some(listen) => {
            let addr =
                access::listen_addr(listen, cfg.http.allow_plaintext || cfg.http.tls.is_some())
                    .map_err(|e| {
                        DaemonError::Config(config::ConfigError::Invalid(format!(
                            "http.listen: {e}"
                        )))
                    })?;
            let l = http::bind(addr)
                .await
                .map_err(io(format!("cannot listen on {addr} (http.listen)")))?;
            let bound = l.local_addr().map_err(io("http.listen".to_string()))?;
            if !bound.ip().is_loopback() && cfg.http.tls.is_none() {
                tracing::warn!(%bound, "http: listening on a non-loopback address without TLS (http.allow_plaintext)");
            }
            let tls = match &cfg.http.tls {
                Some(t) => Some(http::tls_acceptor(t).map_err(|e| {
                    DaemonError::Config(config::ConfigError::Invalid(format!("http.tls: {e}")))
                })?),
                None => None,
            };
            tracing::info!(%bound, tls = tls.is_some(), "http API listening");
            Some(tokio::spawn(http::serve(
                l,
                tls,
                ctx.clone(),
                stopping_rx.clone(),
            )))
        }
        None => None,
    };
    let server_task = tokio::spawn(server::serve(listener, ctx, stopping_rx));
    tracing::info!(
        socket = %socket.display(),
        state_dir = %state_dir.display(),
        store = %store_url,
        node = %node,
        workers,
        recovered,
        pid = std::process::id(),
        "jobvisor daemon ready"
    );
    let systemd = opts.systemd.map(Arc::new);
    if let Some(sd) = &systemd {
        sd.ready(&status_line(workers, &counters));
        if let Some(every) = sd.watchdog_every() {
            let (sd, counters) = (sd.clone(), counters.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    sd.watchdog(&status_line(workers, &counters));
                }
            });
        }
    }

    let hard = spawn_signals(
        stop_tx,
        opts.config_path,
        opts.discover_config,
        opts.workers_override,
        pool.clone(),
        sched_tx.clone(),
        audit,
    );

    // Wait for a stop request.
    let graceful = loop {
        if let Some(g) = *stop_rx.borrow_and_update() {
            break g;
        }
        if stop_rx.changed().await.is_err() {
            break true;
        }
    };
    tracing::info!(graceful, "shutting down");
    if let Some(sd) = &systemd {
        sd.stopping(if graceful {
            "draining: running jobs finish, queued ones wait for the next start"
        } else {
            "stopping now"
        });
    }
    let _ = stopping_tx.send(true);
    if graceful {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if sched_tx.send(SchedCmd::Drain { reply: tx }).await.is_ok() {
            let grace = Duration::from_millis(cfg.jobs.drain_grace_ms);
            let mut hard = hard;
            tokio::select! {
                _ = rx => tracing::info!("running jobs drained"),
                () = tokio::time::sleep(grace) => tracing::warn!(?grace, "drain grace period over; stopping running jobs"),
                _ = hard.changed() => tracing::warn!("second interrupt: stopping now"),
            }
        }
    } else {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        let _ = sched_tx.send(SchedCmd::Drain { reply: tx }).await;
    }
    pool.clone().terminate().await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    if sched_tx.send(SchedCmd::Flush { reply: tx }).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(30), rx).await;
    }
    // Every terminal state has committed and been handed to the notifier.
    if graceful {
        let grace = Duration::from_millis(cfg.notify.drain_grace_ms);
        let left = notifier.drain(grace).await;
        if left > 0 {
            tracing::warn!(
                pending = left,
                ?grace,
                "notifications still pending at exit stay in the outbox; they go out after the next start"
            );
        }
    }
    drop(sched_tx);
    let _ = server_task.await;
    if let Some(h) = http {
        let _ = h.await;
    }
    sched_task.abort();
    let _ = std::fs::remove_file(&socket);
    tracing::info!("jobvisor daemon stopped");
    Ok(())
}

/// The one-line summary systemd shows (`systemctl status`).
fn status_line(workers: usize, c: &Counters) -> String {
    format!(
        "ready: {workers} workers; since start {} jobs submitted, {} attempts finished, {} worker restarts",
        c.submitted.load(Ordering::Relaxed),
        c.attempts_finished.load(Ordering::Relaxed),
        c.worker_restarts.load(Ordering::Relaxed),
    )
}

/// One task owns the signals: SIGTERM/SIGINT → graceful stop (a second
/// SIGINT → now), SIGHUP → reload. Returns a watch that fires on "now".
fn spawn_signals(
    stop: watch::Sender<Option<bool>>,
    config_path: Option<PathBuf>,
    discover_config: bool,
    workers_override: Option<usize>,
    pool: Pool,
    sched: mpsc::Sender<SchedCmd>,
    audit: audit::Audit,
) -> watch::Receiver<bool> {
    let by_hup = audit::Caller::Signal("SIGHUP");
    use tokio::signal::unix::{signal, SignalKind};
    let (hard_tx, hard_rx) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        let mut interrupts = 0;
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM");
                    let _ = stop.send(Some(true));
                }
                _ = int.recv() => {
                    interrupts += 1;
                    if interrupts == 1 {
                        tracing::info!("SIGINT: draining (interrupt again to stop now)");
                        let _ = stop.send(Some(true));
                    } else {
                        let _ = hard_tx.send(true);
                        let _ = stop.send(Some(false));
                    }
                }
                _ = hup.recv() => {
                    let (found, looked_in) = match (&config_path, discover_config) {
                        (Some(path), _) => (Some(path.clone()), Vec::new()),
                        (None, true) => config::discover(),
                        (None, false) => (None, Vec::new()),
                    };
                    let Some(path) = found else {
                        let looked_in: Vec<String> =
                            looked_in.iter().map(|p| p.display().to_string()).collect();
                        tracing::info!(
                            looked_in = %looked_in.join(", "),
                            "SIGHUP: no config file to reload"
                        );
                        audit.record(&by_hup, "reload", serde_json::Value::Null, Err("no config file to reload"));
                        continue;
                    };
                    match Config::load(&path) {
                        Ok(mut cfg) => {
                            if let Some(w) = workers_override {
                                cfg.workers = w;
                            }
                            let workers = cfg.worker_count();
                            pool.resize(workers).await;
                            let _ = sched.send(SchedCmd::Reload { config: Box::new(cfg) }).await;
                            // After the send: a request that follows this
                            // line reaches the scheduler after the reload.
                            tracing::info!(
                                path = %path.display(),
                                workers,
                                "SIGHUP: configuration reloaded"
                            );
                            audit.record(&by_hup, "reload", serde_json::json!(path), Ok(()));
                        }
                        Err(e) => {
                            tracing::error!(
                                path = %path.display(),
                                error = %errors::Chain(&e),
                                "SIGHUP: keeping the old configuration"
                            );
                            let why = errors::chain(&e);
                            audit.record(&by_hup, "reload", serde_json::json!(path), Err(why.as_str()));
                        }
                    }
                }
            }
        }
    });
    hard_rx
}

/// Takes the state directory's lock (released when the process ends, even by kill -9).
///
/// The file is opened without following a symlink, and must be a regular file
/// of ours: it is truncated and written. It is not created `O_EXCL`: it
/// outlives a killed daemon by design (the `flock` is what is held).
/// Opens the job store `url` names. An SQLite file's directory is made (or
/// checked) like the state directory: created 0700, or refused when another
/// user could write it.
fn open_store(url: &StoreUrl) -> Result<SqliteStore, DaemonError> {
    match url {
        StoreUrl::Sqlite(path) => {
            let dir = path.parent().unwrap_or(std::path::Path::new("/"));
            server::create_private_dir(dir, true).map_err(io(format!(
                "cannot use the store's directory {} (store.url)",
                dir.display()
            )))?;
            Ok(SqliteStore::open(path)?)
        }
        StoreUrl::Postgres(_) => Err(DaemonError::Config(config::ConfigError::Invalid(format!(
            "store.url: {url}: the daemon does not run on PostgreSQL yet (the store \
             layer exists; its cluster mode is not built); use sqlite:PATH"
        )))),
    }
}

fn lock(state_dir: &std::path::Path) -> Result<nix::fcntl::Flock<std::fs::File>, DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = state_dir.join("daemon.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&path)
        .map_err(io(format!(
            "cannot open {} (a symlink is refused)",
            path.display()
        )))?;
    let meta = file
        .metadata()
        .map_err(io(format!("cannot stat {}", path.display())))?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.nlink() != 1 {
        return Err(DaemonError::Io {
            what: format!("refusing to use {}", path.display()),
            source: std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "it is not a regular file of ours with a single link",
            ),
        });
    }
    let mut locked = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| DaemonError::Locked(state_dir.to_owned()))?;
    let _ = locked.set_len(0);
    let _ = writeln!(locked, "{}", std::process::id());
    Ok(locked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_gets_the_configured_grace_periods() {
        let mut cfg = Config::default();
        let defaults = pool_builder(&cfg).unwrap().current().clone();
        assert_eq!(defaults.cancel_grace, Duration::from_millis(100));
        assert_eq!(defaults.term_grace, Duration::from_secs(1));
        cfg.pool.cancel_grace_ms = 2_500;
        cfg.pool.term_grace_ms = 7_000;
        let p = pool_builder(&cfg).unwrap().current().clone();
        assert_eq!(p.cancel_grace, Duration::from_millis(2_500));
        assert_eq!(p.term_grace, Duration::from_secs(7));
        cfg.pool.term_grace_ms = 3_600_001;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("pool.term_grace_ms"), "{e}");
    }

    #[test]
    fn the_pool_gets_the_configured_bound_on_uncharged_deaths() {
        let mut cfg = Config::default();
        assert_eq!(pool_builder(&cfg).unwrap().current().max_deaths_per_call, 3);
        cfg.pool.max_deaths_per_call = 5;
        assert_eq!(pool_builder(&cfg).unwrap().current().max_deaths_per_call, 5);
        cfg.pool.max_deaths_per_call = 0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("pool.max_deaths_per_call"), "{e}");
    }

    #[test]
    fn the_pool_gets_the_configured_frame_timeout() {
        let mut cfg = Config::default();
        let p = pool_builder(&cfg).unwrap().current().clone();
        assert_eq!(p.frame_timeout, Duration::from_secs(10));
        cfg.pool.frame_timeout_ms = 250;
        let p = pool_builder(&cfg).unwrap().current().clone();
        assert_eq!(p.frame_timeout, Duration::from_millis(250));
        cfg.pool.frame_timeout_ms = 0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("pool.frame_timeout_ms"), "{e}");
    }

    #[test]
    fn the_pool_gets_the_configured_liveness() {
        let mut cfg = Config::default();
        let p = pool_builder(&cfg).unwrap().current().clone();
        assert_eq!(p.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(p.liveness_timeout, Duration::from_secs(10));
        cfg.pool.heartbeat_interval_ms = 20;
        cfg.pool.liveness_timeout_ms = 300;
        let p = pool_builder(&cfg).unwrap().current().clone();
        assert_eq!(p.heartbeat_interval, Duration::from_millis(20));
        assert_eq!(p.liveness_timeout, Duration::from_millis(300));
        cfg.pool.liveness_timeout_ms = 20;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("pool.liveness_timeout_ms"), "{e}");
        cfg.pool.heartbeat_interval_ms = 0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("pool.heartbeat_interval_ms"), "{e}");
    }

    #[test]
    fn the_pool_gets_the_frame_limit_and_memory_limits_asked_for() {
        let mut cfg = Config {
            workers: 3,
            ..Config::default()
        };
        cfg.limits.max_input_bytes = 10_000;
        cfg.limits.max_output_bytes = 20_000;
        cfg.pool.memory_limit_bytes = 1 << 30;
        cfg.pool.memory_soft_limit_bytes = 1 << 29;
        let p = pool_builder(&cfg).unwrap().current().clone();
        assert_eq!(p.workers, 3);
        // The larger payload, plus room for the frame around it.
        assert_eq!(p.max_frame_bytes, 20_000 + 64 * 1024);
        assert_eq!(p.memory_limit_bytes, Some(1 << 30));
        assert_eq!(p.memory_soft_limit_bytes, Some(1 << 29));
        cfg.start_method = "vfork".into();
        assert!(matches!(pool_builder(&cfg), Err(DaemonError::Config(_))));
    }

    #[test]
    fn a_second_daemon_on_one_state_dir_is_refused_while_the_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join("daemon.lock")).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        match lock(dir.path()) {
            Err(DaemonError::Locked(d)) => assert_eq!(d, dir.path()),
            other => panic!("{other:?}"),
        }
        drop(held);
        assert!(lock(dir.path()).is_ok(), "released with its file");
    }
}
