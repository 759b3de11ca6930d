//! The cluster API of [`PostgresStore`]: nodes, claims with leases and
//! fencing tokens, lease renewal and expiry, cancel requests.
//!
//! Each operation runs in a transaction of its own (never inside one
//! opened by [`JobStore::begin`]), so a claim's row locks are held only for
//! its few statements. Leases are timed by the database's clock (`now()`),
//! so the nodes' clocks need not agree.
//!
//! Fencing: a claim increments the job's `token` and this store keeps it;
//! every later write of the job through this store ([`JobStore`]'s
//! attempts and finishes) carries it and is refused with
//! [`StoreError::Fenced`] once the token has moved on: the lease expired
//! ([`PostgresStore::expire`], run by any node) or another node claimed the
//! job. A refused write changes nothing.

use jobvisor_proto::control::{JobRecord, JobState};

use super::rows::{self, big, pg_job_cols};
use super::{NoticeKind, PostgresStore};
use crate::store::{JobStore, StoreError};

/// What [`PostgresStore::claim`] may take.
#[derive(Debug, Clone, Default)]
pub struct Claim<'a> {
    /// At most this many jobs.
    pub limit: u32,
    /// Only these queues (`None`: every queue).
    pub queues: Option<&'a [String]>,
    /// Per-queue caps on running jobs across the whole cluster: a queue
    /// named here never has more than its cap running on all nodes together.
    pub caps: &'a [(String, u32)],
}

/// A claimed job: its record (with input, dependencies and attempts) and
/// the fencing token of this claim, which a task may use to fence its own
/// external writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The job, state `Running`.
    pub job: JobRecord,
    /// Its fencing token.
    pub token: u64,
}

/// A node's state as [`PostgresStore::nodes`] tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Heartbeating within its lease.
    Up,
    /// Silent for longer than its lease: its jobs go to others.
    Lost,
    /// Stopped cleanly ([`PostgresStore::deregister_node`]).
    Stopped,
}

impl NodeState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Lost => "lost",
            NodeState::Stopped => "stopped",
        }
    }
}

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Its name (`[store] node_name`).
    pub name: String,
    /// The daemon's pid.
    pub pid: u32,
    /// Its host name.
    pub host: String,
    /// When it registered (unix ms, database clock).
    pub started_ms: u64,
    /// Its last heartbeat (unix ms, database clock).
    pub last_heartbeat_ms: u64,
    /// Jobs it holds running.
    pub jobs_running: u64,
    /// Up, lost or stopped.
    pub state: NodeState,
}

/// What [`PostgresStore::expire`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expired {
    /// Jobs whose lease passed, queued again.
    pub requeued: Vec<u64>,
    /// Jobs whose lease passed for the `max_lost_leases`-th time: dead.
    pub dead: Vec<u64>,
}

/// What [`PostgresStore::request_cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRequest {
    /// The job was waiting (no node held it): it is cancelled now.
    Cancelled,
    /// The job is running on `node`, which is told (NOTIFY) and cancels it.
    Requested {
        /// The node holding it.
        node: Option<String>,
    },
    /// The job had already finished, in this state.
    Finished(JobState),
}

/// The database clock as unix ms.
const NOW_MS: &str = "(extract(epoch from now()) * 1000)::bigint";

impl PostgresStore {
    /// Registers this store as node `name` (pid, host, its lease) and
    /// renews the row of an earlier run of the same name. Claims, renewals
    /// and recovery then act for this node.
    ///
    /// # Errors
    /// [`StoreError::Db`] when a live node (another pid or host whose
    /// heartbeat is within its lease) already has the name.
    pub fn register_node(
        &mut self,
        name: &str,
        pid: u32,
        host: &str,
        lease_ms: u64,
    ) -> Result<(), StoreError> {
        self.not_in_tx()?;
        let changed = self.client.execute(
            "INSERT INTO nodes AS n (name, pid, host, lease_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET pid = excluded.pid, host = excluded.host, \
             lease_ms = excluded.lease_ms, started = now(), last_heartbeat = now(), stopped = false \
             WHERE n.stopped OR n.last_heartbeat + n.lease_ms * interval '1 millisecond' < now() \
             OR (n.pid = excluded.pid AND n.host = excluded.host)",
            &[&name, &i64::from(pid), &host, &big(lease_ms)],
        )?;
        if changed == 0 {
            return Err(StoreError::db(format!(
                "node name {name:?} is in use by a live node; pick another [store] node_name"
            )));
        }
        self.node = Some(name.to_string());
        self.lease_ms = lease_ms;
        Ok(())
    }

