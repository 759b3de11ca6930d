//! The SQLite store and its writer thread, on real database files: the
//! contract tests, one module per subject, and in `fixture` a file written
//! by an older jobvisor. The helpers they share are here.

mod attempts;
mod file;
mod fixture;
mod jobs;
mod writer;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use jobvisor_proto::control::{AttemptOutcome, JobState, Payload};
use jobvisor_store::{
    Finish, JobStore, NewJob, SqliteStore, StoreError, StoreHandle, SCHEMA_VERSION,
};

fn job(task: &str, input: Payload) -> NewJob {
    NewJob {
        task: task.into(),
        input,
        queue: "default".into(),
        priority: 0,
        max_attempts: 3,
        max_crashes: 3,
        backoff_base_ms: 100,
        backoff_max_ms: 10_000,
        timeout_ms: None,
        stall_timeout_ms: None,
        input_from: Vec::new(),
        run_at_ms: 1_000,
        created_ms: 1_000,
        after: Vec::new(),
        key: None,
        notify_url: None,
    }
}

fn json(n: u64) -> Payload {
    Payload::Json(format!("{{\"n\":{n}}}"))
}

fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("jobs.db")).unwrap()
}

/// Inserts in its own transaction.
fn insert(store: &mut SqliteStore, job: &NewJob) -> u64 {
    store.begin().unwrap();
    let s = store.insert(job).unwrap();
    store.commit().unwrap();
    assert!(!s.duplicate);
    s.id
}

fn in_tx<T>(store: &mut SqliteStore, f: impl FnOnce(&mut SqliteStore) -> T) -> T {
    store.begin().unwrap();
    let r = f(store);
    store.commit().unwrap();
    r
}

fn all_outcomes() -> Vec<AttemptOutcome> {
    vec![
        AttemptOutcome::Running,
        AttemptOutcome::Ok,
        AttemptOutcome::Error("boom".into()),
        AttemptOutcome::Panic("index out of bounds".into()),
        AttemptOutcome::Crashed {
            code: Some(137),
            signal: Some(9),
            max_rss_kib: 123_456,
            stderr_tail: vec!["line 1".into(), "line 2 ✓".into()],
            cause: Some("memory limit exceeded".into()),
        },
        AttemptOutcome::Crashed {
            code: None,
            signal: None,
            max_rss_kib: 0,
            stderr_tail: Vec::new(),
            cause: None,
        },
        AttemptOutcome::TimedOut("SIGTERM then SIGKILL".into()),
        AttemptOutcome::Lost,
        AttemptOutcome::Cancelled,
    ]
}
