//! Several nodes on one PostgreSQL database, each a store of its own (its
//! own connection), as several daemons would be: claims never overlap,
//! stale tokens are refused, caps and dependencies hold across nodes, keys
//! are unique across nodes, notifications arrive, migrations race safely.

use std::collections::BTreeSet;
use std::sync::{Arc, Barrier};

use jobvisor_store::{
    CancelRequest, Claim, Claimed, Listener, NodeState, PostgresStore, Wake, PG_SCHEMA_VERSION,
};

use super::pg::Pg;
use super::*;

/// A store registered as node `name` with a lease of `lease_ms`.
fn node(pg: &Pg, name: &str, lease_ms: u64) -> PostgresStore {
    let mut s = pg.open();
    s.register_node(name, std::process::id(), "test-host", lease_ms)
        .unwrap();
    s
}

fn claim(store: &mut PostgresStore, limit: u32) -> Vec<Claimed> {
    store
        .claim(&Claim {
            limit,
            ..Claim::default()
        })
        .unwrap()
}

/// Runs attempt `number` of `id` to success, as a node does: one transaction.
fn succeed(store: &mut PostgresStore, id: u64, number: u32) -> Result<(), StoreError> {
    store.begin()?;
    let r = store.start_and_finish_attempt(
        id,
        number,
        10,
        Some(1),
        &AttemptOutcome::Ok,
        20,
        &Finish::Succeeded { output: json(id) },
    );
    match r {
        Ok(()) => store.commit(),
        Err(e) => {
            store.rollback()?;
            Err(e)
        }
    }
}

/// Expires leases until `id`'s has (a lease of 0 ms has passed by the next
/// transaction of the database's clock), a bounded number of tries.
fn expire_until(store: &mut PostgresStore, id: u64) -> jobvisor_store::Expired {
    for _ in 0..1_000 {
        let e = store.expire(10, 100).unwrap();
        if e.requeued.contains(&id) || e.dead.contains(&id) {
            return e;
        }
    }
    panic!("the lease of job {id} never expired");
}

fn insert_all(store: &mut PostgresStore, jobs: &[NewJob]) -> Vec<u64> {
    in_tx(store, |s| s.insert_many(jobs).unwrap())
        .iter()
        .map(|s| s.id)
        .collect()
}

#[test]
fn two_nodes_claiming_concurrently_never_get_the_same_job() {
    const N: u64 = 1_000;
    let pg = Pg::new();
    let mut setup = pg.open();
    let jobs: Vec<NewJob> = (0..N).map(|n| job("t", json(n))).collect();
    let all: BTreeSet<u64> = insert_all(&mut setup, &jobs).into_iter().collect();
    let start = Arc::new(Barrier::new(2));
    let run = |name: &'static str| {
        let (pg, start) = (&pg, start.clone());
        move || {
            let mut store = node(pg, name, 60_000);
            start.wait();
            let mut mine = Vec::new();
            loop {
                let got = claim(&mut store, 25);
                if got.is_empty() {
                    return mine;
                }
                for c in got {
                    assert_eq!(c.job.state, JobState::Running);
                    assert_eq!(store.token(c.job.id), Some(c.token));
                    succeed(&mut store, c.job.id, 1).unwrap();
                    mine.push(c.job.id);
                }
            }
        }
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(run("a"));
        let b = s.spawn(run("b"));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (sa, sb): (BTreeSet<u64>, BTreeSet<u64>) =
        (a.iter().copied().collect(), b.iter().copied().collect());
    assert_eq!(sa.len(), a.len(), "node a claimed a job twice");
    assert_eq!(sb.len(), b.len(), "node b claimed a job twice");
    assert!(
        sa.is_disjoint(&sb),
        "both nodes claimed {:?}",
        sa.intersection(&sb).next()
    );
    assert_eq!(&sa | &sb, all, "every job was claimed");
    eprintln!("claims: node a {}, node b {}", a.len(), b.len());
    assert_eq!(setup.counts().unwrap(), vec![(JobState::Succeeded, N)]);
}

