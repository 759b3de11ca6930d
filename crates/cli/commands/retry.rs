//! `retry`: re-queue a finished job that did not succeed, with fresh budgets.

use std::path::Path;

use serde_json::json;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::{emit, emit_json};

/// Re-queues job `id`; with `json`, prints `{"id": N, "state": "queued"}`.
pub async fn retry(id: u64, json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    client.retry(id).await?;
    if json {
        emit_json(&json!({ "id": id, "state": "queued" }))?;
    } else {
        emit(&format!("re-queued job {id}\n"))?;
    }
    Ok(EXIT_OK)
}
