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
    /// Run a short, visible demonstration of the worker pool: throughput,
    /// CPU parallelism, a worker killed mid-task and replaced, a timeout, and
    /// a command run through `exec`.
    Demo(DemoArgs),
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
    let filter = EnvFilter::try_from_env("JOBVISOR_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
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
        Command::Demo(args) => rt.block_on(crate::demo::run(args)),
    }
}
