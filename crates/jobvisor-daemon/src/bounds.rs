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

/// Checks a webhook URL: it parses, is `http` or `https` with a host, and is
/// at most [`MAX_URL_BYTES`] long.
///
/// # Errors
/// What is wrong with it, for a client.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!(
            "URL of {} bytes exceeds {MAX_URL_BYTES} bytes",
            url.len()
        ));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid URL ({e}): {url:?}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the URL must be http or https, not {:?}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("the URL has no host: {url:?}"));
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
            assert_eq!(check_url(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("", "not a valid URL"),
            ("hooks.example.com/x", "not a valid URL"),
            ("ftp://example.com/x", "http or https"),
            ("file:///etc/passwd", "http or https"),
            ("unix:/run/x.sock", "http or https"),
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_BYTES));
        assert!(check_url(&long).unwrap_err().contains("exceeds"));
    }
}
