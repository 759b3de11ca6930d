//! Command-line interface.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use jobvisor_pool::StartMethod;

/// jobvisor: a multi-process job supervisor.
#[derive(Debug, Parser)]
#[command(name = "jobvisor", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Pretty, global = true)]
    pub log_format: LogFormat,
    /// Control socket (default: STATE_DIR/control.sock, STATE_DIR being
    /// $XDG_STATE_HOME/jobvisor or ~/.local/state/jobvisor).
    #[arg(long, env = "JOBVISOR_SOCKET", global = true)]
    pub socket: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(flatten)]
    Client(crate::client_cmds::ClientCommand),
    /// Run the supervisor daemon: control socket, durable job store, workers.
    Daemon(DaemonArgs),
    /// Run a short, visible demonstration of the worker pool: throughput,
    /// CPU parallelism, a worker killed mid-task and replaced, a timeout, and
    /// a command run through `exec`.
    Demo(DemoArgs),
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
    /// Worker processes (0 = one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// How workers start: forkserver or spawn.
    #[arg(long)]
    pub start_method: Option<String>,
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
}

pub fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = if matches!(cli.command, Command::Daemon(_)) {
        "info"
    } else {
        "warn"
    };
    let filter =
        EnvFilter::try_from_env("JOBVISOR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::Client(_) => unreachable_client(),
        Command::Demo(args) => rt.block_on(crate::demo::run(args)),
        Command::Daemon(args) => {
            let mut config = match &args.config {
                Some(path) => jobvisor_daemon::Config::load(path)?,
                None => jobvisor_daemon::Config::default(),
            };
            if let Some(d) = args.state_dir {
                config.state_dir = Some(d);
            }
            if let Some(s) = cli.socket {
                config.socket = Some(s);
            }
            if let Some(w) = args.workers {
                config.workers = w;
            }
            let workers_override = args.workers;
            if let Some(m) = args.start_method {
                config.start_method = m;
            }
            let options = jobvisor_daemon::Options {
                config,
                config_path: args.config,
                workers_override,
                registry: jobvisor_tasks::builtin(),
            };
            rt.block_on(jobvisor_daemon::run(options))?;
            Ok(())
        }
    }
}

fn unreachable_client() -> anyhow::Result<()> {
    anyhow::bail!("client commands are run by run_client")
}

/// The control socket clients use: `--socket`/`JOBVISOR_SOCKET`, else the
/// default state dir's `control.sock`.
pub fn client_socket(cli: &Cli) -> std::path::PathBuf {
    cli.socket
        .clone()
        .unwrap_or_else(|| jobvisor_daemon::config::default_state_dir().join("control.sock"))
}
