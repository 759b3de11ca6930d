//! What a run found: every terminal record checked against what its kind
//! must end as (state, attempt budgets, crashes charged only for kills we
//! made), the figures of the summary line, and the evidence for a failure.

use std::collections::HashMap;
use std::path::PathBuf;

use jobvisor_client::{AttemptOutcome, JobRecord, JobState, Payload};

use super::config::ChaosConfig;
use super::shared::Kill;
use super::workload::{Kind, Planned};

/// What a chaos run found.
#[derive(Debug)]
pub(super) struct ChaosReport {
    /// The one summary line.
    pub(super) line: String,
    /// Every figure that is off, with its evidence.
    pub(super) problems: Vec<String>,
    /// The run's directory (daemon log, database); kept when there are problems.
    pub(super) dir: PathBuf,
}

/// A log line without its colour codes.
pub(super) fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Default)]
pub(super) struct Figures {
    pub(super) succeeded: usize,
    pub(super) failed: usize,
    pub(super) dead: usize,
    pub(super) reruns: usize,
    pub(super) lost: usize,
    /// Crashed attempts of jobs that are not poison: random kills that hit.
    pub(super) hits: usize,
    /// Crashed attempts of jobs that are not poison on a worker we did not kill.
    pub(super) misattributed: usize,
    /// Attempts of jobs that are not poison, lost ones excluded.
    pub(super) normal_attempts: usize,
    pub(super) normal: usize,
    pub(super) failing: usize,
}

pub(super) fn short(r: &JobRecord) -> String {
    let attempts: Vec<String> = r
        .attempts
        .iter()
        .map(|a| {
            let o = match &a.outcome {
                AttemptOutcome::Crashed { code, signal, .. } => {
                    format!("crashed(code {code:?}, signal {signal:?})")
                }
                other => format!("{other:?}").chars().take(80).collect(),
            };
            format!("#{} pid {:?}: {o}", a.number, a.worker_pid)
        })
        .collect();
    format!(
        "job {} ({}) {:?} error {:?} attempts [{}]",
        r.id,
        r.task,
        r.state,
        r.error,
        attempts.join("; ")
    )
}

