//! How worker processes come to be, and how they are signalled and reaped.
//!
//! Two start methods share one result type, [`SpawnedWorker`]:
//! - `forkserver`: ask the fork server ([`forkserver`]); it forks, reaps, reports.
//! - `spawn`: fork+exec our own binary with the hidden worker argument
//!   ([`spawn`]); a reaper task per worker waits on its pidfd.
//!
//! Either way, exit reports arrive on the pool's [`ExitSender`] channel, and a
//! worker's process group is killed before the worker is reaped, so a task's
//! own children never outlive it.
//!
//! This module also owns what [`crate::bootstrap`] set up for the process (the
//! fork server's client, [`Boot`]): `bootstrap` records it here once, and every
//! launch reads it, so start-up depends on launching and not the other way.

pub(crate) mod forkserver;
mod orphans;
pub(crate) mod spawn;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, OnceLock};

use jobvisor_proto::forkserver::ExitStatus;
use tokio::sync::mpsc;

use crate::sys;

/// What [`crate::bootstrap`] started for this process.
pub(crate) struct Boot {
    /// The fork server, unless bootstrap was told not to start one.
    pub(crate) fork_server: Option<forkserver::ForkServerClient>,
}

static BOOT: OnceLock<Boot> = OnceLock::new();

/// The process's [`Boot`], once `bootstrap` has run.
pub(crate) fn booted() -> io::Result<&'static Boot> {
    BOOT.get().ok_or_else(|| {
        io::Error::other("jobvisor_pool::bootstrap() was not called at the start of main")
    })
}

/// Records the process's [`Boot`]; fails if one is recorded already.
pub(crate) fn set_booted(boot: Boot) -> io::Result<()> {
    BOOT.set(boot)
        .map_err(|_| io::Error::other("jobvisor_pool::bootstrap() called twice"))
}

/// Where a pool's workers report their exits: `(pid, status)`.
pub(crate) type ExitSender = mpsc::UnboundedSender<(u32, ExitStatus)>;

/// A fresh worker process and the supervisor's ends of its pipes.
#[derive(Debug)]
pub(crate) struct SpawnedWorker {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    /// Write end of the worker's input pipe.
    pub(crate) to_worker: OwnedFd,
    /// Read end of the worker's output pipe.
    pub(crate) from_worker: OwnedFd,
    /// Read end of the worker's stdout/stderr pipe.
    pub(crate) log: OwnedFd,
    /// Which call the worker is running (shared page).
    pub(crate) beacon: jobvisor_worker::Beacon,
}

/// How to start workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMethod {
    /// Fork from the single-threaded fork server started by
    /// [`crate::bootstrap`] (default): fast, and workers share the fork server's
    /// preloaded memory copy-on-write.
    #[default]
    ForkServer,
    /// fork+exec of the current executable with the hidden worker argument:
    /// for hosts where forking is undesirable. Each worker is a fresh image.
    Spawn,
}

impl std::fmt::Display for StartMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartMethod::ForkServer => "forkserver",
            StartMethod::Spawn => "spawn",
        })
    }
}

impl std::str::FromStr for StartMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "forkserver" => Ok(StartMethod::ForkServer),
            "spawn" => Ok(StartMethod::Spawn),
            other => Err(format!(
                "unknown start method {other:?} (expected forkserver or spawn)"
            )),
        }
    }
}

/// Signalling rights on one worker, valid until it is reaped.
#[derive(Debug)]
pub(crate) struct ProcHandle {
    pub(crate) pid: u32,
    pidfd: OwnedFd,
    owner: Owner,
}

#[derive(Debug)]
enum Owner {
    /// The fork server is the parent; group signals go through it.
    ForkServer(&'static forkserver::ForkServerClient),
    /// We are the parent; `reaped` is set under the lock when the reaper waits.
    Spawn(Arc<Mutex<bool>>),
}

impl ProcHandle {
    /// Signals the worker process itself, through its pidfd (never a recycled pid).
    pub(crate) fn signal(&self, signal: i32) -> io::Result<()> {
        sys::pidfd_kill(self.pidfd.as_fd(), signal)
    }

    /// Signals the worker's whole process group, if the worker is not reaped yet.
    pub(crate) fn signal_group(&self, signal: i32) -> io::Result<()> {
        match &self.owner {
            Owner::ForkServer(client) => client.signal(self.pid, signal, true),
            Owner::Spawn(reaped) => {
                let reaped = reaped
                    .lock()
                    .map_err(|_| io::Error::other("reaper lock poisoned"))?;
                if *reaped {
                    return Ok(());
                }
                sys::killpg(self.pid as i32, signal)
            }
        }
    }
}

/// Starts one worker with `method`, reporting its exit on `exits`.
pub(crate) async fn launch(
    method: StartMethod,
    exits: ExitSender,
) -> io::Result<(SpawnedWorker, ProcHandle)> {
    let boot = booted()?;
    match method {
        StartMethod::ForkServer => {
            let client = boot
                .fork_server
                .as_ref()
                .filter(|c| c.is_alive())
                .ok_or_else(|| {
                    io::Error::other(
                        "the fork server is not running (bootstrap without it, or it died); \
                     use StartMethod::Spawn",
                    )
                })?;
            let worker = client
                .spawn(exits)
                .await
                .map_err(|_| io::Error::other("fork server dropped the spawn request"))??;
            let pidfd = worker.pidfd.try_clone()?;
            let handle = ProcHandle {
                pid: worker.pid,
                pidfd,
                owner: Owner::ForkServer(client),
            };
            Ok((worker, handle))
        }
        StartMethod::Spawn => {
            let (worker, reaped) = spawn::spawn(exits).await?;
            let pidfd = worker.pidfd.try_clone()?;
            let pid = worker.pid;
            Ok((
                worker,
                ProcHandle {
                    pid,
                    pidfd,
                    owner: Owner::Spawn(reaped),
                },
            ))
        }
    }
}
