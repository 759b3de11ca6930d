//! The event feed: job and worker events, broadcast to `jobvisor events`
//! subscribers, the most recent of them kept (`limits.event_history`) so that
//! a subscriber that connects later still sees what just happened.
//!
//! Before this, events went to live subscribers only: `jobvisor events`
//! printed nothing of the past and, having no end, blocked for ever.
//!
//! Each event gets a sequence number when it is published (1, 2, ... since
//! the daemon started): the HTTP API's server-sent events carry it as their
//! `id`, so a client that reconnects with `Last-Event-ID` gets what it
//! missed, as far as the history reaches, and is told how much it lost
//! beyond that.

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
    history: Mutex<History>,
    keep: usize,
    /// When this feed began (unix ms): sequence numbers restart with the
    /// daemon, so an event's public id is `<run>-<seq>`.
    run: u64,
    live: broadcast::Sender<(u64, Event)>,
}

/// Events with their sequence numbers.
pub(crate) type Numbered = Vec<(u64, Event)>;

/// The kept events with their sequence numbers, and the next number.
#[derive(Debug, Default)]
struct History {
    events: VecDeque<(u64, Event)>,
    next: u64,
}

impl EventFeed {
    /// A feed that keeps the newest `keep` events (0: none).
    pub(crate) fn new(keep: usize) -> Arc<Self> {
        let (live, _) = broadcast::channel(LIVE_CAPACITY);
        Arc::new(Self {
            history: Mutex::new(History {
                events: VecDeque::with_capacity(keep.min(LIVE_CAPACITY)),
                next: 1,
            }),
            keep,
            live,
            run: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        })
    }

    /// This run's part of an event id.
    pub(crate) fn run(&self) -> u64 {
        self.run
    }

    /// Records `ev` and sends it to the live subscribers.
    pub(crate) fn publish(&self, ev: Event) {
        let mut history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let seq = history.next;
        history.next += 1;
        push_bounded(&mut history.events, self.keep, (seq, ev.clone()));
        // Under the lock, so that a subscriber sees each event once: in the
        // history it copied or live, never in both or neither.
        let _ = self.live.send((seq, ev));
    }

    /// The kept events at or after `since_ms` (all of them for `None`),
    /// oldest first, and a receiver of every event published after them.
    pub(crate) fn subscribe(
        &self,
        since_ms: Option<u64>,
    ) -> (Vec<Event>, broadcast::Receiver<(u64, Event)>) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        (recent(&history.events, since_ms), self.live.subscribe())
    }

    /// The kept events after sequence number `after` (all kept ones for
    /// `None`), oldest first; how many after it are no longer kept; and a
    /// receiver of every event published after them.
    pub(crate) fn subscribe_after(
        &self,
        after: Option<u64>,
    ) -> (Numbered, u64, broadcast::Receiver<(u64, Event)>) {
        let history = self.history.lock().unwrap_or_else(PoisonError::into_inner);
        let after = after.unwrap_or(0).min(history.next - 1);
        let past: Numbered = history
            .events
            .iter()
            .filter(|(seq, _)| *seq > after)
            .cloned()
            .collect();
        let first_kept = past.first().map_or(history.next, |(seq, _)| *seq);
        let missed = first_kept - after - 1;
        (past, missed, self.live.subscribe())
    }
}

/// Appends `ev`, dropping the oldest events past `keep`.
fn push_bounded<T>(history: &mut VecDeque<T>, keep: usize, ev: T) {
    if keep == 0 {
        return;
    }
    while history.len() >= keep {
        history.pop_front();
    }
    history.push_back(ev);
}

/// The events of `history` at or after `since_ms`, oldest first.
fn recent(history: &VecDeque<(u64, Event)>, since_ms: Option<u64>) -> Vec<Event> {
    history
        .iter()
        .filter(|(_, e)| since_ms.is_none_or(|s| e.at_ms >= s))
        .map(|(_, e)| e.clone())
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
            push_bounded(&mut h, 3, (t, ev(t)));
        }
        let at = |v: Vec<Event>| v.iter().map(|e| e.at_ms).collect::<Vec<_>>();
        assert_eq!(at(recent(&h, None)), [3, 4, 5]);
        assert_eq!(at(recent(&h, Some(4))), [4, 5]);
        assert_eq!(at(recent(&h, Some(6))), Vec::<u64>::new());
        let mut none = VecDeque::new();
        push_bounded(&mut none, 0, (1, ev(1)));
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_sees_each_event_once() {
        let feed = EventFeed::new(10);
        feed.publish(ev(1));
        let (past, mut rx) = feed.subscribe(None);
        feed.publish(ev(2));
        assert_eq!(past, [ev(1)]);
        assert_eq!(rx.recv().await.unwrap(), (2, ev(2)));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_subscriber_resumes_after_the_last_event_it_saw() {
        let feed = EventFeed::new(3);
        for t in 1..=5 {
            feed.publish(ev(t));
        }
        let seqs = |v: &[(u64, Event)]| v.iter().map(|(s, _)| *s).collect::<Vec<_>>();
        let (past, missed, _) = feed.subscribe_after(Some(3));
        assert_eq!((seqs(&past), missed), (vec![4, 5], 0));
        // Event 2 is no longer kept: one missed.
        let (past, missed, _) = feed.subscribe_after(Some(1));
        assert_eq!((seqs(&past), missed), (vec![3, 4, 5], 1));
        let (past, missed, _) = feed.subscribe_after(None);
        assert_eq!((seqs(&past), missed), (vec![3, 4, 5], 2));
        // Up to date, or a number from a previous daemon's run.
        let (past, missed, _) = feed.subscribe_after(Some(5));
        assert_eq!((past.len(), missed), (0, 0));
        let (past, missed, _) = feed.subscribe_after(Some(99));
        assert_eq!((past.len(), missed), (0, 0));
    }
}
