//! The routes of the HTTP API, who may call each, and its JSON errors.
//!
//! | route | role |
//! |---|---|
//! | `GET /healthz` | none: the process answers |
//! | `GET /readyz` | none: the scheduler and the store answer |
//! | `GET /v1/jobs`, `/v1/jobs/{id}`, `/v1/jobs/{id}/wait`, `/v1/jobs/{id}/result`, `/v1/workers`, `/v1/stats`, `/v1/events` | `read` |
//! | `POST /v1/jobs`, `/v1/jobs/{id}/cancel`, `/v1/jobs/{id}/retry` | `submit` |
//! | `POST /v1/shutdown` | `admin` |
//!
//! The caller is checked (token, then role) before the body is read. Errors
//! are `{"error": {"code", "message"}}` with the status their kind calls for.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jobvisor_proto::control::{self, ErrorKind, JobState, Request as Req};
use jobvisor_proto::json;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::access::{Role, Tokens};
use crate::audit::Caller;
use crate::server::{handle, ServerCtx};

/// What every handler shares.
pub(super) struct State {
    pub(super) ctx: ServerCtx,
    pub(super) tokens: Arc<Tokens>,
    pub(super) stopping: watch::Receiver<bool>,
}

type Shared = Arc<State>;

/// The caller passed with reads, which are not audited.
const READER: Caller = Caller::Http { token: None };
type Answer = Result<Response, ApiError>;

/// Longest `GET /v1/jobs` page.
const MAX_PAGE: u32 = 10_000;
/// `GET /v1/jobs` page without `limit`.
const DEFAULT_PAGE: u32 = 50;
/// `wait` without `timeout`.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The routes, their limits and the caller check.
pub(super) fn router(state: State) -> Router {
    let http = state.ctx.cfg.http.clone();
    let state = Arc::new(state);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/jobs", post(submit).get(list))
        .route("/v1/jobs/{id}", get(status))
        .route("/v1/jobs/{id}/wait", get(wait))
        .route("/v1/jobs/{id}/result", get(result))
        .route("/v1/jobs/{id}/cancel", post(cancel))
        .route("/v1/jobs/{id}/retry", post(retry))
        .route("/v1/workers", get(workers))
        .route("/v1/stats", get(stats))
        .route("/v1/events", get(events))
        .route("/v1/shutdown", post(shutdown))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(http.max_body_bytes))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            Duration::from_millis(http.request_timeout_ms),
        ))
        .with_state(state)
}

/// The role a route needs; `None`: anyone.
fn role_for(method: &Method, path: &str) -> Option<Role> {
    match (method, path) {
        (_, "/healthz" | "/readyz") => None,
        (&Method::POST, "/v1/shutdown") => Some(Role::Admin),
        (&Method::GET | &Method::HEAD, _) => Some(Role::Read),
        _ => Some(Role::Submit),
    }
}

/// Checks the bearer token and its role before anything else of the
/// request (its body included) is read.
async fn authorize(
    axum::extract::State(s): axum::extract::State<Shared>,
    req: Request,
    next: Next,
) -> Response {
    let Some(needed) = role_for(req.method(), req.uri().path()) else {
        return next.run(req).await;
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized("no bearer token (Authorization: Bearer TOKEN)")
            .into_response();
    };
    let target = json!(format!("{} {}", req.method(), req.uri().path()));
    let Some((name, role)) = s.tokens.check(presented) else {
        tracing::warn!(path = %req.uri().path(), "http: unknown token refused");
        let who = Caller::Http { token: None };
        s.ctx
            .audit
            .record(&who, "auth", target, Err("unknown token"));
        return ApiError::unauthorized("unknown token").into_response();
    };
    if role < needed {
        tracing::warn!(token = name, %role, %needed, path = %req.uri().path(), "http: role too low");
        let message = format!(
            "token {name:?} has the role {role}; {} {} needs {needed}",
            req.method(),
            req.uri().path()
        );
        let who = Caller::Http {
            token: Some(name.to_string()),
        };
        s.ctx
            .audit
            .record(&who, "auth", target, Err(message.as_str()));
        return ApiError::new(StatusCode::FORBIDDEN, "permission_denied", message).into_response();
    }
    if req.method() == Method::POST {
        tracing::info!(token = name, method = %req.method(), path = %req.uri().path(), "http request");
    }
    let mut req = req;
    req.extensions_mut().insert(Caller::Http {
        token: Some(name.to_string()),
    });
    next.run(req).await
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// Ready: not stopping, the scheduler answers, the store reads.
async fn readyz(axum::extract::State(s): axum::extract::State<Shared>) -> Answer {
    if *s.stopping.borrow() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the daemon is shutting down",
        ));
    }
    match handle(Req::Stats, &s.ctx, &READER).await {
        control::Response::Stats(_) => {}
        other => return Err(ApiError::from_response(other)),
    }
    if let Err(e) = s.ctx.store.get(0).await {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage",
            crate::errors::chain(&e),
        ));
    }
    Ok(Json(json!({ "status": "ready" })).into_response())
}

