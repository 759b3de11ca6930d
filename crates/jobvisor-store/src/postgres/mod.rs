//! The PostgreSQL backend: [`PostgresStore`], a [`JobStore`] that several
//! daemons (nodes) share, with leases and fencing tokens (`cluster`) and
//! wake-ups by `LISTEN/NOTIFY` (`listen`). See `docs/cluster.md`.
//!
//! # Why the blocking `postgres` client
//! The store is owned by one thread (the writer, `crate::writer`) that runs
//! one transaction at a time through the synchronous [`JobStore`] trait,
//! exactly as it does with SQLite. The `postgres` crate is `tokio-postgres`
//! driven by a private current-thread runtime: the same protocol code, one
//! connection per store, no pool (a pool buys nothing to one owner), and no
//! `block_on` inside the daemon's runtime.
//!
//! # Layout
//! - `schema`: the versioned migrations, applied under an advisory lock.
//! - `rows`: the row layout (`jsonb` payloads beside their exact text).
//! - this module: the connection, transactions, the [`JobStore`] impl and
//!   fenced writes (a write on a job this store claimed carries its token).
//! - `cluster`: nodes, claims, lease renewal and expiry, cancel requests.
//! - `listen`: [`Listener`], `LISTEN` on a dedicated connection.

mod cluster;
mod listen;
mod rows;
mod schema;

use std::collections::HashMap;
use std::sync::Arc;

use jobvisor_proto::control::{AttemptOutcome, JobRecord, JobState, Submitted};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

use crate::store::{Delivery, Finish, JobStore, NewDelivery, NewJob, StoreError};
use rows::{big, no_nul, opt_big, payload_cols, pg_job_cols};

pub use cluster::{CancelRequest, Claim, Claimed, Expired, NodeInfo, NodeState};
pub use listen::{Listener, Wake, POLL_FALLBACK};
pub use schema::PG_SCHEMA_VERSION;

/// The lease of a claim when none is set (`[store] lease_ms`' default):
/// a node silent for this long loses its jobs to the others.
pub const DEFAULT_LEASE_MS: u64 = 10_000;

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if e.code() == Some(&SqlState::DISK_FULL) {
            StoreError::Full(Arc::new(e))
        } else {
            StoreError::Db(Arc::new(e))
        }
    }
}

/// The terminal states, as an SQL list (what pruning may delete).
const TERMINAL: &str = "('succeeded', 'failed', 'cancelled', 'dead')";

/// What a notification tells (its payload: the kind, then job ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum NoticeKind {
    /// New jobs.
    Submit,
    /// Jobs that can be claimed again (retry, requeue, expired lease).
    Ready,
    /// Jobs that reached a terminal state.
    Finish,
    /// Cancel requested.
    Cancel,
}

impl NoticeKind {
    fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Submit => "submit",
            NoticeKind::Ready => "ready",
            NoticeKind::Finish => "finish",
            NoticeKind::Cancel => "cancel",
        }
    }
}

/// What the open transaction will do at its commit: notifications to send
/// (in the transaction, with the COMMIT, so they go out exactly when it
/// commits) and fencing tokens to forget (jobs this store let go of).
#[derive(Default)]
struct Pending {
    notices: Vec<(NoticeKind, u64)>,
    released: Vec<u64>,
    /// Lengths of both at the savepoint.
    mark: Option<(usize, usize)>,
}

/// The PostgreSQL [`JobStore`]: one connection, used by one thread.
///
/// Cluster operations ([`PostgresStore::claim`] and the rest, in
/// `cluster`) run in transactions of their own, never inside one opened
/// by [`JobStore::begin`].
pub struct PostgresStore {
    /// Where to connect again after the connection is lost.
    url: String,
    /// Dropped off any tokio runtime (see [`off_runtime`]).
    client: std::mem::ManuallyDrop<Client>,
    stmts: HashMap<&'static str, Statement>,
    /// `LISTEN/NOTIFY` channel: `jobvisor:<schema>`.
    channel: String,
    /// This node's name once registered ([`PostgresStore::register_node`]).
    node: Option<String>,
    /// This node's lease (`[store] lease_ms`), set by `register_node`.
    lease_ms: u64,
    /// Fencing tokens of the jobs this store claimed and still holds: every
    /// write on one of them carries its token.
    held: HashMap<u64, u64>,
    pending: Pending,
    in_tx: bool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("channel", &self.channel)
            .field("node", &self.node)
            .field("held", &self.held.len())
            .finish_non_exhaustive()
    }
}

