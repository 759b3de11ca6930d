//! How a job is laid out in PostgreSQL rows: the columns a [`JobRecord`] is
//! read from, payloads as `jsonb` plus their exact text (or bytes), and
//! numbers as `bigint`.

use std::borrow::Cow;
use std::collections::HashMap;

use jobvisor_proto::control::{Attempt, AttemptOutcome, JobRecord, JobState, Payload};
use postgres::{Client, Row, Statement};

use crate::json;
use crate::store::StoreError;

/// Columns read into a [`JobRecord`], in the order [`job_from_row`] expects.
macro_rules! pg_job_cols {
    () => {
        "id, task, queue, priority, state, max_attempts, timeout_ms, key, created_ms, \
         run_at_ms, finished_ms, error #>> '{}', backoff_base_ms, backoff_max_ms, \
         stall_timeout_ms, input_from::text, notify_url, max_crashes, budget_from, epoch"
    };
}
pub(crate) use pg_job_cols;

/// A payload as the three columns hold it: the `jsonb` copy (as text for
/// a `$n::text::jsonb` parameter; `None` when jsonb cannot hold the text),
/// the exact JSON text, the native bytes.
pub(crate) struct PayloadCols<'a> {
    pub(crate) jsonb: Option<&'a str>,
    pub(crate) text: Option<&'a str>,
    pub(crate) bytes: Option<&'a [u8]>,
}

pub(crate) fn payload_cols(p: &Payload) -> PayloadCols<'_> {
    match p {
        Payload::Json(text) => PayloadCols {
            jsonb: jsonb_ok(text).then_some(text.as_str()),
            text: Some(text),
            bytes: None,
        },
        Payload::Native(bytes) => PayloadCols {
            jsonb: None,
            text: None,
            bytes: Some(bytes),
        },
    }
}

/// Whether PostgreSQL's `jsonb` takes `text`: valid JSON (unpaired
/// surrogates refused, as serde_json does) without the `\u0000` escape,
/// which jsonb refuses. A text it would not take is kept as text only, so
/// one odd payload never fails a batch.
fn jsonb_ok(text: &str) -> bool {
    !text.contains("\\u0000")
        && !text.contains('\0')
        && serde_json::from_str::<serde_json::Value>(text).is_ok()
}

/// `s` without NUL characters, which PostgreSQL's text refuses: each
/// becomes U+FFFD.
pub(crate) fn no_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// An attempt outcome as its `jsonb` column takes it (text for
/// `$n::text::jsonb`): NUL characters in its strings become U+FFFD.
pub(crate) fn encode_outcome(outcome: &AttemptOutcome) -> Result<String, StoreError> {
    let text = crate::rows::encode_outcome(outcome)?;
    if !text.contains("\\u0000") {
        return Ok(text);
    }
    let clean = |s: &String| no_nul(s).into_owned();
    let cleaned = match outcome {
        AttemptOutcome::Error(m) => AttemptOutcome::Error(clean(m)),
        AttemptOutcome::Panic(m) => AttemptOutcome::Panic(clean(m)),
        AttemptOutcome::TimedOut(m) => AttemptOutcome::TimedOut(clean(m)),
        AttemptOutcome::Crashed {
            code,
            signal,
            max_rss_kib,
            stderr_tail,
            cause,
        } => AttemptOutcome::Crashed {
            code: *code,
            signal: *signal,
            max_rss_kib: *max_rss_kib,
            stderr_tail: stderr_tail.iter().map(clean).collect(),
            cause: cause.as_ref().map(clean),
        },
        other => other.clone(),
    };
    crate::rows::encode_outcome(&cleaned)
}

/// `u64` as `bigint`: past `i64::MAX` is `i64::MAX`.
pub(crate) fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn opt_big(n: Option<u64>) -> Option<i64> {
    n.map(big)
}

fn bad(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::db(format!("bad {what} in the job store: {e}"))
}

fn unsigned(row: &Row, idx: usize) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(idx)?;
    u64::try_from(v).map_err(|_| bad("number", v))
}

fn opt_unsigned(row: &Row, idx: usize) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = row.try_get(idx)?;
    v.map(|v| u64::try_from(v).map_err(|_| bad("number", v)))
        .transpose()
}

fn small(row: &Row, idx: usize) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(idx)?;
    u32::try_from(v).map_err(|_| bad("number", v))
}

