//! Attempts and how jobs end: every outcome, every finish, recovery after a
//! crash, pruning.

use super::*;

fn attempts_lifecycle_round_trips_every_outcome<B: Backend>(b: B) {
    let mut store = b.open();
    let outcomes = all_outcomes();
    let mut j = job("t", json(1));
    j.max_attempts = outcomes.len() as u32;
    let id = insert(&mut store, &j);
    for (i, outcome) in outcomes.iter().enumerate() {
        let n = i as u32 + 1;
        in_tx(&mut store, |s| {
            s.start_attempt(id, n, Some(1000 + n), 10 * u64::from(n))
                .unwrap()
        });
        let rec = store.get(id).unwrap().unwrap();
        assert_eq!(rec.state, JobState::Running);
        let a = rec.attempts.last().unwrap();
        assert_eq!(
            (a.number, a.worker_pid, a.finished_ms),
            (n, Some(1000 + n), None)
        );
        assert_eq!(a.outcome, AttemptOutcome::Running);
        let next = Finish::Retry {
            run_at_ms: 7_000 + u64::from(n),
            error: format!("e{n}"),
        };
        in_tx(&mut store, |s| {
            // Odd attempts learn their worker only at the end; even ones keep the start's.
            let pid = (n % 2 == 1).then_some(2000 + n);
            s.finish_attempt(id, n, pid, outcome, 10 * u64::from(n) + 5, &next)
                .unwrap()
        });
    }
    let rec = store.get(id).unwrap().unwrap();
    assert_eq!(rec.attempts.len(), outcomes.len());
    for (i, (a, o)) in rec.attempts.iter().zip(&outcomes).enumerate() {
        let n = i as u32 + 1;
        assert_eq!(a.number, n);
        assert_eq!(a.started_ms, 10 * u64::from(n));
        assert_eq!(a.finished_ms, Some(10 * u64::from(n) + 5));
        assert_eq!(&a.outcome, o);
        let pid = if n % 2 == 1 { 2000 + n } else { 1000 + n };
        assert_eq!(
            a.worker_pid,
            Some(pid),
            "the end's pid wins; None keeps the start's"
        );
    }
    assert_eq!(rec.state, JobState::Retrying);
    assert_eq!(rec.run_at_ms, 7_000 + outcomes.len() as u64);
    assert_eq!(
        rec.error.as_deref(),
        Some(format!("e{}", outcomes.len()).as_str())
    );
    assert_eq!(rec.finished_ms, None);

    // Unknown jobs and attempts.
    store.begin().unwrap();
    assert!(matches!(
        store.start_attempt(id + 1, 1, None, 0),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.finish_attempt(id, 99, None, &AttemptOutcome::Ok, 0, &Finish::Requeue),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.finish_job(id + 1, 0, &Finish::Requeue),
        Err(StoreError::NotFound(_))
    ));
    store.rollback().unwrap();
}

fn finish_states<B: Backend>(b: B) {
    let mut store = b.open();
    let cases = [
        Finish::Succeeded {
            output: Payload::Json("{\"ok\":true}".into()),
        },
        Finish::Succeeded {
            output: Payload::Native(vec![9, 8, 7]),
        },
        Finish::Failed {
            error: "bad".into(),
        },
        Finish::Cancelled {
            error: "by user".into(),
        },
        Finish::Dead {
            error: "crash budget".into(),
        },
        Finish::Retry {
            run_at_ms: 99_999,
            error: "again".into(),
        },
        Finish::Requeue,
        Finish::Revive {
            run_at_ms: 88_888,
            error: "retried".into(),
            budget_from: 2,
            epoch: 1,
        },
    ];
    for (via_attempt, next) in [false, true]
        .into_iter()
        .flat_map(|v| cases.iter().map(move |c| (v, c)))
    {
        let id = insert(&mut store, &job("t", json(1)));
        in_tx(&mut store, |s| {
            if via_attempt {
                s.start_attempt(id, 1, None, 2_000).unwrap();
                s.finish_attempt(id, 1, None, &AttemptOutcome::Ok, 3_000, next)
                    .unwrap();
            } else {
                s.finish_job(id, 3_000, next).unwrap();
            }
        });
        let rec = store.get(id).unwrap().unwrap();
        assert_eq!(rec.state, next.state(), "{next:?}");
        assert_eq!(rec.attempts.len(), usize::from(via_attempt));
        let terminal = next.state().is_terminal();
        assert_eq!(rec.finished_ms, terminal.then_some(3_000), "{next:?}");
        match next {
            Finish::Succeeded { output } => {
                assert_eq!(rec.output.as_ref(), Some(output));
                assert_eq!(rec.error, None);
            }
            Finish::Failed { error } | Finish::Cancelled { error } | Finish::Dead { error } => {
                assert_eq!(rec.error.as_ref(), Some(error));
                assert_eq!(rec.output, None);
            }
            Finish::Retry { run_at_ms, error } => {
                assert_eq!(rec.run_at_ms, *run_at_ms);
                assert_eq!(rec.error.as_ref(), Some(error));
            }
            Finish::Requeue => {
                assert_eq!(rec.run_at_ms, 1_000);
                assert_eq!(rec.error, None);
            }
            Finish::Revive {
                run_at_ms,
                error,
                budget_from,
                epoch,
            } => {
                assert_eq!(rec.run_at_ms, *run_at_ms);
                assert_eq!(rec.error.as_ref(), Some(error));
                assert_eq!((rec.budget_from, rec.epoch), (*budget_from, *epoch));
            }
        }
        if !matches!(next, Finish::Revive { .. }) {
            assert_eq!((rec.budget_from, rec.epoch), (1, 0), "{next:?}");
        }
    }
}

