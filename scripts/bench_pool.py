#!/usr/bin/env python3
"""The Python half of `scripts/bench-pool`: multiprocessing.Pool on the same
workloads as `crates/jobvisor-pool/benches/pool.rs`, and the side-by-side table.

    python3 scripts/bench_pool.py [--quick] [--workers N] [--n N]
        runs the workloads and prints `RESULT py.<key> <value>` lines;
    python3 scripts/bench_pool.py --table DIR
        reads DIR/rust.*.txt and DIR/python.*.txt (saved outputs of both sides,
        one file per run) and prints the comparison table of the medians.

Workloads (counts are divided by 10 with --quick):
  (a) N no-op tasks, pool.map(f, range(N), chunksize=1)
  (b) N no-op tasks, pool.map(f, range(N)) (default chunksize)
  (c) 5,000 sequential pool.apply round trips, p50/p99, next to the floor: a
      blocking 8-byte pipe ping-pong between two processes (os.fork + os.pipe),
      unpinned, both pinned to one CPU, and pinned to two different CPUs
  (d) 200 tasks of 10 ms busy loop: serial in-process vs Pool(cores).map(chunksize=1)
  (e) 2,000 tasks with a 1 MiB bytes input each: pool.imap(len, gen, chunksize=1)
  (f) not measured (see BENCHMARKS.md): a SIGKILLed idle Pool worker can wedge
      the pool (python/cpython#96062), and there is no "replacement ready" signal
  (g) PSS of an idle Pool worker and RSS of the parent, /proc/PID/smaps_rollup

Standard library only.
"""

import argparse
import math
import multiprocessing as mp
import os
import sys
import time

from benchlib import load_runs, median, numbers, print_table, result

# ---- tasks (module level, so the workers find them) -------------------------


def noop(x):
    return x


def spin(ms):
    """Busy loop for `ms` milliseconds of wall time (like jobvisor's Spin)."""
    end = time.perf_counter() + ms / 1000.0
    state = 0x9E3779B97F4A7C15
    rounds = 0
    while True:
        for _ in range(64):
            state = (state * 6364136223846793005 + 1) & 0xFFFFFFFFFFFFFFFF
        rounds += 64
        if time.perf_counter() >= end:
            return rounds


# ---- helpers ------------------------------------------------------------------


def percentile(sorted_samples, p):
    """Nearest rank (the same rule as the Rust side)."""
    if not sorted_samples:
        return 0.0
    rank = math.ceil(p / 100.0 * len(sorted_samples))
    return sorted_samples[min(max(rank, 1), len(sorted_samples)) - 1]


def smaps_kib(pid, field):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ---- the floor ------------------------------------------------------------------


