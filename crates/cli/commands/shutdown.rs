//! `shutdown`: ask the daemon to stop, draining running jobs unless `--now`.

use std::path::Path;

use jobvisor_client::ClientError;

use super::connect;
use crate::exit::{CmdResult, EXIT_OK};
use crate::output::emit;

/// Asks for a shutdown, `graceful` letting running jobs finish.
pub async fn shutdown(graceful: bool, socket: &Path) -> CmdResult {
    let mut client = connect(socket).await?;
    match client.shutdown(graceful).await {
        Ok(()) => {}
        // The daemon may close the connection as it goes away.
        Err(ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
            ) => {}
        Err(e) => return Err(e.into()),
    }
    let how = if graceful {
        "shutdown requested; running jobs will finish first"
    } else {
        "immediate shutdown requested"
    };
    emit(&format!("{how}\n"))?;
    Ok(EXIT_OK)
}
