//! Who may load the CPU: one test binary runs every end-to-end test, two at
//! a time on a 2-core machine, and a heavy test (the chaos run, a thousand
//! spinning jobs) starves whatever runs beside it: a test that compares CPU
//! shares then fails. So a heavy test runs alone ([`alone`]) and every other
//! daemon holds a shared guard ([`Daemon`](super::Daemon) takes it): the
//! heavy one waits for those running to finish, they wait for it.
//!
//! A guard is per test thread (libtest runs each test on its own): a thread
//! that holds one does not take a second, so a test with two daemons, or a
//! heavy test starting a daemon, cannot deadlock on itself.

use std::cell::Cell;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static CPU: RwLock<()> = RwLock::new(());

thread_local! {
    /// This thread holds a guard already.
    static HELD: Cell<bool> = const { Cell::new(false) };
}

/// The CPU share a test holds until it drops this (neither lock when its
/// thread held a guard already).
#[derive(Debug)]
pub struct CpuGuard {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _alone: Option<RwLockWriteGuard<'static, ()>>,
    nested: bool,
}

impl Drop for CpuGuard {
    fn drop(&mut self) {
        if !self.nested {
            HELD.with(|h| h.set(false));
        }
    }
}

/// For a test that loads the CPU: waits until no other test holds a share,
/// and keeps them out while it runs. (A test that panicked holding the lock
/// poisoned it; the lock guards no data, so that changes nothing.)
pub fn alone() -> CpuGuard {
    let nested = HELD.with(|h| h.replace(true));
    CpuGuard {
        _shared: None,
        _alone: (!nested).then(|| CPU.write().unwrap_or_else(|e| e.into_inner())),
        nested,
    }
}

/// For every other test: runs beside the others, never beside a heavy one.
pub fn shared() -> CpuGuard {
    let nested = HELD.with(|h| h.replace(true));
    CpuGuard {
        _shared: (!nested).then(|| CPU.read().unwrap_or_else(|e| e.into_inner())),
        _alone: None,
        nested,
    }
}
