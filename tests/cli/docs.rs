//! `jobvisor completions` and `jobvisor man`, checked by the programs that
//! read them: bash completes with the script, groff renders the page.

use super::jobvisor;

/// Every subcommand a user can type, as `jobvisor --help` lists them.
fn subcommands() -> Vec<String> {
    let out = jobvisor().arg("--help").output().expect("help");
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let names: Vec<String> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .filter(|n| n != "help")
        .collect();
    assert!(names.len() >= 15, "{help}");
    names
}

/// bash, with the script sourced, completes `jobvisor ` to every
/// subcommand and `jobvisor submit --max-` to its flags.
#[test]
fn bash_completes_subcommands_and_flags_with_the_script() {
    let script = jobvisor()
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobvisor.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    let complete = |words: &str, cword: usize| {
        let prog = format!(
            "source {}; COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE=\"{words}\"; \
             COMP_POINT=${{#COMP_LINE}}; _jobvisor jobvisor; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            path.display()
        );
        let out = std::process::Command::new("bash")
            .args(["-c", &prog])
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let words = complete("jobvisor ''", 1);
    for name in subcommands() {
        assert!(
            words.lines().any(|w| w == name),
            "`{name}` is not completed:\n{words}"
        );
    }
    let flags = complete("jobvisor submit --max-", 2);
    assert!(flags.lines().any(|w| w == "--max-attempts"), "{flags}");
    for shell in ["zsh", "fish", "elvish"] {
        let out = jobvisor()
            .args(["completions", shell])
            .output()
            .expect("completions");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("submit"),
            "{shell}: {text}"
        );
    }
}

/// The manual page renders without a groff warning and has a section for
/// every subcommand.
#[test]
fn the_man_page_renders_and_covers_every_subcommand() {
    let page = jobvisor().arg("man").output().expect("man");
    assert!(page.status.success());
    assert!(page.stdout.starts_with(b".ie") || page.stdout.starts_with(b".TH"));
    let mut groff = std::process::Command::new("groff")
        // Plain text: no bold or underline by overstrike or escapes.
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(child) = groff.as_mut() else {
        eprintln!("groff is not installed: the page is not rendered here");
        return;
    };
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&page.stdout).unwrap();
    let out = groff.unwrap().wait_with_output().expect("groff");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "groff: {stderr}");
    let text = String::from_utf8_lossy(&out.stdout);
    for name in subcommands() {
        let heading = format!("JOBVISOR {}", name.to_uppercase());
        assert!(text.contains(&heading), "no section {heading}");
    }
}
