//! `--json` output: every command prints a type of [`jobvisor_proto::json`]
//! (documented in `docs/json.md`), never a wire type.

use crate::exit::{Failure, EXIT_ERROR};

/// A value that would not encode as JSON (not expected: the shapes are plain).
pub fn json_failure(e: serde_json::Error) -> Failure {
    Failure::new(EXIT_ERROR, anyhow::Error::new(e).context("encoding JSON"))
}

#[cfg(test)]
mod tests {
    use jobvisor_proto::control::{JobRecord, JobState, Payload};

    use crate::commands::format_status;

    #[test]
    fn status_text_names_state_and_native_payloads() {
        let rec = JobRecord {
            id: 7,
            task: "hash".into(),
            queue: "default".into(),
            priority: 0,
            state: JobState::Succeeded,
            max_attempts: 3,
            max_crashes: Some(3),
            budget_from: 1,
            epoch: 0,
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
        let s = format_status(&rec);
        assert!(s.contains("state:     succeeded"), "{s}");
        assert!(s.contains("<2 bytes, native encoding>"), "{s}");
    }
}
