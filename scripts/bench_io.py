#!/usr/bin/env python3
"""The Python half of `scripts/bench-io`: I/O-bound tasks through
aiomultiprocess and multiprocessing.Pool, against the same loopback delay
server as `benches/io/`, and the side-by-side table.

    python bench_io.py --url URL [--quick] [--n N] [--workers W] [--concurrency C] [--mp-n M]
        runs the workloads and prints `RESULT py.<key> <value>` lines;
    python bench_io.py --table DIR
        reads DIR/rust.*.txt and DIR/python.*.txt (saved outputs of both sides,
        one file per run) and prints the comparison table of the medians.

Workloads (the server answers every GET after its delay, 100 ms by default):
  amp  aiomultiprocess.Pool(processes=W, childconcurrency=C).map over N GETs
       (default 10,000; 1,000 with --quick) with aiohttp, one ClientSession per
       child process, reused by all its calls (connector limit C, keep-alive);
       after a warm-up round of W x C GETs that opens the connections.
  mp   multiprocessing.Pool(W).map over M blocking urllib GETs (default 200;
       20 with --quick), chunksize 1: one call at a time per process, so the
       full N would take N x delay / W (500 s); its throughput is what counts.

Needs aiomultiprocess and aiohttp (scripts/bench-io installs them in a venv).
"""

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import time
import urllib.request

from benchlib import load_runs, median, numbers, print_table, result

# ---- tasks (module level, so the child processes find them) -----------------

_session = None


async def fetch(url):
    """One GET with this child process's session (created on first use)."""
    global _session
    import aiohttp

    if _session is None:
        # No await between the check and the assignment: one session per child.
        limit = int(os.environ.get("BENCH_IO_CONN_LIMIT", "0"))
        _session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
    async with _session.get(url) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: status {resp.status}")
        return resp.status


def fetch_blocking(url):
    with urllib.request.urlopen(url) as resp:
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: status {resp.status}")
        return resp.status


# ---- helpers ------------------------------------------------------------------


def server_stats(url, reset=False):
    base = url.rstrip("/")
    with urllib.request.urlopen(f"{base}/_stats{'?reset' if reset else ''}") as resp:
        return json.loads(resp.read())


def raise_nofile_limit():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---- workloads ----------------------------------------------------------------


async def run_aiomultiprocess(url, n, workers, concurrency, delay_ms):
    from aiomultiprocess import Pool

    ideal = n * delay_ms / 1000.0 / (workers * concurrency)
    # The children read the connector limit from the environment (they are
    # spawned, not forked): as many connections as calls in flight.
    os.environ["BENCH_IO_CONN_LIMIT"] = str(concurrency)
    async with Pool(processes=workers, childconcurrency=concurrency) as pool:
        await pool.map(fetch, [url] * (workers * concurrency))  # warm-up
        before = server_stats(url, reset=True)
        t = time.perf_counter()
        outs = await pool.map(fetch, [url] * n)
        wall = time.perf_counter() - t
        stats = server_stats(url, reset=True)
    # Minus the connection that asked for the second sample.
    opened = stats["accepted"] - before["accepted"] - 1
    assert len(outs) == n and all(s == 200 for s in outs), "some GETs failed"
    rate = n / wall
    print(
        f"aiomultiprocess: Pool(processes={workers}, childconcurrency={concurrency}), "
        f"{n} GETs x {delay_ms} ms: {wall:.3f} s, {rate:.0f} calls/s; ideal {ideal:.3f} s, "
        f"wall / ideal {wall / ideal:.3f}; peak in flight at the server {stats['peak_in_flight']}, "
        f"{opened} connections opened",
        flush=True,
    )
    result("amp.n", n)
    result("amp.wall_s", f"{wall:.4f}")
    result("amp.calls_per_s", f"{rate:.0f}")
    result("amp.ideal_s", f"{ideal:.4f}")
    result("amp.over_ideal", f"{wall / ideal:.4f}")
    result("amp.peak_in_flight", stats["peak_in_flight"])
    result("amp.connections_opened", opened)


def run_mp_pool(url, m, workers, delay_ms):
    ideal_rate = workers * 1000.0 / delay_ms
    with mp.Pool(workers) as pool:
        pool.map(fetch_blocking, [url] * workers, chunksize=1)  # warm-up
        server_stats(url, reset=True)
        t = time.perf_counter()
        outs = pool.map(fetch_blocking, [url] * m, chunksize=1)
        wall = time.perf_counter() - t
    stats = server_stats(url, reset=True)
    assert len(outs) == m and all(s == 200 for s in outs), "some GETs failed"
    rate = m / wall
    print(
        f"multiprocessing.Pool({workers}), {m} blocking urllib GETs x {delay_ms} ms "
        f"(only {m}: the 10,000 would take {10_000 * delay_ms / 1000 / workers:.0f} s): "
        f"{wall:.3f} s, {rate:.1f} calls/s (ideal {ideal_rate:.1f}); "
        f"peak in flight at the server {stats['peak_in_flight']}",
        flush=True,
    )
    result("mp.n", m)
    result("mp.wall_s", f"{wall:.4f}")
    result("mp.calls_per_s", f"{rate:.2f}")
    result("mp.ideal_per_s", f"{ideal_rate:.2f}")
    result("mp.peak_in_flight", stats["peak_in_flight"])


