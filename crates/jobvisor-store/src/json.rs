//! The JSON the store keeps in its rows: attempt outcomes and pipeline
//! inputs, as TEXT that `sqlite3` (and PostgreSQL's `jsonb`) can read.
//!
//! The shape is the store's own, not the serde shape of the protocol types,
//! so that a change to the wire types does not change what is on disk. Keys
//! are snake_case; an outcome is an object tagged by `kind`, its details
//! beside the tag; a missing detail is `null`:
//!
//! ```text
//! {"kind": "running"}    {"kind": "ok"}    {"kind": "lost"}    {"kind": "cancelled"}
//! {"kind": "error", "message": "boom"}
//! {"kind": "panic", "message": "index out of bounds"}
//! {"kind": "timed_out", "message": "SIGTERM then SIGKILL"}
//! {"kind": "crashed", "exit_code": null, "signal": 9, "max_rss_kib": 123456,
//!  "stderr_tail": ["line 1", "line 2"], "cause": "memory limit exceeded"}
//! ```
//!
//! Pipeline inputs (`jobs.input_from`) are an array of the jobs whose output
//! a job takes (always resolved ids), with the JSON pointer and field:
//!
//! ```text
//! [{"job_id": 1, "pointer": "/sha256", "field": "digest"},
//!  {"job_id": 2, "pointer": null, "field": null}]
//! ```
//!
//! So `SELECT job_id, json_extract(outcome, '$.signal') FROM attempts WHERE
//! outcome ->> 'kind' = 'crashed'` lists the signals that killed workers.

use std::borrow::Cow;

use jobvisor_proto::control::{AttemptOutcome, InputRef, JobRef};
use serde::{Deserialize, Serialize};

/// An attempt outcome as stored (see the module docs). Borrows when
/// written, owns when read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Outcome<'a> {
    Running,
    Ok,
    Error {
        message: Cow<'a, str>,
    },
    Panic {
        message: Cow<'a, str>,
    },
    Crashed {
        exit_code: Option<i32>,
        signal: Option<i32>,
        max_rss_kib: u64,
        stderr_tail: Cow<'a, [String]>,
        cause: Option<Cow<'a, str>>,
    },
    TimedOut {
        message: Cow<'a, str>,
    },
    Lost,
    Cancelled,
}

impl<'a> From<&'a AttemptOutcome> for Outcome<'a> {
    fn from(o: &'a AttemptOutcome) -> Self {
        match o {
            AttemptOutcome::Running => Outcome::Running,
            AttemptOutcome::Ok => Outcome::Ok,
            AttemptOutcome::Error(m) => Outcome::Error { message: m.into() },
            AttemptOutcome::Panic(m) => Outcome::Panic { message: m.into() },
            AttemptOutcome::Crashed {
                code,
                signal,
                max_rss_kib,
                stderr_tail,
                cause,
            } => Outcome::Crashed {
                exit_code: *code,
                signal: *signal,
                max_rss_kib: *max_rss_kib,
                stderr_tail: stderr_tail.into(),
                cause: cause.as_deref().map(Cow::Borrowed),
            },
            AttemptOutcome::TimedOut(m) => Outcome::TimedOut { message: m.into() },
            AttemptOutcome::Lost => Outcome::Lost,
            AttemptOutcome::Cancelled => Outcome::Cancelled,
        }
    }
}

impl From<Outcome<'_>> for AttemptOutcome {
    fn from(o: Outcome<'_>) -> Self {
        match o {
            Outcome::Running => AttemptOutcome::Running,
            Outcome::Ok => AttemptOutcome::Ok,
            Outcome::Error { message } => AttemptOutcome::Error(message.into_owned()),
            Outcome::Panic { message } => AttemptOutcome::Panic(message.into_owned()),
            Outcome::Crashed {
                exit_code,
                signal,
                max_rss_kib,
                stderr_tail,
                cause,
            } => AttemptOutcome::Crashed {
                code: exit_code,
                signal,
                max_rss_kib,
                stderr_tail: stderr_tail.into_owned(),
                cause: cause.map(Cow::into_owned),
            },
            Outcome::TimedOut { message } => AttemptOutcome::TimedOut(message.into_owned()),
            Outcome::Lost => AttemptOutcome::Lost,
            Outcome::Cancelled => AttemptOutcome::Cancelled,
        }
    }
}

/// One pipeline input as stored (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Input<'a> {
    pub(crate) job_id: u64,
    pub(crate) pointer: Option<Cow<'a, str>>,
    pub(crate) field: Option<Cow<'a, str>>,
}

