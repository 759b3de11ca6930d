//! The audit log (`[audit] file`): one JSON line per mutation (submit,
//! cancel, retry, shutdown, SIGHUP reload, a refused HTTP token), saying who
//! asked, what, when, and how it ended.
//!
//! Lines go through a bounded channel to one writer thread, so a request
//! never waits for the disk: when the channel is full the line is dropped,
//! counted, and a warning is logged at most once a second. The file is
//! opened 0600 with `O_NOFOLLOW` (a symlink at its path is refused), rotated
//! by size (`max_bytes`, keeping `keep` old files `audit.log.1` ...), and
//! not fsynced: a crash may lose the last lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

/// Lines waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 4096;

/// Who made a request.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// A peer of the control socket, by `SO_PEERCRED`.
    Socket { uid: u32, pid: Option<i32> },
    /// An HTTP client, by its token's name (`None`: an unknown token).
    Http { token: Option<String> },
    /// The daemon itself, on a signal.
    Signal(&'static str),
}

impl Caller {
    fn transport(&self) -> &'static str {
        match self {
            Self::Socket { .. } => "socket",
            Self::Http { .. } => "http",
            Self::Signal(_) => "signal",
        }
    }

    fn who(&self) -> Value {
        match self {
            Self::Socket { uid, pid } => json!({ "uid": uid, "pid": pid }),
            Self::Http { token } => json!({ "token": token }),
            Self::Signal(s) => json!({ "signal": s }),
        }
    }
}

/// The audit log's sending end (cheap to clone); off when `[audit] file = ""`.
#[derive(Clone, Default)]
pub(crate) struct Audit {
    tx: Option<mpsc::Sender<String>>,
    dropped: Arc<AtomicU64>,
    last_warn: Arc<Mutex<Option<Instant>>>,
}

impl Audit {
    /// Opens `file` (refusing a symlink or a file not ours) and starts its
    /// writer thread.
    ///
    /// # Errors
    /// The file cannot be opened safely.
    pub(crate) fn open(file: &Path, max_bytes: u64, keep: u32) -> std::io::Result<Self> {
        let out = open_log(file)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = file.to_owned();
        std::thread::Builder::new()
            .name("jobvisor-audit".into())
            .spawn(move || write_lines(rx, out, path, max_bytes, keep))?;
        Ok(Self {
            tx: Some(tx),
            ..Default::default()
        })
    }

    /// Logs one mutation after its answer is known.
    pub(crate) fn record(
        &self,
        caller: &Caller,
        action: &str,
        target: Value,
        outcome: Result<(), &str>,
    ) {
        let Some(tx) = &self.tx else { return };
        let at = jobvisor_proto::json::time::rfc3339(now_ms());
        let mut line = json!({
            "at": at,
            "transport": caller.transport(),
            "who": caller.who(),
            "action": action,
            "target": target,
            "outcome": if outcome.is_ok() { "ok" } else { "error" },
        });
        if let Err(e) = outcome {
            line["error"] = Value::String(e.to_string());
        }
        if tx.try_send(line.to_string()).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            let mut last = self.last_warn.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                *last = Some(Instant::now());
                tracing::warn!(dropped = n, "audit log: writer behind, lines dropped");
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Opens the log for appending: created 0600, a symlink refused
/// (`O_NOFOLLOW`), and only a regular file of ours with one link accepted.
fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "cannot open the audit log {} (a symlink is refused): {e}",
                    path.display()
                ),
            )
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.nlink() != 1 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "refusing the audit log {}: not a regular file of ours with a single link",
                path.display()
            ),
        ));
    }
    Ok(file)
}

fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{n}"));
    PathBuf::from(s)
}

/// Shifts `path` to `path.1` (and `.1` to `.2` ..., the oldest past `keep`
/// removed). `rename` replaces what is at the target, never following it.
fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(rotated(path, keep));
    for n in (1..keep).rev() {
        match std::fs::rename(rotated(path, n), rotated(path, n + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::rename(path, rotated(path, 1))
}

fn write_lines(
    mut rx: mpsc::Receiver<String>,
    mut out: std::fs::File,
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
) {
    let mut size = out.metadata().map_or(0, |m| m.len());
    while let Some(mut line) = rx.blocking_recv() {
        line.push('\n');
        let len = line.len() as u64;
        if size > 0 && size + len > max_bytes {
            match rotate(&path, keep).and_then(|()| open_log(&path)) {
                Ok(f) => {
                    out = f;
                    size = 0;
                }
                Err(e) => tracing::warn!(error = %e, "audit log: rotation failed"),
            }
        }
        match out.write_all(line.as_bytes()) {
            Ok(()) => size += len,
            Err(e) => tracing::warn!(error = %e, "audit log: write failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lines(p: &Path) -> Vec<Value> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_rotate_at_max_bytes_and_keep_files_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("audit.log");
        let audit = Audit::open(&path, 300, 2).unwrap();
        let who = Caller::Socket {
            uid: 7,
            pid: Some(9),
        };
        for id in 0..20 {
            audit.record(&who, "cancel", json!(id), Ok(()));
        }
        audit.record(&who, "retry", json!(99), Err("no job 99"));
        // Dropping the sender ends the writer once it has written every line.
        let dropped = audit.dropped.load(Ordering::Relaxed);
        assert_eq!(dropped, 0);
        drop(audit);
        let deadline = Instant::now() + Duration::from_secs(30);
        while lines(&path).last().is_none_or(|l| l["action"] != "retry") {
            assert!(Instant::now() < deadline, "the last line was never written");
            std::thread::yield_now();
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        for n in 1..=2 {
            let old = rotated(&path, n);
            assert!(std::fs::metadata(&old).unwrap().len() <= 300);
            assert_eq!(mode(&old), 0o600);
        }
        assert!(!rotated(&path, 3).exists(), "only keep = 2 old files");
        assert!(std::fs::metadata(&path).unwrap().len() <= 300);
        let last = lines(&path).pop().unwrap();
        assert_eq!(last["transport"], "socket");
        assert_eq!(last["who"], json!({"uid": 7, "pid": 9}));
        assert_eq!(last["target"], 99);
        assert_eq!(last["outcome"], "error");
        assert_eq!(last["error"], "no job 99");
        assert!(last["at"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_symlink_at_the_logs_path_is_refused_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let victim = tmp.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = tmp.path().join("audit.log");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let e = Audit::open(&path, 1 << 20, 5).err().expect("refused");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    }
}