fn recover_after_a_crash<B: Backend>(backend: B) {
    let mut store = backend.open();
    let mut with_budget = job("budget-left", json(1));
    with_budget.max_attempts = 3;
    with_budget.run_at_ms = 1_234;
    let mut spent = job("budget-spent", json(2));
    spent.max_attempts = 1;
    let retrying = job("retrying", json(3));
    let mut delayed = job("delayed", json(4));
    delayed.run_at_ms = 50_000;
    let done = job("done", json(5));
    let ids: Vec<u64> = [&with_budget, &spent, &retrying, &delayed, &done]
        .into_iter()
        .map(|j| insert(&mut store, j))
        .collect();
    let (a, b, c, d, e) = (ids[0], ids[1], ids[2], ids[3], ids[4]);
    in_tx(&mut store, |s| {
        s.start_attempt(a, 1, Some(11), 2_000).unwrap();
        s.start_attempt(b, 1, Some(12), 2_000).unwrap();
        s.start_attempt(c, 1, Some(13), 2_000).unwrap();
        s.finish_attempt(
            c,
            1,
            None,
            &AttemptOutcome::Error("x".into()),
            2_100,
            &Finish::Retry {
                run_at_ms: 90_000,
                error: "x".into(),
            },
        )
        .unwrap();
        s.start_attempt(e, 1, Some(14), 2_000).unwrap();
        s.finish_attempt(
            e,
            1,
            None,
            &AttemptOutcome::Ok,
            2_200,
            &Finish::Succeeded { output: json(0) },
        )
        .unwrap();
    });
    drop(store); // "crash": nothing finishes the running attempts

    let mut store = backend.open();
    let live = in_tx(&mut store, |s| s.recover(7_777).unwrap());
    let live_ids: Vec<u64> = live.iter().map(|j| j.id).collect();
    assert_eq!(live_ids, vec![a, b, c, d], "non-terminal jobs in id order");
    assert_eq!(
        live[0].input,
        Some(json(1)),
        "recovered jobs carry their input"
    );

    let ra = store.get(a).unwrap().unwrap();
    assert_eq!(ra.state, JobState::Queued);
    assert_eq!(ra.run_at_ms, 1_234, "run_at unchanged");
    assert_eq!(ra.attempts[0].outcome, AttemptOutcome::daemon_died());
    assert_eq!(ra.attempts[0].finished_ms, Some(7_777));
    assert_eq!(live[0], ra);

    // Its only attempt allowed was lost: whether it runs again is the
    // daemon's policy (the crash budget), not the store's.
    let rb = store.get(b).unwrap().unwrap();
    assert_eq!(rb.state, JobState::Queued);
    assert_eq!(rb.finished_ms, None);
    assert_eq!(rb.attempts[0].outcome, AttemptOutcome::daemon_died());

    let rc = store.get(c).unwrap().unwrap();
    assert_eq!((rc.state, rc.run_at_ms), (JobState::Retrying, 90_000));
    assert_eq!(rc.attempts[0].outcome, AttemptOutcome::Error("x".into()));
    let rd = store.get(d).unwrap().unwrap();
    assert_eq!((rd.state, rd.run_at_ms), (JobState::Queued, 50_000));
    let re = store.get(e).unwrap().unwrap();
    assert_eq!(
        (re.state, re.finished_ms),
        (JobState::Succeeded, Some(2_200))
    );
    assert_eq!(re.attempts[0].outcome, AttemptOutcome::Ok);

    // A second recovery changes nothing.
    let again = in_tx(&mut store, |s| s.recover(8_888).unwrap());
    assert_eq!(again, live);
}

fn prune_by_age_and_by_count_only_terminal_and_ids_are_not_reused<B: Backend>(b: B) {
    let mut store = b.open();
    let live = insert(&mut store, &job("live", json(0)));
    let mut terminal = Vec::new();
    for i in 1..=6u64 {
        let id = insert(&mut store, &job("t", json(i)));
        in_tx(&mut store, |s| {
            s.start_attempt(id, 1, None, 10).unwrap();
            s.finish_attempt(
                id,
                1,
                None,
                &AttemptOutcome::Error("e".into()),
                i * 100,
                &Finish::Failed { error: "e".into() },
            )
            .unwrap();
        });
        terminal.push(id);
    }
    let exists = |s: &mut B::Store, id| s.get(id).unwrap().is_some();

    // By age: finished before 250 → the first two.
    assert_eq!(in_tx(&mut store, |s| s.prune(250, u64::MAX).unwrap()), 2);
    assert!(!exists(&mut store, terminal[0]) && !exists(&mut store, terminal[1]));
    assert!(exists(&mut store, terminal[2]));
    // By count: keep the newest two terminal jobs.
    assert_eq!(in_tx(&mut store, |s| s.prune(0, 2).unwrap()), 2);
    let left: Vec<u64> = store
        .list(None, None, 100)
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(
        left,
        vec![terminal[5], terminal[4], live],
        "non-terminal jobs are never pruned"
    );
    // Everything terminal.
    assert_eq!(in_tx(&mut store, |s| s.prune(u64::MAX, 0).unwrap()), 2);
    assert!(exists(&mut store, live));

    // The pruned ids (the largest among them) are not handed out again.
    let next = insert(&mut store, &job("next", json(7)));
    assert!(next > terminal[5], "{next} reuses a pruned id");
    // Attempts went with their jobs.
    let counts = store.counts().unwrap();
    assert_eq!(counts, vec![(JobState::Queued, 2)]);
}

both! {
    sync: [attempts_lifecycle_round_trips_every_outcome, finish_states, recover_after_a_crash, prune_by_age_and_by_count_only_terminal_and_ids_are_not_reused],
    async: [],
}
