//! The SQLite store and its writer thread, on real database files: the
//! contract tests, and in `fixture` a file written by an older jobvisor.

mod fixture;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use jobvisor_proto::control::{AttemptOutcome, JobState, Payload};
use jobvisor_store::{
    Finish, JobStore, NewJob, SqliteStore, StoreError, StoreHandle, SCHEMA_VERSION,
};

fn job(task: &str, input: Payload) -> NewJob {
    NewJob {
        task: task.into(),
        input,
        queue: "default".into(),
        priority: 0,
        max_attempts: 3,
        backoff_base_ms: 100,
        backoff_max_ms: 10_000,
        timeout_ms: None,
        stall_timeout_ms: None,
        input_from: Vec::new(),
        run_at_ms: 1_000,
        created_ms: 1_000,
        after: Vec::new(),
        key: None,
        notify_url: None,
    }
}

fn json(n: u64) -> Payload {
    Payload::Json(format!("{{\"n\":{n}}}"))
}

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("jobs.db")).unwrap()
}

/// Inserts in its own transaction.
fn insert(store: &mut SqliteStore, job: &NewJob) -> u64 {
    store.begin().unwrap();
    let s = store.insert(job).unwrap();
    store.commit().unwrap();
    assert!(!s.duplicate);
    s.id
}

fn in_tx<T>(store: &mut SqliteStore, f: impl FnOnce(&mut SqliteStore) -> T) -> T {
    store.begin().unwrap();
    let r = f(store);
    store.commit().unwrap();
    r
}

#[test]
fn insert_get_round_trips_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let a = insert(&mut store, &job("a", json(1)));
    let b = insert(&mut store, &job("b", json(2)));
    let native = vec![0u8, 1, 2, 255, 0, 42];
    let full = NewJob {
        task: "full".into(),
        input: Payload::Native(native.clone()),
        queue: "io".into(),
        priority: -7,
        max_attempts: 9,
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

#[test]
fn unicode_and_empty_payloads_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    for p in [
        Payload::Json("\"héllo ✓ \\u0000\"".into()),
        Payload::Json(String::new()),
        Payload::Native(Vec::new()),
    ] {
        let id = insert(&mut store, &job("t", p.clone()));
        assert_eq!(store.get(id).unwrap().unwrap().input, Some(p));
    }
}

#[test]
fn idempotency_key_dedupes() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
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

#[test]
fn missing_dependency_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let mut j = job("t", json(1));
    j.after = vec![12345];
    store.begin().unwrap();
    store.savepoint().unwrap();
    assert!(matches!(store.insert(&j), Err(StoreError::NotFound(12345))));
    store.rollback_to_savepoint().unwrap();
    store.commit().unwrap();
    assert!(store.list(None, None, 10).unwrap().is_empty());
}

#[tokio::test]
async fn insert_all_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let handle = StoreHandle::spawn(open(dir.path())).unwrap();
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
#[test]
fn insert_many_gives_each_job_its_own_row_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let base = insert(&mut store, &job("base", json(0)));
    let mut jobs = Vec::new();
    for n in 1..=300u64 {
        let mut j = job(&format!("t{n}"), json(n));
        j.priority = n as i32 - 150;
        j.queue = format!("q{}", n % 3);
        j.max_attempts = n as u32;
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
#[tokio::test]
async fn insert_many_is_all_or_nothing_and_ids_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let handle = StoreHandle::spawn(open(dir.path())).unwrap();
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
        let fin = handle.finish_job(s.id, 5, Finish::Cancelled { error: "x".into() });
        fin.await.unwrap();
    }
    assert_eq!(handle.prune(u64::MAX, 0).await.unwrap(), 200);
    handle.close().await;

    let handle = StoreHandle::spawn(open(dir.path())).unwrap();
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

fn all_outcomes() -> Vec<AttemptOutcome> {
    vec![
        AttemptOutcome::Running,
        AttemptOutcome::Ok,
        AttemptOutcome::Error("boom".into()),
        AttemptOutcome::Panic("index out of bounds".into()),
        AttemptOutcome::Crashed {
            code: Some(137),
            signal: Some(9),
            max_rss_kib: 123_456,
            stderr_tail: vec!["line 1".into(), "line 2 ✓".into()],
            cause: Some("memory limit exceeded".into()),
        },
        AttemptOutcome::Crashed {
            code: None,
            signal: None,
            max_rss_kib: 0,
            stderr_tail: Vec::new(),
            cause: None,
        },
        AttemptOutcome::TimedOut("SIGTERM then SIGKILL".into()),
        AttemptOutcome::Lost,
        AttemptOutcome::Cancelled,
    ]
}

