//! The chaos proof: thousands of mixed jobs (spin, exec, hash, async sleep
//! and http on the workers' event loops, some failing,
//! some poison) through the real `jobvisor` daemon while workers are SIGKILLed
//! at random every few ms, one worker is SIGSTOPped for a while, and the
//! daemon itself is SIGKILLed and restarted several times. At the end one line
//! gives the figures, and the run fails if any is off: acknowledged = terminal
//! (nothing lost), re-runs within their budgets, dead-lettered = exactly the
//! poison jobs, no zombie, no orphan process, no fd growth in the supervisor.
//!
//! `cargo test --test tests chaos::` runs a short configuration (1,000
//! jobs, 2 daemon kills); `JOBVISOR_CHAOS_FULL=1` (what `scripts/chaos` sets)
//! selects the full one (20,000 jobs, 5 daemon kills). `JOBVISOR_CHAOS_SEED`,
//! `JOBVISOR_CHAOS_JOBS`, `JOBVISOR_CHAOS_KILL_MS` and
//! `JOBVISOR_CHAOS_DAEMON_KILLS` override the seed and sizes.
//!
//! Every process the daemon starts (fork server, workers, the commands of
//! `exec` jobs) inherits a marker environment variable unique to the run, so
//! "no orphan" is checked by scanning `/proc` for live processes carrying it,
//! however they were started. The run's directory (daemon log, database) is
//! printed first and kept when the run fails.

//! # Layout
//! Lowest first; each names only those above it.
//! - `config`: what a run does; the daemon's config; the odds.
//! - `shared`: the state the actors share, the daemon's child and fd samples.
//! - `conn`: a client connection that survives daemon restarts.
//! - `killer`: the worker killer and the daemon killer.
//! - `workload`: the job mix and the driver that submits it.
//! - `report`: checking the records; the figures.

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jobvisor_client::Client;

use crate::util::daemon::kill_group;
use crate::util::proc::{fd_targets, lasting_zombies, survivors_after};
use crate::util::rt;

mod config;
mod conn;
mod killer;
mod report;
mod shared;
mod workload;

use config::{p_wrongly_dead, ChaosConfig};
use conn::{settle_pool, Conn};
use killer::{daemon_killer, worker_killer};
use report::{check_records, short, strip_ansi, ChaosReport};
use shared::{daemon_fds, relock, RunEnv, Shared, StopGuard, MARK_VAR};
use workload::{drive, plan, Kind};

