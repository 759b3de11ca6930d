//! Well-formed requests with extreme values (every numeric field a client
//! controls, at its limits): each gets an answer and the daemon lives on.

use std::time::Duration;

use jobvisor_client::{ClientError, ErrorKind, JobSpec, JobState};

use crate::util::wait::until;
use crate::util::*;

/// Every numeric field of a request a client controls, at its extremes: each
/// request gets an answer (accepted or refused), and the daemon stays up and
/// keeps running jobs. (`delay_ms = u64::MAX` has a test of its own, below:
/// it once killed the scheduler.)
#[test]
fn extreme_field_values_get_answers_and_the_daemon_survives() {
    let d = Daemon::start(&[]);
    let pid = d.pid();
    rt().block_on(async {
        let mut c = d.client().await;
        let mut cases: Vec<(&str, JobSpec)> = Vec::new();
        let base = || json_spec("noop", "1");
        let mut s = base();
        s.delay_ms = Some(i64::MAX as u64);
        cases.push(("delay_ms = i64::MAX", s));
        let mut s = base();
        s.priority = i32::MIN;
        s.max_attempts = Some(0);
        s.timeout_ms = Some(0);
        s.stall_timeout_ms = Some(0);
        cases.push(("priority MIN, max_attempts 0, timeouts 0", s));
        let mut s = base();
        s.priority = i32::MAX;
        s.max_attempts = Some(u32::MAX);
        s.timeout_ms = Some(u64::MAX);
        s.stall_timeout_ms = Some(u64::MAX);
        cases.push(("priority MAX, max_attempts MAX, timeouts MAX", s));
        let mut s = base();
        s.after = vec![u64::MAX, 0];
        cases.push(("after u64::MAX", s));
        let mut s = base();
        s.key = Some("k".repeat(100_000));
        cases.push(("100 kB key", s));
        let mut s = base();
        s.queue = Some(String::new());
        cases.push(("empty queue name", s));
        for (what, spec) in cases {
            let r = c.submit(vec![spec]).await;
            println!("{what}: {r:?}");
            match &r {
                Ok(_) | Err(ClientError::Server(_)) => {}
                Err(e) => panic!("{what}: no answer: {e}\nlog:\n{}", d.log()),
            }
            // Stats go through the scheduler (a ping does not).
            c.stats().await.unwrap_or_else(|e| {
                panic!(
                    "{what} ({r:?}): the daemon no longer schedules: {e}\nlog:\n{}",
                    d.log()
                )
            });
        }
        // A failing task whose retry backoff is the largest a job may ask
        // for (ten years): the retry is placed, nothing overflows.
        let ten_years = 10 * 365 * 24 * 3600 * 1000u64;
        let mut s = json_spec("hash", r#"{"path": "/nonexistent/x"}"#);
        s.max_attempts = Some(2);
        s.backoff_base_ms = Some(ten_years);
        s.backoff_max_ms = Some(ten_years);
        let id = c.submit(vec![s]).await.expect("submit")[0].id;
        let r = until(
            Duration::from_secs(20),
            "first attempt never ended",
            async || {
                let r = c.status(id).await.unwrap_or_else(|e| {
                    panic!(
                        "huge backoff: the daemon no longer answers: {e}\nlog:\n{}",
                        d.log()
                    )
                });
                if r.attempts.first().is_some_and(|a| a.finished_ms.is_some()) {
                    Ok(r)
                } else {
                    Err(format!("{r:?}"))
                }
            },
        )
        .await;
        assert!(
            r.state == JobState::Retrying || r.state.is_terminal(),
            "{r:?}"
        );
        // Reads and controls with odd ids and limits.
        for id in [0, u64::MAX] {
            assert!(c.status(id).await.is_err());
            assert!(c.cancel(id).await.is_err());
            assert!(c.retry(id).await.is_err());
        }
        c.list(None, None, 0).await.expect("list limit 0");
        c.list(None, None, u32::MAX).await.expect("list limit MAX");
        c.list(None, Some("x".repeat(10_000)), 5)
            .await
            .expect("list odd queue");
        let recs = c
            .wait(vec![u64::MAX], Some(Duration::from_millis(u64::MAX)))
            .await;
        assert!(matches!(recs, Err(ClientError::Server(_))), "{recs:?}");
        d.cli_ok(&["submit", "noop", "--input", "5", "--wait"]);
        assert_eq!(c.ping().await.expect("ping"), pid);
    });
    let log = d.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// `delay_ms = u64::MAX` ("never, really") from any client: refused as a bad
/// request (durations are capped at ten years), and the scheduler lives on.
/// (It once overflowed `now + delay_ms` and killed the scheduler task.)
#[test]
fn a_delay_of_u64_max_is_answered_and_the_scheduler_survives() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let mut c = d.client().await;
        let mut s = json_spec("noop", "1");
        s.delay_ms = Some(u64::MAX);
        let r = c.submit(vec![s]).await;
        assert!(
            !matches!(&r, Err(ClientError::Server(e)) if e.kind == ErrorKind::ShuttingDown),
            "{r:?}\nlog:\n{}",
            d.log()
        );
        c.stats().await.unwrap_or_else(|e| {
            panic!("after {r:?}: the scheduler is gone: {e}\nlog:\n{}", d.log())
        });
        d.cli_ok(&["submit", "noop", "--input", "5", "--wait"]);
    });
}

