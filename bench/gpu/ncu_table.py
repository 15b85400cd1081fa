#!/usr/bin/env python3
"""Per-kernel table of an Nsight Compute report of `bench_roofline --trace` (bench/gpu/measure.sh's
kernels step): where a steady-state step's device time goes, kernel by kernel, and how much of the
step's wall time no kernel runs in.

    ncu_table.py --passes N [--wall-ms MS] [--title T] REPORT.csv

REPORT.csv: `ncu --import R.ncu-rep --csv --page raw --print-units base`, profiled with the metrics
gpu__time_duration.sum, dram__bytes_read.sum, dram__bytes_write.sum (launch__registers_per_thread
and sm__warps_active.avg.pct_of_peak_sustained_active, the achieved occupancy, when present). Kernels are grouped by name, grid and block (a matmul kernel per weight shape), and
sorted by their time a pass. --passes: the traced passes (bench_roofline --trace); --wall-ms: the wall
time of a pass of the same run without the profiler, whose difference from the kernels' sum is the
time between kernels (launch latency, waits, the host)."""
import argparse
import csv
import sys

TIME = "gpu__time_duration.sum"
READ = "dram__bytes_read.sum"
WRITE = "dram__bytes_write.sum"
REGS = "launch__registers_per_thread"
OCCUPANCY = "sm__warps_active.avg.pct_of_peak_sustained_active"
SCALE = {  # units ncu may print, to nanoseconds and bytes
    "nsecond": 1.0, "usecond": 1e3, "msecond": 1e6, "second": 1e9,
    "byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6, "GB": 1e9,
}


def number(text, unit=""):
    """A value as ncu prints it (quoted, maybe with thousands separators), in base units."""
    text = text.replace(",", "").strip()
    if not text or text == "n/a":
        return 0.0
    return float(text) * SCALE.get(unit, 1.0)


def short_name(name):
    """`void mmv<w_q4_K, 2, false, 1, true>(cuda_mm_args)` -> `mmv<w_q4_K, 2, false, 1, true>`."""
    name = name.strip()
    if name.startswith("void "):
        name = name[5:]
    depth = 0
    for i, c in enumerate(name):
        if c == "<":
            depth += 1
        elif c == ">":
            depth -= 1
        elif c == "(" and depth == 0:
            return name[:i]
    return name


def read_report(path):
    """The report's kernels: dicts of name, grid, block, ns, read, write, regs."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = next((i for i, r in enumerate(rows) if r and r[0] == "ID" and "Kernel Name" in r), None)
    if head is None:
        sys.exit(f"ncu_table: {path}: no header row (\"ID\", ..., \"Kernel Name\"): not a raw-page CSV")
    cols = {c: i for i, c in enumerate(rows[head])}
    for needed in ("Kernel Name", TIME, READ, WRITE):
        if needed not in cols:
            sys.exit(f"ncu_table: {path}: no column {needed}")
    units = [""] * len(rows[head])
    kernels = []
    for r in rows[head + 1:]:
        if len(r) < len(units):
            continue
        if not r[0].strip().isdigit():  # the units row (its ID cell is empty)
            units = r
            continue

        def get(c):
            return number(r[cols[c]], units[cols[c]]) if c in cols else 0.0
        kernels.append({"name": short_name(r[cols["Kernel Name"]]),
                        "grid": r[cols["Grid Size"]] if "Grid Size" in cols else "",
                        "block": r[cols["Block Size"]] if "Block Size" in cols else "",
                        "ns": get(TIME), "read": get(READ), "write": get(WRITE), "regs": get(REGS),
                        "occupancy": get(OCCUPANCY)})
    return kernels


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passes", type=int, required=True)
    ap.add_argument("--wall-ms", type=float)
    ap.add_argument("--title", default="kernel")
    ap.add_argument("report")
    a = ap.parse_args()
    if a.passes < 1:
        sys.exit("ncu_table: --passes must be at least 1")
    kernels = read_report(a.report)
    if not kernels:
        sys.exit(f"ncu_table: {a.report}: no kernels (was the profiler's region empty?)")
    groups = {}
    for k in kernels:
        g = groups.setdefault((k["name"], k["grid"], k["block"]),
                              {"calls": 0, "ns": 0.0, "read": 0.0, "write": 0.0, "regs": k["regs"], "occ_ns": 0.0})
        g["calls"] += 1
        g["ns"] += k["ns"]
        g["occ_ns"] += k["occupancy"] * k["ns"]
        g["read"] += k["read"]
        g["write"] += k["write"]
    p = a.passes
    print(f"| {a.title} | grid x block | registers | occupancy | calls/pass | µs/pass | µs/call "
          "| DRAM MB/pass (read + write) | GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, grid, block), g in sorted(groups.items(), key=lambda kv: -kv[1]["ns"]):
        moved = g["read"] + g["write"]
        occupancy = g["occ_ns"] / g["ns"] if g["ns"] else 0.0  # the calls' mean, weighted by their time
        print(f"| `{name}` | {grid} x {block} | {g['regs']:.0f} | {occupancy:.0f}% | {g['calls'] / p:.1f} "
              f"| {g['ns'] / p / 1e3:.1f} "
              f"| {g['ns'] / g['calls'] / 1e3:.2f} | {moved / p / 1e6:.2f} | {moved / g['ns'] if g['ns'] else 0:.0f} |")
    ns = sum(k["ns"] for k in kernels)
    moved = sum(k["read"] + k["write"] for k in kernels)
    print(f"| all kernels | | | | {len(kernels) / p:.1f} | {ns / p / 1e3:.1f} | | {moved / p / 1e6:.2f} "
          f"| {moved / ns if ns else 0:.0f} |")
    if a.wall_ms:
        wall_us, busy_us = a.wall_ms * 1e3, ns / p / 1e3
        print(f"\nkernels {busy_us:.1f} µs a pass of the wall's {wall_us:.1f} µs ({100 * busy_us / wall_us:.0f}%); "
              f"the other {wall_us - busy_us:.1f} µs no kernel of the pass runs (launch latency, waits, the host)")


if __name__ == "__main__":
    main()