fn run_chaos(cfg: ChaosConfig) -> ChaosReport {
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("jobvisor-chaos-")
        .tempdir()
        .expect("tempdir")
        .keep();
    let state = dir.join("state");
    let config = dir.join("chaos.toml");
    let marker_value = format!("{}-{}", std::process::id(), cfg.seed);
    std::fs::write(&config, cfg.daemon_toml()).expect("write config");
    let data = dir.join("data.txt");
    std::fs::write(&data, b"jobvisor chaos: hash me\n").expect("write data");
    let digest = Command::new("sha256sum")
        .arg(&data)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .map(str::to_string)
        });
    let plan = plan(&cfg, &dir, &data);
    let n_poison = plan.iter().filter(|p| p.kind == Kind::Poison).count();
    let n_failing = plan.iter().filter(|p| p.kind.fails()).count();
    let n_normal = plan.len() - n_poison - n_failing;
    let p_prior = cfg.p_hit_prior();
    println!(
        "chaos: seed={} jobs={} (poison {n_poison}, failing {n_failing}) workers={} \
         worker kill every ~{:?} daemon kills={} dir={}",
        cfg.seed,
        cfg.jobs,
        cfg.workers,
        cfg.worker_kill_every,
        cfg.daemon_kills,
        dir.display()
    );
    println!(
        "chaos: a random kill hits an attempt with p ≈ {p_prior:.3} (a priori); \
         max_crashes={} ⇒ P(any non-poison job dead-lettered by chance) ≈ {:.1e}",
        cfg.max_crashes,
        p_wrongly_dead(
            n_normal,
            n_failing,
            p_prior,
            cfg.max_attempts,
            cfg.max_crashes
        )
    );
    let shared = Shared::new(RunEnv {
        socket: state.join("control.sock"),
        log: dir.join("daemon.log"),
        state,
        config,
        marker: format!("{MARK_VAR}={marker_value}").into_bytes(),
        marker_value,
        workers: cfg.workers,
    });
    shared.start_daemon();
    // The baseline: a fresh daemon, idle, its pool whole, one client connection.
    let fds_idle = rt().block_on(async {
        let mut conn = Conn::new(&shared);
        settle_pool(&mut conn, cfg.workers).await;
        daemon_fds(shared.st().daemon_pid)
    });

    let driven = std::thread::scope(|s| {
        let wk = s.spawn(|| worker_killer(&shared, &cfg));
        let dk = s.spawn(|| daemon_killer(&shared, &cfg));
        let guard = StopGuard(&shared);
        let driven = rt().block_on(drive(&shared, &cfg, &plan, started));
        drop(guard);
        if wk.join().is_err() || dk.join().is_err() {
            panic!("a chaos thread panicked");
        }
        driven
    });
    let mut problems: Vec<String> = std::mem::take(&mut *relock(&shared.problems));
    if !driven.stuck.is_empty() {
        problems.push(format!(
            "jobs still not terminal after {:?}:\n  {}",
            cfg.deadline,
            driven
                .stuck
                .iter()
                .map(short)
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    if !driven.missing.is_empty() {
        problems.push(format!(
            "{} acknowledged jobs unknown to the daemon (lost): {:?}",
            driven.missing.len(),
            &driven.missing[..driven.missing.len().min(20)]
        ));
    }
    let unique: HashSet<u64> = driven.ids.iter().copied().collect();
    if unique.len() != driven.ids.len() {
        problems.push(format!(
            "{} distinct ids for {} acknowledged jobs",
            unique.len(),
            driven.ids.len()
        ));
    }

    // Quiet now: no kill any more. The pool, zombies, descriptors, the store's view.
    let (fds_end, zombies, store_total) = rt().block_on(async {
        let mut conn = Conn::new(&shared);
        settle_pool(&mut conn, cfg.workers).await;
        let zombies = lasting_zombies(&shared.env.marker, Duration::from_secs(2));
        let pid = shared.st().daemon_pid;
        let fds_end = daemon_fds(pid);
        let stats = conn.get().await.stats().await.expect("stats");
        let total: u64 = stats.jobs.iter().map(|(_, n)| n).sum();
        (fds_end, zombies, total)
    });
    if !zombies.is_empty() {
        problems.push(format!("zombies: {zombies:?}"));
    }
    if store_total != cfg.jobs as u64 {
        problems.push(format!(
            "the store holds {store_total} jobs for {} submitted (a resubmit was not deduplicated?)",
            cfg.jobs
        ));
    }
    // Idle with a whole pool and one client connection, like the first
    // daemon before any job: the totals must match; under load on the final
    // daemon, the descriptors that are not a worker's must not have grown.
    let fds_warm = driven.fds_warm.unwrap_or_default();
    if fds_end.total > fds_idle.total + 2 || fds_end.other > fds_warm.other + 2 {
        problems.push(format!(
            "daemon descriptors grew: idle {} -> {}, not a worker's {} (under load) -> {}: {:?}",
            fds_idle.total,
            fds_end.total,
            fds_warm.other,
            fds_end.other,
            fd_targets(shared.st().daemon_pid)
        ));
    }

    // A graceful stop; then nothing of the run may be left.
    rt().block_on(async {
        if let Ok(mut c) = Client::connect(&shared.env.socket).await {
            let _ = c.shutdown(true).await;
        }
    });
    let child = shared.st().child.take();
    if let Some(mut child) = child {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(s)) = child.try_wait() {
                break Some(s);
            }
            if Instant::now() >= deadline {
                kill_group(&mut child);
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if !status.is_some_and(|s| s.success()) {
            problems.push(format!(
                "the final graceful shutdown did not exit 0: {status:?}"
            ));
        }
    }
    let left = survivors_after(&shared.env.marker, Duration::from_secs(5));
    let orphans = shared.orphans.load(Ordering::Relaxed) + left.len();
    if !left.is_empty() {
        problems.push(format!("processes left after the shutdown: {left:?}"));
    }

    let kills = std::mem::take(&mut *relock(&shared.kills));
    // Kept with the run's directory, for correlating with the daemon log.
    let _ = std::fs::write(
        dir.join("worker-kills.txt"),
        kills
            .iter()
            .map(|k| format!("{}..{} SIGKILL worker {}\n", k.before_ms, k.after_ms, k.pid))
            .collect::<String>(),
    );
    let (f, record_problems, misattributed) = check_records(
        &cfg,
        &plan,
        &driven.ids,
        &driven.records,
        digest.as_deref(),
        &kills,
    );
    problems.extend(record_problems);
    if !misattributed.is_empty() {
        // The evidence: what the daemon logged about those workers.
        let log = std::fs::read_to_string(&shared.env.log).unwrap_or_default();
        let mut lines = Vec::new();
        for pid in &misattributed {
            let needle = format!("pid={pid}");
            lines.extend(
                log.lines()
                    .map(strip_ansi)
                    .filter(|l| {
                        l.split(|c: char| c.is_whitespace() || c == '}' || c == '{')
                            .any(|w| w == needle || w == format!("worker_{needle}"))
                    })
                    .take(6),
            );
        }
        problems.push(format!(
            "daemon log for the workers of misattributed crashes:\n  {}",
            lines.join("\n  ")
        ));
    }
    let acknowledged = driven.ids.len();
    let terminal = driven.records.len();
    if acknowledged != cfg.jobs || terminal != acknowledged {
        problems.push(format!(
            "acknowledged {acknowledged} of {} jobs, {terminal} terminal",
            cfg.jobs
        ));
    }
    if f.dead != n_poison {
        problems.push(format!("dead {} != poison {n_poison}", f.dead));
    }
    if shared.sigstops.load(Ordering::Relaxed) != 1 {
        problems.push("the worker SIGSTOP did not happen".into());
    }
    let p_hat = if f.normal_attempts > 0 {
        f.hits as f64 / f.normal_attempts as f64
    } else {
        0.0
    };
    let p_dead = p_wrongly_dead(
        f.normal,
        f.failing,
        p_hat,
        cfg.max_attempts,
        cfg.max_crashes,
    );
    let ok = problems.is_empty();
    let line = format!(
        "chaos: acknowledged={acknowledged} terminal={terminal} succeeded={} failed={} \
         (failing={}) dead={} (poison={n_poison}) reruns={} lost={} duplicates={} \
         worker_kills={} kill_hits={} misattributed={} (p={p_hat:.3}, P(chance dead)={p_dead:.0e}) sigstop={}{} \
         daemon_kills={} (mid-submit {}) zombies={} orphans={orphans} fds={}->{} (not a worker's {}->{}) time={:.1}s {}",
        f.succeeded,
        f.failed,
        f.failing,
        f.dead,
        f.reruns,
        f.lost,
        driven.duplicates,
        shared.worker_kills.load(Ordering::Relaxed),
        f.hits,
        f.misattributed,
        shared.sigstops.load(Ordering::Relaxed),
        if shared.sigstop_resumed.load(Ordering::Relaxed) {
            " (resumed)"
        } else {
            ""
        },
        shared.st().kills_done,
        shared.kills_mid_submit.load(Ordering::Relaxed),
        zombies.len(),
        fds_idle.total,
        fds_end.total,
        fds_warm.other,
        fds_end.other,
        started.elapsed().as_secs_f64(),
        if ok { "ok" } else { "FAILED" },
    );
    if ok {
        let _ = std::fs::remove_dir_all(&dir);
    }
    ChaosReport {
        line,
        problems,
        dir,
    }
}

#[test]
fn chaos() {
    // Two workers spinning and killed every few ms: nothing else runs beside it.
    let _cpu = crate::util::cpu::alone();
    let full = std::env::var("JOBVISOR_CHAOS_FULL").is_ok_and(|v| v == "1");
    let cfg = if full {
        ChaosConfig::full()
    } else {
        ChaosConfig::short()
    }
    .with_env_overrides();
    let report = run_chaos(cfg);
    println!("{}", report.line);
    assert!(
        report.problems.is_empty(),
        "{}\n{} problem(s); the run's directory (daemon.log, state/jobs.db) is kept: {}\n{}",
        report.line,
        report.problems.len(),
        report.dir.display(),
        report.problems.join("\n")
    );
}
