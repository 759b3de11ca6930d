//! Memory bounds of the control socket against clients that announce more
//! than they send.

use std::os::fd::AsRawFd;
use std::time::Duration;

use jobvisor_client::Client;
use jobvisor_proto::{Hello, Role, HELLO_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::util::wait::until;
use crate::util::*;

/// The daemon's resident set, from `/proc/PID/status`.
fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Bytes this end wrote that the peer has not read yet (`SIOCOUTQ`).
fn unread_by_peer(s: &UnixStream) -> Result<(), String> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) on a valid socket fd writes one c_int.
    let rc = unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    match (rc, n) {
        (0, 0) => Ok(()),
        _ => Err(format!("rc {rc}, {n} bytes unread")),
    }
}

/// Sixteen clients each announce a 64 MiB request and send ten bytes of it:
/// the daemon buffers what arrived, not what was announced (16 × 64 MiB would
/// be a gigabyte).
#[test]
fn announced_frames_cost_only_the_bytes_that_arrived() {
    let d = Daemon::start(&[]);
    let pid = d.pid();
    rt().block_on(async {
        let mut held = Vec::new();
        for _ in 0..16 {
            let mut s = UnixStream::connect(&d.socket).await.expect("connect");
            let mut hello = [0u8; HELLO_BYTES];
            s.read_exact(&mut hello).await.expect("daemon hello");
            s.write_all(&Hello::ours(Role::Client).encode())
                .await
                .expect("hello");
            s.write_all(&(64u32 * 1024 * 1024).to_le_bytes())
                .await
                .expect("header");
            s.write_all(&[0u8; 10]).await.expect("ten bytes");
            held.push(s);
        }
        for s in &held {
            until(
                Duration::from_secs(10),
                "the daemon reads the header",
                async || unread_by_peer(s),
            )
            .await;
        }
        // A full round trip after the daemon has read every header.
        let mut c = Client::connect(&d.socket).await.expect("connect");
        c.request(&jobvisor_proto::control::Request::Ping)
            .await
            .expect("ping");
        let rss = vm_rss_kib(pid);
        assert!(
            rss < 256 * 1024,
            "daemon RSS {rss} KiB with 16 announced frames"
        );
        drop(held);
    });
}

/// Connects and completes the handshake, reading the daemon's hello.
async fn session(socket: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(socket).await.expect("connect");
    let mut hello = [0u8; HELLO_BYTES];
    s.read_exact(&mut hello).await.expect("daemon hello");
    s.write_all(&Hello::ours(Role::Client).encode())
        .await
        .expect("hello");
    s
}

/// One client holds most of `limits.max_buffered_bytes` in a request it has
/// not finished; the next client whose buffer would pass the bound is told so
/// and closed, and the bytes come back when the first goes away.
#[test]
fn buffered_bytes_past_the_bound_close_the_connection() {
    let mib = 1024 * 1024;
    let d = Daemon::with_config(&format!(
        "[limits]\nmax_frame_bytes = {}\nmax_buffered_bytes = {}\n",
        4 * mib,
        4 * mib + 64 * 1024
    ));
    rt().block_on(async {
        let mut big = session(&d.socket).await;
        big.write_all(&(4 * mib as u32).to_le_bytes())
            .await
            .unwrap();
        big.write_all(&vec![0u8; 3 * mib]).await.unwrap();
        until(
            Duration::from_secs(10),
            "the daemon reads 3 MiB",
            async || unread_by_peer(&big),
        )
        .await;
        let mut next = session(&d.socket).await;
        next.write_all(&[0u8; 3]).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), next.read_to_end(&mut rest))
            .await
            .expect("closed within 10 s")
            .expect("read");
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.contains("limits.max_buffered_bytes"), "{rest}");
        drop(big);
        until(
            Duration::from_secs(10),
            "the budget comes back",
            async || {
                let mut c = Client::connect(&d.socket)
                    .await
                    .map_err(|e| e.to_string())?;
                c.request(&jobvisor_proto::control::Request::Ping)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    });
}
