//! The fork server: a small single-threaded process forked from `main` before
//! any runtime or thread exists. It forks workers on request, hands their pipe
//! ends, a pidfd and their beacon back over a `SOCK_SEQPACKET` socket with
//! `SCM_RIGHTS`, and reaps them: when a worker exits it first kills the
//! worker's whole process group (the pgid is still valid because the zombie
//! is not reaped yet) and the group of the command it was running (named in
//! its beacon), then `wait4`s it and reports code, signal and peak RSS.
//!
//! It is also a child subreaper: what a command orphans comes to it, and it
//! kills every child that is not a worker ([`super::orphans`]). When the
//! supervisor dies (EOF on the socket, or `SIGTERM`, its parent death signal,
//! read from the signalfd) it kills every worker, their commands' groups and
//! every orphan, reaps them all and exits: a daemon killed with `SIGKILL`
//! leaves no process of any job behind.
//!
//! Because the fork server is single-threaded, continuing to run Rust in the
//! forked worker is sound (no lock can be held by a thread that vanished), and
//! because it is small, `fork` is cheap and workers share its preloaded pages.
//!
//! The supervisor side is [`ForkServerClient`]: one blocking reader thread
//! routes replies (spawn results by token, exit reports by pid), so pools in
//! any number of runtimes share one fork server.

use std::collections::{HashMap, HashSet};
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

use jobvisor_proto::codec;
use jobvisor_proto::forkserver::{ExitStatus, ForkReply, ForkRequest};
use jobvisor_worker::Registry;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use nix::unistd::{fork, pipe2, ForkResult, Pid};
use tokio::sync::oneshot;

use super::{orphans, ExitSender, SpawnedWorker};
use crate::sys;

/// Size the call pipe (supervisor → worker) is grown to: large inputs cross
/// in one read. The reply pipe keeps the default: growing it too measurably
/// slowed small calls.
pub(crate) const PIPE_BYTES: i32 = 1 << 20;

/// Largest packet on the fork server socket.
const MAX_PACKET: usize = 4096;

/// How long, at most, the fork server goes on killing and reaping after the
/// supervisor died: a child stuck in an uninterruptible sleep must not keep
/// it (and the reaping of everything else) for ever.
const TAKE_DOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);

/// `PR_SET_PDEATHSIG` with `signal`.
fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments; touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_packet<T: serde::Serialize>(sock: RawFd, msg: &T, fds: &[RawFd]) -> io::Result<()> {
    let bytes = codec::encode(msg).map_err(io::Error::other)?;
    let iov = [IoSlice::new(&bytes)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsgs };
    loop {
        match sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one packet. `Ok(None)` on EOF. Received fds are close-on-exec.
fn recv_packet<T: serde::de::DeserializeOwned>(
    sock: RawFd,
) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
    let mut buf = [0u8; MAX_PACKET];
    let mut cmsg_space = nix::cmsg_space!([RawFd; 5]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut cmsg_space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => m,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS just installed these descriptors in our table; we own them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        if msg.flags.contains(MsgFlags::MSG_CTRUNC) || msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::other("fork server packet truncated"));
        }
        let n = msg.bytes;
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        let value = codec::decode(&buf[..n]).map_err(io::Error::other)?;
        return Ok(Some((value, fds)));
    }
}

/// Forks the fork server. Must run while this process has exactly one thread.
///
/// `initializer` runs once inside the fork server before it serves; whatever it
/// loads is shared copy-on-write by every worker.
pub(crate) fn start(
    registry: Registry,
    initializer: Option<Box<dyn FnOnce() + Send>>,
    worker_init: Option<fn()>,
) -> io::Result<ForkServerClient> {
    let threads = sys::thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "the fork server must be started before any thread exists, but this process has \
             {threads} threads: call jobvisor_pool::bootstrap() first thing in main"
        )));
    }
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let parent = nix::unistd::getpid();
    // SAFETY: the process is single-threaded (checked above), so the child may
    // keep running arbitrary Rust code.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ours);
            let code = match server_main(theirs, parent, registry, initializer, worker_init) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("jobvisor fork server: {e}");
                    1
                }
            };
            // SAFETY: _exit skips destructors of the parent's state we inherited.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => {
            drop(theirs);
            ForkServerClient::new(ours, child.as_raw())
        }
    }
}

