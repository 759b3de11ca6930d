//! How SQLite's errors become the store's: the internal error of one step
//! of SQL (SQLite's, or already a [`StoreError`]) and the mapping that tells
//! a full disk from any other failure.

use std::sync::Arc;

use rusqlite::{Connection, ErrorCode};

use crate::store::{Context, StoreError};

/// The error of an internal step: SQLite's (mapped with the connection at
/// hand, to tell a full disk) or already the store's.
#[derive(Debug)]
pub(crate) enum Error {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sql(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Error::Store(e)
    }
}

/// Maps an internal error to the store's: `SQLITE_FULL`, and an I/O error
/// whose system call failed with `ENOSPC` or `EDQUOT`, are
/// [`StoreError::Full`]. `conn` is the connection the error came from (it
/// holds the errno of its last I/O error).
pub(crate) fn to_store_error(conn: &Connection, e: Error) -> StoreError {
    let e = match e {
        Error::Store(e) => return e,
        Error::Sql(e) => e,
    };
    if let rusqlite::Error::SqliteFailure(failure, _) = &e {
        match failure.code {
            ErrorCode::DiskFull => return StoreError::Full(Arc::new(e)),
            ErrorCode::SystemIoFailure => {
                // SAFETY: the handle is this open connection's, used on
                // this thread only; sqlite3_system_errno only reads the
                // errno SQLite saved for it.
                let errno = unsafe { rusqlite::ffi::sqlite3_system_errno(conn.handle()) };
                if errno == libc::ENOSPC || errno == libc::EDQUOT {
                    // SQLite's message is a bare "disk I/O error": the errno says why.
                    let os = std::io::Error::from_raw_os_error(errno);
                    return StoreError::Full(Arc::new(Context::new(e.to_string(), os)));
                }
            }
            _ => {}
        }
    }
    StoreError::Db(Arc::new(e))
}

/// Rolls back the open transaction, if any, after an error.
pub(crate) fn rollback_quietly(conn: &Connection) {
    if !conn.is_autocommit() {
        // Best effort: the error that got us here is the one to report.
        let _ = conn.execute_batch("ROLLBACK");
    }
}
