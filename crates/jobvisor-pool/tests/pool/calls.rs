//! Calls that succeed or fail on their own: results, throughput, bad input,
//! noisy stdout, the initializer, `exec`, and what a call cost.

use crate::support::*;
use crate::tasks::*;

pub(crate) async fn results_are_correct(method: StartMethod) {
    let pool = pool(method, 2).await;
    assert_eq!(pool.apply::<Noop>(&41).await.unwrap(), 41);
    let outs = pool.map::<Noop>((0..1000).collect(), 1).await.unwrap();
    assert_eq!(outs, (0..1000).collect::<Vec<u64>>());
    let outs = pool.map::<Noop>((0..1000).collect(), 0).await.unwrap();
    assert_eq!(outs, (0..1000).collect::<Vec<u64>>());
    let mut seen = HashSet::new();
    let mut it = pool.imap_unordered::<Noop, _>(0..500u64, 7);
    while let Some((i, r)) = it.next().await {
        assert_eq!(r.unwrap(), i as u64);
        assert!(seen.insert(i));
    }
    assert_eq!(seen.len(), 500);
    let spun = pool.apply::<Spin>(&SpinInput { ms: 5 }).await.unwrap();
    assert!(spun.iterations > 0);
    pool.shutdown().await;
    assert_no_zombies().await;
}

pub(crate) async fn hundred_thousand_tasks(method: StartMethod) {
    let pool = pool(method, 2).await;
    let n = 100_000u64;
    let mut handles = Vec::with_capacity(n as usize);
    for i in 0..n {
        handles.push(pool.submit::<Noop>(&(i * 3)).await.unwrap());
    }
    for (i, h) in handles.into_iter().enumerate() {
        assert_eq!(h.await.unwrap(), i as u64 * 3);
    }
    let outs = pool.map::<Noop>((0..n).collect(), 0).await.unwrap();
    assert!(outs.iter().enumerate().all(|(i, &o)| o == i as u64));
    pool.shutdown().await;
}

pub(crate) async fn stdout_noise_does_not_corrupt_the_protocol(method: StartMethod) {
    let pool = pool(method, 2).await;
    let outs = pool.map::<Chatty>(vec![2000; 8], 1).await.unwrap();
    assert_eq!(outs, vec![4000; 8]);
    assert_eq!(pool.apply::<Noop>(&9).await.unwrap(), 9);
    pool.shutdown().await;
}

pub(crate) async fn bad_input_fails_only_that_call(method: StartMethod) {
    let pool = one_worker_pool(method, |b| b.max_frame_bytes(64 * 1024)).await;
    let pid = pool.apply::<Pid>(&()).await.unwrap();
    match pool
        .submit_raw("no.such.task", vec![], CallOptions::default())
        .await
    {
        Err(PoolError::UnknownTask { name, known }) => {
            assert_eq!(name, "no.such.task");
            assert!(known.contains("spin"));
        }
        other => panic!("expected UnknownTask, got {other:?}"),
    }
    let h = pool
        .submit_raw("spin", vec![0xff; 3], CallOptions::default())
        .await
        .unwrap();
    match h.raw().await {
        Err(PoolError::Task(f)) => assert_eq!(f.kind, FailureKind::BadInput),
        other => panic!("expected BadInput, got {other:?}"),
    }
    match pool.submit::<Chatty>(&0).await.map(|_| ()) {
        Ok(()) => {}
        Err(e) => panic!("small input refused: {e}"),
    }
    let big = "x".repeat(100 * 1024);
    match pool.submit::<Fails>(&big).await {
        Err(PoolError::InputTooLarge { bytes, max }) => assert!(bytes > max),
        other => panic!("expected InputTooLarge, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        pool.apply::<Pid>(&()).await.unwrap(),
        pid,
        "worker unaffected"
    );
    pool.shutdown().await;
}

pub(crate) async fn initializer_state_reaches_workers(method: StartMethod) {
    let pool = pool(method, 2).await;
    let outs = pool.map::<Preloaded>(vec![(); 4], 1).await.unwrap();
    assert!(outs.iter().all(|o| *o == Some(4242)), "{outs:?}");
    pool.shutdown().await;
}

pub(crate) async fn exec_task_through_the_pool(method: StartMethod) {
    use jobvisor_tasks::{Exec, ExecInput};
    let pool = pool(method, 2).await;
    let mut input = ExecInput::new(["sh", "-c", "echo hello; exit 3"]);
    // A nonzero exit fails the call, with the output in the error.
    let e = pool.apply::<Exec>(&input).await.map(|o| o.code);
    let text = format!("{e:?}");
    input.ok_codes = Some(vec![3]);
    let out = pool.apply::<Exec>(&input).await;
    pool.shutdown().await;
    assert!(
        text.contains("exited with code 3") && text.contains("hello"),
        "{text}"
    );
    let out = out.unwrap();
    assert_eq!(out.code, Some(3));
    assert_eq!(out.stdout, b"hello\n");
}

pub(crate) async fn call_usage_tells_computing_from_waiting(method: StartMethod) {
    let pool = pool(method, 1).await;
    let input = jobvisor_proto_input(&SpinInput { ms: 60 });
    let spin = pool
        .submit_raw("spin", input, CallOptions::default())
        .await
        .unwrap()
        .report()
        .await;
    // The worker's event loop starts with its first async call: start it
    // first, so that its start-up is not measured as the sleep's.
    pool.submit_io::<Sleep>(&SleepInput { ms: 0 })
        .await
        .unwrap()
        .await
        .unwrap();
    // Long enough that a poll preempted on a loaded machine (the hold is
    // timed by the wall clock) stays well under a tenth of it.
    let input = jobvisor_proto_input(&SleepInput { ms: 250 });
    let sleep = pool
        .submit_raw("sleep", input, CallOptions::default())
        .await
        .unwrap()
        .report()
        .await;
    let (spin, sleep) = (spin.usage.unwrap(), sleep.usage.unwrap());
    assert!(spin.wall >= Duration::from_millis(60) && sleep.wall >= Duration::from_millis(60));
    // Sleeping is almost no CPU; spinning is CPU whenever it has a core (on
    // an oversubscribed machine it also waits for one): compare the shares.
    assert!(sleep.cpu * 10 < sleep.wall, "sleep: {sleep:?}");
    let share = |u: jobvisor_pool::CallUsage| u.cpu.as_secs_f64() / u.wall.as_secs_f64();
    assert!(
        share(spin) > 4.0 * share(sleep).max(0.001),
        "spin {spin:?} vs sleep {sleep:?}"
    );
    // An async task that blocks its loop shows it in its longest poll; one
    // that awaits does not.
    let hold = pool
        .submit_raw(
            "test.hold_loop",
            jobvisor_proto_input(&40u64),
            CallOptions::default(),
        )
        .await
        .unwrap()
        .report()
        .await
        .usage
        .unwrap();
    assert!(hold.max_poll >= Duration::from_millis(40), "{hold:?}");
    assert!(
        sleep.max_poll < hold.max_poll,
        "sleep {sleep:?} vs hold {hold:?}"
    );
    assert_eq!(spin.max_poll, Duration::ZERO, "CPU calls have no polls");
    pool.shutdown().await;
}
