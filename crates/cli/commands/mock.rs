//! A stand-in daemon on a real Unix socket. Task names decide the fate:
//! `ok` succeeds, `fail` fails, `cancel` is cancelled, `never` stays
//! running, `nope` is an unknown task. A `Wait` with a timeout finishes
//! at most one job; one without finishes all it can.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jobvisor_proto::control::{
    ControlError, ErrorKind, JobRecord, JobState, Payload, Request, Response, Stats, Submitted,
    WorkerRow,
};
use jobvisor_proto::{encode_frame, FrameBuf, Hello, Role, HELLO_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

#[derive(Debug, Default)]
pub struct State {
    pub jobs: BTreeMap<u64, JobRecord>,
    pub requests: Vec<Request>,
}

#[derive(Debug)]
pub struct Mock {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub state: Arc<Mutex<State>>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A fresh temp dir and the socket path in it.
pub fn socket_path(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("jobvisor-cli-mock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("control.sock");
    (dir, sock)
}

/// A mock daemon listening in a fresh temp dir.
pub fn start(name: &str) -> Mock {
    let (dir, sock) = socket_path(name);
    let state = Arc::new(Mutex::new(State::default()));
    serve(UnixListener::bind(&sock).unwrap(), state.clone());
    Mock { dir, sock, state }
}

/// Serves `listener` with `state` on the current runtime.
pub fn serve(listener: UnixListener, state: Arc<Mutex<State>>) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(conn(stream, state.clone()));
        }
    });
}

async fn conn(mut stream: UnixStream, state: Arc<Mutex<State>>) {
    let ours = Hello::ours(Role::Supervisor);
    stream.write_all(&ours.encode()).await.unwrap();
    let mut hello = [0u8; HELLO_BYTES];
    stream.read_exact(&mut hello).await.unwrap();
    let mut rbuf = FrameBuf::new(1 << 20);
    loop {
        while let Some(req) = rbuf.decode_next::<Request>().unwrap() {
            let (resp, hold) = handle(&mut state.lock().unwrap(), req);
            if !hold.is_zero() {
                tokio::time::sleep(hold).await;
            }
            let mut out = Vec::new();
            encode_frame(&mut out, &resp, 1 << 24).unwrap();
            stream.write_all(&out).await.unwrap();
        }
        match stream.read(rbuf.spare()).await {
            Ok(0) | Err(_) => return,
            Ok(n) => rbuf.filled(n),
        }
    }
}

pub(crate) fn record(id: u64, task: &str, input: Payload) -> JobRecord {
    JobRecord {
        id,
        task: task.to_owned(),
        queue: "default".to_owned(),
        priority: 0,
        state: JobState::Queued,
        max_attempts: 3,
        max_crashes: Some(3),
        budget_from: 1,
        epoch: 0,
        timeout_ms: None,
        stall_timeout_ms: None,
        input_from: Vec::new(),
        backoff_base_ms: 1000,
        backoff_max_ms: 60000,
        after: Vec::new(),
        key: None,
        created_ms: 1_700_000_000_000,
        run_at_ms: 1_700_000_000_000,
        finished_ms: None,
        input: Some(input),
        output: None,
        error: None,
        attempts: Vec::new(),
        notify_url: None,
    }
}

