//! The chaos actors: a thread that SIGKILLs a random worker every few ms
//! (and SIGSTOPs one once), a thread that SIGKILLs and restarts the daemon at
//! chosen moments, and the pause that lets the driver sample descriptors.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jobvisor_client::Client;

use super::config::ChaosConfig;
use super::conn::{settle_pool, Conn};
use super::shared::{daemon_fds, relock, Fds, Kill, Shared};
use crate::util::proc::{has_marker, proc_info, signal};
use crate::util::rng::Rng;
use crate::util::rt;

pub(super) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// SIGKILLs a random worker every few ms; once, SIGSTOPs one for a while.
pub(super) fn worker_killer(shared: &Shared, cfg: &ChaosConfig) {
    let mut rng = Rng::new(cfg.seed ^ 0x5157_0b0b);
    let stop_at = cfg.jobs / 3;
    rt().block_on(async {
        let mut client: Option<(Client, u64)> = None;
        // (pid, when, calls done at the stop)
        let mut stopped: Option<(u32, Instant, u64)> = None;
        // A worker resumed, until it is seen doing calls again.
        let mut resumed: Option<(u32, u64)> = None;
        let mut stop_done = false;
        while !shared.stop.load(Ordering::SeqCst) {
            // Paused (the driver samples the daemon's descriptors).
            if shared.st().pause_kills {
                client = None;
                let mut st = shared.st();
                st.killer_paused = true;
                shared.cv.notify_all();
                while st.pause_kills && !shared.stop.load(Ordering::SeqCst) {
                    st = shared.wait(st, Duration::from_millis(100));
                }
                st.killer_paused = false;
                continue;
            }
            tokio::time::sleep(rng.jitter(cfg.worker_kill_every)).await;
            if let Some((pid, at, calls)) = stopped {
                if at.elapsed() >= cfg.sigstop_for {
                    if has_marker(pid as i32, &shared.env.marker) {
                        signal(pid as i32, libc::SIGCONT);
                        eprintln!("chaos: SIGCONT worker {pid}");
                    } else {
                        eprintln!("chaos: the SIGSTOPped worker {pid} is gone (a daemon kill)");
                    }
                    stopped = None;
                    resumed = Some((pid, calls));
                }
            }
            let (up, gen) = {
                let st = shared.st();
                (st.up, st.generation)
            };
            if !up {
                client = None;
                continue;
            }
            if client.as_ref().is_some_and(|(_, g)| *g != gen) {
                client = None;
            }
            if client.is_none() {
                match Client::connect(&shared.env.socket).await {
                    Ok(c) => client = Some((c, gen)),
                    Err(_) => continue,
                }
            }
            let Some((c, _)) = client.as_mut() else {
                continue;
            };
            let rows = match c.workers().await {
                Ok(rows) => rows,
                Err(_) => {
                    client = None;
                    continue;
                }
            };
            if let Some((pid, calls)) = resumed {
                match rows.iter().find(|w| w.pid == pid) {
                    Some(w) if w.calls_done > calls => {
                        eprintln!(
                            "chaos: worker {pid} resumed: {calls} -> {} calls done",
                            w.calls_done
                        );
                        shared.sigstop_resumed.store(true, Ordering::SeqCst);
                        resumed = None;
                    }
                    Some(_) => {}
                    None => {
                        // A poison job on it, or a daemon kill.
                        eprintln!("chaos: worker {pid} died before it was seen resuming");
                        resumed = None;
                    }
                }
            }
            let spared = stopped.map(|s| s.0).or(resumed.map(|r| r.0));
            let candidates: Vec<_> = rows
                .iter()
                .filter(|w| w.state.as_str() == "ready" && Some(w.pid) != spared)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            if !stop_done && shared.submitted.load(Ordering::SeqCst) >= stop_at {
                if let Some(w) = candidates.iter().find(|w| w.in_flight > 0) {
                    if has_marker(w.pid as i32, &shared.env.marker)
                        && signal(w.pid as i32, libc::SIGSTOP)
                    {
                        // It is stopped once /proc says so (state T).
                        let until = Instant::now() + Duration::from_millis(200);
                        let mut state = '?';
                        while Instant::now() < until {
                            state = proc_info(w.pid as i32).map_or('?', |p| p.state);
                            if state == 'T' {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        eprintln!(
                            "chaos: SIGSTOP worker {} ({} calls in flight; state {state}) for {:?}",
                            w.pid, w.in_flight, cfg.sigstop_for
                        );
                        stopped = Some((w.pid, Instant::now(), w.calls_done));
                        stop_done = true;
                        shared.sigstops.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                }
            }
            let w = candidates[rng.below(candidates.len() as u64) as usize];
            if has_marker(w.pid as i32, &shared.env.marker) {
                let before_ms = unix_ms();
                let sent = signal(w.pid as i32, libc::SIGKILL);
                let after_ms = unix_ms();
                if sent {
                    shared.worker_kills.fetch_add(1, Ordering::Relaxed);
                    relock(&shared.kills).push(Kill {
                        pid: w.pid,
                        before_ms,
                        after_ms,
                    });
                }
            }
        }
        if let Some((pid, _, _)) = stopped {
            if has_marker(pid as i32, &shared.env.marker) {
                signal(pid as i32, libc::SIGCONT);
            }
        }
    });
}

/// SIGKILLs and restarts the daemon `daemon_kills` times, spread over the
/// submissions, each at a random moment (sometimes in the middle of a submit).
pub(super) fn daemon_killer(shared: &Shared, cfg: &ChaosConfig) {
    let mut rng = Rng::new(cfg.seed ^ 0xdead_d00d);
    for k in 0..cfg.daemon_kills {
        let threshold = cfg.jobs * (k + 1) / (cfg.daemon_kills + 2);
        {
            let mut st = shared.st();
            while shared.submitted.load(Ordering::SeqCst) < threshold {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                st = shared.wait(st, Duration::from_millis(100));
            }
        }
        if k % 2 == 0 {
            // In the middle of a submit: its outcome is unknown to the client,
            // which resubmits with the same keys after the restart.
            let mut st = shared.st();
            while !shared.submitting.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
                st = shared.wait(st, Duration::from_millis(100));
            }
            drop(st);
            std::thread::sleep(Duration::from_micros(rng.below(1000)));
        } else {
            std::thread::sleep(Duration::from_millis(rng.below(40)));
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        shared.kill_daemon();
        shared.start_daemon();
        let mut st = shared.st();
        st.kills_done += 1;
        shared.cv.notify_all();
        drop(st);
        eprintln!(
            "chaos: daemon kill {} of {} at {} submitted; restarted",
            k + 1,
            cfg.daemon_kills,
            shared.submitted.load(Ordering::SeqCst)
        );
    }
}

/// Pauses the worker killer (it closes its connection) and samples the
/// daemon's descriptors once its pool is whole again.
pub(super) async fn sample_fds_paused(shared: &Shared, conn: &mut Conn<'_>, workers: usize) -> Fds {
    {
        let mut st = shared.st();
        st.pause_kills = true;
        shared.cv.notify_all();
        while !st.killer_paused && !shared.stop.load(Ordering::SeqCst) {
            st = shared.wait(st, Duration::from_millis(100));
        }
    }
    settle_pool(conn, workers).await;
    let pid = shared.st().daemon_pid;
    let n = daemon_fds(pid);
    let mut st = shared.st();
    st.pause_kills = false;
    shared.cv.notify_all();
    n
}
