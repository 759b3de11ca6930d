//! The worker loop.
//!
//! Handshake, then: take calls from the pipe, run the CPU calls in order on
//! this thread, hand the async ones to the I/O lane (`io_lane`), batch the
//! replies into `Done` frames and write them when `flush` says so.

use std::io;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobvisor_proto::worker::{FailureKind, FromWorker, Reply, TaskKind, ToWorker};
use jobvisor_proto::{Hello, Role};

use crate::error::WorkerError;
use crate::flush::{is_timed, Flush};
use crate::inbox::{Inbox, LaneRoute};
use crate::io_lane::{self, LaneConfig};
use crate::limits::{limit_address_space, over_soft_limit, tune_malloc};
use crate::link::{Link, BOOTSTRAP_MAX_FRAME};
use crate::registry::Registry;
use crate::reply::{outcome, outcome_size, soft_timeout};
use crate::shared::{IoMsg, LaneState};
use crate::task::Ctx;
use crate::usage::{thread_cpu_us, Sampler};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the worker loop on the two protocol pipes until the supervisor sends
/// `Shutdown` (after the queued calls) or closes the pipe.
///
/// # Errors
/// [`WorkerError`] when the link breaks in a way that is not a plain close.
pub fn serve(registry: &Registry, input: OwnedFd, output: OwnedFd) -> Result<(), WorkerError> {
    serve_with_beacon(registry, input, output, None)
}

/// [`serve`], marking the running call in `beacon` (see [`crate::Beacon`]) so
/// the supervisor knows, should this worker die, which call it was running.
///
/// # Errors
/// As [`serve`].
pub fn serve_with_beacon(
    registry: &Registry,
    input: OwnedFd,
    output: OwnedFd,
    beacon: Option<crate::Beacon>,
) -> Result<(), WorkerError> {
    let mut link = Link::new(input, output, BOOTSTRAP_MAX_FRAME)?;
    let ours = Hello::ours(Role::Worker);
    link.write_raw(&ours.encode())?;
    let peer = link.read_hello(HANDSHAKE_TIMEOUT)?;
    ours.check_peer(&peer, Role::Supervisor)?;

    let (max_output_bytes, soft_limit) = configure(&mut link)?;
    tune_malloc();
    let kinds = registry.kinds();
    link.send(&FromWorker::Ready {
        pid: std::process::id(),
        tasks: registry.names().map(str::to_owned).collect(),
        kinds: kinds.clone(),
    })?;
    link.flush()?;

    if let Some(b) = &beacon {
        b.mark_crashing_thread();
    }
    let beacon = beacon.as_ref();
    let mut inbox = Inbox::new();
    std::thread::scope(|scope| {
        if kinds.contains(&TaskKind::Io) {
            // The I/O lane: async calls on an event loop beside this thread.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let out = link.shared_out();
            let state = Arc::new(LaneState::default());
            let cfg = LaneConfig {
                max_frame_bytes: link.max_frame_bytes(),
                max_output_bytes,
                soft_limit,
                state: Arc::clone(&state),
            };
            std::thread::Builder::new()
                .name("jobvisor-io".into())
                .spawn_scoped(scope, move || io_lane::run(registry, rx, out, &cfg, beacon))?;
            inbox.set_lane(LaneRoute {
                tx,
                is_async: kinds.iter().map(|k| *k == TaskKind::Io).collect(),
                state,
            });
        }
        // A panic outside a task's own catch_unwind (a Deserialize or
        // Serialize impl, say) must not leave the lane running in a process
        // whose CPU thread is gone: die, and let the beacon name the call.
        let r = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            cpu_loop(
                registry,
                &mut link,
                &mut inbox,
                beacon,
                max_output_bytes,
                soft_limit,
            )
        })) {
            Ok(r) => r,
            Err(_) => {
                eprintln!("jobvisor worker: the CPU thread panicked outside a task; aborting");
                std::process::abort();
            }
        };
        if let Some(io) = inbox.take_lane() {
            // After a Shutdown the lane finishes what runs (its channel just
            // closes); otherwise the worker is going away now.
            if !matches!(r, Ok(Exit::Finished)) {
                let _ = io.tx.send(IoMsg::Abort);
            }
        }
        r.map(|_| ())
    })
}

/// How the CPU loop ended.
enum Exit {
    /// `Shutdown`, and everything queued is done.
    Finished,
    /// The supervisor closed the pipe, or the worker retired.
    Gone,
}

