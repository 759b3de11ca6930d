//! The event feed: job and worker events, broadcast to `jobvisor events`
//! subscribers, the most recent of them kept (`limits.event_history`) so that
//! a subscriber that connects later still sees what just happened.
//!
//! Before this, events went to live subscribers only: `jobvisor events`
//! printed nothing of the past and, having no end, blocked for ever.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use jobvisor_proto::control::Event;
use tokio::sync::broadcast;

/// Live events a slow subscriber may fall behind by before it is told it
/// missed some (`EventKind::Lagged`).
const LIVE_CAPACITY: usize = 4096;

/// Job and worker events: published by the scheduler and the pool watcher,
/// read by the control server's subscribers.
#[derive(Debug)]
pub(crate) struct EventFeed {
    /// The newest `keep` events, oldest first. A std mutex: held only to
    /// push one event or to copy the history, never across an await.
    history: Mutex<VecDeque<Event>>,
    keep: usize,
    live: broadcast::Sender<Event>,
}

impl EventFeed {
    /// A feed that keeps the newest `keep` events (0: none).
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Arc::new(Self {
            history: Mutex::new(VecDeque::with_capacity(keep.min(LIVE_CAPACITY))),
            keep,
            live,
        })
    }

    /// Records `ev` and sends it to the live subscribers.
    pub(crate) fn publish(&self, ev: Event) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        push_bounded(&mut history, self.keep, ev.clone());
        // Under the lock, so that a subscriber sees each event once: in the
        // history it copied or live, never in both or neither.
        let _ = self.live.send(ev);
    }

    /// The kept events at or after `since_ms` (all of them for `None`),
    /// oldest first, and a receiver of every event published after them.
    pub(crate) fn subscribe(
        &self,
        since_ms: Option<u64>,
    ) -> (Vec<Event>, broadcast::Receiver<Event>) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        (recent(&history, since_ms), self.live.subscribe())
    }
}

/// Appends `ev`, dropping the oldest events past `keep`.
fn push_bounded(history: &mut VecDeque<Event>, keep: usize, ev: Event) {
    if keep == 0 {
        return;
    }
    while history.len() >= keep {
        history.pop_front();
    }
    history.push_back(ev);
}

/// The events of `history` at or after `since_ms`, oldest first.
fn recent(history: &VecDeque<Event>, since_ms: Option<u64>) -> Vec<Event> {
    history
        .iter()
        .filter(|e| since_ms.is_none_or(|s| e.at_ms >= s))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use jobvisor_proto::control::EventKind;

    use super::*;

    fn ev(at_ms: u64) -> Event {
        Event {
            at_ms,
            kind: EventKind::WorkerStarted { pid: at_ms as u32 },
        }
    }

    #[test]
    fn history_is_bounded_and_filtered_by_time() {
        let mut h = VecDeque::new();
        for t in 1..=5 {
            push_bounded(&mut h, 3, ev(t));
        }
        let at = |v: Vec<Event>| v.iter().map(|e| e.at_ms).collect::<Vec<_>>();
        assert_eq!(at(recent(&h, None)), [3, 4, 5]);
        assert_eq!(at(recent(&h, Some(4))), [4, 5]);
        assert_eq!(at(recent(&h, Some(6))), Vec::<u64>::new());
        let mut none = VecDeque::new();
        push_bounded(&mut none, 0, ev(1));
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_sees_each_event_once() {
        let feed = EventFeed::new(10);
        feed.publish(ev(1));
        let (past, mut rx) = feed.subscribe(None);
        feed.publish(ev(2));
        assert_eq!(past, [ev(1)]);
        assert_eq!(rx.recv().await.unwrap(), ev(2));
        assert!(rx.try_recv().is_err());
    }
}
