//! Workers still starting, and what happened to them before they were
//! registered: a worker can die between its handshake and the dispatcher's
//! `on_started`, and its link closure and exit report can both arrive first.
//! They are held here and handed back, in their order, when it registers;
//! once no worker is starting, whatever is left belongs to none that can
//! still register and is dropped.

use std::collections::HashMap;

use jobvisor_proto::forkserver::ExitStatus;

/// The dispatcher's bookkeeping of workers being started.
#[derive(Debug, Default)]
pub(super) struct Starting {
    /// Workers launched and not yet registered (or failed).
    count: usize,
    /// Link closures of unregistered workers, by worker id.
    closed: HashMap<u64, Option<String>>,
    /// Exit reports of unregistered workers, by pid.
    exits: HashMap<u32, ExitStatus>,
}

/// What happened to a worker before it registered.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Early {
    /// Its link closed (with the error, if it broke).
    pub(super) closed: Option<Option<String>>,
    /// It exited.
    pub(super) exit: Option<ExitStatus>,
}

impl Starting {
    /// One more worker is being started.
    pub(super) fn begin(&mut self) {
        self.count += 1;
    }

    /// Workers being started.
    pub(super) fn count(&self) -> usize {
        self.count
    }

    /// The link of unregistered worker `id` closed: kept (true) while a
    /// worker is starting, since it may be that one.
    pub(super) fn link_closed(&mut self, id: u64, error: Option<String>) -> bool {
        if self.count == 0 {
            return false;
        }
        self.closed.insert(id, error);
        true
    }

    /// Unregistered process `pid` exited: kept while a worker is starting.
    pub(super) fn exited(&mut self, pid: u32, status: ExitStatus) -> bool {
        if self.count == 0 {
            return false;
        }
        self.exits.insert(pid, status);
        true
    }

    /// Worker `id` finished starting (as process `pid`, 0 if it failed):
    /// what happened to it meanwhile.
    pub(super) fn finish(&mut self, id: u64, pid: u32) -> Early {
        self.count = self.count.saturating_sub(1);
        let early = Early {
            closed: self.closed.remove(&id),
            exit: self.exits.remove(&pid),
        };
        if self.count == 0 {
            self.closed.clear();
            self.exits.clear();
        }
        early
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: i32) -> ExitStatus {
        ExitStatus {
            code: Some(code),
            signal: None,
            core_dumped: false,
            max_rss_kib: 0,
        }
    }

    #[test]
    fn events_before_registration_are_handed_back() {
        let mut s = Starting::default();
        s.begin();
        s.begin();
        assert_eq!(s.count(), 2);
        assert!(s.link_closed(1, Some("broken".into())));
        assert!(s.exited(100, status(3)));
        let early = s.finish(1, 100);
        assert_eq!(early.closed, Some(Some("broken".into())));
        assert_eq!(early.exit, Some(status(3)));
        // Handed back once.
        s.begin();
        assert_eq!(s.finish(1, 100), Early::default());
    }

    #[test]
    fn nothing_is_kept_when_no_worker_is_starting() {
        let mut s = Starting::default();
        assert!(!s.link_closed(1, None));
        assert!(!s.exited(100, status(0)));
        s.begin();
        assert!(s.exited(200, status(0)));
        // The last start ends: what no worker claimed is dropped.
        assert_eq!(s.finish(2, 0), Early::default());
        assert_eq!(s.count(), 0);
        s.begin();
        assert_eq!(s.finish(3, 200), Early::default());
    }
}
