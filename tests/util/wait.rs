//! Waiting for what a test can observe: a condition polled until it holds,
//! with a deadline as the failure bound (never a sleep that orders events),
//! and the usual waits on jobs, workers and counters built on it.

use std::time::{Duration, Instant};

use jobvisor_client::{Client, JobRecord, JobSpec, JobState, Stats, WorkerRow};

/// How often [`until`] looks again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `probe` until it gives `Ok`; `Err` says what it saw instead.
///
/// # Panics
/// After `within`, naming `what` and what the last probe saw.
pub async fn until<T>(
    within: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(seen) => assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; last seen: {seen}"
            ),
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What `fetch` gives, once `ready` holds for it.
///
/// # Panics
/// After `within`, naming `what` and the last value fetched.
pub async fn fetch_when<T: std::fmt::Debug>(
    within: Duration,
    what: &str,
    mut fetch: impl AsyncFnMut() -> T,
    ready: impl Fn(&T) -> bool,
) -> T {
    until(within, what, async || {
        let v = fetch().await;
        if ready(&v) {
            Ok(v)
        } else {
            Err(format!("{v:?}"))
        }
    })
    .await
}

/// The record of job `id` once `ready` holds for it.
///
/// # Panics
/// After `within`, or when the daemon does not answer.
pub async fn job_when(
    c: &mut Client,
    id: u64,
    within: Duration,
    what: &str,
    ready: impl Fn(&JobRecord) -> bool,
) -> JobRecord {
    let fetch = async || c.status(id).await.expect("status");
    fetch_when(within, what, fetch, ready).await
}

/// The job is running: its attempt start is committed.
pub fn running(r: &JobRecord) -> bool {
    r.state == JobState::Running && !r.attempts.is_empty()
}

/// The daemon's workers once `ready` holds for them.
pub async fn workers_when(
    c: &mut Client,
    within: Duration,
    what: &str,
    ready: impl Fn(&Vec<WorkerRow>) -> bool,
) -> Vec<WorkerRow> {
    let fetch = async || c.workers().await.expect("workers");
    fetch_when(within, what, fetch, ready).await
}

/// The daemon's stats once `ready` holds for them.
pub async fn stats_when(
    c: &mut Client,
    within: Duration,
    what: &str,
    ready: impl Fn(&Stats) -> bool,
) -> Stats {
    let fetch = async || c.stats().await.expect("stats");
    fetch_when(within, what, fetch, ready).await
}

/// Submits `specs` in one request and returns their job ids.
pub async fn submit_ids(c: &mut Client, specs: Vec<JobSpec>) -> Vec<u64> {
    c.submit(specs)
        .await
        .expect("submit")
        .iter()
        .map(|s| s.id)
        .collect()
}

/// Waits for `ids` (at most `within`) and checks that every one succeeded;
/// their records, in the order of `ids`.
pub async fn wait_succeeded(
    c: &mut Client,
    ids: Vec<u64>,
    within: Option<Duration>,
) -> Vec<JobRecord> {
    let recs = c.wait(ids, within).await.expect("wait");
    assert!(
        recs.iter().all(|r| r.state == JobState::Succeeded),
        "{recs:?}"
    );
    recs
}
