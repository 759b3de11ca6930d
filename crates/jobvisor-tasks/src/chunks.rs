//! The read loop shared by the file tasks.

use std::io::{ErrorKind, Read};

use jobvisor_worker::{Ctx, TaskError};

/// Big enough that syscalls are a small part of the cost, small enough that
/// cancellation is noticed within a fraction of a millisecond of I/O.
pub(crate) const CHUNK_BYTES: usize = 64 * 1024;

/// Reads `r` to its end in chunks of [`CHUNK_BYTES`], handing each chunk to
/// `sink`. Reports progress against `total` (the expected size, 0 if unknown)
/// and stops with [`TaskError::cancelled`] as soon as the call is cancelled.
/// `what` names the source in error messages. Returns the bytes read.
pub(crate) fn for_each_chunk(
    r: &mut impl Read,
    what: &str,
    total: u64,
    ctx: &mut Ctx<'_>,
    mut sink: impl FnMut(&[u8]) -> Result<(), TaskError>,
) -> Result<u64, TaskError> {
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut done: u64 = 0;
    loop {
        // progress() doubles as the cancellation check, and keeps a long file
        // looking alive to the supervisor.
        if ctx.progress(done, total.max(done)) {
            return Err(TaskError::cancelled());
        }
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(done),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(TaskError::msg(format!("cannot read {what}: {e}"))),
        };
        sink(&buf[..n])?;
        done += n as u64;
    }
}
