//! The bincode blobs of schema versions 1 to 4, and the migration to
//! version 5 that rewrites them as the JSON of [`crate::json`].
//!
//! Up to version 4, `attempts.outcome` and `jobs.input_from` held the
//! protocol codec's encoding of the wire types. The types of that time are
//! frozen here, so that old files stay readable however the wire types
//! change; this module is the only one that still decodes those blobs, and
//! only while migrating.

use std::borrow::Cow;

use jobvisor_proto::codec;
use rusqlite::{params, Connection};
use serde::Deserialize;

use crate::json::{Input, Outcome};
use crate::sql_error::Error;
use crate::store::StoreError;

/// `AttemptOutcome` as the codec wrote it up to schema version 4 (variant
/// order and fields are the encoding: never change them).
#[derive(Deserialize)]
enum AttemptOutcomeV4 {
    Running,
    Ok,
    Error(String),
    Panic(String),
    Crashed {
        code: Option<i32>,
        signal: Option<i32>,
        max_rss_kib: u64,
        stderr_tail: Vec<String>,
        cause: Option<String>,
    },
    TimedOut(String),
    Lost,
    Cancelled,
}

/// `JobRef` as the codec wrote it in schema versions 3 and 4.
#[derive(Deserialize)]
enum JobRefV4 {
    Id(u64),
    #[allow(dead_code)] // Never stored (resolved first), but part of the encoding.
    Batch(u32),
}

/// `InputRef` as the codec wrote it in schema versions 3 and 4.
#[derive(Deserialize)]
struct InputRefV4 {
    job: JobRefV4,
    pointer: Option<String>,
    field: Option<String>,
}

impl From<AttemptOutcomeV4> for Outcome<'static> {
    fn from(o: AttemptOutcomeV4) -> Self {
        match o {
            AttemptOutcomeV4::Running => Outcome::Running,
            AttemptOutcomeV4::Ok => Outcome::Ok,
            AttemptOutcomeV4::Error(m) => Outcome::Error { message: m.into() },
            AttemptOutcomeV4::Panic(m) => Outcome::Panic { message: m.into() },
            AttemptOutcomeV4::Crashed {
                code,
                signal,
                max_rss_kib,
                stderr_tail,
                cause,
            } => Outcome::Crashed {
                exit_code: code,
                signal,
                max_rss_kib,
                stderr_tail: stderr_tail.into(),
                cause: cause.map(Cow::Owned),
            },
            AttemptOutcomeV4::TimedOut(m) => Outcome::TimedOut { message: m.into() },
            AttemptOutcomeV4::Lost => Outcome::Lost,
            AttemptOutcomeV4::Cancelled => Outcome::Cancelled,
        }
    }
}

/// Why a blob could not be rewritten.
type BlobError = Box<dyn std::error::Error + Send + Sync>;

/// An old outcome blob as JSON text.
fn outcome_json(blob: &[u8]) -> Result<String, BlobError> {
    let old: AttemptOutcomeV4 = codec::decode(blob)?;
    Ok(serde_json::to_string(&Outcome::from(old))?)
}

