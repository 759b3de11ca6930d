//! `jobvisor demo`: the pool, doing its job where you can see it.

use std::time::{Duration, Instant};

use anyhow::Context;
use jobvisor_pool::{CallOptions, Pool, PoolError, PoolEvent};
use jobvisor_tasks::{Exec, ExecInput, Noop, Sleep, SleepInput, Spin, SpinInput};

use crate::args::DemoArgs;

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut builder = Pool::builder().start_method(args.start_method);
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let started = Instant::now();
    let pool = builder.build().await.context("starting the pool")?;
    let workers = pool.workers().await;
    println!(
        "pool: {} workers ({}) ready in {:.1?}: pids {:?}",
        workers.len(),
        args.start_method,
        started.elapsed(),
        workers.iter().map(|w| w.pid).collect::<Vec<_>>()
    );

    // 1. Many tiny tasks: the per-task overhead.
    let n = 200_000u64;
    let t = Instant::now();
    let outs = pool.map::<Noop>((0..n).collect(), 1).await?;
    anyhow::ensure!(
        outs.iter().enumerate().all(|(i, &o)| o == i as u64),
        "wrong results"
    );
    let secs = t.elapsed().as_secs_f64();
    println!(
        "1. {n} no-op tasks, one call each: {secs:.2} s, {:.0} tasks/s",
        n as f64 / secs
    );

    // 2. CPU-bound work spread over the cores.
    let tasks = 8 * workers.len() as u64;
    let t = Instant::now();
    pool.map::<Spin>((0..tasks).map(|_| SpinInput { ms: 50 }).collect(), 1)
        .await?;
    let wall = t.elapsed().as_secs_f64();
    let serial = tasks as f64 * 0.050;
    println!(
        "2. {tasks} × 50 ms of CPU: {wall:.2} s wall, speedup {:.2}× on {} workers",
        serial / wall,
        workers.len()
    );

    // 2b. I/O-bound work on the workers' event loops, beside CPU work: a
    //     thousand waits share the workers without taking their CPU threads.
    let per_worker = pool.config().io_concurrency_per_worker;
    let n_io = (2 * per_worker * workers.len()).min(5_000);
    let t = Instant::now();
    let cpu = pool.submit::<Spin>(&SpinInput { ms: 300 }).await?;
    let mut waits = Vec::with_capacity(n_io);
    for _ in 0..n_io {
        waits.push(pool.submit_io::<Sleep>(&SleepInput { ms: 100 }).await?);
    }
    for h in waits {
        h.await?;
    }
    let io_wall = t.elapsed().as_secs_f64();
    cpu.await?;
    let ideal = n_io as f64 * 0.1 / (per_worker * workers.len()) as f64;
    println!(
        "2b. {n_io} async sleeps of 100 ms ({per_worker} at once per worker, beside a 300 ms spin): \
         {io_wall:.2} s wall (ideal {ideal:.2} s; one at a time per process: {:.0} s)",
        n_io as f64 * 0.1 / workers.len() as f64
    );

    // 3. A worker killed in the middle of a task: that task fails, the others
    //    complete, and a replacement starts at once.
    let mut events = pool.events();
    let mut spinners = Vec::new();
    for _ in 0..workers.len() {
        spinners.push(pool.submit::<Spin>(&SpinInput { ms: 30_000 }).await?);
    }
    let mut bystanders = Vec::new();
    for _ in 0..4 {
        bystanders.push(pool.submit::<Spin>(&SpinInput { ms: 20 }).await?);
    }
    // One long spin per worker (dispatch spreads calls over idle workers first).
    // The victim is a worker its beacon shows running one: a worker killed
    // before it starts a call fails nothing (that call simply runs
    // elsewhere), which is not the demo.
    let spin_ids: Vec<u64> = spinners.iter().map(|h| h.id()).collect();
    let victim = loop {
        let running = pool
            .workers()
            .await
            .into_iter()
            .find(|w| w.running.is_some_and(|c| spin_ids.contains(&c)));
        if let Some(w) = running {
            break w.pid;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let killed_at = Instant::now();
    // SAFETY: kill(2) on a pid the pool reported as its live worker.
    unsafe { libc::kill(victim as i32, libc::SIGKILL) };
    let replacement = loop {
        match events.recv().await {
            Ok(PoolEvent::WorkerReady { pid, at, .. }) => break Some((pid, at)),
            Ok(_) => continue,
            Err(_) => break None,
        }
    };
    // The other spins are cancelled (cooperatively: their workers live on).
    for h in &spinners {
        h.cancel().await;
    }
    for h in spinners {
        match h.await {
            Err(e @ PoolError::WorkerDied { .. }) => {
                println!("3. SIGKILL to worker {victim}: its task failed with: {e}")
            }
            Err(PoolError::Cancelled) => {}
            other => println!("3. unexpected outcome of a spin: {other:?}"),
        }
    }
    let mut ok = 0;
    for h in bystanders {
        ok += usize::from(h.await.is_ok());
    }
    if let Some((pid, at)) = replacement {
        println!(
            "   replacement worker {pid} ready {:.2?} after the kill; the 4 tasks queued behind completed: {ok}/4",
            at.duration_since(killed_at)
        );
    }

    // 4. A timeout: the task is stopped, the worker keeps going.
    let opts = CallOptions {
        timeout: Some(Duration::from_millis(200)),
        ..CallOptions::default()
    };
    let h = pool
        .submit_with::<Spin>(&SpinInput { ms: 60_000 }, opts)
        .await?;
    println!(
        "4. a 60 s spin with a 200 ms timeout: {}",
        h.await.err().map_or("finished?".into(), |e| e.to_string())
    );

    // 5. A command, with its output captured.
    let out = pool
        .apply::<Exec>(&ExecInput::new(["uname", "-sr"]))
        .await?;
    println!(
        "5. exec uname -sr: exit {:?}, stdout {:?}",
        out.code,
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let t = Instant::now();
    pool.shutdown().await;
    println!(
        "shut down (drained, every worker reaped) in {:.1?}",
        t.elapsed()
    );
    Ok(())
}