fn server_main(
    sock: OwnedFd,
    parent: Pid,
    registry: Registry,
    initializer: Option<Box<dyn FnOnce() + Send>>,
    worker_init: Option<fn()>,
) -> io::Result<()> {
    // SIGTERM is the parent death signal, blocked before it is asked for and
    // read from the signalfd: the supervisor's death must not kill us before
    // we have killed what its jobs left.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.add(Signal::SIGTERM);
    let mut old = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), Some(&mut old))?;
    set_parent_death_signal(libc::SIGTERM)?;
    if nix::unistd::getppid() != parent {
        return Ok(()); // the supervisor died before prctl took effect
    }
    orphans::become_subreaper()?;
    // Own process group: a Ctrl-C in the terminal goes to the supervisor, which
    // decides how to stop; the fork server follows it through the socket/PDEATHSIG.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if let Some(init) = initializer {
        init();
    }
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;

    let mut server = Server {
        sock,
        sfd,
        old_mask: old,
        live: HashSet::new(),
        beacons: HashMap::new(),
        registry,
        worker_init,
    };
    server.run()
}

struct Server {
    sock: OwnedFd,
    sfd: SignalFd,
    old_mask: SigSet,
    live: HashSet<i32>,
    /// Our own mapping of each live worker's beacon: after its death, it
    /// names the group of the command it was running.
    beacons: HashMap<i32, jobvisor_worker::Beacon>,
    registry: Registry,
    worker_init: Option<fn()>,
}

impl Server {
    fn run(&mut self) -> io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        loop {
            let (sock_ready, sig_ready) = {
                let mut fds = [
                    PollFd::new(self.sock.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let any = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
                (any(&fds[0]), any(&fds[1]))
            };
            if sig_ready {
                let mut term = false;
                while let Ok(Some(info)) = self.sfd.read_signal() {
                    term |= info.ssi_signo == libc::SIGTERM as u32;
                }
                if term {
                    // The supervisor died (or someone stops us): as on EOF.
                    self.take_everything_down();
                    return Ok(());
                }
                self.reap()?;
            }
            if sock_ready {
                match recv_packet::<ForkRequest>(self.sock.as_raw_fd()) {
                    Ok(Some((req, _fds))) => self.handle(req)?,
                    Ok(None) | Err(_) => {
                        self.take_everything_down();
                        return Ok(());
                    }
                }
            }
        }
    }

    fn handle(&mut self, req: ForkRequest) -> io::Result<()> {
        match req {
            ForkRequest::Spawn { token } => match self.spawn() {
                Ok((pid, fds, beacon)) => {
                    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
                    send_packet(
                        self.sock.as_raw_fd(),
                        &ForkReply::Spawned {
                            token,
                            pid: pid as u32,
                        },
                        &raw,
                    )?;
                    self.live.insert(pid);
                    self.beacons.insert(pid, beacon);
                }
                Err(e) => {
                    let msg = ForkReply::SpawnFailed {
                        token,
                        message: e.to_string(),
                    };
                    send_packet(self.sock.as_raw_fd(), &msg, &[])?;
                }
            },
            ForkRequest::Signal { pid, signal, group } => {
                let pid = pid as i32;
                // Only a worker we have not reaped: its pid (and pgid) cannot have been reused.
                if self.live.contains(&pid) {
                    let _ = if group {
                        sys::killpg(pid, signal)
                    } else {
                        sys::kill(pid, signal)
                    };
                }
            }
        }
        Ok(())
    }

    /// Reaps every exited worker: kill its group first (the zombie keeps the
    /// pgid reserved), then `wait4`, then report.
    fn reap(&mut self) -> io::Result<()> {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        loop {
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            let pid = match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) => return Ok(()),
                Ok(st) => match st.pid() {
                    Some(p) => p.as_raw(),
                    None => return Ok(()),
                },
                Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            self.kill_groups_of(pid);
            let status = sys::wait4(pid)?;
            // Whatever reparented to us meanwhile (the command's leader killed
            // by its parent death signal, what it had started): kill it too.
            orphans::kill_orphans(&self.live);
            if !self.live.remove(&pid) {
                continue; // an orphan, not a worker: nobody to tell
            }
            send_packet(
                self.sock.as_raw_fd(),
                &ForkReply::Exited {
                    pid: pid as u32,
                    status,
                },
                &[],
            )?;
        }
    }

