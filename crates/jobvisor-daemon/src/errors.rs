//! An error with its causes, for one log line or one client message. The
//! daemon's errors keep their causes as `source()` and say only their own
//! layer in `Display`; where the whole story must fit one string, this
//! joins them with ": ".

use std::fmt;

/// Displays an error followed by each of its sources. A source whose text
/// the message already holds is skipped: errors of other crates that still
/// print their cause inside their own message are told once, not twice.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0))
    }
}

/// The error and its sources as one string ("cannot read the output of job
/// 5: database is locked").
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read config file /x")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn each_cause_is_told_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(
            chain(&Outer(io())),
            "cannot read config file /x: no such file"
        );
        assert_eq!(chain(&Repeats(io())), "outer: no such file");
        assert_eq!(Chain(&io()).to_string(), "no such file");
    }
}
