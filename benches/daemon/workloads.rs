//! The workloads (`seq`, `batch`, `conc`, `lat`, `exec`, `e2e`, `fsync`):
//! each measures, prints its human line and where the CPU went, and records
//! its figures.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use jobvisor_client::{Client, JobSpec};

use crate::cpu::{children_cpu, Cpu};
use crate::daemon::Daemon;
use crate::jobs::{check, exec_true, last_ended, noop, submit_batched, unix_ms, wait_all};
use crate::report::Results;
use crate::{Params, BATCH, CONNECTIONS, WAIT_CHUNK};

pub(crate) fn pct(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) async fn seq_submits(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.seq_submits;
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let mut lat = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let s = c.submit(vec![noop(i)]).await?;
        lat.push(t.elapsed());
        ids.push(s[0].id);
    }
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    wait_all(&mut c, &ids).await?;
    let what = format!("{n} submits of 1 job, sequential, one connection");
    let keys = ("seq", "seq_submits_per_s", "seq_ack_p50_ms");
    report_submits(keys, &what, n, el, lat, (&before, &after), r);
    Ok(())
}

/// Prints and records a run of single-job submits: rate and ack latency.
pub(crate) fn report_submits(
    (key, rate_key, p50_key): (&str, &'static str, &'static str),
    what: &str,
    n: usize,
    el: Duration,
    mut lat: Vec<Duration>,
    (before, after): (&Cpu, &Cpu),
    r: &mut Results,
) {
    lat.sort();
    println!(
        "{key}: {what}: {:.2} s, {:.0} jobs/s; ack p50 {:.3} ms p99 {:.3} ms",
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
    );
    println!("  {}", after.since(before, el));
    r.mark(before, after, el);
    r.add(rate_key, n as f64 / el.as_secs_f64());
    r.add(p50_key, ms(pct(&lat, 0.5)));
}

pub(crate) async fn batch_submits(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.batch_jobs;
    let specs: Vec<JobSpec> = (0..n).map(noop).collect();
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let t0_unix = unix_ms();
    let t0 = Instant::now();
    let ids = submit_batched(&mut c, specs).await?;
    let el = t0.elapsed();
    let mid = Cpu::take(d).await;
    let last = last_ended(t0_unix, wait_all(&mut c, &ids).await?);
    let all = t0.elapsed();
    let after = Cpu::take(d).await;
    println!(
        "batch: {n} jobs in requests of {BATCH}: accepted in {:.2} s, {:.0} jobs/s; all finished after {:.2} s, {:.0} jobs/s end to end",
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64(),
        all.as_secs_f64(),
        n as f64 / all.as_secs_f64(),
    );
    println!(
        "  the daemon ended the last job {:.2} s after the first submit ({:.0} jobs/s); the waits returned {:.2} s later",
        last.as_secs_f64(),
        n as f64 / last.as_secs_f64().max(1e-3),
        (all.saturating_sub(last)).as_secs_f64()
    );
    println!("  submitting: {}", mid.since(&before, el));
    println!("  whole:      {}", after.since(&before, all));
    r.mark(&before, &mid, el);
    r.add("batch_submits_per_s", n as f64 / el.as_secs_f64());
    r.mark(&before, &after, all);
    r.add("batch_e2e_per_s", n as f64 / all.as_secs_f64());
    Ok(())
}

pub(crate) async fn conc_submits(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.conc_jobs;
    let per = n / CONNECTIONS;
    let n = per * CONNECTIONS;
    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(Client::connect(&d.socket).await?);
    }
    let before = Cpu::take(d).await;
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (k, mut c) in clients.into_iter().enumerate() {
        set.spawn(async move {
            let mut ids = Vec::with_capacity(per);
            let mut lat = Vec::with_capacity(per);
            for i in 0..per {
                let t = Instant::now();
                let s = c.submit(vec![noop(k * per + i)]).await?;
                lat.push(t.elapsed());
                ids.push(s[0].id);
            }
            Ok::<_, anyhow::Error>((ids, lat))
        });
    }
    let mut ids = Vec::with_capacity(n);
    let mut lat = Vec::with_capacity(n);
    while let Some(res) = set.join_next().await {
        let (i, l) = res??;
        ids.extend(i);
        lat.extend(l);
    }
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    let mut c = Client::connect(&d.socket).await?;
    wait_all(&mut c, &ids).await?;
    let what = format!("{n} submits of 1 job from {CONNECTIONS} connections");
    let keys = ("conc", "conc_submits_per_s", "conc_ack_p50_ms");
    report_submits(keys, &what, n, el, lat, (&before, &after), r);
    Ok(())
}

pub(crate) async fn latency(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.lat_jobs;
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let mut total = Vec::with_capacity(n);
    let mut submit = Vec::with_capacity(n);
    let mut wait = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let id = c.submit(vec![noop(i)]).await?[0].id;
        let acked = t.elapsed();
        let recs = c.wait(vec![id], None).await?;
        let done = t.elapsed();
        check(&recs[0])?;
        total.push(done);
        submit.push(acked);
        wait.push(done - acked);
    }
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    total.sort();
    submit.sort();
    wait.sort();
    println!(
        "lat: {n} no-op jobs, submit then wait, sequential: p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms \
         (submit ack p50 {:.3} ms p99 {:.3} ms; wait p50 {:.3} ms p99 {:.3} ms)",
        ms(pct(&total, 0.5)),
        ms(pct(&total, 0.99)),
        ms(el) / n as f64,
        ms(pct(&submit, 0.5)),
        ms(pct(&submit, 0.99)),
        ms(pct(&wait, 0.5)),
        ms(pct(&wait, 0.99)),
    );
    println!("  {}", after.since(&before, el));
    r.mark(&before, &after, el);
    r.add("lat_p50_ms", ms(pct(&total, 0.5)));
    r.add("lat_p99_ms", ms(pct(&total, 0.99)));
    r.add("lat_submit_p50_ms", ms(pct(&submit, 0.5)));
    r.add("lat_wait_p50_ms", ms(pct(&wait, 0.5)));
    Ok(())
}

