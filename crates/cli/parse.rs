//! Value parsers of the command line (durations, backoff, `K=V`, job states,
//! `--input-from` references), shared by the clap types and batch files.
//!
//! Pure text → value functions; an error is a message naming the bad text,
//! as clap's `value_parser` wants it.

use jobvisor_proto::control::JobState;

/// `--backoff-ms BASE[:MAX]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First retry delay in ms.
    pub base_ms: u64,
    /// Cap on the retry delay in ms.
    pub max_ms: Option<u64>,
}

/// A human duration (`500ms`, `1.5s`, `1h30m`, `2d`; a bare number other
/// than `0` needs a unit): the parser the daemon's configuration shares.
pub use jobvisor_proto::duration::parse_duration;

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

/// `ID[:/json/pointer][@field]` (ID may be `#N` in a batch).
pub fn parse_input_from(s: &str) -> Result<jobvisor_proto::control::InputRef, String> {
    jobvisor_proto::json::spec::input_from(s)
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
