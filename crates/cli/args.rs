//! The command line: the clap types of `jobvisor` and of every subcommand.
//!
//! Plain argument types near the bottom of the binary's modules: the
//! commands read them, and they name only [`crate::parse`] (their value
//! parsers).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use jobvisor_pool::StartMethod;
use jobvisor_proto::control::{JobSpec, JobState};

use crate::parse::{
    parse_backoff, parse_duration, parse_env_pair, parse_input_from, parse_state, Backoff,
};

/// jobvisor: a multi-process job supervisor.
#[derive(Debug, Parser)]
#[command(name = "jobvisor", version, about)]
pub struct Cli {
    /// Control socket (default: STATE_DIR/control.sock, STATE_DIR being
    /// $XDG_STATE_HOME/jobvisor or ~/.local/state/jobvisor).
    #[arg(long, env = "JOBVISOR_SOCKET", global = true)]
    pub socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log format: `--log-format` of `daemon` or `demo`, the only
    /// commands that log (a client command's few warnings are pretty).
    pub fn log_format(&self) -> LogFormat {
        match &self.command {
            Command::Daemon(a) => a.log_format,
            Command::Demo(a) => a.log_format,
            Command::Client(_)
            | Command::Completions { .. }
            | Command::Man
            | Command::Token { .. } => LogFormat::Pretty,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Client(ClientCommand),
    /// Run the supervisor daemon: control socket, durable job store, workers.
    Daemon(DaemonArgs),
    /// Run a short, visible demonstration of the worker pool: throughput,
    /// CPU parallelism, a worker killed mid-task and replaced, a timeout, and
    /// a command run through `exec`.
    Demo(DemoArgs),
    /// Print a shell completion script: `source <(jobvisor completions bash)`,
    /// or write it where the shell looks (see `scripts/completions`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) on stdout: `jobvisor man | man -l -`.
    Man,
    /// HTTP API tokens: `token new --role read|submit|admin [--name N]`
    /// prints a fresh token and the `[[http.tokens]]` lines (its SHA-256) to
    /// paste into the config; the token itself is stored nowhere.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// `jobvisor token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a fresh token and the config lines that grant it a role.
    New {
        /// What it may do: read, submit or admin.
        #[arg(long, value_parser = ["read", "submit", "admin"])]
        role: String,
        /// Its name in the config and the logs.
        #[arg(long, default_value = "token")]
        name: String,
    },
}

/// Arguments of `jobvisor daemon`.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// TOML configuration file (see config/jobvisor.toml); flags override it.
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,
    /// State directory (job database, lock, default socket location).
    #[arg(long)]
    pub state_dir: Option<std::path::PathBuf>,
    /// Job store: sqlite:PATH (default sqlite:STATE_DIR/jobs.db) or
    /// postgres://user@host:port/db (overrides `[store] url`).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// Worker processes (0 = one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How workers start: forkserver or spawn.
    #[arg(long)]
    pub start_method: Option<String>,
    /// Log format (filter with JOBVISOR_LOG, e.g. JOBVISOR_LOG=debug).
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

/// Arguments of `jobvisor demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Worker processes (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How workers start: forkserver or spawn.
    #[arg(long, default_value = "forkserver")]
    pub start_method: StartMethod,
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

impl Command {
    /// Whether this command runs worker processes, so that `main` must fork
    /// the fork server (before any thread exists) to run it. Client commands
    /// only talk to a daemon over its socket and fork nothing.
    pub fn runs_workers(&self) -> bool {
        match self {
            Command::Daemon(_) | Command::Demo(_) => true,
            Command::Client(_)
            | Command::Completions { .. }
            | Command::Man
            | Command::Token { .. } => false,
        }
    }
}

/// Commands that talk to a running daemon.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Submit a job (`submit TASK --input JSON`, `submit exec -- CMD ARGS...`)
    /// or a batch of jobs (`submit --batch FILE`). Prints one job id per line.
    // Boxed so the enum stays small when flattened into another.
    Submit(Box<SubmitArgs>),
    /// Show one job: state, attempts, error, times.
    Status {
        /// Job id.
        id: u64,
        /// Print the full job record as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Wait until jobs finish; print each job's state. The exit code comes from
    /// the worst state (3 failed/dead, 6 cancelled, 1 unfinished at the timeout).
    Wait {
        /// Job ids.
        #[arg(required_unless_present = "all", conflicts_with = "all", num_args = 1.., value_name = "ID")]
        ids: Vec<u64>,
        /// Wait until no job is unfinished (queued, running, retrying),
        /// jobs submitted meanwhile included.
        #[arg(long)]
        all: bool,
        /// Give up after this long (e.g. 500ms, 2s, 1.5s, 1h30m).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// Print the job records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a finished job's output on stdout (its error on stderr if it failed).
    Result {
        /// Job id.
        id: u64,
        /// Print `{"id", "state", "output", "error"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued or running job.
    Cancel {
        /// Job id.
        id: u64,
        /// Print `{"id": N, "cancelled": true}`.
        #[arg(long)]
        json: bool,
    },
    /// Re-queue a finished job that did not succeed (dead, failed,
    /// cancelled), with fresh attempt and crash budgets.
    Retry {
        /// Job id.
        id: u64,
        /// Print `{"id": N, "state": "queued"}`.
        #[arg(long)]
        json: bool,
    },
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (queued, running, retrying, succeeded,
        /// failed, cancelled, dead).
        #[arg(long, value_name = "STATE", value_parser = parse_state)]
        state: Option<JobState>,
        /// Only jobs of this queue.
        #[arg(long, value_name = "QUEUE")]
        queue: Option<String>,
        /// At most this many jobs (up to 10000). When more exist, stderr
        /// says so and how to see them.
        #[arg(long, value_name = "N", default_value_t = 50,
              value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Only jobs older than job ID (an id below it): the next page after
        /// a list that ended at ID.
        #[arg(long, value_name = "ID")]
        before: Option<u64>,
        /// Print the job records as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the worker processes.
    Workers {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show daemon figures.
    Stats {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check that the daemon answers. Exit code 5 when it is unreachable.
    Ping {
        /// Keep retrying (every 50 ms) while the daemon is unreachable, up to
        /// this long: for scripts waiting for the daemon to be ready.
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        wait: Option<Duration>,
        /// Print `{"pid": N}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the recent job and worker events the daemon kept
    /// (`limits.event_history`) and exit; with `--follow`, then stream new
    /// ones as they happen, until interrupted.
    Events {
        /// After the recent events, keep streaming new ones.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only events of the last DUR (e.g. 10m; `0s` with `--follow`: only
        /// new ones).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        since: Option<Duration>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon, letting running jobs finish unless `--now`.
    Shutdown {
        /// Do not wait for running jobs.
        #[arg(long)]
        now: bool,
        /// Return only after the daemon has stopped.
        #[arg(long)]
        wait: bool,
        /// Print `{"shutdown": "graceful"|"now", "stopped": BOOL, "pid": N}`.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `submit`.
#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Task name. With `exec`, give the command after `--`.
    #[arg(value_name = "TASK", required_unless_present = "batch")]
    pub task: Option<String>,
    /// The command of an `exec` job: `submit exec -- CMD ARGS...`. Any
    /// bytes: an argument that is not UTF-8 reaches the command unchanged.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
    /// Task input as JSON text (required except for `exec -- CMD` and `--batch`).
    #[arg(long, value_name = "JSON", conflicts_with = "command")]
    pub input: Option<String>,
    /// Working directory of an `exec` command (made absolute against the
    /// current directory). Default: the worker's.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Environment variable for an `exec` command (repeatable).
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// Exit codes of an `exec` command that count as success (default: 0
    /// only; any other exit, or a signal, fails the attempt), e.g. `0,1`.
    #[arg(
        long,
        value_name = "CODE,...",
        value_delimiter = ',',
        allow_negative_numbers = true
    )]
    pub ok_codes: Vec<i32>,
    /// Queue (default: `default`).
    #[arg(long, value_name = "QUEUE")]
    pub queue: Option<String>,
    /// Priority: higher runs first (default 0).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Attempts in all, the first included.
    #[arg(long, value_name = "N")]
    pub max_attempts: Option<u32>,
    /// Crash budget: dead after this many worker deaths (or daemon deaths
    /// during an attempt), 1 to 1000 (default: the daemon's
    /// `jobs.max_crashes`).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=i64::from(JobSpec::MAX_CRASHES))
    )]
    pub max_crashes: Option<u32>,
    /// Retry backoff in ms: first delay, optionally `:` the cap (e.g. 100:5000).
    #[arg(long, value_name = "BASE[:MAX]", value_parser = parse_backoff)]
    pub backoff_ms: Option<Backoff>,
    /// Per-attempt timeout (e.g. 30s, 5m, 1h30m; a number needs a unit).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Watchdog: stop an attempt that sends no heartbeat or progress for this long.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub stall_timeout: Option<Duration>,
    /// Do not start before this long from now.
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Run only after this job succeeded (repeatable, or comma-separated).
    #[arg(long, value_name = "ID", value_delimiter = ',')]
    pub after: Vec<u64>,
    /// Pipeline: take input from job ID's JSON output, after it succeeded:
    /// `ID` merges the output object into the input, `ID:/json/pointer` takes
    /// part of it, `...@field` puts the value under that key (repeatable).
    #[arg(long, value_name = "ID[:/PTR][@FIELD]", value_parser = parse_input_from)]
    pub input_from: Vec<jobvisor_proto::control::InputRef>,
    /// Idempotency key: submitting the same key again returns the first job.
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// When the job ends (succeeded, failed, cancelled, dead), POST its record
    /// as JSON to this http(s) URL (at-least-once while the daemon runs;
    /// dedupe on the `x-jobvisor-delivery` header).
    #[arg(long, value_name = "URL")]
    pub notify_url: Option<String>,
    /// Wait for the job(s) to finish; exit with the worst job's code.
    #[arg(long)]
    pub wait: bool,
    /// Submit many jobs from a JSON-lines file (`-` for stdin), one object per
    /// line: {"task", "input", and optionally "queue", "priority",
    /// "max_attempts", "max_crashes", "backoff_base_ms", "backoff_max_ms", "timeout_ms",
    /// "delay_ms", "after", "key", "notify_url"}. All are accepted or none. On a terminal,
    /// shows a progress bar until all finished.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with_all = [
            "task", "command", "input", "cwd", "env", "ok_codes", "queue", "priority",
            "max_attempts", "max_crashes", "backoff_ms", "timeout", "delay", "after", "key", "input_from",
            "notify_url",
        ]
    )]
    pub batch: Option<PathBuf>,
    /// Print the submitted ids as JSON (`[{"id": N, "duplicate": false}, ...]`).
    #[arg(long)]
    pub json: bool,
}

/// Parsing of the client commands alone, for the tests of every command.
#[cfg(test)]
pub mod testing {
    use clap::Parser;

    use super::{ClientCommand, SubmitArgs};

    #[derive(Debug, Parser)]
    pub struct TestCli {
        #[command(subcommand)]
        pub cmd: ClientCommand,
    }

    pub fn parse(args: &[&str]) -> Result<ClientCommand, clap::Error> {
        TestCli::try_parse_from(std::iter::once("jobvisor").chain(args.iter().copied()))
            .map(|c| c.cmd)
    }

    pub fn submit_args(args: &[&str]) -> SubmitArgs {
        match parse(args).expect("parses") {
            ClientCommand::Submit(a) => *a,
            other => panic!("not a submit: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use jobvisor_proto::control::JobState;

    use super::testing::*;
    use super::*;

    #[test]
    fn only_daemon_and_demo_run_workers() {
        let runs = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("jobvisor").chain(args.iter().copied()))
                .map(|c| c.command.runs_workers())
                .map_err(|e| e.kind())
        };
        assert_eq!(runs(&["daemon"]), Ok(true));
        assert_eq!(runs(&["daemon", "--workers", "2"]), Ok(true));
        assert_eq!(runs(&["--socket", "/s", "demo"]), Ok(true));
        for client in [
            &["ping"][..],
            &["--socket", "/s", "ping", "--wait", "1s"],
            &["status", "1"],
            &["submit", "noop", "--input", "null"],
            &["wait", "1", "2"],
            &["list"],
            &["workers"],
            &["stats"],
            &["events"],
            &["shutdown"],
            &["cancel", "1"],
            &["retry", "1"],
            &["result", "1"],
        ] {
            assert_eq!(runs(client), Ok(false), "{client:?}");
        }
        // --version and --help never reach a command: main prints them
        // before it would bootstrap.
        use clap::error::ErrorKind;
        assert_eq!(runs(&["--version"]), Err(ErrorKind::DisplayVersion));
        assert_eq!(runs(&["--help"]), Err(ErrorKind::DisplayHelp));
        assert_eq!(runs(&["daemon", "--help"]), Err(ErrorKind::DisplayHelp));
        // The worker's hidden argument is no command of ours: main asks
        // jobvisor_pool::is_spawned_worker before parsing.
        assert!(runs(&["__jobvisor-worker", "3", "4"]).is_err());
    }

    /// Issue 10, item F.25: `--log-format` is the daemon's (and the demo's)
    /// option, not every client subcommand's.
    #[test]
    fn log_format_is_an_option_of_the_commands_that_log() {
        use clap::CommandFactory;
        let cli = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("jobvisor").chain(args.iter().copied()))
        };
        assert!(matches!(
            cli(&["daemon", "--log-format", "json"]).map(|c| c.log_format()),
            Ok(LogFormat::Json)
        ));
        assert!(matches!(
            cli(&["demo", "--log-format", "json"]).map(|c| c.log_format()),
            Ok(LogFormat::Json)
        ));
        assert!(matches!(
            cli(&["ping"]).map(|c| c.log_format()),
            Ok(LogFormat::Pretty)
        ));
        assert!(cli(&["ping", "--log-format", "json"]).is_err());
        assert!(cli(&["--log-format", "json", "status", "1"]).is_err());
        let mut cmd = Cli::command();
        let help = |cmd: &mut clap::Command, sub: &str| {
            cmd.find_subcommand_mut(sub)
                .expect(sub)
                .render_long_help()
                .to_string()
        };
        assert!(!help(&mut cmd, "status").contains("--log-format"));
        assert!(help(&mut cmd, "daemon").contains("--log-format"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        TestCli::command().debug_assert();
    }

    #[test]
    fn other_commands_parse() {
        match parse(&["wait", "1", "2", "--timeout", "2s", "--json"]).unwrap() {
            ClientCommand::Wait {
                ids,
                all,
                timeout,
                json,
            } => {
                assert!(!all);
                assert_eq!(ids, [1, 2]);
                assert_eq!(timeout, Some(Duration::from_secs(2)));
                assert!(json);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["wait"]).is_err());
        assert!(parse(&["wait", "--all", "1"]).is_err());
        assert!(matches!(
            parse(&["wait", "--all"]).unwrap(),
            ClientCommand::Wait { all: true, .. }
        ));
        assert!(parse(&["list", "--limit", "0"]).is_err());
        assert!(parse(&["list", "--limit", "10001"]).is_err());
        match parse(&["list", "--state", "failed"]).unwrap() {
            ClientCommand::List {
                state, limit, json, ..
            } => {
                assert_eq!(state, Some(JobState::Failed));
                assert_eq!(limit, 50);
                assert!(!json);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["list", "--state", "bogus"]).is_err());
        assert!(matches!(
            parse(&["ping", "--wait", "5s"]).unwrap(),
            ClientCommand::Ping { wait: Some(d), json: false } if d == Duration::from_secs(5)
        ));
        assert!(matches!(
            parse(&["shutdown", "--now", "--wait", "--json"]).unwrap(),
            ClientCommand::Shutdown {
                now: true,
                wait: true,
                json: true
            }
        ));
    }
}
