//! A tiny test harness for tests that need a fork server: it must be started
//! from a single-threaded `main`, which libtest does not give us. Each test is
//! run once per start method in its own tokio runtime; the summary line is the
//! plain `N passed, N failed` that CI reads.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::time::{Duration, Instant};

use jobvisor_pool::StartMethod;

pub type TestFn = fn(StartMethod) -> Pin<Box<dyn Future<Output = ()> + Send>>;

pub struct Test {
    pub name: &'static str,
    pub run: TestFn,
    /// Only meaningful with one start method.
    pub only: Option<StartMethod>,
}

/// Runs every test whose name contains the filter (first non-flag argument).
pub fn run_all(tests: &[Test]) -> std::process::ExitCode {
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (mut passed, mut failed) = (0usize, 0usize);
    let mut failures = Vec::new();
    for t in tests {
        for method in [StartMethod::ForkServer, StartMethod::Spawn] {
            if t.only.is_some_and(|m| m != method) {
                continue;
            }
            let name = format!("{}[{method}]", t.name);
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let started = Instant::now();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            let fut = (t.run)(method);
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(120), fut).await })
            }));
            rt.shutdown_timeout(Duration::from_secs(5));
            match result {
                Ok(Ok(())) => {
                    passed += 1;
                    println!("test {name} ... ok ({:.2?})", started.elapsed());
                }
                Ok(Err(_)) => {
                    failed += 1;
                    println!("test {name} ... FAILED (timed out after 120 s)");
                    failures.push(name);
                }
                Err(_) => {
                    failed += 1;
                    println!("test {name} ... FAILED");
                    failures.push(name);
                }
            }
        }
    }
    if !failures.is_empty() {
        println!("\nfailures:");
        for f in &failures {
            println!("    {f}");
        }
    }
    println!("\n{passed} passed, {failed} failed");
    if failed == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

/// Every process as `(pid, state, ppid)`, from `/proc/<pid>/stat`.
fn processes() -> Vec<(u32, String, u32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command (which may contain spaces) start after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("").to_string();
        let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        out.push((pid, state, ppid));
    }
    out
}

/// Pids of this process's zombie children and the fork server's.
pub fn zombie_children() -> Vec<u32> {
    let me = std::process::id();
    let fs = jobvisor_pool::fork_server_pid();
    processes()
        .into_iter()
        .filter(|(_, state, ppid)| state == "Z" && (*ppid == me || Some(*ppid) == fs))
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Live (non-zombie) children of a pid, the fork server excepted.
pub fn children_of(parent: u32) -> Vec<u32> {
    let fs = jobvisor_pool::fork_server_pid();
    processes()
        .into_iter()
        .filter(|(pid, state, ppid)| *ppid == parent && state != "Z" && Some(*pid) != fs)
        .map(|(pid, _, _)| pid)
        .collect()
}

/// Open fds of this process.
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Blocks (off the runtime) until the FIFO at `path` yields a line.
pub async fn read_fifo_line(path: std::path::PathBuf) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        let f = std::fs::File::open(&path).expect("open fifo");
        let mut line = String::new();
        std::io::BufReader::new(f)
            .read_line(&mut line)
            .expect("read fifo");
        line.trim().to_string()
    })
    .await
    .expect("fifo reader")
}

pub fn mkfifo(dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    path
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().next() != Some("Z"))
            .unwrap_or(false),
        Err(_) => false,
    }
}
