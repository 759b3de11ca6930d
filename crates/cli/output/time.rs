//! Times for people: durations (`1.5s`, `1m30s`) and Unix milliseconds as
//! timestamps in the local time zone (`TZ`, else the system's), with their
//! offset, and the calendar maths that needs (no time crate: the zone's
//! offset comes from libc's `localtime_r`; the calendar is
//! [`jobvisor_proto::json::time::civil_from_days`], the one the JSON's
//! RFC 3339 times use).

/// `1500` → `1.5s`, `90000` → `1m30s`, `3723000` → `1h02m03s`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    if ms < 60_000 {
        let tenths = ms / 100;
        return if tenths % 10 == 0 {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = ms / 1_000;
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else {
        format!("{m}m{s:02}s")
    }
}

/// Unix milliseconds in the local time zone, with its offset:
/// `2023-11-14 23:13:20.000 +01:00`.
pub fn fmt_unix_ms(ms: u64) -> String {
    fmt_at_offset(ms, local_offset_secs(ms))
}

/// Unix milliseconds to the second in the local time zone, for a table:
/// `2023-11-14 23:13:20`.
pub fn fmt_unix_secs(ms: u64) -> String {
    let full = fmt_unix_ms(ms);
    full.get(..19).unwrap_or(&full).to_owned()
}

/// Unix milliseconds as the wall time `offset_secs` east of UTC, with
/// that offset: `2023-11-14 22:13:20.000 +00:00`.
pub fn fmt_at_offset(ms: u64, offset_secs: i64) -> String {
    let ms = i128::from(ms) + i128::from(offset_secs) * 1_000;
    let ms = u64::try_from(ms.max(0)).unwrap_or(u64::MAX);
    let secs = ms / 1_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, mo, d) = jobvisor_proto::json::time::civil_from_days(days);
    let sign = if offset_secs < 0 { '-' } else { '+' };
    let off = offset_secs.unsigned_abs();
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{:03} {sign}{:02}:{:02}",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        ms % 1_000,
        off / 3600,
        (off / 60) % 60
    )
}

/// The local zone's offset east of UTC at `ms` (daylight saving included),
/// from `localtime_r` (which reads `TZ`); 0 when it cannot tell.
// `c_long` is `i64` here but `i32` on 32-bit targets: the conversion stays.
#[allow(clippy::useless_conversion)]
fn local_offset_secs(ms: u64) -> i64 {
    let Ok(t) = libc::time_t::try_from(ms / 1_000) else {
        return 0;
    };
    // SAFETY: `tm` is plain data that localtime_r fills in; both pointers
    // are valid for the call.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return 0;
        }
        i64::from(tm.tm_gmtoff)
    }
}

/// Now, in Unix ms (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