    /// Marks this node stopped (a clean shutdown: `nodes` shows it so, and
    /// its name may be taken at once).
    ///
    /// # Errors
    /// Database errors.
    pub fn deregister_node(&mut self) -> Result<(), StoreError> {
        self.not_in_tx()?;
        let name = self.node()?.to_string();
        self.client
            .execute("UPDATE nodes SET stopped = true WHERE name = $1", &[&name])?;
        Ok(())
    }

    /// The fencing token this store holds for job `id` (claimed by it and
    /// not yet let go of): what a task's `ctx` carries.
    pub fn token(&self, id: u64) -> Option<u64> {
        self.held.get(&id).copied()
    }

    /// The jobs this store holds (claimed, not finished), with their tokens.
    pub fn held(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.held.iter().map(|(&j, &t)| (j, t)).collect();
        v.sort_unstable();
        v
    }

    /// The heartbeat: renews this node's row and the lease of every job it
    /// holds, in one statement (one round trip). Returns the jobs whose
    /// lease could not be renewed (expired and re-queued, or claimed by
    /// another node meanwhile): their tokens are forgotten, and their
    /// workers should be cancelled; any write of theirs would be refused.
    ///
    /// # Errors
    /// Database errors.
    pub fn heartbeat(&mut self) -> Result<Vec<u64>, StoreError> {
        self.not_in_tx()?;
        let node = self.node()?.to_string();
        let (ids, tokens): (Vec<i64>, Vec<i64>) =
            self.held.iter().map(|(&j, &t)| (big(j), big(t))).unzip();
        let rows = self.client.query(
            "WITH n AS (UPDATE nodes SET last_heartbeat = now() WHERE name = $1) \
             UPDATE jobs SET lease_expires = now() + $2::bigint * interval '1 millisecond' \
             FROM unnest($3::bigint[], $4::bigint[]) AS h(id, token) \
             WHERE jobs.id = h.id AND jobs.token = h.token AND jobs.lease_node = $1 \
             AND jobs.state = 'running' RETURNING jobs.id",
            &[&node, &big(self.lease_ms), &ids, &tokens],
        )?;
        let renewed: std::collections::HashSet<u64> =
            rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect();
        let mut lost: Vec<u64> = self
            .held
            .keys()
            .filter(|id| !renewed.contains(id))
            .copied()
            .collect();
        lost.sort_unstable();
        for id in &lost {
            self.held.remove(id);
        }
        Ok(lost)
    }

    /// Every node, by name.
    ///
    /// # Errors
    /// Database errors.
    pub fn nodes(&mut self) -> Result<Vec<NodeInfo>, StoreError> {
        self.not_in_tx()?;
        let rows = self.client.query(
            "SELECT n.name, n.pid, n.host, (extract(epoch from n.started) * 1000)::bigint, \
             (extract(epoch from n.last_heartbeat) * 1000)::bigint, \
             (SELECT count(*) FROM jobs j WHERE j.lease_node = n.name AND j.state = 'running'), \
             n.stopped, n.last_heartbeat + n.lease_ms * interval '1 millisecond' < now() \
             FROM nodes n ORDER BY n.name",
            &[],
        )?;
        Ok(rows
            .iter()
            .map(|r| NodeInfo {
                name: r.get(0),
                pid: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                host: r.get(2),
                started_ms: r.get::<_, i64>(3) as u64,
                last_heartbeat_ms: r.get::<_, i64>(4) as u64,
                jobs_running: r.get::<_, i64>(5) as u64,
                state: match (r.get::<_, bool>(6), r.get::<_, bool>(7)) {
                    (true, _) => NodeState::Stopped,
                    (false, true) => NodeState::Lost,
                    (false, false) => NodeState::Up,
                },
            })
            .collect())
    }

