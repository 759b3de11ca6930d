//! What the tests share: the imports every test module uses, pools built the
//! ways the tests need, and helpers that wait for or inspect workers.

pub(crate) use std::collections::HashSet;
pub(crate) use std::time::Duration;

pub(crate) use jobvisor_pool::{
    AsyncCtx, AsyncTask, CallOptions, Ctx, FailureKind, Pool, PoolError, PoolEvent, Registry,
    StartMethod, Task, TaskError,
};
pub(crate) use jobvisor_tasks::{Noop, Sleep, SleepInput, Spin, SpinInput};
pub(crate) use serde::{Deserialize, Serialize};
pub(crate) use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) use crate::helper;

// ---- helpers ---------------------------------------------------------------

pub(crate) async fn pool(method: StartMethod, workers: usize) -> Pool {
    Pool::builder()
        .workers(workers)
        .start_method(method)
        .build()
        .await
        .expect("pool starts")
}

/// One worker, with the settings `knobs` adds.
pub(crate) async fn one_worker_pool(
    method: StartMethod,
    knobs: impl FnOnce(jobvisor_pool::PoolBuilder) -> jobvisor_pool::PoolBuilder,
) -> Pool {
    knobs(Pool::builder().workers(1).start_method(method))
        .build()
        .await
        .expect("pool starts")
}

/// One worker, with a grace before SIGTERM that a loaded machine cannot run
/// out of: for tests of tasks that stop when told (a task that did not would
/// still lose its worker, 5 s later).
pub(crate) async fn patient_pool(method: StartMethod) -> Pool {
    one_worker_pool(method, |b| b.cancel_grace(Duration::from_secs(5))).await
}

/// One worker, with short grace periods before SIGTERM and SIGKILL.
pub(crate) async fn quick_kill_pool(method: StartMethod) -> Pool {
    one_worker_pool(method, |b| {
        b.cancel_grace(Duration::from_millis(50))
            .term_grace(Duration::from_millis(200))
    })
    .await
}

/// One worker recycled once its resident set passes 64 MiB.
pub(crate) async fn soft_limit_pool(method: StartMethod) -> Pool {
    one_worker_pool(method, |b| b.memory_soft_limit_bytes(64 << 20)).await
}

pub(crate) async fn next_ready(events: &mut tokio::sync::broadcast::Receiver<PoolEvent>) -> u32 {
    loop {
        match events.recv().await.expect("events") {
            PoolEvent::WorkerReady { pid, .. } => return pid,
            _ => continue,
        }
    }
}

pub(crate) async fn assert_no_zombies() {
    let z = helper::zombie_children();
    assert!(z.is_empty(), "zombie children: {z:?}");
}

/// Waits until a worker's beacon shows call `id` running; its pid.
pub(crate) async fn running_on(pool: &Pool, id: u64) -> u32 {
    loop {
        if let Some(w) = pool.workers().await.iter().find(|w| w.running == Some(id)) {
            return w.pid;
        }
        tokio::task::yield_now().await;
    }
}

/// The codec's encoding of an input, as `submit` produces it.
pub(crate) fn jobvisor_proto_input<T: Serialize>(v: &T) -> Vec<u8> {
    jobvisor_proto::codec::encode(v).expect("encode")
}

pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14..17 of stat, 12..15 after the ')'.
    let ticks: f64 = f.get(11..15).map_or(0.0, |v| {
        v.iter().filter_map(|x| x.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

// ---- async calls on the workers' event loops --------------------------------

/// A connection from an async test task: its tag and its worker's pid.
pub(crate) struct Met {
    pub(crate) tag: u8,
    pub(crate) pid: u32,
    pub(crate) stream: tokio::net::TcpStream,
}

pub(crate) async fn accept_met(listener: &tokio::net::TcpListener) -> Met {
    try_accept_met(listener)
        .await
        .expect("the async call says hello before it goes")
}

/// The next connection, or `None` when it closed before its hello: its
/// worker was killed between `connect` and `write`.
pub(crate) async fn try_accept_met(listener: &tokio::net::TcpListener) -> Option<Met> {
    let (mut stream, _) = tokio::time::timeout(Duration::from_secs(60), listener.accept())
        .await
        .expect("an async call connects within 60 s")
        .unwrap();
    let mut hello = [0u8; 5];
    match stream.read_exact(&mut hello).await {
        Ok(_) => Some(Met {
            tag: hello[0],
            pid: u32::from_le_bytes([hello[1], hello[2], hello[3], hello[4]]),
            stream,
        }),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(e) => panic!("reading an async call's hello: {e}"),
    }
}

pub(crate) async fn loopback() -> (tokio::net::TcpListener, u16) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Answers every async test task that connects, on any worker, until
/// aborted; says who connected (tag, worker pid) on the channel.
pub(crate) fn answer_everyone(
    listener: tokio::net::TcpListener,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::mpsc::UnboundedReceiver<(u8, u32)>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            // Tests here kill workers: a caller may die before its hello.
            let Some(mut m) = try_accept_met(&listener).await else {
                continue;
            };
            let _ = tx.send((m.tag, m.pid));
            let _ = m.stream.write_all(b"x").await;
            held.push(m);
        }
    });
    (acceptor, rx)
}

/// The pid and exit status of a call that failed with `WorkerDied`.
pub(crate) fn died<T: std::fmt::Debug>(
    r: Result<T, PoolError>,
) -> (u32, jobvisor_pool::ExitStatus) {
    match r {
        Err(PoolError::WorkerDied { pid, status, .. }) => (pid, status),
        other => panic!("expected WorkerDied, got {other:?}"),
    }
}
