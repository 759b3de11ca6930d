//! The embedded SQLite backend: [`SqliteStore`], its connection, and the
//! writes of attempts and job states.
//!
//! One file (mode 0600, never opened through a symlink), WAL journal, `synchronous=FULL` (a commit is fsynced before it
//! returns), foreign keys on. The schema and its migrations are in
//! `schema`, the row layout in `rows`, new jobs in `insert`, reads in
//! `query`.

use std::path::Path;
use std::time::Duration;

use jobvisor_proto::control::{AttemptOutcome, JobRecord, JobState, Submitted};
use rusqlite::types::ToSqlOutput;
use rusqlite::{params, Connection};

use crate::insert::{self, PlainInserts};
use crate::outbox;
use crate::query;
use crate::rows::{encode_outcome, payload_to_sql};
use crate::schema::{self, check_version};
use crate::sql_error::{rollback_quietly, to_store_error, Error};
use crate::store::{Delivery, Finish, JobStore, NewDelivery, NewJob, StoreError};

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The terminal states, as an SQL list (what pruning may delete).
const TERMINAL: &str = "('succeeded', 'failed', 'cancelled', 'dead')";

/// The columns a [`Finish`] sets (`error` only when `set_error`).
struct JobUpdate<'a> {
    finished_ms: Option<u64>,
    run_at_ms: Option<u64>,
    output_kind: Option<i64>,
    output: Option<ToSqlOutput<'a>>,
    set_error: bool,
    error: Option<&'a str>,
    /// A revived job's new `budget_from` and `epoch`.
    budget: Option<(u32, u32)>,
}

/// The SQLite [`JobStore`]: one connection, used by one thread.
pub struct SqliteStore {
    conn: Connection,
    /// The multi-row `INSERT`s of plain jobs.
    plain_inserts: PlainInserts,
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
    /// schema to [`SCHEMA_VERSION`](crate::SCHEMA_VERSION).
    ///
    /// # Errors
    /// [`StoreError::TooNew`] when the file's schema is newer than this
    /// build's; [`StoreError::Db`] when the file cannot be opened, is not a
    /// database, or cannot be put in WAL mode.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        create_private_file(path)
            .map_err(|e| StoreError::db_context(format!("cannot open {}", path.display()), e))?;
        // SQLite gives the `-wal` and `-shm` files the database's own mode,
        // so they are 0600 too; none of the three is opened through a symlink.
        let flags = rusqlite::OpenFlags::default() | rusqlite::OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(|e| StoreError::db_context(format!("cannot open {}", path.display()), e))?;
        let store = SqliteStore {
            conn,
            plain_inserts: PlainInserts::new(),
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
        check_version(schema::user_version(&self.conn)?)?;
        let mode: String =
            self.conn
                .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::db(format!("cannot use WAL (journal_mode is {mode})")).into());
        }
        self.conn.pragma_update(None, "synchronous", "FULL")?;
        // Every operation runs in a savepoint; keep SQLite's temporary
        // structures for that in memory, not in temp files (a write each).
        self.conn.pragma_update(None, "temp_store", "MEMORY")?;
        self.conn.pragma_update(None, "foreign_keys", "ON")?;
        schema::migrate(&self.conn)
    }

    /// Maps an internal error to the store's (see [`to_store_error`]).
    fn map(&self, e: Error) -> StoreError {
        to_store_error(&self.conn, e)
    }

    fn wrap<T>(&self, r: Result<T, Error>) -> Result<T, StoreError> {
        r.map_err(|e| self.map(e))
    }

    fn exec(&self, sql: &str) -> Result<(), Error> {
        self.conn.prepare_cached(sql)?.execute([])?;
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
            budget: None,
        };
        match next {
            Finish::Retry { run_at_ms, error } => {
                update.run_at_ms = Some(*run_at_ms);
                update.error = Some(error);
            }
            Finish::Revive {
                run_at_ms,
                error,
                budget_from,
                epoch,
            } => {
                update.run_at_ms = Some(*run_at_ms);
                update.error = Some(error);
                update.budget = Some((*budget_from, *epoch));
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
            budget,
        } = update;
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE jobs SET state = ?2, finished_ms = ?3, run_at_ms = COALESCE(?4, run_at_ms), \
                 output_kind = ?5, output = ?6, error = CASE WHEN ?7 THEN ?8 ELSE error END, \
                 budget_from = COALESCE(?9, budget_from), epoch = COALESCE(?10, epoch) \
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
                error,
                budget.map(|b| b.0),
                budget.map(|b| b.1)
            ])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id).into());
        }
        Ok(())
    }

    fn recover_inner(&self, now_ms: u64) -> Result<Vec<JobRecord>, Error> {
        let lost = encode_outcome(&AttemptOutcome::daemon_died())?;
        self.conn.execute(
            "UPDATE attempts SET finished_ms = ?1, outcome = ?2 WHERE finished_ms IS NULL",
            params![now_ms, lost],
        )?;
        // Every job that was running waits again; the daemon's policy
        // decides whether it may run (its crash budget counts the attempt).
        self.conn.execute(
            "UPDATE jobs SET state = 'queued' WHERE state = 'running'",
            [],
        )?;
        query::live(&self.conn)
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
            rollback_quietly(&self.conn);
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
        let r = insert::insert(&self.conn, job);
        self.wrap(r)
    }

    fn insert_many(&mut self, jobs: &[NewJob]) -> Result<Vec<Submitted>, StoreError> {
        let r = insert::insert_many(&self.conn, &self.plain_inserts, jobs);
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
        let r = query::get(&self.conn, id);
        self.wrap(r)
    }

    fn list_page(
        &mut self,
        state: Option<JobState>,
        queue: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let r = query::list(&self.conn, state, queue, before, limit);
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
        let r = query::counts(&self.conn);
        self.wrap(r)
    }

    fn add_deliveries(
        &mut self,
        job_id: u64,
        at_ms: u64,
        deliveries: &[NewDelivery],
    ) -> Result<(), StoreError> {
        let r = outbox::add(&self.conn, job_id, at_ms, deliveries);
        self.wrap(r)
    }

    fn deliveries_after(&mut self, after: u64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let r = outbox::after(&self.conn, after, limit);
        self.wrap(r)
    }

    fn delivery_attempted(
        &mut self,
        id: u64,
        attempts: u32,
        next_at_ms: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        let r = outbox::attempted(&self.conn, id, attempts, next_at_ms, error);
        self.wrap(r)
    }

    fn delivery_done(&mut self, id: u64) -> Result<(), StoreError> {
        let r = outbox::remove(&self.conn, id);
        self.wrap(r)
    }
}

/// Creates the database file 0600 (it holds every job's input and output),
/// or brings an existing one of ours down to 0600, without following a symlink.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}
