//! Where a daemon and its clients meet by default: the state directory and
//! the control socket in it. Both sides read this one rule, so a client
//! without `--socket` finds a daemon started without one.

use std::path::PathBuf;

/// The control socket's file name in the state directory.
pub const SOCKET_FILE: &str = "control.sock";

/// `$XDG_STATE_HOME/jobvisor`, else `$HOME/.local/state/jobvisor`, else
/// `./.jobvisor` (an empty variable counts as unset).
pub fn default_state_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("jobvisor");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h).join(".local/state/jobvisor");
    }
    PathBuf::from(".jobvisor")
}

/// The default control socket: [`SOCKET_FILE`] in [`default_state_dir`].
pub fn default_socket() -> PathBuf {
    default_state_dir().join(SOCKET_FILE)
}
