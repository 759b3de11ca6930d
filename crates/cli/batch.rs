//! `submit --batch FILE`: JSON lines, one job spec an object, all accepted
//! or none. Parsing is pure ([`parse_batch`]); only [`read_batch`] reads.

use std::io::Read;
use std::path::Path;

use jobvisor_proto::control::JobSpec;
use serde_json::Value;

use crate::exit::{Failure, EXIT_USAGE};

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

/// Parses one batch line: a JSON object read by the one job-spec parser
/// ([`jobvisor_proto::json::spec::job_spec`]), whose fields are listed in
/// `docs/json.md`. Unknown fields are refused (they are typos).
pub fn parse_batch_line(line: &str) -> Result<JobSpec, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    jobvisor_proto::json::spec::job_spec(&value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobvisor_proto::control::Payload;

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
