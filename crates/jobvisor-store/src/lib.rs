//! jobvisor's durable job store.
//!
//! # Layout
//! - `store`: the [`JobStore`] trait (one implementation per backend), [`NewJob`], [`Finish`], [`StoreError`].
//! - `sqlite`: [`SqliteStore`], the embedded default (WAL, `synchronous=FULL`, versioned schema).
//! - `writer`: [`StoreHandle`], the one thread that owns the store and group-commits:
//!   every operation queued while a transaction runs goes into the next one, so
//!   many submits share one fsync; an operation is answered only after its commit.

mod sqlite;
mod store;
mod writer;

pub use sqlite::{SqliteStore, SCHEMA_VERSION};
pub use store::{Finish, JobStore, NewJob, StoreError};
pub use writer::StoreHandle;