pub(crate) fn state(row: &Row, idx: usize) -> Result<JobState, StoreError> {
    let text: &str = row.try_get(idx)?;
    JobState::parse(text).ok_or_else(|| bad("job state", text))
}

fn payload(row: &Row, text_idx: usize) -> Result<Option<Payload>, StoreError> {
    let text: Option<String> = row.try_get(text_idx)?;
    let bytes: Option<Vec<u8>> = row.try_get(text_idx + 1)?;
    Ok(match (text, bytes) {
        (_, Some(bytes)) => Some(Payload::Native(bytes)),
        (Some(text), None) => Some(Payload::Json(text)),
        (None, None) => None,
    })
}

/// A job from the columns of [`pg_job_cols!`], then (when `payloads`)
/// `input_text, input_bytes, output_text, output_bytes`. Dependencies and attempts are left empty.
pub(crate) fn job_from_row(row: &Row, payloads: bool) -> Result<JobRecord, StoreError> {
    let (input, output) = if payloads {
        (payload(row, 20)?, payload(row, 22)?)
    } else {
        (None, None)
    };
    let input_from: Option<&str> = row.try_get(15)?;
    Ok(JobRecord {
        id: unsigned(row, 0)?,
        task: row.try_get(1)?,
        queue: row.try_get(2)?,
        priority: row.try_get(3)?,
        state: state(row, 4)?,
        max_attempts: small(row, 5)?,
        timeout_ms: opt_unsigned(row, 6)?,
        after: Vec::new(),
        key: row.try_get(7)?,
        created_ms: unsigned(row, 8)?,
        run_at_ms: unsigned(row, 9)?,
        finished_ms: opt_unsigned(row, 10)?,
        input,
        output,
        error: row.try_get(11)?,
        backoff_base_ms: unsigned(row, 12)?,
        backoff_max_ms: unsigned(row, 13)?,
        stall_timeout_ms: opt_unsigned(row, 14)?,
        input_from: match input_from {
            None => Vec::new(),
            Some(text) => {
                json::inputs_from_json(text.as_bytes()).map_err(|e| bad("input_from", e))?
            }
        },
        attempts: Vec::new(),
        notify_url: row.try_get(16)?,
        max_crashes: row
            .try_get::<_, Option<i64>>(17)?
            .map(|v| u32::try_from(v).map_err(|_| bad("number", v)))
            .transpose()?,
        budget_from: small(row, 18)?,
        epoch: small(row, 19)?,
    })
}

/// Reads the dependencies and attempts of `jobs` into them, with one query
/// each for all of them.
pub(crate) fn fill(
    client: &mut Client,
    deps: &Statement,
    attempts: &Statement,
    jobs: &mut [JobRecord],
) -> Result<(), StoreError> {
    if jobs.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = jobs.iter().map(|j| big(j.id)).collect();
    let at: HashMap<u64, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id, i)).collect();
    for row in client.query(deps, &[&ids])? {
        let job = unsigned(&row, 0)?;
        if let Some(&i) = at.get(&job) {
            jobs[i].after.push(unsigned(&row, 1)?);
        }
    }
    for row in client.query(attempts, &[&ids])? {
        let job = unsigned(&row, 0)?;
        let outcome: &str = row.try_get(5)?;
        let attempt = Attempt {
            number: small(&row, 1)?,
            worker_pid: opt_unsigned(&row, 2)?
                .map(|p| u32::try_from(p).map_err(|_| bad("pid", p)))
                .transpose()?,
            started_ms: unsigned(&row, 3)?,
            finished_ms: opt_unsigned(&row, 4)?,
            outcome: json::outcome_from_json(outcome.as_bytes())
                .map_err(|e| bad("attempt outcome", e))?,
        };
        if let Some(&i) = at.get(&job) {
            jobs[i].attempts.push(attempt);
        }
    }
    Ok(())
}

/// The dependencies of the jobs `$1`, in the order they were given.
pub(crate) const SELECT_DEPS: &str =
    "SELECT job_id, dep_id FROM deps WHERE job_id = ANY($1) ORDER BY job_id, ord";
/// The attempts of the jobs `$1`, in number order.
pub(crate) const SELECT_ATTEMPTS: &str =
    "SELECT job_id, number, worker_pid, started_ms, finished_ms, outcome::text FROM attempts \
     WHERE job_id = ANY($1) ORDER BY job_id, number";
