//! A state directory on a tiny filesystem that fills up: submits are refused
//! clearly, nothing acknowledged is lost, and everything recovers once space
//! is back, including the writes of an attempt that ended meanwhile.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jobvisor_client::{ClientError, ErrorKind, JobSpec, JobState};

use crate::util::wait::{job_when, running, until};
use crate::util::*;

const TMPFS_BYTES: u64 = 2 << 20;

/// Starts a daemon on a 2 MiB tmpfs, or says loudly why it cannot (set
/// `JOBVISOR_REQUIRE_DISK_FULL_TEST=1` to turn that into a failure).
fn daemon_on_small_fs(extra: &[&str]) -> Option<Daemon> {
    match Daemon::start_on_tmpfs(TMPFS_BYTES, extra) {
        Ok(d) => Some(d),
        Err(why) => {
            let msg = format!("disk-full test could not run: {why}");
            if std::env::var_os("JOBVISOR_REQUIRE_DISK_FULL_TEST").is_some() {
                panic!("{msg}");
            }
            eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
            println!("!!!!!!!! {msg} !!!!!!!!");
            None
        }
    }
}

/// Writes `path` until the filesystem says ENOSPC; checks nothing is left.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let page = [0xa5u8; 4096];
    let mut written = 0u64;
    loop {
        match f.write(&page) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
        assert!(
            written <= TMPFS_BYTES,
            "wrote more than the filesystem holds"
        );
    }
    // SAFETY: statvfs(3) with a valid path and struct.
    let free = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        let p = CString::new(dir.as_os_str().as_bytes()).unwrap();
        assert_eq!(libc::statvfs(p.as_ptr(), &mut st), 0);
        st.f_bavail
    };
    assert_eq!(free, 0, "the filesystem still has {free} free blocks");
    path
}

fn assert_full(e: &ClientError) {
    match e {
        ClientError::Server(e) => {
            assert_eq!(e.kind, ErrorKind::Storage, "{e}");
            assert!(e.message.contains("full"), "{e}");
        }
        other => panic!("expected a storage error, got {other}"),
    }
}

/// A gate for jobs: a FIFO, held open for reading and writing by the test, so
/// that a job reading a line from it (see [`Gate::spec`]) waits until
/// [`Gate::open`], whenever the job opened it (opening it never blocks, the
/// test's end being there; the line waits in the pipe until it is read).
struct Gate {
    path: PathBuf,
    fifo: std::fs::File,
    _dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gate");
        let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: mkfifo(3) with a valid C string.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
        // Read and write: on Linux this neither blocks nor lets the pipe
        // go away (and drop a line written to it) before the job reads it.
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open the gate");
        Self {
            path,
            fifo,
            _dir: dir,
        }
    }

    /// An `exec` job that succeeds once the gate is open.
    fn spec(&self) -> JobSpec {
        let argv = [
            "sh",
            "-c",
            r#"read -r line < "$1""#,
            "gate",
            self.path.to_str().expect("a UTF-8 path"),
        ];
        json_spec("exec", &serde_json::json!({ "argv": argv }).to_string())
    }

    fn open(&mut self) {
        self.fifo.write_all(b"go\n").expect("open the gate");
    }
}

