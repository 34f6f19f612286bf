"""Repeatability of ``effscale bench``: p50 of consecutive runs, as ratios.

Runs ``effscale bench --variant b0 --variant lite0 --throughput-batch 0 --format json``
``2 x --pairs`` times back to back (each a fresh command, as a user would rerun it) and
prints, for every consecutive pair and model, second p50 / first p50, and how many pairs
agree within 10% (the target). Extra arguments go to every ``effscale bench`` call, e.g.
``--blocks 1 --block-gap 0`` for the old one-block measurement.

    python benchmarks/bench_repeat.py --pairs 5
    python benchmarks/bench_repeat.py --pairs 5 -- --blocks 1 --block-gap 0
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

MODELS = ("b0", "lite0")
TOLERANCE = 0.10


def one_run(extra: list[str]) -> dict:
    command = ["effscale", "bench", *(a for m in MODELS for a in ("--variant", m)), "--throughput-batch", "0",
               "--format", "json", *extra]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    records = json.loads(out)[0]["records"]
    return {r["name"]: r for r in records}


# Estimators of the typical batch-1 latency, all computed from the same records.
ESTIMATORS = {
    "p50": lambda r: r["p50_ms"],  # what bench reports: the median of the block medians
    "pooled p50": lambda r: r.get("p50_all_ms", r["p50_ms"]),  # the median of all timed runs
    "fastest block": lambda r: min(r.get("block_p50_ms") or [r["p50_ms"]]),
    "cpu50": lambda r: r["cpu_p50_ms"],  # process CPU time per call
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5)
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    within = {(e, m): 0 for e in ESTIMATORS for m in MODELS}
    both = {e: 0 for e in ESTIMATORS}
    print("pair  " + "  ".join(f"{m:>34}" for m in MODELS) + "   (p50 ms: 1st / 2nd = ratio; drift% of each run)")
    for pair in range(args.pairs):
        first, second = one_run(extra), one_run(extra)
        cells = []
        for m in MODELS:
            a, b = first[m], second[m]
            cells.append(f"{a['p50_ms']:6.2f} / {b['p50_ms']:6.2f} = {b['p50_ms'] / a['p50_ms']:4.2f} "
                         f"({a.get('spread_pct', 0):.0f}%,{b.get('spread_pct', 0):.0f}%)")
        for name, estimate in ESTIMATORS.items():
            ok = [abs(estimate(second[m]) / estimate(first[m]) - 1) <= TOLERANCE for m in MODELS]
            for m, good in zip(MODELS, ok):
                within[name, m] += good
            both[name] += all(ok)
        print(f"{pair + 1:>4}  " + "  ".join(f"{c:>34}" for c in cells), flush=True)
    print(f"pairs of consecutive runs within {TOLERANCE:.0%}, of {args.pairs}:")
    for name in ESTIMATORS:
        per_model = ", ".join(f"{m} {within[name, m]}" for m in MODELS)
        print(f"  {name:>13}: {per_model}; both models at once {both[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
