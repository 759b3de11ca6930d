//! The call beacon: one shared page between a worker and its supervisor that
//! says which call the worker is running right now.
//!
//! Replies travel in batches, so when a worker dies the supervisor cannot
//! tell from the pipe which call killed it: several may have finished with
//! their replies still in the worker's buffer. The worker stores the id of
//! the call it is about to run (and 0 once it is done) in this page — an
//! atomic store, no syscall — and the supervisor reads it after the death:
//! that call is charged; the others were not running and go back to the queue.
//!
//! Slots (one `u64` each): 0, the running CPU call; 1, the async call being
//! polled; 2, which thread aborted (written by a `SIGABRT` handler); 3, the
//! running CPU call's soft deadline, so that the supervisor's grace runs from
//! the worker's own deadline, not from when it sent the call; 4, the process
//! group of the command the running call started (`exec`), which whoever
//! reaps a dead worker kills (see `crate::child_group`); 5, a sequence
//! (seqlock) of CPU call starts, twice their number, odd while one is being
//! written; 6, the last CPU call started (slots 5 and 6 let the supervisor
//! tell which call wrote the output it reads, [`Beacon::look`]); 7, the
//! length of the last panic message, kept from byte 128 to the end of the
//! page: a crash's last lines of stderr may be all backtrace, the message
//! scrolled away; 8, the worker's `ru_maxrss` as it started (KiB: what `exec`
//! carried over from the process that forked it); 9, its own peak resident
//! set as last sampled (see [`Beacon::own_peak_kib`]).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{fence, AtomicBool, AtomicI64, AtomicPtr, AtomicU64, Ordering};

/// A mapped beacon page.
#[derive(Debug)]
pub struct Beacon {
    ptr: *mut AtomicU64,
    /// The memfd, kept only by the side that created the beacon and hands it
    /// on ([`Beacon::try_clone_fd`]). A worker keeps the mapping alone: an fd
    /// left open is one a task can write garbage through.
    fd: Option<OwnedFd>,
}

// SAFETY: the mapping is process-wide memory accessed only through an
// AtomicU64; the pointer stays valid until Drop unmaps it.
unsafe impl Send for Beacon {}
// SAFETY: as above; all access is atomic.
unsafe impl Sync for Beacon {}

const PAGE: usize = 4096;

impl Beacon {
    /// Creates a new beacon (a `memfd`, close-on-exec) reading 0.
    ///
    /// # Errors
    /// `memfd_create`, `ftruncate` or `mmap` failed.
    pub fn create() -> io::Result<Self> {
        // SAFETY: memfd_create with a NUL-terminated name and valid flags.
        let fd = unsafe { libc::memfd_create(c"jobvisor-beacon".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ftruncate on a valid fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), PAGE as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let ptr = map_page(&fd)?;
        Ok(Self { ptr, fd: Some(fd) })
    }

    /// Maps a beacon received from the other side, and closes `fd`: the
    /// mapping is all either side needs from here on.
    ///
    /// # Errors
    /// `mmap` failed (e.g. the fd is not a beacon of at least a page).
    pub fn map(fd: OwnedFd) -> io::Result<Self> {
        let ptr = map_page(&fd)?;
        Ok(Self { ptr, fd: None })
    }

    /// Closes the memfd of a beacon made by [`Beacon::create`], keeping the
    /// mapping: for a worker forked with the beacon already mapped.
    pub fn close_fd(&mut self) {
        self.fd = None;
    }

    /// The descriptor, to hand to the other side (dup it; the beacon keeps its own).
    ///
    /// # Errors
    /// `dup` failed, or this beacon was mapped from a received fd and keeps none.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.fd
            .as_ref()
            .ok_or_else(|| {
                io::Error::other("this beacon keeps no fd (mapped from a received one)")
            })?
            .try_clone()
    }

    fn cell(&self, slot: usize) -> &AtomicU64 {
        debug_assert!(slot * 8 < PANIC_AT);
        // SAFETY: ptr points to a live, page-aligned shared mapping of PAGE
        // bytes (see map); slots 0 to 15 are its first 128 bytes.
        unsafe { &*self.ptr.add(slot) }
    }

