//! `status`: one job for a person (state, times, attempts and how each
//! ended) or its full record as JSON.

use std::path::Path;

use jobvisor_proto::control::{Attempt, AttemptOutcome, JobRecord, Payload};
use jobvisor_proto::forkserver::signal_name;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::text::{one_line, truncate_chars};
use crate::output::time::{fmt_ms, fmt_unix_ms};
use crate::output::{emit, emit_json};

/// Longest input/output preview shown by `status`.
const PREVIEW_CHARS: usize = 120;

/// Prints job `id`.
pub async fn status(id: u64, json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let r = client.status(id).await?;
    if json {
        emit_json(&jobvisor_proto::json::Job::from(&r))?;
    } else {
        emit(&format_status(&r))?;
    }
    Ok(EXIT_OK)
}

/// Job `r` for a person: one `name: value` line a field, then the attempts.
pub fn format_status(r: &JobRecord) -> String {
    let mut s = String::new();
    let mut field = |name: &str, value: &str| {
        s.push_str(&format!("{:<10} {value}\n", format!("{name}:")));
    };
    field("job", &r.id.to_string());
    field("task", &r.task);
    field("state", r.state.as_str());
    field("queue", &r.queue);
    field("priority", &r.priority.to_string());
    if let Some(key) = &r.key {
        field("key", key);
    }
    if let Some(url) = &r.notify_url {
        field("notify", url);
    }
    if !r.after.is_empty() {
        let ids: Vec<String> = r.after.iter().map(u64::to_string).collect();
        field("after", &ids.join(", "));
    }
    if let Some(t) = r.timeout_ms {
        field("timeout", &fmt_ms(t));
    }
    field("created", &fmt_unix_ms(r.created_ms));
    if r.run_at_ms > r.created_ms {
        field("run at", &fmt_unix_ms(r.run_at_ms));
    }
    if let Some(f) = r.finished_ms {
        field(
            "finished",
            &format!(
                "{} (after {})",
                fmt_unix_ms(f),
                fmt_ms(f.saturating_sub(r.created_ms))
            ),
        );
    }
    if let Some(input) = &r.input {
        field("input", &preview(input));
    }
    if let Some(output) = &r.output {
        field("output", &preview(output));
    }
    if let Some(e) = &r.error {
        field("error", &continued(e));
    }
    field("attempts", &attempts_line(r));
    let crashes = r
        .attempts
        .iter()
        .filter(|a| a.number >= r.budget_from)
        .filter(|a| matches!(a.outcome, AttemptOutcome::Crashed { .. }))
        .count();
    if let (Some(max), 1..) = (r.max_crashes, crashes) {
        field("crashes", &format!("{crashes} of at most {max}"));
    }
    for a in &r.attempts {
        let pid = attempt_pid(a);
        let took = a
            .finished_ms
            .map(|f| format!(", {}", fmt_ms(f.saturating_sub(a.started_ms))))
            .unwrap_or_default();
        s.push_str(&format!(
            "  #{:<3} {pid}{took}: {}\n",
            a.number,
            describe_outcome(&a.outcome)
        ));
        if let AttemptOutcome::Crashed { stderr_tail, .. } = &a.outcome {
            for line in stderr_tail {
                s.push_str(&format!("        | {line}\n"));
            }
        }
    }
    s
}

/// The attempts of the current budget against the attempt budget, and
/// all of them when a `retry` started a fresh budget: "1 of at most 3 (6
/// in all)".
fn attempts_line(r: &JobRecord) -> String {
    let (since, all) = (budget_attempts(r), r.attempts.len());
    if since == all {
        format!("{all} of at most {}", r.max_attempts)
    } else {
        format!("{since} of at most {} ({all} in all)", r.max_attempts)
    }
}

/// The attempts the job's current budgets count (since its last `retry`).
pub fn budget_attempts(r: &JobRecord) -> usize {
    r.attempts
        .iter()
        .filter(|a| a.number >= r.budget_from)
        .count()
}

/// Which worker ran attempt `a`. A lost attempt was cut off by a daemon
/// that stopped or died before it learnt (or stored) the pid; it used to
/// show as `pid ?`.
fn attempt_pid(a: &Attempt) -> String {
    match (a.worker_pid, &a.outcome) {
        (Some(p), _) => format!("pid {p}"),
        (None, AttemptOutcome::Lost) => "pid unknown (the daemon stopped before it knew)".into(),
        (None, o) if o.is_daemon_died() => "pid unknown (the daemon died before it knew)".into(),
        (None, AttemptOutcome::Running) => "pid not known yet".into(),
        (None, _) => "pid unknown".into(),
    }
}

