//! The daemon's signals: SIGTERM drains the running jobs and exits 0,
//! SIGHUP reloads the pool size and the queues without losing a job.

use std::time::Duration;

use jobvisor_client::JobState;

use crate::util::wait::{until, workers_when};
use crate::util::*;

#[test]
fn sigterm_drains_running_jobs_and_exits_zero() {
    let mut d = Daemon::start(&[]);
    let ids: Vec<u64> = rt().block_on(async {
        let mut c = d.client().await;
        let specs = (0..2)
            .map(|_| json_spec("sleep", r#"{"ms": 700}"#))
            .collect();
        let ids: Vec<u64> = submit_ids(&mut c, specs).await;
        // Wait until both run (their attempts are recorded as started).
        until(Duration::from_secs(30), "both jobs running", async || {
            let running = c.list(Some(JobState::Running), None, 10).await.unwrap();
            if running.len() == 2 {
                Ok(())
            } else {
                Err(format!("{running:?}"))
            }
        })
        .await;
        ids
    });
    let status = d.term_and_wait();
    assert!(status.success(), "{status:?}\n{}", d.log());
    assert!(!d.socket.exists(), "socket removed");
    // Restart and check that both finished before the daemon exited.
    d.spawn();
    rt().block_on(async {
        let mut c = d.client().await;
        for id in ids {
            let r = c.status(id).await.unwrap();
            assert_eq!(r.state, JobState::Succeeded, "{r:?}");
            assert_eq!(r.attempts.len(), 1);
        }
    });
}

#[test]
fn sighup_reloads_pool_size_and_queues_without_losing_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("jobvisor.toml");
    std::fs::write(&cfg, "workers = 1\n").unwrap();
    let d = Daemon::start_raw(&["--config", cfg.to_str().unwrap()]);
    rt().block_on(async {
        let mut c = d.client().await;
        assert_eq!(c.workers().await.unwrap().len(), 1);
        let mut heavy = json_spec("sleep", r#"{"ms": 1}"#);
        heavy.queue = Some("heavy".into());
        assert!(
            c.submit(vec![heavy.clone()]).await.is_err(),
            "queue unknown before the reload"
        );
        // Jobs in flight across the reload.
        let running: Vec<u64> = submit_ids(
            &mut c,
            (0..4)
                .map(|_| json_spec("sleep", r#"{"ms": 300}"#))
                .collect(),
        )
        .await;
        std::fs::write(&cfg, "workers = 3\n[queues.heavy]\nconcurrency = 1\n").unwrap();
        d.signal(libc::SIGHUP);
        // The reload is applied asynchronously; poll the observable result, bounded.
        workers_when(
            &mut c,
            Duration::from_secs(20),
            "pool did not grow to 3 workers",
            |rows| rows.iter().filter(|w| w.state.as_str() == "ready").count() == 3,
        )
        .await;
        let id = until(
            Duration::from_secs(20),
            "queue still unknown after the reload",
            async || match c.submit(vec![heavy.clone()]).await {
                Ok(v) => Ok(v[0].id),
                Err(e) => Err(e.to_string()),
            },
        )
        .await;
        let mut all = running.clone();
        all.push(id);
        wait_succeeded(&mut c, all, None).await;
    });
}
