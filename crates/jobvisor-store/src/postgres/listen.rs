//! [`Listener`]: `LISTEN` on a dedicated connection, in a thread of its
//! own, forwarding each notification of the store's channel to a tokio
//! channel as a [`Wake`].
//!
//! Notifications are sent with the transaction that makes them true
//! (submit, ready again, finish, cancel), so a listener never hears of a
//! change it cannot yet read. They can be lost (the listener's connection
//! drops; PostgreSQL does not queue them for a listener that is not
//! connected), so the listener also sends [`Wake::Poll`] after every
//! `poll` interval without a notification and after each reconnect: a
//! consumer that re-reads the store on `Poll` sees every change within
//! `poll` (default [`POLL_FALLBACK`]) even when notifications are lost.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use tokio::sync::mpsc;

use crate::store::StoreError;

/// The polling fallback: how long a listener waits without a notification
/// before it sends [`Wake::Poll`]. It bounds the latency of a change whose
/// notification was lost.
pub const POLL_FALLBACK: Duration = Duration::from_millis(1_000);

/// How often the thread looks at its stop flag while waiting.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The longest wait between two connection attempts (the first waits
/// 100 ms, each next one twice as long).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What a listener tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// New jobs (for a batch: its first and last ids).
    Submit(Vec<u64>),
    /// Jobs that can be claimed again (retry, requeue, expired lease).
    Ready(Vec<u64>),
    /// Jobs that reached a terminal state.
    Finish(Vec<u64>),
    /// Jobs whose cancel was requested.
    Cancel(Vec<u64>),
    /// No notification for a while, or the connection was just
    /// (re)established: read the store, a notification may have been lost.
    Poll,
}

impl Wake {
    /// A notification's payload (`KIND ID ID ...`); `None` if it is not one of ours.
    pub(crate) fn parse(payload: &str) -> Option<Wake> {
        let mut words = payload.split(' ');
        let kind = words.next()?;
        let ids = words
            .map(str::parse)
            .collect::<Result<Vec<u64>, _>>()
            .ok()?;
        Some(match kind {
            "submit" => Wake::Submit(ids),
            "ready" => Wake::Ready(ids),
            "finish" => Wake::Finish(ids),
            "cancel" => Wake::Cancel(ids),
            _ => return None,
        })
    }
}

/// The listening thread. Dropping it (or [`Listener::stop`]) stops the
/// thread (within about 100 ms) and joins it; dropping the receiver stops
/// it too.
#[derive(Debug)]
pub struct Listener {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Listener {
    /// Connects to `url`, listens on `channel` (a store's
    /// [`channel`](crate::PostgresStore::channel)) and forwards to `tx`
    /// from a thread; reconnects with backoff when the connection drops.
    ///
    /// # Errors
    /// The first connection fails (later ones are retried), or the
    /// thread cannot be started.
    pub fn spawn(
        url: &str,
        channel: &str,
        poll: Duration,
        tx: mpsc::Sender<Wake>,
    ) -> Result<Listener, StoreError> {
        let first = super::off_runtime(|| listen(url, channel))?;
        let stop = Arc::new(AtomicBool::new(false));
        let (url, channel, flag) = (url.to_string(), channel.to_string(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("jobvisor-pg-listen".into())
            .spawn(move || run(first, &url, &channel, poll, &tx, &flag))
            .map_err(|e| StoreError::db_context("cannot start the listener thread", e))?;
        Ok(Listener {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.halt();
    }
}

fn listen(url: &str, channel: &str) -> Result<postgres::Client, StoreError> {
    let mut client = super::connect(url)?;
    client.batch_execute(&format!("LISTEN \"{}\"", channel.replace('"', "\"\"")))?;
    Ok(client)
}

fn run(
    first: postgres::Client,
    url: &str,
    channel: &str,
    poll: Duration,
    tx: &mpsc::Sender<Wake>,
    stop: &AtomicBool,
) {
    let mut client = Some(first);
    let mut backoff = Duration::from_millis(100);
    let mut quiet_since = std::time::Instant::now();
    let mut next_try = std::time::Instant::now();
    let done = || stop.load(Ordering::Relaxed) || tx.is_closed();
    while !done() {
        let Some(c) = client.as_mut() else {
            // Reconnecting: wait out the backoff in short naps (to see a stop).
            let left = next_try.saturating_duration_since(std::time::Instant::now());
            if !left.is_zero() {
                std::thread::sleep(left.min(STOP_CHECK));
                continue;
            }
            match listen(url, channel) {
                Ok(c) => {
                    client = Some(c);
                    backoff = Duration::from_millis(100);
                    // Whatever was sent while we were away is lost.
                    if tx.blocking_send(Wake::Poll).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "listener cannot reconnect; retrying");
                    next_try = std::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
            continue;
        };
        let next = c.notifications().timeout_iter(poll.min(STOP_CHECK)).next();
        let wake = match next {
            Ok(Some(n)) => match Wake::parse(n.payload()) {
                Some(w) => w,
                None => continue,
            },
            Ok(None) if quiet_since.elapsed() < poll => continue,
            Ok(None) => Wake::Poll,
            Err(e) => {
                tracing::warn!(error = %e, "listener connection lost; reconnecting");
                client = None;
                next_try = std::time::Instant::now() + backoff;
                continue;
            }
        };
        quiet_since = std::time::Instant::now();
        if tx.blocking_send(wake).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(Wake::parse("submit 1 9"), Some(Wake::Submit(vec![1, 9])));
        assert_eq!(Wake::parse("cancel 5"), Some(Wake::Cancel(vec![5])));
        assert_eq!(Wake::parse("finish 2"), Some(Wake::Finish(vec![2])));
        assert_eq!(Wake::parse("ready 3"), Some(Wake::Ready(vec![3])));
        assert_eq!(Wake::parse("other 1"), None);
        assert_eq!(Wake::parse("submit x"), None);
    }
}
