"""Benchmarks for ``effscale grid``. Prints ratios, not raw timings.

Two measurements:

* ``halving``: successive halving against the full schedule on the same candidates and
  data. Prints the training images each one saw (target: halving <= 0.4x full) and
  whether both pick the same winner, or the halving winner is within noise of the full
  schedule's winner.

      python benchmarks/grid_bench.py halving --dataset ../shared/data/cifar10-jpeg.tar.gz
      python benchmarks/grid_bench.py halving --fake          # seconds, no Keras: checks the bookkeeping

* ``overhead RUN_DIR``: per-trial overhead of a finished grid run (model build, compile
  and teardown; and separately the first-step graph tracing) as a fraction of trial time
  (target: <= 15% at the default settings).

      python benchmarks/grid_bench.py overhead runs/<grid run>

Both schedules run in this one process, one after the other, so their ratio is measured
under the same machine load.
"""

from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from effscale.grid.executors import run_search
from effscale.grid.config import GridConfig
from effscale.grid.report import ranking, summary
from effscale.grid.search import SearchSpace
from effscale.runs import RunDir
from effscale.grid.trials import TrialStore, fake_trial

# A small grid (6 rows incl. the 4 reference rows) with 3 rungs: eta=3 makes halving
# train 6x1 + 2x3 + 1x9 = 21 epochs against 6x9 = 54 for the full schedule (0.39x).
BENCH = dict(step=0.25, tolerance=0.2, rungs=3, eta=3, epochs=1, limit_train=1000, limit_val=500,
             base_width=0.25, base_depth=0.5, resolution=32, batch_size=64, bn_recalibration_batches=4)


def _search(config: GridConfig, root: Path, trainer, num_classes: int) -> tuple[dict, list, float]:
    run = RunDir(root / config.schedule)
    run.path.mkdir(parents=True)
    space = SearchSpace.from_config(config)
    began = time.perf_counter()
    run_search(space, TrialStore(run), trainer, num_classes=num_classes)
    seconds = time.perf_counter() - began
    trials = TrialStore(run).latest()
    rows = ranking(space, trials, num_classes)
    return summary(space, trials, rows), rows, seconds


def halving(args) -> int:
    base = GridConfig(dataset=args.dataset, **BENCH)
    if args.fake:
        trainer_for = lambda config: (functools.partial(fake_trial), 10)  # noqa: E731
    else:
        from effscale.grid.proxy import ProxyTrainer

        def trainer_for(config):
            trainer = ProxyTrainer.load(config)
            return trainer, trainer.num_classes

    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        for schedule in ("halving", "full"):
            config = base.replace(schedule=schedule)
            trainer, classes = trainer_for(config)
            results[schedule] = _search(config, Path(tmp), trainer, classes)
    (h_info, h_rows, h_sec), (f_info, f_rows, f_sec) = results["halving"], results["full"]
    h_win, f_win = h_info["winner"], f_info["winner"]
    same = h_win == f_win
    within = h_win in f_info["within_noise"]
    ratio = h_info["images_seen"] / f_info["images_seen"]
    print(f"rows: {h_info['entries']}, rungs {base.rungs}, eta {base.eta}, {base.limit_train} train images")
    print(f"training images: halving {h_info['images_seen']:,} / full {f_info['images_seen']:,} = {ratio:.2f}x "
          f"(target <= 0.40x)")
    print(f"wall time: halving {h_sec:.0f}s / full {f_sec:.0f}s = {h_sec / f_sec:.2f}x (same process, same load)")
    print(f"winner: halving {h_win} / full {f_win}: "
          + ("same winner" if same else ("halving winner within noise of the full winner" if within
                                          else "DIFFERENT (not within noise)")))
    print("full-schedule ranking (acc % +- noise):")
    for r in f_rows:
        flag = " <- halving winner" if r["candidate"] == h_win else ""
        print(f"  {r['candidate']:22s} {r['role']:16s} {100 * r['acc_mean']:5.1f} +- {100 * r['noise']:.1f}{flag}")
    return 0 if ratio <= 0.4 else 1


def overhead(args) -> int:
    run = RunDir(Path(args.run_dir))
    trials = [r for r in TrialStore(run).latest().values() if r["status"] == "COMPLETE" and r.get("timings")]
    if not trials:
        print(f"{run.path}: no complete trials with timings", file=sys.stderr)
        return 1
    total = sum(r["timings"]["total"] for r in trials)
    over = sum(r["timings"]["overhead"] for r in trials)
    tracing = sum(r["timings"].get("tracing", 0) for r in trials)
    bn = sum(r["timings"].get("recalibrate", 0) for r in trials)
    per_trial = [r["timings"]["overhead"] / r["timings"]["total"] for r in trials]
    print(f"{len(trials)} trials, {total:.0f}s of trial time")
    print(f"build + compile + teardown: {over / total:.1%} of trial time "
          f"(median per trial {statistics.median(per_trial):.1%}; target <= 15%)")
    print(f"first-step graph tracing (first step minus a steady step): {tracing / total:.1%}")
    print(f"all fixed costs (build, compile, tracing, teardown): {(over + tracing) / total:.1%}")
    print(f"BatchNorm recalibration: {bn / total:.1%}")
    by_rung = {}
    for r in trials:
        by_rung.setdefault(r["rung"], []).append(r)
    for rung, rs in sorted(by_rung.items()):
        t = sum(x["timings"]["total"] for x in rs)
        fixed = sum(x["timings"]["overhead"] + x["timings"].get("tracing", 0) for x in rs)
        print(f"  rung {rung} ({rs[0]['epochs']} epochs, {len(rs)} trials): build/compile/teardown "
              f"{sum(x['timings']['overhead'] for x in rs) / t:.1%}, with tracing {fixed / t:.1%}")
    return 0 if math.isfinite(over) and over / total <= 0.15 else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    h = sub.add_parser("halving", help="halving vs full schedule on the same candidates")
    h.add_argument("--dataset", default="synthetic")
    h.add_argument("--fake", action="store_true", help="use the fake trainer (no Keras)")
    o = sub.add_parser("overhead", help="per-trial overhead of a finished grid run")
    o.add_argument("run_dir")
    args = parser.parse_args()
    return halving(args) if args.what == "halving" else overhead(args)


if __name__ == "__main__":
    sys.exit(main())
