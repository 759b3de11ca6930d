//! A client connection that survives daemon restarts, and the calls the
//! driver makes through it (submit, wait until terminal, wait for a whole
//! pool): a connection error waits for the next daemon instead of failing,
//! unless no kill explains it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jobvisor_client::{Client, ClientError, ErrorKind, JobRecord, JobSpec, Submitted};

use super::shared::Shared;

pub(super) fn is_connection_error(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Unreachable { .. }
            | ClientError::Io(_)
            | ClientError::Frame(_)
            | ClientError::Handshake(_)
    )
}

/// A client connection that survives daemon restarts.
pub(super) struct Conn<'a> {
    pub(super) shared: &'a Shared,
    pub(super) client: Option<Client>,
    pub(super) gen: u64,
}

impl<'a> Conn<'a> {
    pub(super) fn new(shared: &'a Shared) -> Self {
        Self {
            shared,
            client: None,
            gen: 0,
        }
    }

    pub(super) async fn get(&mut self) -> &mut Client {
        while self.client.is_none() {
            let gen = self.shared.wait_up();
            match Client::connect(&self.shared.env.socket).await {
                Ok(c) => {
                    self.client = Some(c);
                    self.gen = gen;
                }
                Err(e) => self.shared.wait_newer(gen, &e),
            }
        }
        self.client.as_mut().expect("connected")
    }

    pub(super) fn broken(&mut self, e: &ClientError) {
        self.client = None;
        self.shared.wait_newer(self.gen, e);
    }
}

pub(super) async fn submit(conn: &mut Conn<'_>, specs: &[JobSpec]) -> Vec<Submitted> {
    loop {
        match conn.get().await.submit(specs.to_vec()).await {
            Ok(v) => {
                assert_eq!(v.len(), specs.len(), "one answer per job");
                return v;
            }
            Err(e) if is_connection_error(&e) => conn.broken(&e),
            Err(e) => panic!("the daemon refused a submit: {e}"),
        }
    }
}

/// Waits until every job is terminal. Returns the terminal records, and the
/// ids of jobs the daemon does not know (lost).
pub(super) async fn wait_terminal(
    conn: &mut Conn<'_>,
    ids: &[u64],
    deadline: Instant,
) -> Result<(HashMap<u64, JobRecord>, Vec<u64>), Vec<JobRecord>> {
    let mut done: HashMap<u64, JobRecord> = HashMap::with_capacity(ids.len());
    let mut missing = Vec::new();
    let mut pending: Vec<u64> = ids.to_vec();
    while !pending.is_empty() {
        if Instant::now() >= deadline {
            let mut stuck = Vec::new();
            for id in pending.iter().take(20) {
                if let Ok(r) = conn.get().await.status(*id).await {
                    stuck.push(r);
                }
            }
            return Err(stuck);
        }
        for chunk in pending.chunks(1000) {
            let c = conn.get().await;
            match c.wait(chunk.to_vec(), Some(Duration::from_secs(5))).await {
                Ok(recs) => {
                    for r in recs {
                        if r.state.is_terminal() {
                            done.insert(r.id, r);
                        }
                    }
                }
                Err(ClientError::Server(e)) if e.kind == ErrorKind::NotFound => {
                    // Which one? Ask one by one.
                    for id in chunk {
                        match c.status(*id).await {
                            Err(ClientError::Server(e)) if e.kind == ErrorKind::NotFound => {
                                missing.push(*id)
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) if is_connection_error(&e) => {
                    conn.broken(&e);
                    break;
                }
                Err(e) => panic!("wait failed: {e}"),
            }
        }
        pending.retain(|id| !done.contains_key(id) && !missing.contains(id));
    }
    Ok((done, missing))
}

/// Waits (bounded) until the pool has all its workers, alive and ready.
pub(super) async fn settle_pool(conn: &mut Conn<'_>, workers: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match conn.get().await.workers().await {
            Ok(rows)
                if rows.len() == workers && rows.iter().all(|w| w.state.as_str() == "ready") =>
            {
                return
            }
            Ok(rows) => assert!(
                Instant::now() < deadline,
                "the pool did not settle: {rows:?}"
            ),
            Err(e) if is_connection_error(&e) => conn.broken(&e),
            Err(e) => panic!("workers failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
