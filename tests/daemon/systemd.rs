//! Under systemd: the `sd_notify` messages of a `Type=notify` unit, read
//! from a real datagram socket the test binds as `$NOTIFY_SOCKET`, and
//! journald-style log lines when stderr is the "journal".

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::util::daemon::{cli_command, daemon_command, kill_group, wait_ready};
use crate::util::*;

/// The next message on `rx` (waits up to 30 s: a bound, not a pace).
fn next(rx: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = rx.recv(&mut buf).expect("a notification within 30 s");
    String::from_utf8(buf[..n].to_vec()).expect("utf-8")
}

/// READY comes once the control socket answers (so `ping` works the moment
/// systemd is told), with the daemon's pid and a status line; watchdog
/// pings follow at half of `WATCHDOG_USEC`; SIGTERM sends STOPPING. A job's
/// command does not inherit `NOTIFY_SOCKET`, so it cannot speak for the
/// daemon.
#[test]
fn a_notify_unit_is_told_ready_watchdog_and_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notify.sock");
    let rx = UnixDatagram::bind(&path).expect("bind notify socket");
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("daemon.log");
    let mut child = daemon_command(&state, &log)
        .args(["--workers", "1"])
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "200000")
        .spawn()
        .expect("spawn daemon");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let ready = next(&rx);
    let socket = state.join("control.sock");
    // Told ready: the socket must answer now, without waiting.
    let ping = cli_command(&socket).arg("ping").output().expect("ping");
    assert!(
        ping.status.success(),
        "not answering at READY: {}\n{}",
        text(&ping),
        read_log()
    );
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", child.id())),
        "{ready}"
    );
    assert!(ready.contains("STATUS=ready: 1 workers"), "{ready}");

    let mut pings = 0;
    while pings < 2 {
        let m = next(&rx);
        assert!(m.starts_with("WATCHDOG=1\nSTATUS="), "{m}");
        pings += 1;
    }

    let out = cli_command(&socket)
        .args([
            "submit",
            "--wait",
            "exec",
            "--",
            "sh",
            "-c",
            "echo ${NOTIFY_SOCKET:-unset}",
        ])
        .output()
        .expect("submit");
    assert!(out.status.success(), "{}", text(&out));
    let id = stdout(&out).lines().next().unwrap_or_default().to_string();
    let result = cli_command(&socket)
        .args(["result", &id])
        .output()
        .expect("result");
    assert!(
        stdout(&result).contains("unset"),
        "a job saw NOTIFY_SOCKET: {}",
        text(&result)
    );

    signal_term(child.id());
    let stopping = loop {
        let m = next(&rx);
        if !m.starts_with("WATCHDOG=1") {
            break m;
        }
    };
    assert!(
        stopping.starts_with("STOPPING=1\nSTATUS=draining"),
        "{stopping}"
    );
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}\n{}", read_log());
    kill_group(&mut child);
}

fn signal_term(pid: u32) {
    crate::util::proc::signal(pid as i32, libc::SIGTERM);
}

/// With stderr the journal's stream (`JOURNAL_STREAM` names its device and
/// inode), each line starts with its priority and carries no timestamp.
#[test]
fn log_lines_to_the_journal_have_priorities_and_no_timestamps() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let log = dir.path().join("daemon.log");
    std::fs::write(&log, b"").unwrap();
    let meta = std::fs::metadata(&log).unwrap();
    let mut child = daemon_command(&state, &log)
        .args(["--workers", "1"])
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .spawn()
        .expect("spawn daemon");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_ready(
        &state.join("control.sock"),
        Duration::from_secs(20),
        read_log,
    );
    kill_group(&mut child);
    let text = read_log();
    let ready = text
        .lines()
        .find(|l| l.contains("jobvisor daemon ready"))
        .unwrap_or_else(|| panic!("no ready line:\n{text}"));
    assert!(ready.starts_with("<6>"), "{ready}");
    // A timestamp would start the line (after the prefix) with the year.
    assert!(
        !ready["<6>".len()..].trim_start().starts_with("20"),
        "{ready}"
    );
    for line in text.lines().filter(|l| !l.is_empty()) {
        assert!(
            ["<3>", "<4>", "<6>", "<7>"]
                .iter()
                .any(|p| line.starts_with(p)),
            "a line without a priority: {line}"
        );
    }
}

/// `config/jobvisor.service` passes `systemd-analyze verify` without a
/// warning (with `ExecStart` pointed at the built binary), where
/// systemd-analyze exists, and keeps the settings the daemon relies on.
#[test]
fn the_unit_file_verifies_and_lets_the_daemon_drain_itself() {
    let unit_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/jobvisor.service");
    let unit = std::fs::read_to_string(&unit_path).expect("config/jobvisor.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=mixed",
        "WatchdogSec=",
        "StateDirectory=jobvisor",
        "NoNewPrivileges=yes",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(line)),
            "no {line} in the unit"
        );
    }
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(analyze) = analyze else {
        eprintln!("systemd-analyze is not installed: the unit is not verified here");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("jobvisor.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/jobvisor", bin())).unwrap();
    let out = std::process::Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&copy)
        .output()
        .expect("run systemd-analyze");
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}",
        text(&out)
    );
}