#[test]
fn a_stale_token_is_refused_after_expiry_and_a_new_claim() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 0);
    let mut b = node(&pg, "b", 60_000);
    let id = insert(&mut a, &job("t", json(1)));
    let first = claim(&mut a, 10);
    assert_eq!(first.len(), 1);
    let old = first[0].token;
    in_tx(&mut a, |s| s.start_attempt(id, 1, Some(11), 5).unwrap());

    // a's lease (0 ms) passes; b expires it and claims the job again.
    let expired = expire_until(&mut b, id);
    assert_eq!((expired.requeued, expired.dead), (vec![id], vec![]));
    let second = claim(&mut b, 10);
    assert_eq!(second.len(), 1);
    let new = second[0].token;
    assert!(new > old);
    assert_eq!(second[0].job.attempts[0].outcome, AttemptOutcome::Lost);

    // a comes back and reports its result: refused, nothing written.
    a.begin().unwrap();
    let late = a.finish_attempt(
        id,
        1,
        None,
        &AttemptOutcome::Ok,
        30,
        &Finish::Succeeded { output: json(99) },
    );
    a.rollback().unwrap();
    match late {
        Err(StoreError::Fenced {
            job,
            token,
            current,
        }) => assert_eq!((job, token, current), (id, old, new)),
        other => panic!("expected Fenced, got {other:?}"),
    }
    let rec = b.get(id).unwrap().unwrap();
    assert_eq!((rec.state, rec.output), (JobState::Running, None));
    // Every kind of write of a's is refused alike.
    a.begin().unwrap();
    assert!(matches!(
        a.start_attempt(id, 2, None, 40),
        Err(StoreError::Fenced { .. })
    ));
    a.rollback().unwrap();
    a.begin().unwrap();
    assert!(matches!(
        a.finish_job(id, 40, &Finish::Requeue),
        Err(StoreError::Fenced { .. })
    ));
    a.rollback().unwrap();

    // b's result is the one stored.
    succeed(&mut b, id, 2).unwrap();
    let rec = b.get(id).unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.output),
        (JobState::Succeeded, Some(json(id)))
    );
    let outcomes: Vec<_> = rec.attempts.iter().map(|a| a.outcome.clone()).collect();
    assert_eq!(outcomes, [AttemptOutcome::Lost, AttemptOutcome::Ok]);
    // a's next heartbeat tells it the job is lost to it, and forgets it.
    assert_eq!(a.token(id), Some(old));
    assert_eq!(a.heartbeat().unwrap(), vec![id]);
    assert!(a.token(id).is_none());
}

#[test]
fn the_heartbeat_renews_leases_and_reports_the_lost_ones() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 0);
    let mut b = node(&pg, "b", 60_000);
    let ids = insert_all(&mut a, &[job("t", json(1)), job("t", json(2))]);
    assert_eq!(claim(&mut a, 10).len(), 2);
    expire_until(&mut b, ids[0]);
    // Both leases were 0 ms: whichever the loop did not yet expire goes now.
    let _ = b.expire(10, 100).unwrap();
    if b.get(ids[1]).unwrap().unwrap().state == JobState::Running {
        expire_until(&mut b, ids[1]);
    }
    let mut lost = a.heartbeat().unwrap();
    lost.sort_unstable();
    assert_eq!(lost, ids);
    assert!(a.held().is_empty());

    // A live lease is renewed and kept.
    let mut c = node(&pg, "c", 60_000);
    let got = claim(&mut c, 10);
    assert_eq!(got.len(), 2);
    assert!(c.heartbeat().unwrap().is_empty());
    assert_eq!(c.held().len(), 2);
}

#[test]
fn a_job_that_keeps_losing_its_lease_is_dead() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 0);
    let mut b = node(&pg, "b", 60_000);
    let id = insert(&mut a, &job("t", json(1)));
    for round in 1..=3u32 {
        assert_eq!(claim(&mut a, 1).len(), 1, "round {round}");
        let mut e = None;
        for _ in 0..1_000 {
            let x = b.expire(3, 100).unwrap();
            if !x.requeued.is_empty() || !x.dead.is_empty() {
                e = Some(x);
                break;
            }
        }
        let e = e.expect("the lease expires");
        if round < 3 {
            assert_eq!(e.requeued, vec![id]);
        } else {
            assert_eq!(e.dead, vec![id]);
        }
    }
    let rec = b.get(id).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Dead);
    assert!(rec.finished_ms.is_some());
    assert!(rec.error.unwrap().contains("lost its lease 3 times"));
    assert!(claim(&mut a, 1).is_empty());
}

