//! [`WorkerError`]: why a worker's loop could not go on.
//!
//! The bottom of the crate, so that every layer above can fail with it.

use std::io;

use jobvisor_proto::{FrameError, HandshakeError};

/// The worker could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A pipe failed.
    #[error("worker pipe I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The supervisor speaks another protocol.
    #[error("worker handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The supervisor sent something that is not a valid message.
    #[error("worker received a bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The supervisor broke the protocol's order.
    #[error("worker protocol violation: {0}")]
    Protocol(String),
}