    /// Before reaping child `pid` (so that its pid still names its group):
    /// SIGKILLs the group it leads and, for a worker, the group of the command
    /// its beacon names (its leader, our orphan or the worker's child, is not
    /// reaped yet either).
    fn kill_groups_of(&mut self, pid: i32) {
        let _ = sys::killpg(pid, libc::SIGKILL);
        if let Some(group) = self.beacons.remove(&pid).and_then(|b| b.child_group()) {
            let _ = sys::killpg(group, libc::SIGKILL);
        }
    }

    /// The supervisor is gone: kill every worker, every command group and
    /// every orphan, and reap them all, for up to [`TAKE_DOWN_FOR`].
    fn take_everything_down(&mut self) {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        let pids: Vec<i32> = self.live.iter().copied().collect();
        for pid in pids {
            let _ = sys::kill(pid, libc::SIGKILL);
            if let Some(group) = self.beacons.get(&pid).and_then(|b| b.child_group()) {
                let _ = sys::killpg(group, libc::SIGKILL);
            }
        }
        let until = std::time::Instant::now() + TAKE_DOWN_FOR;
        while std::time::Instant::now() < until {
            // Everything alive is fair game now, workers included.
            orphans::kill_orphans(&HashSet::new());
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
            match waitid(Id::All, flags) {
                Ok(WaitStatus::StillAlive) => {
                    // Children that are dying, or orphans on their way to us:
                    // wait for a SIGCHLD, or look again soon.
                    self.await_sigchld(std::time::Duration::from_millis(5));
                }
                Ok(st) => {
                    if let Some(pid) = st.pid().map(Pid::as_raw) {
                        self.kill_groups_of(pid);
                        let _ = sys::wait4(pid);
                        self.live.remove(&pid);
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return, // ECHILD: nothing is left
            }
        }
    }

    /// Waits up to `wait` for a signal on the signalfd, and drains it.
    fn await_sigchld(&self, wait: std::time::Duration) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.sfd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(ms));
        while let Ok(Some(_)) = self.sfd.read_signal() {}
    }