#[test]
fn queue_caps_hold_across_nodes() {
    const CAP: u32 = 3;
    let pg = Pg::new();
    let mut setup = pg.open();
    let jobs: Vec<NewJob> = (0..40)
        .map(|n| {
            let mut j = job("t", json(n));
            j.queue = if n % 2 == 0 { "capped" } else { "free" }.into();
            j
        })
        .collect();
    insert_all(&mut setup, &jobs);
    let caps = vec![("capped".to_string(), CAP)];
    // Four nodes claim at once, each as much as it may.
    let start = Arc::new(Barrier::new(4));
    let nodes: Vec<(Vec<Claimed>, PostgresStore)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (pg, start, caps) = (&pg, start.clone(), &caps);
                s.spawn(move || {
                    let mut store = node(pg, &format!("n{i}"), 60_000);
                    start.wait();
                    let got = store
                        .claim(&Claim {
                            limit: 8,
                            queues: None,
                            caps,
                        })
                        .unwrap();
                    // Keep the store (and so the node's claims) alive.
                    (got, store)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let claimed: Vec<&Vec<Claimed>> = nodes.iter().map(|(c, _)| c).collect();
    let capped: usize = claimed
        .iter()
        .copied()
        .flatten()
        .filter(|c| c.job.queue == "capped")
        .count();
    assert_eq!(capped, CAP as usize, "{capped} capped jobs running at once");
    let running = setup
        .list(Some(JobState::Running), Some("capped"), 100)
        .unwrap();
    assert_eq!(running.len(), CAP as usize);

    // One finishes: exactly one more may start, on whichever node.
    let mut n9 = node(&pg, "n9", 60_000);
    let only_capped = vec!["capped".to_string()];
    let claim_capped = |s: &mut PostgresStore| {
        s.claim(&Claim {
            limit: 10,
            queues: Some(&only_capped),
            caps: &caps,
        })
        .unwrap()
    };
    assert!(claim_capped(&mut n9).is_empty());
    let mut holder = nodes
        .into_iter()
        .map(|(_, store)| store)
        .find(|store| store.token(running[0].id).is_some())
        .unwrap();
    in_tx(&mut holder, |s| {
        s.finish_job(running[0].id, 5, &Finish::Succeeded { output: json(0) })
            .unwrap()
    });
    assert_eq!(claim_capped(&mut n9).len(), 1);
    assert!(claim_capped(&mut n9).is_empty());
}

#[test]
fn dependencies_finished_on_other_nodes_release_their_dependents() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let mut b = node(&pg, "b", 60_000);
    let parent = insert(&mut a, &job("parent", json(1)));
    let mut child = job("child", json(2));
    child.after = vec![parent];
    child.priority = 100; // would go first, but must wait
    let child = insert(&mut a, &child);
    let mut delayed = job("later", json(3));
    delayed.run_at_ms = u64::MAX / 2; // far in the future (database clock)
    insert(&mut a, &delayed);

    let got = claim(&mut b, 10);
    assert_eq!(
        got.iter().map(|c| c.job.id).collect::<Vec<_>>(),
        vec![parent],
        "only the parent is ready"
    );
    assert!(claim(&mut a, 10).is_empty());
    succeed(&mut b, parent, 1).unwrap();
    let got = claim(&mut a, 10);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].job.id, &got[0].job.after), (child, &vec![parent]));

    // A failed dependency never releases its dependent.
    let p2 = insert(&mut a, &job("p2", json(4)));
    let mut c2 = job("c2", json(5));
    c2.after = vec![p2];
    insert(&mut a, &c2);
    assert_eq!(claim(&mut b, 10)[0].job.id, p2);
    in_tx(&mut b, |s| {
        s.finish_job(p2, 5, &Finish::Failed { error: "no".into() })
            .unwrap()
    });
    assert!(claim(&mut a, 10).is_empty());
}

#[test]
fn an_idempotency_key_is_one_job_across_nodes() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let mut b = node(&pg, "b", 60_000);
    let mut keyed = job("t", json(1));
    keyed.key = Some("once".into());
    // a inserts and holds its transaction open; b's insert of the same key
    // must wait for it, then see a's job.
    a.begin().unwrap();
    let first = a.insert(&keyed).unwrap();
    assert!(!first.duplicate);
    let mut watch = pg.sql();
    let second = std::thread::scope(|s| {
        let keyed = keyed.clone();
        let waiter = s.spawn(move || in_tx(&mut b, |b| b.insert(&keyed).unwrap()));
        // Until b waits on a's row lock (an event PostgreSQL shows).
        loop {
            let waiting: i64 = watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND application_name = current_setting('application_name')",
                    &[],
                )
                .unwrap()
                .get(0);
            if waiting > 0 || waiter.is_finished() {
                break;
            }
            std::thread::yield_now();
        }
        a.commit().unwrap();
        waiter.join().unwrap()
    });
    assert_eq!((second.id, second.duplicate), (first.id, true));
    assert_eq!(a.list(None, None, 10).unwrap().len(), 1);
}

