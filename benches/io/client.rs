//! Talking to the delay server: starting it as a child process, and reading
//! its `/_stats` counters.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::SERVE_ARG;

/// The delay server as a child process of the benchmark (killed and reaped on drop).
#[derive(Debug)]
pub(crate) struct ServerChild {
    child: Child,
}

impl ServerChild {
    pub(crate) fn start(delay_ms: u64) -> Result<(Self, String)> {
        let exe = std::env::current_exe().context("current_exe")?;
        let mut child = Command::new(exe)
            .args([SERVE_ARG, "--delay-ms", &delay_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the delay server")?;
        let out = child.stdout.take().context("server stdout")?;
        let server = Self { child };
        let mut line = String::new();
        BufReader::new(out)
            .read_line(&mut line)
            .context("reading the server's URL")?;
        let url = line
            .trim()
            .strip_prefix("URL ")
            .ok_or_else(|| anyhow!("delay server printed {line:?}, not its URL"))?
            .to_string();
        Ok((server, url))
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `host:port` of an `http://host:port/...` URL.
pub(crate) fn authority(url: &str) -> Result<&str> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("not an http:// URL: {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// The server's `/_stats` counters (`reset` zeroes the peaks after reading).
pub(crate) async fn server_stats(url: &str, reset: bool) -> Result<serde_json::Value> {
    let host = authority(url)?;
    let mut s = TcpStream::connect(host)
        .await
        .context("connect to server")?;
    let target = if reset { "/_stats?reset" } else { "/_stats" };
    let req = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let resp = String::from_utf8_lossy(&resp);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .ok_or_else(|| anyhow!("bad stats response {resp:?}"))?;
    serde_json::from_str(body).context("stats JSON")
}

pub(crate) fn stat_u64(v: &serde_json::Value, key: &str) -> u64 {
    v.get(key).and_then(serde_json::Value::as_u64).unwrap_or(0)
}
