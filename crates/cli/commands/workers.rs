//! `workers`: the worker processes, as a table or JSON.

use std::path::Path;

use jobvisor_proto::control::WorkerRow;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::table::table;
use crate::output::{emit, emit_json};

/// Lists the workers.
pub async fn workers(json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let rows: Vec<WorkerRow> = client.workers().await?;
    if json {
        let list: Vec<_> = rows
            .iter()
            .map(jobvisor_proto::json::Worker::from)
            .collect();
        emit_json(&list)?;
        return Ok(EXIT_OK);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|w| {
            vec![
                w.id.to_string(),
                w.pid.to_string(),
                w.state.as_str().to_owned(),
                w.in_flight.to_string(),
                w.calls_done.to_string(),
                w.running_job
                    .map_or_else(|| "-".to_string(), |j| j.to_string()),
            ]
        })
        .collect();
    emit(&table(
        &["ID", "PID", "STATE", "IN_FLIGHT", "DONE", "RUNNING_JOB"],
        &cells,
    ))?;
    Ok(EXIT_OK)
}
