//! The embedded SQLite backend.
//!
//! One file, WAL journal, `synchronous=FULL` (a commit is fsynced before it
//! returns), foreign keys on. The schema is versioned with `PRAGMA
//! user_version` and brought up to date by [`MIGRATIONS`] when the file is
//! opened.
//!
//! Payloads are stored as a kind (`0` JSON, `1` native) and the bytes: JSON as
//! TEXT (readable with the `sqlite3` shell and its JSON functions), native
//! bytes as a BLOB. Attempt outcomes are BLOBs in the codec's encoding.

use std::path::Path;
use std::time::Duration;

use jobvisor_proto::codec;
use jobvisor_proto::control::{
    Attempt, AttemptOutcome, JobRecord, JobRef, JobState, Payload, Submitted,
};
use rusqlite::types::{ToSqlOutput, Type, ValueRef};
use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Row, ToSql};

use crate::store::{Finish, JobStore, NewJob, StoreError};

/// The schema, one entry per version: entry `i` takes a database from
/// `user_version` `i` to `i + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // v1
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
    // v2: per-job stall timeout (watchdog).
    "ALTER TABLE jobs ADD COLUMN stall_timeout_ms INTEGER;",
    // v3: pipeline inputs (codec-encoded Vec<InputRef>, resolved to job ids).
    "ALTER TABLE jobs ADD COLUMN input_from BLOB;",
    // v4: per-job completion webhook (NULL: none).
    "ALTER TABLE jobs ADD COLUMN notify_url TEXT;",
];

/// The schema version this build writes (and the newest it can read).
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Rows per multi-row `INSERT` of plain jobs, largest first. A run of plain
/// jobs is written with as few statements as these sizes allow; each size is
/// one prepared (cached) statement.
const INSERT_ROWS: [usize; 3] = [32, 8, 1];

/// The columns a plain job sets (see [`SqliteStore::insert_plain`]), in the
/// order of its parameters; `state` is the literal `'queued'`.
const PLAIN_COLS: &str = "task, queue, priority, state, max_attempts, backoff_base_ms, \
     backoff_max_ms, timeout_ms, run_at_ms, created_ms, input_kind, input, stall_timeout_ms, \
     notify_url";
const PLAIN_ROW: &str = "(?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const KIND_JSON: i64 = 0;
const KIND_NATIVE: i64 = 1;

/// Columns read into a [`JobRecord`], in the order [`job_from_row`] expects.
macro_rules! job_cols {
    () => {
        "id, task, queue, priority, state, max_attempts, timeout_ms, key, created_ms, \
         run_at_ms, finished_ms, error, backoff_base_ms, backoff_max_ms, stall_timeout_ms, input_from, \
         notify_url"
    };
}

const SELECT_JOB: &str = concat!(
    "SELECT ",
    job_cols!(),
    ", input_kind, input, output_kind, output FROM jobs WHERE id = ?1"
);
const SELECT_LIVE: &str = concat!(
    "SELECT ",
    job_cols!(),
    ", input_kind, input, NULL, NULL FROM jobs \
     WHERE state IN ('queued', 'running', 'retrying') ORDER BY id"
);
const LIST_ALL: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs ORDER BY id DESC LIMIT ?3"
);
const LIST_STATE: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state = ?1 ORDER BY id DESC LIMIT ?3"
);
const LIST_QUEUE: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE queue = ?2 ORDER BY id DESC LIMIT ?3"
);
const LIST_BOTH: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state = ?1 AND queue = ?2 ORDER BY id DESC LIMIT ?3"
);

const TERMINAL: &str = "('succeeded', 'failed', 'cancelled', 'dead')";

