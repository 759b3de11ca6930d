//! Waiting for what a test can observe: jobs that end.

use std::time::Duration;

use jobvisor_client::{Client, JobRecord, JobSpec, JobState};

/// Submits `specs` in one request and returns their job ids.
pub async fn submit_ids(c: &mut Client, specs: Vec<JobSpec>) -> Vec<u64> {
    c.submit(specs)
        .await
        .expect("submit")
        .iter()
        .map(|s| s.id)
        .collect()
}

/// Waits for `ids` (at most `within`) and checks that every one succeeded;
/// their records, in the order of `ids`.
pub async fn wait_succeeded(
    c: &mut Client,
    ids: Vec<u64>,
    within: Option<Duration>,
) -> Vec<JobRecord> {
    let recs = c.wait(ids, within).await.expect("wait");
    assert!(
        recs.iter().all(|r| r.state == JobState::Succeeded),
        "{recs:?}"
    );
    recs
}
