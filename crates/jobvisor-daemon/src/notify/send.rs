//! Sending one notification: the webhook POST and the command (fork+exec,
//! its own process group, the record on stdin), and why an attempt failed.
//! Nothing here retries or knows of the outbox: `notify` does.

use std::time::Duration;

use jobvisor_proto::control::JobState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Bytes of a notification command's stderr kept for the log; the rest is read and discarded.
const STDERR_KEEP_BYTES: usize = 4096;
/// After a command exits, how long its stderr may take to reach EOF (a
/// background process it left may hold the pipe open).
const STDERR_GRACE: Duration = Duration::from_millis(200);

/// What a delivery says about its job besides the record.
#[derive(Debug, Clone)]
pub(super) struct JobFacts {
    pub(super) id: u64,
    /// The job's epoch when the delivery was written (`retry`s before it).
    pub(super) epoch: u32,
    pub(super) state: JobState,
    pub(super) task: String,
    pub(super) queue: String,
}

impl JobFacts {
    /// `<job id>-<epoch>-<state>`: the same for every attempt of every
    /// delivery of this transition, so receivers can dedupe, and a new one
    /// when a job revived by `retry` reaches the same state again.
    pub(super) fn delivery_key(&self) -> String {
        format!("{}-{}-{}", self.id, self.epoch, self.state.as_str())
    }
}

