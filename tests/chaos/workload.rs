//! The jobs of a run and how they are fed to the daemon: the seeded mix of
//! kinds (succeeding, failing by design, poison), and the driver that submits
//! it in lagged batches across daemon restarts and waits for every
//! acknowledged job.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jobvisor_client::{JobRecord, JobSpec, Payload};

use super::config::ChaosConfig;
use super::conn::{submit, wait_terminal, Conn};
use super::killer::sample_fds_paused;
use super::shared::{Fds, Shared};
use crate::util::rng::Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// `spin` 1..5 ms: succeeds.
    Spin,
    /// `exec true`: succeeds with code 0.
    ExecTrue,
    /// `exec sh -c "exit 3"` with `ok_codes: [3]`: succeeds with code 3
    /// recorded (without the opt-out a nonzero exit fails the attempt).
    ExecExit3,
    /// `hash` of a small file: succeeds with its digest.
    Hash,
    /// `hash` of a missing file: fails after `max_attempts` task errors.
    HashMissing,
    /// `crash` with SIGKILL: dead after `max_crashes` worker deaths.
    Poison,
    /// Async `sleep` 1..20 ms on the workers' event loops: succeeds.
    Sleep,
    /// Async `http` to a closed port: fails after `max_attempts` task errors.
    HttpRefused,
}

impl Kind {
    /// Jobs that fail by design (task errors every attempt).
    pub(super) fn fails(self) -> bool {
        matches!(self, Kind::HashMissing | Kind::HttpRefused)
    }
}

#[derive(Debug)]
pub(super) struct Planned {
    pub(super) kind: Kind,
    pub(super) spec: JobSpec,
}

pub(super) fn plan(cfg: &ChaosConfig, dir: &Path, data: &Path) -> Vec<Planned> {
    let mut rng = Rng::new(cfg.seed);
    (0..cfg.jobs)
        .map(|n| {
            let r = rng.below(100);
            let (kind, task, input) = match r {
                0..=49 => (
                    Kind::Spin,
                    "spin",
                    format!(r#"{{"ms": {}}}"#, 1 + rng.below(5)),
                ),
                50..=57 => (
                    Kind::Sleep,
                    "sleep",
                    format!(r#"{{"ms": {}}}"#, 1 + rng.below(20)),
                ),
                58..=59 => (
                    Kind::HttpRefused,
                    "http",
                    r#"{"url": "http://127.0.0.1:1/", "connect_timeout_ms": 2000}"#.to_string(),
                ),
                60..=67 => (Kind::ExecTrue, "exec", r#"{"argv": ["true"]}"#.to_string()),
                68..=74 => (
                    Kind::ExecExit3,
                    "exec",
                    r#"{"argv": ["sh", "-c", "exit 3"], "ok_codes": [3]}"#.to_string(),
                ),
                75..=84 => (
                    Kind::Hash,
                    "hash",
                    serde_json::json!({ "path": data }).to_string(),
                ),
                85..=94 => (
                    Kind::HashMissing,
                    "hash",
                    serde_json::json!({ "path": dir.join(format!("missing-{n}")) }).to_string(),
                ),
                _ => (Kind::Poison, "crash", r#"{"signal": 9}"#.to_string()),
            };
            let mut spec = JobSpec::new(task, Payload::Json(input));
            // The key makes a resubmit after an unknown outcome (the daemon
            // killed mid-request) return the job it may already have stored.
            spec.key = Some(format!("chaos-{n}"));
            Planned { kind, spec }
        })
        .collect()
}

// ---- the driver ---------------------------------------------------------------

#[derive(Debug, Default)]
pub(super) struct Driven {
    pub(super) ids: Vec<u64>,
    pub(super) duplicates: usize,
    pub(super) records: HashMap<u64, JobRecord>,
    pub(super) missing: Vec<u64>,
    pub(super) stuck: Vec<JobRecord>,
    pub(super) fds_warm: Option<Fds>,
}

/// Submits every batch (with the lag), takes the warm fd sample on the final
/// daemon, and waits until every acknowledged job is terminal.
pub(super) async fn drive(
    shared: &Shared,
    cfg: &ChaosConfig,
    plan: &[Planned],
    started: Instant,
) -> Driven {
    let mut conn = Conn::new(shared);
    let mut out = Driven {
        ids: Vec::with_capacity(plan.len()),
        ..Driven::default()
    };
    let deadline = started + cfg.deadline;
    let batches: Vec<&[Planned]> = plan.chunks(cfg.batch.max(1)).collect();
    // Per batch, the ids of its jobs that are meant to succeed.
    let mut pace: Vec<Vec<u64>> = Vec::new();
    let mut final_from: Option<usize> = None;
    for (b, batch) in batches.iter().enumerate() {
        if b >= cfg.lag_batches {
            let ids = std::mem::take(&mut pace[b - cfg.lag_batches]);
            if let Err(stuck) = wait_terminal(&mut conn, &ids, deadline).await {
                out.stuck = stuck;
                return out;
            }
        }
        let specs: Vec<JobSpec> = batch.iter().map(|p| p.spec.clone()).collect();
        shared.submitting.store(true, Ordering::SeqCst);
        shared.notify();
        let subs = submit(&mut conn, &specs).await;
        shared.submitting.store(false, Ordering::SeqCst);
        out.duplicates += subs.iter().filter(|s| s.duplicate).count();
        out.ids.extend(subs.iter().map(|s| s.id));
        pace.push(
            batch
                .iter()
                .zip(&subs)
                .filter(|(p, _)| p.kind != Kind::Poison && !p.kind.fails())
                .map(|(_, s)| s.id)
                .collect(),
        );
        shared.submitted.fetch_add(subs.len(), Ordering::SeqCst);
        shared.notify();
        // The warm sample: on the final daemon, after it has run a little.
        if out.fds_warm.is_none() && shared.st().kills_done == cfg.daemon_kills {
            let from = *final_from.get_or_insert(b);
            if b >= from + 2 {
                out.fds_warm = Some(sample_fds_paused(shared, &mut conn, cfg.workers).await);
            }
        }
    }
    // Every daemon kill happens before the last batch (see daemon_killer).
    {
        let mut st = shared.st();
        while st.kills_done < cfg.daemon_kills {
            assert!(Instant::now() < deadline, "the daemon kills did not happen");
            st = shared.wait(st, Duration::from_millis(100));
        }
    }
    if out.fds_warm.is_none() {
        out.fds_warm = Some(sample_fds_paused(shared, &mut conn, cfg.workers).await);
    }
    match wait_terminal(&mut conn, &out.ids, deadline).await {
        Ok((records, missing)) => {
            out.records = records;
            out.missing = missing;
        }
        Err(stuck) => out.stuck = stuck,
    }
    out
}
