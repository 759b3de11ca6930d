//! jobvisor's durable job store.
//!
//! # Layout
//! Lowest layer first: each module uses only the ones listed before it.
//! - `store`: the [`JobStore`] trait (one implementation per backend), [`NewJob`], [`Finish`], [`StoreError`].
//! - `json`: the store's own JSON shape of attempt outcomes and pipeline inputs,
//!   as rows hold them (readable with `sqlite3`, and the shape of a future `jsonb`).
//! - `rows`: how a job is laid out in SQLite rows (columns, payloads, attempt outcomes).
//! - `sql_error`: SQLite's errors as the store's (a full disk is [`StoreError::Full`]).
//! - `v4_blobs`: the codec blobs of schema 4 and older, rewritten as JSON by the
//!   migration to schema 5.
//! - `schema`: the versioned schema and its migrations ([`SCHEMA_VERSION`]).
//! - `insert`, `query`: writing new jobs, reading jobs back.
//! - `outbox`: the notifications still to deliver, written with the job states they tell of.
//! - `sqlite`: [`SqliteStore`], the embedded default (WAL, `synchronous=FULL`): the
//!   connection, the writes of attempts and job states, the [`JobStore`] impl.
//! - `held`: which job-state writes a full disk holds back, and when they are tried again.
//! - `op`: one queued operation of the store thread and how it is answered.
//! - `batch`: a batch of operations in one transaction (attempt pairing,
//!   savepoints when one fails).
//! - `postgres` (feature `postgres`, on by default): [`PostgresStore`], the
//!   backend several daemons share, with its cluster API (claims, leases,
//!   fencing tokens, nodes) and [`Listener`] (`LISTEN/NOTIFY` wake-ups).
//!   Uses `store`, `json` and `rows` only.
//! - `writer`: [`StoreHandle`], the one thread that owns the store, assembles
//!   batches and group-commits:
//!   every operation queued while a transaction runs goes into the next one, so
//!   many submits share one fsync; an operation is answered only after its commit.

mod batch;
mod held;
mod insert;
mod json;
mod op;
mod outbox;
#[cfg(feature = "postgres")]
mod postgres;
mod query;
mod rows;
mod schema;
mod sql_error;
mod sqlite;
mod store;
mod v4_blobs;
mod writer;

#[cfg(feature = "postgres")]
pub use postgres::{
    CancelRequest, Claim, Claimed, Expired, Listener, NodeInfo, NodeState, PostgresStore, Wake,
    DEFAULT_LEASE_MS, PG_SCHEMA_VERSION, POLL_FALLBACK,
};
pub use schema::SCHEMA_VERSION;
pub use sqlite::SqliteStore;
pub use store::{Delivery, Finish, JobStore, NewDelivery, NewJob, StoreError};
pub use writer::StoreHandle;
