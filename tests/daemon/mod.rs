//! End-to-end tests of the daemon with the real `jobvisor` binary: a temp
//! state dir per test, readiness through `jobvisor ping --wait`, the daemon's
//! process group killed and reaped in `Drop` (see `util::daemon`).
//!
//! # Layout
//! - `jobs`: built-in tasks, retries and exit codes, cancelling a command.
//! - `exec`: commands: a failing one fails its job, `--ok-codes`.
//! - `pipelines`: idempotency, dependencies, batches, outputs as inputs.
//! - `control`: the socket's gates: peer uid, a full queue, bad input.
//! - `crashes`: kill -9 with jobs queued, poison jobs, crashing tasks.
//! - `signals`: SIGTERM drains, SIGHUP reloads.
//! - `observe`: stats, the event stream and the daemon's log.
//! - `json`: the public JSON against its fixtures (`tests/data/json/`).
//! - `io`: I/O tasks on the workers' event loops.
//! - `notify`: completion notifications (webhooks, commands).
//! - `http`: the HTTP/JSON API: endpoints, roles, errors, limits.
//! - `systemd`: sd_notify messages and journald log lines.
//! - `tls`: the HTTP API over TLS, mutual TLS.
//! - `store`: `[store] url`, where the jobs live.

mod control;
mod crashes;
mod exec;
mod http;
mod io;
mod jobs;
mod json;
mod notify;
mod observe;
mod pipelines;
mod signals;
mod store;
mod systemd;
mod tls;
