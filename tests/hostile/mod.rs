//! Hostile clients and a hostile environment, against the real `jobvisor`
//! binary over real sockets: silent and slow clients (handshake timeout), a
//! connection flood past `limits.max_connections`, an oversize frame, a
//! state directory on a tiny filesystem that fills up, and files and
//! directories planted by another user.
//!
//! Nothing here sleeps to synchronise: every wait is on an observable event
//! (EOF, an answer, a file-descriptor count) with a generous timeout as the
//! failure bound.
//!
//! # Layout
//! - `connections`: handshake, idle and request timeouts, oversize frame,
//!   connection flood, a refused peer and the slots.
//! - `requests`: extreme field values.
//! - `disk_full`: a state directory that fills up.
//! - `limits`: memory bounds against frames announced and not sent, and a
//!   submit that would cost a gigabyte decoded.
//! - `files`: files and directories that are not the daemon's.

mod connections;
mod disk_full;
mod files;
mod limits;
mod requests;
