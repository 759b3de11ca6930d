//! Hard bounds that the configuration and job submissions are checked
//! against, and the parts that enforce them rely on: the lowest module, so
//! that `config` (which validates) and `notify` or the scheduler (which
//! enforce) need not name each other.

/// Longest webhook URL accepted (bytes).
pub const MAX_URL_BYTES: usize = 2048;
/// Largest `notify.max_queued` (permits of one semaphore).
pub const MAX_QUEUED: usize = 1_000_000;
/// Largest `notify.max_concurrency`.
pub const MAX_CONCURRENCY: usize = 10_000;

/// A webhook URL that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Longer than [`MAX_URL_BYTES`].
    #[error("URL of {0} bytes exceeds {MAX_URL_BYTES} bytes")]
    TooLong(usize),
    /// It does not parse.
    #[error("not a valid URL: {url:?}")]
    Parse {
        /// As given.
        url: String,
        /// The parser's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Not `http` or `https`.
    #[error("the URL must be http or https, not {0:?}")]
    Scheme(String),
    /// No host to send to.
    #[error("the URL has no host: {0:?}")]
    NoHost(String),
}

/// Checks a webhook URL: it parses, is `http` or `https` with a host, and is
/// at most [`MAX_URL_BYTES`] long.
///
/// # Errors
/// What is wrong with it, for a client.
pub fn check_url(url: &str) -> Result<(), UrlError> {
    if url.len() > MAX_URL_BYTES {
        return Err(UrlError::TooLong(url.len()));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| UrlError::Parse {
        url: url.to_owned(),
        source: Box::new(e),
    })?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(UrlError::Scheme(parsed.scheme().to_owned()));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(UrlError::NoHost(url.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        for ok in [
            "http://127.0.0.1:8080/hook",
            "https://hooks.example.com/a/b?c=d",
            "http://[::1]/",
        ] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "not a valid URL"),
            ("hooks.example.com/x", "not a valid URL"),
            ("ftp://example.com/x", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("unix:/run/x.sock", "http or https"),
        ] {
            let e = crate::errors::chain(&check_url(bad).unwrap_err());
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_url(&long)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
        let e = crate::errors::chain(&check_url("hooks.example.com/x").unwrap_err());
        assert_eq!(
            e,
            "not a valid URL: \"hooks.example.com/x\": relative URL without a base"
        );
    }
}
