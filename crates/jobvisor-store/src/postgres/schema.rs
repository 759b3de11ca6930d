//! The PostgreSQL schema and its migrations.
//!
//! The version is the one row of `jobvisor_schema`; [`migrate`] runs at
//! every open, in one transaction under `pg_advisory_xact_lock` (keyed by
//! the schema the connection writes to), so nodes that start together
//! apply each step once and the others wait and then find nothing to do.
//! A database written by a newer build is refused before anything changes.
//!
//! Version 1 has what SQLite's schema 7 has (per-job crash budgets and
//! epochs included). Conventions, so that later steps are one `ALTER TABLE
//! ... ADD COLUMN` each: every per-job setting is a nullable or defaulted column of
//! `jobs`; times the daemon decides are `bigint` unix ms (`*_ms`); times
//! the cluster must agree on (leases, heartbeats) are `timestamptz` from the
//! database's clock (`now()`); everything an operator queries is `jsonb`.

use postgres::Client;

use crate::store::StoreError;

/// The schema, one entry per version: entry `i` takes a database from
/// version `i` to `i + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // v1
    "CREATE TABLE jobs (
        id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        task             text    NOT NULL,
        queue            text    NOT NULL,
        priority         integer NOT NULL,
        state            text    NOT NULL,
        max_attempts     bigint  NOT NULL,
        backoff_base_ms  bigint  NOT NULL,
        backoff_max_ms   bigint  NOT NULL,
        timeout_ms       bigint,
        stall_timeout_ms bigint,
        run_at_ms        bigint  NOT NULL,
        created_ms       bigint  NOT NULL,
        finished_ms      bigint,
        key              text    UNIQUE,
        -- A JSON payload as jsonb (for SQL; NULL when jsonb cannot hold it,
        -- e.g. a \\u0000 escape) and its exact text (what the task gets back);
        -- a native payload as bytes only.
        input            jsonb,
        input_text       text,
        input_bytes      bytea,
        output           jsonb,
        output_text      text,
        output_bytes     bytea,
        -- The last error, a JSON string (error #>> '{}' is its text).
        error            jsonb,
        input_from       jsonb,
        notify_url       text,
        -- Budgets (SQLite's v7): the crash budget (NULL: the daemon's
        -- jobs.max_crashes), the first attempt the budgets count, and how
        -- many times a client's retry revived the job.
        max_crashes      bigint,
        budget_from      bigint  NOT NULL DEFAULT 1,
        epoch            bigint  NOT NULL DEFAULT 0,
        -- Cluster: the fencing token (incremented by every claim and by the
        -- expiry of a lease), the lease, lost leases so far, cancel asked.
        token            bigint  NOT NULL DEFAULT 0,
        lease_node       text,
        lease_expires    timestamptz,
        lost_leases      integer NOT NULL DEFAULT 0,
        cancel_requested boolean NOT NULL DEFAULT false
    );
    CREATE INDEX jobs_ready ON jobs (priority DESC, id)
        WHERE state IN ('queued', 'retrying');
    CREATE INDEX jobs_state_finished ON jobs (state, finished_ms);
    CREATE INDEX jobs_queue_state ON jobs (queue, state);
    CREATE INDEX jobs_lease ON jobs (lease_expires) WHERE lease_node IS NOT NULL;
    CREATE TABLE attempts (
        job_id      bigint NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        number      bigint NOT NULL,
        worker_pid  bigint,
        started_ms  bigint NOT NULL,
        finished_ms bigint,
        outcome     jsonb  NOT NULL,
        -- Which node ran it, under which fencing token.
        node        text,
        token       bigint,
        PRIMARY KEY (job_id, number)
    );
    CREATE TABLE deps (
        job_id bigint NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        dep_id bigint NOT NULL,
        ord    bigint NOT NULL,
        PRIMARY KEY (job_id, dep_id)
    );
    CREATE INDEX deps_dep ON deps (dep_id);
    CREATE TABLE outbox (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_id      bigint NOT NULL,
        state       text   NOT NULL,
        target      text   NOT NULL,
        attempts    bigint NOT NULL,
        next_at_ms  bigint NOT NULL,
        created_ms  bigint NOT NULL,
        last_error  text,
        epoch       bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE nodes (
        name           text PRIMARY KEY,
        pid            bigint NOT NULL,
        host           text NOT NULL,
        started        timestamptz NOT NULL DEFAULT now(),
        last_heartbeat timestamptz NOT NULL DEFAULT now(),
        lease_ms       bigint NOT NULL,
        stopped        boolean NOT NULL DEFAULT false
    );",
];

/// The schema version this build writes (and the newest it can read).
pub const PG_SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Applies the missing migrations in one transaction under an advisory lock.
pub(crate) fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.jobvisor.migrate'))",
        &[],
    )?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS jobvisor_schema (version integer NOT NULL)")?;
    let found: Option<i32> = tx
        .query_opt("SELECT version FROM jobvisor_schema", &[])?
        .map(|row| row.get(0));
    let found = found.unwrap_or(0);
    if found < 0 {
        return Err(StoreError::db(format!("invalid schema version {found}")));
    }
    let found = found as u32;
    if found > PG_SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found,
            supported: PG_SCHEMA_VERSION,
        });
    }
    if found == PG_SCHEMA_VERSION {
        return Ok(tx.commit()?);
    }
    for step in &MIGRATIONS[found as usize..] {
        tx.batch_execute(step)?;
    }
    tx.execute("DELETE FROM jobvisor_schema", &[])?;
    tx.execute(
        "INSERT INTO jobvisor_schema (version) VALUES ($1)",
        &[&(PG_SCHEMA_VERSION as i32)],
    )?;
    Ok(tx.commit()?)
}