    /// Forks one worker; returns its pid, the five fds the supervisor gets
    /// (its ends of the input, output and log pipes, a pidfd, and the beacon)
    /// and our own mapping of the beacon.
    fn spawn(&mut self) -> io::Result<(i32, [OwnedFd; 5], jobvisor_worker::Beacon)> {
        let beacon = jobvisor_worker::Beacon::create()?;
        let beacon_fd = beacon.try_clone_fd()?;
        let (in_r, in_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (out_r, out_w) = pipe2(OFlag::O_CLOEXEC)?;
        let (log_r, log_w) = pipe2(OFlag::O_CLOEXEC)?;
        sys::grow_pipe(in_w.as_fd(), PIPE_BYTES);
        let me = nix::unistd::getpid();
        // SAFETY: the fork server is single-threaded.
        match unsafe { fork() }? {
            ForkResult::Child => {
                drop(beacon_fd);
                // The other workers' beacons are none of this one's business.
                drop(std::mem::take(&mut self.beacons));
                let ends = [in_w, out_r, log_r];
                let code = worker_main(self, me, in_r, out_w, log_w, ends, beacon);
                // SAFETY: leave without running anything the fork server set up.
                unsafe { libc::_exit(code) }
            }
            ForkResult::Parent { child } => {
                let pid = child.as_raw();
                // Opened before we could reap it, so it names this very process.
                let pidfd = sys::pidfd_open(pid)?;
                drop((in_r, out_w, log_w));
                Ok((pid, [in_w, out_r, log_r, pidfd, beacon_fd], beacon))
            }
        }
    }
}

/// Runs in the freshly forked worker. Returns the exit code.
fn worker_main(
    server: &Server,
    fork_server: Pid,
    input: OwnedFd,
    output: OwnedFd,
    log: OwnedFd,
    supervisor_ends: [OwnedFd; 3],
    mut beacon: jobvisor_worker::Beacon,
) -> i32 {
    drop(supervisor_ends);
    // The page is mapped; an open memfd would only let a task write to it.
    beacon.close_fd();
    // The fork server's own descriptors must not live on in the worker: the
    // supervisor detects the fork server's death by EOF on its socket.
    // SAFETY: closing fds we inherited and will not use; no other owner in this process.
    unsafe {
        libc::close(server.sock.as_raw_fd());
        libc::close(server.sfd.as_fd().as_raw_fd());
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&server.old_mask), None);
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if sys::set_parent_death_signal().is_err() || nix::unistd::getppid() != fork_server {
        return 1;
    }
    if redirect_stdio(&log).is_err() {
        return 1;
    }
    drop(log);
    // Nothing but stdio and the protocol descriptors: not what the supervisor
    // inherited and passed on to the fork server (the shell's fds, say).
    let mut keep = [input.as_raw_fd(), output.as_raw_fd()];
    if sys::close_fds_except(&mut keep, false).is_err() {
        return 1;
    }
    if let Some(init) = server.worker_init {
        init();
    }
    finish_worker(jobvisor_worker::serve_with_beacon(
        &server.registry,
        input,
        output,
        Some(beacon),
    ))
}

