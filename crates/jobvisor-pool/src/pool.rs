//! The public `Pool`: the `multiprocessing.Pool` of Rust.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use jobvisor_proto::codec;
use jobvisor_proto::worker::TaskFailure;
use jobvisor_worker::{AsyncTask, Task};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::PoolConfig;
use crate::dispatch::{CallResult, Channels, Command, Dispatcher, Pending};
use crate::error::PoolError;
use crate::launch::StartMethod;
use crate::output::{CallJobGuard, CallJobs};
use crate::types::{CallUsage, Health, PoolEvent, PoolHealth, WorkerInfo};

/// Capacity of the submission channel in front of the dispatcher. The real
/// bound on accepted work is `max_queued`; this only smooths bursts.
const COMMAND_CHANNEL: usize = 4096;

/// Everything known about a finished call.
#[derive(Debug)]
pub struct CallReport {
    /// The worker that ran it, when one did.
    pub pid: Option<u32>,
    /// Its CPU and wall time, when the worker measured them: every call of
    /// 50 µs or more, and one in 16 shorter ones (thread CPU time costs a
    /// syscall, which would double the cost of a no-op call).
    pub usage: Option<CallUsage>,
    /// The encoded output, or why there is none.
    pub result: Result<Vec<u8>, PoolError>,
}

/// Per-call options.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallOptions {
    /// Stop the call after this long (overrides the pool's default).
    pub timeout: Option<Duration>,
    /// Stop the call when it sends no heartbeat or progress (`ctx.heartbeat()`,
    /// `ctx.progress()`) for this long: a watchdog for hung or stopped workers.
    pub stall_timeout: Option<Duration>,
    /// The caller's job id for this call: the lines the worker prints while
    /// it runs the call are logged with it (`job=`), when the pool can tell
    /// they are this call's (see the `output` module).
    pub job: Option<u64>,
}

/// Builds a [`Pool`].
#[derive(Debug, Clone, Default)]
pub struct PoolBuilder {
    cfg: PoolConfig,
}

