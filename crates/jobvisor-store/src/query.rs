//! Reading jobs back: one with its payloads, lists without them, the live
//! jobs a recovery returns, counts per state. Each comes with its
//! dependencies and attempts.

use jobvisor_proto::control::{JobRecord, JobState};
use rusqlite::{params, Connection, OptionalExtension};

use crate::rows::{attempt_from_row, job_cols, job_from_row, state_from_row};
use crate::sql_error::Error;

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
    " FROM jobs WHERE (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?3"
);
const LIST_STATE: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state = ?1 AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?3"
);
const LIST_QUEUE: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE queue = ?2 AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?3"
);
const LIST_BOTH: &str = concat!(
    "SELECT ",
    job_cols!(),
    " FROM jobs WHERE state = ?1 AND queue = ?2 AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?3"
);

/// A job with its payloads, dependencies and attempts.
pub(crate) fn get(conn: &Connection, id: u64) -> Result<Option<JobRecord>, Error> {
    let job = conn
        .prepare_cached(SELECT_JOB)?
        .query_row([id], |row| job_from_row(row, true))
        .optional()?;
    match job {
        Some(mut job) => {
            fill(conn, &mut job)?;
            Ok(Some(job))
        }
        None => Ok(None),
    }
}

/// Reads a job's dependencies and attempts into it.
fn fill(conn: &Connection, job: &mut JobRecord) -> Result<(), Error> {
    job.after = conn
        .prepare_cached("SELECT dep_id FROM deps WHERE job_id = ?1 ORDER BY rowid")?
        .query_map([job.id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    job.attempts = conn
        .prepare_cached(
            "SELECT number, worker_pid, started_ms, finished_ms, outcome FROM attempts \
             WHERE job_id = ?1 ORDER BY number",
        )?
        .query_map([job.id], attempt_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(())
}

/// Jobs, newest first, without payloads (`state` and `queue` filter when set).
pub(crate) fn list(
    conn: &Connection,
    state: Option<JobState>,
    queue: Option<&str>,
    before: Option<u64>,
    limit: u32,
) -> Result<Vec<JobRecord>, Error> {
    let sql = match (state.is_some(), queue.is_some()) {
        (false, false) => LIST_ALL,
        (true, false) => LIST_STATE,
        (false, true) => LIST_QUEUE,
        (true, true) => LIST_BOTH,
    };
    let mut stmt = conn.prepare_cached(sql)?;
    // An id past i64::MAX is past every job: all of them are before it.
    let before = before.map(|b| i64::try_from(b).unwrap_or(i64::MAX));
    // Unused parameters are bound anyway (as NULL); SQLite allows it.
    let mut jobs = stmt
        .query_map(
            params![state.map(JobState::as_str), queue, limit, before],
            |row| job_from_row(row, false),
        )?
        .collect::<Result<Vec<_>, _>>()?;
    drop(stmt);
    for job in &mut jobs {
        fill(conn, job)?;
    }
    Ok(jobs)
}

/// Every job not yet terminal, with input and attempts, in id order.
pub(crate) fn live(conn: &Connection) -> Result<Vec<JobRecord>, Error> {
    let mut stmt = conn.prepare_cached(SELECT_LIVE)?;
    let mut jobs = stmt
        .query_map([], |row| job_from_row(row, true))?
        .collect::<Result<Vec<_>, _>>()?;
    drop(stmt);
    for job in &mut jobs {
        fill(conn, job)?;
    }
    Ok(jobs)
}

/// Jobs per state, in the order of [`JobState`].
pub(crate) fn counts(conn: &Connection) -> Result<Vec<(JobState, u64)>, Error> {
    let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
    let mut counts = stmt
        .query_map([], |row| {
            Ok((state_from_row(row, 0)?, row.get::<_, u64>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    counts.sort_by_key(|(state, _)| *state as u8);
    Ok(counts)
}