#[test]
fn cancel_from_any_node_reaches_the_node_running_the_job() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let mut c = node(&pg, "c", 60_000);
    let ids = insert_all(&mut a, &[job("t", json(1)), job("t", json(2))]);
    let got = claim(&mut a, 1);
    let running = got[0].job.id;
    let waiting = ids.iter().copied().find(|&i| i != running).unwrap();
    assert_eq!(
        c.request_cancel(running, 50, "cancelled by user").unwrap(),
        CancelRequest::Requested {
            node: Some("a".into())
        }
    );
    assert_eq!(a.cancel_requested().unwrap(), vec![running]);
    // c does not hold the job: it cannot write it (only ask).
    c.begin().unwrap();
    let not_mine = c.finish_job(running, 55, &Finish::Cancelled { error: "x".into() });
    c.rollback().unwrap();
    assert!(
        matches!(not_mine, Err(StoreError::Fenced { job, token: 0, .. }) if job == running),
        "{not_mine:?}"
    );
    assert!(c.cancel_requested().unwrap().is_empty());
    assert_eq!(
        c.request_cancel(waiting, 50, "cancelled by user").unwrap(),
        CancelRequest::Cancelled
    );
    let rec = c.get(waiting).unwrap().unwrap();
    assert_eq!(rec.state, JobState::Cancelled);
    assert_eq!(rec.error.as_deref(), Some("cancelled by user"));
    assert!(
        claim(&mut c, 10).is_empty(),
        "a cancelled job is not claimed"
    );
    // a stops the worker and writes the end, fenced as any write.
    in_tx(&mut a, |s| {
        s.finish_job(
            running,
            60,
            &Finish::Cancelled {
                error: "cancelled by user".into(),
            },
        )
        .unwrap()
    });
    assert_eq!(
        c.request_cancel(running, 70, "again").unwrap(),
        CancelRequest::Finished(JobState::Cancelled)
    );
    assert!(matches!(
        c.request_cancel(9_999, 70, "x"),
        Err(StoreError::NotFound(9_999))
    ));
}

#[test]
fn nodes_are_listed_with_their_jobs_and_state() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let mut b = node(&pg, "b", 60_000);
    let mut gone = node(&pg, "gone", 0);
    insert_all(&mut a, &[job("t", json(1)), job("t", json(2))]);
    assert_eq!(claim(&mut a, 2).len(), 2);
    b.deregister_node().unwrap();
    gone.heartbeat().unwrap();
    let nodes = a.nodes().unwrap();
    let view: Vec<(&str, u64, NodeState)> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.jobs_running, n.state))
        .collect();
    // "gone" has a lease of 0 ms: silent for longer than it at once.
    assert_eq!(
        view,
        [
            ("a", 2, NodeState::Up),
            ("b", 0, NodeState::Stopped),
            ("gone", 0, NodeState::Lost)
        ]
    );
    assert_eq!(nodes[0].pid, std::process::id());
    assert_eq!(nodes[0].host, "test-host");
    assert!(nodes[0].last_heartbeat_ms >= nodes[0].started_ms);
    // A live node's name cannot be taken by another process.
    let mut thief = pg.open();
    let err = thief
        .register_node("a", 1, "elsewhere", 60_000)
        .unwrap_err();
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .unwrap_or("")
            .contains("in use by a live node"),
        "{err}: {cause:?}"
    );
    // A stopped node's can.
    thief.register_node("b", 1, "elsewhere", 60_000).unwrap();
}