    /// In the worker: records, should the process abort (`SIGABRT`: a panic
    /// under `panic=abort`, a failed allocation, a stack overflow,
    /// `std::process::abort`), which of its threads aborted, so that the
    /// supervisor charges the CPU call or the async call, not a bystander.
    /// Installs a one-shot `SIGABRT` handler that only stores to this page.
    pub fn mark_crashing_thread(&self) {
        CRASH_SLOT.store(
            std::ptr::from_ref(self.cell(2)).cast_mut(),
            Ordering::Release,
        );
        // SAFETY: a zeroed sigaction with a handler that is async-signal-safe
        // (an atomic load, gettid, an atomic store); SA_RESETHAND restores the
        // default action, so the abort then proceeds as usual.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_abort as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESETHAND;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut());
        }
    }

    /// In the worker: publishes the group of the command a call starts
    /// (`crate::child_group::set`) in this page, and kills that group when
    /// the worker gets `SIGTERM` or loses its parent.
    pub fn arm_child_group(&self) {
        crate::child_group::arm(self.cell(4));
    }

    /// The process group of the command the worker was running (read after
    /// its death), if any. Its leader is the worker's child, so the id is
    /// safe to kill until the leader is reaped; the fork server, a
    /// subreaper, holds the leader's zombie until it has killed the group.
    pub fn child_group(&self) -> Option<i32> {
        i32::try_from(self.cell(4).load(Ordering::Acquire))
            .ok()
            .filter(|&g| g > 0)
    }

    /// Which thread of the worker aborted (read after its death).
    pub fn crashed_thread(&self) -> CrashedThread {
        match self.cell(2).load(Ordering::Acquire) {
            1 => CrashedThread::Cpu,
            2 => CrashedThread::Io,
            _ => CrashedThread::Unknown,
        }
    }

    /// Marks CPU call `id` as running (0: none).
    pub fn set(&self, id: u64) {
        if id == 0 {
            self.cell(0).store(0, Ordering::Release);
        } else {
            self.started(id);
        }
    }

    /// A CPU call starts: count it and name it (slots 5, 6), then mark it
    /// running, as one seqlock write so [`Beacon::look`] never sees half.
    fn started(&self, id: u64) {
        let seq = self.cell(5).load(Ordering::Relaxed);
        self.cell(5).store(seq.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.cell(6).store(id, Ordering::Relaxed);
        self.cell(0).store(id, Ordering::Relaxed);
        self.cell(5).store(seq.wrapping_add(2), Ordering::Release);
    }

    /// In the supervisor: the CPU calls started so far, the running one and
    /// the last one started, read together; `None` if the worker kept
    /// writing them (or scribbled on the page) through a few tries.
    pub fn look(&self) -> Option<BeaconLook> {
        for _ in 0..4 {
            let before = self.cell(5).load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let running = self.cell(0).load(Ordering::Relaxed);
            let last_started = self.cell(6).load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if self.cell(5).load(Ordering::Relaxed) == before {
                return Some(BeaconLook {
                    started: before / 2,
                    running,
                    last_started,
                });
            }
        }
        None
    }

    /// Marks CPU call `id` as running with its soft deadline, in
    /// [`monotonic_us`] (0: none). The worker counts a call's timeout from
    /// when it starts the call, the supervisor from when it sent it; with
    /// this, the supervisor waits for the worker's own deadline before it
    /// escalates, however late the worker got to the call.
    pub fn set_with_deadline(&self, id: u64, deadline_us: u64) {
        self.cell(3).store(deadline_us, Ordering::Relaxed);
        self.set(id);
    }

    /// The soft deadline of the running CPU call, in [`monotonic_us`], if it
    /// has one. Read after [`Beacon::get`] named the call.
    pub fn cpu_deadline(&self) -> Option<u64> {
        Some(self.cell(3).load(Ordering::Acquire)).filter(|&d| d != 0)
    }

    /// The CPU call that is (or was, when the worker died) running; 0 for none.
    pub fn get(&self) -> u64 {
        self.cell(0).load(Ordering::Acquire)
    }

    /// Marks async call `id` as being polled on the event loop right now (0:
    /// none): only a call whose code is running can crash the worker.
    pub fn set_io(&self, id: u64) {
        self.cell(1).store(id, Ordering::Release);
    }

    /// The async call that is (or was, when the worker died) being polled; 0
    /// for none.
    pub fn get_io(&self) -> u64 {
        self.cell(1).load(Ordering::Acquire)
    }

    /// In the worker: its `ru_maxrss` as it starts, before it runs anything
    /// (KiB), and its own peak resident set (`VmHWM`, KiB) sampled now.
    pub fn set_rss_at_start(&self, max_rss_kib: u64, peak_kib: u64) {
        self.cell(8).store(max_rss_kib, Ordering::Relaxed);
        self.set_peak_rss(peak_kib);
    }

    /// In the worker: its own peak resident set (`VmHWM`, KiB), sampled now.
    pub fn set_peak_rss(&self, peak_kib: u64) {
        self.cell(9).store(peak_kib, Ordering::Release);
    }

    /// The dead worker's own peak resident set (KiB), from `wait4`'s
    /// `ru_maxrss` (`wait_kib`). That figure is the largest of the worker's
    /// own peak and what `exec` carried over from the process that forked it
    /// (for a `spawn` worker, the supervisor's resident set): above what the
    /// worker carried as it started, it is the worker's own, exactly; not
    /// above, the worker never grew past what it carried, and its own peak is
    /// the one it sampled last (after its last call, within
    /// 100 ms). A worker that wrote nothing leaves `wait_kib` as it is.
    pub fn own_peak_kib(&self, wait_kib: u64) -> u64 {
        own_peak_kib(
            wait_kib,
            self.cell(8).load(Ordering::Acquire),
            self.cell(9).load(Ordering::Acquire),
        )
    }

    /// In the worker: keeps the message of each panic in this page (see
    /// [`Beacon::panic_message`]), then lets the hook that was installed
    /// before print it as usual.
    pub fn record_panics(&self) {
        PANIC_PAGE.store(self.ptr, Ordering::Release);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let page = PANIC_PAGE.load(Ordering::Acquire);
            // One writer at a time; a second thread panicking meanwhile
            // keeps the first one's message.
            if !page.is_null() && !PANIC_WRITING.swap(true, Ordering::AcqRel) {
                // SAFETY: PANIC_PAGE points to a live beacon mapping (Drop
                // clears it before unmapping), and PANIC_WRITING makes this
                // the only writer of its message bytes.
                unsafe { write_panic(page, &panic_text(info)) };
                PANIC_WRITING.store(false, Ordering::Release);
            }
            previous(info);
        }));
    }

    /// In the worker: forgets the last panic (a call starts; a panic it
    /// caught before is not the cause of a later death).
    pub fn clear_panic(&self) {
        if self.cell(PANIC_LEN_SLOT).load(Ordering::Relaxed) != 0 {
            self.cell(PANIC_LEN_SLOT).store(0, Ordering::Release);
        }
    }

    /// The message of the worker's last panic since its call started, read
    /// after its death. Bounded by the page whatever a task wrote into it.
    pub fn panic_message(&self) -> Option<String> {
        let len = self.cell(PANIC_LEN_SLOT).load(Ordering::Acquire);
        let len = usize::try_from(len).unwrap_or(usize::MAX).min(PANIC_MAX);
        if len == 0 {
            return None;
        }
        // SAFETY: bytes PANIC_AT..PANIC_AT+len lie inside the live mapping;
        // volatile reads, since the other process wrote them.
        let bytes: Vec<u8> = (0..len)
            .map(|i| unsafe { self.ptr.cast::<u8>().add(PANIC_AT + i).read_volatile() })
            .collect();
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// See [`Beacon::own_peak_kib`]: `carried_kib` and `sampled_kib` as the
/// worker wrote them (0: it did not).
fn own_peak_kib(wait_kib: u64, carried_kib: u64, sampled_kib: u64) -> u64 {
    if carried_kib == 0 || sampled_kib == 0 || wait_kib > carried_kib {
        wait_kib
    } else {
        sampled_kib.min(wait_kib)
    }
}

/// Slot of the panic message's length.
const PANIC_LEN_SLOT: usize = 7;
/// Where in the page the panic message starts.
const PANIC_AT: usize = 128;
/// The longest panic message kept (longer ones are cut).
const PANIC_MAX: usize = PAGE - PANIC_AT;

/// The beacon page the panic hook writes to (null: none).
static PANIC_PAGE: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// The panic hook is writing a message.
static PANIC_WRITING: AtomicBool = AtomicBool::new(false);

/// `thread 'main' panicked at src/x.rs:1:2: message`.
fn panic_text(info: &std::panic::PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("<unnamed>");
    let payload = info
        .payload()
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
        .unwrap_or("Box<dyn Any>");
    match info.location() {
        Some(at) => format!("thread '{name}' panicked at {at}: {payload}"),
        None => format!("thread '{name}' panicked: {payload}"),
    }
}

/// Stores `text` (cut to [`PANIC_MAX`] bytes, on a character boundary) as the
/// last panic message of beacon page `page`.
///
/// # Safety
/// `page` is a live beacon mapping, and nothing else writes its message bytes.
unsafe fn write_panic(page: *mut AtomicU64, text: &str) {
    let mut n = text.len().min(PANIC_MAX);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    // SAFETY: as the caller promises; the length goes last, so a reader
    // never sees more bytes than were written.
    unsafe {
        (*page.add(PANIC_LEN_SLOT)).store(0, Ordering::Release);
        std::ptr::copy_nonoverlapping(text.as_ptr(), page.cast::<u8>().add(PANIC_AT), n);
        (*page.add(PANIC_LEN_SLOT)).store(n as u64, Ordering::Release);
    }
}

/// Maps the first page of beacon `fd`, shared.
fn map_page(fd: &OwnedFd) -> io::Result<*mut AtomicU64> {
    // SAFETY: a fresh shared mapping of PAGE bytes of a valid fd; checked below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

/// What [`Beacon::look`] read: enough to tell which CPU call ran between two
/// looks (the supervisor names the job on the worker's output lines with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeaconLook {
    /// CPU calls started so far.
    pub started: u64,
    /// The running CPU call (0: none).
    pub running: u64,
    /// The last CPU call started (0: none yet).
    pub last_started: u64,
}

/// `CLOCK_MONOTONIC` in microseconds: one clock for every process of the
/// machine (the clock behind `std::time::Instant` on Linux).
pub fn monotonic_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000 + (ts.tv_nsec as u64) / 1_000
}

