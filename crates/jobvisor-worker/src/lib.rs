//! Life inside a jobvisor worker process.
//!
//! A worker reads batches of calls from its input pipe and writes batches of
//! replies to its output pipe. CPU calls ([`Task`]) run one at a time on the
//! worker's main thread; async calls ([`AsyncTask`]) run many at once on an
//! event loop on a second thread (the I/O lane, started only when the
//! registry has async tasks). Tasks see the link only through [`Ctx`], which lets them
//! notice cancellation (and their soft deadline), send heartbeats and report
//! progress, all without a second thread.
//!
//! # Layout
//! - `task`: the [`Task`] trait, [`TaskError`] and the per-call [`Ctx`].
//! - `registry`: [`Registry`], task names → type-erased tasks.
//! - `link`: the blocking framed link over the two pipes.
//! - `serve`: the worker loop, [`serve`].
//! - `async_task`: [`AsyncTask`] and [`AsyncCtx`].
//! - `io_lane`: the event loop that runs async calls.
//! - [`sys`]: `pidfd_open` and `PR_SET_PDEATHSIG`, for the pool and `exec` too.

mod async_task;
mod beacon;
mod error;
mod flush;
mod inbox;
mod io_lane;
mod limits;
mod link;
mod pace;
mod registry;
mod reply;
mod serve;
mod shared;
pub mod sys;
mod task;
mod usage;

pub use async_task::{run_detached_async, AsyncCtx, AsyncTask};
pub use beacon::{monotonic_us, Beacon, CrashedThread};
pub use error::WorkerError;
pub use jobvisor_proto::worker::TaskKind;
pub use registry::{ConvertError, Registry};
pub use serve::{serve, serve_with_beacon};
pub use task::{error_chain, run_detached, Ctx, Task, TaskError, Wait};
