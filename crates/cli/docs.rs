//! `jobvisor completions SHELL` and `jobvisor man`: generated from the clap
//! types of [`crate::args`], so they cannot drift from the real command line.

use std::io::Write;
use std::process::ExitCode;

use clap::CommandFactory;

use crate::args::Cli;
use crate::exit::EXIT_ERROR;

/// Prints `shell`'s completion script for `jobvisor`.
pub fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "jobvisor", &mut out);
    print(&out)
}

/// Prints the manual page, `jobvisor(1)`, with a section per subcommand.
pub fn man() -> ExitCode {
    let cmd = Cli::command();
    let mut out = Vec::new();
    if let Err(e) = render_man(&cmd, &mut out) {
        eprintln!("jobvisor: cannot render the manual page: {e}");
        return ExitCode::from(EXIT_ERROR);
    }
    print(&out)
}

/// `jobvisor(1)`: the top-level page, then each visible subcommand's
/// synopsis, description and options as a section of its own.
fn render_man(cmd: &clap::Command, out: &mut Vec<u8>) -> std::io::Result<()> {
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = sub.get_name();
        writeln!(out, ".SH \"JOBVISOR {}\"", name.to_uppercase())?;
        let sub = sub.clone().bin_name(format!("jobvisor {name}"));
        let page = clap_mangen::Man::new(sub);
        // The subcommand's synopsis, about and options, without its own title.
        let mut part = Vec::new();
        page.render_synopsis_section(&mut part)?;
        page.render_description_section(&mut part)?;
        page.render_options_section(&mut part)?;
        // Its section headings become subsections of ours.
        let part = String::from_utf8_lossy(&part).replace(".SH ", ".SS ");
        out.extend_from_slice(part.as_bytes());
    }
    man.render_version_section(out)?;
    man.render_authors_section(out)?;
    Ok(())
}

/// Writes `bytes` to stdout; a closed stdout (`| head`) is not an error.
fn print(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("jobvisor: cannot write to stdout: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
