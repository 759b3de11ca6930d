//! A worker that holds calls and goes silent is replaced; one that is only
//! busy is not (issue 10, G.27). Its pulse comes from a thread of its own,
//! so a long CPU task or a calm event loop keeps it alive, while a stopped
//! process or an event loop stuck in one poll says nothing.

use crate::support::*;
use crate::tasks::*;

/// Heartbeats every 100 ms, silent for 1 s means unresponsive.
fn watchful(b: jobvisor_pool::PoolBuilder) -> jobvisor_pool::PoolBuilder {
    b.liveness(Duration::from_millis(100), Duration::from_secs(1))
}

/// The cause of a `WorkerDied`, with its pid and signal.
fn death_of<T: std::fmt::Debug>(r: Result<T, PoolError>) -> (u32, Option<i32>, String) {
    match r {
        Err(PoolError::WorkerDied {
            pid, status, cause, ..
        }) => (pid, status.signal, cause.unwrap_or_default()),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}

/// A call without a timeout runs in a worker that is then stopped
/// (`SIGSTOP`): nothing would ever end it. The silent worker is killed and
/// replaced, and the call it ran is charged with the death.
pub(crate) async fn a_stopped_worker_holding_a_call_is_replaced(method: StartMethod) {
    let pool = one_worker_pool(method, watchful).await;
    let before = pool.apply::<Pid>(&()).await.unwrap();
    let h = pool.submit::<Forever>(&false).await.unwrap();
    let pid = running_on(&pool, h.id()).await;
    assert_eq!(pid, before);
    // SAFETY: signalling our own worker, alive (its call runs).
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let r = tokio::time::timeout(Duration::from_secs(60), h)
        .await
        .expect("the stopped worker held its call for ever");
    let (dead, signal, cause) = death_of(r);
    assert_eq!(dead, pid);
    assert_eq!(signal, Some(libc::SIGKILL), "we killed it");
    assert!(
        cause.contains("unresponsive: no heartbeat for 1 s (pool.liveness_timeout_ms)"),
        "{cause}"
    );
    let after = pool.apply::<Pid>(&()).await.unwrap();
    assert_ne!(after, before, "the worker was replaced");
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// An async task that blocks its event loop for good stops the worker's
/// pulse: the worker is replaced, and the call being polled is charged.
pub(crate) async fn an_event_loop_stuck_in_a_poll_is_replaced(method: StartMethod) {
    let pool = one_worker_pool(method, watchful).await;
    let before = pool.apply::<Pid>(&()).await.unwrap();
    let r = tokio::time::timeout(
        Duration::from_secs(60),
        pool.apply_io::<HoldLoop>(&3_600_000),
    )
    .await
    .expect("the stuck event loop held its call for ever");
    let (dead, signal, cause) = death_of(r);
    assert_eq!(dead, before);
    assert_eq!(signal, Some(libc::SIGKILL), "we killed it");
    assert!(cause.contains("unresponsive"), "{cause}");
    assert_ne!(pool.apply::<Pid>(&()).await.unwrap(), before);
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// A CPU task that computes for longer than the liveness timeout without a
/// word (no heartbeat of its own) keeps its worker: the pulse speaks for it.
pub(crate) async fn a_long_cpu_task_keeps_its_worker(method: StartMethod) {
    let pool = one_worker_pool(method, |b| {
        b.liveness(Duration::from_millis(50), Duration::from_millis(500))
    })
    .await;
    let before = pool.apply::<Pid>(&()).await.unwrap();
    let ran_in = pool.apply::<Busy>(&1500).await.expect("not killed");
    assert_eq!(ran_in, before);
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), before);
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// An async call that waits (its event loop idle, turning only for its
/// timers) for longer than the liveness timeout keeps its worker too.
pub(crate) async fn an_async_call_waiting_keeps_its_worker(method: StartMethod) {
    let pool = one_worker_pool(method, |b| {
        b.liveness(Duration::from_millis(50), Duration::from_millis(500))
    })
    .await;
    let before = pool.apply::<Pid>(&()).await.unwrap();
    pool.apply_io::<Sleep>(&SleepInput { ms: 1500 })
        .await
        .expect("not killed");
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), before);
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// A stopped worker that holds nothing has nothing to say: it is not killed
/// for its silence, however long it lasts (here: while its peer computes
/// for three liveness timeouts).
pub(crate) async fn an_idle_stopped_worker_is_left_alone(method: StartMethod) {
    let pool = Pool::builder()
        .workers(2)
        .start_method(method)
        .liveness(Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .await
        .expect("pool starts");
    let h = pool.submit::<Busy>(&1500).await.unwrap();
    let busy = running_on(&pool, h.id()).await;
    let idle = pool
        .workers()
        .await
        .iter()
        .map(|w| w.pid)
        .find(|&p| p != busy)
        .expect("two workers");
    // SAFETY: signalling our own idle worker.
    assert_eq!(unsafe { libc::kill(idle as i32, libc::SIGSTOP) }, 0);
    assert_eq!(h.await.expect("the busy worker is not killed"), busy);
    let workers = pool.workers().await;
    assert!(
        workers
            .iter()
            .any(|w| w.pid == idle && w.state == jobvisor_pool::WorkerState::Ready),
        "the stopped idle worker was replaced: {workers:?}"
    );
    assert!(helper::alive(idle));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(idle as i32, libc::SIGCONT) }, 0);
    pool.shutdown().await;
    assert_no_zombies().await;
}
