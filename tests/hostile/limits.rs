//! Memory bounds of the control socket against clients that announce more
//! than they send, and requests that would cost far more decoded than sent.

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

/// The daemon's peak resident set (`VmHWM` of `/proc/PID/status`).
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Issue 10, item B.8: a 60 MB submit of 4 million empty specs (within the
/// frame limit) grew the daemon by a gigabyte, decoded whole before
/// `limits.max_batch_jobs` refused it. It is now refused from the count it
/// announces: the daemon's peak grows by the frame it buffered, not by
/// the specs (the bound is generous; the old code passed it fivefold).
#[test]
fn a_submit_of_millions_of_empty_specs_is_refused_before_it_is_decoded() {
    use jobvisor_client::{ErrorKind, JobSpec, Payload};
    use jobvisor_proto::codec;
    use jobvisor_proto::control::{Request, Response};
    const JOBS: u64 = 4_000_000;
    let d = Daemon::start(&[]);
    let pid = d.pid();
    // `Submit` with a length of 4 million, then the specs, encoded by hand so
    // that this test does not hold 4 million specs itself.
    let spec = codec::encode(&JobSpec::new("", Payload::Json(String::new()))).unwrap();
    let mut payload = codec::encode(&Request::Submit(Vec::new())).unwrap();
    payload.pop(); // the length 0, one byte
    payload.extend(codec::encode(&JOBS).unwrap());
    for _ in 0..JOBS {
        payload.extend_from_slice(&spec);
    }
    assert_eq!(Request::announced_jobs(&payload), Some(JOBS));
    assert!(payload.len() < 64 << 20, "{} bytes", payload.len());
    rt().block_on(async {
        let mut s = session(&d.socket).await;
        // After the hello: the session's own costs are in the baseline.
        let before = vm_hwm_kib(pid);
        s.write_all(&(payload.len() as u32).to_le_bytes())
            .await
            .unwrap();
        s.write_all(&payload).await.unwrap();
        let mut fb = jobvisor_proto::FrameBuf::new(1 << 20);
        match read_answer(&mut s, &mut fb).await {
            Response::Error(e) => {
                assert_eq!(e.kind, ErrorKind::LimitReached, "{e}");
                assert!(
                    e.message.contains(
                        "4000000 jobs in one submit exceed limits.max_batch_jobs (100000)"
                    ),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        let grew_mib = vm_hwm_kib(pid).saturating_sub(before) / 1024;
        println!("daemon peak RSS grew by {grew_mib} MiB");
        assert!(
            grew_mib < 200,
            "the daemon's peak RSS grew by {grew_mib} MiB"
        );
        // The session serves on.
        let mut out = Vec::new();
        jobvisor_proto::encode_frame(&mut out, &Request::Ping, 1024).unwrap();
        s.write_all(&out).await.unwrap();
        let pong = read_answer(&mut s, &mut fb).await;
        assert!(matches!(pong, Response::Pong { .. }), "{pong:?}");
    });
}

/// The next response on a raw session.
async fn read_answer(
    s: &mut UnixStream,
    fb: &mut jobvisor_proto::FrameBuf,
) -> jobvisor_proto::control::Response {
    loop {
        if let Some(r) = fb.decode_next().expect("a response frame") {
            return r;
        }
        let n = tokio::time::timeout(Duration::from_secs(60), s.read(fb.spare()))
            .await
            .expect("an answer within 60 s")
            .expect("read");
        assert!(n > 0, "closed without an answer");
        fb.filled(n);
    }
}
