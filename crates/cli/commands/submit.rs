//! `submit`: one job from the flags (`TASK --input JSON`, `exec -- CMD
//! ARGS...`) or many from `--batch FILE`, acknowledged once durable; with
//! `--wait` (or a batch on a terminal) it waits for them to finish.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use jobvisor_proto::control::{JobSpec, JobState, Payload, Submitted};
use serde_json::{json, Value};

use super::connect;
use super::wait::{describe_unsuccessful, new_bar, summarize, unique, wait_all};
use crate::args::SubmitArgs;
use crate::batch::read_batch;
use crate::exit::{worst_exit_code, CmdResult, Failure, EXIT_OK, EXIT_USAGE};
use crate::output::{emit, emit_json};

/// The task name whose input `submit exec -- CMD ARGS...` builds.
const EXEC_TASK: &str = "exec";

/// Inputs tried, in order, to tell what a task takes, each with how to say
/// it: the first its real input type accepts wins.
const INPUT_PROBES: &[(&str, &str)] = &[
    ("null", "it takes none: use --input null"),
    ("1", "its input is a number, e.g. --input 1"),
    ("{}", "its input is a JSON object, e.g. --input '{}'"),
    ("\"text\"", "its input is a string, e.g. --input '\"text\"'"),
    ("[]", "its input is a list, e.g. --input '[]'"),
];