#[test]
fn attempts_lifecycle_round_trips_every_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
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

#[test]
fn finish_states() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
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
        }
    }
}

#[test]
fn recover_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
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

    let mut store = open(dir.path());
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
    assert_eq!(ra.attempts[0].outcome, AttemptOutcome::Lost);
    assert_eq!(ra.attempts[0].finished_ms, Some(7_777));
    assert_eq!(live[0], ra);

    // Its only attempt allowed was lost: lost attempts are not charged, so it
    // runs again.
    let rb = store.get(b).unwrap().unwrap();
    assert_eq!(rb.state, JobState::Queued);
    assert_eq!(rb.finished_ms, None);
    assert_eq!(rb.attempts[0].outcome, AttemptOutcome::Lost);

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

#[test]
fn prune_by_age_and_by_count_only_terminal_and_ids_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
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
    let exists = |s: &mut SqliteStore, id| s.get(id).unwrap().is_some();

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

#[test]
fn counts_per_state() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
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

#[test]
fn list_filters_newest_first_without_payloads() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
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
}

#[test]
fn schema_version_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let id = insert(&mut store, &job("kept", json(1)));
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    drop(conn);

    // Reopen: the data is there, migrations are not applied twice.
    let mut store = SqliteStore::open(&path).unwrap();
    let rec = store.get(id).unwrap().unwrap();
    assert_eq!((rec.task.as_str(), rec.input), ("kept", Some(json(1))));
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    match SqliteStore::open(&path) {
        Err(StoreError::TooNew { found, supported }) => {
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

/// What the store writes is JSON text that plain SQL reads: a person with
/// `sqlite3` can query their own job history.
#[test]
fn outcomes_and_pipeline_inputs_are_json_for_plain_sql() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let mut store = SqliteStore::open(&path).unwrap();
    let first = insert(&mut store, &job("first", json(1)));
    let mut step = job("step", json(2));
    step.input_from = vec![jobvisor_proto::control::InputRef {
        job: jobvisor_proto::control::JobRef::Id(first),
        pointer: Some("/n".into()),
        field: Some("m".into()),
    }];
    step.after = vec![first];
    let second = insert(&mut store, &step);
    let outcomes = all_outcomes();
    in_tx(&mut store, |s| {
        for (n, outcome) in outcomes.iter().enumerate() {
            let n = n as u32 + 1;
            s.start_attempt(second, n, Some(42), 100).unwrap();
            s.finish_attempt(second, n, None, outcome, 200, &Finish::Requeue)
                .unwrap();
        }
    });
    drop(store);

    let conn = rusqlite::Connection::open(&path).unwrap();
    let kinds: Vec<String> = conn
        .prepare(
            "SELECT json_extract(outcome, '$.kind') FROM attempts WHERE job_id = ?1 ORDER BY number",
        )
        .unwrap()
        .query_map([second], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        kinds,
        [
            "running",
            "ok",
            "error",
            "panic",
            "crashed",
            "crashed",
            "timed_out",
            "lost",
            "cancelled"
        ]
    );
    let details: (String, String) = conn
        .query_row(
            "SELECT (SELECT json_extract(outcome, '$.message') FROM attempts \
                     WHERE job_id = ?1 AND number = 3), \
                    (SELECT json_extract(outcome, '$.stderr_tail[1]') FROM attempts \
                     WHERE job_id = ?1 AND number = 5)",
            [second],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(details, ("boom".into(), "line 2 ✓".into()));
    let inputs: (u64, String, String) = conn
        .query_row(
            "SELECT json_extract(input_from, '$[0].job_id'), json_extract(input_from, '$[0].pointer'), \
             json_extract(input_from, '$[0].field') FROM jobs WHERE id = ?1",
            [second],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(inputs, (first, "/n".into(), "m".into()));
}

#[test]
fn not_a_database_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("garbage.db");
    std::fs::write(&path, vec![b'x'; 8192]).unwrap();
    assert!(matches!(SqliteStore::open(&path), Err(StoreError::Db(_))));
}

/// The chain of causes of `e`, outermost first.
fn chain(e: &dyn std::error::Error) -> Vec<String> {
    std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect()
}

/// A store error names its own layer and keeps its cause as its source, so
/// that `{e:#}` (anyhow) prints each cause once.
#[test]
fn errors_keep_their_cause_and_say_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no such dir").join("jobs.db");
    let err = SqliteStore::open(&path).unwrap_err();
    let links = chain(&err);
    assert_eq!(links[0], "job store error");
    assert_eq!(links[1], format!("cannot open {}", path.display()));
    assert!(links.len() >= 3, "SQLite's own error is kept: {links:?}");
    for pair in links.windows(2) {
        assert!(!pair[0].contains(&pair[1]), "a cause said twice: {links:?}");
    }

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&garbage).unwrap_err();
    let links = chain(&err);
    assert_eq!(links[0], "job store error");
    assert!(links[1].contains("not a database"), "{links:?}");
    assert_eq!(chain(&err.clone()), links, "a clone keeps the causes");
}

