//! `stats`: the daemon's figures, and which kind of task each task is.

use std::path::Path;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::time::fmt_ms;
use crate::output::{emit, emit_json};

/// Prints the daemon's figures and the per-task table.
pub async fn stats(json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let s = client.stats().await?;
    if json {
        emit_json(&jobvisor_proto::json::Stats::from(&s))?;
        return Ok(EXIT_OK);
    }
    let jobs = if s.jobs.is_empty() {
        "none".to_owned()
    } else {
        s.jobs
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "pid:               {}\n\
         uptime:            {}\n\
         workers:           {}\n\
         jobs:              {jobs}\n\
         submitted:         {}\n\
         attempts finished: {}\n\
         worker restarts:   {}\n\
         recovered:         {}\n\
         notifications:     {} delivered, {} failed, {} dropped (queue full)\n\
         health:            {}\n",
        s.pid,
        fmt_ms(s.uptime_s.saturating_mul(1000)),
        s.workers,
        s.submitted,
        s.attempts_finished,
        s.worker_restarts,
        s.recovered,
        s.notify_delivered,
        s.notify_failed,
        s.notify_dropped,
        if s.degraded {
            format!(
                "degraded: workers die too fast; restarts delayed by {}",
                fmt_ms(s.restart_delay_ms)
            )
        } else {
            "ok".to_string()
        },
    );
    let mut text = text;
    if !s.tasks.is_empty() {
        text.push_str(
            "\nwhich kind is it? (CPU tasks: CPU time of the worker thread against wall time; \
             I/O tasks: time holding the event loop, and its longest single hold)\n",
        );
        text.push_str(&format!(
            "{:<12} {:<4} {:>9} {:>10} {:>10} {:>5} {:>9}  advice\n",
            "TASK", "KIND", "ATTEMPTS", "CPU", "WALL", "CPU%", "MAX-HOLD"
        ));
        for t in &s.tasks {
            let pct = t.cpu_ms.saturating_mul(100) / t.wall_ms.max(1);
            let hold = if t.kind == "io" {
                fmt_ms(t.max_poll_ms)
            } else {
                "-".to_string()
            };
            text.push_str(&format!(
                "{:<12} {:<4} {:>9} {:>10} {:>10} {:>4}% {:>9}  {}\n",
                t.task,
                t.kind,
                t.attempts,
                fmt_ms(t.cpu_ms),
                fmt_ms(t.wall_ms),
                pct,
                hold,
                t.advice.as_deref().unwrap_or("-")
            ));
        }
    }
    emit(&text)?;
    Ok(EXIT_OK)
}
