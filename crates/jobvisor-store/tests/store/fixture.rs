//! A database file written by an older jobvisor (`tests/data/v4-jobs.db`,
//! schema version 4, see `tests/data/README.md`) opens with this one and
//! reads back field for field: the schema migrations keep every job.

use std::path::PathBuf;

use jobvisor_proto::control::{
    Attempt, AttemptOutcome, InputRef, JobRecord, JobRef, JobState, Payload,
};
use jobvisor_store::{JobStore, SqliteStore, StoreError, SCHEMA_VERSION};

/// A copy of the fixture in a fresh directory (opening migrates the file,
/// and the fixture must stay as it was written).
fn copy_of_v4() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v4-jobs.db");
    std::fs::copy(fixture, &path).unwrap();
    (dir, path)
}

fn record(id: u64, task: &str, input: Payload, created_ms: u64) -> JobRecord {
    JobRecord {
        id,
        task: task.into(),
        queue: "default".into(),
        priority: 0,
        state: JobState::Queued,
        max_attempts: 3,
        // Stored before budgets per job: the daemon's default applies.
        max_crashes: None,
        budget_from: 1,
        epoch: 0,
        timeout_ms: None,
        stall_timeout_ms: None,
        input_from: Vec::new(),
        backoff_base_ms: 100,
        backoff_max_ms: 10_000,
        after: Vec::new(),
        key: None,
        created_ms,
        run_at_ms: created_ms,
        finished_ms: None,
        input: Some(input),
        output: None,
        error: None,
        attempts: Vec::new(),
        notify_url: None,
    }
}

fn attempt(number: u32, pid: u32, started_ms: u64, outcome: AttemptOutcome) -> Attempt {
    Attempt {
        number,
        worker_pid: Some(pid),
        started_ms,
        finished_ms: Some(started_ms + 50),
        outcome,
    }
}

/// What the old build wrote into the fixture (and read back from it).
fn v4_jobs() -> Vec<JobRecord> {
    let mut hash = record(
        1,
        "hash",
        Payload::Json("{\"path\":\"/etc/hostname\"}".into()),
        1_000,
    );
    hash.queue = "io".into();
    hash.priority = 5;
    hash.state = JobState::Succeeded;
    hash.max_attempts = 5;
    hash.timeout_ms = Some(30_000);
    hash.stall_timeout_ms = Some(2_000);
    hash.key = Some("fixture-1".into());
    hash.run_at_ms = 1_900;
    hash.finished_ms = Some(2_050);
    hash.output = Some(Payload::Json("{\"sha256\":\"abc\"}".into()));
    hash.notify_url = Some("https://hooks.example/jobs?x=1".into());
    hash.attempts = vec![
        attempt(1, 101, 1_200, AttemptOutcome::Error("boom".into())),
        attempt(
            2,
            102,
            1_400,
            AttemptOutcome::Panic("index out of bounds".into()),
        ),
        attempt(
            3,
            103,
            1_600,
            AttemptOutcome::Crashed {
                code: Some(137),
                signal: Some(9),
                max_rss_kib: 123_456,
                stderr_tail: vec!["line 1".into(), "line 2 ✓".into()],
                cause: Some("memory limit exceeded".into()),
            },
        ),
        attempt(
            4,
            104,
            1_800,
            AttemptOutcome::TimedOut("SIGTERM then SIGKILL".into()),
        ),
        attempt(5, 105, 2_000, AttemptOutcome::Ok),
    ];

    let mut compress = record(2, "compress", Payload::Native(vec![0, 1, 2, 255]), 2_000);
    compress.state = JobState::Cancelled;
    compress.input_from = vec![
        InputRef {
            job: JobRef::Id(1),
            pointer: Some("/sha256".into()),
            field: Some("digest".into()),
        },
        InputRef {
            job: JobRef::Id(1),
            pointer: None,
            field: None,
        },
    ];
    compress.after = vec![1];
    compress.run_at_ms = 2_400;
    compress.finished_ms = Some(2_550);
    compress.error = Some("cancelled by user".into());
    compress.attempts = vec![
        attempt(
            1,
            202,
            2_100,
            AttemptOutcome::Crashed {
                code: None,
                signal: None,
                max_rss_kib: 0,
                stderr_tail: Vec::new(),
                cause: None,
            },
        ),
        attempt(2, 203, 2_500, AttemptOutcome::Cancelled),
    ];

    let mut notify = record(3, "notify", Payload::Json("{}".into()), 3_000);
    notify.state = JobState::Running;
    notify.input_from = vec![InputRef {
        job: JobRef::Id(2),
        pointer: None,
        field: Some("archive".into()),
    }];
    notify.after = vec![2];
    notify.attempts = vec![Attempt {
        finished_ms: None,
        ..attempt(1, 301, 3_100, AttemptOutcome::Running)
    }];

    let mut sleep = record(4, "sleep", Payload::Json("{\"ms\":10}".into()), 4_000);
    sleep.state = JobState::Dead;
    sleep.finished_ms = Some(4_250);
    sleep.error = Some("killed 1 worker".into());
    sleep.attempts = vec![
        attempt(1, 401, 4_100, AttemptOutcome::Lost),
        attempt(
            2,
            402,
            4_200,
            AttemptOutcome::Crashed {
                code: Some(1),
                signal: None,
                max_rss_kib: 2_048,
                stderr_tail: vec!["oops".into()],
                cause: None,
            },
        ),
    ];

    let spin = record(5, "spin", Payload::Json("1".into()), 5_000);
    vec![hash, compress, notify, sleep, spin]
}

