//! The SQLite schema and its migrations.
//!
//! The schema is versioned with `PRAGMA user_version`; [`migrate`] brings a
//! file up to [`SCHEMA_VERSION`] when it is opened, and refuses one written by
//! a newer build before changing anything in it. Version 5 rewrote the
//! codec blobs of older files as JSON (see `v4_blobs`); version 6 added the
//! notification outbox; version 7 keeps each job's crash budget and the
//! epoch its budgets count from (so a `retry`'s fresh budget survives a
//! restart), and the epoch of each notification.

use rusqlite::Connection;

use crate::sql_error::{rollback_quietly, Error};
use crate::store::StoreError;
use crate::v4_blobs;

/// One step of the schema.
pub(crate) enum Migration {
    /// Statements only.
    Sql(&'static str),
    /// Statements and a rewrite of the rows already stored, in Rust.
    Code(fn(&Connection) -> Result<(), Error>),
}

impl Migration {
    /// Applies the step (inside the caller's transaction).
    pub(crate) fn apply(&self, conn: &Connection) -> Result<(), Error> {
        match self {
            Migration::Sql(sql) => Ok(conn.execute_batch(sql)?),
            Migration::Code(step) => step(conn),
        }
    }
}

/// The schema, one entry per version: entry `i` takes a database from
/// `user_version` `i` to `i + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[Migration] = &[
    // v1
    Migration::Sql(
        "CREATE TABLE jobs (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        task            TEXT    NOT NULL,
        queue           TEXT    NOT NULL,
        priority        INTEGER NOT NULL,
        state           TEXT    NOT NULL,
        max_attempts    INTEGER NOT NULL,
        backoff_base_ms INTEGER NOT NULL,
        backoff_max_ms  INTEGER NOT NULL,
        timeout_ms      INTEGER,
        run_at_ms       INTEGER NOT NULL,
        created_ms      INTEGER NOT NULL,
        finished_ms     INTEGER,
        key             TEXT UNIQUE,
        input_kind      INTEGER NOT NULL,
        input           BLOB    NOT NULL,
        output_kind     INTEGER,
        output          BLOB,
        error           TEXT
    );
    CREATE TABLE attempts (
        job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        number      INTEGER NOT NULL,
        worker_pid  INTEGER,
        started_ms  INTEGER NOT NULL,
        finished_ms INTEGER,
        outcome     BLOB    NOT NULL,
        PRIMARY KEY (job_id, number)
    ) WITHOUT ROWID;
    CREATE TABLE deps (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        dep_id INTEGER NOT NULL,
        PRIMARY KEY (job_id, dep_id)
    );
    CREATE INDEX jobs_state_finished ON jobs(state, finished_ms);
    CREATE INDEX jobs_queue ON jobs(queue);
    CREATE INDEX attempts_running ON attempts(job_id) WHERE finished_ms IS NULL;",
    ),
    // v2: per-job stall timeout (watchdog).
    Migration::Sql("ALTER TABLE jobs ADD COLUMN stall_timeout_ms INTEGER;"),
    // v3: pipeline inputs (codec-encoded Vec<InputRef>, resolved to job ids).
    Migration::Sql("ALTER TABLE jobs ADD COLUMN input_from BLOB;"),
    // v4: per-job completion webhook (NULL: none).
    Migration::Sql("ALTER TABLE jobs ADD COLUMN notify_url TEXT;"),
    // v5: attempt outcomes and pipeline inputs as JSON text, not codec blobs.
    Migration::Code(v4_blobs::to_v5),
    // v6: the outbox of completion notifications (see `outbox`). No foreign
    // key: a job pruned before its notification went out is logged, not
    // silently dropped with it.
    Migration::Sql(
        "CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id      INTEGER NOT NULL,
        state       TEXT    NOT NULL,
        target      TEXT    NOT NULL,
        attempts    INTEGER NOT NULL,
        next_at_ms  INTEGER NOT NULL,
        created_ms  INTEGER NOT NULL,
        last_error  TEXT
    );",
    ),
    // v7: budgets per job. `max_crashes` NULL: a job from before, under the
    // daemon's `jobs.max_crashes`; `budget_from`: the first attempt the
    // budgets count; `epoch`: retries by a client, also kept with each
    // notification (its delivery id names it).
    Migration::Sql(
        "ALTER TABLE jobs ADD COLUMN max_crashes INTEGER;
        ALTER TABLE jobs ADD COLUMN budget_from INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE outbox ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;",
    ),
];

