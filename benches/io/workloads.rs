//! The workloads: (a) the burst of GETs, (b) `spin` and `http` closed loops
//! alone, (c) both at once.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use jobvisor_pool::Pool;
use jobvisor_tasks::{Http, HttpInput, Spin, SpinInput};

use crate::client::{server_stats, stat_u64};
use crate::cpu::{cpu_sample, report_cpu};
use crate::{result, Params};

/// One `http` GET of `url` through the pool; fails unless the answer is 200.
pub(crate) async fn get(pool: &Pool, url: &str) -> Result<()> {
    let out = pool
        .apply_io::<Http>(&HttpInput::new(url))
        .await
        .with_context(|| format!("GET {url}"))?;
    if out.status != 200 {
        bail!("GET {url}: status {}", out.status);
    }
    Ok(())
}

/// (a) `n` GETs submitted at once, then all awaited.
pub(crate) async fn burst(pool: &Pool, p: &Params, url: &str) -> Result<()> {
    let total = (p.workers * p.concurrency) as u64;
    // Warm-up: one round at full concurrency opens the keep-alive connections.
    run_gets(pool, url, total).await?;
    let delay_ms = p.delay_ms as f64;
    let ideal = Duration::from_secs_f64(p.n as f64 * delay_ms / 1e3 / total as f64);
    server_stats(url, true).await?;
    let before = cpu_sample(pool, url).await;
    let t = Instant::now();
    let failed = run_gets(pool, url, p.n).await?;
    let wall = t.elapsed();
    let after = cpu_sample(pool, url).await;
    let stats = server_stats(url, true).await?;
    // Minus the connection that asked for the second sample.
    let opened = after.accepted.saturating_sub(before.accepted + 1);
    let rate = p.n as f64 / wall.as_secs_f64();
    let over = wall.as_secs_f64() / ideal.as_secs_f64();
    println!(
        "(a) {} GETs × {delay_ms} ms, {} workers × {} concurrency: {:.3} s, {rate:.0} calls/s; \
         ideal {:.3} s, wall / ideal {over:.3}; peak in flight at the server {}, \
         {opened} connections opened, {failed} failed",
        p.n,
        p.workers,
        p.concurrency,
        wall.as_secs_f64(),
        ideal.as_secs_f64(),
        stat_u64(&stats, "peak_in_flight"),
    );
    result("io.n", p.n);
    result("io.wall_s", format!("{:.4}", wall.as_secs_f64()));
    result("io.calls_per_s", format!("{rate:.0}"));
    result("io.ideal_s", format!("{:.4}", ideal.as_secs_f64()));
    result("io.over_ideal", format!("{over:.4}"));
    result("io.peak_in_flight", stat_u64(&stats, "peak_in_flight"));
    result("io.peak_connections", stat_u64(&stats, "peak_connections"));
    result("io.connections_opened", opened);
    result("io.failed", failed);
    report_cpu("io", before, after, p.n);
    Ok(())
}

/// `n` GETs submitted at once, then awaited; returns how many failed.
pub(crate) async fn run_gets(pool: &Pool, url: &str, n: u64) -> Result<u64> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (pool, url) = (pool.clone(), url.to_string());
        set.spawn(async move { get(&pool, &url).await });
    }
    let mut failed = 0;
    let mut first_error = None;
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.context("join")? {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        if failed == n {
            return Err(e.context("every GET failed"));
        }
        eprintln!("io bench: {failed} of {n} GETs failed; the first: {e:#}");
    }
    Ok(failed)
}

/// What one closed loop did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoopResult {
    calls: u64,
    wall: Duration,
    /// `spin`: rounds of arithmetic done, over all calls. A spin runs for wall
    /// time, so fewer rounds per call means its worker was off the CPU part
    /// of the time.
    spin_rounds: u64,
}

impl LoopResult {
    pub(crate) fn rate(self) -> f64 {
        self.calls as f64 / self.wall.as_secs_f64()
    }

    pub(crate) fn rounds_per_s(self) -> f64 {
        self.spin_rounds as f64 / self.wall.as_secs_f64()
    }
}

/// The two kinds of call of (b) and (c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Spin,
    Http,
}

/// A closed loop: `in_flight` callers, each calling again as soon as its call
/// returns, until `length` has passed; the calls still running then finish.
pub(crate) async fn closed_loop(
    pool: &Pool,
    url: &str,
    kind: Kind,
    in_flight: usize,
    spin_ms: u64,
    length: Duration,
) -> Result<LoopResult> {
    let start = Instant::now();
    let deadline = start + length;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (pool, url) = (pool.clone(), url.to_string());
        set.spawn(async move {
            let (mut calls, mut rounds) = (0u64, 0u64);
            while Instant::now() < deadline {
                match kind {
                    Kind::Spin => {
                        let out = pool
                            .apply::<Spin>(&SpinInput { ms: spin_ms })
                            .await
                            .context("spin")?;
                        rounds += out.iterations;
                    }
                    Kind::Http => get(&pool, &url).await?,
                }
                calls += 1;
            }
            anyhow::Ok((calls, rounds))
        });
    }
    let (mut calls, mut spin_rounds) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (c, r) = r.context("join")??;
        calls += c;
        spin_rounds += r;
    }
    Ok(LoopResult {
        calls,
        wall: start.elapsed(),
        spin_rounds,
    })
}

