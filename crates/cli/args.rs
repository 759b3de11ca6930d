//! The command line: the clap types of `jobvisor` and its subcommands.
//!
//! The bottom of the binary's modules: plain argument types that every
//! command reads, naming no other module of the binary but the client
//! commands' own argument types.

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

/// The subcommands.
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

impl Cli {
    /// The control socket clients use: `--socket`/`JOBVISOR_SOCKET`, else the
    /// default state dir's `control.sock`.
    pub fn client_socket(&self) -> std::path::PathBuf {
        self.socket
            .clone()
            .unwrap_or_else(|| jobvisor_daemon::config::default_state_dir().join("control.sock"))
    }
}
