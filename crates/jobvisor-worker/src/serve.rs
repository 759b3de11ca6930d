//! The worker loop.
//!
//! The handshake and `Configure`, then the I/O lane's thread (when the
//! registry has async tasks) and the pulse's thread (when the supervisor
//! asks for heartbeats), then the CPU loop on this thread: take the
//! calls the `inbox` queued (it hands the async ones to the lane), run them
//! in order, buffer their replies and write them when `flush` says so, and
//! between calls watch the soft memory limit.

use std::io;
use std::os::fd::OwnedFd;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jobvisor_proto::worker::{FromWorker, Reply, TaskKind, ToWorker};
use jobvisor_proto::{Hello, Role};

use crate::error::WorkerError;
use crate::flush::{is_timed, Flush};
use crate::inbox::{Inbox, LaneRoute};
use crate::io_lane::{self, LaneConfig};
use crate::limits::{
    limit_address_space, max_rss_kib, over_limit_action, over_soft_limit, peak_rss_kib,
    rss_check_due, tune_malloc, OverLimit, PEAK_SAMPLE_EVERY,
};
use crate::link::{Link, BOOTSTRAP_MAX_FRAME};
use crate::pulse::{self, Pulse};
use crate::registry::Registry;
use crate::reply::{name_soft_timeout, outcome, outcome_size};
use crate::shared::{IoMsg, LaneState};
use crate::task::Ctx;
use crate::usage::{call_cpu_us, Sampler};

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

    let Limits {
        max_output_bytes,
        soft_limit,
        heartbeat_interval,
    } = configure(&mut link)?;
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
        b.arm_child_group();
        b.record_panics();
        b.set_rss_at_start(max_rss_kib(), peak_rss_kib().unwrap_or(0));
    }
    let beacon = beacon.as_ref();
    let mut inbox = Inbox::new();
    let pulse = Arc::new(Pulse::default());
    std::thread::scope(|scope| {
        let lane_state = kinds
            .contains(&TaskKind::Io)
            .then(|| Arc::new(LaneState::default()));
        if let Some(every) = heartbeat_interval {
            // The pulse: "alive" while calls are held, from a thread that
            // no task runs on (see `pulse`). Started first: nothing else
            // runs yet that a failed start would have to stop.
            let out = link.shared_out();
            let pulse = Arc::clone(&pulse);
            let lane = lane_state.clone();
            let max = link.max_frame_bytes();
            std::thread::Builder::new()
                .name("jobvisor-pulse".into())
                .spawn_scoped(scope, move || {
                    pulse::run(&pulse, &out, lane.as_deref(), every, max);
                })?;
        }
        if let Some(state) = lane_state {
            // The I/O lane: async calls on an event loop beside this thread.
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let out = link.shared_out();
            let cfg = LaneConfig {
                max_frame_bytes: link.max_frame_bytes(),
                max_output_bytes,
                soft_limit,
                state: Arc::clone(&state),
                heartbeat_interval,
            };
            let lane = std::thread::Builder::new()
                .name("jobvisor-io".into())
                .spawn_scoped(scope, move || io_lane::run(registry, rx, out, &cfg, beacon));
            if let Err(e) = lane {
                pulse.stop();
                return Err(e.into());
            }
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
                Worker {
                    beacon,
                    pulse: &pulse,
                    max_output_bytes,
                    soft_limit,
                },
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
        pulse.stop();
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

/// What the CPU loop keeps beside the link and the inbox.
struct Worker<'a> {
    beacon: Option<&'a crate::Beacon>,
    pulse: &'a Pulse,
    max_output_bytes: u64,
    soft_limit: u64,
}

/// The CPU thread: reads the pipe, runs CPU calls in order, routes async ones
/// to the I/O lane.
fn cpu_loop(
    registry: &Registry,
    link: &mut Link,
    inbox: &mut Inbox,
    worker: Worker<'_>,
) -> Result<Exit, WorkerError> {
    let Worker {
        beacon,
        pulse,
        max_output_bytes,
        soft_limit,
    } = worker;
    let mut last_rss_check = Instant::now();
    let mut last_peak_sample = Instant::now();
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
            // Async calls may have gone to the lane: a parked pulse must
            // speak for them.
            pulse.wake();
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
            b.clear_panic();
            let deadline_us = call.timeout_ms.map_or(0, |ms| {
                crate::beacon::monotonic_us().saturating_add(ms.saturating_mul(1000))
            });
            b.set_with_deadline(call.id, deadline_us);
        }
        let started = Instant::now();
        let measure = sampler.measure();
        let cpu_before = if measure { call_cpu_us() } else { 0 };
        let deadline = call
            .timeout_ms
            .map(|ms| started + Duration::from_millis(ms));
        pulse.cpu_call(true);
        let result = {
            let mut ctx = Ctx::new(call.id, link, inbox, deadline);
            ctx.set_report_interval(crate::pace::report_interval(call.stall_ms));
            let r = registry.call(call.task, call.chunk, &call.input, &mut ctx);
            let past_deadline = ctx.deadline.is_some_and(|d| Instant::now() >= d);
            name_soft_timeout(r, past_deadline, call.timeout_ms)
        };
        pulse.cpu_call(false);
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
                    call_cpu_us().saturating_sub(cpu_before)
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
        if let Some(b) = beacon {
            // Crash evidence: the worker's own peak (see `Beacon::own_peak_kib`).
            if now.saturating_duration_since(last_peak_sample) >= PEAK_SAMPLE_EVERY {
                last_peak_sample = now;
                if let Some(kib) = peak_rss_kib() {
                    b.set_peak_rss(kib);
                }
            }
        }
        if rss_check_due(
            soft_limit,
            inbox.is_empty(),
            now.saturating_duration_since(last_rss_check),
        ) {
            last_rss_check = now;
            if let Some(reason) = over_soft_limit(soft_limit) {
                let lane = inbox.lane().map(|l| &*l.state);
                match over_limit_action(lane.map_or(0, LaneState::held)) {
                    OverLimit::Drain => {
                        if lane.is_some_and(LaneState::start_draining) {
                            link.send(&FromWorker::Draining { reason })?;
                            link.flush()?;
                        }
                    }
                    OverLimit::Retire => {
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
            pulse.wake();
            flush.ingested(now);
        }
    }
}

/// What `Configure` set.
struct Limits {
    max_output_bytes: u64,
    /// The soft memory limit, bytes (0 = none).
    soft_limit: u64,
    /// How often the pulse speaks while calls are held (None: never).
    heartbeat_interval: Option<Duration>,
}

/// Waits for `Configure` and applies it.
fn configure(link: &mut Link) -> Result<Limits, WorkerError> {
    let until = Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        if let Some(msg) = link.next_frame::<ToWorker>()? {
            return match msg {
                ToWorker::Configure {
                    max_frame_bytes,
                    max_output_bytes,
                    memory_soft_limit_bytes,
                    memory_limit_bytes,
                    heartbeat_interval_ms,
                } => {
                    if memory_limit_bytes > 0 {
                        limit_address_space(memory_limit_bytes)?;
                    }
                    link.set_max_frame_bytes(
                        usize::try_from(max_frame_bytes).unwrap_or(usize::MAX),
                    );
                    Ok(Limits {
                        max_output_bytes,
                        soft_limit: memory_soft_limit_bytes,
                        heartbeat_interval: (heartbeat_interval_ms > 0)
                            .then(|| Duration::from_millis(heartbeat_interval_ms)),
                    })
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

#[cfg(test)]
mod tests {
    //! The whole loop in this process, with the test as the supervisor on the
    //! other ends of the two pipes.

    use std::fs::File;
    use std::io::{Read, Write};
    use std::thread::JoinHandle;

    use jobvisor_proto::worker::{Call, FailureKind, Outcome};
    use jobvisor_proto::{codec, encode_frame, FrameBuf, HELLO_BYTES};

    use super::*;
    use crate::{AsyncCtx, AsyncTask, Task, TaskError};

    const MAX: usize = 1 << 16;

    struct Echo;
    impl Task for Echo {
        const NAME: &'static str = "echo";
        type Input = String;
        type Output = String;
        fn run(&self, input: String, _ctx: &mut Ctx<'_>) -> Result<String, TaskError> {
            Ok(input)
        }
    }

    /// Says it runs, then waits for a cancel or its soft deadline.
    struct Park;
    impl Task for Park {
        const NAME: &'static str = "park";
        type Input = ();
        type Output = ();
        fn run(&self, (): (), ctx: &mut Ctx<'_>) -> Result<(), TaskError> {
            ctx.heartbeat();
            if ctx.sleep(Duration::from_secs(600)) {
                Ok(())
            } else {
                Err(TaskError::cancelled())
            }
        }
    }

    struct AsyncEcho;
    impl AsyncTask for AsyncEcho {
        const NAME: &'static str = "async_echo";
        type Input = String;
        type Output = String;
        async fn run(&self, input: String, _ctx: AsyncCtx) -> Result<String, TaskError> {
            Ok(input)
        }
    }

    /// The supervisor's side of a worker loop running on a thread.
    struct Supervisor {
        to_worker: File,
        from_worker: File,
        rbuf: FrameBuf,
        worker: JoinHandle<Result<(), WorkerError>>,
    }

    impl Supervisor {
        /// Starts the loop and reads its hello; `configure` is sent if given.
        fn start(configure: Option<ToWorker>) -> Self {
            let (r_in, w_in) = nix::unistd::pipe().unwrap();
            let (r_out, w_out) = nix::unistd::pipe().unwrap();
            let worker = std::thread::spawn(move || {
                let registry = Registry::new().with(Echo).with(Park).with_async(AsyncEcho);
                serve(&registry, r_in, w_out)
            });
            let mut s = Self {
                to_worker: File::from(w_in),
                from_worker: File::from(r_out),
                rbuf: FrameBuf::new(MAX),
                worker,
            };
            let mut hello = [0u8; HELLO_BYTES];
            s.from_worker.read_exact(&mut hello).unwrap();
            let peer = Hello::decode(&hello).unwrap();
            let ours = Hello::ours(Role::Supervisor);
            ours.check_peer(&peer, Role::Worker).unwrap();
            s.to_worker.write_all(&ours.encode()).unwrap();
            if let Some(c) = configure {
                s.send(&c);
            }
            s
        }

        fn send(&mut self, msg: &ToWorker) {
            let mut bytes = Vec::new();
            encode_frame(&mut bytes, msg, MAX).unwrap();
            self.to_worker.write_all(&bytes).unwrap();
        }

        /// The next frame from the worker (blocking).
        fn recv(&mut self) -> FromWorker {
            loop {
                if let Some(msg) = self.rbuf.decode_next::<FromWorker>().unwrap() {
                    return msg;
                }
                let mut chunk = [0u8; 4096];
                let n = self.from_worker.read(&mut chunk).unwrap();
                assert!(n > 0, "the worker closed its pipe");
                self.rbuf.extend(&chunk[..n]);
            }
        }

        /// Replies until `n` arrived, skipping heartbeats.
        fn replies(&mut self, n: usize) -> Vec<Reply> {
            let mut out = Vec::new();
            while out.len() < n {
                match self.recv() {
                    FromWorker::Done(r) => out.extend(r),
                    FromWorker::Heartbeat { .. }
                    | FromWorker::Progress { .. }
                    | FromWorker::Pulse => {}
                    other => panic!("unexpected {other:?}"),
                }
            }
            out
        }

        fn finish(mut self) -> Result<(), WorkerError> {
            self.send(&ToWorker::Shutdown);
            self.worker.join().unwrap()
        }
    }

    fn configure(max_output_bytes: u64) -> ToWorker {
        ToWorker::Configure {
            max_frame_bytes: MAX as u64,
            max_output_bytes,
            memory_soft_limit_bytes: 0,
            memory_limit_bytes: 0,
            heartbeat_interval_ms: 0,
        }
    }

    fn call(id: u64, task: u32, input: &impl serde::Serialize, timeout_ms: Option<u64>) -> Call {
        Call {
            id,
            task,
            chunk: false,
            timeout_ms,
            stall_ms: None,
            input: codec::encode(input).unwrap(),
        }
    }

    fn ready(s: &mut Supervisor) -> Vec<TaskKind> {
        match s.recv() {
            FromWorker::Ready { tasks, kinds, .. } => {
                assert_eq!(tasks, ["echo", "park", "async_echo"]);
                kinds
            }
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    fn output(r: &Reply) -> String {
        match &r.outcome {
            Outcome::Ok(b) => codec::decode(b).unwrap(),
            Outcome::Err(f) => panic!("call {} failed: {f:?}", r.id),
        }
    }

    fn failure(r: &Reply) -> (FailureKind, &str) {
        match &r.outcome {
            Outcome::Err(f) => (f.kind, f.message.as_str()),
            Outcome::Ok(_) => panic!("call {} succeeded", r.id),
        }
    }

    #[test]
    fn cpu_and_async_calls_are_answered_then_shutdown_ends_the_loop() {
        let mut s = Supervisor::start(Some(configure(1024)));
        assert_eq!(ready(&mut s), [TaskKind::Cpu, TaskKind::Cpu, TaskKind::Io]);
        s.send(&ToWorker::Run(vec![
            call(1, 0, &"a", None),
            call(2, 2, &"b", None),
            call(3, 0, &"c", Some(60_000)),
        ]));
        let mut replies = s.replies(3);
        replies.sort_by_key(|r| r.id);
        let outputs: Vec<String> = replies.iter().map(output).collect();
        assert_eq!(outputs, ["a", "b", "c"]);
        s.finish().unwrap();
    }

    #[test]
    fn an_output_over_the_limit_fails_its_call() {
        let mut s = Supervisor::start(Some(configure(8)));
        ready(&mut s);
        s.send(&ToWorker::Run(vec![call(1, 0, &"x".repeat(64), None)]));
        let replies = s.replies(1);
        assert_eq!(failure(&replies[0]).0, FailureKind::OutputTooLarge);
        s.finish().unwrap();
    }

    #[test]
    fn a_cancel_stops_the_running_call_and_answers_a_queued_one() {
        let mut s = Supervisor::start(Some(configure(1024)));
        ready(&mut s);
        s.send(&ToWorker::Run(vec![
            call(1, 1, &(), None),
            call(2, 0, &"q", None),
        ]));
        // Call 1 runs once it beats.
        assert!(matches!(s.recv(), FromWorker::Heartbeat { id: 1 }));
        s.send(&ToWorker::Cancel { id: 2 });
        let queued = s.replies(1);
        assert_eq!(queued[0].id, 2);
        assert_eq!(
            failure(&queued[0]),
            (FailureKind::Cancelled, "cancelled before it started")
        );
        s.send(&ToWorker::Cancel { id: 1 });
        let running = s.replies(1);
        assert_eq!(running[0].id, 1);
        assert_eq!(failure(&running[0]).0, FailureKind::Cancelled);
        s.finish().unwrap();
    }

    #[test]
    fn a_worker_holding_a_call_pulses_until_it_answers() {
        let mut s = Supervisor::start(Some(ToWorker::Configure {
            max_frame_bytes: MAX as u64,
            max_output_bytes: 1024,
            memory_soft_limit_bytes: 0,
            memory_limit_bytes: 0,
            heartbeat_interval_ms: 2,
        }));
        ready(&mut s);
        // Park beats once, then sleeps without a word: the pulse speaks.
        s.send(&ToWorker::Run(vec![call(1, 1, &(), None)]));
        assert!(matches!(s.recv(), FromWorker::Heartbeat { id: 1 }));
        assert_eq!(s.recv(), FromWorker::Pulse);
        assert_eq!(s.recv(), FromWorker::Pulse);
        s.send(&ToWorker::Cancel { id: 1 });
        let replies = s.replies(1);
        assert_eq!(failure(&replies[0]).0, FailureKind::Cancelled);
        s.finish().unwrap();
    }

    #[test]
    fn a_call_past_its_soft_deadline_says_so() {
        let mut s = Supervisor::start(Some(configure(1024)));
        ready(&mut s);
        s.send(&ToWorker::Run(vec![call(1, 1, &(), Some(1))]));
        let replies = s.replies(1);
        assert_eq!(
            failure(&replies[0]),
            (FailureKind::Cancelled, "soft timeout of 1 ms reached")
        );
        s.finish().unwrap();
    }

    #[test]
    fn a_run_before_configure_breaks_the_protocol() {
        let mut s = Supervisor::start(None);
        s.send(&ToWorker::Run(vec![call(1, 0, &"a", None)]));
        match s.worker.join().unwrap() {
            Err(WorkerError::Protocol(m)) => assert!(m.starts_with("expected Configure first")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_peer_that_is_not_jobvisor_fails_the_handshake() {
        let (r_in, w_in) = nix::unistd::pipe().unwrap();
        let (r_out, w_out) = nix::unistd::pipe().unwrap();
        let worker = std::thread::spawn(move || serve(&Registry::new(), r_in, w_out));
        File::from(w_in).write_all(&[0u8; HELLO_BYTES]).unwrap();
        let e = worker.join().unwrap().unwrap_err();
        assert!(matches!(e, WorkerError::Handshake(_)), "{e:?}");
        drop(r_out);
    }

    #[test]
    fn a_closed_pipe_ends_the_loop_quietly() {
        let mut s = Supervisor::start(Some(configure(1024)));
        ready(&mut s);
        drop(s.to_worker);
        assert!(s.worker.join().unwrap().is_ok());
    }
}
