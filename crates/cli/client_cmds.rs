//! Client subcommands: talk to a running daemon over its control socket.
//!
//! `submit`, `status`, `wait`, `result`, `cancel`, `list`, `workers`, `stats`,
//! `ping` and `shutdown`. Every read command takes `--json` for a
//! machine-readable answer on stdout; human output goes to stdout too, and
//! errors are printed as `jobvisor: <message>` on stderr.
//!
//! Exit codes: [`crate::exit`].

use std::collections::{HashMap, HashSet};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use jobvisor_client::{Client, ClientError};
use jobvisor_proto::control::{
    AttemptOutcome, JobRecord, JobSpec, JobState, Payload, Submitted, WorkerRow,
};
use jobvisor_proto::forkserver::signal_name;
use jobvisor_proto::hex;
use jobvisor_proto::json::payload_json;
use serde_json::{json, Value};

use crate::args::{ClientCommand, SubmitArgs};
use crate::batch::read_batch;
use crate::exit::{
    exit_code_for_state, worst_exit_code, CmdResult, Failure, EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE,
};
use crate::output::json::{json_failure, record_json, stats_json};
use crate::output::table::table;
use crate::output::text::{one_line, truncate_chars};
use crate::output::time::{fmt_ms, fmt_unix_ms};
use crate::output::{emit, emit_bytes, emit_json};

/// The task name whose input `submit exec -- CMD ARGS...` builds.
const EXEC_TASK: &str = "exec";
/// Per-request wait while a progress bar is shown.
const WAIT_STEP: Duration = Duration::from_millis(200);
/// Most ids in one `Wait` request.
const WAIT_CHUNK: usize = 1024;
/// Retry interval of `ping --wait`.
const PING_RETRY: Duration = Duration::from_millis(50);
/// Longest error shown in a `list` row.
const LIST_ERROR_CHARS: usize = 60;
/// Longest input/output preview shown by `status`.
const PREVIEW_CHARS: usize = 120;