/// An attempt's start: the job `running` (fenced by its token) and the
/// attempt row, in one statement; nothing is written when refused.
const START_ATTEMPT: &str = "WITH j AS (UPDATE jobs SET state = 'running' \
     WHERE id = $1 AND (token = $2 OR ($2::bigint IS NULL AND lease_node IS NULL)) RETURNING id) \
     INSERT INTO attempts (job_id, number, worker_pid, started_ms, finished_ms, outcome, node, token) \
     SELECT id, $3, $4, $5, NULL, $6::text::jsonb, $7, $2 FROM j \
     ON CONFLICT (job_id, number) DO UPDATE SET worker_pid = excluded.worker_pid, \
     started_ms = excluded.started_ms, finished_ms = NULL, \
     outcome = excluded.outcome, node = excluded.node, token = excluded.token";
const APPLY_FINISH: &str = "UPDATE jobs SET state = $2, finished_ms = $3, \
     run_at_ms = COALESCE($4, run_at_ms), output = $5::text::jsonb, output_text = $6, \
     output_bytes = $7, error = CASE WHEN $8 THEN to_jsonb($9::text) ELSE error END, \
     budget_from = COALESCE($11, budget_from), epoch = COALESCE($12, epoch), \
     lease_node = NULL, lease_expires = NULL \
     WHERE id = $1 AND (token = $10 OR ($10::bigint IS NULL AND lease_node IS NULL))";
/// [`APPLY_FINISH`] and the attempt's start and end in one statement (one
/// round trip): nothing is written when the job's update is refused.
const FINISH_PAIR: &str = "WITH j AS (UPDATE jobs SET state = $2, finished_ms = $3, \
     run_at_ms = COALESCE($4, run_at_ms), output = $5::text::jsonb, output_text = $6, \
     output_bytes = $7, error = CASE WHEN $8 THEN to_jsonb($9::text) ELSE error END, \
     budget_from = COALESCE($11, budget_from), epoch = COALESCE($12, epoch), \
     lease_node = NULL, lease_expires = NULL \
     WHERE id = $1 AND (token = $10 OR ($10::bigint IS NULL AND lease_node IS NULL)) RETURNING id) \
     INSERT INTO attempts (job_id, number, worker_pid, started_ms, finished_ms, outcome, node, token) \
     SELECT id, $13, $14, $15, $16, $17::text::jsonb, $18, $10 FROM j \
     ON CONFLICT (job_id, number) DO UPDATE SET worker_pid = excluded.worker_pid, \
     started_ms = excluded.started_ms, finished_ms = excluded.finished_ms, \
     outcome = excluded.outcome, node = excluded.node, token = excluded.token";
/// [`APPLY_FINISH`] and the end of a started attempt in one statement.
const FINISH_STARTED: &str = "WITH j AS (UPDATE jobs SET state = $2, finished_ms = $3, \
     run_at_ms = COALESCE($4, run_at_ms), output = $5::text::jsonb, output_text = $6, \
     output_bytes = $7, error = CASE WHEN $8 THEN to_jsonb($9::text) ELSE error END, \
     budget_from = COALESCE($11, budget_from), epoch = COALESCE($12, epoch), \
     lease_node = NULL, lease_expires = NULL \
     WHERE id = $1 AND (token = $10 OR ($10::bigint IS NULL AND lease_node IS NULL)) RETURNING id) \
     UPDATE attempts a SET finished_ms = $16, outcome = $14::text::jsonb, \
     worker_pid = COALESCE($15, a.worker_pid) FROM j WHERE a.job_id = j.id AND a.number = $13";
const TOKEN_OF: &str = "SELECT token, lease_node IS NOT NULL FROM jobs WHERE id = $1";
const KEY_OF: &str = "SELECT id FROM jobs WHERE key = $1";
const FIRST_MISSING: &str = "SELECT d FROM unnest($1::bigint[]) WITH ORDINALITY AS u(d, o) \
     WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE id = d) ORDER BY o LIMIT 1";
const INSERT_ONE: &str = "INSERT INTO jobs (task, queue, priority, state, max_attempts, \
     backoff_base_ms, backoff_max_ms, timeout_ms, run_at_ms, created_ms, key, input, input_text, \
     input_bytes, stall_timeout_ms, input_from, notify_url, max_crashes) \
     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb, $12, $13, $14, \
     $15::text::jsonb, $16, $17) ON CONFLICT (key) DO NOTHING RETURNING id";
const INSERT_DEPS: &str = "INSERT INTO deps (job_id, dep_id, ord) \
     SELECT $1, d, o FROM unnest($2::bigint[]) WITH ORDINALITY AS u(d, o) ON CONFLICT DO NOTHING";
