//! What a finished call sends back, for both lanes: the outcome of a call's
//! result under the output limit, its soft-timeout failure, and the batching
//! of replies into `Done` frames that stay under the frame limit.

use jobvisor_proto::worker::{FailureKind, Outcome, Reply, TaskFailure};

/// The most a reply costs in a frame beyond its payload: bincode's varints
/// take up to 9 bytes for the id, each of the three times and the payload's
/// length, one byte each for the outcome's and the failure kind's tags
/// (47), rounded up.
const REPLY_OVERHEAD_BYTES: usize = 48;

/// A call's result as the reply's outcome, with the output size limit applied.
pub(crate) fn outcome(result: Result<Vec<u8>, TaskFailure>, max_output_bytes: u64) -> Outcome {
    match result {
        Ok(bytes) if bytes.len() as u64 > max_output_bytes => Outcome::Err(TaskFailure {
            kind: FailureKind::OutputTooLarge,
            message: format!(
                "output of {} bytes exceeds max_output_bytes ({max_output_bytes})",
                bytes.len()
            ),
        }),
        Ok(bytes) => Outcome::Ok(bytes),
        Err(f) => Outcome::Err(f),
    }
}

/// The payload size of an outcome (for framing replies under the limit).
pub(crate) fn outcome_size(outcome: &Outcome) -> usize {
    match outcome {
        Outcome::Ok(b) => b.len(),
        Outcome::Err(f) => f.message.len(),
    }
}

/// The failure of a call stopped at its soft deadline.
pub(crate) fn soft_timeout(timeout_ms: Option<u64>) -> TaskFailure {
    TaskFailure {
        kind: FailureKind::Cancelled,
        message: format!("soft timeout of {} ms reached", timeout_ms.unwrap_or(0)),
    }
}

/// A CPU call's result, with a cancellation past the call's soft deadline
/// named for what it was: the task saw `is_cancelled` turn true at the
/// deadline and cannot tell that from a cancel. A task that noticed the
/// cancel but returned `Ok` anyway still produced an output: it is kept.
pub(crate) fn name_soft_timeout(
    result: Result<Vec<u8>, TaskFailure>,
    past_deadline: bool,
    timeout_ms: Option<u64>,
) -> Result<Vec<u8>, TaskFailure> {
    match result {
        Err(f) if f.kind == FailureKind::Cancelled && past_deadline => {
            Err(soft_timeout(timeout_ms))
        }
        r => r,
    }
}

/// Replies gathered for one `Done` frame, split so that no frame passes the
/// frame limit.
#[derive(Debug)]
pub(crate) struct ReplyBatch {
    max_frame_bytes: usize,
    replies: Vec<Reply>,
    /// What the replies cost, payloads and overheads.
    bytes: usize,
}

impl ReplyBatch {
    pub(crate) fn new(max_frame_bytes: usize) -> Self {
        Self {
            max_frame_bytes,
            replies: Vec::new(),
            bytes: 0,
        }
    }

