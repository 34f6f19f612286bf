"""How much of a proxy trial's first step (its graph trace) is Keras's per-variable Adam scalars?

    python benchmarks/trace_optimizer.py --dataset ../shared/data/cifar10-jpeg.tar.gz [--pairs 2] [--row 1.2,1.1,1.15]

Keras 3's ``Adam.update_step`` rebuilds the learning rate, step count, beta powers and
bias correction for every variable; ``effscale.net.optimizers.SharedScalarsAdam`` builds
them once per step and otherwise does Keras's arithmetic. Each measurement is one whole
rung-0 trial of one grid row, seed 0, in a fresh process with one TensorFlow thread and
oneDNN off, as a local grid worker runs it:

- ``keras``: ``keras.optimizers.Adam`` (effscale until 2026-12-05);
- ``shared``: ``SharedScalarsAdam`` (2026-12-05);
- ``flat``: ``FlatStateAdam``, the shared scalars and one flat momentum and velocity (now).

``--modes A,B`` picks the two (default ``keras,shared``); they alternate, ``--pairs`` times.
``--worker-heap`` adds the workers' glibc heap settings (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``; workers have had them since 2026-12-05) to the one malloc arena.
Prints each trial's phases, whether both scored the same predictions (they must: the
updates are equal to the bit), and the ratios B/A of the first step and of the whole trial.
"""

from __future__ import annotations

import argparse
import os
import statistics

import trace_once  # this directory is on sys.path when the script runs

CHILD = """
import hashlib, json, sys
from effscale.grid import proxy
from effscale.grid.config import GridConfig
from effscale.grid.search import Candidate, TrialSpec
if sys.argv[1] == "keras":
    import keras
    proxy.flat_state_adam = lambda rate: keras.optimizers.Adam(rate)
elif sys.argv[1] == "shared":
    from effscale.net.optimizers import shared_scalars_adam
    proxy.flat_state_adam = shared_scalars_adam
trainer = proxy.ProxyTrainer.load(GridConfig(dataset=sys.argv[2]))
spec = TrialSpec(Candidate(*(float(v) for v in sys.argv[3].split(","))), "grid", 0, 0, 1)
out = trainer(spec)
digest = hashlib.sha256(out["predictions"].tobytes()).hexdigest()[:12]
print("RESULT", json.dumps({"timings": out["timings"], "val_accuracy": out["metrics"]["val_accuracy"],
                            "predictions": digest}))
"""


def trial(mode: str, dataset: str, row: str, worker_heap: bool = False) -> dict:
    # one malloc arena, as the workers had it when keras/shared was measured; or all their settings
    env = {"MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "1")}
    if worker_heap:
        from effscale.grid.workers import malloc_environment

        env = malloc_environment()
    return trace_once.trial(mode, dataset, row, child=CHILD, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--row", default="1.2,1.1,1.15", help="alpha,beta,gamma")
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--modes", default="keras,shared", help="A,B from keras, shared, flat")
    parser.add_argument("--worker-heap", action="store_true", help="the workers' glibc heap settings too")
    args = parser.parse_args()
    before, after = args.modes.split(",")
    if {before, after} - {"keras", "shared", "flat"} or before == after:
        parser.error("--modes takes two different names from keras, shared, flat")

    ratios: dict[str, list[float]] = {"first_step": [], "total": []}
    same = True
    print(f"row {args.row}, one rung-0 trial of seed 0 per fresh process, one thread")
    for pair in range(args.pairs):
        runs = {}
        for mode in (before, after):
            runs[mode] = r = trial(mode, args.dataset, args.row, args.worker_heap)
            t = r["timings"]
            print(f"  pair {pair + 1}, {mode:6s}: compile {t['compile']:.1f} s, first step {t['first_step']:.1f} s, "
                  f"train {t['train']:.1f} s, total {t['total']:.1f} s; val acc {r['val_accuracy']:.4f}, "
                  f"predictions {r['predictions']}")
        same &= runs[before]["predictions"] == runs[after]["predictions"]
        for phase in ratios:
            ratios[phase].append(runs[after]["timings"][phase] / runs[before]["timings"][phase])
    print(f"same predictions in every pair: {'yes' if same else 'NO'}")
    for phase, values in ratios.items():
        print(f"{phase} {after}/{before}: median {statistics.median(values):.2f}x "
              f"(pairs {', '.join(f'{v:.2f}' for v in values)})")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
