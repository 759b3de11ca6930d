//! The daemon's configuration file from the outside: human durations
//! (issue 10, item F.21), discovery without `--config` and SIGHUP (F.23).

use std::time::Duration;

use crate::util::wait::{job_when, running};
use crate::util::*;

/// A config whose duration keys say `"1.5s"` loads, and the value applies:
/// the drain after SIGTERM gives up after 1.5 s, as the log says. Before,
/// such a file was refused ("invalid type: string").
#[test]
fn a_config_with_human_durations_loads_and_applies() {
    let mut d = Daemon::with_config(
        "[limits]\nhandshake_timeout_ms = \"2s\"\n\
         [jobs]\ndrain_grace_ms = \"1.5s\"\nbackoff_base_ms = 250\n\
         [retention]\nmax_age_secs = \"7d\"\n",
    );
    rt().block_on(async {
        let mut c = d.client().await;
        let id = submit_ids(&mut c, vec![json_spec("sleep", r#"{"ms": 600000}"#)]).await[0];
        job_when(&mut c, id, Duration::from_secs(60), "running", running).await;
    });
    let status = d.term_and_wait();
    assert!(status.success(), "{status}: {}", d.log());
    let log = d.log();
    let over = log
        .lines()
        .find(|l| l.contains("drain grace period over"))
        .unwrap_or_else(|| panic!("no drain timeout in the log:\n{log}"));
    assert!(over.contains("1.5s"), "{over}");
}

/// Where a test daemon's discovered configuration file lives (the
/// `XDG_CONFIG_HOME` the harness gives it).
fn xdg_config_file(d: &Daemon) -> std::path::PathBuf {
    d.dir.path().join("xdg-config/jobvisor/jobvisor.toml")
}

/// Polls the daemon's log until a line says `what` (to a deadline).
fn log_line_when(d: &Daemon, what: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = d.log().lines().rev().find(|l| l.contains(what)) {
            return l.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what:?} in the log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Without `--config`, the daemon reads `$XDG_CONFIG_HOME/jobvisor/jobvisor.toml`
/// and says so; a queue declared in it later is there after a SIGHUP, with
/// no restart (issue 10, item F.23). Before, only `--config` was read and
/// SIGHUP said "no config file to reload".
#[test]
fn a_discovered_config_is_read_and_sighup_adds_a_queue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut d = Daemon::new(dir, None, &["--workers", "2"]);
    let file = xdg_config_file(&d);
    std::fs::create_dir_all(file.parent().expect("parent")).expect("config dir");
    std::fs::write(&file, "[queues.reports]\nconcurrency = 1\n").expect("config");
    d.spawn();
    let read = log_line_when(&d, "configuration read");
    assert!(read.contains(&file.display().to_string()), "{read}");
    d.cli_ok(&["submit", "noop", "--input", "1", "--queue", "reports"]);
    let out = d.cli(&["submit", "noop", "--input", "1", "--queue", "fresh"]);
    assert_exit("submit to an undeclared queue", &out, 7, "fresh");

    std::fs::write(
        &file,
        "[queues.reports]\nconcurrency = 1\n[queues.fresh]\nconcurrency = 2\n",
    )
    .expect("config");
    d.signal(libc::SIGHUP);
    let reloaded = log_line_when(&d, "SIGHUP: configuration reloaded");
    assert!(reloaded.contains(&file.display().to_string()), "{reloaded}");
    // The reload reaches the scheduler through its queue of commands: the
    // submit after it sees the new queue.
    let id = d.cli_ok(&[
        "submit", "noop", "--input", "1", "--queue", "fresh", "--wait",
    ]);
    assert!(!id.is_empty());
}

/// With no file anywhere, the log says where the daemon looked.
#[test]
fn without_a_config_file_the_log_says_where_it_looked() {
    let d = Daemon::start(&[]);
    let line = log_line_when(&d, "no configuration file found");
    assert!(
        line.contains(&xdg_config_file(&d).display().to_string())
            && line.contains("/etc/jobvisor/jobvisor.toml"),
        "{line}"
    );
}
