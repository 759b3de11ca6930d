//! Exit codes, and the failure of a command that carries one.
//!
//! | code | constant              | meaning                                                       |
//! |------|-----------------------|---------------------------------------------------------------|
//! | 0    | [`EXIT_OK`]           | success (for `wait`, `result`, `submit --wait`: job succeeded) |
//! | 1    | [`EXIT_ERROR`]        | any other error; also a job that is not finished yet          |
//! | 2    | [`EXIT_USAGE`]        | bad usage (clap's own, bad `--input` JSON, bad batch file)     |
//! | 3    | [`EXIT_JOB_FAILED`]   | a job failed or is dead                                       |
//! | 4    | [`EXIT_NOT_FOUND`]    | no such job                                                   |
//! | 5    | [`EXIT_UNREACHABLE`]  | the daemon is unreachable                                     |
//! | 6    | [`EXIT_CANCELLED`]    | a job was cancelled                                           |
//! | 7    | [`EXIT_REFUSED`]      | the daemon refused the request (bad request, unknown task, bad input, limit reached, shutting down, storage failure, permission denied) |
//!
//! When several jobs are involved (`wait`, `submit --wait`), the worst one
//! decides: failed/dead (3) before cancelled (6) before unfinished (1) before
//! succeeded (0).

use jobvisor_client::ClientError;
use jobvisor_proto::control::{ErrorKind, JobState};

/// Success.
pub const EXIT_OK: u8 = 0;

/// Any other error (including a job that has not finished yet).
pub const EXIT_ERROR: u8 = 1;

/// Bad usage: clap's own errors, and input the CLI rejects before sending anything.
pub const EXIT_USAGE: u8 = 2;

/// A job failed or is dead.
pub const EXIT_JOB_FAILED: u8 = 3;

/// No such job.
pub const EXIT_NOT_FOUND: u8 = 4;

/// The daemon is unreachable.
pub const EXIT_UNREACHABLE: u8 = 5;

/// A job was cancelled.
pub const EXIT_CANCELLED: u8 = 6;

/// The daemon refused the request.
pub const EXIT_REFUSED: u8 = 7;

/// The exit code a job in `state` stands for: 0 succeeded, 3 failed or dead,
/// 6 cancelled, 1 not finished.
pub fn exit_code_for_state(state: JobState) -> u8 {
    match state {
        JobState::Succeeded => EXIT_OK,
        JobState::Failed | JobState::Dead => EXIT_JOB_FAILED,
        JobState::Cancelled => EXIT_CANCELLED,
        JobState::Queued | JobState::Running | JobState::Retrying => EXIT_ERROR,
    }
}

/// Worst exit code among the states: failed/dead, then cancelled, then
/// unfinished, then succeeded.
pub fn worst_exit_code(states: impl IntoIterator<Item = JobState>) -> u8 {
    fn rank(code: u8) -> u8 {
        match code {
            EXIT_JOB_FAILED => 3,
            EXIT_CANCELLED => 2,
            EXIT_OK => 0,
            _ => 1,
        }
    }
    states
        .into_iter()
        .map(exit_code_for_state)
        .max_by_key(|c| rank(*c))
        .unwrap_or(EXIT_OK)
}

/// A command's failure: the exit code, and the error for stderr with its
/// causes kept (see [`Failure::message`]).
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What went wrong, outermost first.
    pub error: anyhow::Error,
}

impl Failure {
    /// A failure with this exit code.
    pub fn new(code: u8, error: anyhow::Error) -> Self {
        Self { code, error }
    }

    /// A failure with this exit code that `message` tells in full.
    pub fn msg<M>(code: u8, message: M) -> Self
    where
        M: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
    {
        Self::new(code, anyhow::Error::msg(message))
    }

    /// A usage error ([`EXIT_USAGE`]): input refused before anything is sent.
    pub fn usage<M>(message: M) -> Self
    where
        M: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static,
    {
        Self::msg(EXIT_USAGE, message)
    }

