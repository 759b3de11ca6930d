//! Files and directories that are not the daemon's: a regular file at the
//! socket path, a state dir owned by another user with a planted lock
//! symlink, existing directories whose modes must not change, and the modes
//! of the job database. The daemon refuses, says which path and why, and
//! touches nothing that is not its own.

use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use crate::util::daemon::{daemon_command, kill_group};
use crate::util::wait::until;
use crate::util::*;

/// Runs `jobvisor daemon --state-dir <state> <extra>` expecting it to refuse
/// to start: its exit status and its log. Kills it (and fails) if it is still
/// running after 20 s.
fn refused(state: &Path, log: &Path, extra: &[&str]) -> (ExitStatus, String) {
    let mut child = daemon_command(state, log)
        .args(["--workers", "1"])
        .args(extra)
        .spawn()
        .expect("spawn daemon");
    let status = rt().block_on(until(
        Duration::from_secs(20),
        "the daemon exits",
        async || match child.try_wait() {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err("still running".to_string()),
            Err(e) => Err(e.to_string()),
        },
    ));
    kill_group(&mut child);
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

#[test]
fn a_regular_file_at_the_socket_path_is_refused_and_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("control.sock");
    std::fs::write(&socket, b"not a socket").expect("write");
    let sock = socket.to_str().expect("utf-8 path");
    let (status, log) = refused(
        &dir.path().join("state"),
        &dir.path().join("daemon.log"),
        &["--socket", sock],
    );
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(
        log.contains(sock) && log.contains("not a socket"),
        "the error names the path and why:\n{log}"
    );
    assert_eq!(std::fs::read(&socket).expect("kept"), b"not a socket");
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o7777
}

#[test]
fn existing_directories_keep_their_modes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = shared.join("x.sock");
    let mut d = Daemon::new(
        dir,
        None,
        &[
            "--workers",
            "1",
            "--socket",
            socket.to_str().expect("utf-8"),
        ],
    );
    d.socket = socket;
    d.spawn();
    assert_eq!(
        mode(&d.dir.path().join("shared")),
        0o1777,
        "the socket's directory"
    );
    assert_eq!(mode(&d.state_dir()), 0o755, "the state directory");
}

#[test]
fn a_state_dir_of_another_user_is_refused_and_its_symlink_not_followed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("root-owned");
    std::fs::write(&target, b"precious").expect("write");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(65534), Some(65534)).expect("chown to nobody");
    std::os::unix::fs::symlink(&target, state.join("daemon.lock")).expect("symlink");
    let (status, log) = refused(&state, &dir.path().join("daemon.log"), &[]);
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(
        log.contains(&format!("refusing to use {}", state.display()))
            && log.contains("owned by uid 65534"),
        "the error names the path and why:\n{log}"
    );
    assert_eq!(std::fs::read(&target).expect("kept"), b"precious");
}

#[test]
fn the_job_database_and_its_wal_are_private() {
    let d = Daemon::start(&[]);
    d.cli_ok(&["submit", "noop", "--input", "1"]);
    for name in ["jobs.db", "jobs.db-wal", "jobs.db-shm"] {
        let path = d.state_dir().join(name);
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
}

/// A `sqlite:` store in a directory another user can write is refused, as a
/// state directory would be: that user could swap the database.
#[test]
fn a_sqlite_store_in_a_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let url = format!("sqlite:{}/jobs.db", open.display());
    let state = dir.path().join("state");
    let (status, log) = refused(&state, &dir.path().join("daemon.log"), &["--store", &url]);
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(
        log.contains(&format!("refusing to use {}", open.display())) && log.contains("store.url"),
        "the error names the path, why and the key:\n{log}"
    );
    assert!(!open.join("jobs.db").exists(), "a database was created");
}

/// A store URL the daemon cannot use is refused at start, naming the key.
#[test]
fn an_unknown_store_url_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let (status, log) = refused(
        &state,
        &dir.path().join("daemon.log"),
        &["--store", "mysql://h/db"],
    );
    assert!(!status.success(), "{status:?}\n{log}");
    assert!(
        log.contains("store.url") && log.contains("unknown store `mysql`"),
        "{log}"
    );
}
