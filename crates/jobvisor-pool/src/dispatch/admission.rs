//! Lane capacity and admission: how many calls each worker is sent, as pure
//! functions of plain numbers that the dispatcher calls every loop turn.
//!
//! Two lanes fill separate capacity, so neither kind of call waits behind the
//! other:
//! - CPU calls: a *window* per worker, sized from the smoothed service time
//!   so it covers ~1 ms of work (at least 2, so the next call is already
//!   there when one finishes; at most the configured `window`). Calls are
//!   handed out one per worker per round, least loaded first, so a short
//!   queue is spread over all workers.
//! - Async calls: `io_concurrency_per_worker` slots per event loop; each
//!   worker takes its even share of the queue, least room first, so what a
//!   small worker cannot take flows to the larger ones.
//!
//! Neither lane sends a worker past its recycling budget
//! (`max_tasks_per_worker`), counting what it holds of both kinds.
//!
//! A *suspect* (a call in flight at a worker death that charged no call, see
//! `blame`) runs alone: it goes only to a worker that holds nothing, and that
//! worker is sent nothing else until it is answered ([`may_take`]). Then the
//! next death of its worker is its own, and no innocent call shares it.

/// Whether a worker may be sent the next queued call: `suspect`, that call is
/// one; `idle`, the worker holds no call; `holds_suspect`, it holds one.
pub(super) fn may_take(suspect: bool, idle: bool, holds_suspect: bool) -> bool {
    !holds_suspect && (!suspect || idle)
}

/// Calls a worker may still be sent before `max_calls` recycles it, given
/// `calls_done` and the calls of both kinds it `holds` (recycling is exact).
pub(super) fn recycle_room(max_calls: Option<u64>, calls_done: u64, holds: usize) -> usize {
    let budget = max_calls.map_or(usize::MAX, |m| {
        usize::try_from(m.saturating_sub(calls_done)).unwrap_or(usize::MAX)
    });
    budget.saturating_sub(holds)
}

/// The CPU window per worker for a smoothed service time of
/// `service_ewma_us` per call (0: not measured yet) and a configured
/// maximum `max_window`.
pub(super) fn window(service_ewma_us: f64, max_window: usize) -> usize {
    if service_ewma_us <= 0.0 {
        return max_window;
    }
    // Not `clamp(2, max)`: that panics for a configured window of 1.
    ((1000.0 / service_ewma_us).ceil() as usize)
        .max(2)
        .min(max_window.max(1))
}

/// The smoothed service time after a new sample, both µs per call.
pub(super) fn smoothed(ewma_us: f64, sample_us: f64) -> f64 {
    if ewma_us == 0.0 {
        sample_us
    } else {
        0.8 * ewma_us + 0.2 * sample_us
    }
}

/// Which worker each of the first queued CPU calls goes to, in queue order:
/// `ready` is `(worker, room)` least loaded first; one call per worker with
/// room per round, until the `queued` calls or the room run out.
pub(super) fn cpu_rounds(ready: &[(u64, usize)], queued: usize) -> Vec<u64> {
    let mut room: Vec<usize> = ready.iter().map(|&(_, r)| r).collect();
    let mut left = queued;
    let mut plan = Vec::new();
    while left > 0 {
        let mut progressed = false;
        for (i, &(id, _)) in ready.iter().enumerate() {
            if room[i] == 0 {
                continue;
            }
            if left == 0 {
                break;
            }
            left -= 1;
            room[i] -= 1;
            plan.push(id);
            progressed = true;
        }
        if !progressed {
            break;
        }
    }
    plan
}