#[test]
fn notifications_reach_a_listener() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let mut c = node(&pg, "c", 60_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let listener =
        Listener::spawn(&pg.url, a.channel(), std::time::Duration::from_secs(60), tx).unwrap();
    // The next notification that is not a poll.
    let mut next = || {
        rt.block_on(async {
            loop {
                match tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv()).await {
                    Ok(Some(Wake::Poll)) => continue,
                    Ok(Some(w)) => return w,
                    other => panic!("no notification: {other:?}"),
                }
            }
        })
    };
    let id = insert(&mut c, &job("t", json(1)));
    assert_eq!(next(), Wake::Submit(vec![id]));
    let ids = insert_all(
        &mut c,
        &(0..5).map(|n| job("t", json(n))).collect::<Vec<_>>(),
    );
    assert_eq!(next(), Wake::Submit(vec![ids[0], ids[4]]));
    assert_eq!(claim(&mut a, 1)[0].job.id, id);
    c.request_cancel(id, 5, "x").unwrap();
    assert_eq!(next(), Wake::Cancel(vec![id]));
    in_tx(&mut a, |s| {
        s.finish_job(id, 6, &Finish::Cancelled { error: "x".into() })
            .unwrap()
    });
    assert_eq!(next(), Wake::Finish(vec![id]));
    // A rolled-back write tells nothing: the next one is the next commit.
    c.begin().unwrap();
    c.insert(&job("t", json(7))).unwrap();
    c.rollback().unwrap();
    let after = insert(&mut c, &job("t", json(8)));
    assert_eq!(next(), Wake::Submit(vec![after]));
    listener.stop();
}

#[test]
fn two_opens_racing_on_a_new_database_migrate_it_once() {
    let pg = Pg::new();
    let start = Arc::new(Barrier::new(4));
    std::thread::scope(|s| {
        for _ in 0..4 {
            let (pg, start) = (&pg, start.clone());
            s.spawn(move || {
                start.wait();
                drop(pg.open());
            });
        }
    });
    let mut sql = pg.sql();
    let rows = sql
        .query("SELECT version FROM jobvisor_schema", &[])
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0) as u32, PG_SCHEMA_VERSION);
    // And once more, on a migrated database: nothing to do.
    let mut store = pg.open();
    assert!(store.counts().unwrap().is_empty());
    // A newer database is refused.
    sql.execute("UPDATE jobvisor_schema SET version = version + 1", &[])
        .unwrap();
    assert!(matches!(
        PostgresStore::open(&pg.url),
        Err(StoreError::TooNew { .. })
    ));
}

/// The SQL blocks of `docs/cluster.md`, by their `-- query: NAME` line.
fn doc_queries() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/cluster.md"
    ))
    .unwrap();
    doc.split("```sql\n")
        .skip(1)
        .map(|block| {
            let sql = block.split("```").next().unwrap();
            let name = sql
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("-- query: "))
                .expect("each SQL block starts with -- query: NAME");
            (name.to_string(), sql.to_string())
        })
        .collect()
}

#[test]
fn the_operator_queries_of_the_docs_run() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let mut b = node(&pg, "b", 60_000);
    let ids = insert_all(
        &mut a,
        &(1..=4).map(|n| job("t", json(n))).collect::<Vec<_>>(),
    );
    assert_eq!(claim(&mut a, 3).len(), 3);
    succeed(&mut a, ids[0], 1).unwrap();
    let crash = AttemptOutcome::Crashed {
        code: None,
        signal: Some(9),
        max_rss_kib: 123_456,
        stderr_tail: vec!["oom".into()],
        cause: None,
    };
    in_tx(&mut a, |s| {
        s.start_and_finish_attempt(
            ids[1],
            1,
            1,
            None,
            &crash,
            2,
            &Finish::Retry {
                run_at_ms: 0,
                error: "crashed".into(),
            },
        )
        .unwrap();
        s.start_and_finish_attempt(
            ids[2],
            1,
            1,
            None,
            &AttemptOutcome::Error("bad".into()),
            2,
            &Finish::Failed {
                error: "bad input".into(),
            },
        )
        .unwrap();
    });
    let on_b = claim(&mut b, 10);
    assert_eq!(on_b.len(), 2, "the retried job and the fourth");

    let queries = doc_queries();
    let names: Vec<&str> = queries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["two-successes", "crashes", "nodes", "failures"]);
    let mut sql = pg.sql();
    for (name, q) in &queries {
        let rows = sql
            .query(q.as_str(), &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        match name.as_str() {
            "two-successes" => assert!(rows.is_empty()),
            "crashes" => {
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].get::<_, i32>("signal"), 9);
                assert_eq!(rows[0].get::<_, i64>("attempts"), 1);
                assert_eq!(rows[0].get::<_, i64>("max_rss_kib"), 123_456);
            }
            "nodes" => {
                let view: Vec<(String, i64)> = rows
                    .iter()
                    .map(|r| (r.get("name"), r.get("running")))
                    .collect();
                assert_eq!(view, [("a".to_string(), 0), ("b".to_string(), 2)]);
            }
            "failures" => {
                assert_eq!(rows.len(), 1);
                assert_eq!(rows[0].get::<_, i64>("id") as u64, ids[2]);
                assert_eq!(rows[0].get::<_, &str>("error"), "bad input");
            }
            other => panic!("no check for query {other}"),
        }
    }
}