def run(args):
    import aiohttp
    import aiomultiprocess

    raise_nofile_limit()
    scale = 10 if args.quick else 1
    n = args.n or 10_000 // scale
    m = args.mp_n or 200 // scale
    delay_ms = server_stats(args.url, reset=True)["delay_ms"]
    print(
        f"Python {sys.version.split()[0]}, aiomultiprocess {aiomultiprocess.__version__}, "
        f"aiohttp {aiohttp.__version__}; server {args.url} (delay {delay_ms} ms); "
        f"{args.workers} processes, quick={args.quick}",
        flush=True,
    )
    result("python", sys.version.split()[0])
    result("aiomultiprocess", aiomultiprocess.__version__)
    result("aiohttp", aiohttp.__version__)
    result("workers", args.workers)
    result("concurrency", args.concurrency)
    result("delay_ms", delay_ms)
    if "amp" in args.only:
        asyncio.run(run_aiomultiprocess(args.url, n, args.workers, args.concurrency, delay_ms))
    if "mp" in args.only:
        run_mp_pool(args.url, m, args.workers, delay_ms)


# ---- the table ------------------------------------------------------------------


def fmt(v):
    if v is None:
        return "n/a"
    if abs(v) >= 100 or (v == int(v) and abs(v) < 1e15):
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(directory):
    import statistics

    jv_runs, py_runs = load_runs(directory, "bench_io.py")
    parts = [f"io.cpu_us_per_call.{k}" for k in ("supervisor", "workers", "server")]
    for r in jv_runs:
        if all(k in r for k in parts):
            r["io.cpu_us_per_call.total"] = str(sum(float(r[k]) for k in parts))

    def cell(runs, key):
        """The median, with the spread (min-max) when there are several runs."""
        vals = numbers(runs, key)
        if not vals:
            return "missing"
        m = fmt(statistics.median(vals))
        return m if len(vals) == 1 else f"{m} ({fmt(min(vals))}–{fmt(max(vals))})"

    def scaled(runs, key, factor):
        out = []
        for r in runs:
            try:
                out.append({"v": float(r[key]) * factor})
            except (KeyError, ValueError):
                pass
        return out

    def verdict(ok):
        return "n/a" if ok is None else ("yes" if ok else "NO")

    jv0, py0 = jv_runs[0], py_runs[0]
    w, c = jv0.get("workers", "?"), jv0.get("concurrency_per_worker", "?")
    n, delay = jv0.get("io.n", "?"), jv0.get("delay_ms", "?")
    amp_n, mp_n = py0.get("amp.n", "?"), py0.get("mp.n", "?")
    jv_rate, amp_rate, mp_rate = (median(jv_runs, "io.calls_per_s"), median(py_runs, "amp.calls_per_s"),
                                  median(py_runs, "mp.calls_per_s"))
    jv_over = median(jv_runs, "io.over_ideal")
    ideal_s, mp_ideal = median(jv_runs, "io.ideal_s"), median(py_runs, "mp.ideal_per_s")
    ideal_rate = float(n) / ideal_s if ideal_s and n != "?" else None

    rows = [
        (f"{int(n):,} GETs × {delay} ms, wall (s)" if n.isdigit() else f"{n} GETs, wall (s)", cell(jv_runs, "io.wall_s"),
         cell(py_runs, "amp.wall_s"), "n/a", "n/a" if ideal_s is None else f"{ideal_s:.2f}", "", ""),
        ("throughput (calls/s)", cell(jv_runs, "io.calls_per_s"), cell(py_runs, "amp.calls_per_s"),
         f"{cell(py_runs, 'mp.calls_per_s')} ({mp_n} GETs)",
         f"{fmt(ideal_rate)} / {fmt(mp_ideal)} for Pool", "", ""),
        ("wall / ideal", cell(jv_runs, "io.over_ideal"), cell(py_runs, "amp.over_ideal"), "n/a",
         "1.00", "≤ 1.2", verdict(None if jv_over is None else jv_over <= 1.2)),
        ("peak GETs in flight at the server", cell(jv_runs, "io.peak_in_flight"),
         cell(py_runs, "amp.peak_in_flight"), cell(py_runs, "mp.peak_in_flight"),
         f"{fmt(int(w) * int(c)) if w != '?' and c != '?' else '?'} / {w} for Pool", "", ""),
        ("connections opened during the run", cell(jv_runs, "io.connections_opened"),
         cell(py_runs, "amp.connections_opened"), f"{mp_n} (no keep-alive)", "0", "", ""),
        ("CPU per GET, supervisor + workers + server (µs)",
         cell(jv_runs, "io.cpu_us_per_call.total"), "", "", "", "", ""),
        ("other processes' CPU meanwhile (% of one CPU)", cell(jv_runs, "io.others_cpu_pct"),
         "", "", "0", "", ""),
    ]
    r_amp = jv_rate / amp_rate if jv_rate and amp_rate else None
    r_mp = jv_rate / mp_rate if jv_rate and mp_rate else None
    rows.append(("throughput ratio, jobvisor / aiomultiprocess", f"{fmt(r_amp)}×", "", "", "",
                 "≥ 1×", verdict(None if r_amp is None else r_amp >= 1)))
    rows.append(("throughput ratio, jobvisor / multiprocessing.Pool", f"{fmt(r_mp)}×", "", "", "",
                 "", ""))

    print(f"Medians over {len(jv_runs)} jobvisor and {len(py_runs)} python runs "
          f"(min–max in parentheses). {w} worker processes on every side; jobvisor "
          f"io_concurrency_per_worker = {c}, aiomultiprocess childconcurrency = "
          f"{py0.get('concurrency', '?')}; aiomultiprocess ran {amp_n} GETs, "
          f"multiprocessing.Pool {mp_n}.")
    print()
    print_table(("I/O: GETs that wait on the server", "jobvisor", "aiomultiprocess",
                 f"multiprocessing.Pool({w})", "ideal", "target", "met?"), rows, {1, 2, 3, 4})

    mix_rows = []
    for kind, label, ideal_key in (("spin", f"spin {jv0.get('mix.spin_ms', '?')} ms, "
                                    f"{jv0.get('mix.spin_in_flight', '?')} in flight",
                                    "mix.spin_ideal_per_s"),
                                   ("io", f"http GET, {jv0.get('mix.io_in_flight', '?')} in flight",
                                    "mix.io_ideal_per_s")):
        drop = median(jv_runs, f"mix.{kind}_drop_pct")
        mix_rows.append((f"{label} (calls/s)", cell(jv_runs, f"mix.{kind}_alone_per_s"),
                         cell(jv_runs, f"mix.{kind}_mixed_per_s"), fmt(median(jv_runs, ideal_key)),
                         cell(jv_runs, f"mix.{kind}_drop_pct"), "≤ 10 %",
                         verdict(None if drop is None else drop <= 10)))
    work_drop = median(jv_runs, "mix.spin_work_drop_pct")
    mix_rows.append(("spin CPU work done (10⁶ rounds/s)",
                     cell(scaled(jv_runs, "mix.spin_rounds_alone_per_s", 1e-6), "v"),
                     cell(scaled(jv_runs, "mix.spin_rounds_mixed_per_s", 1e-6), "v"), "",
                     cell(jv_runs, "mix.spin_work_drop_pct"), "(≤ 10 %)",
                     verdict(None if work_drop is None else work_drop <= 10)))
    mix_rows.append(("spin CPU work: the drop the http calls' own CPU forces", "", "", "",
                     cell(jv_runs, "mix.spin_work_bound_drop_pct"), "", ""))
    mix_rows.append(("other processes' CPU (% of one CPU), spin / http alone",
                     f"{cell(jv_runs, 'mix.spin_alone.others_cpu_pct')} / "
                     f"{cell(jv_runs, 'mix.io_alone.others_cpu_pct')}",
                     cell(jv_runs, "mix.both.others_cpu_pct"), "0", "", "", ""))
    print()
    print(f"Mixed (jobvisor only): each kind in a closed loop for {jv0.get('mix.secs', '?')} s, "
          "alone and then both at once on the same pool.")
    print()
    print_table(("kind", "alone", "mixed", "ideal", "drop (%)", "target", "met?"), mix_rows,
                {1, 2, 3, 4})
    print()
    print(f"python {py0.get('python', '?')}, aiomultiprocess {py0.get('aiomultiprocess', '?')}, "
          f"aiohttp {py0.get('aiohttp', '?')}.")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="the delay server, e.g. http://127.0.0.1:PORT/")
    ap.add_argument("--quick", action="store_true", help="scale the counts down 10x")
    ap.add_argument("--n", type=int, default=0, help="aiomultiprocess GETs (default 10000)")
    ap.add_argument("--mp-n", type=int, default=0, help="multiprocessing.Pool GETs (default 200)")
    ap.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    ap.add_argument("--concurrency", type=int, default=500,
                    help="aiomultiprocess childconcurrency (default 500)")
    ap.add_argument("--only", default="amp,mp", help="comma-separated subset of: amp, mp")
    ap.add_argument("--table", metavar="DIR",
                    help="print the comparison table from DIR/rust.*.txt and DIR/python.*.txt")
    args = ap.parse_args()
    if args.table:
        import signal

        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # e.g. `| head`
        table(args.table)
    elif not args.url:
        ap.error("--url is required (scripts/bench-io starts the server and passes it)")
    else:
        args.only = args.only.split(",")
        run(args)


if __name__ == "__main__":
    main()
