//! How a job is laid out in SQLite rows: the columns a [`JobRecord`] is read
//! from, and the encoding of payloads and attempt outcomes.
//!
//! Payloads are stored as a kind (`0` JSON, `1` native) and the bytes: JSON as
//! TEXT (readable with the `sqlite3` shell and its JSON functions), native
//! bytes as a BLOB. Attempt outcomes and pipeline inputs are JSON text in the
//! store's own shape (see `json`), never the wire encoding.

use jobvisor_proto::control::{Attempt, AttemptOutcome, InputRef, JobRecord, JobState, Payload};
use rusqlite::types::{ToSqlOutput, Type, ValueRef};
use rusqlite::Row;

use crate::json;
use crate::store::StoreError;

const KIND_JSON: i64 = 0;
const KIND_NATIVE: i64 = 1;

/// Columns read into a [`JobRecord`], in the order [`job_from_row`] expects.
macro_rules! job_cols {
    () => {
        "id, task, queue, priority, state, max_attempts, timeout_ms, key, created_ms, \
         run_at_ms, finished_ms, error, backoff_base_ms, backoff_max_ms, stall_timeout_ms, input_from, \
         notify_url, max_crashes, budget_from, epoch"
    };
}
pub(crate) use job_cols;

/// An attempt outcome as its column holds it.
pub(crate) fn encode_outcome(outcome: &AttemptOutcome) -> Result<String, StoreError> {
    json::outcome_to_json(outcome)
        .map_err(|e| StoreError::db_context("cannot encode an attempt outcome", e))
}

/// Pipeline inputs (resolved to job ids) as the `input_from` column holds them.
pub(crate) fn encode_input_from(refs: &[InputRef]) -> Result<String, StoreError> {
    let stored = refs
        .iter()
        .map(json::Input::from_ref)
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::db("input_from names a batch position; resolve it first"))?;
    serde_json::to_string(&stored)
        .map_err(|e| StoreError::db_context("cannot encode input_from", e))
}

/// The text of a JSON column; `None` when NULL.
fn json_text<'r>(row: &'r Row<'_>, idx: usize) -> rusqlite::Result<Option<&'r [u8]>> {
    match row.get_ref(idx)? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(text) => Ok(Some(text)),
        other => Err(conversion_error(
            idx,
            other.data_type(),
            "expected JSON text".into(),
        )),
    }
}

/// A payload as its kind and its bytes.
pub(crate) fn payload_to_sql(payload: &Payload) -> (i64, ToSqlOutput<'_>) {
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

/// A job state from its name.
pub(crate) fn state_from_row(row: &Row<'_>, idx: usize) -> rusqlite::Result<JobState> {
    let text: String = row.get(idx)?;
    JobState::parse(&text)
        .ok_or_else(|| conversion_error(idx, Type::Text, format!("unknown job state {text:?}")))
}

/// A job from the columns of [`job_cols!`], then (when `payloads`) input kind,
/// input, output kind, output. Dependencies and attempts are left empty.
pub(crate) fn job_from_row(row: &Row<'_>, payloads: bool) -> rusqlite::Result<JobRecord> {
    let (input, output) = if payloads {
        (payload_from_row(row, 20)?, payload_from_row(row, 22)?)
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
        max_crashes: row.get(17)?,
        budget_from: row.get(18)?,
        epoch: row.get(19)?,
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
        input_from: match json_text(row, 15)? {
            None => Vec::new(),
            Some(text) => json::inputs_from_json(text)
                .map_err(|e| conversion_error(15, Type::Text, format!("bad input_from: {e}")))?,
        },
        attempts: Vec::new(),
        notify_url: row.get(16)?,
    })
}

/// An attempt from `number, worker_pid, started_ms, finished_ms, outcome`.
pub(crate) fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<Attempt> {
    let text = json_text(row, 4)?
        .ok_or_else(|| conversion_error(4, Type::Null, "no attempt outcome".into()))?;
    let outcome = json::outcome_from_json(text)
        .map_err(|e| conversion_error(4, Type::Text, format!("bad attempt outcome: {e}")))?;
    Ok(Attempt {
        number: row.get(0)?,
        worker_pid: row.get(1)?,
        started_ms: row.get(2)?,
        finished_ms: row.get(3)?,
        outcome,
    })
}
