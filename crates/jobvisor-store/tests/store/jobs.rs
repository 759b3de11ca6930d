//! New jobs and reading them back: every field, keys, dependencies, batches,
//! lists and counts.

use super::*;

fn insert_get_round_trips_every_field<B: Backend>(b: B) {
    let mut store = b.open();
    let a = insert(&mut store, &job("a", json(1)));
    let b = insert(&mut store, &job("b", json(2)));
    let native = vec![0u8, 1, 2, 255, 0, 42];
    let full = NewJob {
        task: "full".into(),
        input: Payload::Native(native.clone()),
        queue: "io".into(),
        priority: -7,
        max_attempts: 9,
        max_crashes: 4,
        backoff_base_ms: 250,
        backoff_max_ms: 60_000,
        timeout_ms: Some(30_000),
        stall_timeout_ms: Some(2_000),
        input_from: vec![jobvisor_proto::control::InputRef {
            job: jobvisor_proto::control::JobRef::Id(a),
            pointer: Some("/sha256".into()),
            field: Some("digest".into()),
        }],
        run_at_ms: 5_000,
        created_ms: 4_000,
        after: vec![b, a],
        key: Some("k-1".into()),
        notify_url: Some("https://hooks.example/jobs?x=1".into()),
    };
    let c = insert(&mut store, &full);
    assert!(c > b && b > a);

    let rec = store.get(c).unwrap().unwrap();
    assert_eq!(rec.id, c);
    assert_eq!(rec.task, "full");
    assert_eq!(rec.queue, "io");
    assert_eq!(rec.priority, -7);
    assert_eq!(rec.state, JobState::Queued);
    assert_eq!(rec.max_attempts, 9);
    assert_eq!(
        (rec.max_crashes, rec.budget_from, rec.epoch),
        (Some(4), 1, 0)
    );
    assert_eq!(rec.timeout_ms, Some(30_000));
    assert_eq!((rec.backoff_base_ms, rec.backoff_max_ms), (250, 60_000));
    assert_eq!(rec.stall_timeout_ms, Some(2_000));
    assert_eq!(rec.input_from, full.input_from);
    assert_eq!(rec.after, vec![b, a], "dependencies keep their order");
    assert_eq!(rec.key.as_deref(), Some("k-1"));
    assert_eq!(rec.created_ms, 4_000);
    assert_eq!(rec.run_at_ms, 5_000);
    assert_eq!(rec.finished_ms, None);
    assert_eq!(rec.input, Some(Payload::Native(native)));
    assert_eq!(rec.output, None);
    assert_eq!(rec.error, None);
    assert!(rec.attempts.is_empty());
    assert_eq!(rec.notify_url, full.notify_url);

    let rec = store.get(a).unwrap().unwrap();
    assert_eq!(rec.input, Some(json(1)));
    assert_eq!(rec.timeout_ms, None);
    assert_eq!(rec.key, None);
    assert_eq!(rec.notify_url, None);
    assert!(rec.after.is_empty());

    assert!(store.get(c + 100).unwrap().is_none());
}

fn unicode_and_empty_payloads_round_trip<B: Backend>(b: B) {
    let mut store = b.open();
    for p in [
        Payload::Json("\"héllo ✓ \\u0000\"".into()),
        Payload::Json(String::new()),
        Payload::Native(Vec::new()),
    ] {
        let id = insert(&mut store, &job("t", p.clone()));
        assert_eq!(store.get(id).unwrap().unwrap().input, Some(p));
    }
}

fn idempotency_key_dedupes<B: Backend>(b: B) {
    let mut store = b.open();
    let mut j = job("t", json(1));
    j.key = Some("once".into());
    let first = insert(&mut store, &j);
    let mut again = job("other", json(2));
    again.key = Some("once".into());
    let second = in_tx(&mut store, |s| s.insert(&again).unwrap());
    assert_eq!(second.id, first);
    assert!(second.duplicate);
    let all = store.list(None, None, 100).unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].task, "t", "the first job is kept as it was");
}

