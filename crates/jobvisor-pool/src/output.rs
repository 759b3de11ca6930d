//! Whose output a worker's log line is: the job id the supervisor puts on
//! each line it logs from a worker's stdout/stderr (`job=`).
//!
//! A worker's output comes through one pipe, with no say of which call wrote
//! it. The worker's beacon counts and names the CPU calls it starts
//! ([`BeaconLook`]); the log drain looks at it before each read and after.
//! Output read at one look was written after an earlier look that preceded a
//! read which emptied the pipe; between the two looks:
//!
//! | calls started | running at the earlier look | the writer |
//! |---|---|---|
//! | none | call X | X (it ran throughout, or ended in between) |
//! | none | none | no call (the worker itself, or an async task) |
//! | exactly one | none | that call (the last one started) |
//! | otherwise | | not known: the line is logged without a job |
//!
//! Lines an async task prints while a CPU call runs on the same worker carry
//! that CPU call's job; output a task leaves in its own buffers (a `print!`
//! without a newline) is logged when the process flushes it, perhaps later.
//!
//! [`CallJobs`] maps a call to the job it was submitted for
//! ([`crate::CallOptions::job`]); the entry lives as long as the call's handle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jobvisor_worker::BeaconLook;

/// The call that wrote output read between look `since` and look `now`
/// (see the module's table); `None` when that is not known.
pub(crate) fn writer_of(since: Option<BeaconLook>, now: Option<BeaconLook>) -> Option<u64> {
    let (a, b) = (since?, now?);
    match b.started.checked_sub(a.started)? {
        0 if a.running != 0 => Some(a.running),
        1 if a.running == 0 && b.last_started != 0 => Some(b.last_started),
        _ => None,
    }
}

/// Call id → the caller's job id, for calls submitted with one.
#[derive(Debug, Default)]
pub(crate) struct CallJobs {
    /// A std mutex: held for one map operation, never across an await.
    map: Mutex<HashMap<u64, u64>>,
}

impl CallJobs {
    /// Records that `call` runs `job`; the entry goes when the guard drops.
    pub(crate) fn insert(self: &Arc<Self>, call: u64, job: u64) -> CallJobGuard {
        if let Ok(mut m) = self.map.lock() {
            m.insert(call, job);
        }
        CallJobGuard {
            jobs: self.clone(),
            call,
        }
    }

    /// The job of `call`, if it was submitted with one and is not answered.
    pub(crate) fn job_of(&self, call: u64) -> Option<u64> {
        self.map.lock().ok()?.get(&call).copied()
    }
}

/// Removes its call's entry from [`CallJobs`] when dropped.
#[derive(Debug)]
pub(crate) struct CallJobGuard {
    jobs: Arc<CallJobs>,
    call: u64,
}

impl Drop for CallJobGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.jobs.map.lock() {
            m.remove(&self.call);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn look(started: u64, running: u64, last_started: u64) -> Option<BeaconLook> {
        Some(BeaconLook {
            started,
            running,
            last_started,
        })
    }

    #[test]
    fn the_writer_is_named_only_when_one_call_can_have_written() {
        // X ran at the first look and nothing started since: X.
        assert_eq!(writer_of(look(3, 7, 7), look(3, 7, 7)), Some(7));
        assert_eq!(writer_of(look(3, 7, 7), look(3, 0, 7)), Some(7));
        // Idle throughout: nobody's.
        assert_eq!(writer_of(look(3, 0, 7), look(3, 0, 7)), None);
        // Idle, then exactly one call started (running or done by now).
        assert_eq!(writer_of(look(3, 0, 7), look(4, 8, 8)), Some(8));
        assert_eq!(writer_of(look(3, 0, 7), look(4, 0, 8)), Some(8));
        // X ran, then another started: either may have written.
        assert_eq!(writer_of(look(3, 7, 7), look(4, 8, 8)), None);
        // Two started: either.
        assert_eq!(writer_of(look(3, 0, 7), look(5, 9, 9)), None);
        // A torn or scribbled beacon says nothing.
        assert_eq!(writer_of(None, look(3, 7, 7)), None);
        assert_eq!(writer_of(look(3, 7, 7), None), None);
        assert_eq!(writer_of(look(5, 7, 7), look(3, 7, 7)), None);
    }

    #[test]
    fn a_calls_job_lives_as_long_as_its_guard() {
        let jobs = Arc::new(CallJobs::default());
        let guard = jobs.insert(1, 42);
        assert_eq!((jobs.job_of(1), jobs.job_of(2)), (Some(42), None));
        drop(guard);
        assert_eq!(jobs.job_of(1), None);
    }
}
