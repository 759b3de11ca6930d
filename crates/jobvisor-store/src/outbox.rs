//! The outbox: completion notifications still to deliver, as rows of the
//! `outbox` table. A row is written in the transaction of the job state
//! that causes it (so a committed terminal state always has its
//! notifications, and a state that did not commit has none), updated after
//! each failed attempt, and deleted once delivered or given up on.

use rusqlite::{params, Connection};

use crate::rows::state_from_row;
use crate::sql_error::Error;
use crate::store::{Delivery, NewDelivery};

/// Writes one row per delivery of job `job_id`, due at `at_ms`, in the
/// job's current epoch (0 if the job is not there).
pub(crate) fn add(
    conn: &Connection,
    job_id: u64,
    at_ms: u64,
    deliveries: &[NewDelivery],
) -> Result<(), Error> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (job_id, state, target, attempts, next_at_ms, created_ms, epoch) \
         VALUES (?1, ?2, ?3, 0, ?4, ?4, COALESCE((SELECT epoch FROM jobs WHERE id = ?1), 0))",
    )?;
    for d in deliveries {
        insert.execute(params![job_id, d.state.as_str(), d.target, at_ms])?;
    }
    Ok(())
}

/// Up to `limit` rows with an id above `after`, in id order.
pub(crate) fn after(conn: &Connection, after: u64, limit: u32) -> Result<Vec<Delivery>, Error> {
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut select = conn.prepare_cached(
        "SELECT id, job_id, state, target, attempts, next_at_ms, epoch FROM outbox \
         WHERE id > ?1 ORDER BY id LIMIT ?2",
    )?;
    let rows = select.query_map(params![after, limit], |row| {
        Ok(Delivery {
            id: row.get(0)?,
            job_id: row.get(1)?,
            state: state_from_row(row, 2)?,
            target: row.get(3)?,
            attempts: row.get(4)?,
            next_at_ms: row.get(5)?,
            epoch: row.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Records a failed attempt of row `id`: `attempts` made so far, the next
/// one not before `next_at_ms`.
pub(crate) fn attempted(
    conn: &Connection,
    id: u64,
    attempts: u32,
    next_at_ms: u64,
    error: &str,
) -> Result<(), Error> {
    conn.prepare_cached(
        "UPDATE outbox SET attempts = ?2, next_at_ms = ?3, last_error = ?4 WHERE id = ?1",
    )?
    .execute(params![id, attempts, next_at_ms, error])?;
    Ok(())
}

/// Deletes row `id` (delivered, or given up on).
pub(crate) fn remove(conn: &Connection, id: u64) -> Result<(), Error> {
    conn.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}
