//! Answers to the control server: the reply channel of a command and the
//! errors a client is told.

use jobvisor_proto::control::{ControlError, ErrorKind};
use jobvisor_store::StoreError;
use tokio::sync::oneshot;

use crate::errors::chain;

/// Where a command's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T, ControlError>>;

/// An error for a client.
pub(super) fn err(kind: ErrorKind, message: impl Into<String>) -> ControlError {
    ControlError {
        kind,
        message: message.into(),
    }
}

/// A store failure as a client is told it: a missing job is `NotFound`.
pub(super) fn store_err(e: &StoreError) -> ControlError {
    match e {
        StoreError::NotFound(id) => err(ErrorKind::NotFound, format!("no job {id}")),
        other => err(ErrorKind::Storage, chain(other)),
    }
}