/// Throughput on the local server (a measurement, not a check of speed:
/// run with `cargo test -p jobvisor-store --test store -- --ignored
/// --nocapture measure`): `insert_many` of plain jobs in one transaction,
/// then claim + fenced finish by 1 and 2 nodes, 100 jobs per claim and
/// one transaction for the finishes of each claim (as the writer's group
/// commit would).
#[test]
#[ignore = "a measurement, not a check: scripts/bench-store runs it"]
fn measure_insert_and_claim_throughput() {
    const N: u64 = 20_000;
    for nodes in [1usize, 2] {
        let pg = Pg::new();
        let mut setup = pg.open();
        let jobs: Vec<NewJob> = (0..N).map(|n| job("t", json(n))).collect();
        let t = std::time::Instant::now();
        for chunk in jobs.chunks(5_000) {
            insert_all(&mut setup, chunk);
        }
        let insert = t.elapsed();
        let t = std::time::Instant::now();
        let done: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..nodes)
                .map(|i| {
                    let pg = &pg;
                    s.spawn(move || {
                        let mut store = node(pg, &format!("n{i}"), 60_000);
                        let mut done = 0;
                        loop {
                            let got = claim(&mut store, 100);
                            if got.is_empty() {
                                return done;
                            }
                            store.begin().unwrap();
                            for c in &got {
                                store
                                    .start_and_finish_attempt(
                                        c.job.id,
                                        1,
                                        1,
                                        Some(1),
                                        &AttemptOutcome::Ok,
                                        2,
                                        &Finish::Succeeded { output: json(1) },
                                    )
                                    .unwrap();
                            }
                            store.commit().unwrap();
                            done += got.len();
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        let burn = t.elapsed();
        assert_eq!(done as u64, N);
        assert_eq!(setup.counts().unwrap(), vec![(JobState::Succeeded, N)]);
        eprintln!(
            "postgres, {nodes} node(s): insert_many {:.0} jobs/s; claim + fenced finish {:.0} jobs/s",
            N as f64 / insert.as_secs_f64(),
            N as f64 / burn.as_secs_f64()
        );
    }
    // Submits of one job each, 5,000 in flight through the writer thread
    // (group commit), on both backends.
    const ONE_BY_ONE: u64 = 5_000;
    fn submits<B: Backend>(b: B) -> f64 {
        block_on(async move {
            let handle = StoreHandle::spawn(b.open()).unwrap();
            let t = std::time::Instant::now();
            let calls: Vec<_> = (0..ONE_BY_ONE)
                .map(|n| handle.insert_all(vec![job("t", json(n))]))
                .collect();
            for c in calls {
                c.await.unwrap();
            }
            let rate = ONE_BY_ONE as f64 / t.elapsed().as_secs_f64();
            handle.close().await;
            rate
        })
    }
    eprintln!(
        "one-job submits through the writer: postgres {:.0} jobs/s, sqlite {:.0} jobs/s",
        submits(Pg::new()),
        submits(crate::Sqlite::new())
    );
}

#[test]
fn a_store_connects_again_after_losing_its_connection() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let id = insert(&mut a, &job("t", json(1)));
    let got = claim(&mut a, 1);
    assert_eq!(got[0].job.id, id);
    // The server ends every session of this test but the one asking.
    let mut admin = pg.sql();
    let ended: i64 = admin
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = current_setting('application_name') \
             AND pid <> pg_backend_pid()) t",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ended, 1);
    // The first operation meets the dead connection and fails (the
    // server's FATAL message, then perhaps the reset socket: two at most);
    // the next one connects again, and the claim (a row, not a session)
    // still holds.
    assert!(a.get(id).is_err());
    let rec = match a.get(id) {
        Ok(rec) => rec,
        Err(_) => a.get(id).unwrap(),
    }
    .unwrap();
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(a.token(id), Some(got[0].token));
    succeed(&mut a, id, 1).unwrap();
    assert_eq!(a.get(id).unwrap().unwrap().state, JobState::Succeeded);
}

/// Through the writer thread (group commit): a stale write is refused
/// alone; the other writes queued with it commit.
#[test]
fn a_fenced_write_fails_alone_in_its_batch() {
    let pg = Pg::new();
    let mut a = node(&pg, "a", 60_000);
    let ids = insert_all(&mut a, &[job("t", json(1)), job("t", json(2))]);
    let got = claim(&mut a, 2);
    assert_eq!(got.len(), 2);
    // As if ids[0]'s lease had expired and another node claimed it.
    let mut sql = pg.sql();
    sql.execute(
        "UPDATE jobs SET token = token + 1 WHERE id = $1",
        &[&(ids[0] as i64)],
    )
    .unwrap();
    let (first, second) = (ids[0], ids[1]);
    let (stale, fine) = block_on(async move {
        let handle = StoreHandle::spawn(a).unwrap();
        let done = || Finish::Succeeded { output: json(7) };
        // Queued back to back: normally one batch.
        let stale = handle.finish_job(first, 5, done(), Vec::new());
        let fine = handle.finish_job(second, 5, done(), Vec::new());
        let r = tokio::join!(stale, fine);
        handle.close().await;
        r
    });
    assert!(
        matches!(stale, Err(StoreError::Fenced { job, .. }) if job == ids[0]),
        "{stale:?}"
    );
    fine.unwrap();
    let mut check = pg.open();
    assert_eq!(check.get(ids[0]).unwrap().unwrap().state, JobState::Running);
    assert_eq!(
        check.get(ids[1]).unwrap().unwrap().state,
        JobState::Succeeded
    );
}

/// A listener whose connection dies connects again and says `Poll` (what
/// was sent meanwhile is lost: the consumer must read the store), then
/// hears notifications again.
#[test]
fn a_listener_reconnects_and_says_poll() {
    let pg = Pg::new();
    let mut c = pg.open();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let poll = std::time::Duration::from_secs(3_600);
    let listener = Listener::spawn(&pg.url, c.channel(), poll, tx).unwrap();
    let mut recv = || {
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(60), rx.recv())
                .await
                .expect("a wake-up")
                .expect("the listener runs")
        })
    };
    let id = insert(&mut c, &job("t", json(1)));
    assert_eq!(recv(), Wake::Submit(vec![id]));
    let mut admin = pg.sql();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = current_setting('application_name') \
             AND pid <> pg_backend_pid()",
            &[],
        )
        .unwrap();
    // No poll interval passes (an hour): this Poll is the reconnect's.
    assert_eq!(recv(), Wake::Poll);
    // The store's own connection died too: a transaction connects again
    // at its BEGIN, so it does not fail.
    let again = insert(&mut c, &job("t", json(2)));
    assert_eq!(recv(), Wake::Submit(vec![again]));
    listener.stop();
}

