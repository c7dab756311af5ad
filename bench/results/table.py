#!/usr/bin/env python3
"""Markdown tables of `runner-storage-bench compare-etcd --json` passes, as
BENCHMARKS.md shows them.

    python3 bench/results/table.py bench/results/2026-12-04-7bc3453-compare-etcd-pass*.json

Prints the headline ratios (one row per pass), then every cell (a row per
pair and concurrency, a column per pass). Each input is one pass: the JSON
document the bench prints, whose "pairs" hold the medians of both sides.
"""
import json
import sys


def pairs_of(path):
    """{(our workload, concurrency): pair} of one pass."""
    with open(path) as f:
        return {(p["ours"]["workload"], p["ours"]["concurrency"]): p for p in json.load(f)["pairs"]}


def ratio_cell(pair):
    """ours / etcd = ratio, in ops/s of the primary call."""
    return f"{pair['ours']['ops_per_s']:,.0f} / {pair['etcd']['ops_per_s']:,.0f} = **{pair['ops_ratio']:.2f}×**"


def headline(passes):
    print("| pass | `acquire` / lock txn, C=64 | `register` / put, C=64 | `get-runners` / range, C=16 "
          "| C=1 p50, `register` / put |")
    print("|---|---|---|---|---|")
    for number, pairs in enumerate(passes, 1):
        c1 = pairs[("register", 1)]
        ours, etcd = c1["ours"]["p50_ms"], c1["etcd"]["p50_ms"]
        print(f"| {number} | {ratio_cell(pairs[('acquire', 64)])} | {ratio_cell(pairs[('register', 64)])} "
              f"| {ratio_cell(pairs[('get-runners', 16)])} | {ours:.2f} / {etcd:.2f} ms = {ours / etcd:.2f} |")


def every_cell(passes):
    print("| pair | C | " + " | ".join(f"pass {n}: ops/s (×); p50 ms" for n in range(1, len(passes) + 1)) + " |")
    print("|---|---|" + "---|" * len(passes))
    for (workload, concurrency), first in passes[0].items():
        cells = []
        for pairs in passes:
            pair = pairs[(workload, concurrency)]
            ours, etcd = pair["ours"], pair["etcd"]
            cells.append(f"{ours['ops_per_s']:,.0f} / {etcd['ops_per_s']:,.0f} ({pair['ops_ratio']:.2f}×); "
                         f"{ours['p50_ms']:.2f} / {etcd['p50_ms']:.2f}")
        print(f"| `{workload}` / `{first['etcd']['workload']}` | {concurrency} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    passes = [pairs_of(path) for path in sys.argv[1:]]
    headline(passes)
    print()
    every_cell(passes)