/// Which thread of a dead worker aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashedThread {
    /// It did not abort (a signal from outside, `SIGSEGV`, an exit), or it
    /// did not say.
    Unknown,
    /// The CPU thread: the running CPU call is the cause.
    Cpu,
    /// The I/O lane: the async call being polled is the cause.
    Io,
}

/// Slot 2 of the worker's beacon, for the `SIGABRT` handler.
static CRASH_SLOT: AtomicPtr<AtomicU64> = AtomicPtr::new(std::ptr::null_mut());
/// The kernel thread id of the I/O lane (0: none).
static LANE_TID: AtomicI64 = AtomicI64::new(0);

/// Called by the I/O lane's thread when it starts.
pub(crate) fn this_is_the_lane_thread() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
    LANE_TID.store(tid, Ordering::Release);
}

extern "C" fn on_abort(sig: libc::c_int) {
    let slot = CRASH_SLOT.load(Ordering::Acquire);
    if !slot.is_null() {
        // SAFETY: gettid is async-signal-safe and has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        let lane = LANE_TID.load(Ordering::Acquire);
        let who = if lane != 0 && tid == lane { 2 } else { 1 };
        // SAFETY: CRASH_SLOT points into a live beacon mapping; Drop clears
        // it before unmapping.
        unsafe { (*slot).store(who, Ordering::Release) };
    }
    // SA_RESETHAND restored the default action; the signal is blocked while
    // this handler runs, so raising it again makes it fatal as it returns,
    // whether it came from abort(3) or from a bare raise(SIGABRT).
    // SAFETY: raise is async-signal-safe.
    unsafe { libc::raise(sig) };
}