/// An old `input_from` blob as JSON text.
fn inputs_json(blob: &[u8]) -> Result<String, BlobError> {
    let old: Vec<InputRefV4> = codec::decode(blob)?;
    let inputs = old
        .into_iter()
        .map(|r| match r.job {
            JobRefV4::Id(job_id) => Ok(Input {
                job_id,
                pointer: r.pointer.map(Cow::Owned),
                field: r.field.map(Cow::Owned),
            }),
            JobRefV4::Batch(b) => Err(format!("an unresolved batch position #{b}")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(serde_json::to_string(&inputs)?)
}

/// Version 4 → 5: `attempts.outcome` and `jobs.input_from` become TEXT
/// columns of JSON, every stored blob rewritten. Runs inside the migration's
/// transaction: a blob that cannot be read fails the migration and leaves
/// the file as it was.
pub(crate) fn to_v5(conn: &Connection) -> Result<(), Error> {
    conn.execute_batch(
        "CREATE TABLE attempts_v5 (
            job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
            number      INTEGER NOT NULL,
            worker_pid  INTEGER,
            started_ms  INTEGER NOT NULL,
            finished_ms INTEGER,
            outcome     TEXT    NOT NULL,
            PRIMARY KEY (job_id, number)
        ) WITHOUT ROWID;
        ALTER TABLE jobs RENAME COLUMN input_from TO input_from_v4;
        ALTER TABLE jobs ADD COLUMN input_from TEXT;",
    )?;
    {
        let mut read = conn.prepare(
            "SELECT job_id, number, worker_pid, started_ms, finished_ms, outcome FROM attempts",
        )?;
        let mut write = conn.prepare(
            "INSERT INTO attempts_v5 (job_id, number, worker_pid, started_ms, finished_ms, outcome) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let mut rows = read.query([])?;
        while let Some(row) = rows.next()? {
            let (job, number): (i64, i64) = (row.get(0)?, row.get(1)?);
            let blob: Vec<u8> = row.get(5)?;
            let outcome = outcome_json(&blob).map_err(|e| {
                StoreError::db_context(
                    format!("cannot read the outcome of attempt {number} of job {job}"),
                    e,
                )
            })?;
            write.execute(params![
                job,
                number,
                row.get::<_, Option<i64>>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, Option<i64>>(4)?,
                outcome
            ])?;
        }
    }
    // Pipeline jobs are few; read them all before writing to the same table.
    let pipelines: Vec<(i64, Vec<u8>)> = conn
        .prepare("SELECT id, input_from_v4 FROM jobs WHERE input_from_v4 IS NOT NULL")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<Result<_, _>>()?;
    {
        let mut write = conn.prepare("UPDATE jobs SET input_from = ?2 WHERE id = ?1")?;
        for (id, blob) in pipelines {
            let inputs = inputs_json(&blob).map_err(|e| {
                StoreError::db_context(format!("cannot read the input_from of job {id}"), e)
            })?;
            write.execute(params![id, inputs])?;
        }
    }
    conn.execute_batch(
        "DROP TABLE attempts;
        ALTER TABLE attempts_v5 RENAME TO attempts;
        CREATE INDEX attempts_running ON attempts(job_id) WHERE finished_ms IS NULL;
        ALTER TABLE jobs DROP COLUMN input_from_v4;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_proto::control::{AttemptOutcome, InputRef, JobRef};

    /// The frozen types decode what today's wire types encode (while the
    /// two are still the same), and come out as the store's JSON.
    #[test]
    fn old_blobs_become_the_json_of_today() {
        let outcomes = [
            AttemptOutcome::Running,
            AttemptOutcome::Ok,
            AttemptOutcome::Error("boom".into()),
            AttemptOutcome::Panic("p".into()),
            AttemptOutcome::Crashed {
                code: Some(1),
                signal: None,
                max_rss_kib: 7,
                stderr_tail: vec!["x".into()],
                cause: None,
            },
            AttemptOutcome::TimedOut("t".into()),
            AttemptOutcome::Lost,
            AttemptOutcome::Cancelled,
        ];
        for o in outcomes {
            let blob = codec::encode(&o).unwrap();
            let json = outcome_json(&blob).unwrap();
            assert_eq!(json, crate::json::outcome_to_json(&o).unwrap());
        }
        let refs = vec![InputRef {
            job: JobRef::Id(3),
            pointer: Some("/a".into()),
            field: None,
        }];
        let json = inputs_json(&codec::encode(&refs).unwrap()).unwrap();
        assert_eq!(
            crate::json::inputs_from_json(json.as_bytes()).unwrap(),
            refs
        );
    }

    #[test]
    fn unreadable_blobs_are_errors() {
        assert!(outcome_json(&[0xff, 0xff]).is_err());
        assert!(outcome_json(&[]).is_err());
        let batch = vec![InputRef {
            job: JobRef::Batch(0),
            pointer: None,
            field: None,
        }];
        assert!(inputs_json(&codec::encode(&batch).unwrap()).is_err());
    }
}