impl<'a> Input<'a> {
    /// The stored form of `r`; `None` for a reference to a position in a
    /// submit batch, which is resolved to an id before anything is stored.
    pub(crate) fn from_ref(r: &'a InputRef) -> Option<Self> {
        match r.job {
            JobRef::Id(job_id) => Some(Input {
                job_id,
                pointer: r.pointer.as_deref().map(Cow::Borrowed),
                field: r.field.as_deref().map(Cow::Borrowed),
            }),
            JobRef::Batch(_) => None,
        }
    }
}

impl From<Input<'_>> for InputRef {
    fn from(i: Input<'_>) -> Self {
        InputRef {
            job: JobRef::Id(i.job_id),
            pointer: i.pointer.map(Cow::into_owned),
            field: i.field.map(Cow::into_owned),
        }
    }
}

/// An attempt outcome as JSON text.
///
/// # Errors
/// Only if serde cannot represent it (it always can).
pub(crate) fn outcome_to_json(o: &AttemptOutcome) -> serde_json::Result<String> {
    serde_json::to_string(&Outcome::from(o))
}

/// An attempt outcome from its JSON text.
///
/// # Errors
/// The text is not an outcome of the shape above.
pub(crate) fn outcome_from_json(text: &[u8]) -> serde_json::Result<AttemptOutcome> {
    serde_json::from_slice::<Outcome<'_>>(text).map(AttemptOutcome::from)
}

/// Pipeline inputs from their JSON text.
///
/// # Errors
/// The text is not an array of inputs of the shape above.
pub(crate) fn inputs_from_json(text: &[u8]) -> serde_json::Result<Vec<InputRef>> {
    let inputs: Vec<Input<'_>> = serde_json::from_slice(text)?;
    Ok(inputs.into_iter().map(InputRef::from).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn crashed() -> AttemptOutcome {
        AttemptOutcome::Crashed {
            code: None,
            signal: Some(9),
            max_rss_kib: 123_456,
            stderr_tail: vec!["line 1".into(), "line 2".into()],
            cause: Some("memory limit exceeded".into()),
        }
    }

    /// The documented shape, held here so that a change to it is a decision.
    #[test]
    fn outcomes_have_the_documented_shape() {
        let cases = [
            (AttemptOutcome::Running, json!({"kind": "running"})),
            (AttemptOutcome::Ok, json!({"kind": "ok"})),
            (AttemptOutcome::Lost, json!({"kind": "lost"})),
            (AttemptOutcome::Cancelled, json!({"kind": "cancelled"})),
            (
                AttemptOutcome::Error("boom".into()),
                json!({"kind": "error", "message": "boom"}),
            ),
            (
                AttemptOutcome::Panic("p".into()),
                json!({"kind": "panic", "message": "p"}),
            ),
            (
                AttemptOutcome::TimedOut("SIGTERM then SIGKILL".into()),
                json!({"kind": "timed_out", "message": "SIGTERM then SIGKILL"}),
            ),
            (
                crashed(),
                json!({"kind": "crashed", "exit_code": null, "signal": 9, "max_rss_kib": 123456,
                       "stderr_tail": ["line 1", "line 2"], "cause": "memory limit exceeded"}),
            ),
        ];
        for (outcome, want) in cases {
            let text = outcome_to_json(&outcome).unwrap();
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), want);
            assert_eq!(outcome_from_json(text.as_bytes()).unwrap(), outcome);
        }
    }

    #[test]
    fn inputs_have_the_documented_shape() {
        let refs = vec![
            InputRef {
                job: JobRef::Id(1),
                pointer: Some("/sha256".into()),
                field: Some("digest".into()),
            },
            InputRef {
                job: JobRef::Id(2),
                pointer: None,
                field: None,
            },
        ];
        let stored: Vec<Input<'_>> = refs.iter().filter_map(Input::from_ref).collect();
        let text = serde_json::to_string(&stored).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!([{"job_id": 1, "pointer": "/sha256", "field": "digest"},
                   {"job_id": 2, "pointer": null, "field": null}])
        );
        assert_eq!(inputs_from_json(text.as_bytes()).unwrap(), refs);
        let batch = InputRef {
            job: JobRef::Batch(0),
            pointer: None,
            field: None,
        };
        assert!(Input::from_ref(&batch).is_none());
    }

    #[test]
    fn other_text_is_refused() {
        for bad in [
            &b"{\"kind\": \"exploded\"}"[..],
            b"{\"kind\": \"error\"}",
            b"\"ok\"",
            b"\x00\x01",
        ] {
            assert!(outcome_from_json(bad).is_err(), "{bad:?}");
        }
        assert!(inputs_from_json(b"[{\"job_id\": -1}]").is_err());
    }
}
