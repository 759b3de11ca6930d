//! The store and its writer thread on real databases: the contract tests,
//! one module per subject, each run on both backends (an SQLite file, and a
//! PostgreSQL schema of its own on the server `scripts/postgres` starts);
//! in `fixture` a file written by an older jobvisor; in `cluster` what
//! several nodes sharing one PostgreSQL database may rely on. The helpers
//! they share are here.

mod attempts;
#[cfg(feature = "postgres")]
mod cluster;
mod file;
mod fixture;
mod jobs;
#[cfg(feature = "postgres")]
mod pg;
mod writer;

/// A backend the contract tests run on: each test gets a fresh one, and
/// may open it again (a restart).
trait Backend: Send + Sync {
    type Store: JobStore + std::fmt::Debug;
    fn open(&self) -> Self::Store;
}

/// A fresh SQLite file.
struct Sqlite(tempfile::TempDir);

impl Sqlite {
    fn new() -> Self {
        Sqlite(tempfile::tempdir().unwrap())
    }
}

impl Backend for Sqlite {
    type Store = SqliteStore;
    fn open(&self) -> SqliteStore {
        open(self.0.path())
    }
}

/// Runs an async contract test on a runtime of its own.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// One `#[test]` per backend for each contract test named: `sync` ones are
/// `fn name<B: Backend>(b: B)`, `async` ones the same `async`.
macro_rules! both {
    (sync: [$($s:ident),* $(,)?], async: [$($a:ident),* $(,)?] $(,)?) => {
        mod sqlite {
            $( #[test] fn $s() { super::$s(crate::Sqlite::new()); } )*
            $( #[test] fn $a() { crate::block_on(super::$a(crate::Sqlite::new())); } )*
        }
        #[cfg(feature = "postgres")]
        mod postgres {
            $( #[test] fn $s() { super::$s(crate::pg::Pg::new()); } )*
            $( #[test] fn $a() { crate::block_on(super::$a(crate::pg::Pg::new())); } )*
        }
    };
}
use both;

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
fn insert<S: JobStore>(store: &mut S, job: &NewJob) -> u64 {
    store.begin().unwrap();
    let s = store.insert(job).unwrap();
    store.commit().unwrap();
    assert!(!s.duplicate);
    s.id
}

fn in_tx<S: JobStore, T>(store: &mut S, f: impl FnOnce(&mut S) -> T) -> T {
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
