//! Stopping: cancel, graceful shutdown, terminate, resize, and control
//! commands that never wait behind a full queue.

use crate::support::*;
use crate::tasks::*;

pub(crate) async fn cancel_queued_and_running(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let pool = patient_pool(method).await;
    let running = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    let running_id = running.id();
    let queued = pool
        .submit_io::<Sleep>(&SleepInput { ms: 60_000 })
        .await
        .unwrap();
    let pid: u32 = helper::read_fifo_line(fifo).await.parse().unwrap();
    // The worker says what it runs (its beacon): the async call it holds is
    // not a CPU call.
    let shown: Vec<Option<u64>> = pool.workers().await.iter().map(|w| w.running).collect();
    assert_eq!(shown, vec![Some(running_id)]);
    queued.cancel().await;
    assert!(matches!(queued.await, Err(PoolError::Cancelled)));
    running.cancel().await;
    let r = running.await;
    assert!(matches!(r, Err(PoolError::Cancelled)), "{r:?}");
    assert_eq!(
        pool.apply::<Pid>(&()).await.unwrap(),
        pid,
        "cooperative cancel keeps the worker"
    );
    let shown: Vec<Option<u64>> = pool.workers().await.iter().map(|w| w.running).collect();
    assert_eq!(shown, vec![None], "idle");
    pool.shutdown().await;
}

pub(crate) async fn graceful_shutdown_drains(method: StartMethod) {
    let pool = pool(method, 2).await;
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(pool.submit::<Spin>(&SpinInput { ms: 10 }).await.unwrap());
    }
    let p2 = pool.clone();
    let stop = tokio::spawn(async move { p2.shutdown().await });
    for h in handles {
        assert!(h.await.is_ok());
    }
    stop.await.unwrap();
    // After shutdown, new work is refused and no worker is left.
    assert!(matches!(
        pool.submit::<Noop>(&1).await,
        Err(PoolError::Closed)
    ));
    if let Some(fs) = jobvisor_pool::fork_server_pid() {
        let left = helper::children_of(fs);
        let cmd: Vec<String> = left
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
            .collect();
        assert_eq!(left, Vec::<u32>::new(), "{cmd:?}");
    }
    assert_eq!(helper::children_of(std::process::id()), Vec::<u32>::new());
    assert_no_zombies().await;
}

pub(crate) async fn terminate_fails_running_and_queued(method: StartMethod) {
    let pool = pool(method, 1).await;
    let a = pool
        .submit_io::<Sleep>(&SleepInput { ms: 60_000 })
        .await
        .unwrap();
    let b = pool
        .submit_io::<Sleep>(&SleepInput { ms: 60_000 })
        .await
        .unwrap();
    pool.clone().terminate().await;
    assert!(matches!(a.await, Err(PoolError::Closed)));
    assert!(matches!(b.await, Err(PoolError::Closed)));
    assert_no_zombies().await;
}

pub(crate) async fn resize_grows_and_shrinks_without_losing_calls(method: StartMethod) {
    let pool = pool(method, 2).await;
    let mut events = pool.events();
    let running: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(pool.submit::<Spin>(&SpinInput { ms: 30 }).await.unwrap());
        }
        v
    };
    pool.resize(3).await;
    next_ready(&mut events).await;
    pool.resize(1).await;
    let mut exited = 0;
    while exited < 2 {
        if let PoolEvent::WorkerExited { status, .. } = events.recv().await.unwrap() {
            assert_eq!(
                status.code,
                Some(0),
                "surplus workers exit cleanly: {status}"
            );
            exited += 1;
        }
    }
    for h in running {
        assert!(h.await.is_ok());
    }
    let live = pool.workers().await;
    assert_eq!(live.len(), 1, "{live:?}");
    assert_eq!(pool.apply::<Noop>(&3).await.unwrap(), 3);
    pool.shutdown().await;
}

pub(crate) async fn control_commands_do_not_wait_behind_a_full_queue(method: StartMethod) {
    let dir = tempfile::tempdir().unwrap();
    let fifo = helper::mkfifo(dir.path(), "announce");
    let pool = one_worker_pool(method, |b| b.max_queued(4).window(1)).await;
    let running = pool
        .submit::<Announce>(&(fifo.to_string_lossy().into_owned(), 60_000))
        .await
        .unwrap();
    helper::read_fifo_line(fifo).await;
    // Fill the queue, then keep submitters waiting for room.
    let mut queued = Vec::new();
    for i in 0..4u64 {
        queued.push(pool.submit::<Noop>(&i).await.unwrap());
    }
    let mut blocked = Vec::new();
    for i in 0..8u64 {
        let p = pool.clone();
        blocked.push(tokio::spawn(async move { p.submit::<Noop>(&i).await }));
    }
    // A snapshot and a cancel get through while the submits wait.
    let within = Duration::from_secs(10);
    let workers = tokio::time::timeout(within, pool.workers())
        .await
        .expect("workers() waited behind the submits");
    assert_eq!(workers.len(), 1);
    tokio::time::timeout(within, queued[0].cancel())
        .await
        .expect("cancel waited behind the submits");
    assert!(matches!(queued.remove(0).await, Err(PoolError::Cancelled)));
    // And terminate stops everything now.
    tokio::time::timeout(within, pool.clone().terminate())
        .await
        .expect("terminate waited behind the submits");
    assert!(matches!(running.await, Err(PoolError::Closed)));
    for h in queued {
        assert!(matches!(h.await, Err(PoolError::Closed)));
    }
    for b in blocked {
        match b.await.unwrap() {
            Err(PoolError::Closed) => {}
            Ok(h) => assert!(matches!(h.await, Err(PoolError::Closed))),
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_no_zombies().await;
}