/// `POST /v1/jobs`: one spec, or `{"jobs": [...]}` all or nothing.
async fn submit(
    axum::extract::State(s): axum::extract::State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    body: Result<Bytes, BytesRejection>,
) -> Answer {
    let body = read_body(body)?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let (specs, batch) = match value.get("jobs") {
        Some(Value::Array(items)) => {
            let specs = items
                .iter()
                .enumerate()
                .map(|(i, v)| json::spec::job_spec(v).map_err(|e| format!("jobs[{i}]: {e}")))
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApiError::bad_request)?;
            (specs, true)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "field `jobs` must be an array of job specs",
            ))
        }
        None => (
            vec![json::spec::job_spec(&value).map_err(ApiError::bad_request)?],
            false,
        ),
    };
    match handle(Req::Submit(specs), &s.ctx, &caller).await {
        control::Response::Submitted(v) => {
            let jobs: Vec<json::Submitted> = v.iter().map(json::Submitted::from).collect();
            let body = if batch {
                json!({ "jobs": jobs })
            } else {
                serde_json::to_value(jobs[0]).unwrap_or(Value::Null)
            };
            Ok((StatusCode::CREATED, Json(body)).into_response())
        }
        other => Err(ApiError::from_response(other)),
    }
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    queue: Option<String>,
    limit: Option<u32>,
    before: Option<u64>,
}

/// `GET /v1/jobs`: newest first; `next_before` is the cursor of the next
/// page (`?before=`), `null` on the last.
async fn list(
    axum::extract::State(s): axum::extract::State<Shared>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let state = match q.state.as_deref() {
        None => None,
        Some(name) => Some(JobState::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!(
                "state: unknown {name:?} (queued, running, retrying, succeeded, failed, cancelled, dead)"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {MAX_PAGE}"
        )));
    }
    let req = Req::List {
        state,
        queue: q.queue,
        before: q.before,
        limit,
    };
    match handle(req, &s.ctx, &READER).await {
        control::Response::Jobs(v) => {
            let next = (v.len() == limit as usize)
                .then(|| v.last().map(|r| r.id))
                .flatten();
            let jobs: Vec<json::Job> = v.iter().map(json::Job::from).collect();
            Ok(Json(json!({ "jobs": jobs, "next_before": next })).into_response())
        }
        other => Err(ApiError::from_response(other)),
    }
}

/// A job id from the path.
fn job_id(p: Result<Path<u64>, axum::extract::rejection::PathRejection>) -> Result<u64, ApiError> {
    p.map(|Path(id)| id)
        .map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "a job id is a number"))
}

type IdPath = Result<Path<u64>, axum::extract::rejection::PathRejection>;

/// `GET /v1/jobs/{id}`.
async fn status(axum::extract::State(s): axum::extract::State<Shared>, id: IdPath) -> Answer {
    let id = job_id(id)?;
    match handle(Req::Status { id }, &s.ctx, &READER).await {
        control::Response::Job(r) => Ok(Json(json::Job::from(r.as_ref())).into_response()),
        other => Err(ApiError::from_response(other)),
    }
}

/// Query of `wait`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    timeout: Option<String>,
}

/// `GET /v1/jobs/{id}/wait?timeout=30s`: the record once the job has
/// finished, or as it is when the timeout (at most `http.max_wait_ms`) passes.
async fn wait(
    axum::extract::State(s): axum::extract::State<Shared>,
    id: IdPath,
    q: Result<Query<WaitQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let id = job_id(id)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let timeout = match q.timeout.as_deref() {
        None => DEFAULT_WAIT,
        Some(t) => jobvisor_proto::duration::parse_duration(t)
            .map_err(|e| ApiError::bad_request(format!("timeout: {e}")))?,
    };
    let max = Duration::from_millis(s.ctx.cfg.http.max_wait_ms);
    let timeout_ms = u64::try_from(timeout.min(max).as_millis()).unwrap_or(u64::MAX);
    let req = Req::Wait {
        ids: vec![id],
        timeout_ms: Some(timeout_ms),
    };
    match handle(req, &s.ctx, &READER).await {
        control::Response::Jobs(v) => match v.first() {
            Some(r) => Ok(Json(json::Job::from(r)).into_response()),
            None => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no job {id}"),
            )),
        },
        other => Err(ApiError::from_response(other)),
    }
}

