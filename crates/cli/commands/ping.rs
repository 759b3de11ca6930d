//! `ping`: whether the daemon answers, optionally waiting for it to come up.

use std::path::Path;
use std::time::Duration;

use jobvisor_client::{Client, ClientError};
use serde_json::json;
use tokio::time::Instant;

use super::{connect_failure, PING_RETRY};
use crate::exit::{CmdResult, Failure, EXIT_OK};
use crate::output::{emit, emit_json};

/// Pings; with `wait`, retries every [`PING_RETRY`] while unreachable.
pub async fn ping(wait: Option<Duration>, json: bool, socket: &Path) -> CmdResult {
    let deadline = wait.map(|w| Instant::now() + w);
    let mut client = loop {
        match Client::connect(socket).await {
            Ok(c) => break c,
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Io(_))) => {
                if deadline.is_some_and(|d| Instant::now() + PING_RETRY < d) {
                    tokio::time::sleep(PING_RETRY).await;
                    continue;
                }
                return Err(connect_failure(e, socket));
            }
            Err(e) => return Err(Failure::from(e)),
        }
    };
    let pid = client.ping().await?;
    if json {
        emit_json(&json!({ "pid": pid }))?;
    } else {
        emit(&format!("pong from pid {pid}\n"))?;
    }
    Ok(EXIT_OK)
}
