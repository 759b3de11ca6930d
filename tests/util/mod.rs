//! What the end-to-end tests share: the real `jobvisor` daemon in a temp
//! state dir (optionally on a small tmpfs), ready once it answers `ping`, its
//! process group killed and reaped in `Drop`; and small helpers.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobvisor_client::{Client, JobRecord, JobSpec, JobState, Payload};

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_jobvisor")
}

// ---------------------------------------------------------------------------
// The daemon under test (after tests/daemon.rs, plus an optional tmpfs state dir).
// ---------------------------------------------------------------------------

pub struct Daemon {
    pub child: Option<Child>,
    /// A tmpfs mounted on the state directory, unmounted after the daemon is killed.
    pub mount: Option<Tmpfs>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub extra: Vec<String>,
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
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log");
        let child = Command::new(bin())
            .arg("daemon")
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.extra)
            .env("JOBVISOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        let out = self.cli(&["ping", "--wait", "20s"]);
        assert!(
            out.status.success(),
            "daemon not ready: {}\nlog:\n{}",
            text(&out),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run cli")
    }

    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = Command::new(bin())
            .arg("--socket")
            .arg(&self.socket)
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

    pub fn term_and_wait(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().expect("wait")
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.socket).await.expect("connect")
    }

    /// Open file descriptors of the daemon process itself.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/<daemon>/fd")
            .count()
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

    /// SIGKILL the whole process group (daemon, fork server, workers) and reap the daemon.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the group we created.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
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

/// A tmpfs mounted by this test (it runs as root in CI).
pub struct Tmpfs {
    target: PathBuf,
}

impl Tmpfs {
    pub fn mount(target: &Path, size: u64) -> Result<Self, String> {
        let c = |s: &[u8]| CString::new(s).expect("no NUL");
        let source = c(b"tmpfs");
        let path = c(target.as_os_str().as_bytes());
        let data = c(format!("size={size},mode=0700").as_bytes());
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source.as_ptr(),
                path.as_ptr(),
                source.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(format!(
                "mount -t tmpfs -o size={size} tmpfs {}: {} (euid {})",
                target.display(),
                std::io::Error::last_os_error(),
                // SAFETY: geteuid(2) cannot fail.
                unsafe { libc::geteuid() }
            ));
        }
        Ok(Self {
            target: target.to_path_buf(),
        })
    }

    pub fn unmount(self) {
        let path = CString::new(self.target.as_os_str().as_bytes()).expect("no NUL");
        // The daemon's group was SIGKILLed; a process of it may take a moment
        // to release the filesystem. Retry for a while, then detach it.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: a valid path string.
            if unsafe { libc::umount2(path.as_ptr(), 0) } == 0 {
                return;
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() >= deadline {
                // SAFETY: as above.
                if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } != 0 {
                    eprintln!(
                        "cannot unmount the test tmpfs {}: {e}",
                        self.target.display()
                    );
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

pub fn config(dir: &tempfile::TempDir, toml: &str) -> String {
    let path = dir.path().join("jobvisor.toml");
    std::fs::write(&path, toml).expect("config");
    path.display().to_string()
}

/// Submits `specs` in one request and returns their job ids.
pub async fn submit_ids(c: &mut Client, specs: Vec<JobSpec>) -> Vec<u64> {
    c.submit(specs)
        .await
        .expect("submit")
        .iter()
        .map(|s| s.id)
        .collect()
}

/// Waits for `ids` (at most `within`) and checks that every one succeeded;
/// their records, in the order of `ids`.
pub async fn wait_succeeded(
    c: &mut Client,
    ids: Vec<u64>,
    within: Option<Duration>,
) -> Vec<JobRecord> {
    let recs = c.wait(ids, within).await.expect("wait");
    assert!(
        recs.iter().all(|r| r.state == JobState::Succeeded),
        "{recs:?}"
    );
    recs
}

pub fn json_spec(task: &str, input: &str) -> JobSpec {
    JobSpec::new(task, Payload::Json(input.into()))
}