/// Why one attempt of a delivery failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum DeliveryError {
    #[error("cannot read the job")]
    ReadJob(#[source] jobvisor_store::StoreError),
    #[error("job {0} is no longer in the store (pruned?)")]
    Gone(u64),
    #[error("cannot encode the job as JSON")]
    Encode(#[source] serde_json::Error),
    /// The request failed (connection, timeout, ...).
    #[error(transparent)]
    Http(reqwest::Error),
    #[error("answered HTTP {0}")]
    Status(reqwest::StatusCode),
    #[error("empty notify_command")]
    EmptyCommand,
    #[error("cannot start {program:?}")]
    Start {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for {program:?}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program:?} did not finish within {timeout_ms} ms; killed")]
    TimedOut { program: String, timeout_ms: u128 },
    #[error("{program:?} ended with {status}{}", stderr_note(.stderr))]
    Exited {
        program: String,
        status: std::process::ExitStatus,
        /// The start of its stderr, trimmed.
        stderr: String,
    },
}

/// `; stderr: ...` after a failed command's status, when it said anything.
fn stderr_note(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr}")
    }
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`, the `x-jobvisor-signature` header.
pub(super) fn signature(secret: &[u8], body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    use std::fmt::Write;
    // HMAC takes a key of any length: this cannot fail.
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * tag.len());
    out.push_str("sha256=");
    for b in tag {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One webhook POST, signed with `secret` when there is one; `Ok` for a 2xx answer.
pub(super) async fn post(
    http: &reqwest::Client,
    url: &str,
    job: &JobFacts,
    body: Vec<u8>,
    secret: Option<&str>,
) -> Result<(), DeliveryError> {
    let mut request = http
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-jobvisor-event", format!("job.{}", job.state.as_str()))
        .header("x-jobvisor-delivery", job.delivery_key());
    if let Some(secret) = secret {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        request = request
            .header("x-jobvisor-signature", signature(secret.as_bytes(), &body))
            .header("x-jobvisor-timestamp", now.to_string());
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(DeliveryError::Http)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliveryError::Status(status))
    }
}

/// Runs a notification command (fork+exec, its own process group) with the
/// record on stdin and the job in its environment; `Ok` for exit 0. Past
/// `timeout` its process group is killed. The child is always reaped.
pub(super) async fn run_command(
    argv: &[String],
    job: &JobFacts,
    body: Vec<u8>,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(DeliveryError::EmptyCommand);
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("JOBVISOR_JOB_ID", job.id.to_string())
        .env("JOBVISOR_JOB_STATE", job.state.as_str())
        .env("JOBVISOR_JOB_TASK", &job.task)
        .env("JOBVISOR_JOB_QUEUE", &job.queue)
        .env("JOBVISOR_DELIVERY", job.delivery_key())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| DeliveryError::Start {
            program: program.clone(),
            source,
        })?;
    let stdin = child.stdin.take();
    let stderr = tokio::spawn(read_capped(child.stderr.take(), STDERR_KEEP_BYTES));
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its stdin is not an error.
            let _ = stdin.write_all(&body).await;
        }
        // Dropped here: the command sees EOF.
    };
    let waited = tokio::time::timeout(timeout, async {
        let ((), status) = tokio::join!(feed, child.wait());
        status
    })
    .await;
    let status = match waited {
        Ok(status) => status.map_err(|source| DeliveryError::Wait {
            program: program.clone(),
            source,
        })?,
        Err(_) => {
            if let Some(pid) = child.id() {
                // Its process group (pgid = its pid): whatever it started too.
                // The pgid stays reserved until we reap the leader below.
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            let _ = child.start_kill();
            let _ = child.wait().await;
            stderr.abort();
            return Err(DeliveryError::TimedOut {
                program: program.clone(),
                timeout_ms: timeout.as_millis(),
            });
        }
    };
    if status.success() {
        stderr.abort();
        return Ok(());
    }
    let tail = match tokio::time::timeout(STDERR_GRACE, stderr).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        _ => String::new(),
    };
    Err(DeliveryError::Exited {
        program: program.clone(),
        status,
        stderr: tail,
    })
}

/// Reads `from` to EOF, keeping the first `keep` bytes.
async fn read_capped(from: Option<impl AsyncRead + Unpin>, keep: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut from) = from else {
        return kept;
    };
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = keep.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> JobFacts {
        JobFacts {
            id: 42,
            epoch: 2,
            state: JobState::Dead,
            task: "hash".into(),
            queue: "io".into(),
        }
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[test]
    fn signatures_match_rfc_4231() {
        // RFC 4231, test cases 1 and 2, HMAC-SHA-256.
        assert_eq!(
            signature(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_command_gets_the_record_on_stdin_and_the_job_in_its_environment() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let script = format!(
            "cat > '{o}'; echo \"$JOBVISOR_JOB_ID $JOBVISOR_JOB_STATE $JOBVISOR_JOB_TASK \
             $JOBVISOR_JOB_QUEUE $JOBVISOR_DELIVERY\" >> '{o}'",
            o = out.display()
        );
        run_command(
            &sh(&script),
            &facts(),
            b"{\"id\":42}\n".to_vec(),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "{\"id\":42}\n42 dead hash io 42-2-dead\n"
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_status_and_capped_stderr() {
        let e = run_command(
            &sh("head -c 100000 /dev/zero | tr '\\0' x >&2; exit 3"),
            &facts(),
            Vec::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(
            e.len() < STDERR_KEEP_BYTES + 200,
            "stderr is capped: {} bytes",
            e.len()
        );
        let e = run_command(
            &["/nonexistent/notify".into()],
            &facts(),
            Vec::new(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot start"), "{e}");
    }

    #[tokio::test]
    async fn a_command_past_its_timeout_is_killed_with_its_group_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        // A child in the background, too: the whole group goes. The shell
        // writes the pid file before its own `sleep`, but the timeout runs
        // from the spawn: it must leave a loaded machine time to start the
        // shell and the background child and write the file, or the shell
        // is killed first and there is no pid to check. The file is written
        // by then or never (its writer is dead), so there is nothing to wait
        // for afterwards: a missing pid is a timeout that was too short for
        // the machine, and says so.
        const TIMEOUT: Duration = Duration::from_secs(3);
        let script = format!("sleep 30 & echo $! > '{}'; sleep 30", pids.display());
        let started = std::time::Instant::now();
        let e = run_command(&sh(&script), &facts(), Vec::new(), TIMEOUT)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("did not finish"), "{e}");
        let took = started.elapsed();
        assert!(took >= TIMEOUT, "killed after {took:?}");
        // The shell and its background child sleep 30 s.
        assert!(took < Duration::from_secs(20), "killed after {took:?}");
        let written = std::fs::read_to_string(&pids).unwrap_or_default();
        let bg: i32 = written.trim().parse().unwrap_or_else(|_| {
            panic!("the shell wrote no background pid ({written:?}) within the {TIMEOUT:?} timeout")
        });
        // The background sleep was SIGKILLed (it is a zombie of init, or gone).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let state = std::fs::read_to_string(format!("/proc/{bg}/stat")).unwrap_or_default();
            let zombie_or_gone = state.is_empty()
                || state
                    .rsplit(')')
                    .next()
                    .is_some_and(|rest| rest.trim_start().starts_with('Z'));
            if zombie_or_gone {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "background child lives: {state}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