/// An id past `i64::MAX` (the store's integer range) names no job: every
/// command that takes one exits 4 "no such job", not 7 "job store error".
#[test]
fn ids_past_i64_max_are_no_such_job() {
    let d = Daemon::start(&[]);
    for cmd in ["status", "cancel", "retry", "wait"] {
        let out = d.cli(&[cmd, "18446744073709551615"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{cmd}: {stderr}");
        assert!(
            stderr.contains("no job 18446744073709551615"),
            "{cmd}: {stderr}"
        );
    }
}

/// Issue 10, item 8: tiny requests that asked for huge answers. A wait for 300
/// copies of one id reads and answers that job once (it answered 300 records);
/// more distinct ids than `limits.max_wait_ids` and an idempotency key over
/// `limits.max_key_bytes` are refused, naming the limit (a 1 MiB key was
/// accepted and stored).
#[test]
fn repeated_wait_ids_and_long_keys_cannot_blow_up_an_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = config(&dir, "[limits]\nmax_wait_ids = 2\nmax_key_bytes = 16\n");
    let d = Daemon::start(&["--config", &cfg]);
    rt().block_on(async {
        let mut c = d.client().await;
        let id = c
            .submit(vec![json_spec("noop", "1")])
            .await
            .expect("submit")[0]
            .id;
        let records = c.wait(vec![id; 300], None).await.expect("wait");
        assert_eq!(records.len(), 1, "one record for one job");
        assert_eq!(records[0].state, JobState::Succeeded);

        let ids: Vec<u64> = c
            .submit(vec![json_spec("noop", "2"), json_spec("noop", "3")])
            .await
            .expect("submit")
            .iter()
            .map(|s| s.id)
            .collect();
        match c.wait(vec![id, ids[0], ids[1]], None).await {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.kind, ErrorKind::LimitReached);
                assert!(
                    e.message.contains("limits.max_wait_ids (2)"),
                    "{}",
                    e.message
                );
            }
            other => panic!("a wait for 3 ids past a limit of 2: {other:?}"),
        }

        let mut keyed = json_spec("noop", "4");
        keyed.key = Some("k".repeat(17));
        match c.submit(vec![keyed]).await {
            Err(ClientError::Server(e)) => {
                assert_eq!(e.kind, ErrorKind::LimitReached);
                assert!(
                    e.message.contains("limits.max_key_bytes (16)"),
                    "{}",
                    e.message
                );
            }
            other => panic!("a 17-byte key past a limit of 16: {other:?}"),
        }
        let mut keyed = json_spec("noop", "5");
        keyed.key = Some("k".repeat(16));
        c.submit(vec![keyed]).await.expect("a key at the limit");
    });
}
