//! `wait`: until jobs finish or a deadline passes, and the waiting that
//! `submit --wait` shares (chunked requests, a progress bar, the summary).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use jobvisor_client::Client;
use jobvisor_proto::control::{JobRecord, JobState};
use tokio::time::Instant;

use super::{connect, PING_RETRY};

use crate::exit::{worst_exit_code, CmdResult, Failure, EXIT_ERROR};
use crate::output::text::one_line;
use crate::output::{emit, emit_json};

/// Per-request wait while a progress bar is shown.
const WAIT_STEP: Duration = Duration::from_millis(200);

/// Most ids in one `Wait` request.
const WAIT_CHUNK: usize = 1024;

/// `ids` without repeats, in first-seen order.
pub fn unique(ids: &[u64]) -> Vec<u64> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

/// A progress bar of `len` jobs for a terminal.
pub fn new_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} finished {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Waits until every job is terminal or `deadline` passes, and returns the
/// latest record of each distinct id, in first-seen order. With a bar, asks in
/// short steps so the bar moves as jobs finish.
pub async fn wait_all(
    client: &mut Client,
    ids: &[u64],
    deadline: Option<Instant>,
    bar: Option<&ProgressBar>,
) -> Result<Vec<JobRecord>, Failure> {
    let order = unique(ids);
    let mut latest: HashMap<u64, JobRecord> = HashMap::with_capacity(order.len());
    let mut pending = order.clone();
    let mut finished: u64 = 0;
    let mut unsuccessful: u64 = 0;
    loop {
        let step = bar.map(|_| WAIT_STEP);
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = match (remaining, step) {
            (Some(r), Some(s)) => Some(r.min(s)),
            (r, s) => r.or(s),
        };
        let mut still = Vec::new();
        for chunk in pending.chunks(WAIT_CHUNK) {
            let records = client.wait(chunk.to_vec(), timeout).await?;
            let mut by_id: HashMap<u64, JobRecord> =
                records.into_iter().map(|r| (r.id, r)).collect();
            for id in chunk {
                let r = by_id.remove(id).ok_or_else(|| {
                    Failure::msg(
                        EXIT_ERROR,
                        format!("the daemon's answer to wait lacks job {id}"),
                    )
                })?;
                if r.state.is_terminal() {
                    finished += 1;
                    if r.state != JobState::Succeeded {
                        unsuccessful += 1;
                    }
                } else {
                    still.push(*id);
                }
                latest.insert(*id, r);
            }
            if let Some(bar) = bar {
                bar.set_position(finished);
                if unsuccessful > 0 {
                    bar.set_message(format!("({unsuccessful} not succeeded)"));
                }
            }
        }
        pending = still;
        if pending.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if timeout.is_none() {
            // Asked without a timeout yet got unfinished jobs: do not spin.
            tokio::time::sleep(PING_RETRY).await;
        }
    }
    Ok(order.iter().filter_map(|id| latest.remove(id)).collect())
}

/// `3 jobs: 2 succeeded, 1 failed`: counts by state.
pub fn summarize(records: &[JobRecord]) -> String {
    let order = [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            let n = records.iter().filter(|r| r.state == *s).count();
            (n > 0).then(|| format!("{n} {}", s.as_str()))
        })
        .collect();
    let noun = if records.len() == 1 { "job" } else { "jobs" };
    format!("{} {noun}: {}", records.len(), parts.join(", "))
}

/// Why job `r` did not succeed (or that it has not finished), with its error.
pub fn describe_unsuccessful(r: &JobRecord) -> String {
    let what = match r.state {
        JobState::Queued | JobState::Running | JobState::Retrying => {
            format!("job {} is not finished (state {})", r.id, r.state.as_str())
        }
        s => format!("job {} {}", r.id, s.as_str()),
    };
    match &r.error {
        Some(e) => format!("{what}: {e}"),
        None => what,
    }
}

/// Waits for `ids` up to `timeout`; the exit code is the worst job's.
pub async fn wait(
    ids: Vec<u64>,
    timeout: Option<Duration>,
    json: bool,
    socket: &Path,
) -> CmdResult {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut client = connect(socket).await?;
    let records = wait_all(&mut client, &ids, deadline, None).await?;
    print_records(&records, json)?;
    Ok(worst_exit_code(records.iter().map(|r| r.state)))
}

