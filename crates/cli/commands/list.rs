//! `list`: jobs, newest first, as a table (with their times) or JSON; a
//! page that may not be all says so on stderr, and how to see more.

use std::path::Path;

use jobvisor_proto::control::{JobRecord, JobState};

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::table::table;
use crate::output::text::{one_line, truncate_chars};
use crate::output::time::{fmt_ms, fmt_unix_secs, now_ms};
use crate::output::{emit, emit_json};

/// Longest error shown in a `list` row.
const LIST_ERROR_CHARS: usize = 60;

/// What `list` shows: the filters and the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub state: Option<JobState>,
    pub queue: Option<String>,
    pub limit: u32,
    pub before: Option<u64>,
}

/// Lists jobs matching the filters; tells on stderr when more are older.
pub async fn list(q: ListQuery, json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let records = client
        .list_page(q.state, q.queue.clone(), q.before, q.limit)
        .await?;
    // A short page is all there is; a full one may have more behind it.
    let more = match records.last() {
        Some(last) if records.len() >= q.limit as usize => !client
            .list_page(q.state, q.queue.clone(), Some(last.id), 1)
            .await?
            .is_empty(),
        _ => false,
    };
    if json {
        let list: Vec<_> = records
            .iter()
            .map(jobvisor_proto::json::Job::from)
            .collect();
        emit_json(&list)?;
    } else {
        let now = now_ms();
        let rows: Vec<Vec<String>> = records.iter().map(|r| row(r, now)).collect();
        emit(&table(
            &[
                "ID", "STATE", "TASK", "QUEUE", "ATTEMPTS", "CREATED", "FINISHED", "DURATION",
                "ERROR",
            ],
            &rows,
        ))?;
    }
    if let (true, Some(last)) = (more, records.last()) {
        eprintln!("jobvisor: {}", more_hint(records.len(), last.id));
    }
    Ok(EXIT_OK)
}

/// What a full page says on stderr: that older jobs exist, and how to see them.
pub fn more_hint(shown: usize, last_id: u64) -> String {
    let noun = if shown == 1 { "job" } else { "jobs" };
    format!(
        "showing {shown} {noun}; older ones exist: see them with --before {last_id}, or more at once with --limit N"
    )
}

/// One table row of `r`, `now_ms` being now (for a running job's duration).
fn row(r: &JobRecord, now_ms: u64) -> Vec<String> {
    vec![
        r.id.to_string(),
        r.state.as_str().to_owned(),
        r.task.clone(),
        r.queue.clone(),
        attempts(r),
        fmt_unix_secs(r.created_ms),
        r.finished_ms
            .map(fmt_unix_secs)
            .unwrap_or_else(|| "-".into()),
        duration(r, now_ms)
            .map(fmt_ms)
            .unwrap_or_else(|| "-".into()),
        r.error
            .as_deref()
            .map(|e| truncate_chars(&one_line(e), LIST_ERROR_CHARS))
            .unwrap_or_default(),
    ]
}

/// The ATTEMPTS column: those of the current budget against the attempt
/// budget, and all of them after a `retry` ("1/3 (6)").
fn attempts(r: &JobRecord) -> String {
    let (since, all) = (super::status::budget_attempts(r), r.attempts.len());
    if since == all {
        format!("{all}/{}", r.max_attempts)
    } else {
        format!("{since}/{} ({all})", r.max_attempts)
    }
}

/// How long the job ran: from its first attempt's start to its end, or to
/// `now_ms` while it runs. `None` before it started, and for a job that
/// ended without an attempt (cancelled while queued).
pub fn duration(r: &JobRecord, now_ms: u64) -> Option<u64> {
    let start = r.attempts.first()?.started_ms;
    let end = match (r.finished_ms, r.state) {
        (Some(end), _) => end,
        (None, JobState::Running) => now_ms,
        (None, _) => r.attempts.last()?.finished_ms?,
    };
    Some(end.saturating_sub(start))
}

#[cfg(test)]
mod tests {
    use jobvisor_proto::control::{Attempt, AttemptOutcome};

    use super::*;

    fn record(
        state: JobState,
        attempts: &[(u64, Option<u64>)],
        finished: Option<u64>,
    ) -> JobRecord {
        JobRecord {
            id: 7,
            task: "noop".into(),
            queue: "default".into(),
            priority: 0,
            state,
            max_attempts: 3,
            max_crashes: Some(3),
            budget_from: 1,
            epoch: 0,
            timeout_ms: None,
            stall_timeout_ms: None,
            input_from: vec![],
            backoff_base_ms: 1,
            backoff_max_ms: 1,
            after: vec![],
            key: None,
            created_ms: 1_000,
            run_at_ms: 1_000,
            finished_ms: finished,
            input: None,
            output: None,
            error: None,
            attempts: attempts
                .iter()
                .enumerate()
                .map(|(i, (s, f))| Attempt {
                    number: i as u32 + 1,
                    worker_pid: Some(1),
                    started_ms: *s,
                    finished_ms: *f,
                    outcome: AttemptOutcome::Ok,
                })
                .collect(),
            notify_url: None,
        }
    }

    #[test]
    fn a_jobs_duration_runs_from_its_first_start() {
        let done = record(
            JobState::Succeeded,
            &[(2_000, Some(2_500)), (3_000, Some(4_500))],
            Some(4_500),
        );
        assert_eq!(duration(&done, 9_999), Some(2_500));
        let running = record(JobState::Running, &[(2_000, None)], None);
        assert_eq!(duration(&running, 5_000), Some(3_000));
        let retrying = record(JobState::Retrying, &[(2_000, Some(2_100))], None);
        assert_eq!(duration(&retrying, 5_000), Some(100));
        let queued = record(JobState::Queued, &[], None);
        assert_eq!(duration(&queued, 5_000), None);
        let row = row(&done, 0);
        assert_eq!(row[7], "2.5s");
        assert_eq!(row[6], fmt_unix_secs(4_500));
    }

    #[test]
    fn the_more_hint_names_where_to_go_on() {
        let h = more_hint(50, 951);
        assert!(
            h.contains("showing 50 jobs") && h.contains("--before 951") && h.contains("--limit"),
            "{h}"
        );
    }
}
