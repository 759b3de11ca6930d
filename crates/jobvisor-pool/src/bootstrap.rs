//! Process start-up: the one call every program that uses jobvisor pools makes
//! first thing in `main`, while it is still single-threaded.
//!
//! - In a worker started by the `spawn` method (argv[1] is the hidden worker
//!   argument) it runs the worker loop and tells `main` to exit with its code.
//! - Otherwise it forks the fork server (unless disabled) and records it with
//!   `launch` (which owns it) for every [`crate::Pool`] in this process.

use std::io;
use std::process::ExitCode;

use jobvisor_worker::Registry;

use crate::launch::forkserver;
use crate::launch::spawn::{adopt_worker_fds, PARENT_ENV, WORKER_ARG};
use crate::launch::{self, Boot};

/// Options for [`bootstrap_with`].
#[derive(Default)]
pub struct BootstrapOptions {
    /// Start the fork server (default true via [`bootstrap`]). Without it only
    /// [`crate::StartMethod::Spawn`] is available.
    pub fork_server: bool,
    /// Runs once inside the fork server before it forks any worker: what it
    /// loads (tables, models) is shared copy-on-write by every worker. With the
    /// `spawn` start method each worker is a fresh image and runs it itself.
    /// Descriptors it opens do not reach forked workers (a worker holds only
    /// stdio and its protocol pipes): open those in `worker_init`.
    pub initializer: Option<Box<dyn FnOnce() + Send>>,
    /// Runs in every worker process when it starts, before its handshake (per
    /// worker set-up: a connection, a seed). A worker that exits here counts as
    /// a failed start.
    pub worker_init: Option<fn()>,
}

impl std::fmt::Debug for BootstrapOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapOptions")
            .field("fork_server", &self.fork_server)
            .field("initializer", &self.initializer.is_some())
            .field("worker_init", &self.worker_init.is_some())
            .finish()
    }
}

/// What `main` should do after [`bootstrap`].
#[derive(Debug)]
#[must_use]
pub enum Bootstrap {
    /// This process is the supervisor: carry on (pools can be built now).
    Supervisor,
    /// This process was a worker and has finished: return this code from `main`.
    Worker(ExitCode),
}

/// [`bootstrap_with`] with the fork server on and no initializer.
///
/// # Errors
/// As [`bootstrap_with`].
pub fn bootstrap(registry: Registry) -> io::Result<Bootstrap> {
    bootstrap_with(
        registry,
        BootstrapOptions {
            fork_server: true,
            initializer: None,
            worker_init: None,
        },
    )
}

/// Call first thing in `main`, before any thread, runtime or logger that starts
/// a thread exists.
///
/// # Errors
/// When called twice, when the process already has threads and a fork server
/// was asked for, or when forking fails.
pub fn bootstrap_with(registry: Registry, options: BootstrapOptions) -> io::Result<Bootstrap> {
    // `args_os`: the supervisor's own command line may hold arguments that are
    // not UTF-8 (a path), and `std::env::args` panics on them. A worker's
    // arguments are ours (fd numbers), so a lossy copy loses nothing there.
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    if args.get(1).map(String::as_str) == Some(WORKER_ARG) {
        // A spawned worker is a fresh image: it runs the initializer itself.
        if let Some(init) = options.initializer {
            init();
        }
        if let Some(init) = options.worker_init {
            init();
        }
        return Ok(Bootstrap::Worker(run_spawned_worker(&registry, &args[2..])));
    }
    if launch::booted().is_ok() {
        return Err(io::Error::other("jobvisor_pool::bootstrap() called twice"));
    }
    let fork_server = if options.fork_server {
        Some(forkserver::start(
            registry,
            options.initializer,
            options.worker_init,
        )?)
    } else {
        None
    };
    launch::set_booted(Boot { fork_server })?;
    Ok(Bootstrap::Supervisor)
}

/// Whether this process is a worker started by the `spawn` start method (its
/// first argument is the hidden worker argument): [`bootstrap`] would run the
/// worker loop and return [`Bootstrap::Worker`]. A program that bootstraps
/// only for the commands that run workers asks this first, since a worker's
/// command line is not its own.
pub fn is_spawned_worker() -> bool {
    std::env::args_os().nth(1).is_some_and(|a| a == WORKER_ARG)
}

/// The pid of the fork server, if one runs (for diagnostics and tests).
pub fn fork_server_pid() -> Option<u32> {
    launch::booted()
        .ok()
        .and_then(|b| b.fork_server.as_ref())
        .map(|c| c.pid() as u32)
}

fn run_spawned_worker(registry: &Registry, args: &[String]) -> ExitCode {
    let parent_ok = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        .is_some_and(|p| p == nix::unistd::getppid().as_raw());
    if !parent_ok {
        // Started by hand, or the supervisor died before PDEATHSIG was armed.
        eprintln!("jobvisor worker: not started by a live jobvisor supervisor");
        return ExitCode::from(2);
    }
    let adopted = adopt_worker_fds(args).and_then(|(input, output, beacon)| {
        Ok((input, output, jobvisor_worker::Beacon::map(beacon)?))
    });
    match adopted {
        Ok((input, output, beacon)) => {
            let code = forkserver::finish_worker(jobvisor_worker::serve_with_beacon(
                registry,
                input,
                output,
                Some(beacon),
            ));
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("jobvisor worker: {e}");
            ExitCode::from(2)
        }
    }
}