impl Drop for Beacon {
    fn drop(&mut self) {
        crate::child_group::detach(self.cell(4));
        let mine = std::ptr::from_ref(self.cell(2)).cast_mut();
        let _ = CRASH_SLOT.compare_exchange(
            mine,
            std::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let _ = PANIC_PAGE.compare_exchange(
            self.ptr,
            std::ptr::null_mut(),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        // SAFETY: unmapping exactly the region mapped in `map`.
        unsafe { libc::munmap(self.ptr.cast(), PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_see_each_other() {
        let a = Beacon::create().unwrap();
        let b = Beacon::map(a.try_clone_fd().unwrap()).unwrap();
        assert_eq!(b.get(), 0);
        a.set(42);
        assert_eq!(b.get(), 42);
        b.set(0);
        assert_eq!(a.get(), 0);
        a.set_io(7);
        assert_eq!((b.get(), b.get_io()), (0, 7));
    }

    #[test]
    fn a_look_counts_and_names_the_calls_started() {
        let a = Beacon::create().unwrap();
        let b = Beacon::map(a.try_clone_fd().unwrap()).unwrap();
        let none = BeaconLook {
            started: 0,
            running: 0,
            last_started: 0,
        };
        assert_eq!(b.look(), Some(none));
        a.set_with_deadline(5, 0);
        a.set(0);
        a.set(6);
        let want = BeaconLook {
            started: 2,
            running: 6,
            last_started: 6,
        };
        assert_eq!(b.look(), Some(want));
        a.set(0);
        assert_eq!(b.look().map(|l| (l.running, l.last_started)), Some((0, 6)));
    }

    #[test]
    fn the_peak_is_the_workers_own() {
        // Grew past what exec carried: wait4's figure is its own.
        assert_eq!(own_peak_kib(500_000, 200_000, 3_000), 500_000);
        // Never did: its own sample, not the supervisor's resident set.
        assert_eq!(own_peak_kib(200_000, 200_000, 3_000), 3_000);
        // Nothing written (an old worker, no beacon): as wait4 says.
        assert_eq!(own_peak_kib(200_000, 0, 0), 200_000);
        // A sample above wait4's figure (written over) is not believed.
        assert_eq!(own_peak_kib(9_000, 10_000, u64::MAX), 9_000);
        let a = Beacon::create().unwrap();
        a.set_rss_at_start(200_000, 3_000);
        a.set_peak_rss(4_000);
        assert_eq!(a.own_peak_kib(150_000), 4_000);
    }

    #[test]
    fn a_panic_message_crosses_bounded_and_is_cleared_by_a_call() {
        let a = Beacon::create().unwrap();
        let b = Beacon::map(a.try_clone_fd().unwrap()).unwrap();
        assert_eq!(b.panic_message(), None);
        // SAFETY: a's live mapping, written by this thread only.
        unsafe { write_panic(a.ptr, "thread 'main' panicked at x.rs:1:1: boom") };
        assert_eq!(
            b.panic_message().as_deref(),
            Some("thread 'main' panicked at x.rs:1:1: boom")
        );
        let long = "é".repeat(PAGE);
        // SAFETY: as above.
        unsafe { write_panic(a.ptr, &long) };
        let kept = b.panic_message().unwrap();
        assert!(
            kept.len() <= PANIC_MAX && long.starts_with(&kept),
            "{}",
            kept.len()
        );
        // A length scribbled past the page is cut at the page's end.
        a.cell(PANIC_LEN_SLOT).store(u64::MAX, Ordering::Release);
        assert!(b.panic_message().unwrap().len() <= PANIC_MAX * 3);
        a.clear_panic();
        assert_eq!(b.panic_message(), None);
    }
}