/// Runs one client command against the daemon at `socket` and returns the
/// process exit code (see the module docs). Errors are printed on stderr.
pub async fn run(cmd: ClientCommand, socket: &Path) -> ExitCode {
    match dispatch(cmd, socket).await {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("jobvisor: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

// ---------------------------------------------------------------------------
// Failures and output helpers
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Dispatch
// ---------------------------------------------------------------------------

async fn dispatch(cmd: ClientCommand, socket: &Path) -> CmdResult {
    match cmd {
        ClientCommand::Submit(args) => submit(*args, socket).await,
        ClientCommand::Status { id, json } => status(id, json, socket).await,
        ClientCommand::Wait { ids, timeout, json } => wait(ids, timeout, json, socket).await,
        ClientCommand::Result { id, json } => result(id, json, socket).await,
        ClientCommand::Cancel { id } => {
            let mut client = connect(socket).await?;
            client.cancel(id).await?;
            emit(&format!("cancelled job {id}\n"))?;
            Ok(EXIT_OK)
        }
        ClientCommand::Retry { id } => {
            let mut client = connect(socket).await?;
            client.retry(id).await?;
            emit(&format!("re-queued job {id}\n"))?;
            Ok(EXIT_OK)
        }
        ClientCommand::List {
            state,
            queue,
            limit,
            json,
        } => list(state, queue, limit, json, socket).await,
        ClientCommand::Workers { json } => workers(json, socket).await,
        ClientCommand::Stats { json } => stats(json, socket).await,
        ClientCommand::Ping { wait, json } => ping(wait, json, socket).await,
        ClientCommand::Events { follow: _, json } => events(json, socket).await,
        ClientCommand::Shutdown { now } => shutdown(!now, socket).await,
    }
}

/// Connects. Failing to get a working connection (nothing listens, or it
/// breaks during the handshake) is "unreachable"; a protocol mismatch is not.
async fn connect(socket: &Path) -> Result<Client, Failure> {
    Client::connect(socket)
        .await
        .map_err(|e| connect_failure(e, socket))
}

pub fn connect_failure(e: ClientError, socket: &Path) -> Failure {
    match e {
        ClientError::Io(io) => Failure::new(
            EXIT_UNREACHABLE,
            format!(
                "cannot talk to the jobvisor daemon at {}: {io}",
                socket.display()
            ),
        ),
        other => Failure::from(other),
    }
}

// ---------------------------------------------------------------------------
// submit
// ---------------------------------------------------------------------------

async fn submit(args: SubmitArgs, socket: &Path) -> CmdResult {
    // Everything local is checked before connecting.
    let (specs, batch) = match &args.batch {
        Some(path) => (read_batch(path)?, true),
        None => (vec![single_spec(&args)?], false),
    };
    let mut client = connect(socket).await?;
    let submitted = client.submit(specs).await?;

    if args.json {
        emit_json(&serde_json::to_value(&submitted).map_err(json_failure)?)?;
    } else {
        let mut text = String::new();
        for s in &submitted {
            text.push_str(&s.id.to_string());
            text.push('\n');
        }
        emit(&text)?;
    }
    report_duplicates(&submitted, &args);

    let ids: Vec<u64> = submitted.iter().map(|s| s.id).collect();
    let show_bar = batch && std::io::stdout().is_terminal();
    if !args.wait && !show_bar {
        return Ok(EXIT_OK);
    }
    let bar = show_bar.then(|| new_bar(unique(&ids).len() as u64));
    let records = wait_all(&mut client, &ids, None, bar.as_ref()).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let records = records?;
    if batch {
        eprintln!("jobvisor: {}", summarize(&records));
    }
    if !args.wait {
        // The bar waited only to show progress; the exit code does not depend
        // on whether stdout is a terminal.
        return Ok(EXIT_OK);
    }
    for r in &records {
        if r.state != JobState::Succeeded {
            eprintln!("jobvisor: {}", describe_unsuccessful(r));
        }
    }
    Ok(worst_exit_code(records.iter().map(|r| r.state)))
}

fn report_duplicates(submitted: &[Submitted], args: &SubmitArgs) {
    for s in submitted.iter().filter(|s| s.duplicate) {
        match (&args.key, args.batch.is_none()) {
            (Some(key), true) => eprintln!(
                "jobvisor: key `{key}` already names job {}; not submitted again",
                s.id
            ),
            _ => eprintln!(
                "jobvisor: job {} already existed with that key; not submitted again",
                s.id
            ),
        }
    }
}

/// The spec of a single `submit` (not `--batch`).
fn single_spec(args: &SubmitArgs) -> Result<JobSpec, Failure> {
    let task = args
        .task
        .clone()
        .ok_or_else(|| Failure::usage("a TASK or --batch FILE is required"))?;
    if args.command.is_empty() && (args.cwd.is_some() || !args.env.is_empty()) {
        return Err(Failure::usage(
            "--cwd and --env are only for `submit exec [OPTIONS] -- CMD ARGS...`",
        ));
    }
    let input = if !args.command.is_empty() {
        if task != EXEC_TASK {
            return Err(Failure::usage(format!(
                "a command after `--` is only for the `{EXEC_TASK}` task, not `{task}`; \
                 use --input JSON"
            )));
        }
        let cwd = match &args.cwd {
            Some(dir) => Some(absolute_dir(dir)?),
            None => None,
        };
        exec_input_json(&args.command, &args.env, cwd.as_deref())
    } else {
        let text = args.input.as_deref().ok_or_else(|| {
            if task == EXEC_TASK {
                Failure::usage("`submit exec` needs a command after `--` (or --input JSON)")
            } else {
                Failure::usage(format!(
                    "--input JSON is required for task `{task}` (use --input null for none)"
                ))
            }
        })?;
        if let Err(e) = serde_json::from_str::<Value>(text) {
            return Err(Failure::usage(format!("--input is not valid JSON: {e}")));
        }
        text.trim().to_owned()
    };
    let mut spec = JobSpec::new(task, Payload::Json(input));
    spec.queue = args.queue.clone();
    spec.priority = args.priority.unwrap_or(0);
    spec.max_attempts = args.max_attempts;
    if let Some(b) = args.backoff_ms {
        spec.backoff_base_ms = Some(b.base_ms);
        spec.backoff_max_ms = b.max_ms;
    }
    spec.timeout_ms = args.timeout.map(duration_ms);
    spec.stall_timeout_ms = args.stall_timeout.map(duration_ms);
    spec.delay_ms = args.delay.map(duration_ms);
    spec.after = args.after.clone();
    spec.input_from = args.input_from.clone();
    spec.key = args.key.clone();
    spec.notify_url = args.notify_url.clone();
    Ok(spec)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `dir` made absolute against the current directory (the worker's directory
/// is the daemon's, not ours), as UTF-8.
fn absolute_dir(dir: &Path) -> Result<String, Failure> {
    let abs = std::path::absolute(dir)
        .map_err(|e| Failure::usage(format!("--cwd {}: {e}", dir.display())))?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| Failure::usage(format!("--cwd {}: not valid UTF-8", p.to_string_lossy())))
}

/// The JSON input of the `exec` task. Every field of `ExecInput` is present:
/// the daemon decodes it strictly into that struct.
fn exec_input_json(argv: &[String], env: &[(String, String)], cwd: Option<&str>) -> String {
    json!({
        "argv": argv,
        "env": env,
        "clear_env": false,
        "cwd": cwd,
        "stdin": null,
        "max_output_bytes": 0,
        "timeout_ms": null,
        "kill_grace_ms": 0,
    })
    .to_string()
}

// ---------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------

fn unique(ids: &[u64]) -> Vec<u64> {
    let mut seen = HashSet::new();
    ids.iter().copied().filter(|id| seen.insert(*id)).collect()
}

fn new_bar(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} finished {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Waits until every job is terminal or `deadline` passes, and returns the
/// latest record of each distinct id, in first-seen order. With a bar, asks in
/// short steps so the bar moves as jobs finish.
async fn wait_all(
    client: &mut Client,
    ids: &[u64],
    deadline: Option<Instant>,
    bar: Option<&ProgressBar>,
) -> Result<Vec<JobRecord>, Failure> {
    let order = unique(ids);
    let mut latest: HashMap<u64, JobRecord> = HashMap::with_capacity(order.len());
    let mut pending = order.clone();
    let mut finished: u64 = 0;
    let mut unsuccessful: u64 = 0;
    loop {
        let step = bar.map(|_| WAIT_STEP);
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let timeout = match (remaining, step) {
            (Some(r), Some(s)) => Some(r.min(s)),
            (r, s) => r.or(s),
        };
        let mut still = Vec::new();
        for chunk in pending.chunks(WAIT_CHUNK) {
            let records = client.wait(chunk.to_vec(), timeout).await?;
            let mut by_id: HashMap<u64, JobRecord> =
                records.into_iter().map(|r| (r.id, r)).collect();
            for id in chunk {
                let r = by_id.remove(id).ok_or_else(|| {
                    Failure::new(
                        EXIT_ERROR,
                        format!("the daemon's answer to wait lacks job {id}"),
                    )
                })?;
                if r.state.is_terminal() {
                    finished += 1;
                    if r.state != JobState::Succeeded {
                        unsuccessful += 1;
                    }
                } else {
                    still.push(*id);
                }
                latest.insert(*id, r);
            }
            if let Some(bar) = bar {
                bar.set_position(finished);
                if unsuccessful > 0 {
                    bar.set_message(format!("({unsuccessful} not succeeded)"));
                }
            }
        }
        pending = still;
        if pending.is_empty() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if timeout.is_none() {
            // Asked without a timeout yet got unfinished jobs: do not spin.
            tokio::time::sleep(PING_RETRY).await;
        }
    }
    Ok(order.iter().filter_map(|id| latest.remove(id)).collect())
}

fn summarize(records: &[JobRecord]) -> String {
    let order = [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            let n = records.iter().filter(|r| r.state == *s).count();
            (n > 0).then(|| format!("{n} {}", s.as_str()))
        })
        .collect();
    let noun = if records.len() == 1 { "job" } else { "jobs" };
    format!("{} {noun}: {}", records.len(), parts.join(", "))
}

fn describe_unsuccessful(r: &JobRecord) -> String {
    let what = match r.state {
        JobState::Queued | JobState::Running | JobState::Retrying => {
            format!("job {} is not finished (state {})", r.id, r.state.as_str())
        }
        s => format!("job {} {}", r.id, s.as_str()),
    };
    match &r.error {
        Some(e) => format!("{what}: {e}"),
        None => what,
    }
}

async fn wait(ids: Vec<u64>, timeout: Option<Duration>, json: bool, socket: &Path) -> CmdResult {
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut client = connect(socket).await?;
    let records = wait_all(&mut client, &ids, deadline, None).await?;
    if json {
        let list = records
            .iter()
            .map(record_json)
            .collect::<Result<Vec<_>, _>>()?;
        emit_json(&Value::Array(list))?;
    } else {
        let mut text = String::new();
        for r in &records {
            text.push_str(&format!("{} {}", r.id, r.state.as_str()));
            if let (false, Some(e)) = (r.state == JobState::Succeeded, &r.error) {
                text.push_str(&format!(": {}", one_line(e)));
            }
            text.push('\n');
        }
        emit(&text)?;
    }
    Ok(worst_exit_code(records.iter().map(|r| r.state)))
}

// ---------------------------------------------------------------------------
// status, result
// ---------------------------------------------------------------------------

async fn status(id: u64, json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let r = client.status(id).await?;
    if json {
        emit_json(&record_json(&r)?)?;
    } else {
        emit(&format_status(&r))?;
    }
    Ok(EXIT_OK)
}

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
        field("error", e);
    }
    field(
        "attempts",
        &format!("{} of at most {}", r.attempts.len(), r.max_attempts),
    );
    for a in &r.attempts {
        let pid = a
            .worker_pid
            .map_or_else(|| "pid ?".to_owned(), |p| format!("pid {p}"));
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

fn describe_outcome(o: &AttemptOutcome) -> String {
    match o {
        AttemptOutcome::Running => "running".to_owned(),
        AttemptOutcome::Ok => "ok".to_owned(),
        AttemptOutcome::Error(e) => format!("error: {}", one_line(e)),
        AttemptOutcome::Panic(e) => format!("panicked: {}", one_line(e)),
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
        AttemptOutcome::Lost => "lost (the daemon stopped while it ran)".to_owned(),
        AttemptOutcome::Cancelled => "cancelled".to_owned(),
    }
}

fn preview(p: &Payload) -> String {
    match p {
        Payload::Json(t) => truncate_chars(&one_line(t), PREVIEW_CHARS),
        Payload::Native(b) => format!("<{} bytes, native encoding>", b.len()),
    }
}

async fn result(id: u64, json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let r = client.status(id).await?;
    if json {
        emit_json(&json!({
            "id": r.id,
            "state": r.state.as_str(),
            "output": r.output.as_ref().map_or(Value::Null, payload_json),
            "error": r.error,
        }))?;
    }
    match r.state {
        JobState::Succeeded => {
            if !json {
                match &r.output {
                    Some(Payload::Json(t)) => {
                        let parsed = serde_json::from_str::<Value>(t).ok();
                        if let Some((out, err, status)) = parsed.as_ref().and_then(exec_streams) {
                            // An `exec` job: its captured streams, as the command wrote them.
                            emit_bytes(&out)?;
                            let _ = std::io::stderr().write_all(&err);
                            eprintln!("jobvisor: job {id}: {status} (--json for the whole record)");
                            return Ok(EXIT_OK);
                        }
                        let text = match parsed {
                            Some(v) => {
                                serde_json::to_string_pretty(&v).unwrap_or_else(|_| t.clone())
                            }
                            None => t.clone(),
                        };
                        emit(&format!("{text}\n"))?;
                    }
                    Some(Payload::Native(b)) => {
                        eprintln!(
                            "jobvisor: job {id}'s output is in the native encoding ({} bytes); printing it as hex",
                            b.len()
                        );
                        emit(&format!("{}\n", hex(b)))?;
                    }
                    None => eprintln!("jobvisor: job {id} succeeded without an output"),
                }
            }
            Ok(EXIT_OK)
        }
        s if s.is_terminal() => {
            eprintln!("jobvisor: {}", describe_unsuccessful(&r));
            Ok(exit_code_for_state(s))
        }
        s => {
            if !json {
                eprintln!("jobvisor: job {id} is not finished (state {})", s.as_str());
            }
            Ok(EXIT_ERROR)
        }
    }
}

/// The captured streams and a status line of an `exec` output
/// (`{"stdout": [bytes], "stderr": [bytes], "code": .., "signal": .., ...}`).
fn exec_streams(v: &Value) -> Option<(Vec<u8>, Vec<u8>, String)> {
    let obj = v.as_object()?;
    let bytes = |k: &str| -> Option<Vec<u8>> {
        obj.get(k)?
            .as_array()?
            .iter()
            .map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect()
    };
    let (out, err) = (bytes("stdout")?, bytes("stderr")?);
    let status = match (
        obj.get("code").and_then(Value::as_i64),
        obj.get("signal").and_then(Value::as_i64),
    ) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "no exit status".to_string(),
    };
    let cut = ["stdout_truncated", "stderr_truncated"]
        .iter()
        .filter(|k| obj.get(**k).and_then(Value::as_bool) == Some(true))
        .count();
    let status = if cut > 0 {
        format!("{status}, output truncated")
    } else {
        status
    };
    Some((out, err, status))
}

// ---------------------------------------------------------------------------
// list, workers, stats
// ---------------------------------------------------------------------------

async fn list(
    state: Option<JobState>,
    queue: Option<String>,
    limit: u32,
    json: bool,
    socket: &Path,
) -> CmdResult {
    let mut client = connect(socket).await?;
    let records = client.list(state, queue, limit).await?;
    if json {
        let list = records
            .iter()
            .map(record_json)
            .collect::<Result<Vec<_>, _>>()?;
        emit_json(&Value::Array(list))?;
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.state.as_str().to_owned(),
                r.task.clone(),
                r.queue.clone(),
                format!("{}/{}", r.attempts.len(), r.max_attempts),
                r.error
                    .as_deref()
                    .map(|e| truncate_chars(&one_line(e), LIST_ERROR_CHARS))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    emit(&table(
        &["ID", "STATE", "TASK", "QUEUE", "ATTEMPTS", "ERROR"],
        &rows,
    ))?;
    Ok(EXIT_OK)
}

async fn workers(json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let rows: Vec<WorkerRow> = client.workers().await?;
    if json {
        emit_json(&serde_json::to_value(&rows).map_err(json_failure)?)?;
        return Ok(EXIT_OK);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|w| {
            vec![
                w.id.to_string(),
                w.pid.to_string(),
                w.state.as_str().to_owned(),
                w.in_flight.to_string(),
                w.calls_done.to_string(),
                w.running_job
                    .map_or_else(|| "-".to_string(), |j| j.to_string()),
            ]
        })
        .collect();
    emit(&table(
        &["ID", "PID", "STATE", "IN_FLIGHT", "DONE", "RUNNING_JOB"],
        &cells,
    ))?;
    Ok(EXIT_OK)
}

async fn stats(json: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    let s = client.stats().await?;
    if json {
        emit_json(&stats_json(&s)?)?;
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

// ---------------------------------------------------------------------------
// ping, shutdown
// ---------------------------------------------------------------------------

async fn ping(wait: Option<Duration>, json: bool, socket: &Path) -> CmdResult {
    let deadline = wait.map(|w| Instant::now() + w);
    let mut client = loop {
        match Client::connect(socket).await {
            Ok(c) => break c,
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Io(_))) => {
                if deadline.is_some_and(|d| Instant::now() + PING_RETRY < d) {
                    tokio::time::sleep(PING_RETRY).await;
                    continue;
                }
                return Err(connect_failure(e, socket));
            }
            Err(e) => return Err(Failure::from(e)),
        }
    };
    let pid = client.ping().await?;
    if json {
        emit_json(&json!({ "pid": pid }))?;
    } else {
        emit(&format!("pong from pid {pid}\n"))?;
    }
    Ok(EXIT_OK)
}

async fn shutdown(graceful: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    match client.shutdown(graceful).await {
        Ok(()) => {}
        // The daemon may close the connection as it goes away.
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) => {}
        Err(e) => return Err(e.into()),
    }
    let how = if graceful {
        "shutdown requested; running jobs will finish first"
    } else {
        "immediate shutdown requested"
    };
    emit(&format!("{how}\n"))?;
    Ok(EXIT_OK)
}

// ---------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------

async fn events(json: bool, socket: &Path) -> CmdResult {
    use jobvisor_client::EventKind;
    let client = connect(socket).await?;
    let mut stream = client.events().await?;
    while let Some(ev) = stream.next().await? {
        let line = if json {
            let mut v = serde_json::to_value(&ev)
                .map_err(|e| Failure::new(EXIT_ERROR, format!("encoding JSON: {e}")))?;
            // Lowercase states, as everywhere else in --json output.
            if let Some(state) = v.pointer_mut("/kind/Job/state") {
                if let Some(s) = state.as_str().map(str::to_lowercase) {
                    *state = Value::String(s);
                }
            }
            format!("{v}\n")
        } else {
            let at = fmt_unix_ms(ev.at_ms);
            match ev.kind {
                EventKind::Job {
                    id,
                    task,
                    state,
                    attempt,
                    worker_pid,
                    error,
                } => {
                    let mut l = format!("{at} job {id} {task} {}", state.as_str());
                    if let Some(a) = attempt {
                        l.push_str(&format!(" attempt {a}"));
                    }
                    if let Some(p) = worker_pid {
                        l.push_str(&format!(" pid {p}"));
                    }
                    if let Some(e) = error {
                        l.push_str(&format!(": {e}"));
                    }
                    l + "\n"
                }
                EventKind::WorkerStarted { pid } => format!("{at} worker {pid} started\n"),
                EventKind::WorkerExited { pid, status } => {
                    format!("{at} worker {pid} exited: {status}\n")
                }
                EventKind::Lagged { missed } => {
                    format!("{at} (missed {missed} events: this reader was too slow)\n")
                }
            }
        };
        emit(&line)?;
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::testing::{parse, submit_args};
    use crate::exit::EXIT_USAGE;

    #[test]
    fn exec_input_decodes_into_exec_input() {
        let argv = vec!["sh".to_owned(), "-c".to_owned(), "echo \"hi\"".to_owned()];
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x=y".to_owned()),
        ];
        let text = exec_input_json(&argv, &env, Some("/tmp"));
        let input: jobvisor_tasks::ExecInput = serde_json::from_str(&text).unwrap();
        let mut want = jobvisor_tasks::ExecInput::new(argv.clone());
        want.env = env;
        want.cwd = Some("/tmp".to_owned());
        assert_eq!(input, want);

        let text = exec_input_json(&argv, &[], None);
        let input: jobvisor_tasks::ExecInput = serde_json::from_str(&text).unwrap();
        assert_eq!(input, jobvisor_tasks::ExecInput::new(argv));
    }

    #[test]
    fn submit_exec_builds_the_exec_spec() {
        let args = submit_args(&[
            "submit",
            "exec",
            "--env",
            "A=1",
            "--env",
            "B=2=3",
            "--cwd",
            "/srv",
            "--queue",
            "q",
            "--priority",
            "-2",
            "--max-attempts",
            "3",
            "--backoff-ms",
            "100:2000",
            "--timeout",
            "30s",
            "--delay",
            "1m",
            "--after",
            "7",
            "--after",
            "8,9",
            "--key",
            "k",
            "--",
            "ls",
            "-l",
            "--wait",
        ]);
        assert!(!args.wait, "flags after `--` belong to the command");
        let spec = single_spec(&args).unwrap();
        assert_eq!(spec.task, "exec");
        let Payload::Json(text) = &spec.input else {
            panic!("json input")
        };
        let input: jobvisor_tasks::ExecInput = serde_json::from_str(text).unwrap();
        assert_eq!(input.argv, ["ls", "-l", "--wait"]);
        assert_eq!(
            input.env,
            [
                ("A".to_owned(), "1".to_owned()),
                ("B".to_owned(), "2=3".to_owned())
            ]
        );
        assert_eq!(input.cwd.as_deref(), Some("/srv"));
        assert_eq!(spec.queue.as_deref(), Some("q"));
        assert_eq!(spec.priority, -2);
        assert_eq!(spec.max_attempts, Some(3));
        assert_eq!(spec.backoff_base_ms, Some(100));
        assert_eq!(spec.backoff_max_ms, Some(2000));
        assert_eq!(spec.timeout_ms, Some(30_000));
        assert_eq!(spec.delay_ms, Some(60_000));
        assert_eq!(spec.after, [7, 8, 9]);
        assert_eq!(spec.key.as_deref(), Some("k"));
    }

    #[test]
    fn submit_relative_cwd_is_made_absolute() {
        let args = submit_args(&["submit", "exec", "--cwd", "sub/dir", "--", "true"]);
        let spec = single_spec(&args).unwrap();
        let Payload::Json(text) = &spec.input else {
            panic!("json input")
        };
        let input: jobvisor_tasks::ExecInput = serde_json::from_str(text).unwrap();
        let cwd = input.cwd.unwrap();
        assert!(Path::new(&cwd).is_absolute(), "{cwd}");
        assert!(cwd.ends_with("sub/dir"), "{cwd}");
    }

    #[test]
    fn submit_task_with_input() {
        let args = submit_args(&["submit", "sleep", "--input", r#" {"ms": 10} "#, "--wait"]);
        assert!(args.wait);
        let spec = single_spec(&args).unwrap();
        assert_eq!(
            spec,
            JobSpec::new("sleep", Payload::Json(r#"{"ms": 10}"#.to_owned()))
        );
    }

    #[test]
    fn submit_usage_errors() {
        // clap's own.
        assert!(parse(&["submit"]).is_err(), "TASK or --batch required");
        assert!(parse(&["submit", "exec", "--input", "{}", "--", "ls"]).is_err());
        assert!(parse(&["submit", "--batch", "f", "noop"]).is_err());
        assert!(parse(&["submit", "--batch", "f", "--queue", "q"]).is_err());
        assert!(parse(&["submit", "sleep", "--input", "1", "--timeout", "2x"]).is_err());
        assert!(parse(&["submit", "sleep", "--input", "1", "--env", "=x", "--", "a"]).is_err());
        assert!(parse(&["submit", "sleep", "--input", "1", "--backoff-ms", "5:1"]).is_err());
        // Ours.
        let e = single_spec(&submit_args(&["submit", "sleep"])).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(
            e.message.contains("--input JSON is required"),
            "{}",
            e.message
        );
        let e = single_spec(&submit_args(&["submit", "exec"])).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(
            e.message.contains("needs a command after `--`"),
            "{}",
            e.message
        );
        let e = single_spec(&submit_args(&["submit", "sleep", "--", "ls"])).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(
            e.message.contains("only for the `exec` task"),
            "{}",
            e.message
        );
        let e = single_spec(&submit_args(&[
            "submit", "exec", "--cwd", "/", "--input", "{}",
        ]))
        .unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(e.message.contains("--cwd and --env"), "{}", e.message);
        let e = single_spec(&submit_args(&[
            "submit", "sleep", "--env", "A=1", "--input", "1",
        ]))
        .unwrap_err();
        assert!(e.message.contains("--cwd and --env"), "{}", e.message);
        let e = single_spec(&submit_args(&["submit", "sleep", "--input", "{nope"])).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        // Batch parses.
        let args = submit_args(&["submit", "--batch", "-", "--wait", "--json"]);
        assert_eq!(args.batch.as_deref(), Some(Path::new("-")));
    }

    #[tokio::test]
    async fn unreachable_socket_exits_5() {
        let dir = std::env::temp_dir().join(format!("jobvisor-cli-test-{}", std::process::id()));
        let sock = dir.join("nope.sock");
        let code = dispatch(
            ClientCommand::Ping {
                wait: None,
                json: false,
            },
            &sock,
        )
        .await;
        assert_eq!(code.unwrap_err().code, EXIT_UNREACHABLE);
        let started = Instant::now();
        let code = dispatch(
            ClientCommand::Ping {
                wait: Some(Duration::from_millis(200)),
                json: false,
            },
            &sock,
        )
        .await;
        assert_eq!(code.unwrap_err().code, EXIT_UNREACHABLE);
        assert!(started.elapsed() >= Duration::from_millis(100));
        let code = dispatch(ClientCommand::Status { id: 1, json: false }, &sock).await;
        assert_eq!(code.unwrap_err().code, EXIT_UNREACHABLE);
    }

    /// A stand-in daemon on a real Unix socket. Task names decide the fate:
    /// `ok` succeeds, `fail` fails, `cancel` is cancelled, `never` stays
    /// running, `nope` is an unknown task. A `Wait` with a timeout finishes
    /// at most one job; one without finishes all it can.
    mod mock {
        use std::collections::BTreeMap;
        use std::path::PathBuf;
        use std::sync::{Arc, Mutex};

        use jobvisor_proto::control::{
            ControlError, ErrorKind, JobRecord, JobState, Payload, Request, Response, Stats,
            Submitted, WorkerRow,
        };
        use jobvisor_proto::{encode_frame, FrameBuf, Hello, Role, HELLO_BYTES};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{UnixListener, UnixStream};

        #[derive(Debug, Default)]
        pub struct State {
            pub jobs: BTreeMap<u64, JobRecord>,
            pub requests: Vec<Request>,
        }

        #[derive(Debug)]
        pub struct Mock {
            pub dir: PathBuf,
            pub sock: PathBuf,
            pub state: Arc<Mutex<State>>,
        }

        impl Drop for Mock {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }

        pub fn socket_path(name: &str) -> (PathBuf, PathBuf) {
            let dir = std::env::temp_dir()
                .join(format!("jobvisor-cli-mock-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let sock = dir.join("control.sock");
            (dir, sock)
        }

        pub fn start(name: &str) -> Mock {
            let (dir, sock) = socket_path(name);
            let state = Arc::new(Mutex::new(State::default()));
            serve(UnixListener::bind(&sock).unwrap(), state.clone());
            Mock { dir, sock, state }
        }

        pub fn serve(listener: UnixListener, state: Arc<Mutex<State>>) {
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(conn(stream, state.clone()));
                }
            });
        }

        async fn conn(mut stream: UnixStream, state: Arc<Mutex<State>>) {
            let ours = Hello::ours(Role::Supervisor);
            stream.write_all(&ours.encode()).await.unwrap();
            let mut hello = [0u8; HELLO_BYTES];
            stream.read_exact(&mut hello).await.unwrap();
            let mut rbuf = FrameBuf::new(1 << 20);
            loop {
                while let Some(req) = rbuf.decode_next::<Request>().unwrap() {
                    let resp = handle(&mut state.lock().unwrap(), req);
                    let mut out = Vec::new();
                    encode_frame(&mut out, &resp, 1 << 24).unwrap();
                    stream.write_all(&out).await.unwrap();
                }
                match stream.read(rbuf.spare()).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => rbuf.filled(n),
                }
            }
        }

        fn record(id: u64, task: &str, input: Payload) -> JobRecord {
            JobRecord {
                id,
                task: task.to_owned(),
                queue: "default".to_owned(),
                priority: 0,
                state: JobState::Queued,
                max_attempts: 3,
                timeout_ms: None,
                stall_timeout_ms: None,
                input_from: Vec::new(),
                backoff_base_ms: 1000,
                backoff_max_ms: 60000,
                after: Vec::new(),
                key: None,
                created_ms: 1_700_000_000_000,
                run_at_ms: 1_700_000_000_000,
                finished_ms: None,
                input: Some(input),
                output: None,
                error: None,
                attempts: Vec::new(),
                notify_url: None,
            }
        }

        fn finish(r: &mut JobRecord) {
            match r.task.as_str() {
                "ok" => {
                    r.state = JobState::Succeeded;
                    r.output = Some(Payload::Json(r#"{"x":1}"#.to_owned()));
                }
                "fail" => {
                    r.state = JobState::Failed;
                    r.error = Some("boom".to_owned());
                }
                "cancel" => r.state = JobState::Cancelled,
                _ => {
                    r.state = JobState::Running;
                    return;
                }
            }
            r.finished_ms = Some(r.created_ms + 1500);
        }

        fn err(kind: ErrorKind, message: &str) -> Response {
            Response::Error(ControlError {
                kind,
                message: message.to_owned(),
            })
        }

        fn handle(st: &mut State, req: Request) -> Response {
            st.requests.push(req.clone());
            match req {
                Request::Submit(specs) => {
                    if let Some(s) = specs.iter().find(|s| s.task == "nope") {
                        return err(ErrorKind::UnknownTask, &format!("no task `{}`", s.task));
                    }
                    let mut out = Vec::new();
                    for s in specs {
                        if let Some(k) = &s.key {
                            if let Some(j) = st.jobs.values().find(|j| j.key.as_ref() == Some(k)) {
                                out.push(Submitted {
                                    id: j.id,
                                    duplicate: true,
                                });
                                continue;
                            }
                        }
                        let id = st.jobs.len() as u64 + 1;
                        let mut r = record(id, &s.task, s.input);
                        r.key = s.key;
                        st.jobs.insert(id, r);
                        out.push(Submitted {
                            id,
                            duplicate: false,
                        });
                    }
                    Response::Submitted(out)
                }
                Request::Status { id } => match st.jobs.get(&id) {
                    Some(j) => Response::Job(Box::new(j.clone())),
                    None => err(ErrorKind::NotFound, &format!("no job {id}")),
                },
                Request::Wait { ids, timeout_ms } => {
                    if let Some(id) = ids.iter().find(|id| !st.jobs.contains_key(id)) {
                        return err(ErrorKind::NotFound, &format!("no job {id}"));
                    }
                    let mut budget = if timeout_ms.is_some() { 1 } else { usize::MAX };
                    for id in &ids {
                        let j = st.jobs.get_mut(id).unwrap();
                        if budget > 0 && !j.state.is_terminal() && j.task != "never" {
                            finish(j);
                            budget -= 1;
                        } else if j.task == "never" {
                            j.state = JobState::Running;
                        }
                    }
                    Response::Jobs(ids.iter().map(|id| st.jobs[id].clone()).collect())
                }
                Request::Retry { id } => match st.jobs.get_mut(&id) {
                    Some(j) => {
                        j.state = JobState::Retrying;
                        Response::Ok
                    }
                    None => err(ErrorKind::NotFound, &format!("no job {id}")),
                },
                Request::Cancel { id } => match st.jobs.get_mut(&id) {
                    Some(j) => {
                        j.state = JobState::Cancelled;
                        Response::Ok
                    }
                    None => err(ErrorKind::NotFound, &format!("no job {id}")),
                },
                Request::List { .. } => Response::Jobs(st.jobs.values().rev().cloned().collect()),
                Request::Workers => Response::Workers(vec![WorkerRow {
                    id: 1,
                    pid: 4242,
                    state: jobvisor_proto::control::WorkerState::Ready,
                    in_flight: 0,
                    calls_done: 9,
                    running_job: None,
                }]),
                Request::Stats => Response::Stats(Stats {
                    pid: 4242,
                    uptime_s: 3723,
                    workers: 1,
                    jobs: vec![("queued".to_owned(), 1)],
                    submitted: 1,
                    attempts_finished: 0,
                    worker_restarts: 0,
                    recovered: 0,
                    degraded: false,
                    restart_delay_ms: 0,
                    tasks: Vec::new(),
                    notify_delivered: 0,
                    notify_failed: 0,
                    notify_dropped: 0,
                }),
                Request::Events => err(ErrorKind::BadRequest, "not in this mock"),
                Request::Ping => Response::Pong {
                    pid: 4242,
                    version: "test".to_owned(),
                },
                Request::Shutdown { .. } => Response::Ok,
            }
        }
    }

    fn submit_cmd(args: &[&str]) -> ClientCommand {
        ClientCommand::Submit(Box::new(submit_args(args)))
    }

    async fn code(cmd: ClientCommand, sock: &Path) -> u8 {
        match dispatch(cmd, sock).await {
            Ok(c) => c,
            Err(f) => f.code,
        }
    }

    #[tokio::test]
    async fn against_a_mock_daemon() {
        let m = mock::start("flows");
        let sock = m.sock.as_path();

        // submit without --wait: 0, job left queued.
        assert_eq!(
            code(submit_cmd(&["submit", "ok", "--input", "{}"]), sock).await,
            0
        );
        // submit --wait: the job's code.
        assert_eq!(
            code(
                submit_cmd(&["submit", "ok", "--input", "1", "--wait"]),
                sock
            )
            .await,
            0
        );
        assert_eq!(
            code(
                submit_cmd(&["submit", "fail", "--input", "1", "--wait"]),
                sock
            )
            .await,
            3
        );
        assert_eq!(
            code(
                submit_cmd(&["submit", "cancel", "--input", "1", "--wait"]),
                sock
            )
            .await,
            6
        );
        // Refused by the daemon.
        assert_eq!(
            code(submit_cmd(&["submit", "nope", "--input", "1"]), sock).await,
            7
        );
        // Usage errors never reach the daemon.
        let before = m.state.lock().unwrap().requests.len();
        assert_eq!(
            code(submit_cmd(&["submit", "ok", "--input", "{bad"]), sock).await,
            2
        );
        assert_eq!(m.state.lock().unwrap().requests.len(), before);
        // Idempotency key: same id back.
        let k = ["submit", "ok", "--input", "1", "--key", "K", "--json"];
        assert_eq!(code(submit_cmd(&k), sock).await, 0);
        assert_eq!(code(submit_cmd(&k), sock).await, 0);
        {
            let st = m.state.lock().unwrap();
            let subs: Vec<_> = st
                .requests
                .iter()
                .filter_map(|r| match r {
                    jobvisor_proto::control::Request::Submit(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            let last = subs.last().unwrap();
            assert_eq!(last[0].key.as_deref(), Some("K"));
            assert_eq!(st.jobs.values().filter(|j| j.key.is_some()).count(), 1);
        }

        // exec: the daemon gets the full ExecInput JSON.
        assert_eq!(
            code(submit_cmd(&["submit", "exec", "--", "echo", "hi"]), sock).await,
            0
        );
        {
            let st = m.state.lock().unwrap();
            let j = st.jobs.values().last().unwrap();
            let Some(Payload::Json(t)) = &j.input else {
                panic!("json input")
            };
            let input: jobvisor_tasks::ExecInput = serde_json::from_str(t).unwrap();
            assert_eq!(input.argv, ["echo", "hi"]);
        }

        // status / result / cancel / not found.
        assert_eq!(
            code(ClientCommand::Status { id: 2, json: false }, sock).await,
            0
        );
        assert_eq!(
            code(ClientCommand::Status { id: 2, json: true }, sock).await,
            0
        );
        assert_eq!(
            code(
                ClientCommand::Status {
                    id: 999,
                    json: false
                },
                sock
            )
            .await,
            4
        );
        assert_eq!(
            code(ClientCommand::Result { id: 2, json: false }, sock).await,
            0
        );
        assert_eq!(
            code(ClientCommand::Result { id: 3, json: false }, sock).await,
            3
        );
        assert_eq!(
            code(ClientCommand::Result { id: 4, json: true }, sock).await,
            6
        );
        assert_eq!(
            code(ClientCommand::Result { id: 1, json: false }, sock).await,
            1,
            "queued"
        );
        assert_eq!(
            code(
                ClientCommand::Result {
                    id: 999,
                    json: false
                },
                sock
            )
            .await,
            4
        );
        assert_eq!(code(ClientCommand::Cancel { id: 1 }, sock).await, 0);
        assert_eq!(code(ClientCommand::Cancel { id: 999 }, sock).await, 4);

        // wait: worst state; unknown id is not found.
        let w = |ids: Vec<u64>| ClientCommand::Wait {
            ids,
            timeout: None,
            json: false,
        };
        assert_eq!(code(w(vec![2]), sock).await, 0);
        assert_eq!(code(w(vec![2, 1]), sock).await, 6);
        assert_eq!(code(w(vec![2, 1, 3]), sock).await, 3);
        assert_eq!(code(w(vec![2, 999]), sock).await, 4);

        // Read commands, human and JSON.
        for json in [false, true] {
            let list = ClientCommand::List {
                state: None,
                queue: None,
                limit: 50,
                json,
            };
            assert_eq!(code(list, sock).await, 0);
            assert_eq!(code(ClientCommand::Workers { json }, sock).await, 0);
            assert_eq!(code(ClientCommand::Stats { json }, sock).await, 0);
            assert_eq!(
                code(ClientCommand::Ping { wait: None, json }, sock).await,
                0
            );
        }
        assert_eq!(code(ClientCommand::Shutdown { now: false }, sock).await, 0);
    }

    #[tokio::test]
    async fn wait_with_a_deadline_and_a_never_ending_job() {
        let m = mock::start("deadline");
        let sock = m.sock.as_path();
        assert_eq!(
            code(submit_cmd(&["submit", "never", "--input", "1"]), sock).await,
            0
        );
        assert_eq!(
            code(submit_cmd(&["submit", "ok", "--input", "1"]), sock).await,
            0
        );
        let started = Instant::now();
        let cmd = ClientCommand::Wait {
            ids: vec![1, 2],
            timeout: Some(Duration::from_millis(300)),
            json: true,
        };
        assert_eq!(code(cmd, sock).await, 1, "unfinished at the deadline");
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn wait_all_in_chunks_moves_the_bar() {
        let m = mock::start("chunks");
        let n = WAIT_CHUNK * 2 + 5;
        let specs: Vec<JobSpec> = (0..n)
            .map(|_| JobSpec::new("ok", Payload::Json("1".to_owned())))
            .collect();
        let mut client = Client::connect(&m.sock).await.unwrap();
        let ids: Vec<u64> = client
            .submit(specs)
            .await
            .unwrap()
            .iter()
            .map(|s| s.id)
            .collect();
        // The mock finishes one job per timed wait: shrink the work by
        // finishing most jobs directly, leaving a few per chunk for the loop.
        {
            let mut st = m.state.lock().unwrap();
            for (i, j) in st.jobs.values_mut().enumerate() {
                if i % WAIT_CHUNK >= 3 {
                    j.state = JobState::Succeeded;
                }
            }
        }
        let bar = ProgressBar::hidden();
        bar.set_length(n as u64);
        let mut with_dup = ids.clone();
        with_dup.push(ids[0]);
        let records = wait_all(&mut client, &with_dup, None, Some(&bar))
            .await
            .unwrap();
        assert_eq!(records.len(), n, "one record per distinct id");
        assert!(records.iter().all(|r| r.state == JobState::Succeeded));
        assert_eq!(records.iter().map(|r| r.id).collect::<Vec<_>>(), ids);
        assert_eq!(bar.position(), n as u64);
        let waits = m
            .state
            .lock()
            .unwrap()
            .requests
            .iter()
            .filter_map(|r| match r {
                jobvisor_proto::control::Request::Wait { ids, timeout_ms } => {
                    Some((ids.len(), *timeout_ms))
                }
                _ => None,
            })
            .collect::<Vec<_>>();
        assert!(waits
            .iter()
            .all(|(len, t)| *len <= WAIT_CHUNK && *t == Some(200)));
        assert!(waits.len() > 3, "{waits:?}");
    }

    #[tokio::test]
    async fn batch_submit_is_one_request() {
        let m = mock::start("batch");
        let file = m.dir.join("jobs.jsonl");
        std::fs::write(
            &file,
            "{\"task\":\"ok\",\"input\":{\"a\":1}}\n\n{\"task\":\"fail\",\"input\":null,\"priority\":5}\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        // --wait: exit code from the worst job (stdout is not a terminal under test).
        assert_eq!(
            code(submit_cmd(&["submit", "--batch", f, "--wait"]), &m.sock).await,
            3
        );
        {
            let st = m.state.lock().unwrap();
            let submits: Vec<_> = st
                .requests
                .iter()
                .filter_map(|r| match r {
                    jobvisor_proto::control::Request::Submit(s) => Some(s.clone()),
                    _ => None,
                })
                .collect();
            assert_eq!(submits.len(), 1);
            assert_eq!(submits[0].len(), 2);
            assert_eq!(submits[0][1].priority, 5);
        }
        // A bad line: usage error naming the line, nothing sent.
        std::fs::write(&file, "{\"task\":\"ok\",\"input\":1}\n{\"task\":\"ok\"}\n").unwrap();
        let err = dispatch(submit_cmd(&["submit", "--batch", f]), &m.sock)
            .await
            .unwrap_err();
        assert_eq!(err.code, EXIT_USAGE);
        assert!(
            err.message.contains("line 2: missing field `input`"),
            "{}",
            err.message
        );
        let missing = m.dir.join("missing.jsonl");
        let err = dispatch(
            submit_cmd(&["submit", "--batch", missing.to_str().unwrap()]),
            &m.sock,
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, EXIT_USAGE);
    }

    #[tokio::test]
    async fn ping_wait_waits_for_the_socket() {
        let (dir, sock) = mock::socket_path("ping");
        let bind_at = sock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let listener = tokio::net::UnixListener::bind(&bind_at).unwrap();
            mock::serve(listener, Default::default());
        });
        let started = Instant::now();
        let cmd = ClientCommand::Ping {
            wait: Some(Duration::from_secs(5)),
            json: false,
        };
        assert_eq!(code(cmd, &sock).await, 0);
        assert!(started.elapsed() >= Duration::from_millis(250));
        let _ = std::fs::remove_dir_all(dir);
    }
}