/// How an attempt ended, in words.
fn describe_outcome(o: &AttemptOutcome) -> String {
    match o {
        AttemptOutcome::Running => "running".to_owned(),
        AttemptOutcome::Ok => "ok".to_owned(),
        AttemptOutcome::Error(e) => format!("error: {}", one_line(headline(e))),
        AttemptOutcome::Panic(e) => format!("panicked: {}", one_line(e)),
        o if o.is_daemon_died() => {
            "crashed: the daemon died while it ran (found at its next start)".to_owned()
        }
        AttemptOutcome::Crashed {
            code,
            signal,
            max_rss_kib,
            ..
        } => {
            let how = match (code, signal) {
                (_, Some(sig)) => match signal_name(*sig) {
                    Some(name) => format!("killed by signal {sig} ({name})"),
                    None => format!("killed by signal {sig}"),
                },
                (Some(c), None) => format!("exited with code {c}"),
                (None, None) => "died".to_owned(),
            };
            format!("worker crashed ({how}, peak RSS {max_rss_kib} KiB)")
        }
        AttemptOutcome::TimedOut(how) => format!("timed out ({how})"),
        AttemptOutcome::Lost => "lost (the daemon stopped while it ran; not charged)".to_owned(),
        AttemptOutcome::Cancelled => "cancelled".to_owned(),
    }
}

/// The first line of an error: an `exec` failure goes on with the command's
/// output, which the job's `error` field shows once, not every attempt.
fn headline(e: &str) -> &str {
    e.lines().next().unwrap_or(e)
}

/// A many-line value for a `name: value` field: its later lines indented
/// under the value and marked `|`, like a crash's output tail.
fn continued(value: &str) -> String {
    let mut lines = value.lines();
    let mut out = lines.next().unwrap_or("").to_owned();
    for line in lines {
        out.push_str("\n           | ");
        out.push_str(line);
    }
    out
}

/// A payload on one line, cut to [`PREVIEW_CHARS`].
fn preview(p: &Payload) -> String {
    match p {
        Payload::Json(t) => truncate_chars(&one_line(t), PREVIEW_CHARS),
        Payload::Native(b) => format!("<{} bytes, native encoding>", b.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(worker_pid: Option<u32>, outcome: AttemptOutcome) -> Attempt {
        Attempt {
            number: 1,
            worker_pid,
            started_ms: 0,
            finished_ms: None,
            outcome,
        }
    }

    /// Issue 10, item F.25: no `pid ?`.
    #[test]
    fn an_attempt_without_a_pid_says_why() {
        assert_eq!(
            attempt_pid(&attempt(Some(42), AttemptOutcome::Ok)),
            "pid 42"
        );
        let lost = attempt_pid(&attempt(None, AttemptOutcome::Lost));
        assert!(lost.starts_with("pid unknown (the daemon"), "{lost}");
        assert_eq!(
            attempt_pid(&attempt(None, AttemptOutcome::Running)),
            "pid not known yet"
        );
        assert!(!attempt_pid(&attempt(None, AttemptOutcome::Cancelled)).contains('?'));
        let died = attempt(None, AttemptOutcome::daemon_died());
        assert!(attempt_pid(&died).starts_with("pid unknown (the daemon died"));
        assert!(describe_outcome(&died.outcome).contains("the daemon died while it ran"));
    }

    /// Issue 10, item F.25: after `retry`, not "attempts: 6 of at most 3".
    #[test]
    fn attempts_count_the_current_budget_and_all() {
        let mut r = crate::commands::mock::record(1, "t", Payload::Json("1".into()));
        r.max_attempts = 3;
        r.attempts = (1..=6)
            .map(|n| Attempt {
                number: n,
                ..attempt(Some(9), AttemptOutcome::Error("e".into()))
            })
            .collect();
        assert_eq!(attempts_line(&r), "6 of at most 3");
        r.budget_from = 6;
        assert_eq!(attempts_line(&r), "1 of at most 3 (6 in all)");
        r.budget_from = 7;
        assert_eq!(attempts_line(&r), "0 of at most 3 (6 in all)");
    }
}
