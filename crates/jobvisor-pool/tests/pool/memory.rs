//! Memory limits and recycling: the hard limit fails the call, the soft limit
//! and `max_tasks_per_worker` recycle a worker between calls, and a dead
//! worker's peak resident set is its own.

use crate::support::*;
use crate::tasks::*;

pub(crate) async fn memory_limit_fails_the_task_and_replaces_the_worker(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.memory_limit_bytes(1 << 30)).await;
    match pool.apply::<Hog>(&()).await {
        Err(e @ PoolError::WorkerDied { .. }) => {
            let PoolError::WorkerDied { ref cause, .. } = e else {
                unreachable!()
            };
            assert_eq!(
                cause.as_deref(),
                Some("memory limit exceeded (1024 MiB)"),
                "{e}"
            );
        }
        other => panic!("expected a memory-limit death, got {other:?}"),
    }
    assert_eq!(pool.apply::<Noop>(&1).await.unwrap(), 1, "the pool goes on");
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn soft_memory_limit_recycles_between_calls(method: StartMethod) {
    let pool = soft_limit_pool(method).await;
    let mut events = pool.events();
    // Queue a second call behind the one that leaks: it must not fail.
    let first = pool.submit::<Hold>(&128).await.unwrap();
    let second = pool.submit::<Pid>(&()).await.unwrap();
    let fat = first
        .await
        .expect("the call that crossed the soft limit succeeds");
    let next = second
        .await
        .expect("queued calls are re-dispatched, not failed");
    assert_ne!(fat, next, "the worker over its soft limit was recycled");
    loop {
        if let PoolEvent::WorkerExited { pid, status, .. } = events.recv().await.unwrap() {
            assert_eq!(pid, fat);
            assert_eq!(status.code, Some(0), "recycled cleanly: {status}");
            break;
        }
    }
    pool.shutdown().await;
}

pub(crate) async fn soft_memory_limit_drains_a_worker_with_async_calls(method: StartMethod) {
    let pool = soft_limit_pool(method).await;
    let mut events = pool.events();
    // Async calls beside the leak keep running: draining fails nothing.
    let (listener, port) = loopback().await;
    let waiter = pool.submit_io::<Rendezvous>(&port).await.unwrap();
    let mut met = accept_met(&listener).await;
    let fat = pool.apply_io::<IoLeak>(&128).await.unwrap();
    assert_eq!(met.pid, fat);
    // The worker announced it drains: a replacement starts, and new calls go
    // there while the old one finishes what it holds.
    let fresh = tokio::time::timeout(Duration::from_secs(30), next_ready(&mut events))
        .await
        .expect("the draining worker gets a replacement");
    assert_ne!(fresh, fat);
    assert_eq!(pool.apply_io::<IoLeak>(&0).await.unwrap(), fresh);
    assert!(helper::alive(fat), "still finishing its async call");
    met.stream.write_all(b"x").await.unwrap();
    assert_eq!(waiter.await.unwrap(), fat);
    loop {
        if let PoolEvent::WorkerExited { pid, status, .. } = events.recv().await.unwrap() {
            assert_eq!(pid, fat);
            assert_eq!(status.code, Some(0), "recycled cleanly: {status}");
            break;
        }
    }
    pool.shutdown().await;
}

pub(crate) async fn cpu_calls_over_the_soft_limit_drain_a_worker_holding_async_calls(
    method: StartMethod,
) {
    let pool = soft_limit_pool(method).await;
    let mut events = pool.events();
    let (listener, port) = loopback().await;
    let held = pool.submit_io::<IoHoldMeet>(&(port, 100)).await.unwrap();
    let mut met = accept_met(&listener).await;
    // CPU calls finish while the async call holds the memory: the worker
    // must drain, not leave (which would re-run the async call for ever).
    for i in 0..3u64 {
        assert_eq!(pool.apply::<Noop>(&i).await.unwrap(), i);
    }
    let fresh = tokio::time::timeout(Duration::from_secs(30), next_ready(&mut events))
        .await
        .expect("the draining worker gets a replacement");
    assert_ne!(fresh, met.pid);
    met.stream.write_all(b"x").await.unwrap();
    assert_eq!(held.await.unwrap(), met.pid, "finished where it ran");
    // It ran once: no second connection from a re-run.
    let again = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(again.is_err(), "the async call ran again");
    pool.shutdown().await;
}

pub(crate) async fn recycling_counts_calls_of_both_kinds(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.max_tasks_per_worker(4)).await;
    let (listener, port) = loopback().await;
    let held = [
        pool.submit_io::<Rendezvous>(&port).await.unwrap(),
        pool.submit_io::<Rendezvous>(&port).await.unwrap(),
    ];
    let mut met = [accept_met(&listener).await, accept_met(&listener).await];
    let first = met[0].pid;
    let mut cpu = Vec::new();
    for _ in 0..4 {
        cpu.push(pool.submit::<Pid>(&()).await.unwrap());
    }
    let mut cpu = cpu.into_iter();
    // Two async calls and two CPU calls make the worker's four.
    for h in cpu.by_ref().take(2) {
        assert_eq!(h.await.unwrap(), first);
    }
    for m in &mut met {
        m.stream.write_all(b"x").await.unwrap();
    }
    for h in held {
        assert_eq!(h.await.unwrap(), first);
    }
    // The other two run on its replacement.
    for h in cpu {
        assert_ne!(h.await.unwrap(), first);
    }
    pool.shutdown().await;
}

/// A dead worker's peak resident set is its own, not what `exec` carried over
/// from a big supervisor (a `spawn` worker is forked from it): crash evidence
/// that blames the task for the supervisor's memory misleads (issue 10, G.31).
pub(crate) async fn a_dead_workers_peak_rss_is_its_own(method: StartMethod) {
    const BALLAST: usize = 200 << 20;
    // The supervisor holds 200 MiB, touched, while the worker starts.
    let mut ballast = vec![0u8; BALLAST];
    for i in (0..BALLAST).step_by(4096) {
        ballast[i] = 1;
    }
    let ballast = std::hint::black_box(ballast);
    let pool = pool(method, 1).await;
    let (_, status) = died(pool.apply::<Die>(&DieHow::Exit(3)).await);
    assert_eq!(status.code, Some(3));
    let ballast_kib = (BALLAST / 1024) as u64;
    assert!(
        status.max_rss_kib > 0 && status.max_rss_kib < ballast_kib,
        "the worker's peak RSS is {} KiB, not below the {ballast_kib} KiB the supervisor holds",
        status.max_rss_kib
    );
    drop(ballast);
    pool.shutdown().await;
    assert_no_zombies().await;
}
