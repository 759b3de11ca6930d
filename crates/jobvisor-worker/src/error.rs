//! [`WorkerError`]: why a worker's loop could not go on.
//!
//! The bottom of the crate: the link, the inbox and the loop all fail with
//! it. Each variant keeps its cause as its `source`, and its `Display` says
//! only what failed at this layer, so `{e:#}` or an error chain prints every
//! cause once.

use std::io;

use jobvisor_proto::{FrameError, HandshakeError};

/// The worker could not go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A pipe failed.
    #[error("worker pipe I/O failed")]
    Io(#[from] io::Error),
    /// The supervisor speaks another protocol.
    #[error("worker handshake failed")]
    Handshake(#[from] HandshakeError),
    /// The supervisor sent something that is not a valid message, or a
    /// message the worker could not frame.
    #[error("bad frame on the worker link")]
    Frame(#[from] FrameError),
    /// The memory limit of `Configure` could not be applied.
    #[error("cannot cap the worker's address space at {bytes} bytes")]
    Limit {
        /// The limit asked for.
        bytes: u64,
        /// Why `setrlimit` refused.
        #[source]
        source: io::Error,
    },
    /// The supervisor broke the protocol's order.
    #[error("worker protocol violation: {0}")]
    Protocol(String),
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn display_stops_at_its_layer_and_keeps_the_source() {
        let e = WorkerError::from(io::Error::new(io::ErrorKind::BrokenPipe, "pipe gone"));
        assert_eq!(e.to_string(), "worker pipe I/O failed");
        assert_eq!(
            e.source().map(ToString::to_string),
            Some("pipe gone".into())
        );
        // The chain prints the cause once.
        assert_eq!(crate::error_chain(&e), "worker pipe I/O failed: pipe gone");
        let e = WorkerError::Limit {
            bytes: 1 << 30,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(!e.to_string().contains("not permitted"), "{e}");
        assert!(e.source().is_some());
    }
}
