//! Value parsers of the command line (durations, backoff, `K=V`, job states,
//! `--input-from` references), shared by the clap types and batch files.
//!
//! Pure text → value functions; an error is a message naming the bad text,
//! as clap's `value_parser` wants it.

use std::time::Duration;

use jobvisor_proto::control::JobState;

/// `--backoff-ms BASE[:MAX]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First retry delay in ms.
    pub base_ms: u64,
    /// Cap on the retry delay in ms.
    pub max_ms: Option<u64>,
}

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

/// `--env K=V`: the first `=` splits; `K` must not be empty.
pub fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected K=V with a non-empty K, got `{s}`")),
    }
}

/// `--backoff-ms BASE[:MAX]`, in ms; `MAX` is not below `BASE`.
pub fn parse_backoff(s: &str) -> Result<Backoff, String> {
    let num = |t: &str, what: &str| {
        t.trim().parse::<u64>().map_err(|_| {
            format!("invalid backoff `{s}`: {what} must be a number of ms (BASE[:MAX])")
        })
    };
    let b = match s.split_once(':') {
        Some((base, max)) => Backoff {
            base_ms: num(base, "BASE")?,
            max_ms: Some(num(max, "MAX")?),
        },
        None => Backoff {
            base_ms: num(s, "BASE")?,
            max_ms: None,
        },
    };
    if let Some(max) = b.max_ms {
        if max < b.base_ms {
            return Err(format!("invalid backoff `{s}`: MAX is below BASE"));
        }
    }
    Ok(b)
}

/// `--state NAME`: a job state by its name, any case.
pub fn parse_state(s: &str) -> Result<JobState, String> {
    JobState::parse(&s.to_ascii_lowercase()).ok_or_else(|| {
        format!(
            "unknown state `{s}` (one of: queued, running, retrying, succeeded, failed, cancelled, dead)"
        )
    })
}

/// A job id, or `#N`: the N-th line (1-based) of the same batch.
pub fn parse_job_ref(s: &str) -> Result<jobvisor_proto::control::JobRef, String> {
    use jobvisor_proto::control::JobRef;
    if let Some(n) = s.strip_prefix('#') {
        let n: u32 = n
            .parse()
            .map_err(|_| format!("bad batch reference {s:?}"))?;
        if n == 0 {
            return Err("batch references count lines from #1".into());
        }
        return Ok(JobRef::Batch(n - 1));
    }
    s.parse()
        .map(JobRef::Id)
        .map_err(|_| format!("bad job reference {s:?} (an id, or #N for a line of the batch)"))
}

/// `ID[:/json/pointer][@field]` (ID may be `#N` in a batch).
pub fn parse_input_from(s: &str) -> Result<jobvisor_proto::control::InputRef, String> {
    let (rest, field) = match s.rsplit_once('@') {
        Some((r, f)) if !f.is_empty() => (r, Some(f.to_string())),
        Some(_) => return Err(format!("empty field after '@' in {s:?}")),
        None => (s, None),
    };
    let (job, pointer) = match rest.split_once(':') {
        Some((j, p)) => (j, Some(p.to_string())),
        None => (rest, None),
    };
    Ok(jobvisor_proto::control::InputRef {
        job: parse_job_ref(job)?,
        pointer,
        field,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_from_syntax() {
        use jobvisor_proto::control::JobRef;
        let r = parse_input_from("12:/a/b@field").unwrap();
        assert_eq!(
            (r.job, r.pointer.as_deref(), r.field.as_deref()),
            (JobRef::Id(12), Some("/a/b"), Some("field"))
        );
        let r = parse_input_from("#2").unwrap();
        assert_eq!((r.job, r.pointer, r.field), (JobRef::Batch(1), None, None));
        assert!(parse_input_from("#0").is_err());
        assert!(parse_input_from("x").is_err());
        assert!(parse_input_from("3@").is_err());
    }

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

    #[test]
    fn backoff_and_env_parsers() {
        assert_eq!(
            parse_backoff("100"),
            Ok(Backoff {
                base_ms: 100,
                max_ms: None
            })
        );
        assert_eq!(
            parse_backoff("100:5000"),
            Ok(Backoff {
                base_ms: 100,
                max_ms: Some(5000)
            })
        );
        assert!(parse_backoff("x").is_err());
        assert!(parse_backoff("1:").is_err());
        assert!(parse_backoff("10:5")
            .unwrap_err()
            .contains("MAX is below BASE"));
        assert_eq!(
            parse_env_pair("A=b=c"),
            Ok(("A".to_owned(), "b=c".to_owned()))
        );
        assert_eq!(parse_env_pair("A="), Ok(("A".to_owned(), String::new())));
        assert!(parse_env_pair("A").is_err());
        assert!(parse_env_pair("=b").is_err());
    }
}
