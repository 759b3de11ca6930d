//! Frame routing on the CPU thread: where each of the supervisor's frames
//! goes.
//!
//! A `Run` call of a CPU task joins the queue the CPU thread works through in
//! order; one of an async task goes to the I/O lane at once. A `Cancel` stops
//! the call running on the CPU thread, answers a queued one on the spot (the
//! running call may take long), or goes to the lane, which ignores ids it does
//! not run. `Shutdown` marks the end of the queue. The routing is
//! [`Inbox::accept`], over plain data; [`Inbox::take_frames`] feeds it the
//! frames buffered in the [`Link`] and writes what it answers.

use std::collections::VecDeque;
use std::sync::Arc;

use jobvisor_proto::worker::{Call, FailureKind, Outcome, Reply, TaskFailure, ToWorker};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::WorkerError;
use crate::link::Link;
use crate::reply::outcome_size;
use crate::shared::{IoMsg, LaneState};

/// Where the CPU thread sends the calls of async tasks (and the cancels it
/// does not own): the I/O lane, when the worker has one.
#[derive(Debug)]
pub(crate) struct LaneRoute {
    pub(crate) tx: UnboundedSender<IoMsg>,
    /// `is_async[task id]`.
    pub(crate) is_async: Vec<bool>,
    /// What the two threads share about the lane (calls held, draining).
    pub(crate) state: Arc<LaneState>,
}

impl LaneRoute {
    /// Whether task id `task` is an async task run by the lane.
    fn runs(&self, task: u32) -> bool {
        self.is_async.get(task as usize).copied().unwrap_or(false)
    }
}

/// What the caller of [`Inbox::accept`] must do about one message.
#[derive(Debug, PartialEq)]
pub(crate) enum Accepted {
    /// Nothing: the message is queued, routed or noted.
    Routed,
    /// Cancel the call running on the CPU thread.
    CancelRunning,
    /// Send this reply now: a queued call was cancelled before it started.
    Answer(Reply),
}

/// The supervisor's messages not acted on yet: the CPU queue, whether
/// `Shutdown` came, and the way to the lane.
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    /// CPU calls in the order they arrived.
    pending: VecDeque<Call>,
    /// `Shutdown` arrived: finish the queue, then stop.
    shutdown: bool,
    lane: Option<LaneRoute>,
}

impl Inbox {
    /// An inbox of a worker without an I/O lane.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Routes the calls of async tasks to `lane` from now on.
    pub(crate) fn set_lane(&mut self, lane: LaneRoute) {
        self.lane = Some(lane);
    }

    /// The lane's route, when the worker has one.
    pub(crate) fn lane(&self) -> Option<&LaneRoute> {
        self.lane.as_ref()
    }

    /// Takes the lane's route out (the worker is stopping).
    pub(crate) fn take_lane(&mut self) -> Option<LaneRoute> {
        self.lane.take()
    }

    /// The next CPU call to run.
    pub(crate) fn pop_front(&mut self) -> Option<Call> {
        self.pending.pop_front()
    }

    /// Whether no CPU call is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Whether `Shutdown` arrived.
    pub(crate) fn shutdown(&self) -> bool {
        self.shutdown
    }

    /// Routes one message; `running` is the CPU call running now, if any.
    pub(crate) fn accept(&mut self, msg: ToWorker, running: Option<u64>) -> Accepted {
        match msg {
            ToWorker::Run(calls) => {
                for call in calls {
                    self.route_call(call);
                }
                Accepted::Routed
            }
            ToWorker::Cancel { id } => {
                if Some(id) == running {
                    return Accepted::CancelRunning;
                }
                if let Some(pos) = self.pending.iter().position(|c| c.id == id) {
                    self.pending.remove(pos);
                    return Accepted::Answer(cancelled_before_start(id));
                }
                if let Some(lane) = &self.lane {
                    // An async call (the lane ignores ids it does not run), or
                    // one that finished already and whose reply is on the way.
                    let _ = lane.tx.send(IoMsg::Cancel(id));
                }
                Accepted::Routed
            }
            ToWorker::Shutdown => {
                self.shutdown = true;
                Accepted::Routed
            }
            // Limits are set once, at the start; a late Configure is ignored.
            ToWorker::Configure { .. } => Accepted::Routed,
        }
    }

