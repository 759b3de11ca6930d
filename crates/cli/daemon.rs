//! `jobvisor daemon`: the configuration from the file and the flags, then the
//! daemon's own `run`. The only module of the binary that names
//! `jobvisor-daemon`.

use std::path::PathBuf;

use crate::args::DaemonArgs;

/// systemd's notification socket (`Type=notify`).
pub type Systemd = jobvisor_daemon::sdnotify::SdNotify;

/// `jobvisor token new`: a fresh token on stdout's first line, then the
/// config lines holding its hash.
pub fn token(command: crate::args::TokenCommand) -> std::process::ExitCode {
    let crate::args::TokenCommand::New { role, name } = command;
    match jobvisor_daemon::access::new_token() {
        Ok(token) => {
            let hash = jobvisor_daemon::access::sha256_hex(&token);
            println!("{token}");
            eprintln!("# Give the token above to its user; it is shown only now. In the config:");
            println!("[[http.tokens]]\nname = {name:?}\nsha256 = \"{hash}\"\nrole = \"{role}\"");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jobvisor: cannot read random bytes: {e}");
            std::process::ExitCode::from(crate::exit::EXIT_ERROR)
        }
    }
}

/// Takes systemd's notification variables out of the environment. Only
/// while the process has one thread: `main` calls it before the fork server.
pub fn take_systemd() -> Option<Systemd> {
    Systemd::take_from_env()
}

/// Loads the configuration (`--config`, else the first file of the standard
/// places, else the defaults: the log says which), lets the flags and
/// `--socket` override it, and runs the daemon until it stops.
///
/// # Errors
/// A configuration that does not load, or the daemon's own error.
pub async fn run(
    args: DaemonArgs,
    socket: Option<PathBuf>,
    systemd: Option<Systemd>,
) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => {
            let c = jobvisor_daemon::Config::load(path)?;
            tracing::info!(path = %path.display(), "configuration read (--config)");
            c
        }
        None => match jobvisor_daemon::config::discover() {
            (Some(path), _) => {
                let c = jobvisor_daemon::Config::load(&path)?;
                tracing::info!(path = %path.display(), "configuration read");
                c
            }
            (None, looked_in) => {
                let looked_in: Vec<String> =
                    looked_in.iter().map(|p| p.display().to_string()).collect();
                tracing::info!(
                    looked_in = %looked_in.join(", "),
                    "no configuration file found; using the defaults"
                );
                jobvisor_daemon::Config::default()
            }
        },
    };
    if let Some(d) = args.state_dir {
        config.state_dir = Some(d);
    }
    if let Some(s) = socket {
        config.socket = Some(s);
    }
    if let Some(url) = args.store {
        config.store.url = Some(url);
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
        discover_config: args.config.is_none(),
        config_path: args.config,
        workers_override,
        registry: jobvisor_tasks::builtin(),
        systemd,
    };
    jobvisor_daemon::run(options).await?;
    Ok(())
}
