//! The end-to-end tests: the real `jobvisor` binary (`CARGO_BIN_EXE_jobvisor`,
//! which only the root package's tests get), real processes, sockets and file
//! systems, one test binary.
//!
//! libtest runs the tests of this binary two at a time (on two cores); a test
//! that loads the CPU (the chaos run, a thousand spinning jobs) runs alone,
//! through `util::cpu`.
//!
//! # Layout
//! - `util`: the harness: a daemon in a temp state dir (optionally on a
//!   tmpfs), ready once it answers `ping`, killed and reaped in `Drop`; waits
//!   on observable state; `/proc` scans; a seeded RNG.
//! - `cli`: the binary's own commands (`demo`, the hidden worker entry).
//! - `daemon`: jobs through the daemon, one module per behaviour (jobs,
//!   pipelines, control, crashes, signals, observe, io, notify).
//! - `hostile`: hostile clients and a hostile environment.
//! - `chaos`: the chaos proof (short here; `scripts/chaos` runs the full one).

mod util;

mod chaos;
mod cli;
mod daemon;
mod hostile;