fn missing_dependency_is_refused<B: Backend>(b: B) {
    let mut store = b.open();
    let mut j = job("t", json(1));
    j.after = vec![12345];
    store.begin().unwrap();
    store.savepoint().unwrap();
    assert!(matches!(store.insert(&j), Err(StoreError::NotFound(12345))));
    store.rollback_to_savepoint().unwrap();
    store.commit().unwrap();
    assert!(store.list(None, None, 10).unwrap().is_empty());
}

async fn insert_all_is_all_or_nothing<B: Backend>(b: B) {
    let handle = StoreHandle::spawn(b.open()).unwrap();
    let base = handle.insert_all(vec![job("base", json(0))]).await.unwrap()[0].id;
    // Queued back to back (queued at call time), so normally one transaction.
    let mut dep = job("dep", json(2));
    dep.after = vec![base];
    let mut bad = job("bad", json(3));
    bad.after = vec![base + 1000];
    let failing = handle.insert_all(vec![job("first", json(1)), dep, bad]);
    let fine = handle.insert_all(vec![job("fine", json(4))]);
    let (failing, fine) = tokio::join!(failing, fine);
    assert!(
        matches!(failing, Err(StoreError::NotFound(id)) if id == base + 1000),
        "{failing:?}"
    );
    let fine = fine.unwrap();
    let all = handle.list(None, None, 100).await.unwrap();
    let tasks: Vec<&str> = all.iter().map(|j| j.task.as_str()).collect();
    assert_eq!(
        tasks,
        ["fine", "base"],
        "nothing of the failed batch is stored"
    );
    assert_eq!(all[0].id, fine[0].id);
    handle.close().await;
}

/// `insert_many` writes runs of plain jobs with multi-row statements (of
/// several sizes): every job gets its own id, in order, and every column of
/// its own row; keyed and dependent jobs in between keep their rules.
fn insert_many_gives_each_job_its_own_row_in_order<B: Backend>(b: B) {
    let mut store = b.open();
    let base = insert(&mut store, &job("base", json(0)));
    let mut jobs = Vec::new();
    for n in 1..=300u64 {
        let mut j = job(&format!("t{n}"), json(n));
        j.priority = n as i32 - 150;
        j.queue = format!("q{}", n % 3);
        j.max_attempts = n as u32;
        j.max_crashes = 1 + n as u32 % 4;
        j.backoff_base_ms = n;
        j.backoff_max_ms = 2 * n;
        j.timeout_ms = (n % 2 == 0).then_some(n * 10);
        j.stall_timeout_ms = (n % 3 == 0).then_some(n * 20);
        j.run_at_ms = 1_000 + n;
        j.created_ms = 500 + n;
        j.notify_url = (n % 5 == 0).then(|| format!("http://127.0.0.1:9/{n}"));
        if n % 7 == 0 {
            j.input = Payload::Native(vec![n as u8; n as usize]);
        }
        match n {
            // A keyed job, and a later one with the same key: a duplicate.
            150 | 250 => j.key = Some("dup".into()),
            200 => j.after = vec![base],
            _ => {}
        }
        jobs.push(j);
    }
    let out = in_tx(&mut store, |s| s.insert_many(&jobs).unwrap());
    assert_eq!(out.len(), jobs.len());
    let mut last = base;
    for (j, s) in jobs.iter().zip(&out) {
        if j.key.is_some() && s.duplicate {
            assert_eq!(s.id, out[149].id, "the second keyed job is the first one");
            continue;
        }
        assert!(s.id > last, "ids grow in order: {} after {last}", s.id);
        last = s.id;
        let rec = store.get(s.id).unwrap().unwrap();
        assert_eq!(rec.task, j.task);
        assert_eq!(rec.input.as_ref(), Some(&j.input));
        assert_eq!(rec.queue, j.queue);
        assert_eq!(rec.priority, j.priority);
        assert_eq!(rec.state, JobState::Queued);
        assert_eq!(rec.max_attempts, j.max_attempts);
        assert_eq!(rec.max_crashes, Some(j.max_crashes));
        assert_eq!(
            (rec.backoff_base_ms, rec.backoff_max_ms),
            (j.backoff_base_ms, j.backoff_max_ms)
        );
        assert_eq!(rec.timeout_ms, j.timeout_ms);
        assert_eq!(rec.stall_timeout_ms, j.stall_timeout_ms);
        assert_eq!((rec.run_at_ms, rec.created_ms), (j.run_at_ms, j.created_ms));
        assert_eq!(rec.notify_url, j.notify_url);
        assert_eq!(rec.key, j.key);
        assert_eq!(rec.after, j.after);
    }
    assert!(out[249].duplicate && !out[149].duplicate);
    assert_eq!(
        store.list(None, None, 1_000).unwrap().len(),
        300,
        "base and 299 new jobs"
    );
}

