//! The jobvisor wire format, shared by every link (supervisor ↔ worker pipes,
//! supervisor ↔ fork server socket, and later the control socket).
//!
//! A frame is a `u32` little-endian payload length followed by the payload, a
//! bincode 2 encoding of one message. The maximum frame size is checked
//! *before* anything is allocated, and every decode runs with a size limit.
//!
//! # Layout
//! - [`backoff`]: exponential backoff with a cap (and jitter): the one rule
//!   for retries, restarts and held writes.
//! - [`bytes`]: the serde adapter for byte fields (bounded decoding).
//! - [`duration`]: human durations (`1.5s`, `1h30m`), for the CLI and the
//!   configuration.
//! - [`codec`]: the only module that touches `bincode`; encode / decode with a limit.
//! - [`frame`]: framing: [`FrameBuf`] (incremental decoder) and [`encode_frame`].
//! - [`handshake`]: the fixed-layout [`Hello`] every link starts with: protocol
//!   version and schema hash, and the error that names both sides on a mismatch.
//! - [`json`]: the public JSON (`--json`, notifications, the HTTP API): output
//!   types of their own, built from the wire types, documented in `docs/json.md`.
//! - [`paths`]: the default state directory and control socket, which the
//!   daemon and its clients share.
//! - [`worker`]: messages on the supervisor ↔ worker link.
//! - [`forkserver`]: messages on the supervisor ↔ fork server link.
//! - [`control`]: requests and responses on the control socket.
//!
//! This crate does no I/O on processes; transports live above it.

pub mod backoff;
pub mod bytes;
pub mod codec;
pub mod control;
pub mod duration;
pub mod forkserver;
pub mod frame;
pub mod handshake;
pub mod json;
pub mod paths;
pub mod worker;

pub use codec::CodecError;
pub use frame::{encode_frame, FrameBuf, FrameError, FRAME_HEADER_BYTES};
pub use handshake::{HandshakeError, Hello, Role, HELLO_BYTES, PROTOCOL_VERSION, SCHEMA_HASH};

/// `bytes` as lower-case hex, two digits a byte (digests, raw payloads shown
/// in JSON or on a terminal).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}
