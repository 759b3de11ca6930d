//! A small tmpfs for a state directory, so that a test can fill the disk
//! under a daemon (mounting needs root, which CI has; a test that cannot
//! mount says why).

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
