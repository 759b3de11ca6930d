//! Worker deaths: a crash fails only the call that caused it, reports how
//! the worker ended, and the pool replaces the worker within its restart
//! intensity without leaking fds.

use crate::support::*;
use crate::tasks::*;

pub(crate) async fn sigkill_mid_task_fails_only_that_task(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let pool = pool(method, 2).await;
    let mut events = pool.events();
    let victim = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    let pid: u32 = helper::read_fifo_line(fifo.clone()).await.parse().unwrap();
    // Others keep flowing while the victim is running.
    let others: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..200u64 {
            v.push(pool.submit::<Noop>(&i).await.unwrap());
        }
        v
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (p, status) = died(victim.await);
    assert_eq!((p, status.signal), (pid, Some(libc::SIGKILL)));
    for (i, h) in others.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i as u64);
    }
    // The replacement comes up and the pool is back to two live workers.
    let new_pid = next_ready(&mut events).await;
    assert_ne!(new_pid, pid);
    let workers = pool.workers().await;
    let live: Vec<_> = workers.iter().filter(|w| helper::alive(w.pid)).collect();
    assert_eq!(live.len(), 2, "{workers:?}");
    assert!(!helper::alive(pid));
    assert_no_zombies().await;
    pool.shutdown().await;
}

pub(crate) async fn crash_reports_exit_code_and_last_output(method: StartMethod) {
    let pool = pool(method, 1).await;
    match pool.apply::<Die>(&DieHow::Exit(7)).await {
        Err(PoolError::WorkerDied {
            status,
            stderr_tail,
            ..
        }) => {
            assert_eq!(status.code, Some(7));
            assert!(
                stderr_tail.iter().any(|l| l.contains("last words")),
                "{stderr_tail:?}"
            );
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // (Not SIGSEGV: std's stack-overflow handler swallows a raised SIGSEGV.)
    match pool.apply::<Die>(&DieHow::Signal(libc::SIGABRT)).await {
        Err(e @ PoolError::WorkerDied { .. }) => {
            assert!(e.to_string().contains("SIGABRT"), "{e}");
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    // The pool is not broken.
    assert_eq!(pool.apply::<Noop>(&5).await.unwrap(), 5);
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn panic_and_error_keep_the_worker(method: StartMethod) {
    let pool = pool(method, 1).await;
    let before = pool.apply::<Pid>(&()).await.unwrap();
    match pool.apply::<Panics>(&"boom 17".into()).await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Panic);
            assert!(f.message.contains("boom 17"), "{}", f.message);
        }
        other => panic!("expected a panic failure, got {other:?}"),
    }
    match pool.apply::<Fails>(&"nope".into()).await {
        Err(PoolError::Task(f)) => {
            assert_eq!(f.kind, FailureKind::Error);
            assert_eq!(f.message, "nope");
        }
        other => panic!("expected a task error, got {other:?}"),
    }
    assert_eq!(
        pool.apply::<Pid>(&()).await.unwrap(),
        before,
        "the worker was replaced"
    );
    pool.shutdown().await;
}

pub(crate) async fn thousand_restarts_leak_no_fds(method: StartMethod) {
    let pool = Pool::builder()
        .workers(2)
        .start_method(method)
        .max_tasks_per_worker(1)
        .build()
        .await
        .unwrap();
    // Quiescent: two fresh workers, nothing in flight.
    let before = helper::fd_count();
    let calls = 1000u64;
    // Every call retires its worker and starts a replacement; wait until all
    // of them have been started and every retired one reaped.
    let mut events = pool.events();
    let settled = tokio::spawn(async move {
        let (mut ready, mut exited) = (0u64, 0u64);
        while !(ready == calls && exited == calls) {
            match events.recv().await.expect("events") {
                PoolEvent::WorkerReady { .. } => ready += 1,
                PoolEvent::WorkerExited { .. } => exited += 1,
                _ => {}
            }
        }
    });
    let outs = pool.map::<Noop>((0..calls).collect(), 1).await.unwrap();
    assert_eq!(outs, (0..calls).collect::<Vec<_>>());
    settled.await.expect("1000 restarts, all reaped");
    let after = helper::fd_count();
    assert_eq!(
        after, before,
        "fds went from {before} to {after} over 1000 worker restarts"
    );
    let pids: HashSet<u32> = {
        let mut s = HashSet::new();
        for _ in 0..4 {
            s.insert(pool.apply::<Pid>(&()).await.unwrap());
        }
        s
    };
    assert_eq!(pids.len(), 4, "every call ran in a fresh worker");
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// Replies travel in batches, so when a worker dies some finished calls may
/// not have been reported yet: the death must be charged to the call that was
/// running (the worker's beacon says which), never to one that had finished.
pub(crate) async fn a_death_is_charged_to_the_call_that_caused_it(method: StartMethod) {
    // 50 deliberate crashes: lift the restart intensity, which would
    // otherwise (rightly) slow the restarts down.
    let pool = one_worker_pool(method, |b| {
        b.restart_intensity(1000, Duration::from_secs(1))
    })
    .await;
    let mut noops = Vec::new();
    let mut crashes = Vec::new();
    for i in 0..50u64 {
        noops.push(pool.submit::<Noop>(&i).await.unwrap());
        crashes.push(
            pool.submit::<Die>(&DieHow::Signal(libc::SIGKILL))
                .await
                .unwrap(),
        );
    }
    for (i, h) in noops.into_iter().enumerate() {
        assert_eq!(
            h.await.unwrap(),
            i as u64,
            "an innocent call was charged with a crash"
        );
    }
    for h in crashes {
        assert!(matches!(h.await, Err(PoolError::WorkerDied { .. })));
    }
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn restart_intensity_bounds_a_crash_loop(method: StartMethod) {
    let flag = die_flag();
    let _ = std::fs::remove_file(&flag);
    let pool = Pool::builder()
        .workers(2)
        .start_method(method)
        .restart_intensity(3, Duration::from_secs(1))
        .restart_backoff(
            Duration::from_millis(100),
            Duration::from_millis(400),
            // Far above a failed start plus the longest delay, even on a
            // loaded machine where a spawned worker takes long to exec:
            // the crash loop never looks healthy in between.
            Duration::from_secs(3),
        )
        .build()
        .await
        .unwrap();
    let mut events = pool.events();
    std::fs::write(&flag, b"x").unwrap();
    let cpu_before =
        cpu_seconds(std::process::id()) + jobvisor_pool::fork_server_pid().map_or(0.0, cpu_seconds);
    let wall = std::time::Instant::now();
    for w in pool.workers().await {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(w.pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
    let mut exited = 0;
    let mut failed = 0u32;
    while exited < 2 {
        match events.recv().await.unwrap() {
            PoolEvent::WorkerExited { .. } => exited += 1,
            PoolEvent::WorkerStartFailed { .. } => failed += 1,
            _ => {}
        }
    }
    // Work submitted while no worker can start is kept, not failed.
    let kept = pool.submit::<Noop>(&77).await.unwrap();
    // Count failed starts over 1.5 s of a crash loop.
    let window = tokio::time::sleep(Duration::from_millis(1500));
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => break,
            ev = events.recv() => {
                if let Ok(PoolEvent::WorkerStartFailed { .. }) = ev {
                    failed += 1;
                }
            }
        }
    }
    let cpu = cpu_seconds(std::process::id())
        + jobvisor_pool::fork_server_pid().map_or(0.0, cpu_seconds)
        - cpu_before;
    let health = pool.health();
    assert!(health.degraded, "{health:?}");
    assert!(failed >= 3, "the loop was observed: {failed}");
    // Unbounded, this loop forks hundreds of workers a second; with the
    // intensity rule it is a handful plus one per backoff step.
    assert!(
        failed <= 20,
        "restarts were not bounded: {failed} failed starts in 1.5 s"
    );
    assert!(
        cpu < 0.5 * wall.elapsed().as_secs_f64(),
        "CPU was pegged: {cpu:.2}s in {:?}",
        wall.elapsed()
    );
    // The cause goes away: the pool recovers by itself and runs the kept work.
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(kept.await.unwrap(), 77);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while pool.health().degraded {
        assert!(
            std::time::Instant::now() < deadline,
            "still degraded: {:?}",
            pool.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// A worker that dies of a panic under `RUST_BACKTRACE=1`: its last lines of
/// output are backtrace, so the panic message comes from its beacon, as the
/// death's cause (issue 10, G.30).
pub(crate) async fn a_panic_message_survives_a_backtrace(method: StartMethod) {
    let pool = pool(method, 1).await;
    let r = pool
        .apply::<CpuDecodePanicsLoudly>(&PanicsLoudlyOnDecode("the loud boom 31".into()))
        .await;
    match r {
        Err(PoolError::WorkerDied {
            cause, stderr_tail, ..
        }) => {
            let cause = cause.unwrap_or_default();
            assert!(
                cause.contains("panicked at") && cause.contains("the loud boom 31"),
                "cause: {cause:?}; tail: {stderr_tail:?}"
            );
            // The backtrace is there too, as the last lines.
            assert!(
                stderr_tail
                    .iter()
                    .any(|l| l.contains("stack backtrace") || l.contains(" at ")),
                "{stderr_tail:?}"
            );
        }
        other => panic!("expected WorkerDied, got {other:?}"),
    }
    assert_eq!(pool.apply::<Noop>(&5).await.unwrap(), 5);
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// A task that writes over the beacon and dies, or breaks the link (with or
/// without writing over the beacon) and returns, leaves a death that charges
/// no call: the call is charged once it has been in flight at
/// `max_deaths_per_call` of them, not re-run for ever, and the pool serves
/// on (issue 10, G.26 and G.28).
pub(crate) async fn a_call_that_hides_from_the_beacon_is_charged_in_the_end(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let pool = one_worker_pool(method, |b| {
        b.max_deaths_per_call(2)
            .restart_intensity(1000, Duration::from_secs(1))
    })
    .await;
    let cases = [
        (true, Then::Die),
        (true, Then::Garbage),
        (false, Then::Garbage),
    ];
    for (i, (scribble, then)) in cases.into_iter().enumerate() {
        let runs = dir.path().join(format!("runs-{i}"));
        let how = MisbehaveHow {
            runs: runs.to_string_lossy().into_owned(),
            scribble,
            then,
        };
        let r = tokio::time::timeout(Duration::from_secs(60), pool.apply::<Misbehave>(&how))
            .await
            .unwrap_or_else(|_| panic!("{how:?} is re-run for ever"));
        let runs = std::fs::read_to_string(&runs).unwrap().lines().count();
        match r {
            Err(PoolError::WorkerDied { cause, .. }) => {
                // Breaking the link without writing over the beacon may
                // be charged at once, if our kill lands before the worker
                // clears it; otherwise it takes the bound.
                let bounded = if scribble {
                    runs == 2
                } else {
                    (1..=2).contains(&runs)
                };
                assert!(bounded, "{how:?}: {runs} runs");
                // Hidden every time, it can only be charged by the bound. Not
                // hidden, a second run may as well be charged at once (no
                // cause then), so the bound's cause is not required.
                if scribble {
                    let cause = cause.unwrap_or_default();
                    assert!(
                        cause.contains("max_deaths_per_call = 2"),
                        "{how:?}: {cause}"
                    );
                }
            }
            other => panic!("{how:?}: expected WorkerDied, got {other:?}"),
        }
        assert_eq!(pool.apply::<Noop>(&(i as u64)).await.unwrap(), i as u64);
    }
    pool.shutdown().await;
    assert_no_zombies().await;
}

/// A suspect (a call in flight at a death that charged no call) runs alone,
/// so the innocent calls that were in flight with it are not charged with its
/// deaths.
pub(crate) async fn innocents_beside_a_hidden_crash_are_not_charged(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let pool = one_worker_pool(method, |b| {
        b.max_deaths_per_call(2)
            .restart_intensity(1000, Duration::from_secs(1))
    })
    .await;
    let how = MisbehaveHow {
        runs: dir.path().join("runs").to_string_lossy().into_owned(),
        scribble: true,
        then: Then::Die,
    };
    // Queued behind the culprit in the same window, and before it.
    let mut before = Vec::new();
    for i in 0..20u64 {
        before.push(pool.submit::<Noop>(&i).await.unwrap());
    }
    let culprit = pool.submit::<Misbehave>(&how).await.unwrap();
    let mut after = Vec::new();
    for i in 0..20u64 {
        after.push(pool.submit::<Noop>(&i).await.unwrap());
    }
    assert!(matches!(culprit.await, Err(PoolError::WorkerDied { .. })));
    for (i, h) in before.into_iter().chain(after).enumerate() {
        assert_eq!(
            h.await.expect("an innocent call was charged"),
            (i % 20) as u64
        );
    }
    pool.shutdown().await;
    assert_no_zombies().await;
}
