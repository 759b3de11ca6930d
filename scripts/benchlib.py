"""Helpers shared by the benchmark scripts (bench_pool.py, bench_io.py): the
RESULT line format both sides print, reading it back, and the markdown table."""


def result(key, value):
    """Prints one Python-side figure as `RESULT py.KEY VALUE`."""
    print(f"RESULT py.{key} {value}", flush=True)


def read_results(path, prefix=""):
    """The `RESULT` lines of a raw output file whose key starts with `prefix`,
    as {key without the prefix: value}."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "RESULT" and parts[1].startswith(prefix):
                out[parts[1][len(prefix):]] = parts[2]
    return out


def load_runs(directory, script):
    """The RESULT figures of every run in `directory`: (jobvisor runs from
    rust.*.txt, Python runs from python.*.txt with their `py.` prefix off).
    Exits naming `script` when either side has none."""
    import glob
    import os
    import sys

    rust_files = sorted(glob.glob(os.path.join(directory, "rust.*.txt")))
    py_files = sorted(glob.glob(os.path.join(directory, "python.*.txt")))
    if not rust_files or not py_files:
        sys.exit(f"{script}: no rust.*.txt / python.*.txt in {directory}")
    return [read_results(f) for f in rust_files], [read_results(f, "py.") for f in py_files]


def numbers(runs, key):
    """The values of `key` over `runs` that are numbers (runs missing it, or
    with something else there, are left out)."""
    vals = []
    for r in runs:
        try:
            vals.append(float(r[key]))
        except (KeyError, ValueError):
            pass
    return vals


def median(runs, key):
    """The median of `numbers(runs, key)`; None when there are none (or no key)."""
    import statistics

    vals = numbers(runs, key) if key else []
    return statistics.median(vals) if vals else None


def print_table(header, rows, right):
    """Prints a markdown table, padded; columns in `right` are right-aligned."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ) + " |"

    print(line(header))
    print("|" + "|".join(("-" * (wd + 1) + ":") if i in right else "-" * (wd + 2)
                         for i, wd in enumerate(widths)) + "|")
    for r in rows:
        print(line(r))