/// What a missing `--input` hint says for `task`, from the input type of
/// the built-in task of that name (this binary's registry).
fn builtin_input_hint(task: &str) -> String {
    let registry = jobvisor_tasks::builtin();
    if !registry.contains(task) {
        return "give the task's input as JSON text".into();
    }
    input_hint(|json| {
        registry
            .json_to_native(task, json)
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
}

/// The hint from probing a task's input decoder (`fits`) with
/// [`INPUT_PROBES`]; for an object with required fields, the decoder names
/// the first one missing. (The hint used to be "use --input null for none"
/// for every task, wrong for `noop`, whose input is a number.)
pub fn input_hint(fits: impl Fn(&str) -> Result<(), String>) -> String {
    if let Some((_, say)) = INPUT_PROBES.iter().find(|(json, _)| fits(json).is_ok()) {
        return (*say).to_owned();
    }
    let missing = fits("{}").err().and_then(|e| {
        let rest = e.split_once("missing field `")?.1;
        Some(rest.split_once('`')?.0.to_owned())
    });
    match missing {
        Some(field) => format!(
            "its input is a JSON object with \"{field}\", e.g. --input '{{\"{field}\": ...}}'"
        ),
        None => "see the built-in tasks and their JSON input in the README".into(),
    }
}

/// Submits the job(s) and prints their ids; waits with `--wait`.
pub async fn submit(args: SubmitArgs, socket: &Path) -> CmdResult {
    // Everything local is checked before connecting.
    let (specs, batch) = match &args.batch {
        Some(path) => (read_batch(path)?, true),
        None => (vec![single_spec(&args)?], false),
    };
    let mut client = connect(socket).await?;
    let submitted = client.submit(specs).await?;

    if args.json {
        let list: Vec<_> = submitted
            .iter()
            .map(jobvisor_proto::json::Submitted::from)
            .collect();
        emit_json(&list)?;
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

/// Tells on stderr which submissions an idempotency key turned away.
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
    if args.command.is_empty()
        && (args.cwd.is_some() || !args.env.is_empty() || !args.ok_codes.is_empty())
    {
        return Err(Failure::usage(
            "--cwd, --env and --ok-codes are only for `submit exec [OPTIONS] -- CMD ARGS...`",
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
        let ok_codes = Some(args.ok_codes.as_slice()).filter(|c| !c.is_empty());
        exec_input_json(&args.command, &args.env, cwd.as_deref(), ok_codes)
    } else {
        let text = args.input.as_deref().ok_or_else(|| {
            if task == EXEC_TASK {
                Failure::usage("`submit exec` needs a command after `--` (or --input JSON)")
            } else {
                Failure::usage(format!(
                    "--input JSON is required for task `{task}` ({})",
                    builtin_input_hint(&task)
                ))
            }
        })?;
        if let Err(e) = serde_json::from_str::<Value>(text) {
            return Err(Failure::new(
                EXIT_USAGE,
                anyhow::Error::new(e).context("--input is not valid JSON"),
            ));
        }
        text.trim().to_owned()
    };
    let mut spec = JobSpec::new(task, Payload::Json(input));
    spec.queue = args.queue.clone();
    spec.priority = args.priority.unwrap_or(0);
    spec.max_attempts = args.max_attempts;
    spec.max_crashes = args.max_crashes;
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

/// Whole milliseconds, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `dir` made absolute against the current directory (the worker's directory
/// is the daemon's, not ours), as UTF-8.
fn absolute_dir(dir: &Path) -> Result<String, Failure> {
    let abs = std::path::absolute(dir).map_err(|e| {
        let what = format!("--cwd {}", dir.display());
        Failure::new(EXIT_USAGE, anyhow::Error::new(e).context(what))
    })?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| Failure::usage(format!("--cwd {}: not valid UTF-8", p.to_string_lossy())))
}

/// The JSON input of the `exec` task. Every field of `ExecInput` is present:
/// the daemon decodes it strictly into that struct. An argument that is not
/// UTF-8 goes as `{"base64": "..."}` ([`jobvisor_tasks::arg_json`]).
fn exec_input_json(
    argv: &[OsString],
    env: &[(String, String)],
    cwd: Option<&str>,
    ok_codes: Option<&[i32]>,
) -> String {
    let argv: Vec<Value> = argv.iter().map(|a| jobvisor_tasks::arg_json(a)).collect();
    json!({
        "argv": argv,
        "env": env,
        "clear_env": false,
        "cwd": cwd,
        "stdin": null,
        "max_output_bytes": 0,
        "timeout_ms": null,
        "kill_grace_ms": 0,
        "ok_codes": ok_codes,
        "error_tail_bytes": 0,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jobvisor_proto::control::{JobSpec, Payload};

    use super::*;
    use crate::args::testing::{parse, submit_args};
    use crate::exit::EXIT_USAGE;

    /// Issue 10, item F.24: the hint follows the task's input type.
    #[test]
    fn the_missing_input_hint_comes_from_the_tasks_input_type() {
        let noop = builtin_input_hint("noop");
        assert!(
            noop.contains("a number") && noop.contains("--input 1"),
            "{noop}"
        );
        assert!(!noop.contains("null"), "{noop}");
        for (task, field) in [("spin", "ms"), ("sleep", "ms"), ("hash", "path")] {
            let h = builtin_input_hint(task);
            assert!(h.contains(&format!("\"{field}\"")), "{task}: {h}");
        }
        assert!(input_hint(|j| if j == "null" {
            Ok(())
        } else {
            Err(String::new())
        })
        .contains("--input null"));
        assert!(input_hint(|_| Err("nothing fits".into())).contains("README"));
        assert!(builtin_input_hint("custom").contains("as JSON"));
    }

    #[test]
    fn exec_input_decodes_into_exec_input() {
        let argv: Vec<OsString> = vec!["sh".into(), "-c".into(), "echo \"hi\"".into()];
        let env = vec![
            ("A".to_owned(), "1".to_owned()),
            ("B".to_owned(), "x=y".to_owned()),
        ];
        let text = exec_input_json(&argv, &env, Some("/tmp"), None);
        let input: jobvisor_tasks::ExecInput = serde_json::from_str(&text).unwrap();
        let mut want = jobvisor_tasks::ExecInput::new(argv.clone());
        want.env = env;
        want.cwd = Some("/tmp".to_owned());
        assert_eq!(input, want);

        let text = exec_input_json(&argv, &[], None, None);
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
            "--ok-codes",
            "0,1",
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
        assert_eq!(input.ok_codes, Some(vec![0, 1]));
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
            e.message().contains("--input JSON is required"),
            "{}",
            e.message()
        );
        let e = single_spec(&submit_args(&["submit", "exec"])).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(
            e.message().contains("needs a command after `--`"),
            "{}",
            e.message()
        );
        let e = single_spec(&submit_args(&["submit", "sleep", "--", "ls"])).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(
            e.message().contains("only for the `exec` task"),
            "{}",
            e.message()
        );
        let e = single_spec(&submit_args(&[
            "submit", "exec", "--cwd", "/", "--input", "{}",
        ]))
        .unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(
            e.message().contains("--cwd, --env and --ok-codes"),
            "{}",
            e.message()
        );
        let e = single_spec(&submit_args(&[
            "submit", "sleep", "--env", "A=1", "--input", "1",
        ]))
        .unwrap_err();
        assert!(
            e.message().contains("--cwd, --env and --ok-codes"),
            "{}",
            e.message()
        );
        let e = single_spec(&submit_args(&["submit", "sleep", "--input", "{nope"])).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
        assert!(e.message().contains("not valid JSON"), "{}", e.message());
        // Batch parses.
        let args = submit_args(&["submit", "--batch", "-", "--wait", "--json"]);
        assert_eq!(args.batch.as_deref(), Some(Path::new("-")));
    }
}
