//! `cancel`: stop a queued or running job.

use std::path::Path;

use serde_json::json;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::{emit, emit_json};

/// Cancels job `id`; with `json`, prints `{"id": N, "cancelled": true}`.
pub async fn cancel(id: u64, json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    client.cancel(id).await?;
    if json {
        emit_json(&json!({ "id": id, "cancelled": true }))?;
    } else {
        emit(&format!("cancelled job {id}\n"))?;
    }
    Ok(EXIT_OK)
}
