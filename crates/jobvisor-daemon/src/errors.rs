//! An error with its causes, for one log line or one client message. The
//! daemon's errors keep their causes as `source()` and say only their own
//! layer in `Display`; where the whole story must fit one string, this
//! joins them with ": ".

use std::fmt;

/// Displays an error followed by each of its sources, as [`chain`] joins them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Chain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&chain(self.0))
    }
}

/// The error and its sources as one string ("cannot read the output of job
/// 5: database is locked"): the worker crate's rule, which task errors use
/// too, so the daemon and its workers tell a chain the same way.
pub(crate) use jobvisor_worker::error_chain as chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_displays_like_the_joined_string() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        assert_eq!(Chain(&io).to_string(), chain(&io));
    }
}
