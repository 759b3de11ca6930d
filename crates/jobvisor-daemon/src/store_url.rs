//! Where the job store lives: `[store] url` in the config, `--store URL` on
//! `jobvisor daemon`.
//!
//! Two forms: `sqlite:PATH` (the embedded default, a file in the state
//! directory) and `postgres://user@host:port/db` (several daemons sharing one
//! queue, see `docs/cluster.md`). Pure: parsing touches no file and no
//! network.

use std::fmt;
use std::path::{Path, PathBuf};

/// A parsed `[store] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// An SQLite file (absolute).
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL, as given.
    Postgres(String),
}

/// Longest `[store] url` accepted (bytes).
const MAX_URL_BYTES: usize = 4096;

impl StoreUrl {
    /// Parses `text`. A relative SQLite path is taken from `base` (the
    /// directory the daemon was started in), so the file does not move when
    /// the daemon changes directory.
    ///
    /// # Errors
    /// A message naming what is wrong, for `[store] url` / `--store`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        if text.len() > MAX_URL_BYTES {
            return Err(format!("is longer than {MAX_URL_BYTES} bytes"));
        }
        if text.chars().any(char::is_control) {
            return Err("contains a control character".into());
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let rest = text.split_once("://").map_or("", |(_, r)| r);
            if rest.is_empty() || rest.starts_with('/') && !rest.contains("host=") {
                return Err(format!(
                    "`{}` names no host (postgres://user@host:port/db)",
                    redact(text)
                ));
            }
            return Ok(Self::Postgres(text.to_owned()));
        }
        let Some(path) = text.strip_prefix("sqlite:") else {
            let scheme = text.split_once(':').map_or(text, |(s, _)| s);
            return Err(format!(
                "unknown store `{scheme}`: use sqlite:PATH or postgres://user@host:port/db"
            ));
        };
        // `sqlite:///abs/path` as well as `sqlite:/abs/path` and `sqlite:rel`.
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err("sqlite: needs a path, e.g. sqlite:/var/lib/jobvisor/jobs.db".into());
        }
        if path.ends_with('/') {
            return Err(format!("sqlite:{path} names no file"));
        }
        let path = Path::new(path);
        if path.file_name().is_none() {
            return Err(format!("sqlite:{} names no file", path.display()));
        }
        Ok(Self::Sqlite(if path.is_absolute() {
            path.to_owned()
        } else {
            base.join(path)
        }))
    }

    /// The URL with any password replaced by `***`, for logs and errors.
    pub fn redacted(&self) -> String {
        match self {
            Self::Sqlite(p) => format!("sqlite:{}", p.display()),
            Self::Postgres(u) => redact(u),
        }
    }
}

impl fmt::Display for StoreUrl {
    /// Redacted: a password never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`; a
/// `password=` query parameter is hidden too.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once("password=") {
        Some((before, after)) => {
            let end = after.find('&').map_or("", |i| &after[i..]);
            format!("{before}password=***{end}")
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// The default node name: `<host name>-<pid>`.
pub fn default_node_name() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}-{}", std::process::id())
}

/// Checks a `[store] node_name`.
///
/// # Errors
/// What is wrong with it.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 bytes".into());
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("must not contain spaces or control characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<StoreUrl, String> {
        StoreUrl::parse(s, Path::new("/srv/run"))
    }

    #[test]
    fn sqlite_urls_take_absolute_relative_and_triple_slash_paths() {
        let cases = [
            ("sqlite:/var/lib/j/jobs.db", "/var/lib/j/jobs.db"),
            ("sqlite:///var/lib/j/jobs.db", "/var/lib/j/jobs.db"),
            ("sqlite:jobs.db", "/srv/run/jobs.db"),
            ("sqlite:data/jobs.db", "/srv/run/data/jobs.db"),
        ];
        for (url, want) in cases {
            assert_eq!(parse(url), Ok(StoreUrl::Sqlite(want.into())), "{url}");
        }
    }

    #[test]
    fn postgres_urls_are_kept_and_their_passwords_never_shown() {
        let url = "postgres://jv:s3cret@db.example:5432/jobs?sslmode=disable";
        let parsed = parse(url).unwrap();
        assert_eq!(parsed, StoreUrl::Postgres(url.into()));
        let shown = parsed.to_string();
        assert!(!shown.contains("s3cret"), "{shown}");
        assert_eq!(
            shown,
            "postgres://jv:***@db.example:5432/jobs?sslmode=disable"
        );
        let q = parse("postgresql://jv@h/db?password=pw&application_name=x").unwrap();
        assert_eq!(
            q.redacted(),
            "postgresql://jv@h/db?password=***&application_name=x"
        );
        assert_eq!(
            parse("postgres://jv@127.0.0.1:55432/jobvisor")
                .unwrap()
                .redacted(),
            "postgres://jv@127.0.0.1:55432/jobvisor"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("mysql://h/db", "unknown store `mysql`"),
            ("jobs.db", "unknown store `jobs.db`"),
            ("sqlite:", "needs a path"),
            ("sqlite:/var/lib/", "names no file"),
            ("postgres://", "names no host"),
            ("sqlite:/a\nb", "control character"),
        ];
        for (url, want) in cases {
            let e = parse(url).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
        }
        assert!(parse(&format!("sqlite:/{}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn node_names_are_short_and_printable() {
        assert!(check_node_name("host-a-1234").is_ok());
        assert!(check_node_name(&default_node_name()).is_ok());
        for bad in ["", "a b", "a\tb", &"x".repeat(129)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }
}