/// The error of an internal step: SQLite's (mapped with the connection at
/// hand, to tell a full disk) or already the store's.
enum Error {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sql(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

/// The columns a [`Finish`] sets (`error` only when `set_error`).
struct JobUpdate<'a> {
    finished_ms: Option<u64>,
    run_at_ms: Option<u64>,
    output_kind: Option<i64>,
    output: Option<ToSqlOutput<'a>>,
    set_error: bool,
    error: Option<&'a str>,
}

/// The SQLite [`JobStore`]: one connection, used by one thread.
pub struct SqliteStore {
    conn: Connection,
    /// The multi-row `INSERT` of each size in [`INSERT_ROWS`].
    plain_inserts: [(usize, String); INSERT_ROWS.len()],
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.conn.path())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, sets WAL,
    /// `synchronous=FULL`, foreign keys and a busy timeout, and migrates the
    /// schema to [`SCHEMA_VERSION`].
    ///
    /// # Errors
    /// [`StoreError::TooNew`] when the file's schema is newer than this
    /// build's; [`StoreError::Db`] when the file cannot be opened, is not a
    /// database, or cannot be put in WAL mode.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Db(format!("cannot open {}: {e}", path.display())))?;
        let store = SqliteStore {
            conn,
            plain_inserts: INSERT_ROWS.map(|rows| (rows, plain_insert_sql(rows))),
        };
        let setup = store.setup();
        store.wrap(setup)?;
        Ok(store)
    }

    /// Caps the database at `pages` pages for this connection (`PRAGMA
    /// max_page_count`; SQLite never sets it below the current size) and
    /// returns the cap in force. A write that needs more fails with
    /// [`StoreError::Full`], exactly as on a full disk: an operations knob
    /// (bound the file's size) and the way tests simulate a full disk.
    ///
    /// # Errors
    /// Database errors.
    pub fn set_max_page_count(&mut self, pages: u64) -> Result<u64, StoreError> {
        let r = self
            .conn
            .pragma_update_and_check(None, "max_page_count", pages, |row| row.get::<_, u64>(0));
        self.wrap(r.map_err(Error::from))
    }

    fn setup(&self) -> Result<(), Error> {
        self.conn.busy_timeout(BUSY_TIMEOUT)?;
        self.conn.set_prepared_statement_cache_capacity(64);
        // Refuse a newer schema before changing anything in the file.
        check_version(self.user_version()?)?;
        let mode: String =
            self.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Db(format!("cannot use WAL (journal_mode is {mode})")).into());
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        // Every operation runs in a savepoint; keep SQLite's temporary
        // structures for that in memory, not in temp files (a write each).
        self.conn.pragma_update(None, "temp_store", "MEMORY")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        self.migrate()
    }

    fn user_version(&self) -> Result<i64, Error> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?)
    }

    /// Applies the missing migrations in one transaction (so two processes
    /// opening the same new file cannot both apply them).
    fn migrate(&self) -> Result<(), Error> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let found = self.user_version()?;
            check_version(found)?;
            let from = usize::try_from(found).unwrap_or(0);
            if from == MIGRATIONS.len() {
                return Ok(false);
            }
            for sql in &MIGRATIONS[from..] {
                self.conn.execute_batch(sql)?;
            }
            self.conn
                .pragma_update(None, "user_version", SCHEMA_VERSION)?;
            Ok(true)
        })();
        match result {
            Ok(_) => {
                if let Err(e) = self.conn.execute_batch("COMMIT") {
                    self.rollback_quietly();
                    return Err(e.into());
                }
                Ok(())
            }
            Err(e) => {
                self.rollback_quietly();
                Err(e)
            }
        }
    }

    fn rollback_quietly(&self) {
        if !self.conn.is_autocommit() {
            // Best effort: the error that got us here is the one to report.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Maps an internal error to the store's: `SQLITE_FULL`, and an I/O error
    /// whose system call failed with `ENOSPC` or `EDQUOT`, are
    /// [`StoreError::Full`].
    fn map(&self, e: Error) -> StoreError {
        let e = match e {
            Error::Store(e) => return e,
            Error::Sql(e) => e,
        };
        if let rusqlite::Error::SqliteFailure(failure, _) = &e {
            match failure.code {
                ErrorCode::DiskFull => return StoreError::Full(e.to_string()),
                ErrorCode::SystemIoFailure => {
                    // SAFETY: the handle is this open connection's, used on
                    // this thread only; sqlite3_system_errno only reads the
                    // errno SQLite saved for it.
                    let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(self.conn.handle()) };
                    if errno == libc::ENOSPC || errno == libc::EDQUOT {
                        return StoreError::Full(format!("{e} (errno {errno})"));
                    }
                }
                _ => {}
            }
        }
        StoreError::Db(e.to_string())
    }

    fn wrap<T>(&self, r: Result<T, Error>) -> Result<T, StoreError> {
        r.map_err(|e| self.map(e))
    }

    fn exec(&self, sql: &str) -> Result<(), Error> {
        self.conn.prepare_cached(sql)?.execute([])?;
        Ok(())
    }

    fn insert_inner(&self, job: &NewJob) -> Result<Submitted, Error> {
        if let Some(key) = &job.key {
            let existing: Option<u64> = self
                .conn
                .prepare_cached("SELECT id FROM jobs WHERE key = ?1")?
                .query_row([key], |row| row.get(0))
                .optional()?;
            if let Some(id) = existing {
                return Ok(Submitted {
                    id,
                    duplicate: true,
                });
            }
        }
        // Dependencies must exist (checked before anything is written).
        {
            let mut exists = self
                .conn
                .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?;
            for &dep in &job.after {
                if !exists.exists([dep])? {
                    return Err(StoreError::NotFound(dep).into());
                }
            }
        }
        let (input_kind, input) = payload_to_sql(&job.input);
        let input_from = if job.input_from.is_empty() {
            None
        } else {
            if job
                .input_from
                .iter()
                .any(|r| matches!(r.job, JobRef::Batch(_)))
            {
                return Err(StoreError::Db(
                    "input_from names a batch position; resolve it first".into(),
                )
                .into());
            }
            Some(
                codec::encode(&job.input_from)
                    .map_err(|e| StoreError::Db(format!("cannot encode input_from: {e}")))?,
            )
        };
        self.conn
            .prepare_cached(
                "INSERT INTO jobs (task, queue, priority, state, max_attempts, backoff_base_ms, \
                 backoff_max_ms, timeout_ms, run_at_ms, created_ms, key, input_kind, input, \
                 stall_timeout_ms, input_from, notify_url) \
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?
            .execute(params![
                job.task,
                job.queue,
                job.priority,
                job.max_attempts,
                job.backoff_base_ms,
                job.backoff_max_ms,
                job.timeout_ms,
                job.run_at_ms,
                job.created_ms,
                job.key,
                input_kind,
                input,
                job.stall_timeout_ms,
                input_from,
                job.notify_url,
            ])?;
        let id = u64::try_from(self.conn.last_insert_rowid())
            .map_err(|_| StoreError::Db("negative job id".into()))?;
        if !job.after.is_empty() {
            let mut dep = self
                .conn
                .prepare_cached("INSERT OR IGNORE INTO deps (job_id, dep_id) VALUES (?1, ?2)")?;
            for &d in &job.after {
                dep.execute(params![id, d])?;
            }
        }
        Ok(Submitted {
            id,
            duplicate: false,
        })
    }

    /// [`JobStore::insert_many`]: runs of plain jobs (no key, dependencies or
    /// pipeline inputs: nothing to look up first) go in with multi-row
    /// `INSERT`s; the others one by one.
    fn insert_many_inner(&self, jobs: &[NewJob]) -> Result<Vec<Submitted>, Error> {
        let mut out = Vec::with_capacity(jobs.len());
        let mut rest = jobs;
        while let Some(first) = rest.first() {
            if !is_plain(first) {
                out.push(self.insert_inner(first)?);
                rest = &rest[1..];
                continue;
            }
            let run = rest.iter().take_while(|j| is_plain(j)).count();
            let mut left = &rest[..run];
            while !left.is_empty() {
                let (rows, sql) = self
                    .plain_inserts
                    .iter()
                    .find(|(rows, _)| *rows <= left.len())
                    .ok_or_else(|| StoreError::Db("INSERT_ROWS must end with 1".into()))?;
                let (chunk, tail) = left.split_at(*rows);
                self.insert_plain(sql, chunk, &mut out)?;
                left = tail;
            }
            rest = &rest[run..];
        }
        Ok(out)
    }

    /// Inserts plain jobs with `sql`, the statement for that many rows, and
    /// appends their ids to `out`.
    fn insert_plain(
        &self,
        sql: &str,
        jobs: &[NewJob],
        out: &mut Vec<Submitted>,
    ) -> Result<(), Error> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut idx = 0;
        for job in jobs {
            let (input_kind, input) = payload_to_sql(&job.input);
            // In the order of PLAIN_COLS.
            let row: [&dyn ToSql; 13] = [
                &job.task,
                &job.queue,
                &job.priority,
                &job.max_attempts,
                &job.backoff_base_ms,
                &job.backoff_max_ms,
                &job.timeout_ms,
                &job.run_at_ms,
                &job.created_ms,
                &input_kind,
                &input,
                &job.stall_timeout_ms,
                &job.notify_url,
            ];
            for value in row {
                idx += 1;
                stmt.raw_bind_parameter(idx, value)?;
            }
        }
        let inserted = stmt.raw_execute()?;
        drop(stmt);
        if inserted != jobs.len() {
            return Err(
                StoreError::Db(format!("inserted {inserted} of {} jobs", jobs.len())).into(),
            );
        }
        // AUTOINCREMENT gives each row the next id (one more than the largest
        // ever used), so the rows of one statement have the ids up to the
        // last one, in order.
        let last = u64::try_from(self.conn.last_insert_rowid())
            .map_err(|_| StoreError::Db("negative job id".into()))?;
        let first = last + 1 - jobs.len() as u64;
        out.extend((first..=last).map(|id| Submitted {
            id,
            duplicate: false,
        }));
        Ok(())
    }

    fn start_attempt_inner(
        &self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        at_ms: u64,
    ) -> Result<(), Error> {
        let changed = self
            .conn
            .prepare_cached("UPDATE jobs SET state = 'running' WHERE id = ?1")?
            .execute([id])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id).into());
        }
        let running = encode_outcome(&AttemptOutcome::Running)?;
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (job_id, number, worker_pid, started_ms, finished_ms, outcome) \
                 VALUES (?1, ?2, ?3, ?4, NULL, ?5) \
                 ON CONFLICT (job_id, number) DO UPDATE SET worker_pid = excluded.worker_pid, \
                 started_ms = excluded.started_ms, finished_ms = NULL, outcome = excluded.outcome",
            )?
            .execute(params![id, number, worker_pid, at_ms, running])?;
        Ok(())
    }

    fn finish_attempt_inner(
        &self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), Error> {
        let outcome = encode_outcome(outcome)?;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE attempts SET finished_ms = ?3, outcome = ?4, \
                 worker_pid = COALESCE(?5, worker_pid) WHERE job_id = ?1 AND number = ?2",
            )?
            .execute(params![id, number, at_ms, outcome, worker_pid])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id).into());
        }
        self.apply_finish(id, at_ms, next)
    }

    #[allow(clippy::too_many_arguments)]
    fn start_and_finish_attempt_inner(
        &self,
        id: u64,
        number: u32,
        started_ms: u64,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), Error> {
        // The job first: a missing one is `NotFound`, as for start_attempt,
        // before anything is written.
        self.apply_finish(id, at_ms, next)?;
        let outcome = encode_outcome(outcome)?;
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (job_id, number, worker_pid, started_ms, finished_ms, outcome) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (job_id, number) DO UPDATE SET worker_pid = excluded.worker_pid, \
                 started_ms = excluded.started_ms, finished_ms = excluded.finished_ms, \
                 outcome = excluded.outcome",
            )?
            .execute(params![id, number, worker_pid, started_ms, at_ms, outcome])?;
        Ok(())
    }

    fn apply_finish(&self, id: u64, at_ms: u64, next: &Finish) -> Result<(), Error> {
        let state = next.state().as_str();
        let mut update = JobUpdate {
            finished_ms: None,
            run_at_ms: None,
            output_kind: None,
            output: None,
            set_error: true,
            error: None,
        };
        match next {
            Finish::Retry { run_at_ms, error } => {
                update.run_at_ms = Some(*run_at_ms);
                update.error = Some(error);
            }
            Finish::Requeue => update.set_error = false,
            Finish::Succeeded { output } => {
                let (kind, bytes) = payload_to_sql(output);
                update.finished_ms = Some(at_ms);
                update.output_kind = Some(kind);
                update.output = Some(bytes);
            }
            Finish::Failed { error } | Finish::Cancelled { error } | Finish::Dead { error } => {
                update.finished_ms = Some(at_ms);
                update.error = Some(error);
            }
        }
        let JobUpdate {
            finished_ms,
            run_at_ms,
            output_kind,
            output,
            set_error,
            error,
        } = update;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET state = ?2, finished_ms = ?3, run_at_ms = COALESCE(?4, run_at_ms), \
                 output_kind = ?5, output = ?6, error = CASE WHEN ?7 THEN ?8 ELSE error END \
                 WHERE id = ?1",
            )?
            .execute(params![
                id,
                state,
                finished_ms,
                run_at_ms,
                output_kind,
                output,
                set_error,
                error
            ])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id).into());
        }
        Ok(())
    }

    fn get_inner(&self, id: u64) -> Result<Option<JobRecord>, Error> {
        let job = self
            .conn
            .prepare_cached(SELECT_JOB)?
            .query_row([id], |row| job_from_row(row, true))
            .optional()?;
        match job {
            Some(mut job) => {
                self.fill(&mut job)?;
                Ok(Some(job))
            }
            None => Ok(None),
        }
    }

    /// Reads a job's dependencies and attempts into it.
    fn fill(&self, job: &mut JobRecord) -> Result<(), Error> {
        job.after = self
            .conn
            .prepare_cached("SELECT dep_id FROM deps WHERE job_id = ?1 ORDER BY rowid")?
            .query_map([job.id], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        job.attempts = self
            .conn
            .prepare_cached(
                "SELECT number, worker_pid, started_ms, finished_ms, outcome FROM attempts \
                 WHERE job_id = ?1 ORDER BY number",
            )?
            .query_map([job.id], attempt_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn list_inner(
        &self,
        state: Option<JobState>,
        queue: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, Error> {
        let sql = match (state.is_some(), queue.is_some()) {
            (false, false) => LIST_ALL,
            (true, false) => LIST_STATE,
            (false, true) => LIST_QUEUE,
            (true, true) => LIST_BOTH,
        };
        let mut stmt = self.conn.prepare_cached(sql)?;
        // Unused parameters are bound anyway (as NULL); SQLite allows it.
        let mut jobs = stmt
            .query_map(params![state.map(JobState::as_str), queue, limit], |row| {
                job_from_row(row, false)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        for job in &mut jobs {
            self.fill(job)?;
        }
        Ok(jobs)
    }

    fn recover_inner(&self, now_ms: u64) -> Result<Vec<JobRecord>, Error> {
        let lost = encode_outcome(&AttemptOutcome::Lost)?;
        self.conn.execute(
            "UPDATE attempts SET finished_ms = ?1, outcome = ?2 WHERE finished_ms IS NULL",
            params![now_ms, lost],
        )?;
        // A lost attempt is not charged to either budget (the job did not
        // fail: the daemon died), so every job that was running runs again.
        self.conn.execute(
            "UPDATE jobs SET state = 'queued' WHERE state = 'running'",
            [],
        )?;
        let mut stmt = self.conn.prepare_cached(SELECT_LIVE)?;
        let mut jobs = stmt
            .query_map([], |row| job_from_row(row, true))?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        for job in &mut jobs {
            self.fill(job)?;
        }
        Ok(jobs)
    }

    fn prune_inner(&self, finished_before_ms: u64, keep: u64) -> Result<u64, Error> {
        // SQLite integers are i64: anything larger means "no limit".
        let finished_before_ms = i64::try_from(finished_before_ms).unwrap_or(i64::MAX);
        let by_age = self.conn.execute(
            &format!("DELETE FROM jobs WHERE state IN {TERMINAL} AND finished_ms < ?1"),
            [finished_before_ms],
        )?;
        let keep = i64::try_from(keep).unwrap_or(i64::MAX);
        let by_count = self.conn.execute(
            &format!(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN {TERMINAL} \
                 ORDER BY finished_ms DESC, id DESC LIMIT -1 OFFSET ?1)"
            ),
            [keep],
        )?;
        Ok((by_age + by_count) as u64)
    }

    fn counts_inner(&self) -> Result<Vec<(JobState, u64)>, Error> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let mut counts = stmt
            .query_map([], |row| {
                Ok((state_from_row(row, 0)?, row.get::<_, u64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        counts.sort_by_key(|(state, _)| *state as u8);
        Ok(counts)
    }
}

impl JobStore for SqliteStore {
    fn begin(&mut self) -> Result<(), StoreError> {
        let r = self.exec("BEGIN IMMEDIATE");
        self.wrap(r)
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let r = self.exec("COMMIT");
        if r.is_err() {
            let err = self.wrap(r);
            self.rollback_quietly();
            return err;
        }
        Ok(())
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        if self.conn.is_autocommit() {
            // SQLite already rolled it back (after a full disk, for instance).
            return Ok(());
        }
        let r = self.exec("ROLLBACK");
        self.wrap(r)
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        let r = self.exec("SAVEPOINT s");
        self.wrap(r)
    }

    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        let r = self.exec("RELEASE s");
        self.wrap(r)
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        let r = self
            .exec("ROLLBACK TO s")
            .and_then(|()| self.exec("RELEASE s"));
        self.wrap(r)
    }

    fn insert(&mut self, job: &NewJob) -> Result<Submitted, StoreError> {
        let r = self.insert_inner(job);
        self.wrap(r)
    }

    fn insert_many(&mut self, jobs: &[NewJob]) -> Result<Vec<Submitted>, StoreError> {
        let r = self.insert_many_inner(jobs);
        self.wrap(r)
    }

    fn start_attempt(
        &mut self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let r = self.start_attempt_inner(id, number, worker_pid, at_ms);
        self.wrap(r)
    }

    fn finish_attempt(
        &mut self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), StoreError> {
        let r = self.finish_attempt_inner(id, number, worker_pid, outcome, at_ms, next);
        self.wrap(r)
    }

    fn start_and_finish_attempt(
        &mut self,
        id: u64,
        number: u32,
        started_ms: u64,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), StoreError> {
        let r = self.start_and_finish_attempt_inner(
            id, number, started_ms, worker_pid, outcome, at_ms, next,
        );
        self.wrap(r)
    }

    fn finish_job(&mut self, id: u64, at_ms: u64, next: &Finish) -> Result<(), StoreError> {
        let r = self.apply_finish(id, at_ms, next);
        self.wrap(r)
    }

    fn get(&mut self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        let r = self.get_inner(id);
        self.wrap(r)
    }

    fn list(
        &mut self,
        state: Option<JobState>,
        queue: Option<&str>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let r = self.list_inner(state, queue, limit);
        self.wrap(r)
    }

    fn recover(&mut self, now_ms: u64) -> Result<Vec<JobRecord>, StoreError> {
        let r = self.recover_inner(now_ms);
        self.wrap(r)
    }

    fn prune(&mut self, finished_before_ms: u64, keep: u64) -> Result<u64, StoreError> {
        let r = self.prune_inner(finished_before_ms, keep);
        self.wrap(r)
    }

    fn counts(&mut self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let r = self.counts_inner();
        self.wrap(r)
    }
}

/// A job with nothing to look up or write besides its row.
fn is_plain(job: &NewJob) -> bool {
    job.key.is_none() && job.after.is_empty() && job.input_from.is_empty()
}

/// `INSERT` of `rows` plain jobs.
fn plain_insert_sql(rows: usize) -> String {
    let mut sql = format!("INSERT INTO jobs ({PLAIN_COLS}) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(PLAIN_ROW);
    }
    sql
}

fn check_version(found: i64) -> Result<(), StoreError> {
    if found < 0 {
        return Err(StoreError::Db(format!("invalid schema version {found}")));
    }
    if found > i64::from(SCHEMA_VERSION) {
        return Err(StoreError::TooNew {
            found: u32::try_from(found).unwrap_or(u32::MAX),
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn encode_outcome(outcome: &AttemptOutcome) -> Result<Vec<u8>, StoreError> {
    codec::encode(outcome)
        .map_err(|e| StoreError::Db(format!("cannot encode an attempt outcome: {e}")))
}

fn payload_to_sql(payload: &Payload) -> (i64, ToSqlOutput<'_>) {
    match payload {
        Payload::Json(text) => (
            KIND_JSON,
            ToSqlOutput::Borrowed(ValueRef::Text(text.as_bytes())),
        ),
        Payload::Native(bytes) => (KIND_NATIVE, ToSqlOutput::Borrowed(ValueRef::Blob(bytes))),
    }
}

fn conversion_error(idx: usize, ty: Type, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(idx, ty, msg.into())
}

/// A payload from its kind column `kind_idx` and its bytes at `kind_idx + 1`;
/// `None` when the kind is NULL.
fn payload_from_row(row: &Row<'_>, kind_idx: usize) -> rusqlite::Result<Option<Payload>> {
    let Some(kind) = row.get::<_, Option<i64>>(kind_idx)? else {
        return Ok(None);
    };
    let idx = kind_idx + 1;
    let bytes = match row.get_ref(idx)? {
        ValueRef::Text(b) | ValueRef::Blob(b) => b,
        other => {
            return Err(conversion_error(
                idx,
                other.data_type(),
                "payload is neither text nor blob".into(),
            ))
        }
    };
    match kind {
        KIND_JSON => String::from_utf8(bytes.to_vec())
            .map(|s| Some(Payload::Json(s)))
            .map_err(|e| {
                conversion_error(idx, Type::Text, format!("JSON payload is not UTF-8: {e}"))
            }),
        KIND_NATIVE => Ok(Some(Payload::Native(bytes.to_vec()))),
        other => Err(conversion_error(
            kind_idx,
            Type::Integer,
            format!("unknown payload kind {other}"),
        )),
    }
}

fn state_from_row(row: &Row<'_>, idx: usize) -> rusqlite::Result<JobState> {
    let text: String = row.get(idx)?;
    JobState::parse(&text)
        .ok_or_else(|| conversion_error(idx, Type::Text, format!("unknown job state {text:?}")))
}

/// A job from the columns of [`job_cols!`], then (when `payloads`) input kind,
/// input, output kind, output. Dependencies and attempts are left empty.
fn job_from_row(row: &Row<'_>, payloads: bool) -> rusqlite::Result<JobRecord> {
    let (input, output) = if payloads {
        (payload_from_row(row, 17)?, payload_from_row(row, 19)?)
    } else {
        (None, None)
    };
    Ok(JobRecord {
        id: row.get(0)?,
        task: row.get(1)?,
        queue: row.get(2)?,
        priority: row.get(3)?,
        state: state_from_row(row, 4)?,
        max_attempts: row.get(5)?,
        timeout_ms: row.get(6)?,
        after: Vec::new(),
        key: row.get(7)?,
        created_ms: row.get(8)?,
        run_at_ms: row.get(9)?,
        finished_ms: row.get(10)?,
        input,
        output,
        error: row.get(11)?,
        backoff_base_ms: row.get(12)?,
        backoff_max_ms: row.get(13)?,
        stall_timeout_ms: row.get(14)?,
        input_from: match row.get::<_, Option<Vec<u8>>>(15)? {
            None => Vec::new(),
            Some(blob) => codec::decode(&blob)
                .map_err(|e| conversion_error(15, Type::Blob, format!("bad input_from: {e}")))?,
        },
        attempts: Vec::new(),
        notify_url: row.get(16)?,
    })
}

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    let blob: Vec<u8> = row.get(4)?;
    let outcome = codec::decode(&blob)
        .map_err(|e| conversion_error(4, Type::Blob, format!("bad attempt outcome: {e}")))?;
    Ok(Attempt {
        number: row.get(0)?,
        worker_pid: row.get(1)?,
        started_ms: row.get(2)?,
        finished_ms: row.get(3)?,
        outcome,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_1_database_is_migrated_and_keeps_its_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
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
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, i64::from(SCHEMA_VERSION));
        let rec = store.get(1).unwrap().expect("the v1 job survives");
        assert_eq!(rec.task, "noop");
        assert_eq!(rec.input, Some(Payload::Json("5".into())));
        assert_eq!(rec.stall_timeout_ms, None);
        assert!(rec.input_from.is_empty());
        assert_eq!(rec.notify_url, None);
    }

    /// v3 → v4 adds the nullable `notify_url` column: an existing job reads
    /// back without one, and a new job keeps its URL.
    #[test]
    fn a_version_3_database_gets_notify_url() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..3] {
                conn.execute_batch(sql).unwrap();
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
        assert_eq!(SCHEMA_VERSION, 4);
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 4);
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