    fn route_call(&mut self, call: Call) {
        let Some(lane) = self.lane.as_ref().filter(|l| l.runs(call.task)) else {
            self.pending.push_back(call);
            return;
        };
        // Counted here, before the lane sees it, so the CPU thread's
        // soft-limit check never misses a call.
        lane.state.routed();
        if lane.tx.send(IoMsg::Run(call)).is_err() {
            // The lane only ends when told to; a lane that is gone is a
            // broken worker. Dying re-dispatches its calls.
            eprintln!("jobvisor worker: the I/O lane is gone; aborting");
            std::process::abort();
        }
    }

    /// Applies every complete frame in the link's read buffer, answering
    /// cancelled queued calls at once. Returns whether a cancel for
    /// `running` arrived.
    ///
    /// # Errors
    /// A frame that does not decode, or a failed write of an answer.
    pub(crate) fn take_frames(
        &mut self,
        link: &mut Link,
        running: Option<u64>,
    ) -> Result<bool, WorkerError> {
        let mut hit = false;
        while let Some(msg) = link.next_frame::<ToWorker>()? {
            match self.accept(msg, running) {
                Accepted::Routed => {}
                Accepted::CancelRunning => hit = true,
                Accepted::Answer(reply) => {
                    let size = outcome_size(&reply.outcome);
                    link.push_reply(reply, size)?;
                    // Answer now: the running call may take a long time.
                    link.flush()?;
                }
            }
        }
        Ok(hit)
    }
}