impl PoolBuilder {
    /// Number of worker processes (at least 1).
    #[must_use]
    pub fn workers(mut self, n: usize) -> Self {
        self.cfg.workers = n.max(1);
        self
    }
    /// How workers are started.
    #[must_use]
    pub fn start_method(mut self, m: StartMethod) -> Self {
        self.cfg.start_method = m;
        self
    }
    /// Largest frame on a worker link.
    #[must_use]
    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.cfg.max_frame_bytes = n.max(4096);
        self
    }
    /// Bound on tasks accepted but not yet sent to a worker.
    #[must_use]
    pub fn max_queued(mut self, n: usize) -> Self {
        self.cfg.max_queued = n.max(1);
        self
    }
    /// Calls in flight per worker.
    #[must_use]
    pub fn window(mut self, n: usize) -> Self {
        self.cfg.window = n.max(1);
        self
    }
    /// Async calls running at once on each worker's event loop (see
    /// [`PoolConfig::io_concurrency_per_worker`]).
    #[must_use]
    pub fn io_concurrency_per_worker(mut self, n: usize) -> Self {
        self.cfg.io_concurrency_per_worker = n.max(1);
        self
    }
    /// Recycle workers after this many calls.
    #[must_use]
    pub fn max_tasks_per_worker(mut self, n: u64) -> Self {
        self.cfg.max_tasks_per_worker = Some(n.max(1));
        self
    }
    /// Hard memory limit per worker (`RLIMIT_AS`), bytes.
    #[must_use]
    pub fn memory_limit_bytes(mut self, n: u64) -> Self {
        self.cfg.memory_limit_bytes = Some(n);
        self
    }
    /// Soft memory limit per worker (recycle between calls), bytes.
    #[must_use]
    pub fn memory_soft_limit_bytes(mut self, n: u64) -> Self {
        self.cfg.memory_soft_limit_bytes = Some(n);
        self
    }
    /// Worker deaths that charged no call a call may be in flight at before it
    /// is charged itself (see [`PoolConfig::max_deaths_per_call`]; at least 1).
    #[must_use]
    pub fn max_deaths_per_call(mut self, n: u32) -> Self {
        self.cfg.max_deaths_per_call = n.max(1);
        self
    }
    /// How long a frame from a worker may take to arrive once it has begun
    /// (see [`PoolConfig::frame_timeout`]; at least 1 ms).
    #[must_use]
    pub fn frame_timeout(mut self, t: Duration) -> Self {
        self.cfg.frame_timeout = t.max(Duration::from_millis(1));
        self
    }
    /// How often a worker that holds calls says it is alive, and how long one
    /// that holds calls may say nothing before it is killed and replaced (see
    /// [`PoolConfig::heartbeat_interval`], [`PoolConfig::liveness_timeout`];
    /// `build` fails unless the timeout is longer than the interval).
    #[must_use]
    pub fn liveness(mut self, heartbeat_interval: Duration, liveness_timeout: Duration) -> Self {
        self.cfg.heartbeat_interval = heartbeat_interval;
        self.cfg.liveness_timeout = liveness_timeout;
        self
    }
    /// Restart intensity: more than `max` deaths within `window` → restarts are delayed.
    #[must_use]
    pub fn restart_intensity(mut self, max: u32, window: Duration) -> Self {
        self.cfg.max_restarts = max;
        self.cfg.restart_window = window;
        self
    }
    /// Restart delay bounds and the quiet time that resets it.
    #[must_use]
    pub fn restart_backoff(
        mut self,
        first: Duration,
        max: Duration,
        healthy_after: Duration,
    ) -> Self {
        self.cfg.restart_backoff = first;
        self.cfg.restart_backoff_max = max;
        self.cfg.healthy_after = healthy_after;
        self
    }
    /// Timeout for calls submitted without one.
    #[must_use]
    pub fn default_timeout(mut self, t: Duration) -> Self {
        self.cfg.default_timeout = Some(t);
        self
    }
    /// Grace after the soft deadline before SIGTERM.
    #[must_use]
    pub fn cancel_grace(mut self, t: Duration) -> Self {
        self.cfg.cancel_grace = t;
        self
    }
    /// Grace after SIGTERM before SIGKILL.
    #[must_use]
    pub fn term_grace(mut self, t: Duration) -> Self {
        self.cfg.term_grace = t;
        self
    }
    /// Replaces the whole configuration.
    #[must_use]
    pub fn config(mut self, cfg: PoolConfig) -> Self {
        self.cfg = cfg;
        self
    }
    /// The configuration built so far.
    pub fn current(&self) -> &PoolConfig {
        &self.cfg
    }

    /// Starts the workers and waits until all of them are ready.
    ///
    /// # Errors
    /// [`PoolError::Startup`] when the configuration is inconsistent
    /// ([`PoolConfig::validate`]), or a worker cannot be started or fails its
    /// handshake (then none is left running).
    pub async fn build(self) -> Result<Pool, PoolError> {
        crate::launch::booted().map_err(|e| PoolError::Startup(Arc::new(e)))?;
        self.cfg.validate().map_err(|e| {
            PoolError::Startup(Arc::new(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                e,
            )))
        })?;
        let (tx, rx) = mpsc::channel(COMMAND_CHANNEL);
        // Cancel, shutdown, resize and snapshots: never stuck behind submits
        // waiting for queue space (one per caller at a time: bounded by them).
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let (started_tx, started_rx) = oneshot::channel();
        let health = Arc::new(Health::default());
        let call_jobs = Arc::new(CallJobs::default());
        Dispatcher::spawn(
            self.cfg.clone(),
            Channels {
                commands: rx,
                control: control_rx,
            },
            events.clone(),
            started_tx,
            health.clone(),
            call_jobs.clone(),
        );
        let names = started_rx.await.map_err(|_| {
            let e = std::io::Error::other("the dispatcher stopped during start-up");
            PoolError::Startup(Arc::new(e))
        })??;
        let tasks = names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as u32))
            .collect();
        Ok(Pool {
            inner: Arc::new(Inner {
                commands: tx,
                control: control_tx,
                tasks,
                names,
                next_id: AtomicU64::new(1),
                cfg: self.cfg,
                events,
                health,
                call_jobs,
            }),
        })
    }
}