    /// Sets the frame limit (from `Configure`).
    pub(crate) fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max;
    }

    /// Adds a reply whose payload is `payload_bytes` long. Returns the
    /// replies gathered so far, to frame now, when it would not fit with
    /// them; a reply alone always starts a batch.
    #[must_use = "a full batch must be framed"]
    pub(crate) fn push(&mut self, reply: Reply, payload_bytes: usize) -> Option<Vec<Reply>> {
        let cost = payload_bytes + REPLY_OVERHEAD_BYTES;
        let full = (!self.replies.is_empty() && self.bytes + cost > self.max_frame_bytes)
            .then(|| self.take())
            .flatten();
        self.bytes += cost;
        self.replies.push(reply);
        full
    }

    /// The replies gathered, if any, leaving the batch empty.
    pub(crate) fn take(&mut self) -> Option<Vec<Reply>> {
        self.bytes = 0;
        Some(std::mem::take(&mut self.replies)).filter(|r| !r.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use jobvisor_proto::encode_frame;
    use jobvisor_proto::worker::FromWorker;

    use super::*;

    fn reply(id: u64, outcome: Outcome) -> Reply {
        Reply {
            id,
            outcome,
            cpu_us: u64::MAX,
            wall_us: u64::MAX,
            max_poll_us: u64::MAX,
        }
    }

    #[test]
    fn outputs_over_the_limit_fail_the_call() {
        assert_eq!(outcome(Ok(vec![0; 8]), 8), Outcome::Ok(vec![0; 8]));
        match outcome(Ok(vec![0; 9]), 8) {
            Outcome::Err(f) => {
                assert_eq!(f.kind, FailureKind::OutputTooLarge);
                assert_eq!(f.message, "output of 9 bytes exceeds max_output_bytes (8)");
            }
            other => panic!("{other:?}"),
        }
        let f = soft_timeout(Some(250));
        assert_eq!(outcome(Err(f.clone()), 0), Outcome::Err(f));
    }

    #[test]
    fn a_cancel_past_the_deadline_is_a_soft_timeout() {
        let cancelled = || TaskFailure {
            kind: FailureKind::Cancelled,
            message: "cancelled".into(),
        };
        assert_eq!(
            name_soft_timeout(Err(cancelled()), true, Some(40)),
            Err(soft_timeout(Some(40)))
        );
        // Before the deadline it was a real cancel.
        assert_eq!(
            name_soft_timeout(Err(cancelled()), false, Some(40)),
            Err(cancelled())
        );
        // Other failures, and outputs, are left alone.
        let failed = TaskFailure {
            kind: FailureKind::Error,
            message: "no".into(),
        };
        assert_eq!(
            name_soft_timeout(Err(failed.clone()), true, Some(40)),
            Err(failed)
        );
        assert_eq!(name_soft_timeout(Ok(vec![1]), true, Some(40)), Ok(vec![1]));
    }

    #[test]
    fn size_is_the_payload_or_the_message() {
        assert_eq!(outcome_size(&Outcome::Ok(vec![0; 5])), 5);
        let timed_out = Outcome::Err(soft_timeout(Some(7)));
        assert_eq!(
            outcome_size(&timed_out),
            "soft timeout of 7 ms reached".len()
        );
    }

    #[test]
    fn an_empty_batch_frames_nothing() {
        assert_eq!(ReplyBatch::new(1024).take(), None);
    }

    #[test]
    fn a_reply_that_does_not_fit_starts_the_next_batch() {
        let mut b = ReplyBatch::new(200);
        assert_eq!(b.push(reply(1, Outcome::Ok(vec![0; 50])), 50), None);
        assert_eq!(b.push(reply(2, Outcome::Ok(vec![0; 50])), 50), None);
        // 3 × 98 > 200: the first two go out together.
        let full = b.push(reply(3, Outcome::Ok(vec![0; 50])), 50).unwrap();
        assert_eq!(full.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2]);
        // A reply bigger than the frame is alone in its batch.
        let full = b.push(reply(4, Outcome::Ok(vec![0; 500])), 500).unwrap();
        assert_eq!(full.iter().map(|r| r.id).collect::<Vec<_>>(), [3]);
        assert_eq!(b.take().map(|r| r.len()), Some(1));
    }

    #[test]
    fn batches_of_worst_case_replies_fit_their_frame() {
        // The largest ids and times, an error's tags: the overhead is a bound.
        let max = 4096;
        let mut b = ReplyBatch::new(max);
        let failure = || TaskFailure {
            kind: FailureKind::OutputTooLarge,
            message: "x".repeat(10),
        };
        let mut frames = Vec::new();
        for _ in 0..1000 {
            frames.extend(b.push(reply(u64::MAX, Outcome::Err(failure())), 10));
        }
        frames.extend(b.take());
        assert!(frames.len() > 1);
        for replies in frames {
            let mut buf = Vec::new();
            encode_frame(&mut buf, &FromWorker::Done(replies), max).unwrap();
        }
    }
}