/// The state directory is a 2 MiB tmpfs. With the disk full, a submit fails
/// with a clear storage error (the CLI exits 7 and says "full"), nothing of it
/// is stored, every job acknowledged before is still there and the daemon
/// answers; once space is freed, submits succeed again and every
/// acknowledged job finishes.
///
/// The jobs acknowledged before the fill either finished before it, or are
/// held until the disk is freed: a gate job, running (its start committed)
/// before the fill, waits for the test to open its gate after the space is
/// freed, and the held jobs run `after` it. So no attempt ends while the disk
/// is full (that is the subject of the next test), however long the full
/// disk part takes.
#[test]
fn a_full_disk_refuses_submits_clearly_loses_nothing_and_recovers() {
    let Some(d) = daemon_on_small_fs(&[]) else {
        return;
    };
    let mut gate = Gate::new();
    rt().block_on(async {
        let mut c = d.client().await;
        let done: Vec<u64> = c
            .submit((0..10).map(|i| json_spec("noop", &i.to_string())).collect())
            .await
            .expect("submit before the fill")
            .iter()
            .map(|s| s.id)
            .collect();
        wait_succeeded(&mut c, done.clone(), Some(Duration::from_secs(30))).await;
        let gate_id = c
            .submit(vec![gate.spec()])
            .await
            .expect("submit the gate job")[0]
            .id;
        // Running, its attempt start committed: nothing of it to write until it ends.
        job_when(
            &mut c,
            gate_id,
            Duration::from_secs(30),
            "the gate job is not running",
            |r| {
                assert!(!r.state.is_terminal(), "the gate job is not running: {r:?}");
                running(r)
            },
        )
        .await;
        let mut held: Vec<JobSpec> = (0..5).map(|i| json_spec("noop", &i.to_string())).collect();
        for s in &mut held {
            s.after = vec![gate_id];
        }
        let held: Vec<u64> = c
            .submit(held)
            .await
            .expect("held submit before the fill")
            .iter()
            .map(|s| s.id)
            .collect();

        let filler = fill(&d.state_dir());

        // A submit fails, clearly, through the client and through the CLI.
        let e = c
            .submit(vec![json_spec("noop", "1")])
            .await
            .expect_err("the disk is full");
        assert_full(&e);
        let big: Vec<JobSpec> = (0..200)
            .map(|_| json_spec("hash", &format!(r#"{{"path": "/{}"}}"#, "x".repeat(2000))))
            .collect();
        assert_full(&c.submit(big).await.expect_err("the disk is full"));
        let out = d.cli(&["submit", "noop", "--input", "2"]);
        assert_exit("submit on a full disk", &out, 7, "full");

        // The daemon answers; what was acknowledged is there, nothing else.
        c.ping().await.expect("ping with a full disk");
        assert!(d.cli(&["ping"]).status.success());
        let all = c
            .list(None, None, 1000)
            .await
            .expect("list with a full disk");
        let mut ids: Vec<u64> = all.iter().map(|r| r.id).collect();
        ids.sort_unstable();
        let mut acked: Vec<u64> = done.iter().chain(&held).copied().collect();
        acked.push(gate_id);
        acked.sort_unstable();
        assert_eq!(ids, acked, "the refused submits stored nothing");
        let r = c.status(gate_id).await.expect("status with a full disk");
        assert_eq!(r.state, JobState::Running, "{r:?}");
        for id in &held {
            let r = c.status(*id).await.expect("status with a full disk");
            assert_eq!(r.state, JobState::Queued, "{r:?}");
        }
        c.stats().await.expect("stats with a full disk");

        // Recovery: free the space, let the held jobs go, submit again.
        std::fs::remove_file(&filler).unwrap();
        gate.open();
        let after: Vec<u64> = c
            .submit((0..3).map(|i| json_spec("noop", &i.to_string())).collect())
            .await
            .expect("submit after the space was freed")
            .iter()
            .map(|s| s.id)
            .collect();
        let cli_id: u64 = d
            .cli_ok(&["submit", "noop", "--input", "3", "--wait"])
            .parse()
            .expect("an id");

        let mut everything = acked.clone();
        everything.extend(&after);
        everything.push(cli_id);
        let recs = c
            .wait(everything.clone(), Some(Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(recs.len(), everything.len());
        for r in &recs {
            assert_eq!(r.state, JobState::Succeeded, "{r:?}");
            assert_eq!(r.attempts.len(), 1, "{r:?}");
        }
    });
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// A job acknowledged before the disk filled, whose attempt ends while the
/// disk is full, must still end up recorded once space is back: the store
/// holds job-state writes back (in order) until they commit, and `wait`
/// answers after that. (They were once dropped, leaving the job `running`.)
#[test]
fn a_job_that_ends_while_the_disk_is_full_is_recorded_after_recovery() {
    let Some(d) = daemon_on_small_fs(&[]) else {
        return;
    };
    rt().block_on(async {
        let mut c = d.client().await;
        let id = c
            .submit(vec![json_spec("sleep", r#"{"ms": 1000}"#)])
            .await
            .unwrap()[0]
            .id;
        job_when(
            &mut c,
            id,
            Duration::from_secs(30),
            "the job running",
            running,
        )
        .await;
        let filler = fill(&d.state_dir());
        // The attempt ends while the disk is full; the store holds the write.
        until(
            Duration::from_secs(20),
            "the attempt never ended",
            async || {
                if d.log().contains("job store full: holding job-state writes") {
                    Ok(())
                } else {
                    Err("no \"job store full\" in the daemon log".into())
                }
            },
        )
        .await;
        std::fs::remove_file(&filler).unwrap();
        c.submit(vec![json_spec("noop", "1")])
            .await
            .expect("submits work again");
        let r = c
            .wait(vec![id], Some(Duration::from_secs(10)))
            .await
            .unwrap()
            .remove(0);
        assert!(
            r.state.is_terminal(),
            "wait answered with the acknowledged job still {:?} after the disk was freed: {r:?}",
            r.state
        );
    });
}

/// Reads go on while the store holds job-state writes back: `status`,
/// `list` and `stats` answer from what has committed. (Held writes once ran
/// in the reads' transaction, and every read failed "the job store is full"
/// with them.)
#[test]
fn reads_go_on_while_job_state_writes_are_held() {
    let Some(d) = daemon_on_small_fs(&[]) else {
        return;
    };
    rt().block_on(async {
        let mut c = d.client().await;
        let id = c
            .submit(vec![json_spec("sleep", r#"{"ms": 300}"#)])
            .await
            .unwrap()[0]
            .id;
        job_when(
            &mut c,
            id,
            Duration::from_secs(30),
            "the job running",
            running,
        )
        .await;
        let filler = fill(&d.state_dir());
        until(
            Duration::from_secs(20),
            "the attempt's end was never held",
            async || {
                if d.log().contains("job store full: holding job-state writes") {
                    Ok(())
                } else {
                    Err("no \"job store full\" in the daemon log".into())
                }
            },
        )
        .await;
        // The end is held: the store still says running, and says it.
        let r = c.status(id).await.expect("status while writes are held");
        assert_eq!(r.state, JobState::Running, "{r:?}");
        let all = c
            .list(None, None, 100)
            .await
            .expect("list while writes are held");
        assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
        c.stats().await.expect("stats while writes are held");
        let out = d.cli(&["status", &id.to_string()]);
        assert!(out.status.success(), "{}", text(&out));

        std::fs::remove_file(&filler).unwrap();
        let r = c
            .wait(vec![id], Some(Duration::from_secs(10)))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    });
}

/// A delayed job, queued (not running) until long after the test.
fn delayed(task: &str, input: &str) -> JobSpec {
    let mut s = json_spec(task, input);
    s.delay_ms = Some(600_000);
    s
}

/// `cancel` and `retry` are answered after their write commits: on a full
/// disk they fail with the storage error and the job stays as it was, in
/// memory and in the store (a later cancel still works); a cancel or retry
/// answered "ok" survives a kill -9. (A cancel was once answered before its
/// write, which a full disk then dropped: "cancelled", and after a restart
/// the job was queued again.)
#[test]
fn cancel_and_retry_are_answered_after_they_are_durable() {
    let Some(mut d) = daemon_on_small_fs(&[]) else {
        return;
    };
    let rt = rt();
    let (id, other) = rt.block_on(async {
        let mut c = d.client().await;
        let ids: Vec<u64> = c
            .submit(vec![delayed("noop", "1"), delayed("noop", "2")])
            .await
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        let filler = fill(&d.state_dir());
        assert_full(&c.cancel(ids[0]).await.expect_err("the disk is full"));
        let out = d.cli(&["cancel", &ids[0].to_string()]);
        assert_exit("cancel on a full disk", &out, 7, "full");
        let r = c.status(ids[0]).await.expect("status on a full disk");
        assert_eq!(r.state, JobState::Queued, "{r:?}");
        std::fs::remove_file(&filler).unwrap();
        // Still cancellable: the failed cancel left nothing behind in memory.
        c.cancel(ids[0]).await.expect("cancel once there is room");
        (ids[0], ids[1])
    });
    d.kill9();
    d.spawn();
    rt.block_on(async {
        let mut c = d.client().await;
        let r = c.status(id).await.unwrap();
        assert_eq!(r.state, JobState::Cancelled, "after kill -9: {r:?}");
        let r = c.status(other).await.unwrap();
        assert_eq!(r.state, JobState::Queued, "after kill -9: {r:?}");

        let filler = fill(&d.state_dir());
        assert_full(&c.retry(id).await.expect_err("the disk is full"));
        let r = c.status(id).await.unwrap();
        assert_eq!(r.state, JobState::Cancelled, "{r:?}");
        std::fs::remove_file(&filler).unwrap();
        c.retry(id).await.expect("retry once there is room");
        let r = c
            .wait(vec![id], Some(Duration::from_secs(30)))
            .await
            .unwrap()
            .remove(0);
        assert_eq!(r.state, JobState::Succeeded, "{r:?}");
    });
}

/// A cancel of a running job is answered once the attempt's end
/// (cancelled) has committed: while the disk is full that write is held,
/// and so is the answer; once there is room the client hears "ok", and the
/// job is still cancelled after a kill -9. (It was answered "ok" at once,
/// while the write that made it true could still be lost.)
#[test]
fn a_cancel_of_a_running_job_is_answered_after_its_end_commits() {
    let Some(mut d) = daemon_on_small_fs(&[]) else {
        return;
    };
    let rt = rt();
    let id = rt.block_on(async {
        let mut c = d.client().await;
        let id = c
            .submit(vec![json_spec("sleep", r#"{"ms": 600000}"#)])
            .await
            .unwrap()[0]
            .id;
        job_when(
            &mut c,
            id,
            Duration::from_secs(30),
            "the job running",
            running,
        )
        .await;
        let filler = fill(&d.state_dir());
        let mut canceller = d.client().await;
        let cancel = tokio::spawn(async move { canceller.cancel(id).await });
        until(
            Duration::from_secs(20),
            "the cancelled attempt's end was never held",
            async || {
                if d.log().contains("job store full: holding job-state writes") {
                    Ok(())
                } else {
                    Err("no \"job store full\" in the daemon log".into())
                }
            },
        )
        .await;
        // Held: the end is not durable yet, so neither is the cancel. (The
        // old answer came before the attempt even ended, so it would be in.)
        assert!(
            !cancel.is_finished(),
            "cancel answered before its write committed"
        );
        std::fs::remove_file(&filler).unwrap();
        cancel
            .await
            .unwrap()
            .expect("cancel answered once the end committed");
        id
    });
    d.kill9();
    d.spawn();
    rt.block_on(async {
        let mut c = d.client().await;
        let r = c.status(id).await.unwrap();
        assert_eq!(r.state, JobState::Cancelled, "after kill -9: {r:?}");
    });
}
