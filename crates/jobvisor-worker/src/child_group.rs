//! The process group of the command a task runs (`exec`), published so that
//! it dies with the worker however the worker dies.
//!
//! A command runs in a process group of its own (so a timeout can stop all of
//! it), which is exactly what the worker's own group kill misses: before
//! this, `sh -c 'sleep 1 & sleep 2'` outlived a killed worker, reparented to
//! init. Three parties now know the group:
//! - the worker itself: on `SIGTERM` (the pool's escalation, and its parent
//!   death signal, see `arm`) a handler kills the group, then the worker
//!   dies of `SIGTERM` as before;
//! - the supervisor side, through slot 4 of the beacon page
//!   ([`crate::Beacon::child_group`]): whoever reaps a worker that died of
//!   `SIGKILL` kills the group it names;
//! - the fork server, a child subreaper, adopts what the command's processes
//!   orphan and kills it (see the pool's fork server).
//!
//! The leader's pid is the group id, and the worker is the leader's parent:
//! until the worker reaps it, the id cannot be reused, so [`set`] is cleared
//! before the reap ([`clear`]).

use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU64, Ordering};

/// The group of the running command in this process (0: none), for the
/// signal handler.
static GROUP: AtomicI32 = AtomicI32::new(0);
/// Slot 4 of this worker's beacon, once [`arm`] ran.
static SLOT: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());

/// Publishes `pgid` as the group of the command now running. Call it right
/// after the command started, before anything that can fail.
pub fn set(pgid: i32) {
    GROUP.store(pgid, Ordering::Release);
    store_slot(u64::try_from(pgid).unwrap_or(0));
}

/// Withdraws the group published by [`set`]: call it before reaping the
/// command's leader (after that its pid may name a stranger).
pub fn clear() {
    GROUP.store(0, Ordering::Release);
    store_slot(0);
}

fn store_slot(v: u64) {
    let slot = SLOT.load(Ordering::Acquire);
    if !slot.is_null() {
        // SAFETY: SLOT points into the worker's live beacon mapping; the
        // beacon clears it before unmapping (see `detach`).
        unsafe { (*slot).store(v, Ordering::Release) };
    }
}

/// In a worker: mirrors [`set`] into `slot` (the beacon's slot 4), kills the
/// published group on `SIGTERM` before dying of it, and asks for `SIGTERM`
/// instead of `SIGKILL` when the parent dies, so that a dead supervisor or
/// fork server takes the command with the worker.
pub(crate) fn arm(slot: &AtomicU64) {
    SLOT.store(std::ptr::from_ref(slot).cast_mut(), Ordering::Release);
    // SAFETY: a zeroed sigaction with a handler that is async-signal-safe
    // (atomic loads, kill, raise); SA_RESETHAND restores the default action,
    // so the re-raised SIGTERM is fatal as the handler returns.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_term as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        // Replaces the SIGKILL asked for at start-up: no moment without one.
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGTERM as libc::c_ulong,
            0,
            0,
            0,
        );
    }
}

/// Forgets `slot` if it is the one [`arm`] recorded (the beacon is going).
pub(crate) fn detach(slot: &AtomicU64) {
    let mine = std::ptr::from_ref(slot).cast_mut();
    let _ = SLOT.compare_exchange(
        mine,
        std::ptr::null_mut(),
        Ordering::AcqRel,
        Ordering::Acquire,
    );
}

extern "C" fn on_term(sig: libc::c_int) {
    let pgid = GROUP.load(Ordering::Acquire);
    if pgid > 0 {
        // SAFETY: kill is async-signal-safe; the group's leader is our
        // unreaped child, so the id is still its group's.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    // SAFETY: raise is async-signal-safe; see `arm` for why it is fatal.
    unsafe { libc::raise(sig) };
}
