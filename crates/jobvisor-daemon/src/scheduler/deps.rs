//! Dependencies (`after`, and a pipeline step's sources): who waits for
//! whom, and the finished states the scheduler remembers to answer a new
//! job's question "did my dependency succeed?" without the store.
//!
//! A job runs once every dependency succeeded; one that ended otherwise
//! (or is missing) fails it, naming that dependency ([`verdict`]).

use std::collections::{BTreeSet, HashMap, VecDeque};

use jobvisor_proto::control::JobState;

/// How many finished job states the scheduler remembers for dependency checks.
const TERMINAL_MEMORY: usize = 1_000_000;

/// What a job's dependencies say when it is admitted.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Verdict {
    /// Unfinished dependencies: the job waits for each.
    pub(super) waits_for: Vec<u64>,
    /// A finished dependency that did not succeed (or is missing), and what
    /// it is: the job fails.
    pub(super) broken: Option<(u64, &'static str)>,
}

/// Judges dependencies `after`: `live` says whether one is unfinished,
/// `finished` what a finished one ended as (`None`: no such job).
pub(super) fn verdict(
    after: &[u64],
    live: impl Fn(u64) -> bool,
    finished: impl Fn(u64) -> Option<JobState>,
) -> Verdict {
    let mut v = Verdict {
        waits_for: Vec::new(),
        broken: None,
    };
    for &d in after {
        if live(d) {
            v.waits_for.push(d);
            continue;
        }
        match finished(d) {
            Some(JobState::Succeeded) => {}
            Some(s) => v.broken = Some((d, s.as_str())),
            None => v.broken = Some((d, "missing")),
        }
    }
    v
}

/// Who waits for whom, and recently finished states.
#[derive(Debug)]
pub(super) struct Deps {
    /// Dependency id → the jobs that wait for it (ids, so oldest first).
    /// A job leaves every set it is in when it ends ([`Deps::unwait`]), so
    /// a cancelled waiter is neither kept nor released later.
    dependents: HashMap<u64, BTreeSet<u64>>,
    terminal: HashMap<u64, JobState>,
    /// `terminal`'s ids, oldest first, to forget beyond `memory`.
    terminal_order: VecDeque<u64>,
    memory: usize,
}

impl Default for Deps {
    fn default() -> Self {
        Self::with_memory(TERMINAL_MEMORY)
    }
}

impl Deps {
    /// Remembers at most `memory` finished states.
    fn with_memory(memory: usize) -> Self {
        Self {
            dependents: HashMap::new(),
            terminal: HashMap::new(),
            terminal_order: VecDeque::new(),
            memory,
        }
    }

    /// Job `dependent` waits for `dependency`.
    pub(super) fn wait(&mut self, dependent: u64, dependency: u64) {
        self.dependents
            .entry(dependency)
            .or_default()
            .insert(dependent);
    }

    /// Job `dependent`, which waited for `dependencies` (some of them
    /// perhaps finished), has ended: it waits for none of them any more.
    pub(super) fn unwait(&mut self, dependent: u64, dependencies: &[u64]) {
        for d in dependencies {
            if let Some(set) = self.dependents.get_mut(d) {
                set.remove(&dependent);
                if set.is_empty() {
                    self.dependents.remove(d);
                }
            }
        }
    }

    /// The jobs that waited for `id`, which has ended, oldest first.
    pub(super) fn released(&mut self, id: u64) -> Vec<u64> {
        self.dependents
            .remove(&id)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default()
    }

    /// How many jobs wait for dependency `id`.
    #[cfg(test)]
    pub(super) fn waiting_for(&self, id: u64) -> usize {
        self.dependents.get(&id).map_or(0, BTreeSet::len)
    }

    /// How job `id` ended, if remembered.
    pub(super) fn finished(&self, id: u64) -> Option<JobState> {
        self.terminal.get(&id).copied()
    }

    /// Job `id` ended as `state`.
    pub(super) fn remember(&mut self, id: u64, state: JobState) {
        self.terminal.insert(id, state);
        self.terminal_order.push_back(id);
        while self.terminal_order.len() > self.memory {
            if let Some(old) = self.terminal_order.pop_front() {
                self.terminal.remove(&old);
            }
        }
    }

    /// Job `id` is unfinished again (a client's retry).
    pub(super) fn forget(&mut self, id: u64) {
        self.terminal.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_waits_for_live_dependencies_and_fails_on_a_broken_one() {
        let live = |d| d == 1 || d == 2;
        let finished = |d| match d {
            3 => Some(JobState::Succeeded),
            4 => Some(JobState::Dead),
            _ => None,
        };
        assert_eq!(
            verdict(&[1, 3, 2], live, finished),
            Verdict {
                waits_for: vec![1, 2],
                broken: None
            }
        );
        assert_eq!(verdict(&[1, 4], live, finished).broken, Some((4, "dead")));
        assert_eq!(verdict(&[9], live, finished).broken, Some((9, "missing")));
        assert_eq!(verdict(&[], live, finished).waits_for, Vec::<u64>::new());
    }

    #[test]
    fn finished_states_are_remembered_up_to_the_memory_and_dependents_released_once() {
        let mut d = Deps::with_memory(2);
        for (id, s) in [
            (1, JobState::Failed),
            (2, JobState::Succeeded),
            (3, JobState::Dead),
        ] {
            d.remember(id, s);
        }
        assert_eq!(d.finished(1), None, "the oldest is forgotten");
        assert_eq!(d.finished(2), Some(JobState::Succeeded));
        d.forget(3);
        assert_eq!(d.finished(3), None);
        d.wait(10, 5);
        d.wait(11, 5);
        assert_eq!(d.released(5), [10, 11]);
        assert!(d.released(5).is_empty());
    }

    #[test]
    fn an_ended_job_waits_for_nothing_any_more() {
        let mut d = Deps::with_memory(2);
        d.wait(12, 5);
        d.wait(10, 5);
        d.wait(10, 6);
        d.unwait(10, &[4, 5, 6]);
        assert_eq!((d.waiting_for(5), d.waiting_for(6)), (1, 0));
        assert!(!d.dependents.contains_key(&6), "no empty set is kept");
        assert_eq!(d.released(5), [12]);
    }
}