fn finish(r: &mut JobRecord) {
    match r.task.as_str() {
        "ok" => {
            r.state = JobState::Succeeded;
            r.output = Some(Payload::Json(r#"{"x":1}"#.to_owned()));
        }
        "fail" => {
            r.state = JobState::Failed;
            r.error = Some("boom".to_owned());
        }
        "cancel" => r.state = JobState::Cancelled,
        _ => {
            r.state = JobState::Running;
            return;
        }
    }
    r.finished_ms = Some(r.created_ms + 1500);
}

fn err(kind: ErrorKind, message: &str) -> Response {
    Response::Error(ControlError {
        kind,
        message: message.to_owned(),
    })
}

/// The answer to `req`, and how long to hold it back: a `Wait` with a
/// timeout that finishes no job is answered when the timeout is up, as the
/// daemon does.
fn handle(st: &mut State, req: Request) -> (Response, Duration) {
    let timed = match &req {
        Request::Wait {
            ids,
            timeout_ms: Some(t),
        } => Some((ids.clone(), Duration::from_millis(*t))),
        _ => None,
    };
    let finished = |st: &State, ids: &[u64]| {
        ids.iter()
            .filter(|id| st.jobs.get(id).is_some_and(|j| j.state.is_terminal()))
            .count()
    };
    let before = timed.as_ref().map(|(ids, _)| finished(st, ids));
    let resp = answer(st, req);
    let hold = match (timed, before) {
        (Some((ids, t)), Some(b)) if finished(st, &ids) == b => t,
        _ => Duration::ZERO,
    };
    (resp, hold)
}

fn answer(st: &mut State, req: Request) -> Response {
    st.requests.push(req.clone());
    match req {
        Request::Submit(specs) => {
            if let Some(s) = specs.iter().find(|s| s.task == "nope") {
                return err(ErrorKind::UnknownTask, &format!("no task `{}`", s.task));
            }
            let mut out = Vec::new();
            for s in specs {
                if let Some(k) = &s.key {
                    if let Some(j) = st.jobs.values().find(|j| j.key.as_ref() == Some(k)) {
                        out.push(Submitted {
                            id: j.id,
                            duplicate: true,
                        });
                        continue;
                    }
                }
                let id = st.jobs.len() as u64 + 1;
                let mut r = record(id, &s.task, s.input);
                r.key = s.key;
                st.jobs.insert(id, r);
                out.push(Submitted {
                    id,
                    duplicate: false,
                });
            }
            Response::Submitted(out)
        }
        Request::Status { id } => match st.jobs.get(&id) {
            Some(j) => Response::Job(Box::new(j.clone())),
            None => err(ErrorKind::NotFound, &format!("no job {id}")),
        },
        Request::Wait { ids, timeout_ms } => {
            if let Some(id) = ids.iter().find(|id| !st.jobs.contains_key(id)) {
                return err(ErrorKind::NotFound, &format!("no job {id}"));
            }
            let mut budget = if timeout_ms.is_some() { 1 } else { usize::MAX };
            for id in &ids {
                let j = st.jobs.get_mut(id).unwrap();
                if budget > 0 && !j.state.is_terminal() && j.task != "never" {
                    finish(j);
                    budget -= 1;
                } else if j.task == "never" {
                    j.state = JobState::Running;
                }
            }
            Response::Jobs(ids.iter().map(|id| st.jobs[id].clone()).collect())
        }
        Request::Retry { id } => match st.jobs.get_mut(&id) {
            Some(j) => {
                j.state = JobState::Retrying;
                Response::Ok
            }
            None => err(ErrorKind::NotFound, &format!("no job {id}")),
        },
        Request::Cancel { id } => match st.jobs.get_mut(&id) {
            Some(j) => {
                j.state = JobState::Cancelled;
                Response::Ok
            }
            None => err(ErrorKind::NotFound, &format!("no job {id}")),
        },
        Request::List { .. } => Response::Jobs(st.jobs.values().rev().cloned().collect()),
        Request::Workers => Response::Workers(vec![WorkerRow {
            id: 1,
            pid: 4242,
            state: jobvisor_proto::control::WorkerState::Ready,
            in_flight: 0,
            calls_done: 9,
            running_job: None,
        }]),
        Request::Stats => Response::Stats(Stats {
            pid: 4242,
            uptime_s: 3723,
            workers: 1,
            jobs: vec![("queued".to_owned(), 1)],
            submitted: 1,
            attempts_finished: 0,
            worker_restarts: 0,
            recovered: 0,
            degraded: false,
            restart_delay_ms: 0,
            tasks: Vec::new(),
            notify_delivered: 0,
            notify_failed: 0,
            notify_dropped: 0,
        }),
        Request::Events { .. } => err(ErrorKind::BadRequest, "not in this mock"),
        Request::Ping => Response::Pong {
            pid: 4242,
            version: "test".to_owned(),
        },
        Request::Shutdown { .. } => Response::Ok,
    }
}