/// Retention: one node prunes at a time; another that tries meanwhile
/// skips (and deletes nothing), and prunes later.
#[test]
fn one_node_prunes_at_a_time() {
    let pg = Pg::new();
    let mut a = pg.open();
    let mut b = pg.open();
    let ids = insert_all(
        &mut a,
        &(0..4).map(|n| job("t", json(n))).collect::<Vec<_>>(),
    );
    in_tx(&mut a, |s| {
        for &id in &ids {
            s.finish_job(id, 5, &Finish::Failed { error: "e".into() })
                .unwrap();
        }
    });
    a.begin().unwrap();
    assert_eq!(a.prune(0, 2).unwrap(), 2, "a prunes all but the newest two");
    // a's transaction (and its lock) is still open: b skips at once. (Were
    // b to prune anyway, it would wait on a's rows: seen, a commits, and b
    // reports what it deleted.)
    let mut watch = pg.sql();
    let skipped = std::thread::scope(|s| {
        let b = &mut b;
        let pruner = s.spawn(move || in_tx(b, |s| s.prune(u64::MAX, 0).unwrap()));
        while !pruner.is_finished() {
            let waiting: i64 = watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                     AND application_name = current_setting('application_name')",
                    &[],
                )
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            std::thread::yield_now();
        }
        a.commit().unwrap();
        pruner.join().unwrap()
    });
    assert_eq!(skipped, 0, "b skips while a prunes");
    assert_eq!(in_tx(&mut b, |s| s.prune(u64::MAX, 0).unwrap()), 2);
    assert!(b.counts().unwrap().is_empty());
}
