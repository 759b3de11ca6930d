//! `cancel`: stop a queued or running job.

use std::path::Path;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::emit;

/// Cancels job `id`.
pub async fn cancel(id: u64, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    client.cancel(id).await?;
    emit(&format!("cancelled job {id}\n"))?;
    Ok(EXIT_OK)
}