/// A failing job after multi-row inserts fails the call (through the writer:
/// nothing of it stays), and ids are never handed out twice, even after the
/// jobs that had them are pruned and the store is reopened.
async fn insert_many_is_all_or_nothing_and_ids_are_not_reused<B: Backend>(b: B) {
    let handle = StoreHandle::spawn(b.open()).unwrap();
    let mut bad = job("bad", json(0));
    bad.after = vec![999_999];
    let mut jobs: Vec<NewJob> = (1..=200).map(|n| job("plain", json(n))).collect();
    jobs.push(bad);
    let failed = handle.insert_all(jobs).await;
    assert!(
        matches!(failed, Err(StoreError::NotFound(999_999))),
        "{failed:?}"
    );
    assert!(handle.counts().await.unwrap().is_empty());

    let first = handle
        .insert_all((1..=200).map(|n| job("plain", json(n))).collect())
        .await
        .unwrap();
    let max = first.iter().map(|s| s.id).max().unwrap();
    for s in &first {
        let fin = handle.finish_job(s.id, 5, Finish::Cancelled { error: "x".into() }, Vec::new());
        fin.await.unwrap();
    }
    assert_eq!(handle.prune(u64::MAX, 0).await.unwrap(), 200);
    handle.close().await;

    let handle = StoreHandle::spawn(b.open()).unwrap();
    let again = handle
        .insert_all((1..=10).map(|n| job("again", json(n))).collect())
        .await
        .unwrap();
    assert!(
        again.iter().all(|s| s.id > max),
        "{again:?} reuses an id up to {max}"
    );
    handle.close().await;
}

async fn batch_references_resolve_to_ids_and_become_dependencies<B: Backend>(b: B) {
    use jobvisor_proto::control::{InputRef, JobRef};
    let handle = StoreHandle::spawn(b.open()).unwrap();
    let first = job("download", json(1));
    let mut second = job("hash", json(2));
    second.input_from = vec![InputRef {
        job: JobRef::Batch(0),
        pointer: Some("/path".into()),
        field: Some("path".into()),
    }];
    let ids = handle.insert_all(vec![first, second]).await.unwrap();
    let rec = handle.get(ids[1].id).await.unwrap().unwrap();
    assert_eq!(
        rec.after,
        vec![ids[0].id],
        "the referenced job is a dependency"
    );
    assert_eq!(rec.input_from[0].job, JobRef::Id(ids[0].id));
    // A reference to a later (or missing) position refuses the whole batch.
    let mut bad = job("hash", json(3));
    bad.input_from = vec![InputRef {
        job: JobRef::Batch(5),
        pointer: None,
        field: None,
    }];
    let before = handle.counts().await.unwrap();
    assert!(handle
        .insert_all(vec![job("a", json(4)), bad])
        .await
        .is_err());
    assert_eq!(
        handle.counts().await.unwrap(),
        before,
        "nothing of the batch was stored"
    );
}

