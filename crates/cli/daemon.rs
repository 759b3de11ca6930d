//! `jobvisor daemon`: the configuration from the file and the flags, then the
//! daemon's own `run`. The only module of the binary that names
//! `jobvisor-daemon`.

use std::path::PathBuf;

use crate::args::DaemonArgs;

/// Loads the configuration (`--config`, else the defaults), lets the flags and
/// `--socket` override it, and runs the daemon until it stops.
///
/// # Errors
/// A configuration that does not load, or the daemon's own error.
pub async fn run(args: DaemonArgs, socket: Option<PathBuf>) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => jobvisor_daemon::Config::load(path)?,
        None => jobvisor_daemon::Config::default(),
    };
    if let Some(d) = args.state_dir {
        config.state_dir = Some(d);
    }
    if let Some(s) = socket {
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
    jobvisor_daemon::run(options).await?;
    Ok(())
}
