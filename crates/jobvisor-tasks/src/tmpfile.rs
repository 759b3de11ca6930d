//! `TempFile`: the temporary sibling a task writes before renaming it over
//! its destination, so the destination is either untouched or complete.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use jobvisor_worker::TaskError;

/// A file that deletes itself on drop unless `persisted` is set.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) file: Option<File>,
    pub(crate) persisted: bool,
}

impl TempFile {
    /// Creates `.<name>.<pid>.<n>.tmp` in `dir`: the same directory as the
    /// destination, so the final rename stays on one filesystem and is atomic;
    /// hidden and unique per process so concurrent workers do not collide.
    /// It is created with `mode` (less the umask) from its first instant, so
    /// it is never readable by more people than the caller means.
    pub(crate) fn create(dir: &Path, name: &OsStr, mode: u32) -> Result<Self, TaskError> {
        use std::os::unix::fs::OpenOptionsExt;
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let pid = std::process::id();
        let mut last_err = None;
        // A stale file from a crashed worker with a recycled pid can collide;
        // a few tries with a new counter get past it.
        for _ in 0..16 {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let mut file_name = OsString::from(".");
            file_name.push(name);
            file_name.push(format!(".{pid}.{n}.tmp"));
            let path = dir.join(file_name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
            {
                Ok(file) => {
                    return Ok(Self {
                        path,
                        file: Some(file),
                        persisted: false,
                    })
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => last_err = Some(e),
                Err(e) => {
                    return Err(TaskError::msg(format!(
                        "cannot create a temporary file in {dir:?}: {e}"
                    )))
                }
            }
        }
        Err(TaskError::msg(format!(
            "cannot create a temporary file in {dir:?}: {}",
            last_err.map_or_else(|| "no attempt made".to_string(), |e| e.to_string())
        )))
    }
}

impl TempFile {
    /// The open file, to write (once).
    pub(crate) fn take_file(&mut self) -> Result<File, TaskError> {
        self.file
            .take()
            .ok_or_else(|| TaskError::msg("temporary file vanished"))
    }

    /// Maps a write error to a task error naming this file.
    pub(crate) fn write_err(&self) -> impl Fn(std::io::Error) -> TaskError {
        let name = format!("{:?}", self.path);
        move |e| TaskError::msg(format!("cannot write {name}: {e}"))
    }

    /// A failed rename of this file over `dst`, as a task error.
    pub(crate) fn rename_err(&self, dst: &Path, e: &std::io::Error) -> TaskError {
        TaskError::msg(format!("cannot rename {:?} to {dst:?}: {e}", self.path))
    }
}

/// Fsyncs `dir`, so that a rename into it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), TaskError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| TaskError::msg(format!("cannot sync directory {dir:?}: {e}")))
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            self.file = None;
            let _ = fs::remove_file(&self.path);
        }
    }
}
