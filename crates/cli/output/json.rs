//! The `--json` shapes the CLI prints beyond the wire types' own: a job
//! record (the shape of [`jobvisor_proto::json`]) and the daemon's figures.

use jobvisor_proto::control::{JobRecord, Stats};
use serde_json::{json, Value};

use crate::exit::{Failure, EXIT_ERROR};

/// A value that would not encode as JSON (not expected: the shapes are plain).
pub fn json_failure(e: serde_json::Error) -> Failure {
    Failure::new(EXIT_ERROR, anyhow::Error::new(e).context("encoding JSON"))
}

/// A record as JSON: the derived shape, but `state` as its lowercase name and
/// `input`/`output` shown by [`jobvisor_proto::json::payload_json`]. The daemon's completion
/// notifications send the same shape.
pub fn record_json(r: &JobRecord) -> Result<Value, Failure> {
    jobvisor_proto::json::record_json(r).map_err(json_failure)
}

/// Stats as JSON, with `jobs` as an object `{state: count}`.
pub fn stats_json(s: &Stats) -> Result<Value, Failure> {
    let mut v = serde_json::to_value(s).map_err(json_failure)?;
    if let Value::Object(obj) = &mut v {
        let jobs: serde_json::Map<String, Value> =
            s.jobs.iter().map(|(k, n)| (k.clone(), json!(n))).collect();
        obj.insert("jobs".to_owned(), Value::Object(jobs));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use jobvisor_proto::control::{JobState, Payload};

    use super::*;
    use crate::commands::format_status;

    #[test]
    fn json_shapes() {
        let rec = JobRecord {
            id: 7,
            task: "hash".into(),
            queue: "default".into(),
            priority: 0,
            state: JobState::Succeeded,
            max_attempts: 3,
            timeout_ms: None,
            stall_timeout_ms: None,
            input_from: Vec::new(),
            backoff_base_ms: 1000,
            backoff_max_ms: 60000,
            after: vec![],
            key: None,
            created_ms: 1,
            run_at_ms: 1,
            finished_ms: Some(2),
            input: Some(Payload::Json(r#"{"a":1}"#.into())),
            output: Some(Payload::Native(vec![1, 2])),
            error: None,
            attempts: vec![],
            notify_url: Some("http://127.0.0.1:1/hook".into()),
        };
        let v = record_json(&rec).unwrap();
        assert_eq!(v["notify_url"], json!("http://127.0.0.1:1/hook"));
        assert_eq!(v["input"], json!({"a": 1}));
        assert_eq!(v["output"], json!({"native_hex": "0102"}));
        assert_eq!(v["state"], json!("succeeded"));
        let s = format_status(&rec);
        assert!(s.contains("state:     succeeded"), "{s}");
        assert!(s.contains("<2 bytes, native encoding>"), "{s}");

        let stats = Stats {
            pid: 1,
            uptime_s: 2,
            workers: 3,
            jobs: vec![("queued".into(), 4)],
            submitted: 5,
            attempts_finished: 6,
            worker_restarts: 7,
            recovered: 8,
            degraded: false,
            restart_delay_ms: 0,
            tasks: Vec::new(),
            notify_delivered: 9,
            notify_failed: 10,
            notify_dropped: 11,
        };
        assert_eq!(stats_json(&stats).unwrap()["notify_dropped"], json!(11));
        assert_eq!(stats_json(&stats).unwrap()["jobs"], json!({"queued": 4}));
    }
}