/// The schema version this build writes (and the newest it can read).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The file's schema version (`PRAGMA user_version`).
pub(crate) fn user_version(conn: &Connection) -> Result<i64, Error> {
    Ok(conn.pragma_query_value(None, "user_version", |row| row.get(0))?)
}

/// Applies the missing migrations in one transaction (so two processes
/// opening the same new file cannot both apply them).
pub(crate) fn migrate(conn: &Connection) -> Result<(), Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let found = user_version(conn)?;
        check_version(found)?;
        let from = usize::try_from(found).unwrap_or(0);
        if from == MIGRATIONS.len() {
            return Ok(false);
        }
        for step in &MIGRATIONS[from..] {
            step.apply(conn)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(true)
    })();
    match result {
        Ok(_) => {
            if let Err(e) = conn.execute_batch("COMMIT") {
                rollback_quietly(conn);
                return Err(e.into());
            }
            Ok(())
        }
        Err(e) => {
            rollback_quietly(conn);
            Err(e)
        }
    }
}

/// Refuses a version this build cannot read: negative, or newer than
/// [`SCHEMA_VERSION`].
pub(crate) fn check_version(found: i64) -> Result<(), StoreError> {
    if found < 0 {
        return Err(StoreError::db(format!("invalid schema version {found}")));
    }
    if found > i64::from(SCHEMA_VERSION) {
        return Err(StoreError::TooNew {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{JobStore, NewJob};
    use crate::SqliteStore;
    use jobvisor_proto::control::{JobState, Payload};

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            MIGRATIONS[0].apply(&conn).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO jobs (task, queue, priority, state, max_attempts, backoff_base_ms, \
                 backoff_max_ms, run_at_ms, created_ms, input_kind, input) \
                 VALUES ('noop', 'default', 0, 'queued', 3, 10, 100, 1, 1, 0, '5')",
                [],
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let version = user_version(&Connection::open(&path).unwrap()).unwrap_or(-1);
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        let rec = store.get(1).unwrap().expect("the v1 job survives");
        assert_eq!(rec.task, "noop");
        assert_eq!(rec.input, Some(Payload::Json("5".into())));
        assert_eq!(rec.stall_timeout_ms, None);
        assert!(rec.input_from.is_empty());
        assert_eq!(rec.notify_url, None);
    }

    /// v3 → v4 adds the nullable `notify_url` column (and v5 changes nothing
    /// of it): an existing job reads
    /// back without one, and a new job keeps its URL.
    #[test]
    fn a_version_3_database_gets_notify_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let conn = Connection::open(&path).unwrap();
            for step in &MIGRATIONS[..3] {
                step.apply(&conn).unwrap();
            }
            conn.pragma_update(None, "user_version", 3).unwrap();
            conn.execute(
                "INSERT INTO jobs (task, queue, priority, state, max_attempts, backoff_base_ms, \
                 backoff_max_ms, run_at_ms, created_ms, input_kind, input, stall_timeout_ms) \
                 VALUES ('noop', 'default', 0, 'succeeded', 3, 10, 100, 1, 1, 0, '5', 70)",
                [],
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let version = user_version(&Connection::open(&path).unwrap()).unwrap_or(-1);
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        let old = store.get(1).unwrap().expect("the v3 job survives");
        assert_eq!(old.state, JobState::Succeeded);
        assert_eq!(old.stall_timeout_ms, Some(70));
        assert_eq!(old.notify_url, None);

        let url = "http://127.0.0.1:9/hook";
        store.begin().unwrap();
        let s = store
            .insert(&NewJob {
                task: "noop".into(),
                input: Payload::Json("1".into()),
                queue: "default".into(),
                priority: 0,
                max_attempts: 1,
                max_crashes: 1,
                backoff_base_ms: 10,
                backoff_max_ms: 100,
                timeout_ms: None,
                stall_timeout_ms: None,
                input_from: Vec::new(),
                run_at_ms: 1,
                created_ms: 1,
                after: Vec::new(),
                key: None,
                notify_url: Some(url.into()),
            })
            .unwrap();
        store.commit().unwrap();
        let new = store.get(s.id).unwrap().unwrap();
        assert_eq!(new.notify_url.as_deref(), Some(url));
        let live = store.recover(2).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(
            live[0].notify_url.as_deref(),
            Some(url),
            "recovery keeps it"
        );
    }

    /// v5 → v6 adds the empty outbox: the jobs are kept, and a delivery
    /// written with a job's state reads back.
    #[test]
    fn a_version_5_database_gets_an_empty_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        {
            let conn = Connection::open(&path).unwrap();
            for step in &MIGRATIONS[..5] {
                step.apply(&conn).unwrap();
            }
            conn.pragma_update(None, "user_version", 5).unwrap();
            conn.execute(
                "INSERT INTO jobs (task, queue, priority, state, max_attempts, backoff_base_ms, \
                 backoff_max_ms, run_at_ms, created_ms, input_kind, input) \
                 VALUES ('noop', 'default', 0, 'queued', 3, 10, 100, 1, 1, 0, '5')",
                [],
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let version = user_version(&Connection::open(&path).unwrap()).unwrap_or(-1);
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        assert_eq!(
            store.get(1).unwrap().expect("the v5 job survives").task,
            "noop"
        );
        assert!(store.deliveries_after(0, 10).unwrap().is_empty());
        store.begin().unwrap();
        let d = crate::store::NewDelivery {
            state: JobState::Succeeded,
            target: "{\"url\":\"http://127.0.0.1:9/\"}".into(),
        };
        store
            .add_deliveries(1, 7, std::slice::from_ref(&d))
            .unwrap();
        store.commit().unwrap();
        let rows = store.deliveries_after(0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].job_id, rows[0].state), (1, JobState::Succeeded));
        assert_eq!((rows[0].attempts, rows[0].next_at_ms), (0, 7));
        assert_eq!(rows[0].target, d.target);
    }

    /// v6 → v7 adds budgets per job: an existing job reads back with no
    /// crash budget of its own (the daemon's default applies) and its
    /// budgets counted from attempt 1 in epoch 0; a revive records both.
    #[test]
    fn a_version_6_database_gets_budgets_per_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v6.db");
        {
            let conn = Connection::open(&path).unwrap();
            for step in &MIGRATIONS[..6] {
                step.apply(&conn).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            conn.execute(
                "INSERT INTO jobs (task, queue, priority, state, max_attempts, backoff_base_ms, \
                 backoff_max_ms, run_at_ms, created_ms, input_kind, input) \
                 VALUES ('noop', 'default', 0, 'dead', 3, 10, 100, 1, 1, 0, '5')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO attempts (job_id, number, started_ms, finished_ms, outcome) \
                 VALUES (1, 1, 1, 2, '{\"kind\": \"lost\"}')",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO outbox (job_id, state, target, attempts, next_at_ms, created_ms) \
                 VALUES (1, 'dead', '{}', 1, 5, 2)",
                [],
            )
            .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let version = user_version(&Connection::open(&path).unwrap()).unwrap_or(-1);
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        let old = store.get(1).unwrap().expect("the v6 job survives");
        assert_eq!(old.state, JobState::Dead);
        assert_eq!((old.max_crashes, old.budget_from, old.epoch), (None, 1, 0));
        assert_eq!(old.attempts.len(), 1);

        store.begin().unwrap();
        let revive = crate::store::Finish::Revive {
            run_at_ms: 9,
            error: "retried by a client".into(),
            budget_from: 2,
            epoch: 1,
        };
        store.finish_job(1, 9, &revive).unwrap();
        store.commit().unwrap();
        let revived = store.get(1).unwrap().unwrap();
        assert_eq!(revived.state, JobState::Retrying);
        assert_eq!((revived.budget_from, revived.epoch), (2, 1));
        let live = store.recover(10).unwrap();
        assert_eq!(
            (live[0].budget_from, live[0].epoch),
            (2, 1),
            "a restart reads the revived budgets back"
        );

        // The v6 delivery is of epoch 0; one written now takes the job's.
        store.begin().unwrap();
        let d = crate::store::NewDelivery {
            state: JobState::Dead,
            target: "{}".into(),
        };
        store.add_deliveries(1, 11, &[d]).unwrap();
        store.commit().unwrap();
        let rows = store.deliveries_after(0, 10).unwrap();
        let epochs: Vec<_> = rows.iter().map(|r| (r.attempts, r.epoch)).collect();
        assert_eq!(epochs, [(1, 0), (0, 1)]);
    }

    #[test]
    fn migrations_match_the_version() {
        assert_eq!(SCHEMA_VERSION as usize, MIGRATIONS.len());
        assert!(!MIGRATIONS.is_empty());
    }

    #[test]
    fn version_check() {
        assert!(check_version(0).is_ok());
        assert!(check_version(i64::from(SCHEMA_VERSION)).is_ok());
        assert!(matches!(
            check_version(i64::from(SCHEMA_VERSION) + 1),
            Err(StoreError::TooNew { found, supported }) if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ));
        assert!(matches!(check_version(-1), Err(StoreError::Db(_))));
    }
}
