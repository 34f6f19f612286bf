"""Does creating the training variables before the first step halve a proxy trial's trace?

    python benchmarks/trace_once.py --dataset ../shared/data/cifar10-jpeg.tar.gz [--pairs 2]

Under TensorFlow without a distribution strategy, Keras 3 creates the metric (and, unless
built by hand, optimizer) variables inside the first traced training step, and a
``tf.function`` that creates variables is traced twice. effscale now creates them first
(``effscale.net.training_state``). Each measurement is one whole rung-0 trial of one grid
row (default: the paper's point), seed 0, in a fresh process with one TensorFlow thread and
oneDNN off, as a local grid worker runs it:

- ``before``: the optimizer built by hand, the metrics left to Keras (effscale until 2026-12-02);
- ``now``: everything built before the first step.

The two alternate, ``--pairs`` times. Prints each trial's phases and the ratios now/before
of the first step (the trace) and of the whole trial.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys
from effscale.grid import proxy
from effscale.grid.config import GridConfig
from effscale.grid.search import Candidate, TrialSpec
if sys.argv[1] == "before":
    proxy.create_training_variables = lambda model: model.optimizer.build(model.trainable_variables)
trainer = proxy.ProxyTrainer.load(GridConfig(dataset=sys.argv[2]))
spec = TrialSpec(Candidate(*(float(v) for v in sys.argv[3].split(","))), "grid", 0, 0, 1)
print("RESULT", json.dumps(trainer(spec)["timings"]))
"""


def trial(mode: str, dataset: str, row: str, child: str = CHILD, env: dict | None = None) -> dict:
    """Run ``child`` (which prints one ``RESULT <json>`` line) in a fresh process with one
    TensorFlow thread and oneDNN off, as a local grid worker; ``env`` adds to its environment."""
    env = os.environ | {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
                        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0")} | (env or {})
    out = subprocess.run([sys.executable, "-c", child, mode, dataset, row], env=env, cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--row", default="1.2,1.1,1.15", help="alpha,beta,gamma")
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()

    ratios: dict[str, list[float]] = {"first_step": [], "total": []}
    print(f"row {args.row}, one rung-0 trial of seed 0 per fresh process, one thread")
    for pair in range(args.pairs):
        runs = {}
        for mode in ("before", "now"):
            runs[mode] = t = trial(mode, args.dataset, args.row)
            print(f"  pair {pair + 1}, {mode:6s}: compile {t['compile']:.1f} s, first step {t['first_step']:.1f} s, "
                  f"train {t['train']:.1f} s, total {t['total']:.1f} s")
        for phase in ratios:
            ratios[phase].append(runs["now"][phase] / runs["before"][phase])
    for phase, values in ratios.items():
        print(f"{phase} now/before: median {statistics.median(values):.2f}x "
              f"(pairs {', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
