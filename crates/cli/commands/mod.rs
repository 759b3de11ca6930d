//! Client subcommands: talk to a running daemon over its control socket.
//!
//! One module per command, one handler each, and one `match` ([`dispatch`])
//! that picks it. Every read command takes `--json` for a machine-readable
//! answer on stdout; human output goes to stdout too, and errors are printed
//! as `jobvisor: <message>` on stderr. Exit codes: [`crate::exit`].
//!
//! # Layout
//! The handlers name only this module ([`connect`]) and the modules below
//! it, except that `submit` and `result` use [`wait`]'s waiting and
//! descriptions. Test-only: `mock` (a stand-in daemon on a real socket) and
//! `tests` (flows of several commands against it).

mod cancel;
mod events;
mod list;
mod ping;
mod result;
mod retry;
mod shutdown;
mod stats;
mod status;
mod submit;
mod wait;
mod workers;

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use jobvisor_client::{Client, ClientError};

use crate::args::ClientCommand;
use crate::exit::{CmdResult, Failure, EXIT_UNREACHABLE};

#[cfg(test)]
pub use status::format_status;

/// Retry interval of `ping --wait`, and the pause of a wait that got
/// unfinished jobs back without having asked for a timeout.
const PING_RETRY: Duration = Duration::from_millis(50);

/// Runs one client command against the daemon at `socket` and returns the
/// process exit code (see [`crate::exit`]). Errors are printed on stderr.
pub async fn run(cmd: ClientCommand, socket: &Path) -> ExitCode {
    match dispatch(cmd, socket).await {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("jobvisor: {}", f.message());
            ExitCode::from(f.code)
        }
    }
}

/// The one `match` from a command to its handler.
async fn dispatch(cmd: ClientCommand, socket: &Path) -> CmdResult {
    match cmd {
        ClientCommand::Submit(args) => submit::submit(*args, socket).await,
        ClientCommand::Status { id, json } => status::status(id, json, socket).await,
        ClientCommand::Wait {
            ids,
            all: false,
            timeout,
            json,
        } => wait::wait(ids, timeout, json, socket).await,
        ClientCommand::Wait {
            all: true,
            timeout,
            json,
            ..
        } => wait::wait_for_every_job(timeout, json, socket).await,
        ClientCommand::Result { id, json } => result::result(id, json, socket).await,
        ClientCommand::Cancel { id, json } => cancel::cancel(id, json, socket).await,
        ClientCommand::Retry { id, json } => retry::retry(id, json, socket).await,
        ClientCommand::List {
            state,
            queue,
            limit,
            before,
            json,
        } => {
            let q = list::ListQuery {
                state,
                queue,
                limit,
                before,
            };
            list::list(q, json, socket).await
        }
        ClientCommand::Workers { json } => workers::workers(json, socket).await,
        ClientCommand::Stats { json } => stats::stats(json, socket).await,
        ClientCommand::Ping { wait, json } => ping::ping(wait, json, socket).await,
        ClientCommand::Events {
            follow,
            since,
            json,
        } => events::events(follow, since, json, socket).await,
        ClientCommand::Shutdown { now, wait, json } => {
            let a = shutdown::ShutdownArgs {
                graceful: !now,
                wait,
                json,
            };
            shutdown::shutdown(a, socket).await
        }
    }
}

/// Connects. Failing to get a working connection (nothing listens, or it
/// breaks during the handshake) is "unreachable"; a protocol mismatch is not.
async fn connect(socket: &Path) -> Result<Client, Failure> {
    Client::connect(socket)
        .await
        .map_err(|e| connect_failure(e, socket))
}

/// What to do when no daemon answers, told before the error itself.
const START_HINT: &str = "no jobvisor daemon answers (start one with `jobvisor daemon`, \
     or point --socket or JOBVISOR_SOCKET at its socket)";

/// The failure of a connection attempt: an I/O error while connecting means
/// the daemon is unreachable, whatever the client calls it. A socket where no
/// daemon answers gets a hint how to start one.
pub fn connect_failure(e: ClientError, socket: &Path) -> Failure {
    match e {
        e @ ClientError::Unreachable { .. } => {
            Failure::new(EXIT_UNREACHABLE, anyhow::Error::new(e).context(START_HINT))
        }
        ClientError::Io(io) => {
            let what = format!("cannot talk to the jobvisor daemon at {}", socket.display());
            Failure::new(EXIT_UNREACHABLE, anyhow::Error::new(io).context(what))
        }
        other => Failure::from(other),
    }
}
