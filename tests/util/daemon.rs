//! The daemon under test: how every test starts `jobvisor daemon` (its own
//! process group, logging to a file), waits until it answers `ping`, talks to
//! it through the CLI or the client, and kills and reaps it.
//!
//! [`Daemon`] owns one daemon in a temp state dir (optionally on a small
//! tmpfs), killed with its group in `Drop`. A test that manages the child
//! itself (the chaos run, which kills and restarts it from another thread)
//! uses [`daemon_command`], [`cli_command`], [`wait_ready`] and
//! [`kill_group`], the same pieces `Daemon` is made of.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobvisor_client::Client;

use super::cpu::{self, CpuGuard};
use super::proc::{self, signal};
use super::tmpfs::Tmpfs;
use super::{bin, text};

/// `jobvisor daemon --state-dir <state>`, to be completed with the test's
/// arguments: in a process group of its own (so the test can kill the daemon
/// whole), logging at `info` to `log` (appended, so a restarted daemon's log
/// follows the first one's), stdin and stdout closed.
///
/// # Panics
/// If `log` cannot be opened.
pub fn daemon_command(state: &Path, log: &Path) -> Command {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("daemon log {}: {e}", log.display()));
    let mut cmd = Command::new(bin());
    // Hermetic: no configuration file of the user's is found (a test that
    // wants one writes it there).
    let xdg = state.parent().unwrap_or(state).join("xdg-config");
    cmd.arg("daemon")
        .arg("--state-dir")
        .arg(state)
        .env("XDG_CONFIG_HOME", xdg)
        .env("JOBVISOR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    cmd
}

/// `jobvisor --socket <socket>`, to be completed with a client command.
pub fn cli_command(socket: &Path) -> Command {
    let mut cmd = Command::new(bin());
    cmd.arg("--socket").arg(socket);
    cmd
}

/// Waits until the daemon at `socket` answers (`jobvisor ping --wait`, the
/// readiness signal: no sleep, no pid file).
///
/// # Panics
/// If it does not answer within `within`, with the CLI's output and `log()`.
pub fn wait_ready(socket: &Path, within: Duration, log: impl FnOnce() -> String) {
    let wait = format!("{}ms", within.as_millis());
    let out = cli_command(socket)
        .args(["ping", "--wait", &wait])
        .output()
        .expect("run jobvisor ping");
    assert!(
        out.status.success(),
        "daemon not ready: {}\nlog:\n{}",
        text(&out),
        log()
    );
}

/// SIGKILLs the process group `child` leads and reaps `child`.
pub fn kill_group(child: &mut Child) {
    signal(-(child.id() as i32), libc::SIGKILL);
    let _ = child.wait();
}

/// One daemon in a temp state dir; killed with its group in `Drop`.
pub struct Daemon {
    pub child: Option<Child>,
    /// A tmpfs mounted on the state directory, unmounted after the daemon is killed.
    pub mount: Option<Tmpfs>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub extra: Vec<String>,
    /// The daemon's working directory (default: the test's).
    pub cwd: Option<PathBuf>,
    /// Dropped after the daemon is killed (`Drop` runs before the fields).
    _cpu: CpuGuard,
}

impl Daemon {
    /// A daemon with 2 workers and `extra` arguments, ready (it answered `ping`).
    pub fn start(extra: &[&str]) -> Self {
        let mut args = vec!["--workers", "2"];
        args.extend_from_slice(extra);
        Self::start_raw(&args)
    }

    /// A daemon with exactly these `daemon` arguments, ready.
    pub fn start_raw(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut d = Self::new(dir, None, args);
        d.spawn();
        d
    }

    /// A daemon like [`Daemon::start`], not started yet (the test completes
    /// `extra` first, then calls [`Daemon::spawn`]), whose working directory
    /// is a fresh `work` dir in its temp dir, where relative paths in task
    /// inputs resolve.
    pub fn in_work_dir(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let work = dir.path().join("work");
        std::fs::create_dir(&work).expect("work dir");
        let mut args = vec!["--workers", "2"];
        args.extend_from_slice(extra);
        let mut d = Self::new(dir, None, &args);
        d.cwd = Some(work);
        d
    }

    /// A daemon with 2 workers and a config file holding `toml` (written
    /// into the daemon's temp dir), ready.
    pub fn with_config(toml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = super::config(&dir, toml);
        let mut d = Self::new(dir, None, &["--workers", "2", "--config", &cfg]);
        d.spawn();
        d
    }

    /// Starts a daemon whose state directory is a fresh tmpfs of `size` bytes.
    /// `Err` says why the filesystem could not be mounted.
    pub fn start_on_tmpfs(size: u64, extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir(&state).expect("state dir");
        let mount = Tmpfs::mount(&state, size)?;
        let mut args = vec!["--workers", "2"];
        args.extend_from_slice(extra);
        let mut d = Self::new(dir, Some(mount), &args);
        d.spawn();
        Ok(d)
    }

    pub fn new(dir: tempfile::TempDir, mount: Option<Tmpfs>, args: &[&str]) -> Self {
        let socket = dir.path().join("state").join("control.sock");
        let args = args.iter().map(|s| s.to_string()).collect();
        Daemon {
            child: None,
            mount,
            dir,
            socket,
            extra: args,
            cwd: None,
            _cpu: cpu::shared(),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Starts (or restarts) the daemon and waits until it answers.
    pub fn spawn(&mut self) {
        let mut cmd = daemon_command(&self.state_dir(), &self.dir.path().join("daemon.log"));
        if let Some(cwd) = &self.cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd.args(&self.extra).spawn().expect("spawn daemon");
        self.child = Some(child);
        wait_ready(&self.socket, Duration::from_secs(20), || self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `jobvisor --socket <ours>`, for a client command the test runs its own way.
    pub fn cli_command(&self) -> Command {
        cli_command(&self.socket)
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_command().args(args).output().expect("run cli")
    }

    /// Runs a client command that must succeed; its stdout, trimmed.
    ///
    /// # Panics
    /// If it fails, with its output and the daemon's log.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\nlog:\n{}",
            text(&out),
            self.log()
        );
        super::stdout(&out)
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cli_command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run cli");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write");
        child.wait_with_output().expect("wait")
    }

    /// Sends `sig` to the daemon process itself (not its group).
    pub fn signal(&self, sig: i32) {
        assert!(
            signal(self.pid() as i32, sig),
            "kill({}, {sig})",
            self.pid()
        );
    }

    pub fn term_and_wait(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.child.take().expect("running").wait().expect("wait")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.expect("connect")
    }

    /// Open file descriptors of the daemon process itself.
    pub fn fd_count(&self) -> usize {
        proc::fd_count(self.pid())
    }

    /// Waits until the daemon holds at most `max` descriptors; the count at the end.
    pub async fn fds_settle_to(&self, max: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            let n = self.fd_count();
            if n <= max || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILLs the daemon's process group and reaps the daemon; its workers
    /// (in groups of their own) follow it by `PR_SET_PDEATHSIG`.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_group(&mut c);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // After the daemon is gone, before the temp dir is removed.
        if let Some(m) = self.mount.take() {
            m.unmount();
        }
    }
}
