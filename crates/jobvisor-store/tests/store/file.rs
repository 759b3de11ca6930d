//! The database file: its schema version, the JSON its rows hold, what is not
//! a database, a full disk, and how errors carry their causes.

use super::*;

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
