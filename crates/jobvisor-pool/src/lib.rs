//! The supervisor side of jobvisor's worker processes, and the [`Pool`]
//! library API built on it: Python's `multiprocessing.Pool`, in Rust, with
//! workers that are replaced when they crash and a pool that never breaks.
//!
//! ```no_run
//! use jobvisor_pool::{bootstrap, Bootstrap, Pool};
//! use jobvisor_tasks::{Spin, SpinInput};
//!
//! fn main() -> std::process::ExitCode {
//!     // First thing: before any thread exists (forks the fork server).
//!     match bootstrap(jobvisor_tasks::builtin()).expect("bootstrap") {
//!         Bootstrap::Worker(code) => return code,
//!         Bootstrap::Supervisor => {}
//!     }
//!     let rt = tokio::runtime::Runtime::new().expect("runtime");
//!     rt.block_on(async {
//!         let pool = Pool::builder().workers(2).build().await.expect("pool");
//!         let inputs = (0..8).map(|_| SpinInput { ms: 10 }).collect();
//!         let outs = pool.map::<Spin>(inputs, 1).await.expect("map");
//!         assert_eq!(outs.len(), 8);
//!         pool.shutdown().await;
//!     });
//!     std::process::ExitCode::SUCCESS
//! }
//! ```
//!
//! # Layout
//! Modules form a DAG; each names only those above it in this list, lowest
//! first (`scripts/check-module-cycles` holds them to it).
//! - `sys`: thin syscall wrappers (pidfds, `wait4`, pipe sizes).
//! - `types`: the plain data the layers share: worker snapshots
//!   ([`WorkerInfo`]), [`PoolEvent`], [`CallUsage`], [`PoolHealth`].
//! - `error`: [`PoolError`].
//! - `launch`: how workers start ([`StartMethod`]): `forkserver` and `spawn`,
//!   signalling by pidfd, reaping with the group killed first; it also holds
//!   the fork server that `bootstrap` started for the process.
//! - `config`: [`PoolConfig`], every limit with its unit and default.
//! - `bootstrap`: [`bootstrap`], the first call in `main` (fork server, or
//!   worker mode).
//! - `output`: which call (and job) wrote a worker's output line, from the
//!   worker's beacon.
//! - `conn`: the supervisor's end of one worker: handshake, reader, writer,
//!   log drain.
//! - `dispatch`: the actor that owns the queue and the workers, and beside
//!   it the rules it applies, each pure and unit-tested: `admission` (lane
//!   capacity), `escalation` (timeouts, stalls, cancels), `blame` (who is
//!   charged for a death), `intensity` (restart backoff).
//! - `pool`: the public [`Pool`] API over the dispatcher.

mod bootstrap;
mod config;
mod conn;
mod dispatch;
mod error;
mod launch;
mod output;
mod pool;
mod sys;
mod types;

pub use bootstrap::{
    bootstrap, bootstrap_with, fork_server_pid, is_spawned_worker, Bootstrap, BootstrapOptions,
};
pub use config::PoolConfig;
pub use error::{ErrorSource, PoolError};
pub use jobvisor_proto::forkserver::ExitStatus;
pub use jobvisor_proto::worker::{FailureKind, TaskFailure};
pub use jobvisor_worker::{AsyncCtx, AsyncTask, Ctx, Registry, Task, TaskError, TaskKind};
pub use launch::StartMethod;
pub use pool::{CallOptions, CallReport, ImapUnordered, Pool, PoolBuilder, RawOutput, TaskHandle};
pub use types::{CallUsage, PoolEvent, PoolHealth, WorkerInfo, WorkerState};