/// `GET /v1/jobs/{id}/result`: `{"id", "state", "output", "error"}` of a
/// finished job; `409` while it is not finished.
async fn result(axum::extract::State(s): axum::extract::State<Shared>, id: IdPath) -> Answer {
    let id = job_id(id)?;
    let r = match handle(Req::Status { id }, &s.ctx, &READER).await {
        control::Response::Job(r) => r,
        other => return Err(ApiError::from_response(other)),
    };
    if !r.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("job {id} is {}, not finished", r.state.as_str()),
        ));
    }
    Ok(Json(json!({
        "id": r.id,
        "state": json::JobState::from(r.state),
        "output": r.output.as_ref().map_or(Value::Null, json::payload_json),
        "error": r.error,
    }))
    .into_response())
}

/// `POST /v1/jobs/{id}/cancel`.
async fn cancel(
    axum::extract::State(s): axum::extract::State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    id: IdPath,
) -> Answer {
    let id = job_id(id)?;
    match handle(Req::Cancel { id }, &s.ctx, &caller).await {
        control::Response::Ok => Ok(Json(json!({ "id": id, "cancelled": true })).into_response()),
        other => Err(ApiError::from_response(other)),
    }
}

/// `POST /v1/jobs/{id}/retry`.
async fn retry(
    axum::extract::State(s): axum::extract::State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    id: IdPath,
) -> Answer {
    let id = job_id(id)?;
    match handle(Req::Retry { id }, &s.ctx, &caller).await {
        control::Response::Ok => Ok(Json(json!({ "id": id, "state": "queued" })).into_response()),
        other => Err(ApiError::from_response(other)),
    }
}

/// `GET /v1/workers`.
async fn workers(axum::extract::State(s): axum::extract::State<Shared>) -> Answer {
    match handle(Req::Workers, &s.ctx, &READER).await {
        control::Response::Workers(v) => {
            let v: Vec<json::Worker> = v.iter().map(json::Worker::from).collect();
            Ok(Json(json!({ "workers": v })).into_response())
        }
        other => Err(ApiError::from_response(other)),
    }
}

/// `GET /v1/stats`.
async fn stats(axum::extract::State(s): axum::extract::State<Shared>) -> Answer {
    match handle(Req::Stats, &s.ctx, &READER).await {
        control::Response::Stats(st) => Ok(Json(json::Stats::from(&st)).into_response()),
        other => Err(ApiError::from_response(other)),
    }
}

/// `GET /v1/events`: server-sent events, each `id: <run>-<seq>`, `event:
/// <kind>` and `data:` the event's public JSON. The kept history first (or,
/// with `Last-Event-ID` of this run, what followed that event, and a
/// `lagged` event counting what is no longer kept), then live events until
/// the client goes; a comment every 15 s keeps proxies from closing it.
async fn events(
    axum::extract::State(s): axum::extract::State<Shared>,
    headers: HeaderMap,
) -> Response {
    use axum::response::sse::{Event as Sse, KeepAlive};
    use tokio::sync::broadcast::error::RecvError;
    let run = s.ctx.events.run();
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once('-'))
        .and_then(|(r, q)| Some((r.parse::<u64>().ok()?, q.parse::<u64>().ok()?)))
        // An id of an earlier run says nothing of this one's events.
        .and_then(|(r, q)| (r == run).then_some(q));
    let (past, missed, rx) = s.ctx.events.subscribe_after(last);
    let frame = move |seq: u64, ev: &control::Event| {
        let ev = json::Event::from(ev);
        let kind = serde_json::to_value(&ev)
            .ok()
            .and_then(|v| v["kind"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "event".into());
        Sse::default()
            .id(format!("{run}-{seq}"))
            .event(kind)
            .json_data(&ev)
            .unwrap_or_else(|_| Sse::default().comment("unencodable event"))
    };
    let mut first = Vec::new();
    if last.is_some() && missed > 0 {
        let lagged = control::Event {
            at_ms: crate::scheduler::now_ms(),
            kind: control::EventKind::Lagged { missed },
        };
        first.push(frame(past.first().map_or(0, |(q, _)| q - 1), &lagged));
    }
    first.extend(past.iter().map(|(seq, ev)| frame(*seq, ev)));
    let past = futures_util::stream::iter(first.into_iter().map(Ok::<_, std::convert::Infallible>));
    let live = futures_util::stream::unfold(rx, move |mut rx| async move {
        let item = match rx.recv().await {
            Ok((seq, ev)) => frame(seq, &ev),
            Err(RecvError::Lagged(missed)) => frame(
                0,
                &control::Event {
                    at_ms: crate::scheduler::now_ms(),
                    kind: control::EventKind::Lagged { missed },
                },
            ),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(item), rx))
    });
    use futures_util::StreamExt;
    axum::response::sse::Sse::new(past.chain(live))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Query of `shutdown`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ShutdownQuery {
    #[serde(default)]
    now: bool,
}