struct Inner {
    commands: mpsc::Sender<Command>,
    control: mpsc::UnboundedSender<Command>,
    tasks: HashMap<String, u32>,
    names: Vec<String>,
    next_id: AtomicU64,
    cfg: PoolConfig,
    events: broadcast::Sender<PoolEvent>,
    health: Arc<Health>,
    call_jobs: Arc<CallJobs>,
}

/// A pool of worker processes. Cheap to clone; the workers stop when the last
/// clone is dropped (immediately) or on [`Pool::shutdown`] (after draining).
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("workers", &self.inner.cfg.workers)
            .field("start_method", &self.inner.cfg.start_method)
            .finish_non_exhaustive()
    }
}

/// A submitted task's result, to be awaited. Dropping it does not cancel the
/// task; [`TaskHandle::cancel`] does.
#[derive(Debug)]
#[must_use = "a task handle does nothing unless awaited"]
pub struct TaskHandle<O> {
    id: u64,
    rx: oneshot::Receiver<CallResult>,
    control: mpsc::WeakUnboundedSender<Command>,
    /// Keeps the call's job id known to the log drain until the handle goes.
    _job: Option<CallJobGuard>,
    _out: PhantomData<fn() -> O>,
}

impl<O> TaskHandle<O> {
    /// The pool-local id of this call.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Asks the pool to cancel the task: a queued task never runs; a running
    /// one sees `ctx.is_cancelled()`, and is stopped by signals after the
    /// grace periods if it does not return.
    pub async fn cancel(&self) {
        if let Some(tx) = self.control.upgrade() {
            let _ = tx.send(Command::Cancel(self.id));
        }
    }
}

impl<O: DeserializeOwned> Future for TaskHandle<O> {
    type Output = Result<O, PoolError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(_)) => Poll::Ready(Err(PoolError::Closed)),
            Poll::Ready(Ok(CallResult { result: Err(e), .. })) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(CallResult {
                result: Ok(bytes), ..
            })) => Poll::Ready(codec::decode(&bytes).map_err(|e| PoolError::Decode(Arc::new(e)))),
        }
    }
}