/// Plain jobs (no key, dependencies or pipeline inputs), all in one
/// statement: one round trip for any number. Identity values are drawn in
/// the order of `ORDER BY ord`, so the sorted ids are the jobs' in order.
const INSERT_PLAIN: &str = "INSERT INTO jobs (task, queue, priority, state, max_attempts, \
     backoff_base_ms, backoff_max_ms, timeout_ms, run_at_ms, created_ms, input, input_text, \
     input_bytes, stall_timeout_ms, notify_url, max_crashes) \
     SELECT task, queue, priority, 'queued', max_attempts, backoff_base_ms, backoff_max_ms, \
     timeout_ms, run_at_ms, created_ms, input::jsonb, input_text, input_bytes, stall_timeout_ms, \
     notify_url, max_crashes FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], \
     $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[], $9::bigint[], $10::text[], \
     $11::text[], $12::bytea[], $13::bigint[], $14::text[], $15::bigint[]) WITH ORDINALITY AS \
     u(task, queue, priority, max_attempts, backoff_base_ms, backoff_max_ms, timeout_ms, \
     run_at_ms, created_ms, input, input_text, input_bytes, stall_timeout_ms, notify_url, \
     max_crashes, ord) ORDER BY ord RETURNING id";
const SELECT_JOB: &str = concat!(
    "SELECT ",
    pg_job_cols!(),
    ", input_text, input_bytes, output_text, output_bytes FROM jobs WHERE id = $1"
);
const SELECT_LIVE: &str = concat!(
    "SELECT ",
    pg_job_cols!(),
    ", input_text, input_bytes, NULL::text, NULL::bytea FROM jobs \
     WHERE state IN ('queued', 'running', 'retrying') ORDER BY id"
);
const LIST: &str = concat!(
    "SELECT ",
    pg_job_cols!(),
    " FROM jobs WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR queue = $2) \
     AND ($4::bigint IS NULL OR id < $4) ORDER BY id DESC LIMIT $3"
);

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`; an `options`
    /// parameter such as `-csearch_path=NAME` picks the schema) and
    /// migrates the schema to [`PG_SCHEMA_VERSION`] under an advisory lock.
    ///
    /// # Errors
    /// [`StoreError::TooNew`] when the database's schema is newer than this
    /// build's; [`StoreError::Db`] when it cannot connect.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let (client, schema) = off_runtime(|| {
            let mut client = connect(url)?;
            schema::migrate(&mut client)?;
            let schema: String = client.query_one("SELECT current_schema()", &[])?.get(0);
            Ok::<_, StoreError>((client, schema))
        })?;
        Ok(PostgresStore {
            url: url.to_string(),
            client: std::mem::ManuallyDrop::new(client),
            stmts: HashMap::new(),
            channel: channel_of(&schema),
            node: None,
            lease_ms: DEFAULT_LEASE_MS,
            held: HashMap::new(),
            pending: Pending::default(),
            in_tx: false,
        })
    }

    /// The `LISTEN/NOTIFY` channel of this store's schema.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Connects again when the connection was lost (the server restarted,
    /// the network failed), between transactions only: a transaction
    /// whose connection is lost fails as a whole, and the next one, on a
    /// new connection, starts from what had committed. Claimed jobs and
    /// their tokens stay this store's (they are rows, not sessions).
    ///
    /// # Errors
    /// The new connection fails: the store stays disconnected and the next
    /// operation tries again.
    pub(crate) fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if !self.client.is_closed() || self.in_tx {
            return Ok(());
        }
        self.reconnect()
    }

    /// Replaces the connection with a new one.
    fn reconnect(&mut self) -> Result<(), StoreError> {
        let url = self.url.clone();
        let client = off_runtime(move || connect(&url))?;
        let old = std::mem::replace(&mut *self.client, client);
        off_runtime(move || drop(old));
        self.stmts.clear();
        tracing::info!("reconnected to the job store");
        Ok(())
    }

    /// A prepared statement, prepared once per connection.
    fn st(&mut self, sql: &'static str) -> Result<Statement, StoreError> {
        self.ensure_connected()?;
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.stmts.insert(sql, s.clone());
        Ok(s)
    }

    fn notice(&mut self, kind: NoticeKind, id: u64) {
        self.pending.notices.push((kind, id));
    }

    /// The token a write on job `id` carries: the one of this store's
    /// claim, or none for a job it did not claim (a single-node daemon, a
    /// queued job cancelled). A write without a token is refused on a job
    /// that some node holds: only the holder writes a claimed job.
    fn token_for(&self, id: u64) -> Option<i64> {
        self.held.get(&id).map(|&t| big(t))
    }

    /// After a write on `id` carrying `token` changed no row: its token
    /// moved on (`Fenced`), or the job (or the attempt) is missing.
    fn refused(&mut self, id: u64, token: Option<i64>) -> StoreError {
        let current = self
            .st(TOKEN_OF)
            .and_then(|s| Ok(self.client.query_opt(&s, &[&big(id)])?));
        let row = match current {
            Ok(Some(row)) => row,
            Ok(None) => return StoreError::NotFound(id),
            Err(e) => return e,
        };
        let (current, leased): (i64, bool) = (row.get(0), row.get(1));
        match token {
            Some(token) if token != current => StoreError::Fenced {
                job: id,
                token: token as u64,
                current: current as u64,
            },
            // Held by a node, and not by this store: token 0 is "none".
            None if leased => StoreError::Fenced {
                job: id,
                token: 0,
                current: current as u64,
            },
            // The job is there and the token good: the attempt is missing.
            _ => StoreError::NotFound(id),
        }
    }

    fn apply_finish(&mut self, id: u64, at_ms: u64, next: &Finish) -> Result<(), StoreError> {
        self.finish_with(id, at_ms, next, AttemptEnd::None)
    }

    /// A job's next state, and with it (in the same statement) the end of
    /// its attempt: refused as a whole when the token is stale.
    fn finish_with(
        &mut self,
        id: u64,
        at_ms: u64,
        next: &Finish,
        attempt: AttemptEnd<'_>,
    ) -> Result<(), StoreError> {
        let state = next.state();
        let state_str = state.as_str();
        let (mut finished, mut run_at, mut set_error, mut error) = (None, None, true, None);
        let mut budget: Option<(i64, i64)> = None;
        let mut output = None;
        match next {
            Finish::Retry {
                run_at_ms,
                error: e,
            } => {
                run_at = Some(big(*run_at_ms));
                error = Some(no_nul(e));
            }
            Finish::Revive {
                run_at_ms,
                error: e,
                budget_from,
                epoch,
            } => {
                run_at = Some(big(*run_at_ms));
                error = Some(no_nul(e));
                budget = Some((i64::from(*budget_from), i64::from(*epoch)));
            }
            Finish::Requeue => set_error = false,
            Finish::Succeeded { output: o } => {
                finished = Some(big(at_ms));
                output = Some(payload_cols(o));
            }
            Finish::Failed { error: e }
            | Finish::Cancelled { error: e }
            | Finish::Dead { error: e } => {
                finished = Some(big(at_ms));
                error = Some(no_nul(e));
            }
        }
        let (jsonb, text, bytes) = match &output {
            Some(p) => (p.jsonb, p.text, p.bytes),
            None => (None, None, None),
        };
        let token = self.token_for(id);
        let error = error.as_deref();
        let (id_, node) = (big(id), self.node.clone());
        let (budget_from, epoch) = (budget.map(|b| b.0), budget.map(|b| b.1));
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![
            &id_,
            &state_str,
            &finished,
            &run_at,
            &jsonb,
            &text,
            &bytes,
            &set_error,
            &error,
            &token,
            &budget_from,
            &epoch,
        ];
        let (number, pid, started, at, outcome);
        let sql = match attempt {
            AttemptEnd::None => APPLY_FINISH,
            AttemptEnd::Pair {
                number: n,
                worker_pid,
                started_ms,
                outcome: o,
            } => {
                number = i64::from(n);
                pid = worker_pid.map(i64::from);
                started = big(started_ms);
                at = big(at_ms);
                outcome = rows::encode_outcome(o)?;
                params.extend([
                    &number as &(dyn postgres::types::ToSql + Sync),
                    &pid,
                    &started,
                    &at,
                    &outcome,
                    &node,
                ]);
                FINISH_PAIR
            }
            AttemptEnd::Started {
                number: n,
                worker_pid,
                outcome: o,
            } => {
                number = i64::from(n);
                pid = worker_pid.map(i64::from);
                at = big(at_ms);
                outcome = rows::encode_outcome(o)?;
                params.extend([
                    &number as &(dyn postgres::types::ToSql + Sync),
                    &outcome,
                    &pid,
                    &at,
                ]);
                FINISH_STARTED
            }
        };
        let s = self.st(sql)?;
        let changed = self.client.execute(&s, &params)?;
        if changed == 0 {
            return Err(self.refused(id, token));
        }
        if state != JobState::Running {
            self.pending.released.push(id);
        }
        match state {
            JobState::Queued | JobState::Retrying => self.notice(NoticeKind::Ready, id),
            s if s.is_terminal() => self.notice(NoticeKind::Finish, id),
            _ => {}
        }
        Ok(())
    }

    fn insert_one(&mut self, job: &NewJob) -> Result<Submitted, StoreError> {
        if let Some(key) = &job.key {
            let s = self.st(KEY_OF)?;
            if let Some(row) = self.client.query_opt(&s, &[key])? {
                let id: i64 = row.get(0);
                return Ok(Submitted {
                    id: id as u64,
                    duplicate: true,
                });
            }
        }
        let after: Vec<i64> = job.after.iter().map(|&d| big(d)).collect();
        if !after.is_empty() {
            let s = self.st(FIRST_MISSING)?;
            if let Some(row) = self.client.query_opt(&s, &[&after])? {
                let missing: i64 = row.get(0);
                return Err(StoreError::NotFound(missing as u64));
            }
        }
        let input_from = if job.input_from.is_empty() {
            None
        } else {
            Some(crate::rows::encode_input_from(&job.input_from)?)
        };
        let p = payload_cols(&job.input);
        let s = self.st(INSERT_ONE)?;
        let row = self.client.query_opt(
            &s,
            &[
                &job.task,
                &job.queue,
                &job.priority,
                &i64::from(job.max_attempts),
                &big(job.backoff_base_ms),
                &big(job.backoff_max_ms),
                &opt_big(job.timeout_ms),
                &big(job.run_at_ms),
                &big(job.created_ms),
                &job.key,
                &p.jsonb,
                &p.text,
                &p.bytes,
                &opt_big(job.stall_timeout_ms),
                &input_from,
                &job.notify_url,
                &i64::from(job.max_crashes),
            ],
        )?;
        let Some(row) = row else {
            // Another node inserted the key after our look-up (and has
            // committed: ON CONFLICT waited for it).
            let key = job
                .key
                .as_ref()
                .ok_or_else(|| StoreError::db("insert conflict without a key"))?;
            let s = self.st(KEY_OF)?;
            let row = self.client.query_one(&s, &[key])?;
            let id: i64 = row.get(0);
            return Ok(Submitted {
                id: id as u64,
                duplicate: true,
            });
        };
        let id: i64 = row.get(0);
        if !after.is_empty() {
            let s = self.st(INSERT_DEPS)?;
            self.client.execute(&s, &[&id, &after])?;
        }
        self.notice(NoticeKind::Submit, id as u64);
        Ok(Submitted {
            id: id as u64,
            duplicate: false,
        })
    }

    fn insert_plain(
        &mut self,
        jobs: &[NewJob],
        out: &mut Vec<Submitted>,
    ) -> Result<(), StoreError> {
        let n = jobs.len();
        let mut task = Vec::with_capacity(n);
        let mut queue = Vec::with_capacity(n);
        let mut priority = Vec::with_capacity(n);
        let mut max_attempts = Vec::with_capacity(n);
        let mut base = Vec::with_capacity(n);
        let mut max = Vec::with_capacity(n);
        let mut timeout = Vec::with_capacity(n);
        let mut run_at = Vec::with_capacity(n);
        let mut created = Vec::with_capacity(n);
        let mut jsonb = Vec::with_capacity(n);
        let mut text = Vec::with_capacity(n);
        let mut bytes = Vec::with_capacity(n);
        let mut stall = Vec::with_capacity(n);
        let mut notify = Vec::with_capacity(n);
        let mut crashes = Vec::with_capacity(n);
        for j in jobs {
            task.push(j.task.as_str());
            queue.push(j.queue.as_str());
            priority.push(j.priority);
            max_attempts.push(i64::from(j.max_attempts));
            base.push(big(j.backoff_base_ms));
            max.push(big(j.backoff_max_ms));
            timeout.push(opt_big(j.timeout_ms));
            run_at.push(big(j.run_at_ms));
            created.push(big(j.created_ms));
            let p = payload_cols(&j.input);
            jsonb.push(p.jsonb);
            text.push(p.text);
            bytes.push(p.bytes);
            stall.push(opt_big(j.stall_timeout_ms));
            notify.push(j.notify_url.as_deref());
            crashes.push(i64::from(j.max_crashes));
        }
        let s = self.st(INSERT_PLAIN)?;
        let rows = self.client.query(
            &s,
            &[
                &task,
                &queue,
                &priority,
                &max_attempts,
                &base,
                &max,
                &timeout,
                &run_at,
                &created,
                &jsonb,
                &text,
                &bytes,
                &stall,
                &notify,
                &crashes,
            ],
        )?;
        if rows.len() != n {
            return Err(StoreError::db(format!(
                "inserted {} of {n} jobs",
                rows.len()
            )));
        }
        let mut ids: Vec<u64> = rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        ids.sort_unstable();
        if let (Some(&first), Some(&last)) = (ids.first(), ids.last()) {
            // One notification for the run: a claimer only needs to wake.
            self.notice(NoticeKind::Submit, first);
            if last != first {
                self.notice(NoticeKind::Submit, last);
            }
        }
        out.extend(ids.into_iter().map(|id| Submitted {
            id,
            duplicate: false,
        }));
        Ok(())
    }

    fn read_jobs(
        &mut self,
        sql: &'static str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
        payloads: bool,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let s = self.st(sql)?;
        let rows = self.client.query(&s, params)?;
        let mut jobs = rows
            .iter()
            .map(|r| rows::job_from_row(r, payloads))
            .collect::<Result<Vec<_>, _>>()?;
        let deps = self.st(rows::SELECT_DEPS)?;
        let attempts = self.st(rows::SELECT_ATTEMPTS)?;
        rows::fill(&mut self.client, &deps, &attempts, &mut jobs)?;
        Ok(jobs)
    }

    /// The notifications of the open transaction as statements to send
    /// with its COMMIT: one per kind, job ids in the payload (chunked
    /// below PostgreSQL's 8000-byte payload limit).
    fn notify_sql(&self) -> String {
        let mut by_kind: Vec<(NoticeKind, Vec<u64>)> = Vec::new();
        for &(kind, id) in &self.pending.notices {
            match by_kind.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, ids)) => ids.push(id),
                None => by_kind.push((kind, vec![id])),
            }
        }
        let channel = self.channel.replace('\'', "''");
        let mut sql = String::new();
        for (kind, ids) in by_kind {
            let mut payload = String::from(kind.as_str());
            for id in ids {
                if payload.len() > 7_900 {
                    sql.push_str(&format!("SELECT pg_notify('{channel}', '{payload}');"));
                    payload = String::from(kind.as_str());
                }
                payload.push(' ');
                payload.push_str(&id.to_string());
            }
            sql.push_str(&format!("SELECT pg_notify('{channel}', '{payload}');"));
        }
        sql
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        // SAFETY: `client` is not used again; this is the only take.
        let client = unsafe { std::mem::ManuallyDrop::take(&mut self.client) };
        off_runtime(move || drop(client));
    }
}

/// Runs `f` here, or on a thread of its own when this thread drives a
/// tokio runtime: the blocking client runs (and drops) a runtime of its
/// own, which tokio forbids inside another. So a store may be opened and
/// dropped anywhere, e.g. in the daemon's `main` before the writer thread
/// takes it.
pub(crate) fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|s| match s.spawn(f).join() {
        Ok(v) => v,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

/// The server ended the session (`FATAL`: shut down, terminated) or the
/// socket failed: the connection is gone even if the client does not know yet.
fn is_fatal(e: &postgres::Error) -> bool {
    let io = std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>());
    io || e.as_db_error().is_some_and(|d| d.severity() == "FATAL")
}

/// The attempt a job's finish writes with it.
enum AttemptEnd<'a> {
    /// None (a state change without an attempt).
    None,
    /// An attempt started and ended in this one write.
    Pair {
        number: u32,
        worker_pid: Option<u32>,
        started_ms: u64,
        outcome: &'a AttemptOutcome,
    },
    /// The end of an attempt already started.
    Started {
        number: u32,
        worker_pid: Option<u32>,
        outcome: &'a AttemptOutcome,
    },
}

/// Connects without TLS (the server is on loopback or a private network;
/// see `docs/cluster.md`).
pub(crate) fn connect(url: &str) -> Result<Client, StoreError> {
    Client::connect(url, NoTls)
        .map_err(|e| StoreError::db_context(format!("cannot connect to {}", redact(url)), e))
}

/// `url` without a password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if url[s + 3..at].contains(':') => {
            let user_end = s + 3 + url[s + 3..at].find(':').unwrap_or(0);
            format!("{}:***{}", &url[..user_end], &url[at..])
        }
        _ => url.to_string(),
    }
}

fn channel_of(schema: &str) -> String {
    format!("jobvisor:{schema}")
}

impl JobStore for PostgresStore {
    fn begin(&mut self) -> Result<(), StoreError> {
        self.ensure_connected()?;
        if let Err(e) = self.client.batch_execute("BEGIN") {
            // A connection the server ended (a restart, an admin) often
            // shows only now: nothing was done yet, so once more on a new one.
            if !(e.is_closed() || self.client.is_closed() || is_fatal(&e)) {
                return Err(e.into());
            }
            self.reconnect()?;
            self.client.batch_execute("BEGIN")?;
        }
        self.in_tx = true;
        self.pending = Pending::default();
        Ok(())
    }

    fn commit(&mut self) -> Result<(), StoreError> {
        let mut sql = self.notify_sql();
        sql.push_str("COMMIT");
        let r = self.client.batch_execute(&sql);
        self.in_tx = false;
        let pending = std::mem::take(&mut self.pending);
        match r {
            Ok(()) => {
                for id in pending.released {
                    self.held.remove(&id);
                }
                Ok(())
            }
            Err(e) => {
                let _ = self.client.batch_execute("ROLLBACK");
                Err(e.into())
            }
        }
    }

    fn rollback(&mut self) -> Result<(), StoreError> {
        self.in_tx = false;
        self.pending = Pending::default();
        if self.client.is_closed() {
            return Ok(());
        }
        Ok(self.client.batch_execute("ROLLBACK")?)
    }

    fn savepoint(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("SAVEPOINT s")?;
        self.pending.mark = Some((self.pending.notices.len(), self.pending.released.len()));
        Ok(())
    }

    fn release_savepoint(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("RELEASE s")?;
        self.pending.mark = None;
        Ok(())
    }

    fn rollback_to_savepoint(&mut self) -> Result<(), StoreError> {
        self.client.batch_execute("ROLLBACK TO s; RELEASE s")?;
        if let Some((n, r)) = self.pending.mark.take() {
            self.pending.notices.truncate(n);
            self.pending.released.truncate(r);
        }
        Ok(())
    }

    fn insert(&mut self, job: &NewJob) -> Result<Submitted, StoreError> {
        self.insert_one(job)
    }

    fn insert_many(&mut self, jobs: &[NewJob]) -> Result<Vec<Submitted>, StoreError> {
        let plain = |j: &NewJob| j.key.is_none() && j.after.is_empty() && j.input_from.is_empty();
        let mut out = Vec::with_capacity(jobs.len());
        let mut rest = jobs;
        while let Some(first) = rest.first() {
            if !plain(first) {
                out.push(self.insert_one(first)?);
                rest = &rest[1..];
                continue;
            }
            let run = rest.iter().take_while(|j| plain(j)).count();
            self.insert_plain(&rest[..run], &mut out)?;
            rest = &rest[run..];
        }
        Ok(out)
    }

    fn start_attempt(
        &mut self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        at_ms: u64,
    ) -> Result<(), StoreError> {
        let token = self.token_for(id);
        let outcome = rows::encode_outcome(&AttemptOutcome::Running)?;
        let node = self.node.clone();
        let s = self.st(START_ATTEMPT)?;
        let changed = self.client.execute(
            &s,
            &[
                &big(id),
                &token,
                &i64::from(number),
                &worker_pid.map(i64::from),
                &big(at_ms),
                &outcome,
                &node,
            ],
        )?;
        if changed == 0 {
            return Err(self.refused(id, token));
        }
        Ok(())
    }

    fn finish_attempt(
        &mut self,
        id: u64,
        number: u32,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), StoreError> {
        let end = AttemptEnd::Started {
            number,
            worker_pid,
            outcome,
        };
        self.finish_with(id, at_ms, next, end)
    }

    fn start_and_finish_attempt(
        &mut self,
        id: u64,
        number: u32,
        started_ms: u64,
        worker_pid: Option<u32>,
        outcome: &AttemptOutcome,
        at_ms: u64,
        next: &Finish,
    ) -> Result<(), StoreError> {
        let end = AttemptEnd::Pair {
            number,
            worker_pid,
            started_ms,
            outcome,
        };
        self.finish_with(id, at_ms, next, end)
    }

    fn finish_job(&mut self, id: u64, at_ms: u64, next: &Finish) -> Result<(), StoreError> {
        self.apply_finish(id, at_ms, next)
    }

    fn get(&mut self, id: u64) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.read_jobs(SELECT_JOB, &[&big(id)], true)?.pop())
    }

    fn list_page(
        &mut self,
        state: Option<JobState>,
        queue: Option<&str>,
        before: Option<u64>,
        limit: u32,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let state = state.map(JobState::as_str);
        let before = opt_big(before);
        self.read_jobs(LIST, &[&state, &queue, &i64::from(limit), &before], false)
    }

    fn recover(&mut self, now_ms: u64) -> Result<Vec<JobRecord>, StoreError> {
        // Only what no other node holds: this node's jobs (or, before it
        // registers, those of no node).
        // As SQLite's: a crash the daemon's policy charges to the crash budget.
        let lost = rows::encode_outcome(&AttemptOutcome::daemon_died())?;
        let node = self.node.clone();
        self.client.execute(
            "UPDATE attempts a SET finished_ms = $1, outcome = $2::text::jsonb FROM jobs j \
             WHERE a.job_id = j.id AND a.finished_ms IS NULL \
             AND (j.lease_node IS NULL OR j.lease_node = $3)",
            &[&big(now_ms), &lost, &node],
        )?;
        self.client.execute(
            "UPDATE jobs SET state = 'queued', lease_node = NULL, lease_expires = NULL, \
             token = token + 1 WHERE state = 'running' AND (lease_node IS NULL OR lease_node = $1)",
            &[&node],
        )?;
        self.held.clear();
        self.read_jobs(SELECT_LIVE, &[], true)
    }

    fn prune(&mut self, finished_before_ms: u64, keep: u64) -> Result<u64, StoreError> {
        // One node at a time: another that holds the lock is pruning now.
        let got: bool = self
            .client
            .query_one(
                "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.jobvisor.prune'))",
                &[],
            )?
            .get(0);
        if !got {
            return Ok(0);
        }
        let by_age = self.client.execute(
            &format!("DELETE FROM jobs WHERE state IN {TERMINAL} AND finished_ms < $1"),
            &[&big(finished_before_ms)],
        )?;
        let by_count = self.client.execute(
            &format!(
                "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN {TERMINAL} \
                 ORDER BY finished_ms DESC, id DESC OFFSET $1)"
            ),
            &[&big(keep)],
        )?;
        Ok(by_age + by_count)
    }

    fn counts(&mut self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let rows = self
            .client
            .query("SELECT state, count(*) FROM jobs GROUP BY state", &[])?;
        let mut counts = rows
            .iter()
            .map(|r| Ok((rows::state(r, 0)?, r.get::<_, i64>(1) as u64)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        counts.sort_by_key(|(state, _)| *state as u8);
        Ok(counts)
    }

    fn add_deliveries(
        &mut self,
        job_id: u64,
        at_ms: u64,
        deliveries: &[NewDelivery],
    ) -> Result<(), StoreError> {
        let s = self.st(
            "INSERT INTO outbox (job_id, state, target, attempts, next_at_ms, created_ms, epoch) \
             VALUES ($1, $2, $3, 0, $4, $4, COALESCE((SELECT epoch FROM jobs WHERE id = $1), 0))",
        )?;
        for d in deliveries {
            self.client.execute(
                &s,
                &[&big(job_id), &d.state.as_str(), &d.target, &big(at_ms)],
            )?;
        }
        Ok(())
    }

    fn deliveries_after(&mut self, after: u64, limit: u32) -> Result<Vec<Delivery>, StoreError> {
        let s = self.st(
            "SELECT id, job_id, state, target, attempts, next_at_ms, epoch FROM outbox \
             WHERE id > $1 ORDER BY id LIMIT $2",
        )?;
        let rows = self.client.query(&s, &[&big(after), &i64::from(limit)])?;
        rows.iter()
            .map(|r| {
                Ok(Delivery {
                    id: r.get::<_, i64>(0) as u64,
                    job_id: r.get::<_, i64>(1) as u64,
                    state: rows::state(r, 2)?,
                    target: r.try_get(3)?,
                    attempts: u32::try_from(r.get::<_, i64>(4)).unwrap_or(u32::MAX),
                    next_at_ms: r.get::<_, i64>(5) as u64,
                    epoch: u32::try_from(r.get::<_, i64>(6)).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    fn delivery_attempted(
        &mut self,
        id: u64,
        attempts: u32,
        next_at_ms: u64,
        error: &str,
    ) -> Result<(), StoreError> {
        let s = self.st(
            "UPDATE outbox SET attempts = $2, next_at_ms = $3, last_error = $4 WHERE id = $1",
        )?;
        self.client.execute(
            &s,
            &[
                &big(id),
                &i64::from(attempts),
                &big(next_at_ms),
                &no_nul(error).as_ref(),
            ],
        )?;
        Ok(())
    }

    fn delivery_done(&mut self, id: u64) -> Result<(), StoreError> {
        let s = self.st("DELETE FROM outbox WHERE id = $1")?;
        self.client.execute(&s, &[&big(id)])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_not_shown() {
        assert_eq!(
            redact("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact("postgres://u@h:5/db"), "postgres://u@h:5/db");
    }
}