/// stdin from /dev/null, stdout and stderr into the log pipe.
pub(crate) fn redirect_stdio(log: &OwnedFd) -> io::Result<()> {
    let null = nix::fcntl::open(
        "/dev/null",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: dup2 onto the standard descriptors; the sources are valid fds we hold.
    unsafe {
        if libc::dup2(null.as_raw_fd(), 0) < 0
            || libc::dup2(log.as_raw_fd(), 1) < 0
            || libc::dup2(log.as_raw_fd(), 2) < 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Exit code of a worker from the result of its loop.
pub(crate) fn finish_worker(result: Result<(), jobvisor_worker::WorkerError>) -> i32 {
    use std::io::Write;
    let code = match result {
        Ok(()) => 0,
        Err(e) => {
            let why = jobvisor_worker::error_chain(&e);
            eprintln!("jobvisor worker {}: {why}", std::process::id());
            3
        }
    };
    let _ = std::io::stdout().flush();
    code
}

type SpawnReply = oneshot::Sender<io::Result<SpawnedWorker>>;

#[derive(Default)]
struct Routes {
    next_token: u64,
    pending: HashMap<u64, (SpawnReply, ExitSender)>,
    exits: HashMap<u32, ExitSender>,
    dead: Option<String>,
}

/// The supervisor's handle on the fork server.
pub(crate) struct ForkServerClient {
    sock: Arc<OwnedFd>,
    pid: i32,
    /// Short critical sections only: token allocation + send, and routing in the reader thread.
    routes: Arc<Mutex<Routes>>,
}

impl std::fmt::Debug for ForkServerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServerClient")
            .field("pid", &self.pid)
            .finish()
    }
}

impl ForkServerClient {
    fn new(sock: OwnedFd, pid: i32) -> io::Result<Self> {
        let sock = Arc::new(sock);
        let routes = Arc::new(Mutex::new(Routes::default()));
        let (rs, rr) = (sock.clone(), routes.clone());
        std::thread::Builder::new()
            .name("jobvisor-forkserver".into())
            .spawn(move || reader(rs, rr))?;
        Ok(Self { sock, pid, routes })
    }

    /// The fork server's pid.
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether the fork server is still answering.
    pub(crate) fn is_alive(&self) -> bool {
        self.routes
            .lock()
            .map(|r| r.dead.is_none())
            .unwrap_or(false)
    }

    /// Asks for a worker; exits of that worker will be sent to `exits`.
    pub(crate) fn spawn(&self, exits: ExitSender) -> oneshot::Receiver<io::Result<SpawnedWorker>> {
        let (tx, rx) = oneshot::channel();
        let mut routes = match self.routes.lock() {
            Ok(r) => r,
            Err(_) => {
                let _ = tx.send(Err(io::Error::other("fork server client poisoned")));
                return rx;
            }
        };
        if let Some(why) = &routes.dead {
            let _ = tx.send(Err(io::Error::other(format!("fork server is gone: {why}"))));
            return rx;
        }
        let token = routes.next_token;
        routes.next_token += 1;
        match send_packet(self.sock.as_raw_fd(), &ForkRequest::Spawn { token }, &[]) {
            Ok(()) => {
                routes.pending.insert(token, (tx, exits));
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
        rx
    }

    /// Signals a worker or its group, if the fork server has not reaped it.
    pub(crate) fn signal(&self, pid: u32, signal: i32, group: bool) -> io::Result<()> {
        send_packet(
            self.sock.as_raw_fd(),
            &ForkRequest::Signal { pid, signal, group },
            &[],
        )
    }
}

fn reader(sock: Arc<OwnedFd>, routes: Arc<Mutex<Routes>>) {
    let why = loop {
        match recv_packet::<ForkReply>(sock.as_raw_fd()) {
            Ok(Some((reply, fds))) => {
                let Ok(mut r) = routes.lock() else { return };
                match reply {
                    ForkReply::Spawned { token, pid } => {
                        let Some((tx, exits)) = r.pending.remove(&token) else {
                            continue;
                        };
                        let worker = <[OwnedFd; 5]>::try_from(fds)
                            .map_err(|v| {
                                io::Error::other(format!(
                                    "fork server sent {} fds, expected 5",
                                    v.len()
                                ))
                            })
                            .and_then(|[to_worker, from_worker, log, pidfd, beacon]| {
                                Ok(SpawnedWorker {
                                    pid,
                                    pidfd,
                                    to_worker,
                                    from_worker,
                                    log,
                                    beacon: jobvisor_worker::Beacon::map(beacon)?,
                                })
                            });
                        if worker.is_ok() {
                            r.exits.insert(pid, exits);
                        }
                        let _ = tx.send(worker);
                    }
                    ForkReply::SpawnFailed { token, message } => {
                        if let Some((tx, _)) = r.pending.remove(&token) {
                            let _ = tx.send(Err(io::Error::other(message)));
                        }
                    }
                    ForkReply::Exited { pid, status } => {
                        if let Some(exits) = r.exits.remove(&pid) {
                            let _ = exits.send((pid, status));
                        }
                    }
                }
            }
            Ok(None) => break "fork server exited".to_string(),
            Err(e) => break e.to_string(),
        }
    };
    tracing::error!(
        why,
        "fork server link lost; pools fall back to the spawn start method"
    );
    if let Ok(mut r) = routes.lock() {
        r.dead = Some(why.clone());
        for (_, (tx, _)) in r.pending.drain() {
            let _ = tx.send(Err(io::Error::other(format!("fork server is gone: {why}"))));
        }
        // Workers of a dead fork server die by PDEATHSIG; report them as killed.
        for (pid, exits) in r.exits.drain() {
            let status = ExitStatus {
                code: None,
                signal: Some(libc::SIGKILL),
                core_dumped: false,
                max_rss_kib: 0,
            };
            let _ = exits.send((pid, status));
        }
    }
}
