//! `ping`: whether the daemon answers, optionally waiting for it to come up.

use std::path::Path;
use std::time::Duration;

use jobvisor_client::{Client, ClientError, ErrorKind};
use serde_json::json;
use tokio::time::Instant;

use super::{connect_failure, PING_RETRY};
use crate::exit::{CmdResult, Failure, EXIT_OK};
use crate::output::{emit, emit_json};

/// Pings; with `wait`, retries every [`PING_RETRY`] while the daemon is
/// unreachable or busy (all its connection slots taken: a slot frees when a
/// client leaves).
pub async fn ping(wait: Option<Duration>, json: bool, socket: &Path) -> CmdResult {
    let deadline = wait.map(|w| Instant::now() + w);
    let may_retry = || deadline.is_some_and(|d| Instant::now() + PING_RETRY < d);
    let pid = loop {
        match Client::connect(socket).await {
            Ok(mut client) => match client.ping().await {
                Ok(pid) => break pid,
                Err(e) if is_busy(&e) && may_retry() => {}
                Err(e) => return Err(Failure::from(e)),
            },
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Io(_))) => {
                if !may_retry() {
                    return Err(connect_failure(e, socket));
                }
            }
            Err(e) => return Err(Failure::from(e)),
        }
        tokio::time::sleep(PING_RETRY).await;
    };
    if json {
        emit_json(&json!({ "pid": pid }))?;
    } else {
        emit(&format!("pong from pid {pid}\n"))?;
    }
    Ok(EXIT_OK)
}

/// The daemon refused us for now: every connection slot is taken (or its
/// request buffers are full), or it closed us unanswered (it answers only a
/// few refusals at a time); a later attempt may get in.
fn is_busy(e: &ClientError) -> bool {
    match e {
        ClientError::Server(e) => e.kind == ErrorKind::LimitReached,
        ClientError::Io(_) => true,
        _ => false,
    }
}