fn counts_per_state<B: Backend>(b: B) {
    let mut store = b.open();
    assert!(store.counts().unwrap().is_empty());
    let ids: Vec<u64> = (0..6)
        .map(|i| insert(&mut store, &job("t", json(i))))
        .collect();
    in_tx(&mut store, |s| {
        s.start_attempt(ids[0], 1, None, 1).unwrap();
        s.start_attempt(ids[1], 1, None, 1).unwrap();
        s.finish_job(ids[2], 5, &Finish::Cancelled { error: "c".into() })
            .unwrap();
        s.finish_job(ids[3], 5, &Finish::Dead { error: "d".into() })
            .unwrap();
    });
    assert_eq!(
        store.counts().unwrap(),
        vec![
            (JobState::Queued, 2),
            (JobState::Running, 2),
            (JobState::Cancelled, 1),
            (JobState::Dead, 1)
        ]
    );
}

fn list_filters_newest_first_without_payloads<B: Backend>(b: B) {
    let mut store = b.open();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let mut j = job("t", json(i));
        j.queue = if i % 2 == 0 { "even" } else { "odd" }.into();
        ids.push(insert(&mut store, &j));
    }
    in_tx(&mut store, |s| {
        s.start_attempt(ids[4], 1, Some(5), 1).unwrap();
        s.finish_attempt(
            ids[4],
            1,
            None,
            &AttemptOutcome::Ok,
            2,
            &Finish::Succeeded { output: json(99) },
        )
        .unwrap();
    });
    let all = store.list(None, None, 100).unwrap();
    assert_eq!(
        all.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
    assert!(all.iter().all(|j| j.input.is_none() && j.output.is_none()));
    let done = &all[1];
    assert_eq!(done.id, ids[4]);
    assert_eq!(done.attempts.len(), 1, "attempts are listed");
    assert_eq!(store.list(None, None, 2).unwrap().len(), 2);
    let even: Vec<u64> = store
        .list(None, Some("even"), 100)
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(even, vec![ids[4], ids[2], ids[0]]);
    let queued_even: Vec<u64> = store
        .list(Some(JobState::Queued), Some("even"), 100)
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(queued_even, vec![ids[2], ids[0]]);
    let succeeded = store.list(Some(JobState::Succeeded), None, 100).unwrap();
    assert_eq!(succeeded.len(), 1);
    assert!(store.list(None, Some("none"), 100).unwrap().is_empty());
    // Pages: only ids below `before`, with every filter.
    let page = |s: &mut B::Store, st, q: Option<&str>, before| {
        s.list_page(st, q, before, 2)
            .unwrap()
            .iter()
            .map(|j| j.id)
            .collect::<Vec<u64>>()
    };
    assert_eq!(page(&mut store, None, None, Some(ids[4])), [ids[3], ids[2]]);
    assert_eq!(
        page(&mut store, None, Some("even"), Some(ids[4])),
        [ids[2], ids[0]]
    );
    assert_eq!(
        page(&mut store, Some(JobState::Queued), None, Some(ids[2])),
        [ids[1], ids[0]]
    );
    assert_eq!(
        page(
            &mut store,
            Some(JobState::Queued),
            Some("odd"),
            Some(ids[3])
        ),
        [ids[1]]
    );
    assert_eq!(
        page(&mut store, None, None, Some(u64::MAX)),
        [ids[5], ids[4]]
    );
    assert!(page(&mut store, None, None, Some(ids[0])).is_empty());
}

both! {
    sync: [insert_get_round_trips_every_field, unicode_and_empty_payloads_round_trip, idempotency_key_dedupes, missing_dependency_is_refused, insert_many_gives_each_job_its_own_row_in_order, counts_per_state, list_filters_newest_first_without_payloads],
    async: [insert_all_is_all_or_nothing, insert_many_is_all_or_nothing_and_ids_are_not_reused, batch_references_resolve_to_ids_and_become_dependencies],
}