/// What `wait` prints: the records as JSON, or `ID STATE[: error]` lines.
fn print_records(records: &[JobRecord], json: bool) -> Result<(), Failure> {
    if json {
        let list: Vec<_> = records
            .iter()
            .map(jobvisor_proto::json::Job::from)
            .collect();
        return emit_json(&list);
    }
    let mut text = String::new();
    for r in records {
        text.push_str(&format!("{} {}", r.id, r.state.as_str()));
        if let (false, Some(e)) = (r.state == JobState::Succeeded, &r.error) {
            text.push_str(&format!(": {}", one_line(e)));
        }
        text.push('\n');
    }
    emit(&text)
}

/// Jobs listed in one request while `wait --all` collects the unfinished.
const LIST_PAGE: u32 = 1_000;

/// The ids of every unfinished job (queued, running, retrying), in pages.
async fn unfinished_ids(client: &mut Client) -> Result<Vec<u64>, Failure> {
    let mut ids = Vec::new();
    for state in [JobState::Queued, JobState::Running, JobState::Retrying] {
        let mut before = None;
        loop {
            let page = client
                .list_page(Some(state), None, before, LIST_PAGE)
                .await?;
            ids.extend(page.iter().map(|r| r.id));
            match page.last() {
                Some(last) if page.len() >= LIST_PAGE as usize => before = Some(last.id),
                _ => break,
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// `wait --all`: until no job is unfinished, jobs submitted meanwhile
/// included (the unfinished are listed again once those known have
/// finished), or `timeout`. Prints every job waited for; the exit code is
/// the worst one's (0 when there was none).
pub async fn wait_for_every_job(timeout: Option<Duration>, json: bool, socket: &Path) -> CmdResult {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut client = connect(socket).await?;
    let mut records: Vec<JobRecord> = Vec::new();
    let mut seen = HashSet::new();
    loop {
        let ids = unfinished_ids(&mut client).await?;
        // A job listed again is one that finished and was retried since.
        let fresh: Vec<u64> = ids.into_iter().filter(|id| seen.insert(*id)).collect();
        if fresh.is_empty() && !records.iter().any(|r| !r.state.is_terminal()) {
            break;
        }
        let mut pending: Vec<u64> = records
            .iter()
            .filter(|r| !r.state.is_terminal())
            .map(|r| r.id)
            .collect();
        pending.extend(&fresh);
        let done = wait_all(&mut client, &pending, deadline, None).await?;
        for r in done {
            match records.iter_mut().find(|k| k.id == r.id) {
                Some(k) => *k = r,
                None => records.push(r),
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    records.sort_by_key(|r| r.id);
    print_records(&records, json)?;
    Ok(worst_exit_code(records.iter().map(|r| r.state)))
}

#[cfg(test)]
mod tests {
    use jobvisor_proto::control::{JobSpec, Payload};

    use super::*;
    use crate::commands::mock;

    #[tokio::test]
    async fn wait_all_in_chunks_moves_the_bar() {
        let m = mock::start("chunks");
        let n = WAIT_CHUNK * 2 + 5;
        let specs: Vec<JobSpec> = (0..n)
            .map(|_| JobSpec::new("ok", Payload::Json("1".to_owned())))
            .collect();
        let mut client = Client::connect(&m.sock).await.unwrap();
        let ids: Vec<u64> = client
            .submit(specs)
            .await
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        // The mock finishes one job per timed wait: shrink the work by
        // finishing most jobs directly, leaving a few per chunk for the loop.
        {
            let mut st = m.state.lock().unwrap();
            for (i, j) in st.jobs.values_mut().enumerate() {
                if i % WAIT_CHUNK >= 3 {
                    j.state = JobState::Succeeded;
                }
            }
        }
        let bar = ProgressBar::hidden();
        bar.set_length(n as u64);
        let mut with_dup = ids.clone();
        with_dup.push(ids[0]);
        let records = wait_all(&mut client, &with_dup, None, Some(&bar))
            .await
            .unwrap();
        assert_eq!(records.len(), n, "one record per distinct id");
        assert!(records.iter().all(|r| r.state == JobState::Succeeded));
        assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
        assert_eq!(bar.position(), n as u64);
        let waits = m
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter_map(|r| match r {
                jobvisor_proto::control::Request::Wait { ids, timeout_ms } => {
                    Some((ids.len(), *timeout_ms))
                }
                _ => None,
            })
            .collect::<Vec<_>>();
        assert!(waits
            .iter()
            .all(|(len, t)| *len <= WAIT_CHUNK && *t == Some(200)));
        assert!(waits.len() > 3, "{waits:?}");
    }
}