#[test]
fn sqlite_full_maps_to_full_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let small = insert(&mut store, &job("small", json(1)));
    let cap = store.set_max_page_count(1).unwrap();
    assert!(cap > 1, "SQLite keeps the cap at the current size");
    let big = job("big", Payload::Native(vec![7; 1 << 20]));

    store.begin().unwrap();
    store.savepoint().unwrap();
    let err = store.insert(&big).unwrap_err();
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    let links = chain(&err);
    assert_eq!(links[0], "the job store is full (disk full?)");
    assert!(links.len() >= 2, "SQLite's error is the cause: {links:?}");
    // Whatever SQLite did to the transaction, the store is usable again.
    let _ = store.rollback_to_savepoint();
    store.rollback().unwrap();
    assert_eq!(store.list(None, None, 10).unwrap().len(), 1);

    store.set_max_page_count(1 << 30).unwrap();
    let id = insert(&mut store, &big);
    assert_eq!(
        store.get(id).unwrap().unwrap().input,
        Some(Payload::Native(vec![7; 1 << 20]))
    );
    assert!(store.get(small).unwrap().is_some());
}

#[tokio::test]
async fn full_store_through_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.set_max_page_count(1).unwrap();
    let handle = StoreHandle::spawn(store).unwrap();
    let big = handle.insert_all(vec![job("big", Payload::Native(vec![1; 1 << 20]))]);
    let big2 = handle.insert_all(vec![job("big2", Payload::Native(vec![2; 1 << 20]))]);
    let (big, big2) = tokio::join!(big, big2);
    assert!(matches!(big, Err(StoreError::Full(_))), "{big:?}");
    assert!(matches!(big2, Err(StoreError::Full(_))), "{big2:?}");
    // The thread is still serving.
    assert!(handle.counts().await.unwrap().is_empty());
    handle.close().await;
}

