//! The writer thread through its handle: every operation, a full store,
//! closing, group commit, and durability of what it acknowledged.

use super::*;

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

/// A terminal state's notifications are written in its transaction: with
/// it, or (when it fails) not at all; then each row is updated after a
/// failed attempt and deleted when done.
async fn deliveries_commit_with_the_state_they_tell_of<B: Backend>(b: B) {
    use jobvisor_store::NewDelivery;
    let handle = StoreHandle::spawn(b.open()).unwrap();
    let a = handle.insert_all(vec![job("a", json(1))]).await.unwrap()[0].id;
    let hook = |state| NewDelivery {
        state,
        target: "{\"url\":\"http://127.0.0.1:9/\"}".into(),
    };
    let missing = handle.finish_job(
        a + 1,
        5,
        Finish::Failed { error: "x".into() },
        vec![hook(JobState::Failed)],
    );
    assert!(matches!(missing.await, Err(StoreError::NotFound(_))));
    assert!(handle.deliveries_after(0, 10).await.unwrap().is_empty());
    handle.start_attempt(a, 1, None, 1).await.unwrap();
    let done = Finish::Succeeded { output: json(2) };
    let two = vec![hook(JobState::Succeeded), hook(JobState::Succeeded)];
    handle
        .finish_attempt(a, 1, Some(7), AttemptOutcome::Ok, 9, done, two)
        .await
        .unwrap();
    let rows = handle.deliveries_after(0, 10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].id < rows[1].id);
    assert_eq!((rows[0].job_id, rows[0].state), (a, JobState::Succeeded));
    assert_eq!((rows[0].attempts, rows[0].next_at_ms), (0, 9));
    let later = handle.deliveries_after(rows[0].id, 10).await.unwrap();
    assert_eq!(later, rows[1..]);
    handle
        .delivery_attempted(rows[0].id, 1, 500, "answered HTTP 500".into())
        .await
        .unwrap();
    handle.delivery_done(rows[1].id).await.unwrap();
    let left = handle.deliveries_after(0, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(
        (left[0].id, left[0].attempts, left[0].next_at_ms),
        (rows[0].id, 1, 500)
    );
    handle.close().await;
}

async fn writer_runs_every_operation<B: Backend>(b: B) {
    let handle = StoreHandle::spawn(b.open()).unwrap();
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
        Vec::new(),
    );
    let cancel = handle.finish_job(b, 30, Finish::Cancelled { error: "no".into() }, Vec::new());
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
        handle.finish_job(a, 1, Finish::Requeue, Vec::new()).await,
        Err(StoreError::NotFound(_))
    ));
    let clone = handle.clone();
    handle.close().await;
    // Another handle keeps the thread alive.
    assert!(clone.get(a).await.unwrap().is_none());
    clone.close().await;
}

async fn close_finishes_what_is_queued_and_releases_the_file<B: Backend>(b: B) {
    let handle = StoreHandle::spawn(b.open()).unwrap();
    let pending: Vec<_> = (0..100)
        .map(|i| handle.insert_all(vec![job("q", json(i))]))
        .collect();
    handle.close().await;
    for p in pending {
        p.await.unwrap();
    }
    // Off the runtime: a backend's blocking client may not run on it.
    let counts = std::thread::scope(|s| s.spawn(|| b.open().counts().unwrap()).join().unwrap());
    assert_eq!(counts, vec![(JobState::Queued, 100)]);
}

async fn group_commit_batches_concurrent_inserts<B: Backend>(b: B) {
    const N: u64 = 2_000;
    let handle = StoreHandle::spawn(b.open()).unwrap();
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
        .args([
            "--exact",
            "writer::child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
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

both! {
    sync: [],
    async: [deliveries_commit_with_the_state_they_tell_of, writer_runs_every_operation, close_finishes_what_is_queued_and_releases_the_file, group_commit_batches_concurrent_inserts],
}
