//! What the end-to-end tests share: the real `jobvisor` daemon in a temp
//! state dir (optionally on a small tmpfs), ready once it answers `ping`, its
//! process group killed and reaped in `Drop`; waits on observable state;
//! `/proc` scans; and small helpers.
//!
//! # Layout
//! - `cpu`: heavy tests run alone, the others two at a time.
//! - `proc`: `/proc` (process states, markers, descriptors) and `kill(2)`.
//! - `rng`: a seeded RNG for workloads that must replay from a seed.
//! - `tmpfs`: a small tmpfs to fill a daemon's disk.
//! - `daemon`: starting, reaching and killing `jobvisor daemon` ([`Daemon`]).
//! - `http`: reading the requests the tests' own HTTP servers get.
//! - `wait`: polling a condition to a deadline; waits on jobs, workers, stats.

use std::process::Output;

use jobvisor_client::{JobSpec, Payload};

pub mod cpu;
pub mod daemon;
pub mod http;
pub mod proc;
pub mod rng;
pub mod tmpfs;
pub mod wait;

pub use daemon::Daemon;
pub use wait::{submit_ids, wait_succeeded};

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_jobvisor")
}

/// A command's status, stdout and stderr, for a failure message.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A command's stdout, trimmed.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Checks that a CLI call exited with `code` and said `says` on stderr;
/// `what` names the call in the failure message.
pub fn assert_exit(what: &str, out: &Output, code: i32, says: &str) {
    assert_eq!(out.status.code(), Some(code), "{what}: {}", text(out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(says),
        "{what}: {}",
        text(out)
    );
}

/// A current-thread runtime for a test's client calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Writes `toml` to `jobvisor.toml` in `dir`; its path.
pub fn config(dir: &tempfile::TempDir, toml: &str) -> String {
    let path = dir.path().join("jobvisor.toml");
    std::fs::write(&path, toml).expect("config");
    path.display().to_string()
}

/// A job of `task` with JSON `input`.
pub fn json_spec(task: &str, input: &str) -> JobSpec {
    JobSpec::new(task, Payload::Json(input.into()))
}
