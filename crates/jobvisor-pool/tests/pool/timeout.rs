//! Deadlines: timeouts and stall timeouts escalate from the soft deadline to
//! SIGTERM and SIGKILL, counted from when the worker starts the call.

use crate::support::*;
use crate::tasks::*;

pub(crate) async fn infinite_loop_hits_timeout_and_worker_is_replaced(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let mut events = pool.events();
    let before = pool.apply::<Pid>(&()).await.unwrap();
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    let h = pool.submit_with::<Forever>(&false, opts).await.unwrap();
    match h.await {
        Err(PoolError::TimedOut { timeout_ms, how }) => {
            assert_eq!(timeout_ms, 100);
            assert!(how.contains("SIGTERM"), "{how}");
        }
        other => panic!("expected TimedOut, got {other:?}"),
    }
    // One that ignores SIGTERM needs SIGKILL.
    let h = pool.submit_with::<Forever>(&true, opts).await.unwrap();
    match h.await {
        Err(PoolError::TimedOut { how, .. }) => assert!(how.contains("SIGKILL"), "{how}"),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    let after = next_ready(&mut events).await;
    assert_ne!(after, before);
    pool.shutdown().await;
    // A cooperative task stops at its soft deadline without losing the
    // worker.
    let pool = patient_pool(method).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let h = pool
        .submit_with::<Spin>(&SpinInput { ms: 60_000 }, opts)
        .await
        .unwrap();
    match h.await {
        Err(PoolError::TimedOut { how, .. }) => assert!(how.contains("soft deadline"), "{how}"),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid);
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn a_crash_past_the_deadline_is_a_crash_not_a_timeout(method: StartMethod) {
    let pool = patient_pool(method).await;
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    // Past its deadline, ignoring it: the pool waits out the grace (5 s)
    // before it signals anything.
    let h = pool.submit_with::<Forever>(&false, opts).await.unwrap();
    let pid = running_on(&pool, h.id()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Then the worker dies of something else (here: an outside SIGKILL, as
    // from the OOM killer): the call reports that death, not a timeout.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (died_pid, status) = died(h.await);
    assert_eq!((died_pid, status.signal), (pid, Some(libc::SIGKILL)));
    assert_eq!(pool.health().deaths, 1, "counted as a death");
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn a_hung_call_queued_behind_a_finished_one_still_times_out(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(300)),
        ..CallOptions::default()
    };
    // While a spin holds the worker, a quick call and a hung one with a
    // timeout queue up behind it in the worker: it runs them back to back.
    let spin = pool.submit::<Spin>(&SpinInput { ms: 300 }).await.unwrap();
    let quick = pool.submit::<Noop>(&5).await.unwrap();
    let hung = pool.submit_with::<Forever>(&false, opts).await.unwrap();
    spin.await.unwrap();
    // The quick call's answer is not held back for the hung call's whole
    // run (for ever: it never looks at its ctx, the worker never flushes)...
    let r = tokio::time::timeout(Duration::from_secs(30), quick)
        .await
        .expect("the finished call is answered while the next one hangs");
    assert_eq!(r.unwrap(), 5);
    // ... and the hung call's deadline is watched: it is killed at it.
    let r = tokio::time::timeout(Duration::from_secs(30), hung)
        .await
        .expect("the hung call's timeout is enforced");
    assert!(
        matches!(&r, Err(PoolError::TimedOut { how, .. }) if how.contains("SIGTERM")),
        "{r:?}"
    );
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn a_timeout_counts_from_when_the_worker_starts_the_call(method: StartMethod) {
    let pool = quick_kill_pool(method).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    let worker = nix::unistd::Pid::from_raw(pid as i32);
    // A worker that cannot get to the call (stopped here; on a loaded
    // machine, not scheduled yet) has not started its clock.
    nix::sys::signal::kill(worker, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(100)),
        ..CallOptions::default()
    };
    let h = pool
        .submit_with::<Spin>(&SpinInput { ms: 60_000 }, opts)
        .await
        .unwrap();
    // Let the whole escalation the supervisor would run on its own clock
    // pass (100 ms + 50 ms grace + 200 ms to SIGKILL): there is no event
    // for "nothing happened", only time.
    tokio::time::sleep(Duration::from_millis(700)).await;
    nix::sys::signal::kill(worker, nix::sys::signal::Signal::SIGCONT).unwrap();
    match h.await {
        Err(PoolError::TimedOut { how, .. }) => assert!(how.contains("soft deadline"), "{how}"),
        other => panic!("expected TimedOut at the worker's own deadline, got {other:?}"),
    }
    assert_eq!(pool.apply::<Pid>(&()).await.unwrap(), pid, "not killed");
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn stall_timeout_catches_a_stopped_worker(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let pool = one_worker_pool(method, |b| {
        b.cancel_grace(Duration::from_millis(100))
            .term_grace(Duration::from_millis(100))
    })
    .await;
    let opts = CallOptions {
        stall_timeout: Some(Duration::from_millis(300)),
        ..CallOptions::default()
    };
    // A task that heartbeats is not stalled, however long it runs.
    let fifo = helper::mkfifo(dir.path(), "a");
    let h = pool
        .submit_with::<Beat>(&(fifo.to_string_lossy().into_owned(), 900), opts)
        .await
        .unwrap();
    helper::read_fifo_line(fifo).await;
    h.await.expect("a beating task runs to the end");
    // The same task, its worker SIGSTOPped: caught by the watchdog.
    let fifo = helper::mkfifo(dir.path(), "b");
    let h = pool
        .submit_with::<Beat>(&(fifo.to_string_lossy().into_owned(), 60_000), opts)
        .await
        .unwrap();
    let pid: i32 = helper::read_fifo_line(fifo).await.parse().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    match h.await {
        Err(PoolError::Stalled { stall_ms, how }) => {
            assert_eq!(stall_ms, 300);
            assert!(
                how.contains("SIGKILL"),
                "a stopped worker needs SIGKILL: {how}"
            );
        }
        other => panic!("expected Stalled, got {other:?}"),
    }
    assert_eq!(pool.apply::<Noop>(&2).await.unwrap(), 2);
    pool.shutdown().await;
    assert_no_zombies().await;
}
