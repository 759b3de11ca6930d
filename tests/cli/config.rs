//! The daemon's configuration file from the outside: human durations
//! (issue 10, item F.21).

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