/// The CPU thread: reads the pipe, runs CPU calls in order, routes async ones
/// to the I/O lane.
fn cpu_loop(
    registry: &Registry,
    link: &mut Link,
    inbox: &mut Inbox,
    beacon: Option<&crate::Beacon>,
    max_output_bytes: u64,
    soft_limit: u64,
) -> Result<Exit, WorkerError> {
    let mut last_rss_check = Instant::now();
    let mut sampler = Sampler::new();
    let mut flush = Flush::new(Instant::now());
    loop {
        if inbox.is_empty() {
            link.flush()?;
            flush.flushed();
            if inbox.shutdown() {
                return Ok(Exit::Finished);
            }
            if !link.fill_nonblocking()? {
                return Ok(Exit::Gone);
            }
            inbox.take_frames(link, None)?;
            if inbox.is_empty() && !inbox.shutdown() {
                link.wait_readable(None)?;
                if !link.fill_nonblocking()? {
                    return Ok(Exit::Gone);
                }
                inbox.take_frames(link, None)?;
            }
            flush.ingested(Instant::now());
            continue;
        }
        let Some(call) = inbox.pop_front() else {
            continue;
        };
        let timed = is_timed(&call);
        if flush.before_call(timed) {
            link.flush()?;
            flush.flushed();
        }
        if let Some(b) = beacon {
            let deadline_us = call.timeout_ms.map_or(0, |ms| {
                crate::beacon::monotonic_us().saturating_add(ms.saturating_mul(1000))
            });
            b.set_with_deadline(call.id, deadline_us);
        }
        let started = Instant::now();
        let measure = sampler.measure();
        let cpu_before = if measure { thread_cpu_us() } else { 0 };
        let deadline = call
            .timeout_ms
            .map(|ms| started + Duration::from_millis(ms));
        let result = {
            let mut ctx = Ctx::new(call.id, link, inbox, deadline);
            ctx.set_report_interval(crate::pace::report_interval(call.stall_ms));
            let r = registry.call(call.task, call.chunk, &call.input, &mut ctx);
            match r {
                // A task that noticed the cancel but returned Ok anyway still
                // produced an output: keep it.
                Ok(bytes) => Ok(bytes),
                Err(f)
                    if f.kind == FailureKind::Cancelled
                        && ctx.deadline.is_some_and(|d| Instant::now() >= d) =>
                {
                    Err(soft_timeout(call.timeout_ms))
                }
                Err(f) => Err(f),
            }
        };
        let outcome = outcome(result, max_output_bytes);
        let size = outcome_size(&outcome);
        if let Some(b) = beacon {
            b.set(0);
        }
        let wall_us = started.elapsed().as_micros() as u64;
        sampler.record(measure, wall_us);
        link.push_reply(
            Reply {
                id: call.id,
                outcome,
                cpu_us: if measure {
                    thread_cpu_us().saturating_sub(cpu_before)
                } else {
                    0
                },
                wall_us: if measure { wall_us } else { 0 },
                max_poll_us: 0,
            },
            size,
        )?;
        flush.replied(timed);
        let now = Instant::now();
        if soft_limit > 0
            && (inbox.is_empty() || now.duration_since(last_rss_check) >= RSS_CHECK_INTERVAL)
        {
            last_rss_check = now;
            if let Some(reason) = over_soft_limit(soft_limit) {
                match inbox.lane() {
                    // Async calls are running: they must finish here, so the
                    // worker drains (announced once, by whichever thread
                    // sees it first) instead of leaving at once.
                    Some(io) if io.state.held() > 0 => {
                        if io.state.start_draining() {
                            link.send(&FromWorker::Draining { reason })?;
                            link.flush()?;
                        }
                    }
                    // Recycle between calls: the supervisor re-dispatches what
                    // we have not answered and starts a fresh worker.
                    _ => {
                        link.send(&FromWorker::Retiring { reason })?;
                        link.flush()?;
                        return Ok(Exit::Gone);
                    }
                }
            }
        }
        if flush.after_reply(now) {
            link.flush()?;
            flush.flushed();
            if !link.fill_nonblocking()? {
                return Ok(Exit::Gone);
            }
            inbox.take_frames(link, None)?;
            flush.ingested(now);
        }
    }
}

/// How often, at most, the soft memory limit is checked while calls are queued.
const RSS_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Waits for `Configure` and applies it; returns `max_output_bytes` and the
/// soft memory limit.
fn configure(link: &mut Link) -> Result<(u64, u64), WorkerError> {
    let until = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Some(msg) = link.next_frame::<ToWorker>()? {
            return match msg {
                ToWorker::Configure {
                    max_frame_bytes,
                    max_output_bytes,
                    memory_soft_limit_bytes,
                    memory_limit_bytes,
                } => {
                    if memory_limit_bytes > 0 {
                        limit_address_space(memory_limit_bytes)?;
                    }
                    link.set_max_frame_bytes(
                        usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
                    );
                    Ok((max_output_bytes, memory_soft_limit_bytes))
                }
                other => Err(WorkerError::Protocol(format!(
                    "expected Configure first, got {other:?}"
                ))),
            };
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || !link.wait_readable(Some(left))? {
            return Err(WorkerError::Protocol(
                "no Configure from the supervisor".into(),
            ));
        }
        if !link.fill_nonblocking()? {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    }
}
