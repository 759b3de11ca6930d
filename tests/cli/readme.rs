//! Every shell example of the README runs (issue 10, item F.20): each
//! ```` ```sh ```` block of `README.md` runs as one `bash -euo pipefail`
//! script, line for line, with the built `jobvisor` first on `PATH`, against
//! a real daemon this test started (`JOBVISOR_SOCKET`), in a work dir that
//! holds the files the examples name. A line that fails fails the test,
//! naming its README line.
//!
//! What the test does not run as written is data, below: lines it skips
//! ([`SKIP`], with the reason), lines that stream until interrupted
//! ([`STREAMS`]), and the outside world the examples point at
//! ([`substitutions`]). A skip or a stream that matches no README line
//! fails the test, so the tables cannot rot.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

use crate::util::http::{read_request, Request};
use crate::util::{text, Daemon};

/// README lines not run, each with why (matched as a line's start).
const SKIP: &[(&str, &str)] = &[
    (
        "scripts/quickstart",
        "builds the release binary and runs a workload of its own: CI's job",
    ),
    (
        "cargo test --workspace",
        "is how these tests themselves run",
    ),
    (
        "jobvisor daemon &",
        "the test starts the daemon itself, in a temp state dir, and kills it in Drop",
    ),
];

/// README lines that run until interrupted (matched as a line's start): run
/// in the background; each must print something and still be running then.
const STREAMS: &[&str] = &["jobvisor events --follow"];

/// The README's lines of one ```` ```sh ```` block, and where it starts.
#[derive(Debug)]
struct Block {
    /// README line number of the block's first line.
    first_line: usize,
    lines: Vec<String>,
}

/// Every ```` ```sh ```` block of `readme`.
fn sh_blocks(readme: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for (i, line) in readme.lines().enumerate() {
        match &mut current {
            None if line.trim_end() == "```sh" => {
                current = Some(Block {
                    first_line: i + 2,
                    lines: Vec::new(),
                })
            }
            None => {}
            Some(_) if line.trim_end() == "```" => blocks.extend(current.take()),
            Some(b) => b.lines.push(line.to_owned()),
        }
    }
    blocks
}

/// `line` without a trailing `# comment` (outside quotes).
fn strip_comment(line: &str) -> &str {
    let (mut single, mut double) = (false, false);
    let mut prev = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && prev.is_whitespace() => return line[..i].trim_end(),
            _ => {}
        }
        prev = c;
    }
    line.trim_end()
}

/// The block as a script, one script line per README line (so `$LINENO`
/// names the README line): skipped lines become no-ops, stream lines run in
/// the background and are checked at the end.
fn script(
    block: &Block,
    skipped: &mut Vec<&'static str>,
    streamed: &mut Vec<&'static str>,
) -> String {
    let mut s = String::new();
    for line in &block.lines {
        let code = strip_comment(line);
        if let Some((prefix, _why)) = SKIP.iter().find(|(p, _)| code.starts_with(p)) {
            skipped.push(prefix);
            s.push_str(": skipped\n");
        } else if let Some(prefix) = STREAMS.iter().find(|p| code.starts_with(*p)) {
            streamed.push(prefix);
            s.push_str(&format!(
                "{code} >\"stream.$LINENO\" 2>&1 & jv_stream $! \"stream.$LINENO\"\n"
            ));
        } else {
            s.push_str(line);
            s.push('\n');
        }
    }
    s
}

/// What every block's script starts with, on one line so that line numbers
/// stay the README's: stop at the first failure, naming its line; a stream
/// must show output (a poll with a deadline) and still be running, then it is
/// stopped.
fn prelude(first_line: usize) -> String {
    let offset = first_line - 2;
    format!(
        "set -euo pipefail; \
         trap 'echo \"README line $((LINENO + {offset})) failed (status $?): $BASH_COMMAND\" >&2' ERR; \
         jv_stream() {{ for _ in $(seq 400); do [ -s \"$2\" ] && break; sleep 0.05; done; \
         [ -s \"$2\" ] || {{ echo \"stream printed nothing: $(cat \"$2\")\" >&2; return 1; }}; \
         kill -0 \"$1\" || {{ echo \"stream exited: $(cat \"$2\")\" >&2; return 1; }}; \
         kill \"$1\"; }}\n"
    )
}

/// A web server on 127.0.0.1 for the examples that download and notify:
/// answers every request 200 with `body`, and hands each one to the test.
fn web_server(body: &'static [u8]) -> (String, mpsc::Receiver<Request>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve(stream, &tx, body));
        }
    });
    (url, rx)
}

fn serve(stream: TcpStream, tx: &mpsc::Sender<Request>, body: &[u8]) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    while let Some(request) = read_request(&mut reader) {
        let _ = tx.send(request);
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
        if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body).is_err() {
            return;
        }
    }
}

