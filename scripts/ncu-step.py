#!/usr/bin/env python3
"""ncu-step.py - where one decode step's GPU time goes, from an ncu raw CSV.

Profile a run's kernels (the CUDA graph's nodes are profiled one by one, serialised: the sum
is the kernels' own time without programmatic-launch overlap or launch gaps), e.g.

  ncu --clock-control none --cache-control none --csv --page raw \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size \
      -s 3000 -c 700 build/forge bench -m M.gguf --device cuda -p 0 -n 16 -r 1 > k.csv

then `scripts/ncu-step.py k.csv [--per NAME]`: per kernel and grid size, launches,
total and mean microseconds, DRAM bytes and GB/s over the kernel's own time; totals divided by
the launches of --per (a kernel that runs once a step, default: the one that runs fewest times)
give the per-step figures.
"""
import csv
import re
import sys


def short(name):
    name = re.sub(r"\(.*$", "", name)  # arguments
    base = re.sub(r"<.*$", "", name).replace("void ", "").strip()
    targs = re.search(r"<(.*)>", name)
    return base + ("<" + targs.group(1)[:40] + ">" if targs else "")


def num(s):
    try:
        return float(s.replace(",", ""))
    except (ValueError, AttributeError):
        return 0.0


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    per = sys.argv[sys.argv.index("--per") + 1] if "--per" in sys.argv else None
    lines = [ln for ln in open(sys.argv[1], errors="replace") if ln.startswith('"')]
    rows = list(csv.reader(lines))
    if len(rows) < 3:
        print("ncu-step: no kernel rows in", sys.argv[1])
        return 1
    hdr, units = rows[0], rows[1]
    col = {h: i for i, h in enumerate(hdr)}
    need = ["Kernel Name", "gpu__time_duration.sum"]
    if any(n not in col for n in need):
        print("ncu-step: columns missing:", [n for n in need if n not in col])
        return 1
    tscale = {"nsecond": 1e-3, "usecond": 1.0, "msecond": 1e3, "second": 1e6}.get(
        units[col["gpu__time_duration.sum"]], 1e-3)

    def bscale(c):
        return {"byte": 1, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9}.get(units[col[c]], 1) if c in col else 0

    agg = {}
    for r in rows[2:]:
        if len(r) < len(hdr):
            continue
        k = short(r[col["Kernel Name"]])
        if "launch__grid_size" in col:  # one row per shape (q|k|v and gate|up apart)
            k += " g" + str(int(num(r[col["launch__grid_size"]])))
        a = agg.setdefault(k, [0, 0.0, 0.0])
        a[0] += 1
        a[1] += num(r[col["gpu__time_duration.sum"]]) * tscale
        for c in ("dram__bytes_read.sum", "dram__bytes_write.sum"):
            if c in col:
                a[2] += num(r[col[c]]) * bscale(c)
    if per:
        steps = sum(v[0] for k, v in agg.items() if per in k)
    else:
        steps = min(v[0] for v in agg.values())
    steps = max(steps, 1)
    tot_us = sum(v[1] for v in agg.values())
    tot_b = sum(v[2] for v in agg.values())
    print(f"{'kernel':60s} {'n/step':>7s} {'us/step':>9s} {'us each':>8s} {'MB/step':>8s} {'GB/s':>7s} {'share':>6s}")
    for k, (n, us, b) in sorted(agg.items(), key=lambda kv: -kv[1][1]):
        gbs = b / (us * 1e3) if us > 0 else 0.0
        print(f"{k[-60:]:60s} {n / steps:7.1f} {us / steps:9.2f} {us / n:8.2f} {b / steps / 1e6:8.2f} {gbs:7.0f} {100 * us / tot_us:5.1f}%")
    print(f"{'total (' + str(steps) + ' steps)':60s} {sum(v[0] for v in agg.values()) / steps:7.1f} "
          f"{tot_us / steps:9.2f} {'':8s} {tot_b / steps / 1e6:8.2f} {tot_b / (tot_us * 1e3):7.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
