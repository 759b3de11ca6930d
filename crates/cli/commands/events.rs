//! `events`: job and worker events as they happen, one line each.

use std::path::Path;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::emit;
use crate::output::json::json_failure;
use crate::output::time::fmt_unix_ms;

/// Streams events until the daemon closes the stream.
pub async fn events(json: bool, socket: &Path) -> CmdResult {
    use jobvisor_client::EventKind;
    let client = connect(socket).await?;
    let mut stream = client.events().await?;
    while let Some(ev) = stream.next().await? {
        let line = if json {
            let v = jobvisor_proto::json::Event::from(&ev);
            serde_json::to_string(&v).map_err(json_failure)? + "\n"
        } else {
            let at = fmt_unix_ms(ev.at_ms);
            match ev.kind {
                EventKind::Job {
                    id,
                    task,
                    state,
                    attempt,
                    worker_pid,
                    error,
                } => {
                    let mut l = format!("{at} job {id} {task} {}", state.as_str());
                    if let Some(a) = attempt {
                        l.push_str(&format!(" attempt {a}"));
                    }
                    if let Some(p) = worker_pid {
                        l.push_str(&format!(" pid {p}"));
                    }
                    if let Some(e) = error {
                        l.push_str(&format!(": {e}"));
                    }
                    l + "\n"
                }
                EventKind::WorkerStarted { pid } => format!("{at} worker {pid} started\n"),
                EventKind::WorkerExited { pid, status } => {
                    format!("{at} worker {pid} exited: {status}\n")
                }
                EventKind::Lagged { missed } => {
                    format!("{at} (missed {missed} events: this reader was too slow)\n")
                }
            }
        };
        emit(&line)?;
    }
    Ok(EXIT_OK)
}
