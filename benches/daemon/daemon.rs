//! The daemon under test: started with a temporary state dir and config (or
//! attached to one already running), and stopped at the end.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobvisor_client::Client;

use crate::Params;

/// How long the daemon gets to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(crate) struct Daemon {
    child: Option<Child>,
    pub(crate) pid: u32,
    pub(crate) socket: PathBuf,
    log: Option<PathBuf>,
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    pub(crate) fn start(p: &Params) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("jobvisor-bench-")
            .tempdir()
            .context("creating a temp dir")?;
        let state = dir.path().join("state");
        let socket = state.join("control.sock");
        let config = dir.path().join("jobvisor.toml");
        // Everything else at its default. The queue limit is raised so that the
        // 100,000-job batch fits; pruning is kept out of the measurements.
        std::fs::write(
            &config,
            "[limits]\nmax_queued_jobs = 1000000\n\n\
             [retention]\nmax_jobs = 100000000\nprune_interval_secs = 86400\n",
        )?;
        let log = dir.path().join("daemon.log");
        let child = Command::new(&p.bin)
            .arg("--socket")
            .arg(&socket)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .arg("--workers")
            .arg(p.workers.to_string())
            .env("JOBVISOR_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", p.bin.display()))?;
        let pid = child.id();
        let d = Self {
            child: Some(child),
            pid,
            socket,
            log: Some(log),
            dir: Some(dir),
        };
        let t = Instant::now();
        let ready = Command::new(&p.bin)
            .arg("--socket")
            .arg(&d.socket)
            .args(["ping", "--wait", "20s"])
            .stdout(Stdio::null())
            .status()?;
        if !ready.success() {
            bail!(
                "the daemon did not answer within 20 s ({ready}); its log:\n{}",
                d.log_tail()
            );
        }
        eprintln!(
            "daemon pid {pid} ready in {:.0} ms (state dir {})",
            t.elapsed().as_secs_f64() * 1e3,
            d.dir
                .as_ref()
                .map_or(Path::new("?"), |d| d.path())
                .display()
        );
        Ok(d)
    }

    /// A daemon someone else started.
    pub(crate) async fn attach(socket: PathBuf) -> Result<Self> {
        let mut c = Client::connect(&socket).await?;
        let pid = c.ping().await?;
        Ok(Self {
            child: None,
            pid,
            socket,
            log: None,
            dir: None,
        })
    }

    pub(crate) fn scratch_dir(&self) -> PathBuf {
        match &self.dir {
            Some(d) => d.path().to_path_buf(),
            None => std::env::temp_dir(),
        }
    }

    pub(crate) fn log_tail(&self) -> String {
        let Some(log) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Asks the daemon to stop now; kills it if it has not exited in time.
    pub(crate) async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(mut c) = Client::connect(&self.socket).await {
            let _ = c.shutdown(false).await;
        }
        let t = Instant::now();
        while t.elapsed() < STOP_GRACE {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("daemon stopped ({status})");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("daemon did not stop within {STOP_GRACE:?}: killed");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
