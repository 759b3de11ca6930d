//! The public JSON: what `jobvisor … --json` prints, what completion
//! notifications carry, and what the HTTP API will serve. Documented field by
//! field in `docs/json.md`.
//!
//! These types are a contract of their own, separate from the wire types of
//! [`crate::control`]: those change with the protocol (and are bincode, where
//! Rust's enum shapes cost nothing), these change only on purpose. Each one
//! is built from its wire type with `From`, so a new wire field shows up here
//! only when someone adds it here (and to `docs/json.md` and the fixtures).
//!
//! Conventions, everywhere:
//! - names and tags are `snake_case`; an enum is an object with a `kind`
//!   field (`{"kind": "crashed", "signal": 9, …}`), or a plain string when
//!   it carries nothing (`"state": "succeeded"`);
//! - times are RFC 3339 strings in UTC (`"2026-12-02T18:29:02.123Z"`),
//!   durations are numbers whose name says the unit (`timeout_ms`);
//! - text is a UTF-8 string; bytes that are not UTF-8 are `{"base64": "…"}`
//!   ([`Text`]);
//! - a task's input and output are the JSON values themselves; a payload in
//!   the native encoding is `{"native_base64": "…"}`.
//!
//! # Layout
//! - [`text`]: [`Text`], bytes as a string or `{"base64": …}`, and the serde
//!   adapter tasks use for their byte fields.
//! - [`time`]: Unix milliseconds as RFC 3339.
//! - [`job`]: a job record ([`Job`], [`Attempt`], [`Outcome`], [`InputFrom`]).
//! - [`event`]: one event of the event stream ([`Event`]).
//! - [`spec`]: a job spec read from JSON (batch lines, `POST /v1/jobs`).
//! - [`daemon`]: submit answers, workers and figures ([`Submitted`],
//!   [`Worker`], [`Stats`]).

pub mod daemon;
pub mod event;
pub mod job;
pub mod spec;
pub mod text;
pub mod time;

pub use daemon::{Stats, Submitted, TaskUsage, Worker};
pub use event::{Event, EventKind};
pub use job::{payload_json, Attempt, InputFrom, Job, JobState, JobTarget, Outcome};
pub use text::Text;
pub use time::rfc3339;

/// The JSON of a job record: what `status --json` prints and a completion
/// notification's body carries.
///
/// # Errors
/// Only if serde cannot represent the record (it always can).
pub fn record_json(r: &crate::control::JobRecord) -> Result<serde_json::Value, serde_json::Error> {
    serde_json::to_value(Job::from(r))
}