#[test]
fn a_version_4_file_reads_back_every_field() {
    let (_dir, path) = copy_of_v4();
    let mut store = SqliteStore::open(&path).unwrap();
    for want in v4_jobs() {
        let got = store.get(want.id).unwrap();
        assert_eq!(got.as_ref(), Some(&want), "job {}", want.id);
    }
    assert!(store.get(6).unwrap().is_none());
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION, "opening migrates the file");
}

/// After the migration the rows hold JSON text that plain SQL can query,
/// and no codec blob is left.
#[test]
fn the_migrated_file_holds_json_that_sql_can_read() {
    let (_dir, path) = copy_of_v4();
    drop(SqliteStore::open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let not_json: u32 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM attempts \
                     WHERE typeof(outcome) != 'text' OR NOT json_valid(outcome)) \
                  + (SELECT count(*) FROM jobs WHERE input_from IS NOT NULL \
                     AND (typeof(input_from) != 'text' OR NOT json_valid(input_from)))",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(not_json, 0);
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let dangling = conn
        .prepare("PRAGMA foreign_key_check")
        .unwrap()
        .query_map([], |_| Ok(()))
        .unwrap()
        .count();
    assert_eq!(
        dangling, 0,
        "the rebuilt attempts table keeps its references"
    );
    let crashes: Vec<(u64, u32, Option<i32>, u64)> = conn
        .prepare(
            "SELECT job_id, number, json_extract(outcome, '$.signal'), \
             json_extract(outcome, '$.max_rss_kib') FROM attempts \
             WHERE json_extract(outcome, '$.kind') = 'crashed' ORDER BY job_id, number",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        crashes,
        [
            (1, 3, Some(9), 123_456),
            (2, 1, None, 0),
            (4, 2, None, 2_048)
        ]
    );
    let (pointer, second): (String, Option<String>) = conn
        .query_row(
            "SELECT input_from ->> '$[0].pointer', input_from ->> '$[1].pointer' \
             FROM jobs WHERE id = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((pointer.as_str(), second), ("/sha256", None));
    let declared: Vec<(String, String)> = conn
        .prepare(
            "SELECT 'attempts', type FROM pragma_table_info('attempts') WHERE name = 'outcome' \
             UNION ALL SELECT 'jobs', type FROM pragma_table_info('jobs') WHERE name = 'input_from'",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        declared,
        [
            ("attempts".into(), "TEXT".into()),
            ("jobs".into(), "TEXT".into())
        ]
    );
}

/// A blob the migration cannot read stops it: the file keeps its version
/// and every row as it was, and opening it is an error.
#[test]
fn an_unreadable_blob_fails_the_migration_and_changes_nothing() {
    let (_dir, path) = copy_of_v4();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE attempts SET outcome = x'ffff' WHERE job_id = 4 AND number = 2",
        [],
    )
    .unwrap();
    drop(conn);
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, StoreError::Db(_)), "{err:?}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 4);
    let blobs: u32 = conn
        .query_row(
            "SELECT count(*) FROM attempts WHERE typeof(outcome) = 'blob'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(blobs, 10, "every attempt keeps its blob");
}