    /// Claims up to `claim.limit` ready jobs for this node: queued or
    /// retrying, due (`run_at_ms` by the database's clock), every
    /// dependency succeeded, in the queues asked for, highest priority
    /// first then oldest; rows other nodes are claiming are skipped (`FOR
    /// UPDATE SKIP LOCKED`), so two nodes never claim the same job. Each
    /// claimed job is `Running` with a new fencing token and a lease of
    /// this node's `lease_ms` from now.
    ///
    /// Caps: the capped queues are locked (a transaction-scoped advisory
    /// lock per queue, taken in name order) while their running jobs are
    /// counted and the claim is written, so no two nodes both see room for
    /// the last slot.
    ///
    /// # Errors
    /// Database errors; [`StoreError::Db`] before [`PostgresStore::register_node`].
    pub fn claim(&mut self, claim: &Claim<'_>) -> Result<Vec<Claimed>, StoreError> {
        self.not_in_tx()?;
        let node = self.node()?.to_string();
        if claim.limit == 0 {
            return Ok(Vec::new());
        }
        let capped = claim
            .caps
            .iter()
            .any(|(q, _)| claim.queues.is_none_or(|qs| qs.contains(q)));
        if !capped {
            // One statement (its own transaction): pick and mark.
            let claimed = self.claim_uncapped(&node, claim)?;
            for c in &claimed {
                self.held.insert(c.job.id, c.token);
            }
            return Ok(claimed);
        }
        self.begin()?;
        let r = self.claim_inner(&node, claim);
        match r {
            Ok(claimed) => {
                self.commit()?;
                for c in &claimed {
                    self.held.insert(c.job.id, c.token);
                }
                Ok(claimed)
            }
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    fn claim_inner(&mut self, node: &str, claim: &Claim<'_>) -> Result<Vec<Claimed>, StoreError> {
        let mut caps: Vec<(String, u32)> = claim
            .caps
            .iter()
            .filter(|(q, _)| claim.queues.is_none_or(|qs| qs.contains(q)))
            .cloned()
            .collect();
        caps.sort();
        caps.dedup_by(|a, b| a.0 == b.0);
        // Room left in each capped queue, counted under its lock.
        let mut room: Vec<(String, u32)> = Vec::new();
        if !caps.is_empty() {
            let names: Vec<&str> = caps.iter().map(|(q, _)| q.as_str()).collect();
            self.client.execute(
                "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.jobvisor.queue.' || q)) \
                 FROM (SELECT q FROM unnest($1::text[]) AS u(q) ORDER BY q) s",
                &[&names],
            )?;
            // A statement of its own: its snapshot is taken after the locks.
            let rows = self.client.query(
                "SELECT queue, count(*) FROM jobs WHERE state = 'running' AND queue = ANY($1) \
                 GROUP BY queue",
                &[&names],
            )?;
            for (q, cap) in &caps {
                let running = rows
                    .iter()
                    .find(|r| r.get::<_, &str>(0) == q)
                    .map_or(0, |r| r.get::<_, i64>(1));
                let left = i64::from(*cap).saturating_sub(running).max(0) as u32;
                room.push((q.clone(), left));
            }
        }
        let full: Vec<&str> = room
            .iter()
            .filter(|(_, left)| *left == 0)
            .map(|(q, _)| q.as_str())
            .collect();
        let queues: Option<Vec<&str>> = claim
            .queues
            .map(|qs| qs.iter().map(String::as_str).collect());
        let s = self.st(concat!(
            "SELECT id, queue FROM jobs j WHERE state IN ('queued', 'retrying') ",
            "AND run_at_ms <= (extract(epoch from now()) * 1000)::bigint ",
            "AND ($1::text[] IS NULL OR queue = ANY($1)) AND NOT (queue = ANY($2)) ",
            "AND NOT EXISTS (SELECT 1 FROM deps d JOIN jobs p ON p.id = d.dep_id ",
            "WHERE d.job_id = j.id AND p.state <> 'succeeded') ",
            "ORDER BY priority DESC, id LIMIT $3 FOR UPDATE SKIP LOCKED"
        ))?;
        let rows = self
            .client
            .query(&s, &[&queues, &full, &i64::from(claim.limit)])?;
        let mut ids: Vec<i64> = Vec::with_capacity(rows.len());
        for r in &rows {
            let queue: &str = r.get(1);
            if let Some((_, left)) = room.iter_mut().find(|(q, _)| q == queue) {
                if *left == 0 {
                    continue;
                }
                *left -= 1;
            }
            ids.push(r.get(0));
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.st(concat!(
            "UPDATE jobs SET state = 'running', token = token + 1, lease_node = $1, ",
            "lease_expires = now() + $2::bigint * interval '1 millisecond', cancel_requested = false ",
            "WHERE id = ANY($3) RETURNING ",
            pg_job_cols!(),
            ", input_text, input_bytes, output_text, output_bytes, token"
        ))?;
        let rows = self.client.query(&s, &[&node, &big(self.lease_ms), &ids])?;
        self.claimed_from(&rows)
    }

    /// [`PostgresStore::claim`] without caps: the pick (`FOR UPDATE SKIP
    /// LOCKED`) and the mark in one statement, one round trip.
    fn claim_uncapped(
        &mut self,
        node: &str,
        claim: &Claim<'_>,
    ) -> Result<Vec<Claimed>, StoreError> {
        let queues: Option<Vec<&str>> = claim
            .queues
            .map(|qs| qs.iter().map(String::as_str).collect());
        let s = self.st(concat!(
            "WITH c AS (SELECT id AS cid FROM jobs j WHERE state IN ('queued', 'retrying') ",
            "AND run_at_ms <= (extract(epoch from now()) * 1000)::bigint ",
            "AND ($1::text[] IS NULL OR queue = ANY($1)) ",
            "AND NOT EXISTS (SELECT 1 FROM deps d JOIN jobs p ON p.id = d.dep_id ",
            "WHERE d.job_id = j.id AND p.state <> 'succeeded') ",
            "ORDER BY priority DESC, id LIMIT $2 FOR UPDATE SKIP LOCKED) ",
            "UPDATE jobs SET state = 'running', token = token + 1, lease_node = $3, ",
            "lease_expires = now() + $4::bigint * interval '1 millisecond', cancel_requested = false ",
            "FROM c WHERE jobs.id = c.cid RETURNING ",
            pg_job_cols!(),
            ", input_text, input_bytes, output_text, output_bytes, token"
        ))?;
        let rows = self.client.query(
            &s,
            &[&queues, &i64::from(claim.limit), &node, &big(self.lease_ms)],
        )?;
        self.claimed_from(&rows)
    }

    /// Claimed jobs from the rows of a claim's `UPDATE ... RETURNING`, with
    /// their dependencies and attempts, highest priority first then oldest.
    fn claimed_from(&mut self, rows: &[postgres::Row]) -> Result<Vec<Claimed>, StoreError> {
        let mut jobs = Vec::with_capacity(rows.len());
        let mut tokens = Vec::with_capacity(rows.len());
        for r in rows {
            jobs.push(rows::job_from_row(r, true)?);
            tokens.push(r.get::<_, i64>(24) as u64);
        }
        let deps = self.st(rows::SELECT_DEPS)?;
        let attempts = self.st(rows::SELECT_ATTEMPTS)?;
        rows::fill(&mut self.client, &deps, &attempts, &mut jobs)?;
        let mut claimed: Vec<Claimed> = jobs
            .into_iter()
            .zip(tokens)
            .map(|(job, token)| Claimed { job, token })
            .collect();
        claimed.sort_by_key(|c| (std::cmp::Reverse(c.job.priority), c.job.id));
        Ok(claimed)
    }

    /// Re-queues up to `limit` jobs whose lease has passed (by the
    /// database's clock), whoever held them: the open attempt becomes
    /// `Lost` (not charged to the job's attempt budget), the token moves on
    /// (so the old holder's writes are refused) and the job's count of lost
    /// leases grows. A job that has lost `max_lost_leases` leases is dead
    /// instead: a job that keeps outliving its lease (it stalls its node,
    /// or its nodes keep dying under it) is not run forever. Any node may
    /// call it; rows being expired by another are skipped.
    ///
    /// # Errors
    /// Database errors.
    pub fn expire(&mut self, max_lost_leases: u32, limit: u32) -> Result<Expired, StoreError> {
        self.not_in_tx()?;
        self.begin()?;
        let lost = rows::encode_outcome(&jobvisor_proto::control::AttemptOutcome::Lost)?;
        let r = self.client.query(
            &format!(
                "WITH x AS (SELECT id FROM jobs WHERE state = 'running' AND lease_node IS NOT NULL \
                 AND lease_expires < now() ORDER BY lease_expires LIMIT $3 FOR UPDATE SKIP LOCKED), \
                 a AS (UPDATE attempts SET finished_ms = {NOW_MS}, outcome = $2::text::jsonb \
                 WHERE job_id IN (SELECT id FROM x) AND finished_ms IS NULL) \
                 UPDATE jobs j SET lost_leases = j.lost_leases + 1, token = j.token + 1, \
                 lease_node = NULL, lease_expires = NULL, cancel_requested = false, \
                 state = CASE WHEN j.lost_leases + 1 >= $1::bigint THEN 'dead' ELSE 'queued' END, \
                 finished_ms = CASE WHEN j.lost_leases + 1 >= $1::bigint THEN {NOW_MS} END, \
                 error = CASE WHEN j.lost_leases + 1 >= $1::bigint THEN to_jsonb('lost its lease ' || \
                 (j.lost_leases + 1) || ' times (its node stopped or was cut off while running it)') \
                 ELSE j.error END \
                 FROM x WHERE j.id = x.id RETURNING j.id, j.state"
            ),
            &[&i64::from(max_lost_leases.max(1)), &lost, &i64::from(limit)],
        );
        let rows = match r {
            Ok(rows) => rows,
            Err(e) => {
                let _ = self.rollback();
                return Err(e.into());
            }
        };
        let mut out = Expired::default();
        for r in &rows {
            let id = r.get::<_, i64>(0) as u64;
            if r.get::<_, &str>(1) == "dead" {
                out.dead.push(id);
                self.notice(NoticeKind::Finish, id);
            } else {
                out.requeued.push(id);
                self.notice(NoticeKind::Ready, id);
            }
        }
        self.commit()?;
        out.requeued.sort_unstable();
        out.dead.sort_unstable();
        for id in out.requeued.iter().chain(&out.dead) {
            self.held.remove(id);
        }
        Ok(out)
    }

    /// Cancels job `id` from any node: a waiting job (no node holds it) is
    /// cancelled at once with `error` (it cannot be claimed meanwhile: its
    /// row is locked); a running one is marked and its node told by NOTIFY
    /// (and by [`PostgresStore::cancel_requested`] when it polls), which
    /// stops its worker and writes the end (fenced, like any write).
    ///
    /// # Errors
    /// [`StoreError::NotFound`], database errors.
    pub fn request_cancel(
        &mut self,
        id: u64,
        at_ms: u64,
        error: &str,
    ) -> Result<CancelRequest, StoreError> {
        self.not_in_tx()?;
        self.begin()?;
        let r = self.request_cancel_inner(id, at_ms, error);
        match r {
            Ok(answer) => {
                self.commit()?;
                Ok(answer)
            }
            Err(e) => {
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    fn request_cancel_inner(
        &mut self,
        id: u64,
        at_ms: u64,
        error: &str,
    ) -> Result<CancelRequest, StoreError> {
        let row = self.client.query_opt(
            "SELECT state, lease_node FROM jobs WHERE id = $1 FOR UPDATE",
            &[&big(id)],
        )?;
        let Some(row) = row else {
            return Err(StoreError::NotFound(id));
        };
        let state = rows::state(&row, 0)?;
        let node: Option<String> = row.get(1);
        match state {
            s if s.is_terminal() => Ok(CancelRequest::Finished(s)),
            JobState::Running => {
                self.client.execute(
                    "UPDATE jobs SET cancel_requested = true WHERE id = $1",
                    &[&big(id)],
                )?;
                self.notice(NoticeKind::Cancel, id);
                Ok(CancelRequest::Requested { node })
            }
            _ => {
                self.client.execute(
                    "UPDATE jobs SET state = 'cancelled', finished_ms = $2, error = to_jsonb($3::text) \
                     WHERE id = $1",
                    &[&big(id), &big(at_ms), &rows::no_nul(error).as_ref()],
                )?;
                self.notice(NoticeKind::Finish, id);
                Ok(CancelRequest::Cancelled)
            }
        }
    }

    /// The jobs this node holds whose cancel was requested (the polling
    /// side of the `cancel` notification).
    ///
    /// # Errors
    /// Database errors.
    pub fn cancel_requested(&mut self) -> Result<Vec<u64>, StoreError> {
        self.not_in_tx()?;
        let node = self.node()?.to_string();
        let rows = self.client.query(
            "SELECT id FROM jobs WHERE lease_node = $1 AND cancel_requested ORDER BY id",
            &[&node],
        )?;
        Ok(rows.iter().map(|r| r.get::<_, i64>(0) as u64).collect())
    }

    fn node(&self) -> Result<&str, StoreError> {
        self.node
            .as_deref()
            .ok_or_else(|| StoreError::db("not registered as a node: call register_node first"))
    }

    /// Checks that no store transaction is open, and reconnects if needed.
    fn not_in_tx(&mut self) -> Result<(), StoreError> {
        if self.in_tx {
            return Err(StoreError::db(
                "internal: a cluster operation inside a store transaction",
            ));
        }
        self.ensure_connected()
    }
}
