//! `events`: the recent job and worker events, and with `--follow` new
//! ones as they happen, one line each.

use std::path::Path;
use std::time::Duration;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::emit;
use crate::output::json::json_failure;
use crate::output::time::{fmt_unix_ms, now_ms};

/// Prints the kept events of the last `since` (all for `None`), then with
/// `follow` new ones until the daemon closes the stream.
pub async fn events(follow: bool, since: Option<Duration>, json: bool, socket: &Path) -> CmdResult {
    use jobvisor_client::EventKind;
    let since_ms = since.map(|d| since_ms(now_ms(), d));
    let client = connect(socket).await?;
    let mut stream = client.events(since_ms, follow).await?;
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

/// The Unix ms `ago` before `now_ms` (0 when that is before 1970).
fn since_ms(now_ms: u64, ago: Duration) -> u64 {
    now_ms.saturating_sub(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_counts_back_from_now() {
        assert_eq!(since_ms(10_000, Duration::from_secs(3)), 7_000);
        assert_eq!(since_ms(10_000, Duration::from_secs(30)), 0);
        assert_eq!(since_ms(10_000, Duration::ZERO), 10_000);
    }
}
