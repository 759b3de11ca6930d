//! Async calls on the workers' event loops: they run together beside CPU
//! calls, and a blocked or crashed loop is charged to the right call.

use crate::support::*;
use crate::tasks::*;

pub(crate) async fn io_calls_run_together_beside_cpu_calls(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.io_concurrency_per_worker(64)).await;
    let (listener, port) = loopback().await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        calls.push(pool.submit_io::<Rendezvous>(&port).await.unwrap());
    }
    // All 50 are connected at once: one worker runs them concurrently (a
    // worker running them one by one would never get past the second).
    let mut met = Vec::new();
    for _ in 0..50 {
        met.push(accept_met(&listener).await);
    }
    let pid = met[0].pid;
    assert!(met.iter().all(|m| m.tag == TAG_WAIT && m.pid == pid));
    // While they all wait, the same worker's CPU thread still answers.
    assert_eq!(pool.apply::<Noop>(&7).await.unwrap(), 7);
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    for m in &mut met {
        m.stream.write_all(b"x").await.unwrap();
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), pid);
    }
    // And the converse: an async call finishes while a CPU call holds the
    // worker's CPU thread.
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let cpu = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    assert_eq!(
        helper::read_fifo_line(fifo).await.parse::<u32>().unwrap(),
        pid
    );
    let io = pool.submit_io::<Rendezvous>(&port).await.unwrap();
    let mut m = accept_met(&listener).await;
    m.stream.write_all(b"x").await.unwrap();
    assert_eq!(io.await.unwrap(), pid);
    cpu.cancel().await;
    assert!(matches!(cpu.await, Err(PoolError::Cancelled)));
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn io_timeout_cancel_and_panic_keep_the_worker(method: StartMethod) {
    let pool = pool(method, 1).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    let r = pool
        .submit_io_with::<Pending>(&(), opts)
        .await
        .unwrap()
        .await;
    assert!(matches!(r, Err(PoolError::TimedOut { .. })), "{r:?}");
    let waiting = pool.submit_io::<Pending>(&()).await.unwrap();
    let panics = pool.submit_io::<AsyncPanics>(&()).await.unwrap();
    match panics.await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Panic);
            assert!(f.message.contains("async boom"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    waiting.cancel().await;
    let r = waiting.await;
    assert!(matches!(r, Err(PoolError::Cancelled)), "{r:?}");
    // Dropping futures is how async calls stop: the worker lives on.
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    pool.shutdown().await;
}

pub(crate) async fn a_blocked_event_loop_is_killed_and_only_its_blocker_fails(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let (listener, port) = loopback().await;
    // Long enough for the blocker to meet the test before its deadline on a
    // loaded machine: dropped at its deadline while still meeting, it would
    // end cooperatively, with no kill to see.
    let opts = CallOptions {
        timeout: Some(Duration::from_secs(1)),
        ..CallOptions::default()
    };
    let blocker = pool.submit_io_with::<BlockLoop>(&port, opts).await.unwrap();
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(pool.submit_io::<Rendezvous>(&port).await.unwrap());
    }
    // Answer every waiter that connects, on the old worker or on its
    // replacement; remember the blocker's worker.
    let (acceptor, mut met) = answer_everyone(listener);
    let blocked_pid = loop {
        match met.recv().await.unwrap() {
            (TAG_BLOCK, pid) => break pid,
            _ => continue,
        }
    };
    let r = blocker.await;
    assert!(
        matches!(&r, Err(PoolError::TimedOut { how, .. }) if how.contains("SIG")),
        "{r:?}"
    );
    // The waiters were innocent: they ran again (or had finished) and succeed.
    for w in waiters {
        w.await.unwrap();
    }
    let now = pool.apply::<Pid>(&()).await.unwrap();
    assert_ne!(now, blocked_pid, "the blocked worker was replaced");
    assert!(!helper::alive(blocked_pid));
    acceptor.abort();
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn a_crash_in_a_poll_is_charged_to_that_call(method: StartMethod) {
    let pool = pool(method, 1).await;
    let (listener, port) = loopback().await;
    let mut waiters = Vec::new();
    for _ in 0..5 {
        waiters.push(pool.submit_io::<Rendezvous>(&port).await.unwrap());
    }
    let crasher = pool.submit_io::<AbortInPoll>(&port).await.unwrap();
    let (acceptor, _met) = answer_everyone(listener);
    // A crash charged to nobody would re-run the crasher forever: bound it.
    let r = tokio::time::timeout(Duration::from_secs(60), crasher)
        .await
        .expect("the crash is charged to the call that was being polled");
    assert_eq!(died(r).1.signal, Some(libc::SIGABRT));
    for w in waiters {
        w.await.unwrap();
    }
    acceptor.abort();
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn panics_outside_the_task_body_fail_one_call(method: StartMethod) {
    let pool = pool(method, 1).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    // On the event loop: caught, the call fails, the worker lives on.
    match pool.apply_io::<IoDecodePanics>(&PanicsOnDecode).await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Panic);
            assert!(f.message.contains("decode boom"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    // On the CPU thread, outside the task's catch_unwind: the worker dies
    // (rather than hang with its event loop still up), the call is charged,
    // and the pool goes on.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        pool.apply::<CpuDecodePanics>(&PanicsOnDecode),
    )
    .await
    .expect("answered, not hung");
    let (p, status) = died(r);
    assert_eq!((p, status.signal), (pid, Some(libc::SIGABRT)));
    assert_ne!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn an_abort_on_the_event_loop_is_not_charged_to_the_cpu_call(method: StartMethod) {
    let pool = pool(method, 1).await;
    let (listener, port) = loopback().await;
    let spin = pool.submit::<Spin>(&SpinInput { ms: 300 }).await.unwrap();
    let crasher = pool.submit_io::<AbortInPoll>(&port).await.unwrap();
    let (acceptor, _met) = answer_everyone(listener);
    let r = tokio::time::timeout(Duration::from_secs(60), crasher)
        .await
        .expect("charged, not re-run forever");
    assert_eq!(died(r).1.signal, Some(libc::SIGABRT));
    // The worker's SIGABRT handler said the lane aborted: the spin that was
    // running on the CPU thread is innocent and runs again.
    spin.await.expect("the CPU call is not charged");
    acceptor.abort();
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn async_stall_timeouts_follow_heartbeats(method: StartMethod) {
    let pool = pool(method, 1).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let opts = CallOptions {
        stall_timeout: Some(Duration::from_millis(400)),
        ..CallOptions::default()
    };
    // Heartbeats every 20 ms (the worker sends at most one per 100 ms) keep
    // a 1.2 s call alive past a 400 ms stall timeout.
    pool.submit_io_with::<IoBeat>(&1200, opts)
        .await
        .unwrap()
        .await
        .expect("heartbeats reach the supervisor");
    // Silence does not.
    let r = pool
        .submit_io_with::<Pending>(&(), opts)
        .await
        .unwrap()
        .await;
    assert!(matches!(r, Err(PoolError::Stalled { .. })), "{r:?}");
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid, "no kill needed");
    pool.shutdown().await;
}