/// The outside world of the examples, replaced by this test's: the web
/// server, and a download directory in the work dir.
fn substitutions(url: &str, work: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("https://example.com", url.to_owned()),
        ("https://hooks.example.com", url.to_owned()),
        ("/data/", format!("{}/", work.display())),
    ]
}

/// The files the examples name, in the work dir (the daemon's cwd, where
/// relative paths in task inputs resolve).
fn write_fixtures(work: &Path) {
    let write = |name: &str, body: &[u8]| {
        std::fs::write(work.join(name), body).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    write("big.iso", &[7u8; 1000]);
    write(
        "jobs.jsonl",
        b"{\"task\": \"noop\", \"input\": 1}\n{\"task\": \"noop\", \"input\": 2}\n",
    );
    write("Makefile", b"test:\n\ttrue\n");
}

#[test]
fn every_shell_example_in_the_readme_runs() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("README.md");
    let blocks = sh_blocks(&readme);
    assert!(blocks.len() >= 4, "README sh blocks: {blocks:?}");

    // A short drain, for the examples' `shutdown` with a job running.
    let mut d = Daemon::in_work_dir(&[]);
    let cfg = d.dir.path().join("jobvisor.toml");
    std::fs::write(&cfg, "[jobs]\ndrain_grace_ms = 500\n").expect("config");
    d.extra
        .extend(["--config".to_owned(), cfg.display().to_string()]);
    d.spawn();
    let work = d.cwd.clone().expect("work dir");
    write_fixtures(&work);
    let (url, requests) = web_server(b"hello from the test server");
    let bin_dir = d.dir.path().join("bin");
    std::fs::create_dir(&bin_dir).expect("bin dir");
    std::os::unix::fs::symlink(crate::util::bin(), bin_dir.join("jobvisor")).expect("symlink");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let (mut skipped, mut streamed) = (Vec::new(), Vec::new());
    let mut ran = 0;
    for block in &blocks {
        let mut body = script(block, &mut skipped, &mut streamed);
        if body.lines().all(|l| l.starts_with(": skipped")) {
            continue;
        }
        for (from, to) in substitutions(&url, &work) {
            body = body.replace(from, &to);
        }
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{}{body}", prelude(block.first_line)))
            .current_dir(&work)
            .env("PATH", &path)
            .env("JOBVISOR_SOCKET", &d.socket)
            .output()
            .expect("run bash");
        assert!(
            out.status.success(),
            "README block at line {}:\n{body}\n{}\ndaemon log:\n{}",
            block.first_line,
            text(&out),
            d.log()
        );
        ran += 1;
        if body.contains("jobvisor shutdown") {
            // The example stopped the daemon: the next block gets a new one.
            await_exit(&mut d);
            d.spawn();
        }
        // The pipeline example prints the file's size, taken from the hash.
        if body.contains("--input-from \"$a:/bytes\"") {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(stdout.lines().last(), Some("1000"), "{}", text(&out));
        }
    }
    assert!(ran >= 3, "ran {ran} blocks");
    for (prefix, why) in SKIP {
        assert!(
            skipped.contains(prefix),
            "SKIP {prefix:?} ({why}) matches no README line"
        );
    }
    for prefix in STREAMS {
        assert!(
            streamed.contains(prefix),
            "STREAMS {prefix:?} matches no README line"
        );
    }
    // The download → hash → notify chain reached this test's server, and
    // the webhook got the hash's output.
    let got: Vec<Request> = requests.try_iter().collect();
    let hook = got
        .iter()
        .find(|r| r.method == "POST" && r.path == "/done")
        .unwrap_or_else(|| panic!("no webhook call: {got:?}"));
    assert!(
        String::from_utf8_lossy(&hook.body).contains("sha256"),
        "{hook:?}"
    );
    d.kill9();
}

/// Waits (to a deadline) until the daemon exited, and reaps it.
fn await_exit(d: &mut Daemon) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let child = d.child.as_mut().expect("running");
    loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => {
                assert!(status.success(), "daemon exited {status}: {}", d.log());
                d.child = None;
                return;
            }
            None if std::time::Instant::now() >= deadline => {
                panic!("the daemon did not stop after `shutdown`:\n{}", d.log())
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn comments_are_stripped_outside_quotes_only() {
    assert_eq!(
        strip_comment("jobvisor wait \"$id\"   # no polling"),
        "jobvisor wait \"$id\""
    );
    assert_eq!(
        strip_comment("echo '# not a comment'"),
        "echo '# not a comment'"
    );
    assert_eq!(strip_comment("a=\"x#y\" # c"), "a=\"x#y\"");
    assert_eq!(strip_comment("plain"), "plain");
}