/// (b) each kind alone, then (c) both at once.
pub(crate) async fn mixed(pool: &Pool, p: &Params, url: &str) -> Result<()> {
    let spin = |len| closed_loop(pool, url, Kind::Spin, p.spin_in_flight, p.spin_ms, len);
    let io = |len| closed_loop(pool, url, Kind::Http, p.io_in_flight, p.spin_ms, len);
    let spin_ideal = p.workers as f64 * 1e3 / p.spin_ms as f64;
    let io_ideal = p.io_in_flight as f64 * 1e3 / p.delay_ms as f64;
    // Warm-up of both kinds.
    spin(Duration::from_millis(100)).await?;
    io(Duration::from_millis(200)).await?;

    let before = cpu_sample(pool, url).await;
    let spin_alone = spin(p.mix).await?;
    let mid = cpu_sample(pool, url).await;
    let io_alone = io(p.mix).await?;
    let after_io = cpu_sample(pool, url).await;
    let (spin_mixed, io_mixed) = tokio::join!(spin(p.mix), io(p.mix));
    let (spin_mixed, io_mixed) = (spin_mixed?, io_mixed?);
    let after = cpu_sample(pool, url).await;

    println!(
        "(b) spin {} ms alone, {} in flight, {:.1} s: {} calls, {:.1} calls/s (ideal {spin_ideal:.0})",
        p.spin_ms,
        p.spin_in_flight,
        spin_alone.wall.as_secs_f64(),
        spin_alone.calls,
        spin_alone.rate()
    );
    report_cpu("mix.spin_alone", before, mid, spin_alone.calls);
    println!(
        "(b) http alone, {} in flight, {:.1} s: {} calls, {:.1} calls/s (ideal {io_ideal:.0})",
        p.io_in_flight,
        io_alone.wall.as_secs_f64(),
        io_alone.calls,
        io_alone.rate()
    );
    let io_cpu_us = report_cpu("mix.io_alone", mid, after_io, io_alone.calls);

    let drop_pct =
        |alone: LoopResult, mixed: LoopResult| (1.0 - mixed.rate() / alone.rate()) * 100.0;
    let (spin_drop, io_drop) = (
        drop_pct(spin_alone, spin_mixed),
        drop_pct(io_alone, io_mixed),
    );
    // A spin call lasts 10 ms of wall time whatever CPU it gets, so its calls/s
    // hides lost CPU; the rounds of arithmetic it did per second do not.
    let work_drop = (1.0 - spin_mixed.rounds_per_s() / spin_alone.rounds_per_s()) * 100.0;
    // What the http calls need for themselves (supervisor, workers, server),
    // in CPUs, and so the most CPU left for the spinning workers.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let io_cpus = io_cpu_us * io_mixed.rate() / 1e6;
    let work_bound = ((cpus - io_cpus) / p.workers as f64).min(1.0);
    println!(
        "(c) both at once, {:.1} s: spin {:.1} calls/s ({spin_drop:+.1} % drop), \
         http {:.1} calls/s ({io_drop:+.1} % drop)",
        spin_mixed.wall.max(io_mixed.wall).as_secs_f64(),
        spin_mixed.rate(),
        io_mixed.rate(),
    );
    println!(
        "    spin CPU work: {:.3e} rounds/s alone, {:.3e} mixed ({work_drop:+.1} % drop); the http \
         calls need {io_cpus:.2} of the {cpus} CPUs, which leaves the spinning workers at most \
         {:.1} % of what they had alone",
        spin_alone.rounds_per_s(),
        spin_mixed.rounds_per_s(),
        work_bound * 100.0
    );
    report_cpu(
        "mix.both",
        after_io,
        after,
        spin_mixed.calls + io_mixed.calls,
    );
    result("mix.spin_ms", p.spin_ms);
    result("mix.spin_in_flight", p.spin_in_flight);
    result("mix.io_in_flight", p.io_in_flight);
    result("mix.secs", format!("{:.1}", p.mix.as_secs_f64()));
    result("mix.spin_ideal_per_s", format!("{spin_ideal:.1}"));
    result("mix.io_ideal_per_s", format!("{io_ideal:.1}"));
    result("mix.spin_alone_per_s", format!("{:.1}", spin_alone.rate()));
    result("mix.io_alone_per_s", format!("{:.1}", io_alone.rate()));
    result("mix.spin_mixed_per_s", format!("{:.1}", spin_mixed.rate()));
    result("mix.io_mixed_per_s", format!("{:.1}", io_mixed.rate()));
    result("mix.spin_drop_pct", format!("{spin_drop:.2}"));
    result("mix.io_drop_pct", format!("{io_drop:.2}"));
    result(
        "mix.spin_rounds_alone_per_s",
        format!("{:.0}", spin_alone.rounds_per_s()),
    );
    result(
        "mix.spin_rounds_mixed_per_s",
        format!("{:.0}", spin_mixed.rounds_per_s()),
    );
    result("mix.spin_work_drop_pct", format!("{work_drop:.2}"));
    result("mix.io_cpus", format!("{io_cpus:.3}"));
    result(
        "mix.spin_work_bound_drop_pct",
        format!("{:.2}", (1.0 - work_bound) * 100.0),
    );
    Ok(())
}
