//! Jobs that depend on jobs: idempotency keys, `after` ordering and a failed
//! dependency, batches from JSON lines, and pipelines whose input is an
//! earlier job's output.

use jobvisor_client::JobState;

use crate::util::*;

#[test]
fn idempotency_key_dedupes_and_dependencies_order_jobs() {
    let d = Daemon::start(&[]);
    rt().block_on(async {
        let mut c = d.client().await;
        let mut a = json_spec("sleep", r#"{"ms": 50}"#);
        a.key = Some("k-1".into());
        let first = c.submit(vec![a.clone()]).await.unwrap()[0];
        let second = c.submit(vec![a]).await.unwrap()[0];
        assert_eq!(first.id, second.id);
        assert!(second.duplicate && !first.duplicate);
        let mut b = json_spec("noop", "7");
        b.after = vec![first.id];
        let b = c.submit(vec![b]).await.unwrap()[0];
        let recs = wait_succeeded(&mut c, vec![first.id, b.id], None).await;
        assert!(
            recs[1].attempts[0].started_ms >= recs[0].finished_ms.unwrap(),
            "b ran after a"
        );
        // A failed dependency fails the dependent with the reason.
        let bad = c
            .submit(vec![json_spec("hash", r#"{"path": "/nope"}"#)])
            .await
            .unwrap()[0];
        let mut dep = json_spec("noop", "1");
        dep.after = vec![bad.id];
        let dep = c.submit(vec![dep]).await.unwrap()[0];
        let recs = c.wait(vec![dep.id], None).await.unwrap();
        assert_eq!(recs[0].state, JobState::Failed);
        assert!(
            recs[0]
                .error
                .as_deref()
                .unwrap_or("")
                .contains(&format!("dependency {}", bad.id)),
            "{recs:?}"
        );
    });
}

#[test]
fn batch_submit_from_json_lines() {
    let d = Daemon::start(&[]);
    let lines: String = (0..50)
        .map(|i| format!("{{\"task\": \"noop\", \"input\": {i}}}\n"))
        .collect();
    let out = d.cli_stdin(&["submit", "--batch", "-", "--wait"], &lines);
    assert!(out.status.success(), "{}", text(&out));
    let ids: Vec<&str> = std::str::from_utf8(&out.stdout).unwrap().lines().collect();
    assert_eq!(ids.len(), 50, "{}", text(&out));
    let res = d.cli(&["result", ids[49]]);
    assert_eq!(stdout(&res), "49");
}

#[test]
fn pipelines_take_input_from_earlier_outputs() {
    let d = Daemon::start(&[]);
    let file = d.dir.path().join("data.txt");
    std::fs::write(&file, b"hello").unwrap();
    // A batch chain: hash → noop fed the byte count → noop fed that output whole.
    let lines = format!(
        "{{\"task\": \"hash\", \"input\": {{\"path\": \"{}\"}}}}\n\
         {{\"task\": \"noop\", \"input\": {{}}, \"input_from\": [\"#1:/bytes\"]}}\n\
         {{\"task\": \"noop\", \"input\": {{}}, \"input_from\": [{{\"job\": \"#2\"}}]}}\n",
        file.display()
    );
    let out = d.cli_stdin(&["submit", "--batch", "-", "--wait"], &lines);
    assert!(out.status.success(), "{}", text(&out));
    let ids: Vec<String> = stdout(&out).lines().map(String::from).collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        stdout(&d.cli(&["result", &ids[2]])),
        "5",
        "the byte count flowed through two steps"
    );
    // On the command line, with a field, next to static input.
    let out = d.cli(&[
        "submit",
        "compress",
        "--input",
        "{\"dst\": \"/nonexistent-dir/x.zst\", \"level\": 3}",
        "--input-from",
        &format!("{}:/path@src", ids[0]),
    ]);
    // hash's output has no /path: the step fails with the reason, not a hang.
    let id = stdout(&out);
    let out = d.cli(&["wait", &id]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let st = d.cli(&["status", &id, "--json"]);
    assert!(
        stdout(&st).contains("has nothing at /path"),
        "{}",
        text(&st)
    );
    // A failed step fails the steps after it, with the reason.
    let lines = "{\"task\": \"hash\", \"input\": {\"path\": \"/no/such\"}, \"max_attempts\": 1}\n\
                 {\"task\": \"noop\", \"input\": {}, \"input_from\": [\"#1:/bytes\"]}\n";
    let out = d.cli_stdin(&["submit", "--batch", "-", "--wait"], lines);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let second = stdout(&out).lines().nth(1).unwrap_or("").to_string();
    let st = d.cli(&["status", &second, "--json"]);
    assert!(
        stdout(&st).contains("dependency") && stdout(&st).contains("failed"),
        "{}",
        text(&st)
    );
}

/// A pipeline step whose input, built from its sources' outputs, is larger
/// than `limits.max_input_bytes` fails at once, durably, with "input too
/// large" naming the limit and the key to raise; it is not run, not
/// retried, and not run again after a restart. (Such a step was once handed
/// to the pool, which refused it; the attempt was counted but never
/// written, so its end failed "no job N", the step stayed `queued` for ever
/// and every restart ran it again.)
#[test]
fn a_pipeline_input_over_the_limit_fails_once_saying_so() {
    use jobvisor_proto::control::{InputRef, JobRef};
    let mut d = Daemon::with_config("[limits]\nmax_input_bytes = 8192\n");
    let rt = rt();
    let step = rt.block_on(async {
        let mut c = d.client().await;
        // 20,000 bytes of stdout, put on the step's stdin: over 8 KiB.
        let source = json_spec(
            "exec",
            r#"{"argv": ["sh", "-c", "head -c 20000 /dev/zero | tr '\\0' a"]}"#,
        );
        let mut step = json_spec("exec", r#"{"argv": ["true"]}"#);
        step.input_from = vec![InputRef {
            job: JobRef::Batch(0),
            pointer: Some("/stdout".into()),
            field: Some("stdin".into()),
        }];
        let ids = submit_ids(&mut c, vec![source, step]).await;
        let recs = c
            .wait(ids.clone(), Some(std::time::Duration::from_secs(30)))
            .await
            .expect("the step ends");
        assert_eq!(recs[0].state, JobState::Succeeded, "{:?}", recs[0]);
        let r = &recs[1];
        assert_eq!(r.state, JobState::Failed, "{r:?}");
        let error = r.error.as_deref().unwrap_or("");
        assert!(
            error.contains("input too large") && error.contains("limits.max_input_bytes (8192)"),
            "{error}"
        );
        assert!(r.attempts.is_empty(), "it never ran: {r:?}");
        ids[1]
    });
    d.kill9();
    d.spawn();
    rt.block_on(async {
        let mut c = d.client().await;
        let r = c.status(step).await.unwrap();
        assert_eq!(r.state, JobState::Failed, "after a restart: {r:?}");
        assert!(r.attempts.is_empty(), "not run after a restart: {r:?}");
    });
}
