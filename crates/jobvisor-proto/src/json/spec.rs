//! A job spec as JSON: one line of `submit --batch FILE` and the body of
//! `POST /v1/jobs`. One parser for both, so a field means the same thing
//! everywhere, and an unknown field (a typo) is refused, naming it.

use serde_json::Value;

use crate::control::{InputRef, JobRef, JobSpec, Payload};

/// The fields a job spec may have.
pub const FIELDS: &[&str] = &[
    "task",
    "input",
    "queue",
    "priority",
    "max_attempts",
    "max_crashes",
    "backoff_base_ms",
    "backoff_max_ms",
    "timeout_ms",
    "stall_timeout_ms",
    "delay_ms",
    "after",
    "key",
    "input_from",
    "notify_url",
];

/// A job spec from a JSON object with `task` and `input` (any JSON
/// value, sent as its JSON text) and optional `queue`, `priority`,
/// `max_attempts`, `backoff_base_ms`, `backoff_max_ms`, `timeout_ms`,
/// `delay_ms`, `after`, `key`, `notify_url`. Unknown fields are refused (they are typos).
pub fn job_spec(value: &Value) -> Result<JobSpec, String> {
    let Value::Object(obj) = value else {
        return Err("expected a JSON object like {\"task\": ..., \"input\": ...}".to_owned());
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{unknown}` (known: {})",
            FIELDS.join(", ")
        ));
    }

    let task = match obj.get("task") {
        Some(Value::String(t)) if !t.is_empty() => t.clone(),
        Some(Value::String(_)) => return Err("field `task` is empty".to_owned()),
        Some(_) => return Err("field `task` must be a string".to_owned()),
        None => return Err("missing field `task`".to_owned()),
    };
    let input = obj
        .get("input")
        .ok_or_else(|| "missing field `input` (use null for none)".to_owned())?
        .to_string();

    let opt_u64 = |name: &str| -> Result<Option<u64>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("field `{name}` must be a non-negative integer")),
        }
    };
    let opt_string = |name: &str| -> Result<Option<String>, String> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("field `{name}` must be a string")),
        }
    };

    let mut spec = JobSpec::new(task, Payload::Json(input));
    spec.queue = opt_string("queue")?;
    spec.key = opt_string("key")?;
    spec.notify_url = opt_string("notify_url")?;
    spec.priority = match obj.get("priority") {
        None | Some(Value::Null) => 0,
        Some(v) => v
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| "field `priority` must be a 32-bit integer".to_owned())?,
    };
    spec.max_attempts = match opt_u64("max_attempts")? {
        None => None,
        Some(n) => {
            Some(u32::try_from(n).map_err(|_| "field `max_attempts` is too large".to_owned())?)
        }
    };
    spec.max_crashes = opt_u64("max_crashes")?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    spec.backoff_base_ms = opt_u64("backoff_base_ms")?;
    spec.backoff_max_ms = opt_u64("backoff_max_ms")?;
    spec.timeout_ms = opt_u64("timeout_ms")?;
    spec.stall_timeout_ms = opt_u64("stall_timeout_ms")?;
    spec.delay_ms = opt_u64("delay_ms")?;
    spec.after = match obj.get("after") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_u64()
                    .ok_or_else(|| "field `after` must be an array of job ids".to_owned())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("field `after` must be an array of job ids".to_owned()),
    };
    spec.input_from = match obj.get("input_from") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.iter().map(input_ref).collect::<Result<_, _>>()?,
        Some(_) => return Err("field `input_from` must be an array".to_owned()),
    };
    Ok(spec)
}

/// `{"job": 12 | "#2", "pointer": "/x", "field": "f"}`, or the CLI's string
/// form `"12:/x@f"`; `#N` is the N-th line (1-based) of the same batch.
pub fn input_ref(v: &Value) -> Result<InputRef, String> {
    if let Some(s) = v.as_str() {
        return input_from(s);
    }
    let obj = v
        .as_object()
        .ok_or("each `input_from` entry must be an object or a string")?;
    let job = match obj.get("job") {
        Some(Value::Number(n)) => JobRef::Id(n.as_u64().ok_or("`job` must be a job id")?),
        Some(Value::String(s)) => job_ref(s)?,
        _ => {
            return Err(
                "each `input_from` entry needs `job`: an id or \"#N\" (a line of this batch)"
                    .into(),
            )
        }
    };
    let text = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("`{k}` must be a string")),
        }
    };
    Ok(InputRef {
        job,
        pointer: text("pointer")?,
        field: text("field")?,
    })
}

/// A job id, or `#N`: the N-th line (1-based) of the same batch.
pub fn job_ref(s: &str) -> Result<JobRef, String> {
    if let Some(n) = s.strip_prefix('#') {
        let n: u32 = n
            .parse()
            .map_err(|_| format!("bad batch reference {s:?}"))?;
        if n == 0 {
            return Err("batch references count lines from #1".into());
        }
        return Ok(JobRef::Batch(n - 1));
    }
    s.parse()
        .map(JobRef::Id)
        .map_err(|_| format!("bad job reference {s:?} (an id, or #N for a line of the batch)"))
}

/// `ID[:/json/pointer][@field]` (ID may be `#N` in a batch).
pub fn input_from(s: &str) -> Result<InputRef, String> {
    let (rest, field) = match s.rsplit_once('@') {
        Some((r, f)) if !f.is_empty() => (r, Some(f.to_string())),
        Some(_) => return Err(format!("empty field after '@' in {s:?}")),
        None => (s, None),
    };
    let (job, pointer) = match rest.split_once(':') {
        Some((j, p)) => (j, Some(p.to_string())),
        None => (rest, None),
    };
    Ok(InputRef {
        job: job_ref(job)?,
        pointer,
        field,
    })
}