/// The reply to a queued call cancelled before it started.
fn cancelled_before_start(id: u64) -> Reply {
    Reply {
        id,
        outcome: Outcome::Err(TaskFailure {
            kind: FailureKind::Cancelled,
            message: "cancelled before it started".into(),
        }),
        cpu_us: 0,
        wall_us: 0,
        max_poll_us: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use jobvisor_proto::worker::FromWorker;
    use jobvisor_proto::{encode_frame, FrameBuf};
    use tokio::sync::mpsc;

    use super::*;

    fn call(id: u64, task: u32) -> Call {
        Call {
            id,
            task,
            chunk: false,
            timeout_ms: None,
            stall_ms: None,
            input: vec![],
        }
    }

    /// An inbox whose task 1 is async, and the lane's end of its channel.
    fn with_lane() -> (Inbox, mpsc::UnboundedReceiver<IoMsg>, Arc<LaneState>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(LaneState::default());
        let mut inbox = Inbox::new();
        inbox.set_lane(LaneRoute {
            tx,
            is_async: vec![false, true],
            state: Arc::clone(&state),
        });
        (inbox, rx, state)
    }

    fn queued(inbox: &Inbox) -> Vec<u64> {
        inbox.pending.iter().map(|c| c.id).collect()
    }

    #[test]
    fn cpu_calls_queue_in_order_without_a_lane() {
        let mut inbox = Inbox::new();
        let got = inbox.accept(ToWorker::Run(vec![call(1, 0), call(2, 1)]), None);
        assert_eq!(got, Accepted::Routed);
        // Without a lane every call is the CPU thread's, whatever its task.
        assert_eq!(queued(&inbox), [1, 2]);
        assert_eq!(inbox.pop_front().map(|c| c.id), Some(1));
    }

    #[test]
    fn async_calls_go_to_the_lane_counted_before_it_sees_them() {
        let (mut inbox, mut rx, state) = with_lane();
        inbox.accept(
            ToWorker::Run(vec![call(1, 1), call(2, 0), call(3, 1), call(4, 9)]),
            None,
        );
        // An unknown task id is the CPU thread's: the registry answers it.
        assert_eq!(queued(&inbox), [2, 4]);
        assert_eq!(state.held(), 2);
        let ids: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|m| match m {
                IoMsg::Run(c) => c.id,
                other => panic!("not a run: {other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 3]);
    }

    #[test]
    fn a_cancel_goes_to_whoever_holds_the_call() {
        let (mut inbox, mut rx, _) = with_lane();
        inbox.accept(ToWorker::Run(vec![call(5, 0), call(6, 0)]), Some(4));
        assert_eq!(
            inbox.accept(ToWorker::Cancel { id: 4 }, Some(4)),
            Accepted::CancelRunning
        );
        match inbox.accept(ToWorker::Cancel { id: 6 }, Some(4)) {
            Accepted::Answer(r) => {
                assert_eq!(r.id, 6);
                assert!(matches!(&r.outcome, Outcome::Err(f) if f.kind == FailureKind::Cancelled));
            }
            other => panic!("queued call not answered: {other:?}"),
        }
        assert_eq!(queued(&inbox), [5]);
        assert!(rx.try_recv().is_err(), "the lane saw a CPU cancel");
        // Not on the CPU thread: the lane's, or already answered.
        assert_eq!(
            inbox.accept(ToWorker::Cancel { id: 7 }, Some(4)),
            Accepted::Routed
        );
        assert!(matches!(rx.try_recv(), Ok(IoMsg::Cancel(7))));
    }

    #[test]
    fn a_cancel_of_nothing_is_dropped_without_a_lane() {
        let mut inbox = Inbox::new();
        assert_eq!(
            inbox.accept(ToWorker::Cancel { id: 7 }, None),
            Accepted::Routed
        );
        assert!(inbox.is_empty());
    }

    #[test]
    fn shutdown_is_noted_and_a_late_configure_ignored() {
        let mut inbox = Inbox::new();
        let configure = ToWorker::Configure {
            max_frame_bytes: 1,
            max_output_bytes: 1,
            memory_soft_limit_bytes: 1,
            memory_limit_bytes: 1,
            heartbeat_interval_ms: 1,
        };
        assert_eq!(inbox.accept(configure, None), Accepted::Routed);
        assert!(!inbox.shutdown());
        inbox.accept(ToWorker::Shutdown, None);
        assert!(inbox.shutdown());
    }

    #[test]
    fn take_frames_answers_a_queued_cancel_on_the_pipe() {
        let (r_in, w_in) = nix::unistd::pipe().unwrap();
        let (r_out, w_out) = nix::unistd::pipe().unwrap();
        let mut link = Link::new(r_in, w_out, 1 << 16).unwrap();
        let mut bytes = Vec::new();
        encode_frame(
            &mut bytes,
            &ToWorker::Run(vec![call(1, 0), call(2, 0)]),
            1 << 16,
        )
        .unwrap();
        encode_frame(&mut bytes, &ToWorker::Cancel { id: 2 }, 1 << 16).unwrap();
        encode_frame(&mut bytes, &ToWorker::Cancel { id: 9 }, 1 << 16).unwrap();
        std::fs::File::from(w_in).write_all(&bytes).unwrap();

        assert!(link.fill_nonblocking().unwrap());
        let mut inbox = Inbox::new();
        assert!(inbox.take_frames(&mut link, Some(9)).unwrap());
        assert_eq!(queued(&inbox), [1]);

        // The answer was flushed at once, not left for the next batch.
        drop(link);
        let mut out = Vec::new();
        std::fs::File::from(r_out).read_to_end(&mut out).unwrap();
        let mut buf = FrameBuf::new(1 << 16);
        buf.extend(&out);
        match buf.decode_next::<FromWorker>().unwrap() {
            Some(FromWorker::Done(replies)) => {
                assert_eq!(replies.iter().map(|r| r.id).collect::<Vec<_>>(), [2]);
            }
            other => panic!("expected the cancelled call's reply, got {other:?}"),
        }
    }
}
