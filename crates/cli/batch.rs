//! `submit --batch FILE`: JSON lines, one job spec an object, all accepted
//! or none. Parsing is pure ([`parse_batch`]); only [`read_batch`] reads.

use std::io::Read;
use std::path::Path;

use jobvisor_proto::control::{JobSpec, Payload};
use serde_json::Value;

use crate::exit::{Failure, EXIT_USAGE};
use crate::parse::{parse_input_from, parse_job_ref};

/// Reads a JSON-lines batch file (`-` is stdin).
pub fn read_batch(path: &Path) -> Result<Vec<JobSpec>, Failure> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).map_err(|e| {
            Failure::new(
                EXIT_USAGE,
                anyhow::Error::new(e).context("reading the batch from stdin"),
            )
        })?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| {
            let what = format!("reading the batch {}", path.display());
            Failure::new(EXIT_USAGE, anyhow::Error::new(e).context(what))
        })?
    };
    let name = if path == Path::new("-") {
        "stdin".to_owned()
    } else {
        path.display().to_string()
    };
    parse_batch(&text).map_err(|e| Failure::usage(format!("batch {name}: {e}")))
}

/// Parses a whole JSON-lines batch; blank lines are skipped. Errors name the
/// 1-based line number.
pub fn parse_batch(text: &str) -> Result<Vec<JobSpec>, String> {
    let mut specs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let spec = parse_batch_line(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err("no jobs in the batch".to_owned());
    }
    Ok(specs)
}

/// Parses one batch line: a JSON object with `task` and `input` (any JSON
/// value, sent as its JSON text) and optional `queue`, `priority`,
/// `max_attempts`, `max_crashes`, `backoff_base_ms`, `backoff_max_ms`, `timeout_ms`,
/// `delay_ms`, `after`, `key`, `notify_url`. Unknown fields are refused (they are typos).
pub fn parse_batch_line(line: &str) -> Result<JobSpec, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err("expected a JSON object like {\"task\": ..., \"input\": ...}".to_owned());
    };
    const KNOWN: &[&str] = &[
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
    if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "unknown field `{unknown}` (known: {})",
            KNOWN.join(", ")
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
    // The daemon checks the range, naming it.
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
        Some(Value::Array(items)) => items
            .iter()
            .map(input_ref_from_json)
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("field `input_from` must be an array".to_owned()),
    };
    Ok(spec)
}

/// `{"job": 12 | "#2", "pointer": "/x", "field": "f"}`, or the CLI's string
/// form `"12:/x@f"`; `#N` is the N-th line (1-based) of the same batch.
pub fn input_ref_from_json(v: &Value) -> Result<jobvisor_proto::control::InputRef, String> {
    use jobvisor_proto::control::{InputRef, JobRef};
    if let Some(s) = v.as_str() {
        return parse_input_from(s);
    }
    let obj = v
        .as_object()
        .ok_or("each `input_from` entry must be an object or a string")?;
    let job = match obj.get("job") {
        Some(Value::Number(n)) => JobRef::Id(n.as_u64().ok_or("`job` must be a job id")?),
        Some(Value::String(s)) => parse_job_ref(s)?,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_line_full() {
        let spec = parse_batch_line(
            r#"{"task":"hash","input":{"data":[1,2]},"queue":"q","priority":-3,"max_attempts":4,
               "max_crashes":2,"backoff_base_ms":10,"backoff_max_ms":100,"timeout_ms":5000,"delay_ms":7,
               "after":[1,2],"key":"k1"}"#,
        )
        .unwrap();
        assert_eq!(spec.task, "hash");
        assert_eq!(spec.input, Payload::Json(r#"{"data":[1,2]}"#.to_owned()));
        assert_eq!(spec.queue.as_deref(), Some("q"));
        assert_eq!(spec.priority, -3);
        assert_eq!(spec.max_attempts, Some(4));
        assert_eq!(spec.max_crashes, Some(2));
        assert_eq!(spec.backoff_base_ms, Some(10));
        assert_eq!(spec.backoff_max_ms, Some(100));
        assert_eq!(spec.timeout_ms, Some(5000));
        assert_eq!(spec.delay_ms, Some(7));
        assert_eq!(spec.after, vec![1, 2]);
        assert_eq!(spec.key.as_deref(), Some("k1"));
    }

    #[test]
    fn batch_line_minimal_and_scalar_inputs() {
        let spec = parse_batch_line(r#"{"task":"noop","input":null}"#).unwrap();
        assert_eq!(spec, JobSpec::new("noop", Payload::Json("null".to_owned())));
        let spec = parse_batch_line(r#"{"task":"sleep","input":"x\"y"}"#).unwrap();
        assert_eq!(spec.input, Payload::Json(r#""x\"y""#.to_owned()));
        let spec = parse_batch_line(r#"{"task":"sleep","input":42,"queue":null}"#).unwrap();
        assert_eq!(spec.input, Payload::Json("42".to_owned()));
        assert_eq!(spec.queue, None);
    }

    #[test]
    fn batch_line_errors() {
        let cases: &[(&str, &str)] = &[
            ("{", "not valid JSON"),
            ("[1]", "expected a JSON object"),
            (r#"{"input":1}"#, "missing field `task`"),
            (r#"{"task":"x"}"#, "missing field `input`"),
            (r#"{"task":1,"input":1}"#, "`task` must be a string"),
            (r#"{"task":"","input":1}"#, "`task` is empty"),
            (r#"{"task":"x","input":1,"prio":1}"#, "unknown field `prio`"),
            (r#"{"task":"x","input":1,"priority":"high"}"#, "`priority`"),
            (
                r#"{"task":"x","input":1,"priority":3000000000}"#,
                "`priority`",
            ),
            (
                r#"{"task":"x","input":1,"max_attempts":-1}"#,
                "`max_attempts`",
            ),
            (
                r#"{"task":"x","input":1,"max_attempts":5000000000}"#,
                "`max_attempts` is too large",
            ),
            (r#"{"task":"x","input":1,"timeout_ms":1.5}"#, "`timeout_ms`"),
            (r#"{"task":"x","input":1,"after":3}"#, "`after`"),
            (r#"{"task":"x","input":1,"after":["a"]}"#, "`after`"),
            (
                r#"{"task":"x","input":1,"key":5}"#,
                "`key` must be a string",
            ),
        ];
        for (line, want) in cases {
            let e = parse_batch_line(line).expect_err(line);
            assert!(e.contains(want), "{line}: got `{e}`, want `{want}`");
        }
    }

    #[test]
    fn batch_names_the_line() {
        let text = "{\"task\":\"noop\",\"input\":null}\n\n   \n{\"task\":\"noop\"}\n";
        let e = parse_batch(text).unwrap_err();
        assert!(e.starts_with("line 4: "), "{e}");
        assert!(e.contains("missing field `input`"), "{e}");

        let e = parse_batch("{\"task\":\"noop\",\"input\":1}\nnot json\n").unwrap_err();
        assert!(e.starts_with("line 2: not valid JSON"), "{e}");

        assert_eq!(parse_batch("\n \n").unwrap_err(), "no jobs in the batch");

        let specs = parse_batch(
            "{\"task\":\"a\",\"input\":1}\r\n{\"task\":\"b\",\"input\":[2]}\n\n{\"task\":\"c\",\"input\":{}}",
        )
        .unwrap();
        let tasks: Vec<&str> = specs.iter().map(|s| s.task.as_str()).collect();
        assert_eq!(tasks, ["a", "b", "c"]);
    }
}