/// How many of the `queued` async calls each worker takes: `ready` is
/// `(room, worker)` of every worker with room; the result is
/// `(worker, share)` in the order the calls are taken from the queue.
pub(super) fn io_shares(mut ready: Vec<(usize, u64)>, queued: usize) -> Vec<(u64, usize)> {
    ready.sort_unstable();
    let total_room: usize = ready.iter().map(|(r, _)| r).sum();
    let mut left = queued.min(total_room);
    let mut workers_left = ready.len();
    let mut shares = Vec::with_capacity(ready.len());
    for (room, id) in ready {
        let share = left.div_ceil(workers_left).min(room);
        workers_left -= 1;
        if share == 0 {
            continue;
        }
        left -= share;
        shares.push((id, share));
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_suspect_runs_alone() {
        // Innocent calls share a worker, never with a suspect.
        assert!(may_take(false, false, false));
        assert!(!may_take(false, false, true));
        // A suspect goes only to a worker that holds nothing.
        assert!(may_take(true, true, false));
        assert!(!may_take(true, false, false));
    }

    #[test]
    fn recycling_budget_counts_both_kinds() {
        assert_eq!(recycle_room(None, 1_000, 5), usize::MAX - 5);
        assert_eq!(recycle_room(Some(10), 4, 3), 3);
        assert_eq!(recycle_room(Some(10), 10, 0), 0);
        assert_eq!(recycle_room(Some(10), 12, 0), 0);
        assert_eq!(recycle_room(Some(10), 4, 9), 0);
    }

    #[test]
    fn the_window_covers_a_millisecond_of_work() {
        assert_eq!(window(0.0, 64), 64);
        assert_eq!(window(10.0, 64), 64);
        assert_eq!(window(100.0, 64), 10);
        assert_eq!(window(300.0, 64), 4);
        assert_eq!(window(5_000.0, 64), 2);
        // A configured window of 1 is kept, even below the floor of 2.
        assert_eq!(window(5_000.0, 1), 1);
        assert_eq!(window(10.0, 1), 1);
    }

    #[test]
    fn service_time_is_smoothed_from_its_first_sample() {
        assert_eq!(smoothed(0.0, 50.0), 50.0);
        assert!((smoothed(100.0, 200.0) - 120.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_calls_go_round_robin_within_each_room() {
        assert_eq!(cpu_rounds(&[(1, 3), (2, 3)], 4), [1, 2, 1, 2]);
        assert_eq!(cpu_rounds(&[(1, 1), (2, 3)], 4), [1, 2, 2, 2]);
        assert_eq!(cpu_rounds(&[(1, 1), (2, 1)], 10), [1, 2]);
        assert_eq!(cpu_rounds(&[(1, 2), (2, 2)], 3), [1, 2, 1]);
        assert!(cpu_rounds(&[], 3).is_empty());
        assert!(cpu_rounds(&[(1, 2)], 0).is_empty());
    }

    #[test]
    fn async_calls_are_shared_evenly_and_overflow_to_larger_rooms() {
        // Least room first; what the small worker cannot take flows on.
        assert_eq!(io_shares(vec![(10, 1), (1, 2)], 8), [(2, 1), (1, 7)]);
        assert_eq!(io_shares(vec![(10, 1), (10, 2)], 5), [(1, 3), (2, 2)]);
        // More queued than room: everyone is filled.
        assert_eq!(io_shares(vec![(2, 1), (3, 2)], 100), [(1, 2), (2, 3)]);
        // Fewer calls than workers: some take none.
        assert_eq!(io_shares(vec![(5, 1), (5, 2), (5, 3)], 1), [(1, 1)]);
        assert!(io_shares(vec![], 4).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn cpu_rounds_fill_within_each_room(
            rooms in proptest::collection::vec(0usize..6, 0..5),
            queued in 0usize..40,
        ) {
            let ready: Vec<(u64, usize)> = rooms.iter().enumerate().map(|(i, &r)| (i as u64, r)).collect();
            let plan = cpu_rounds(&ready, queued);
            let total: usize = rooms.iter().sum();
            proptest::prop_assert_eq!(plan.len(), queued.min(total));
            for &(id, room) in &ready {
                let got = plan.iter().filter(|&&p| p == id).count();
                proptest::prop_assert!(got <= room);
            }
            // Round robin: no worker is two calls ahead of one that still had room.
            for &(a, ra) in &ready {
                for &(b, rb) in &ready {
                    let (na, nb) = (
                        plan.iter().filter(|&&p| p == a).count(),
                        plan.iter().filter(|&&p| p == b).count(),
                    );
                    if na < ra && nb <= rb {
                        proptest::prop_assert!(nb <= na + 1, "{:?}", plan);
                    }
                }
            }
        }

        #[test]
        fn io_shares_fill_within_each_room(
            rooms in proptest::collection::vec(1usize..10, 0..5),
            queued in 0usize..60,
        ) {
            let ready: Vec<(usize, u64)> = rooms.iter().enumerate().map(|(i, &r)| (r, i as u64)).collect();
            let shares = io_shares(ready.clone(), queued);
            let total: usize = rooms.iter().sum();
            let given: usize = shares.iter().map(|&(_, n)| n).sum();
            proptest::prop_assert_eq!(given, queued.min(total));
            for (id, n) in shares {
                proptest::prop_assert!(n > 0 && n <= rooms[id as usize]);
            }
        }
    }
}