def pipe_floor(round_trips, pin=None):
    """Blocking 8-byte round trips between this process and a forked child;
    pin = (this process's CPU, the child's CPU)."""
    saved = os.sched_getaffinity(0)
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(to_w)
        os.close(from_r)
        if pin:
            os.sched_setaffinity(0, {pin[1]})
        while True:
            msg = os.read(to_r, 8)
            if not msg:
                os._exit(0)
            os.write(from_w, msg)
    os.close(to_r)
    os.close(from_w)
    if pin:
        os.sched_setaffinity(0, {pin[0]})
    warmup = max(round_trips // 10, 100)
    samples = []
    clock = time.perf_counter_ns
    for i in range(warmup + round_trips):
        msg = i.to_bytes(8, "little")
        t = clock()
        os.write(to_w, msg)
        back = os.read(from_r, 8)
        took = clock() - t
        assert back == msg, "ping-pong echo mismatch"
        if i >= warmup:
            samples.append(took / 1000.0)
    os.close(to_w)
    os.close(from_r)
    os.waitpid(pid, 0)
    os.sched_setaffinity(0, saved)
    samples.sort()
    return samples


# ---- workloads ----------------------------------------------------------------


def run(args):
    scale = 10 if args.quick else 1
    workers = args.workers or os.cpu_count() or 1
    n = args.n or 100_000 // scale
    round_trips = 5_000 // scale
    floor_trips = 20_000 // scale
    spin_tasks = 200 // scale
    mib_tasks = 2_000 // scale
    method = mp.get_start_method()
    print(
        f"Python {sys.version.split()[0]} multiprocessing.Pool benchmark: start method "
        f"'{method}', {workers} workers, quick={args.quick}, N={n}, "
        f"apply round trips={round_trips}, floor round trips={floor_trips}, "
        f"spin tasks={spin_tasks}, 1 MiB tasks={mib_tasks}",
        flush=True,
    )
    result("python", sys.version.split()[0])
    result("start_method", method)
    result("workers", workers)
    result("n", n)

    # The floors first, while this process has no threads: unpinned (where the
    # scheduler puts the two processes), both on one CPU, on two different CPUs.
    cpus = sorted(os.sched_getaffinity(0))
    floors = {"floor": ("unpinned", None), "floor_same": ("both on one CPU", (cpus[0], cpus[0]))}
    if len(cpus) > 1:
        floors["floor_cross"] = ("on two different CPUs", (cpus[0], cpus[1]))
    floor_p50 = {}
    for key, (what, pin) in floors.items():
        floor = pipe_floor(floor_trips, pin)
        f50, f99 = percentile(floor, 50), percentile(floor, 99)
        floor_p50[key] = f50
        print(
            f"(c) floor, {what}: {floor_trips} blocking 8-byte pipe round trips to a forked child: "
            f"p50 {f50:.1f} µs, p99 {f99:.1f} µs",
            flush=True,
        )
        result(f"{key}.p50_us", f"{f50:.1f}")
        result(f"{key}.p99_us", f"{f99:.1f}")

    with mp.Pool(workers) as pool:
        # Warm-up: every worker has answered a few calls.
        pool.map(noop, range(64 * workers), chunksize=1)

        # (g) first, on the freshly warmed-up pool (as on the Rust side).
        pss = [smaps_kib(p.pid, "Pss") for p in pool._pool]
        worker_pss = max(pss)
        parent_rss = smaps_kib("self", "Rss")
        print(
            f"(g) idle worker PSS {worker_pss} KiB (all: {pss}), parent RSS {parent_rss} KiB",
            flush=True,
        )
        result("g.worker_pss_kib", worker_pss)
        result("g.supervisor_rss_kib", parent_rss)

        # (a)
        t = time.perf_counter()
        outs = pool.map(noop, range(n), chunksize=1)
        wall = time.perf_counter() - t
        assert outs == list(range(n))
        rate = n / wall
        print(f"(a) {n} no-op tasks, map chunksize=1: {wall:.3f} s, {rate:.0f} tasks/s", flush=True)
        result("a.wall_s", f"{wall:.4f}")
        result("a.tasks_per_s", f"{rate:.0f}")

        # (b)
        chunk, extra = divmod(n, 4 * workers)
        chunk += 1 if extra else 0
        t = time.perf_counter()
        outs = pool.map(noop, range(n))
        wall = time.perf_counter() - t
        assert outs == list(range(n))
        rate = n / wall
        print(
            f"(b) {n} no-op tasks, map default chunksize (= {chunk}): {wall:.3f} s, {rate:.0f} tasks/s",
            flush=True,
        )
        result("b.wall_s", f"{wall:.4f}")
        result("b.chunksize", chunk)
        result("b.tasks_per_s", f"{rate:.0f}")

        # (c)
        for i in range(max(round_trips // 10, 100)):
            pool.apply(noop, (i,))
        samples = []
        clock = time.perf_counter_ns
        for i in range(round_trips):
            t = clock()
            out = pool.apply(noop, (i,))
            samples.append((clock() - t) / 1000.0)
            assert out == i
        samples.sort()
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        mean = sum(samples) / len(samples)
        print(
            f"(c) {round_trips} sequential apply round trips: p50 {p50:.1f} µs, "
            f"p99 {p99:.1f} µs, mean {mean:.1f} µs, max {samples[-1]:.1f} µs",
            flush=True,
        )
        result("c.p50_us", f"{p50:.1f}")
        result("c.p99_us", f"{p99:.1f}")
        result("c.mean_us", f"{mean:.1f}")
        for key, f50 in floor_p50.items():
            ratio = p50 / f50
            print(f"(c) apply p50 / {key} p50 = {ratio:.2f}×", flush=True)
            result(f"c.p50_over_{key}", f"{ratio:.2f}")

        # (d)
        t = time.perf_counter()
        serial_rounds = 0
        for _ in range(spin_tasks):
            serial_rounds += spin(10)
        serial = time.perf_counter() - t
        t = time.perf_counter()
        outs = pool.map(spin, [10] * spin_tasks, chunksize=1)
        parallel = time.perf_counter() - t
        assert len(outs) == spin_tasks
        speedup = serial / parallel
        eff = speedup / workers
        print(
            f"(d) {spin_tasks} × 10 ms spin: serial {serial:.3f} s, pool of {workers} "
            f"{parallel:.3f} s, speedup {speedup:.3f}, efficiency {eff * 100:.1f} %",
            flush=True,
        )
        result("d.serial_s", f"{serial:.4f}")
        result("d.parallel_s", f"{parallel:.4f}")
        result("d.cores", workers)
        result("d.speedup", f"{speedup:.4f}")
        result("d.efficiency_pct", f"{eff * 100:.2f}")
        cpu_share = sum(outs) / serial_rounds
        print(f"(d) spin rounds in the pool / serially: {cpu_share:.3f}", flush=True)
        result("d.cpu_share", f"{cpu_share:.4f}")

        # (e)
        mib = 1 << 20
        buf = b"x" * mib

        def inputs():
            for _ in range(mib_tasks):
                yield buf

        t = time.perf_counter()
        total = sum(pool.imap(len, inputs(), chunksize=1))
        wall = time.perf_counter() - t
        assert total == mib_tasks * mib
        rate = mib_tasks / wall
        print(
            f"(e) {mib_tasks} × 1 MiB inputs, imap chunksize=1: {wall:.3f} s, {rate:.0f} MiB/s",
            flush=True,
        )
        result("e.wall_s", f"{wall:.4f}")
        result("e.mib_per_s", f"{rate:.0f}")

    hwm = status_kib("VmHWM")
    print(f"parent peak RSS (VmHWM) over the whole run: {hwm} KiB", flush=True)
    result("supervisor_hwm_kib", hwm)


# ---- the table ------------------------------------------------------------------



def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


# (label, jobvisor key, python key, ratio, target, check on the jobvisor median and the ratio)
# ratio "up": jobvisor/python (higher is better); "down": python/jobvisor (lower is better).
ROWS = [
    ("(a) {n} no-op, one by one (tasks/s)", "a.tasks_per_s", "a.tasks_per_s", "up",
     "≥ 30× python", lambda j, r: r >= 30),
    ("(b) {n} no-op, map auto chunks (tasks/s)", "b.tasks_per_s", "b.tasks_per_s", "up",
     "≥ python", lambda j, r: r >= 1),
    ("(c) apply p50, loop in block_on (µs)", "c.p50_us", "c.p50_us", "down", "", None),
    ("(c) apply p99, loop in block_on (µs)", "c.p99_us", "c.p99_us", "down", "", None),
    ("(c) apply p50, loop in a spawned task (µs)", "c_task.p50_us", "c.p50_us", "down", "", None),
    ("(c) apply p99, loop in a spawned task (µs)", "c_task.p99_us", "c.p99_us", "down", "", None),
    ("(c) pipe floor p50, unpinned (µs)", "floor.p50_us", "floor.p50_us", None, "", None),
    ("(c) pipe floor p99, unpinned (µs)", "floor.p99_us", "floor.p99_us", None, "", None),
    ("(c) pipe floor p50, same CPU (µs)", "floor_same.p50_us", "floor_same.p50_us", None, "", None),
    ("(c) pipe floor p50, two CPUs (µs)", "floor_cross.p50_us", "floor_cross.p50_us", None, "", None),
    ("(c) block_on p50 / unpinned floor p50 (×)", "c.p50_over_floor", "c.p50_over_floor", None,
     "≤ 1.5", lambda j, r: j <= 1.5),
    ("(c) block_on p50 / same-CPU floor p50 (×)", "c.p50_over_floor_same", "c.p50_over_floor_same",
     None, "≤ 1.5", lambda j, r: j <= 1.5),
    ("(c) spawned-task p50 / same-CPU floor p50 (×)", "c_task.p50_over_floor_same", None, None,
     "≤ 1.5", lambda j, r: j <= 1.5),
    ("(c) block_on p50 / two-CPU floor p50 (×)", "c.p50_over_floor_cross", "c.p50_over_floor_cross",
     None, "", None),
    ("(c) spawned-task p50 / two-CPU floor p50 (×)", "c_task.p50_over_floor_cross", None, None,
     "", None),
    ("(d) {spin}×10 ms CPU: speedup on {w} cores", "d.speedup", "d.speedup", "up", "", None),
    ("(d) parallel efficiency (%)", "d.efficiency_pct", "d.efficiency_pct", "up",
     "≥ 97 %", lambda j, r: j >= 97),
    ("(d) worker CPU share during a task", "d.cpu_share", "d.cpu_share", None, "", None),
    ("(e) {mib}× 1 MiB inputs (MiB/s)", "e.mib_per_s", "e.mib_per_s", "up",
     "≥ 2× python", lambda j, r: r >= 2),
    ("(f) SIGKILL → ready, forkserver p50 (ms)", "f.forkserver.p50_ms", None, None,
     "≤ 1 ms", lambda j, r: j <= 1),
    ("(f) SIGKILL → ready, forkserver p99 (ms)", "f.forkserver.p99_ms", None, None, "", None),
    ("(f) SIGKILL → ready, spawn p50 (ms)", "f.spawn.p50_ms", None, None, "", None),
    ("(f) SIGKILL → ready, spawn p99 (ms)", "f.spawn.p99_ms", None, None, "", None),
    ("(g) idle worker PSS (KiB)", "g.worker_pss_kib", "g.worker_pss_kib", "down",
     "≤ 1,024 KiB", lambda j, r: j <= 1024),
    ("(g) supervisor RSS, idle pool (KiB)", "g.supervisor_rss_kib", "g.supervisor_rss_kib", "down", "", None),
    ("(g) supervisor peak RSS, whole run (KiB)", "supervisor_hwm_kib", "supervisor_hwm_kib", "down", "", None),
]


def table(directory):
    jv_runs, py_runs = load_runs(directory, "bench_pool.py")
    first = jv_runs[0]
    names = {"n": first.get("n", "?"), "w": first.get("workers", "?"),
             "spin": first.get("d.tasks", "?"), "mib": first.get("e.tasks", "?")}

    def spread(runs, key):
        vals = numbers(runs, key) if key else []
        if not vals:
            return "n/a" if key is None else "missing"
        if len(vals) == 1:
            return fmt(vals[0])
        return f"{fmt(min(vals))} – {fmt(max(vals))}"

    main_rows, spread_rows = [], []
    for label, jk, pk, mode, target, check in ROWS:
        label = label.format(**names)
        j, p = median(jv_runs, jk), median(py_runs, pk)
        r = None
        if mode and j and p:
            r = j / p if mode == "up" else p / j
        if not target:
            verdict = ""
        elif check is None or j is None or (r is None and "python" in target):
            verdict = "n/a"
        else:
            verdict = "yes" if check(j, r) else "NO"
        main_rows.append((label, fmt(j), fmt(p) if pk else "n/a", "" if r is None else f"{r:.2f}×",
                          target, verdict))
        spread_rows.append((label, spread(jv_runs, jk), spread(py_runs, pk)))

    print(f"Medians over {len(jv_runs)} jobvisor and {len(py_runs)} python runs "
          f"(alternating); ratio = of the medians, > 1× means jobvisor is better.")
    print()
    print_table(("workload", "jobvisor", "python", "ratio", "target", "met?"), main_rows, {1, 2, 3})
    print()
    print("Spread (min – max over the runs):")
    print()
    print_table(("workload", "jobvisor", "python"), spread_rows, {1, 2})
    print()
    py0 = py_runs[0]
    print(f"workers: {names['w']}; python {py0.get('python', '?')}, multiprocessing start method "
          f"'{py0.get('start_method', '?')}'. (f) python: n/a (see BENCHMARKS.md).")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="scale every count down 10x")
    ap.add_argument("--workers", type=int, default=0, help="pool size (default: cpu count)")
    ap.add_argument("--n", type=int, default=0, help="tasks of (a) and (b) (default 100000)")
    ap.add_argument("--table", metavar="DIR",
                    help="print the comparison table from DIR/rust.*.txt and DIR/python.*.txt")
    args = ap.parse_args()
    if args.table:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # e.g. `| head`
        table(args.table)
    else:
        run(args)


if __name__ == "__main__":
    main()
