//! Writing new jobs: one by one (a key to look up, dependencies to check), or
//! runs of plain jobs with multi-row `INSERT`s.

use jobvisor_proto::control::Submitted;
use rusqlite::{params, Connection, OptionalExtension, ToSql};

use crate::rows::{encode_input_from, payload_to_sql};
use crate::sql_error::Error;
use crate::store::{NewJob, StoreError};

/// Rows per multi-row `INSERT` of plain jobs, largest first. A run of plain
/// jobs is written with as few statements as these sizes allow; each size is
/// one prepared (cached) statement.
const INSERT_ROWS: [usize; 3] = [32, 8, 1];

/// The columns a plain job sets (see [`insert_plain`]), in the
/// order of its parameters; `state` is the literal `'queued'`.
const PLAIN_COLS: &str = "task, queue, priority, state, max_attempts, backoff_base_ms, \
     backoff_max_ms, timeout_ms, run_at_ms, created_ms, input_kind, input, stall_timeout_ms, \
     notify_url, max_crashes";
const PLAIN_ROW: &str = "(?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The multi-row `INSERT` of each size in [`INSERT_ROWS`], built once per
/// connection.
pub(crate) struct PlainInserts([(usize, String); INSERT_ROWS.len()]);

impl PlainInserts {
    pub(crate) fn new() -> Self {
        PlainInserts(INSERT_ROWS.map(|rows| (rows, plain_insert_sql(rows))))
    }
}

/// [`JobStore::insert`](crate::JobStore::insert).
pub(crate) fn insert(conn: &Connection, job: &NewJob) -> Result<Submitted, Error> {
    if let Some(key) = &job.key {
        let existing: Option<u64> = conn
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
        let mut exists = conn.prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")?;
        for &dep in &job.after {
            if !exists.exists([dep])? {
                return Err(StoreError::NotFound(dep).into());
            }
        }
    }
    let (input_kind, input) = payload_to_sql(&job.input);
    // A batch position left unresolved is refused here, before any write.
    let input_from = if job.input_from.is_empty() {
        None
    } else {
        Some(encode_input_from(&job.input_from)?)
    };
    conn.prepare_cached(
        "INSERT INTO jobs (task, queue, priority, state, max_attempts, backoff_base_ms, \
             backoff_max_ms, timeout_ms, run_at_ms, created_ms, key, input_kind, input, \
             stall_timeout_ms, input_from, notify_url, max_crashes) \
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
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
        job.max_crashes,
    ])?;
    let id =
        u64::try_from(conn.last_insert_rowid()).map_err(|_| StoreError::db("negative job id"))?;
    if !job.after.is_empty() {
        let mut dep =
            conn.prepare_cached("INSERT OR IGNORE INTO deps (job_id, dep_id) VALUES (?1, ?2)")?;
        for &d in &job.after {
            dep.execute(params![id, d])?;
        }
    }
    Ok(Submitted {
        id,
        duplicate: false,
    })
}

/// [`JobStore::insert_many`](crate::JobStore::insert_many): runs of plain jobs (no key, dependencies or
/// pipeline inputs: nothing to look up first) go in with multi-row
/// `INSERT`s; the others one by one.
pub(crate) fn insert_many(
    conn: &Connection,
    plain: &PlainInserts,
    jobs: &[NewJob],
) -> Result<Vec<Submitted>, Error> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut rest = jobs;
    while let Some(first) = rest.first() {
        if !is_plain(first) {
            out.push(insert(conn, first)?);
            rest = &rest[1..];
            continue;
        }
        let run = rest.iter().take_while(|j| is_plain(j)).count();
        let mut left = &rest[..run];
        while !left.is_empty() {
            let (rows, sql) = plain
                .0
                .iter()
                .find(|(rows, _)| *rows <= left.len())
                .ok_or_else(|| StoreError::db("INSERT_ROWS must end with 1"))?;
            let (chunk, tail) = left.split_at(*rows);
            insert_plain(conn, sql, chunk, &mut out)?;
            left = tail;
        }
        rest = &rest[run..];
    }
    Ok(out)
}

/// Inserts plain jobs with `sql`, the statement for that many rows, and
/// appends their ids to `out`.
fn insert_plain(
    conn: &Connection,
    sql: &str,
    jobs: &[NewJob],
    out: &mut Vec<Submitted>,
) -> Result<(), Error> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut idx = 0;
    for job in jobs {
        let (input_kind, input) = payload_to_sql(&job.input);
        // In the order of PLAIN_COLS.
        let row: [&dyn ToSql; 14] = [
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
            &job.max_crashes,
        ];
        for value in row {
            idx += 1;
            stmt.raw_bind_parameter(idx, value)?;
        }
    }
    let inserted = stmt.raw_execute()?;
    drop(stmt);
    if inserted != jobs.len() {
        return Err(StoreError::db(format!("inserted {inserted} of {} jobs", jobs.len())).into());
    }
    // AUTOINCREMENT gives each row the next id (one more than the largest
    // ever used), so the rows of one statement have the ids up to the
    // last one, in order.
    let last =
        u64::try_from(conn.last_insert_rowid()).map_err(|_| StoreError::db("negative job id"))?;
    let first = last + 1 - jobs.len() as u64;
    out.extend((first..=last).map(|id| Submitted {
        id,
        duplicate: false,
    }));
    Ok(())
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
