//! The jobs the workloads submit, and submitting, waiting for and checking them.

use std::time::Duration;

use anyhow::{bail, Result};
use jobvisor_client::{Client, JobRecord, JobSpec, JobState, Payload};

use crate::{BATCH, WAIT_CHUNK};

pub(crate) fn noop(i: usize) -> JobSpec {
    JobSpec::new("noop", Payload::Json(i.to_string()))
}

pub(crate) fn exec_true() -> JobSpec {
    JobSpec::new("exec", Payload::Json(r#"{"argv":["true"]}"#.into()))
}

/// Waits (in chunks, over one connection) until every job is terminal; fails
/// unless all succeeded (and, for `exec`, exited 0). Returns the latest
/// `finished_ms` (unix ms) among them: when the daemon ended the last one.
pub(crate) async fn wait_all(c: &mut Client, ids: &[u64]) -> Result<u64> {
    let mut last = 0;
    for chunk in ids.chunks(WAIT_CHUNK) {
        let recs = c.wait(chunk.to_vec(), None).await?;
        for r in &recs {
            check(r)?;
            last = last.max(r.finished_ms.unwrap_or(0));
        }
    }
    Ok(last)
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// "the last job ended X s after the first submit", from the records.
pub(crate) fn last_ended(t0_unix_ms: u64, last_finished_ms: u64) -> Duration {
    Duration::from_millis(last_finished_ms.saturating_sub(t0_unix_ms))
}

pub(crate) fn check(r: &JobRecord) -> Result<()> {
    if r.state != JobState::Succeeded {
        bail!(
            "job {} ({}) ended {}: {}",
            r.id,
            r.task,
            r.state.as_str(),
            r.error.as_deref().unwrap_or("")
        );
    }
    if r.task == "exec" {
        let Some(Payload::Json(out)) = &r.output else {
            bail!("exec job {} has no JSON output", r.id);
        };
        let v: serde_json::Value = serde_json::from_str(out)?;
        if v["code"] != 0 {
            bail!("exec job {}: {out}", r.id);
        }
    }
    Ok(())
}

pub(crate) async fn submit_batched(c: &mut Client, specs: Vec<JobSpec>) -> Result<Vec<u64>> {
    let mut ids = Vec::with_capacity(specs.len());
    let mut it = specs.into_iter().peekable();
    while it.peek().is_some() {
        let batch: Vec<JobSpec> = it.by_ref().take(BATCH).collect();
        ids.extend(c.submit(batch).await?.into_iter().map(|s| s.id));
    }
    Ok(ids)
}
