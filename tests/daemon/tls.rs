//! The HTTP API over TLS (`[http.tls]`), with certificates made by the
//! machine's `openssl` for the test and requests made by `curl`: HTTPS
//! answers, plaintext gets no HTTP answer, and with `client_ca` only a client
//! certificate that CA signed gets in.

use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;

use crate::util::daemon::Daemon;

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate it
/// signed, and a client certificate of another CA.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, pem, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN={ca}"),
        );
        let mut a = vec!["openssl", "req", "-x509"];
        a.extend(ec);
        a.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
        run(dir, &a);
    }
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ca, ext) in [
        ("server", "ca", "server.ext"),
        ("client", "ca", "client.ext"),
        ("stranger", "other-ca", "client.ext"),
    ] {
        let mut a = vec!["openssl", "req"];
        a.extend(ec);
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN={name}");
        a.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        run(dir, &a);
        let (cap, cak, pem) = (
            format!("{ca}.pem"),
            format!("{ca}.key"),
            format!("{name}.pem"),
        );
        run(
            dir,
            &[
                "openssl",
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &cap,
                "-CAkey",
                &cak,
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
}

/// A daemon with the API on TLS (and `extra` under `[http.tls]`); its port.
fn tls_daemon(dir: &Path, extra: &str) -> (Daemon, String) {
    let d = dir.display();
    let d = Daemon::with_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[http.tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\n{extra}\n"
    ));
    let log = d.log();
    let addr = log
        .lines()
        .find(|l| l.contains("http API listening") && l.contains("tls=true"))
        .and_then(|l| l.split("bound=").nth(1))
        .and_then(|a| a.split_whitespace().next())
        .unwrap_or_else(|| panic!("no TLS listening line:\n{log}"))
        .to_owned();
    (d, addr)
}

/// `curl` of `/healthz` over HTTPS; its exit code and stdout.
fn curl(dir: &Path, addr: &str, extra: &[&str]) -> (i32, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(dir.join("ca.pem"))
        .args(extra)
        .arg(format!("https://{addr}/healthz"))
        .current_dir(dir)
        .output()
        .expect("curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_api_speaks_https_and_refuses_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let (_d, addr) = tls_daemon(dir.path(), "");
    let (code, body) = curl(dir.path(), &addr, &[]);
    assert_eq!((code, body.contains("\"ok\"")), (0, true), "{body}");
    // Plain HTTP to the TLS port: no HTTP answer, a TLS alert at most.
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        !got.starts_with(b"HTTP/"),
        "plaintext was answered: {:?}",
        String::from_utf8_lossy(&got)
    );
    // A client that does not trust the server's CA gives up.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "--cacert"])
        .arg(dir.path().join("other-ca.pem"))
        .arg(format!("https://{addr}/healthz"))
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn with_a_client_ca_only_its_certificates_get_in() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let ca = dir.path().join("ca.pem");
    let (_d, addr) = tls_daemon(dir.path(), &format!("client_ca = \"{}\"", ca.display()));
    let (code, body) = curl(
        dir.path(),
        &addr,
        &["--cert", "client.pem", "--key", "client.key"],
    );
    assert_eq!((code, body.contains("\"ok\"")), (0, true), "{body}");
    let (code, _) = curl(dir.path(), &addr, &[]);
    assert_ne!(code, 0, "no client certificate got in");
    let (code, _) = curl(
        dir.path(),
        &addr,
        &["--cert", "stranger.pem", "--key", "stranger.key"],
    );
    assert_ne!(code, 0, "another CA's certificate got in");
}

/// A key file that holds no key stops the daemon at start, naming it.
#[test]
fn a_bad_key_file_is_refused_at_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    std::fs::write(dir.path().join("bad.key"), "not a key\n").unwrap();
    let d = dir.path().display();
    let cfg = crate::util::config(
        &dir,
        &format!("[http]\nlisten = \"127.0.0.1:0\"\n[http.tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/bad.key\"\n"),
    );
    let out = Command::new(crate::util::bin())
        .args(["daemon", "--config", &cfg, "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http.tls") && err.contains("bad.key"), "{err}");
}
