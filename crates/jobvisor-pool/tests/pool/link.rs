//! A worker's link under a task that writes to the reply pipe itself: the
//! supervisor never waits for ever on bytes that do not come (issue 10,
//! G.27).

use crate::support::*;
use crate::tasks::*;

/// Garbage whose first four bytes read as a length the rest never fills: the
/// frame does not complete within `frame_timeout`, so the link is corrupt,
/// the worker is killed and replaced, and the call ends (charged, at the
/// latest once it has seen `max_deaths_per_call` deaths) instead of holding
/// the worker for ever.
pub(crate) async fn a_frame_that_never_completes_replaces_the_worker(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let pool = one_worker_pool(method, |b| {
        b.frame_timeout(Duration::from_millis(200))
            .max_deaths_per_call(2)
            .restart_intensity(1000, Duration::from_secs(1))
    })
    .await;
    let before = pool.apply::<Pid>(&()).await.unwrap();
    let runs = dir.path().join("runs");
    let how = MisbehaveHow {
        runs: runs.to_string_lossy().into_owned(),
        scribble: false,
        then: Then::HalfFrame,
    };
    let r = tokio::time::timeout(Duration::from_secs(60), pool.apply::<Misbehave>(&how))
        .await
        .expect("the half frame held the link for ever");
    let (pid, status) = died(r);
    assert_eq!(status.signal, Some(libc::SIGKILL), "we killed it");
    let runs = std::fs::read_to_string(&runs).unwrap().lines().count();
    assert!((1..=2).contains(&runs), "{runs} runs");
    assert_ne!(pid, 0);
    let after = pool.apply::<Pid>(&()).await.unwrap();
    assert_ne!(after, before, "the worker was replaced");
    pool.shutdown().await;
    assert_no_zombies().await;
}
