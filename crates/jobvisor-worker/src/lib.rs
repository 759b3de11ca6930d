//! Life inside a jobvisor worker process.
//!
//! A worker reads batches of calls from its input pipe and writes batches of
//! replies to its output pipe. CPU calls ([`Task`]) run one at a time on the
//! worker's main thread; async calls ([`AsyncTask`]) run many at once on an
//! event loop on a second thread (the I/O lane, started only when the
//! registry has async tasks). Tasks see the link only through [`Ctx`] and
//! [`AsyncCtx`], which let them notice cancellation (and their soft
//! deadline), send heartbeats and report progress, with no watcher thread.
//! While the worker holds calls, a third thread (the pulse) tells the
//! supervisor it is alive, so a long task is told from a stopped worker.
//!
//! # Layout
//! Lowest first: a module uses only modules above it in this list
//! (`scripts/check-module-cycles` holds the crate to a DAG).
//! - `error`: [`WorkerError`], why the loop could not go on.
//! - `shared`: what the CPU thread and the I/O lane share (the lane's
//!   messages, the count of async calls held, draining).
//! - [`child_group`]: the process group of the command a task runs,
//!   published so that it dies with the worker.
//! - `beacon`: [`Beacon`], the shared page that names the running call.
//! - [`sys`]: `pidfd_open` and `PR_SET_PDEATHSIG`, for the pool and `exec` too.
//! - `pace`: how often, at most, heartbeats, progress and pipe looks happen.
//! - `limits`: memory: the address-space cap, the soft limit, malloc tuning.
//! - `usage`: a call's thread CPU time, and which calls are measured.
//! - `reply`: a call's outcome, its soft-timeout failure, `Done` batching.
//! - `flush`: when the CPU thread writes the replies it buffered.
//! - `link`: the blocking framed link over the two pipes (bytes and frames).
//! - `pulse`: the thread that says "alive" while the worker holds calls.
//! - `inbox`: frame routing: to the CPU queue, the I/O lane or the running call.
//! - `task`: [`Task`], [`TaskError`], the per-call [`Ctx`], [`run_detached`].
//! - `async_task`: [`AsyncTask`], [`AsyncCtx`], [`run_detached_async`].
//! - `registry`: [`Registry`], task names → type-erased tasks.
//! - `io_lane`: the event loop that runs async calls beside the CPU thread.
//! - `serve`: the worker loop, [`serve`]: handshake, `Configure`, CPU calls.

mod async_task;
mod beacon;
pub mod child_group;
mod error;
mod flush;
mod inbox;
mod io_lane;
mod limits;
mod link;
mod pace;
mod pulse;
mod registry;
mod reply;
mod serve;
mod shared;
pub mod sys;
mod task;
mod usage;

pub use async_task::{run_detached_async, AsyncCtx, AsyncTask};
pub use beacon::{monotonic_us, Beacon, BeaconLook, CrashedThread};
pub use error::WorkerError;
pub use jobvisor_proto::worker::TaskKind;
pub use registry::{ConvertError, Registry};
pub use serve::{serve, serve_with_beacon};
pub use task::{error_chain, run_detached, Ctx, Task, TaskError, Wait};