/// `POST /v1/shutdown[?now=true]`: drain (or stop now) and exit.
async fn shutdown(
    axum::extract::State(s): axum::extract::State<Shared>,
    axum::Extension(caller): axum::Extension<Caller>,
    q: Result<Query<ShutdownQuery>, axum::extract::rejection::QueryRejection>,
) -> Answer {
    let Query(q) = q.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match handle(Req::Shutdown { graceful: !q.now }, &s.ctx, &caller).await {
        control::Response::Ok => {
            Ok((StatusCode::ACCEPTED, Json(json!({ "stopping": true }))).into_response())
        }
        other => Err(ApiError::from_response(other)),
    }
}

/// The body, or the error its reading met: `413` past
/// `http.max_body_bytes`, `408` when it does not arrive in time.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "payload_too_large",
                "the body is larger than http.max_body_bytes",
            )
        } else if crate::errors::chain(&e).contains("timed out")
            || crate::errors::chain(&e).contains("timeout")
        {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the body did not arrive within http.request_timeout_ms",
            )
        } else {
            ApiError::bad_request(format!("cannot read the body: {}", e.body_text()))
        }
    })
}

/// `{"error": {"code", "message"}}`, as text.
pub(super) fn error_body(code: &str, message: &str) -> String {
    json!({ "error": { "code": code, "message": message } }).to_string()
}

/// An error answer.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unauthorized(message: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// The daemon's own refusal, with the status its kind calls for.
    fn from_response(r: control::Response) -> Self {
        match r {
            control::Response::Error(e) => {
                let (status, code) = status_of(e.kind);
                Self::new(status, code, e.message)
            }
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("unexpected answer {other:?}"),
            ),
        }
    }
}

/// The HTTP status and error code of a refusal's kind.
fn status_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::UnknownTask => (StatusCode::BAD_REQUEST, "unknown_task"),
        ErrorKind::BadInput => (StatusCode::BAD_REQUEST, "bad_input"),
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::LimitReached => (StatusCode::TOO_MANY_REQUESTS, "limit_reached"),
        ErrorKind::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
        ErrorKind::Storage => (StatusCode::SERVICE_UNAVAILABLE, "storage"),
        ErrorKind::PermissionDenied => (StatusCode::FORBIDDEN, "permission_denied"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
        {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        (self.status, headers, error_body(self.code, &self.message)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_needs_its_role() {
        let cases = [
            (Method::GET, "/healthz", None),
            (Method::GET, "/readyz", None),
            (Method::GET, "/v1/jobs", Some(Role::Read)),
            (Method::GET, "/v1/jobs/3/wait", Some(Role::Read)),
            (Method::POST, "/v1/jobs", Some(Role::Submit)),
            (Method::POST, "/v1/jobs/3/cancel", Some(Role::Submit)),
            (Method::POST, "/v1/shutdown", Some(Role::Admin)),
            (Method::DELETE, "/v1/jobs/3", Some(Role::Submit)),
        ];
        for (m, path, want) in cases {
            assert_eq!(role_for(&m, path), want, "{m} {path}");
        }
    }

    #[test]
    fn every_refusal_kind_has_a_status() {
        assert_eq!(status_of(ErrorKind::NotFound).0, StatusCode::NOT_FOUND);
        assert_eq!(status_of(ErrorKind::Conflict).0, StatusCode::CONFLICT);
        assert_eq!(
            status_of(ErrorKind::LimitReached).0,
            StatusCode::TOO_MANY_REQUESTS
        );
        assert_eq!(
            status_of(ErrorKind::ShuttingDown).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