impl Pool {
    /// A builder with the defaults of [`PoolConfig`].
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// The configuration the pool runs with.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.cfg
    }

    /// Task names the workers registered, in id order.
    pub fn task_names(&self) -> &[String] {
        &self.inner.names
    }

    /// Restart-intensity health.
    pub fn health(&self) -> PoolHealth {
        let h = &self.inner.health;
        PoolHealth {
            degraded: h.degraded.load(Ordering::Relaxed),
            restart_delay: Duration::from_millis(h.restart_delay_ms.load(Ordering::Relaxed)),
            deaths: h.deaths.load(Ordering::Relaxed),
        }
    }

    /// Worker lifecycle events, from now on.
    pub fn events(&self) -> broadcast::Receiver<PoolEvent> {
        self.inner.events.subscribe()
    }

    /// A snapshot of the workers.
    pub async fn workers(&self) -> Vec<WorkerInfo> {
        let (tx, rx) = oneshot::channel();
        if self.inner.control.send(Command::Workers(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    fn task_id(&self, name: &str) -> Result<u32, PoolError> {
        self.inner
            .tasks
            .get(name)
            .copied()
            .ok_or_else(|| PoolError::UnknownTask {
                name: name.to_string(),
                known: self.inner.names.join(", "),
            })
    }

    fn pending<O>(
        &self,
        task: u32,
        chunk: bool,
        input: Vec<u8>,
        opts: CallOptions,
    ) -> Result<(Pending, TaskHandle<O>), PoolError> {
        let max = self.inner.cfg.max_payload_bytes();
        if input.len() > max {
            return Err(PoolError::InputTooLarge {
                bytes: input.len(),
                max,
            });
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            id,
            task,
            chunk,
            timeout: opts.timeout.or(self.inner.cfg.default_timeout),
            stall: opts.stall_timeout,
            input,
            reply: tx,
            deaths: 0,
        };
        let handle = TaskHandle {
            id,
            rx,
            control: self.inner.control.downgrade(),
            _job: opts.job.map(|job| self.inner.call_jobs.insert(id, job)),
            _out: PhantomData,
        };
        Ok((pending, handle))
    }

    async fn enqueue(&self, p: Pending) -> Result<(), PoolError> {
        self.inner
            .commands
            .send(Command::Submit(p))
            .await
            .map_err(|_| PoolError::Closed)
    }

    /// Submits task `T` with `input`; waits only if the queue is full.
    ///
    /// # Errors
    /// [`PoolError::UnknownTask`], [`PoolError::InputTooLarge`],
    /// [`PoolError::Encode`], [`PoolError::Closed`].
    pub async fn submit<T: Task>(
        &self,
        input: &T::Input,
    ) -> Result<TaskHandle<T::Output>, PoolError> {
        self.submit_with::<T>(input, CallOptions::default()).await
    }

    /// [`Pool::submit`] with per-call options.
    ///
    /// # Errors
    /// As [`Pool::submit`].
    pub async fn submit_with<T: Task>(
        &self,
        input: &T::Input,
        opts: CallOptions,
    ) -> Result<TaskHandle<T::Output>, PoolError> {
        self.submit_named(T::NAME, input, opts).await
    }

    /// Encodes `input` and submits it to task `name`; waits only if the queue
    /// is full.
    async fn submit_named<I: serde::Serialize, O>(
        &self,
        name: &str,
        input: &I,
        opts: CallOptions,
    ) -> Result<TaskHandle<O>, PoolError> {
        let task = self.task_id(name)?;
        let (p, h) = self.pending(task, false, codec::encode(input)?, opts)?;
        self.enqueue(p).await?;
        Ok(h)
    }

    /// Submits async task `T` (an [`AsyncTask`]) with `input`: it runs on a
    /// worker's event loop beside up to `io_concurrency_per_worker - 1`
    /// others. Waits only if the queue is full.
    ///
    /// # Errors
    /// As [`Pool::submit`].
    pub async fn submit_io<T: AsyncTask>(
        &self,
        input: &T::Input,
    ) -> Result<TaskHandle<T::Output>, PoolError> {
        self.submit_io_with::<T>(input, CallOptions::default())
            .await
    }

    /// [`Pool::submit_io`] with per-call options.
    ///
    /// # Errors
    /// As [`Pool::submit`].
    pub async fn submit_io_with<T: AsyncTask>(
        &self,
        input: &T::Input,
        opts: CallOptions,
    ) -> Result<TaskHandle<T::Output>, PoolError> {
        self.submit_named(T::NAME, input, opts).await
    }

    /// Runs async task `T` on `input` and waits for the output.
    ///
    /// # Errors
    /// Whatever the submission or the task failed with.
    pub async fn apply_io<T: AsyncTask>(&self, input: &T::Input) -> Result<T::Output, PoolError> {
        self.submit_io::<T>(input).await?.await
    }

    /// Submits by task name with an already encoded input (the codec's
    /// encoding of the task's input type). The output comes back encoded.
    ///
    /// # Errors
    /// As [`Pool::submit`].
    pub async fn submit_raw(
        &self,
        task: &str,
        input: Vec<u8>,
        opts: CallOptions,
    ) -> Result<TaskHandle<RawOutput>, PoolError> {
        let task = self.task_id(task)?;
        let (p, h) = self.pending(task, false, input, opts)?;
        self.enqueue(p).await?;
        Ok(h)
    }

    /// [`Pool::submit_raw`] that fails with [`PoolError::QueueFull`] instead of waiting.
    ///
    /// # Errors
    /// As [`Pool::try_submit`].
    pub fn try_submit_raw(
        &self,
        task: &str,
        input: Vec<u8>,
        opts: CallOptions,
    ) -> Result<TaskHandle<RawOutput>, PoolError> {
        let task = self.task_id(task)?;
        let (p, h) = self.pending(task, false, input, opts)?;
        self.try_enqueue(p)?;
        Ok(h)
    }

    fn try_enqueue(&self, p: Pending) -> Result<(), PoolError> {
        match self.inner.commands.try_send(Command::Submit(p)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(PoolError::QueueFull {
                max: self.inner.cfg.max_queued,
            }),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PoolError::Closed),
        }
    }

    /// Cancels a call by its id (see [`TaskHandle::cancel`]).
    pub async fn cancel(&self, call_id: u64) {
        let _ = self.inner.control.send(Command::Cancel(call_id));
    }

    /// Changes the number of workers: new ones start at once; surplus ones
    /// finish the calls they hold, then stop. No call is lost.
    pub async fn resize(&self, workers: usize) {
        let _ = self.inner.control.send(Command::Resize(workers));
    }

    /// Like [`Pool::submit`], but fails with [`PoolError::QueueFull`] instead
    /// of waiting when the pool is saturated.
    ///
    /// # Errors
    /// [`PoolError::QueueFull`], and as [`Pool::submit`].
    pub fn try_submit<T: Task>(
        &self,
        input: &T::Input,
    ) -> Result<TaskHandle<T::Output>, PoolError> {
        let task = self.task_id(T::NAME)?;
        let (p, h) = self.pending(task, false, codec::encode(input)?, CallOptions::default())?;
        self.try_enqueue(p)?;
        Ok(h)
    }

    /// Runs task `T` on `input` and waits for the output.
    ///
    /// # Errors
    /// Whatever the submission or the task failed with.
    pub async fn apply<T: Task>(&self, input: &T::Input) -> Result<T::Output, PoolError> {
        self.submit::<T>(input).await?.await
    }

    async fn submit_chunk<T: Task>(
        &self,
        task: u32,
        items: &[T::Input],
    ) -> Result<TaskHandle<Vec<Result<T::Output, TaskFailure>>>, PoolError> {
        let (p, h) = self.pending(task, true, codec::encode(items)?, CallOptions::default())?;
        self.enqueue(p).await?;
        Ok(h)
    }

    /// Runs `T` over `inputs` and returns the outputs in input order; the
    /// first failure (in input order) is returned instead. `chunksize` inputs
    /// travel and run as one call (0 picks `len / (4 × workers)`, like Python).
    ///
    /// # Errors
    /// The first failing item's error.
    pub async fn map<T: Task>(
        &self,
        inputs: Vec<T::Input>,
        chunksize: usize,
    ) -> Result<Vec<T::Output>, PoolError> {
        self.map_results::<T>(inputs, chunksize)
            .await
            .into_iter()
            .collect()
    }

    /// Like [`Pool::map`], but keeps every item's own result.
    pub async fn map_results<T: Task>(
        &self,
        inputs: Vec<T::Input>,
        chunksize: usize,
    ) -> Vec<Result<T::Output, PoolError>> {
        let n = inputs.len();
        let chunksize = self.chunksize(n, chunksize);
        let task = match self.task_id(T::NAME) {
            Ok(t) => t,
            Err(e) => return (0..n).map(|_| Err(e.clone())).collect(),
        };
        let mut out = Vec::with_capacity(n);
        if chunksize == 1 {
            let mut handles = Vec::with_capacity(n);
            for input in &inputs {
                handles.push(self.submit::<T>(input).await);
            }
            for h in handles {
                out.push(match h {
                    Ok(h) => h.await,
                    Err(e) => Err(e),
                });
            }
            return out;
        }
        let mut handles = Vec::new();
        for chunk in inputs.chunks(chunksize) {
            handles.push((chunk.len(), self.submit_chunk::<T>(task, chunk).await));
        }
        for (len, h) in handles {
            let res = match h {
                Ok(h) => h.await,
                Err(e) => Err(e),
            };
            match res {
                Ok(items) => out.extend(items.into_iter().map(|r| r.map_err(PoolError::Task))),
                Err(e) => out.extend((0..len).map(|_| Err(e.clone()))),
            }
        }
        out
    }

    fn chunksize(&self, n: usize, asked: usize) -> usize {
        if asked > 0 {
            return asked;
        }
        n.div_ceil(4 * self.inner.cfg.workers).max(1)
    }

    /// Runs `T` over `inputs`, yielding `(index, result)` as calls finish, in
    /// completion order. Inputs are submitted by a background task as the
    /// queue has room, so the input can be longer than `max_queued`.
    pub fn imap_unordered<T, I>(&self, inputs: I, chunksize: usize) -> ImapUnordered<T::Output>
    where
        T: Task,
        T::Input: Send + Sync,
        T::Output: Send,
        I: IntoIterator<Item = T::Input> + Send + 'static,
        I::IntoIter: Send,
    {
        let chunksize = chunksize.max(1);
        let (tx, rx) = mpsc::channel(1024);
        let pool = self.clone();
        tokio::spawn(async move {
            let task = match pool.task_id(T::NAME) {
                Ok(t) => t,
                Err(e) => {
                    let _ = tx.send((0, Err(e))).await;
                    return;
                }
            };
            let mut iter = inputs.into_iter();
            let mut index = 0usize;
            loop {
                let chunk: Vec<T::Input> = iter.by_ref().take(chunksize).collect();
                if chunk.is_empty() {
                    break;
                }
                let first = index;
                index += chunk.len();
                let tx = tx.clone();
                let handle = pool.submit_chunk::<T>(task, &chunk).await;
                tokio::spawn(async move {
                    let res = match handle {
                        Ok(h) => h.await,
                        Err(e) => Err(e),
                    };
                    match res {
                        Ok(items) => {
                            for (i, r) in items.into_iter().enumerate() {
                                if tx
                                    .send((first + i, r.map_err(PoolError::Task)))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            for i in 0..chunk.len() {
                                if tx.send((first + i, Err(e.clone()))).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        ImapUnordered { rx }
    }

    /// Stops taking tasks, lets queued and running ones finish, stops the
    /// workers and waits until every one is reaped.
    pub async fn shutdown(self) {
        self.stop(true).await;
    }

    /// Stops at once: queued and running tasks fail with [`PoolError::Closed`],
    /// workers are killed and reaped.
    pub async fn terminate(self) {
        self.stop(false).await;
    }

    async fn stop(self, graceful: bool) {
        let (tx, rx) = oneshot::channel();
        if self
            .inner
            .control
            .send(Command::Shutdown { graceful, done: tx })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

/// Results of [`Pool::imap_unordered`] in completion order.
#[derive(Debug)]
pub struct ImapUnordered<O> {
    rx: mpsc::Receiver<(usize, Result<O, PoolError>)>,
}

impl<O> ImapUnordered<O> {
    /// The next finished item, or `None` when all are done.
    pub async fn next(&mut self) -> Option<(usize, Result<O, PoolError>)> {
        self.rx.recv().await
    }
}

/// Output marker of [`Pool::submit_raw`]: such a handle is read with
/// [`TaskHandle::raw`], which returns the encoded output untouched.
#[derive(Debug)]
pub struct RawOutput;

impl<O> TaskHandle<O> {
    /// Waits for the encoded output, without decoding it.
    ///
    /// # Errors
    /// The call's failure.
    pub async fn raw(self) -> Result<Vec<u8>, PoolError> {
        self.raw_with_pid().await.1
    }

    /// Waits for the encoded output, with the pid of the worker that ran the
    /// call (`None` when no worker did, e.g. cancelled while queued).
    pub async fn raw_with_pid(self) -> (Option<u32>, Result<Vec<u8>, PoolError>) {
        let r = self.report().await;
        (r.pid, r.result)
    }

    /// Waits for the call and returns everything known about it: encoded
    /// output, worker pid, CPU and wall time.
    pub async fn report(self) -> CallReport {
        match self.rx.await {
            Ok(r) => CallReport {
                pid: r.pid,
                usage: r.usage,
                result: r.result,
            },
            Err(_) => CallReport {
                pid: None,
                usage: None,
                result: Err(PoolError::Closed),
            },
        }
    }
}