#[tokio::test]
async fn writer_runs_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let handle = StoreHandle::spawn(open(dir.path())).unwrap();
    let ids = handle
        .insert_all(vec![job("a", json(1)), job("b", json(2))])
        .await
        .unwrap();
    let (a, b) = (ids[0].id, ids[1].id);
    // Queued in call order: start and finish need not wait for each other.
    let start = handle.start_attempt(a, 1, Some(42), 10);
    let finish = handle.finish_attempt(
        a,
        1,
        None,
        AttemptOutcome::Ok,
        20,
        Finish::Succeeded { output: json(3) },
    );
    let cancel = handle.finish_job(b, 30, Finish::Cancelled { error: "no".into() });
    let (start, finish, cancel) = tokio::join!(start, finish, cancel);
    start.unwrap();
    finish.unwrap();
    cancel.unwrap();
    let rec = handle.get(a).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.output),
        (JobState::Succeeded, Some(json(3)))
    );
    assert_eq!(rec.attempts[0].worker_pid, Some(42));
    assert_eq!(
        handle
            .list(Some(JobState::Cancelled), None, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        handle
            .list(None, Some("default".into()), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(handle.recover(40).await.unwrap().is_empty());
    assert_eq!(
        handle.counts().await.unwrap(),
        vec![(JobState::Succeeded, 1), (JobState::Cancelled, 1)]
    );
    assert_eq!(handle.prune(u64::MAX, 0).await.unwrap(), 2);
    assert!(matches!(
        handle.finish_job(a, 1, Finish::Requeue).await,
        Err(StoreError::NotFound(_))
    ));
    let clone = handle.clone();
    handle.close().await;
    // Another handle keeps the thread alive.
    assert!(clone.get(a).await.unwrap().is_none());
    clone.close().await;
}

#[tokio::test]
async fn close_finishes_what_is_queued_and_releases_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let handle = StoreHandle::spawn(open(dir.path())).unwrap();
    let pending: Vec<_> = (0..100)
        .map(|i| handle.insert_all(vec![job("q", json(i))]))
        .collect();
    handle.close().await;
    for p in pending {
        p.await.unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(store.counts().unwrap(), vec![(JobState::Queued, 100)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_inserts() {
    const N: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let handle = StoreHandle::spawn(open(dir.path())).unwrap();
    let before = handle.commits();
    // Every insert is queued (by the call) before any answer is awaited.
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let fut = handle.insert_all(vec![job("g", json(i))]);
            tokio::spawn(async move { (i, fut.await) })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        let s = r.unwrap()[0];
        assert!(ids.insert(s.id), "id {} answered twice (input {i})", s.id);
    }
    let commits = handle.commits() - before;
    eprintln!("group commit: {N} concurrent inserts in {commits} commits");
    assert_eq!(ids.len() as u64, N);
    assert!(
        commits < N / 4,
        "{commits} commits for {N} inserts: no batching"
    );
    assert_eq!(handle.counts().await.unwrap(), vec![(JobState::Queued, N)]);
    handle.close().await;
}

const CHILD_DIR_ENV: &str = "JOBVISOR_STORE_TEST_CHILD_DIR";

/// Child mode of [`acknowledged_inserts_survive_sigkill`]: returns at once
/// unless started by it. Inserts jobs from several tasks through the writer
/// and prints `ack <id> <n>` for each acknowledged insert, until killed.
#[test]
fn child_writer() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async move {
        let handle = StoreHandle::spawn(open(Path::new(&dir))).unwrap();
        let mut tasks = Vec::new();
        for t in 0..8u64 {
            let handle = handle.clone();
            tasks.push(tokio::spawn(async move {
                // Bounded, in case nobody kills us.
                for i in 0..100_000u64 {
                    let n = t * 1_000_000 + i;
                    let s = handle
                        .insert_all(vec![job("durable", json(n))])
                        .await
                        .unwrap()[0];
                    let mut out = std::io::stdout().lock();
                    // The parent is gone when this fails.
                    if writeln!(out, "ack {} {n}", s.id)
                        .and_then(|()| out.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_inserts_survive_sigkill() {
    const WANT: usize = 500;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        if words.next() != Some("ack") {
            continue;
        }
        let id: u64 = words.next().unwrap().parse().unwrap();
        let n: u64 = words.next().unwrap().parse().unwrap();
        acked.push((id, n));
        if acked.len() >= WANT {
            break;
        }
    }
    child.kill().unwrap(); // SIGKILL, mid-stream
    let status = child.wait().unwrap();
    assert_eq!(acked.len(), WANT, "the child stopped early ({status})");
    assert!(!status.success());

    let mut store = open(dir.path());
    for (id, n) in &acked {
        let rec = store
            .get(*id)
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged job {id} lost"));
        assert_eq!(rec.input, Some(json(*n)), "job {id}");
        assert_eq!(rec.task, "durable");
    }
    // Recovery works on what the killed writer left.
    let live = in_tx(&mut store, |s| s.recover(1).unwrap());
    assert!(live.len() >= WANT);
}

#[tokio::test]
async fn batch_references_resolve_to_ids_and_become_dependencies() {
    use jobvisor_proto::control::{InputRef, JobRef};
    let dir = tempfile::tempdir().unwrap();
    let handle = StoreHandle::spawn(open(dir.path())).unwrap();
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
