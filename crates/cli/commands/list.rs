//! `list`: jobs, newest first, as a table or JSON.

use std::path::Path;

use jobvisor_proto::control::JobState;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::table::table;
use crate::output::text::{one_line, truncate_chars};
use crate::output::{emit, emit_json};

/// Longest error shown in a `list` row.
const LIST_ERROR_CHARS: usize = 60;

/// Lists jobs matching the filters.
pub async fn list(
    state: Option<JobState>,
    queue: Option<String>,
    limit: u32,
    json: bool,
    socket: &Path,
) -> CmdResult {
    let mut client = connect(socket).await?;
    let records = client.list(state, queue, limit).await?;
    if json {
        let list: Vec<_> = records
            .iter()
            .map(jobvisor_proto::json::Job::from)
            .collect();
        emit_json(&list)?;
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.as_str().to_owned(),
                r.task.clone(),
                r.queue.clone(),
                format!("{}/{}", r.attempts.len(), r.max_attempts),
                r.error
                    .as_deref()
                    .map(|e| truncate_chars(&one_line(e), LIST_ERROR_CHARS))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    emit(&table(
        &["ID", "STATE", "TASK", "QUEUE", "ATTEMPTS", "ERROR"],
        &rows,
    ))?;
    Ok(EXIT_OK)
}