/// Submits `specs` in batches, waits for all; returns the wall time and how
/// long a second `Wait` for all of them (all finished by then) took.
pub(crate) async fn run_all(
    d: &Daemon,
    specs: Vec<JobSpec>,
    label: &str,
    r: &mut Results,
) -> Result<(Duration, Duration)> {
    let n = specs.len();
    let mut c = Client::connect(&d.socket).await?;
    let before = Cpu::take(d).await;
    let t0_unix = unix_ms();
    let t0 = Instant::now();
    let ids = submit_batched(&mut c, specs).await?;
    let sub = t0.elapsed();
    let last = last_ended(t0_unix, wait_all(&mut c, &ids).await?);
    let el = t0.elapsed();
    let after = Cpu::take(d).await;
    println!(
        "{label}: {n} jobs: submitted in {:.2} s, all finished after {:.2} s: {:.0} jobs/s",
        sub.as_secs_f64(),
        el.as_secs_f64(),
        n as f64 / el.as_secs_f64()
    );
    println!(
        "  the daemon ended the last job {:.2} s after the first submit ({:.0} jobs/s); the waits returned {:.2} s later",
        last.as_secs_f64(),
        n as f64 / last.as_secs_f64().max(1e-3),
        (el.saturating_sub(last)).as_secs_f64()
    );
    println!("  {}", after.since(&before, el));
    r.mark(&before, &after, el);
    // The cost of answering waits alone: every job is finished now.
    let t = Instant::now();
    wait_all(&mut c, &ids).await?;
    let rewait = t.elapsed();
    println!(
        "  waiting again for the {n} finished jobs ({} requests of at most {WAIT_CHUNK} ids): {:.3} s",
        n.div_ceil(WAIT_CHUNK),
        rewait.as_secs_f64()
    );
    Ok((el, rewait))
}

/// Runs a shell pipeline; its wall time, or None when `needs` is missing.
pub(crate) fn anchor(script: &str, needs: &str) -> Result<Option<Duration>> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {needs}"))
        .stdout(Stdio::null())
        .status()?
        .success();
    if !found {
        println!("anchor: {needs} is not installed; skipped");
        return Ok(None);
    }
    let kids = children_cpu();
    let t0 = Instant::now();
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let el = t0.elapsed();
    if !out.status.success() {
        bail!(
            "`{script}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "anchor: `{script}`: {:.2} s, cpu {:.2} s",
        el.as_secs_f64(),
        children_cpu() - kids
    );
    Ok(Some(el))
}

pub(crate) async fn exec_vs_anchors(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.exec_jobs;
    let w = p.workers;
    let (el, _) = run_all(d, (0..n).map(|_| exec_true()).collect(), "exec true", r).await?;
    r.add("exec_jobvisor_per_s", n as f64 / el.as_secs_f64());
    let before = Cpu::take(d).await;
    if let Some(el) = anchor(&format!("seq {n} | xargs -P {w} -n 1 true"), "xargs")? {
        r.mark(&before, &Cpu::take(d).await, el);
        r.add("exec_xargs_per_s", n as f64 / el.as_secs_f64());
    }
    let before = Cpu::take(d).await;
    if let Some(el) = anchor(&format!("seq {n} | parallel -j {w} true"), "parallel")? {
        r.mark(&before, &Cpu::take(d).await, el);
        r.add("exec_parallel_per_s", n as f64 / el.as_secs_f64());
    }
    Ok(())
}

pub(crate) async fn e2e(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let n = p.e2e_jobs;
    let (el, rewait) = run_all(d, (0..n).map(noop).collect(), "e2e no-op", r).await?;
    r.add("e2e_per_s", n as f64 / el.as_secs_f64());
    r.add("e2e_rewait_s", rewait.as_secs_f64());
    Ok(())
}

/// The disk's floor: 4 KiB written (in place, then appended) and fdatasync'd.
pub(crate) fn fsync_floor(p: &Params, d: &Daemon, r: &mut Results) -> Result<()> {
    let path = d.scratch_dir().join("fsync-probe");
    let f = File::create(&path)?;
    let buf = vec![7u8; 4096];
    let mut inplace = Vec::with_capacity(p.fsyncs);
    let mut append = Vec::with_capacity(p.fsyncs);
    f.write_all_at(&buf, 0)?;
    f.sync_all()?;
    for i in 0..p.fsyncs {
        let t = Instant::now();
        f.write_all_at(&buf, 0)?;
        f.sync_data()?;
        inplace.push(t.elapsed());
        let t = Instant::now();
        f.write_all_at(&buf, 4096 * (i as u64 + 1))?;
        f.sync_data()?;
        append.push(t.elapsed());
    }
    drop(f);
    let _ = std::fs::remove_file(&path);
    inplace.sort();
    append.sort();
    println!(
        "fsync: 4 KiB write + fdatasync in {}: in place p50 {:.3} ms p99 {:.3} ms; appending p50 {:.3} ms p99 {:.3} ms",
        d.scratch_dir().display(),
        ms(pct(&inplace, 0.5)),
        ms(pct(&inplace, 0.99)),
        ms(pct(&append, 0.5)),
        ms(pct(&append, 0.99)),
    );
    r.disturbed = false;
    r.add("fsync_inplace_p50_ms", ms(pct(&inplace, 0.5)));
    r.add("fsync_append_p50_ms", ms(pct(&append, 0.5)));
    Ok(())
}
