//! Human durations: the one parser of the command line (`--timeout 1.5s`)
//! and of the daemon's configuration (`drain_grace_ms = "30s"`).
//!
//! One or more `NUMBER UNIT` parts, summed (`500ms`, `2s`, `1.5s`, `1h30m`,
//! `2d`); units `ms`, `s`/`sec`, `m`/`min`, `h`, `d`. humantime is the
//! ecosystem's parser, but this one is small, refuses a bare number (which
//! `--timeout 5` users took for seconds and got milliseconds) and adds no
//! dependency.

use std::time::Duration;

/// A human duration: one or more `NUMBER UNIT` parts, summed (`500ms`, `2s`,
/// `1.5s`, `1h30m`, `2d`); units `ms`, `s`/`sec`, `m`/`min`, `h`, `d`. A bare
/// number other than `0` is refused: `--timeout 5` used to mean 5 ms, which
/// nobody who typed it meant.
///
/// # Errors
/// A text that is not such a duration, naming what is wrong.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = |why: &str| format!("invalid duration `{s}`: {why}");
    if t.is_empty() {
        return Err(bad("empty (use e.g. 500ms, 2s, 1.5s, 1h30m, 2d)"));
    }
    let mut total_ns: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, after) = rest.split_at(num_len);
        let after = after.trim_start();
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if num.is_empty() {
            return Err(bad(
                "expected a number before each unit (e.g. 500ms, 2s, 1h30m)",
            ));
        }
        let unit_ns: u128 = match unit {
            "" => {
                return Err(bad(
                    "a number needs a unit: ms, s, m, h or d (e.g. 5s or 500ms)",
                ))
            }
            "ms" => 1_000_000,
            "s" | "sec" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            other => {
                return Err(bad(&format!(
                    "unknown unit `{other}` (use ms, s, m, h or d)"
                )))
            }
        };
        let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return Err(bad(&format!("`{num}` is not a number")));
        }
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| bad("number too large"))?
        };
        // Fractions to the nanosecond; more digits than that are dropped.
        let digits = frac.len().min(9);
        let frac_ns: u128 = if digits == 0 {
            0
        } else {
            let f: u128 = frac[..digits].parse().map_err(|_| bad("bad fraction"))?;
            f * unit_ns / 10u128.pow(digits as u32)
        };
        total_ns = whole
            .checked_mul(unit_ns)
            .and_then(|w| w.checked_add(frac_ns))
            .and_then(|p| p.checked_add(total_ns))
            .ok_or_else(|| bad("too long"))?;
        rest = next.trim_start();
    }
    let ms = u64::try_from(total_ns / 1_000_000).map_err(|_| bad("too long"))?;
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ms = |s| parse_duration(s).map(|d| d.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("2s"), Ok(2_000));
        assert_eq!(ms("1m"), Ok(60_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("0"), Ok(0));
        assert_eq!(ms(" 3s "), Ok(3_000));
        assert_eq!(ms("3 s"), Ok(3_000));
        // Issue 10, item 21: fractions, compound durations and days.
        assert_eq!(ms("1.5s"), Ok(1_500));
        assert_eq!(ms(".5s"), Ok(500));
        assert_eq!(ms("1h30m"), Ok(5_400_000));
        assert_eq!(ms("1m 30s"), Ok(90_000));
        assert_eq!(ms("2d"), Ok(172_800_000));
        assert_eq!(ms("2min"), Ok(120_000));
        assert_eq!(ms("10sec"), Ok(10_000));
        for bad in [
            "",
            "s",
            "ms",
            "-1s",
            "1sec2",
            "abc",
            "1.2.3s",
            ".s",
            "2w",
            "99999999999999999999999999999999999999d",
        ] {
            let e = parse_duration(bad).expect_err(bad);
            assert!(e.contains("invalid duration"), "{bad}: {e}");
        }
        // A bare number used to be milliseconds (`--timeout 5` = 5 ms).
        for bare in ["5", "250", "1.5"] {
            let e = parse_duration(bare).expect_err(bare);
            assert!(e.contains("needs a unit"), "{bare}: {e}");
        }
        assert!(parse_duration("2w")
            .unwrap_err()
            .contains("unknown unit `w`"));
        assert!(parse_duration(&format!("{}h", u64::MAX))
            .unwrap_err()
            .contains("too long"));
    }
}