/// Checks every record against what its kind must end as.
pub(super) fn check_records(
    cfg: &ChaosConfig,
    plan: &[Planned],
    ids: &[u64],
    records: &HashMap<u64, JobRecord>,
    digest: Option<&str>,
    kills: &[Kill],
) -> (Figures, Vec<String>, Vec<u32>) {
    let mut by_pid: HashMap<u32, Vec<Kill>> = HashMap::new();
    for k in kills {
        by_pid.entry(k.pid).or_default().push(*k);
    }
    // Did we SIGKILL this worker while the attempt was open? (pids are
    // recycled over a long run, hence the time window.) The kill happened
    // within [before_ms, after_ms]; the daemon stamps the attempt's end
    // (finished_ms, same clock) after it saw the worker die, so a kill that
    // ended it has before_ms <= finished_ms exactly. Its start (started_ms)
    // is stamped when the call is handed to the pool, which can be a moment
    // after the kill when the daemon has not noticed the death yet:
    // KILL_NOTICE_SLACK_MS of that is allowed. A crash charged to an attempt
    // that ended before the kill, or began later than that after it, is not
    // ours.
    const KILL_NOTICE_SLACK_MS: u64 = 50;
    let we_killed = |a: &jobvisor_client::Attempt| {
        a.worker_pid.and_then(|p| by_pid.get(&p)).is_some_and(|ks| {
            let end = a.finished_ms.unwrap_or(u64::MAX);
            ks.iter()
                .any(|k| k.before_ms <= end && k.after_ms + KILL_NOTICE_SLACK_MS >= a.started_ms)
        })
    };
    let mut misattributed: Vec<u32> = Vec::new();
    let mut f = Figures::default();
    let mut problems: Vec<String> = Vec::new();
    let mut wrong: HashMap<&'static str, (usize, Vec<String>)> = HashMap::new();
    let mut flag = |what: &'static str, r: &JobRecord| {
        let e = wrong.entry(what).or_default();
        e.0 += 1;
        if e.1.len() < 5 {
            e.1.push(short(r));
        }
    };
    for (n, p) in plan.iter().enumerate() {
        let Some(r) = ids.get(n).and_then(|id| records.get(id)) else {
            continue;
        };
        match r.state {
            JobState::Succeeded => f.succeeded += 1,
            JobState::Failed => f.failed += 1,
            JobState::Dead => f.dead += 1,
            _ => {}
        }
        let mut crashes = 0u32;
        let mut failures = 0u32;
        let mut lost = 0u32;
        // Attempts a daemon kill cut off, found at the next start: lost,
        // and charged to the crash budget.
        let mut died = 0u32;
        let mut oks = 0u32;
        let mut odd = 0u32;
        for a in &r.attempts {
            match a.outcome {
                ref o if o.is_daemon_died() => {
                    lost += 1;
                    died += 1;
                }
                AttemptOutcome::Crashed { .. } => crashes += 1,
                AttemptOutcome::Error(_)
                | AttemptOutcome::Panic(_)
                | AttemptOutcome::TimedOut(_) => failures += 1,
                AttemptOutcome::Lost => lost += 1,
                AttemptOutcome::Ok => oks += 1,
                AttemptOutcome::Running | AttemptOutcome::Cancelled => odd += 1,
            }
        }
        f.reruns += r.attempts.len().saturating_sub(1);
        f.lost += lost as usize;
        if p.kind != Kind::Poison {
            let mut foreign = 0;
            for a in &r.attempts {
                if !matches!(a.outcome, AttemptOutcome::Crashed { .. })
                    || a.outcome.is_daemon_died()
                {
                    continue;
                }
                if we_killed(a) {
                    f.hits += 1;
                } else {
                    foreign += 1;
                    if misattributed.len() < 3 {
                        misattributed.extend(a.worker_pid);
                    }
                }
            }
            if foreign > 0 {
                f.misattributed += foreign;
                flag(
                    "job charged with a crash of a worker we did not kill (and it does not crash)",
                    r,
                );
            }
            f.normal_attempts += r.attempts.len() - lost as usize;
            if p.kind.fails() {
                f.failing += 1;
            } else {
                f.normal += 1;
            }
        }
        let numbers_ok = r
            .attempts
            .iter()
            .enumerate()
            .all(|(i, a)| a.number as usize == i + 1);
        if !numbers_ok || odd > 0 {
            flag("attempts misnumbered or left running/cancelled", r);
        }
        if crashes + died > cfg.max_crashes || failures > cfg.max_attempts {
            flag(
                "over budget (crashes > max_crashes or failures > max_attempts)",
                r,
            );
        }
        if lost as usize > cfg.daemon_kills {
            flag("more lost attempts than daemon kills", r);
        }
        // A job the daemon died under as often as its crash budget allows
        // is dead too, saying so.
        let killed_by_daemon_deaths = died > 0
            && crashes + died == cfg.max_crashes
            && r.error.as_deref().unwrap_or("").contains("the daemon died");
        let expect = match p.kind {
            Kind::Poison => JobState::Dead,
            _ if killed_by_daemon_deaths => JobState::Dead,
            k if k.fails() => JobState::Failed,
            _ => JobState::Succeeded,
        };
        if r.state != expect {
            flag(
                match (p.kind, r.state) {
                    (Kind::Poison, JobState::Failed) => "poison job failed instead of dead",
                    (Kind::Poison, _) => "poison job not dead",
                    (_, JobState::Dead) => "job dead-lettered that is not poison",
                    (k, _) if k.fails() => "failing job not failed",
                    _ => "job did not succeed",
                },
                r,
            );
            continue;
        }
        match r.state {
            JobState::Succeeded => {
                let last_ok = matches!(
                    r.attempts.last().map(|a| &a.outcome),
                    Some(AttemptOutcome::Ok)
                );
                if oks != 1 || !last_ok {
                    flag("succeeded without exactly one final ok attempt", r);
                }
                let out: serde_json::Value = match &r.output {
                    Some(Payload::Json(s)) => serde_json::from_str(s).unwrap_or_default(),
                    _ => serde_json::Value::Null,
                };
                let good = match p.kind {
                    Kind::Spin => out["iterations"].as_u64().is_some_and(|n| n > 0),
                    Kind::ExecTrue => out["code"] == 0,
                    Kind::ExecExit3 => out["code"] == 3,
                    Kind::Hash => match digest {
                        Some(d) => out["sha256"] == d,
                        None => out["sha256"].as_str().is_some_and(|s| s.len() == 64),
                    },
                    _ => true,
                };
                if !good {
                    flag("succeeded with a wrong output", r);
                }
            }
            JobState::Dead
                if crashes + died != cfg.max_crashes
                    || !r.error.as_deref().unwrap_or("").contains("poison job") =>
            {
                flag("dead without spending exactly its crash budget", r);
            }
            JobState::Failed => {
                let error = r.error.as_deref().unwrap_or("");
                // Its attempt budget spent by task errors; or, as documented,
                // by task errors plus attempts lost to daemon kills.
                let by_design = error.contains("missing-") || error.contains("127.0.0.1:1/");
                let spent = (failures == cfg.max_attempts && by_design)
                    || (lost > 0 && failures + lost >= cfg.max_attempts && error.contains("lost"));
                if !spent {
                    flag("failed without spending exactly its attempt budget", r);
                }
            }
            _ => {}
        }
    }
    let mut kinds: Vec<_> = wrong.into_iter().collect();
    kinds.sort_by_key(|(k, _)| *k);
    for (what, (n, examples)) in kinds {
        problems.push(format!("{n} × {what}; e.g.:\n  {}", examples.join("\n  ")));
    }
    (f, problems, misattributed)
}
