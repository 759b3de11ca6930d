//! A worker's memory: the hard cap on its address space, the soft limit on
//! its resident set that makes it recycle itself, and the allocator tuning
//! that keeps frame-sized buffers from being page-faulted in anew.

use std::io;
use std::time::Duration;

use crate::error::WorkerError;

/// Caps this process's address space: allocations beyond it fail (Rust then
/// aborts the worker, which the supervisor reports as "memory limit exceeded").
///
/// # Errors
/// [`WorkerError::Limit`] when `setrlimit` refuses.
pub(crate) fn limit_address_space(bytes: u64) -> Result<(), WorkerError> {
    let lim = libc::rlimit {
        rlim_cur: bytes,
        rlim_max: bytes,
    };
    // SAFETY: setrlimit with a valid pointer to a local struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) } != 0 {
        return Err(WorkerError::Limit {
            bytes,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Why the worker must recycle itself, when its resident set is over the
/// soft memory limit of `limit` bytes.
pub(crate) fn over_soft_limit(limit: u64) -> Option<String> {
    soft_limit_reason(resident_bytes()?, limit)
}

/// The rule of [`over_soft_limit`]: over means strictly above the limit.
fn soft_limit_reason(rss: u64, limit: u64) -> Option<String> {
    (rss > limit).then(|| {
        format!(
            "resident set {} KiB is over the soft memory limit of {} KiB",
            rss / 1024,
            limit / 1024
        )
    })
}

/// How often, at most, the CPU thread checks the soft limit while calls
/// are queued.
const RSS_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Whether the CPU thread checks its resident set after a call, `since_last`
/// the last check: only under a soft limit (`limit` > 0); after every call
/// that emptied the queue (the worker may then idle for long); else at most
/// every [`RSS_CHECK_INTERVAL`], as reading `/proc` costs more than a tiny call.
pub(crate) fn rss_check_due(limit: u64, queue_empty: bool, since_last: Duration) -> bool {
    limit > 0 && (queue_empty || since_last >= RSS_CHECK_INTERVAL)
}

/// What the CPU thread does when the worker is over its soft limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverLimit {
    /// Async calls are running and must finish here: the worker announces
    /// `Draining` (once, by whichever thread sees it first) and goes on.
    Drain,
    /// Nothing else runs: announce `Retiring` and leave between calls; the
    /// supervisor re-dispatches what was not answered and starts a fresh
    /// worker.
    Retire,
}

/// [`OverLimit`] for a worker whose I/O lane holds `async_calls_held` calls.
pub(crate) fn over_limit_action(async_calls_held: usize) -> OverLimit {
    if async_calls_held > 0 {
        OverLimit::Drain
    } else {
        OverLimit::Retire
    }
}

/// This process's resident set in bytes, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    resident_from_statm(&statm, u64::try_from(page).unwrap_or(4096))
}

/// This process's peak resident set (`VmHWM`, KiB), from `/proc/self/status`:
/// the high-water mark of its own memory since its last `exec`. `wait4`'s
/// `ru_maxrss` is not: it keeps what `exec` carried over from the process
/// that forked it (a `spawn` worker's supervisor).
pub(crate) fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    hwm_from_status(&status)
}

/// `VmHWM` in KiB from the text of `/proc/<pid>/status`.
fn hwm_from_status(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?;
    line.trim().strip_suffix("kB")?.trim().parse().ok()
}

/// This process's `ru_maxrss` (KiB), as its parent's `wait4` would see it now.
pub(crate) fn max_rss_kib() -> u64 {
    // SAFETY: rusage is plain old data; getrusage writes one.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a local.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    u64::try_from(usage.ru_maxrss).unwrap_or(0)
}

/// How often, at most, a worker samples its peak resident set for its beacon.
pub(crate) const PEAK_SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The resident set in bytes from the text of `/proc/<pid>/statm` (its
/// second field, in pages).
fn resident_from_statm(statm: &str, page_bytes: u64) -> Option<u64> {
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    pages.checked_mul(page_bytes)
}

/// Keeps freed frame-sized buffers in the heap instead of returning them to
/// the kernel after every call: glibc trims the heap top above 128 KiB by
/// default, and serves allocations above its mmap threshold with fresh
/// mappings, so every 1 MiB input would be page-faulted in anew.
///
/// Call it before the I/O lane's thread exists.
pub(crate) fn tune_malloc() {
    // SAFETY: mallopt only adjusts allocator parameters; the caller runs it
    // while the process has a single thread.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, 16 << 20);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_means_strictly_above_the_limit() {
        assert_eq!(soft_limit_reason(1 << 20, 1 << 20), None);
        assert_eq!(
            soft_limit_reason((1 << 20) + 4096, 1 << 20).as_deref(),
            Some("resident set 1028 KiB is over the soft memory limit of 1024 KiB")
        );
    }

    #[test]
    fn the_limit_is_checked_when_the_queue_runs_dry_or_every_10_ms() {
        let ms = Duration::from_millis;
        assert!(!rss_check_due(0, true, ms(1000)), "no limit, no check");
        assert!(rss_check_due(1, true, ms(0)));
        assert!(!rss_check_due(1, false, ms(9)));
        assert!(rss_check_due(1, false, ms(10)));
    }

    #[test]
    fn over_the_limit_a_worker_drains_its_async_calls_or_retires() {
        assert_eq!(over_limit_action(0), OverLimit::Retire);
        assert_eq!(over_limit_action(3), OverLimit::Drain);
    }

    #[test]
    fn statm_gives_the_resident_set_in_bytes() {
        assert_eq!(
            resident_from_statm("2518 352 298 6 0 168 0\n", 4096),
            Some(352 * 4096)
        );
        assert_eq!(resident_from_statm("2518", 4096), None);
        assert_eq!(resident_from_statm("2518 x 1", 4096), None);
        assert_eq!(resident_from_statm(&format!("1 {}", u64::MAX), 4096), None);
    }

    #[test]
    fn status_gives_the_peak_resident_set_in_kib() {
        let status = "Name:\tx\nVmPeak:\t  9000 kB\nVmHWM:\t    1234 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(hwm_from_status(status), Some(1234));
        assert_eq!(hwm_from_status("VmHWM:\t12 MB\n"), None);
        assert_eq!(hwm_from_status("Name:\tx\n"), None);
        assert!(peak_rss_kib().is_some_and(|k| k > 0));
        assert!(max_rss_kib() > 0);
    }

    #[test]
    fn this_process_has_a_resident_set() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
        assert_eq!(over_soft_limit(u64::MAX), None);
    }
}
