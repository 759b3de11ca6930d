//! `[store] url` / `--store`: where the jobs live.

use crate::util::daemon::Daemon;

/// `--store sqlite:PATH` puts the database at PATH, not in the state
/// directory, and what was acknowledged there survives kill -9 and a
/// restart with the same URL. Its new directory is created private.
#[test]
fn a_sqlite_url_puts_the_database_where_it_says_and_it_survives_kill_9() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempfile::tempdir().expect("tempdir");
    let db = data.path().join("elsewhere").join("queue.db");
    let url = format!("sqlite:{}", db.display());
    let mut d = Daemon::start(&["--store", &url]);
    let id = d.cli_ok(&["submit", "noop", "--input", "7", "--delay", "1h"]);
    assert!(db.exists(), "no database at {}", db.display());
    assert!(
        !d.state_dir().join("jobs.db").exists(),
        "the default database was made as well"
    );
    let mode = std::fs::metadata(db.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "the store's new directory");
    assert!(
        d.log().contains(&format!("store={url}")),
        "the ready line names the store:\n{}",
        d.log()
    );
    d.kill9();
    d.spawn();
    let status = d.cli_ok(&["status", &id]);
    assert!(status.contains("queued"), "{status}");
}
