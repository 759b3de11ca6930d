//! Output: what the commands print on stdout, and how.
//!
//! - [`text`]: one-line and truncated text.
//! - [`time`]: durations and timestamps.
//! - [`table`]: plain-text tables.
//! - [`json`]: `--json` output (the types of `jobvisor_proto::json`).
//!
//! This module writes to stdout; a closed pipe (`jobvisor list | head`) is
//! not an error.

pub mod json;
pub mod table;
pub mod text;
pub mod time;

use std::io::Write;

use serde::Serialize;

use self::json::json_failure;
use crate::exit::{Failure, EXIT_ERROR};

/// Writes `text` to stdout. A closed pipe (`jobvisor list | head`) is not an error.
pub fn emit(text: &str) -> Result<(), Failure> {
    emit_bytes(text.as_bytes())
}

/// Writes raw bytes to stdout; a closed pipe (`| head`) is not an error.
pub fn emit_bytes(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(
            EXIT_ERROR,
            anyhow::Error::new(e).context("writing to stdout"),
        )),
    }
}

/// Writes `value` (a type of [`jobvisor_proto::json`], or a `serde_json::Value`)
/// as pretty JSON and a newline.
pub fn emit_json<T: Serialize + ?Sized>(value: &T) -> Result<(), Failure> {
    let mut text = serde_json::to_string_pretty(value).map_err(json_failure)?;
    text.push('\n');
    emit(&text)
}

#[cfg(test)]
mod tests {
    use jobvisor_proto::hex;

    use super::table::table;
    use super::text::{one_line, truncate_chars};
    use super::time::{fmt_at_offset, fmt_ms};

    #[test]
    fn formatting_helpers() {
        assert_eq!(fmt_at_offset(0, 0), "1970-01-01 00:00:00.000 +00:00");
        assert_eq!(
            fmt_at_offset(1_700_000_000_123, 0),
            "2023-11-14 22:13:20.123 +00:00"
        );
        assert_eq!(
            fmt_at_offset(951_782_400_000, 0),
            "2000-02-29 00:00:00.000 +00:00"
        );
        // Issue 10, item F.25: local time, with the zone's offset.
        assert_eq!(
            fmt_at_offset(1_700_000_000_123, 3_600),
            "2023-11-14 23:13:20.123 +01:00"
        );
        assert_eq!(
            fmt_at_offset(1_700_000_000_123, -(5 * 3600 + 1800)),
            "2023-11-14 16:43:20.123 -05:30"
        );
        assert_eq!(fmt_ms(5), "5ms");
        assert_eq!(fmt_ms(1_500), "1.5s");
        assert_eq!(fmt_ms(2_000), "2s");
        assert_eq!(fmt_ms(90_000), "1m30s");
        assert_eq!(fmt_ms(3_723_000), "1h02m03s");
        assert_eq!(truncate_chars("héllo wörld", 5), "héll…");
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        assert_eq!(hex(&[0, 0xab, 0x10]), "00ab10");
        let t = table(
            &["ID", "STATE", "ERROR"],
            &[
                vec!["1".into(), "failed".into(), "boom".into()],
                vec!["123".into(), "ok".into(), String::new()],
            ],
        );
        assert_eq!(t, "ID   STATE   ERROR\n1    failed  boom\n123  ok\n");
    }
}