    /// What stderr shows after `jobvisor: `: the error and each of its
    /// causes once, `: `-separated.
    pub fn message(&self) -> String {
        format!("{:#}", self.error)
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Unreachable { .. } => EXIT_UNREACHABLE,
            ClientError::Server(ce) => exit_code_for_error_kind(ce.kind),
            _ => EXIT_ERROR,
        };
        Self::new(code, e.into())
    }
}

/// The exit code of the daemon's refusal of this kind.
pub fn exit_code_for_error_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::NotFound => EXIT_NOT_FOUND,
        ErrorKind::Internal => EXIT_ERROR,
        ErrorKind::BadRequest
        | ErrorKind::UnknownTask
        | ErrorKind::BadInput
        | ErrorKind::LimitReached
        | ErrorKind::ShuttingDown
        | ErrorKind::Storage
        | ErrorKind::PermissionDenied
        | ErrorKind::Conflict => EXIT_REFUSED,
    }
}

/// What a command returns: its exit code, or a failure to print.
pub type CmdResult = Result<u8, Failure>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::connect_failure;
    use std::path::Path;

    #[test]
    fn messages_print_each_cause_once() {
        let unreachable = ClientError::Unreachable {
            path: "/x".to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(
            Failure::from(unreachable).message(),
            "cannot reach the jobvisor daemon at /x: entity not found"
        );
        let io = ClientError::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(
            connect_failure(io, Path::new("/x")).message(),
            "cannot talk to the jobvisor daemon at /x: connection reset"
        );
        let io = ClientError::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(
            Failure::from(io).message(),
            "connection to the daemon failed: connection reset"
        );
        let refused = ClientError::Server(jobvisor_proto::control::ControlError {
            kind: ErrorKind::UnknownTask,
            message: "no task `x`".to_owned(),
        });
        assert_eq!(Failure::from(refused).message(), "no task `x`");
        assert_eq!(Failure::usage("bad").message(), "bad");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code_for_state(JobState::Succeeded), 0);
        assert_eq!(exit_code_for_state(JobState::Failed), 3);
        assert_eq!(exit_code_for_state(JobState::Dead), 3);
        assert_eq!(exit_code_for_state(JobState::Cancelled), 6);
        assert_eq!(exit_code_for_state(JobState::Queued), 1);
        assert_eq!(exit_code_for_state(JobState::Running), 1);
        assert_eq!(exit_code_for_state(JobState::Retrying), 1);

        use JobState::*;
        assert_eq!(worst_exit_code([]), 0);
        assert_eq!(worst_exit_code([Succeeded, Succeeded]), 0);
        assert_eq!(worst_exit_code([Succeeded, Running]), 1);
        assert_eq!(worst_exit_code([Running, Cancelled, Succeeded]), 6);
        assert_eq!(worst_exit_code([Cancelled, Dead, Running]), 3);
        assert_eq!(worst_exit_code([Failed, Cancelled]), 3);

        for (kind, code) in [
            (ErrorKind::NotFound, EXIT_NOT_FOUND),
            (ErrorKind::Internal, EXIT_ERROR),
            (ErrorKind::BadRequest, EXIT_REFUSED),
            (ErrorKind::UnknownTask, EXIT_REFUSED),
            (ErrorKind::BadInput, EXIT_REFUSED),
            (ErrorKind::LimitReached, EXIT_REFUSED),
            (ErrorKind::ShuttingDown, EXIT_REFUSED),
            (ErrorKind::Storage, EXIT_REFUSED),
            (ErrorKind::PermissionDenied, EXIT_REFUSED),
            (ErrorKind::Conflict, EXIT_REFUSED),
        ] {
            let e = ClientError::Server(jobvisor_proto::control::ControlError {
                kind,
                message: "m".to_owned(),
            });
            assert_eq!(Failure::from(e).code, code, "{kind:?}");
        }
        let unreachable = ClientError::Unreachable {
            path: "/x".to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(Failure::from(unreachable).code, EXIT_UNREACHABLE);
        let io = ClientError::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(connect_failure(io, Path::new("/x")).code, EXIT_UNREACHABLE);
        let io = ClientError::Io(std::io::ErrorKind::ConnectionReset.into());
        assert_eq!(Failure::from(io).code, EXIT_ERROR, "I/O after connecting");
    }
}
