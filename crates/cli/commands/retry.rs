//! `retry`: re-queue a finished job that did not succeed, with fresh budgets.

use std::path::Path;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::emit;

/// Re-queues job `id`.
pub async fn retry(id: u64, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    client.retry(id).await?;
    emit(&format!("re-queued job {id}\n"))?;
    Ok(EXIT_OK)
}
