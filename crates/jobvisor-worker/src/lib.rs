//! Life inside a jobvisor worker process.
//!
//! A worker is a plain single-threaded process: it reads batches of calls from
//! its input pipe, runs them one at a time, and writes batches of replies to
//! its output pipe. Tasks see the link only through [`Ctx`], which lets them
//! notice cancellation (and their soft deadline), send heartbeats and report
//! progress, all without a second thread.
//!
//! # Layout
//! - `task`: the [`Task`] trait, [`TaskError`] and the per-call [`Ctx`].
//! - `registry`: [`Registry`], task names → type-erased tasks.
//! - `link`: the blocking framed link over the two pipes.
//! - `serve`: the worker loop, [`serve`].

mod beacon;
mod link;
mod registry;
mod serve;
mod task;

pub use beacon::Beacon;
pub use registry::{ConvertError, Registry};
pub use serve::run_detached;
pub use serve::{serve, serve_with_beacon, WorkerError};
pub use task::{Ctx, Task, TaskError, Wait};
