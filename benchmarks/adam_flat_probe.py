"""One flat Adam state (one m, one v for all weights) against Keras's per-weight one: the optimizer step alone.

    python benchmarks/adam_flat_probe.py [--pairs 2]

The optimizer step alone, on the proxy network of the paper's point (default grid settings,
10 classes), with fixed random gradients, in a fresh process per measurement with one
TensorFlow thread, oneDNN off and the workers' glibc heap settings, as a local grid worker
runs:

- ``pervar``: ``SharedScalarsAdam.apply`` inside a ``tf.function``: about a dozen graph
  operations per variable;
- ``flat``: ``FlatStateAdam.apply`` (what the proxy trials use): a dozen operations on one
  concatenated vector, a split and about three operations per variable.

Prints, per process, the first call (trace, graph optimisation and one run) and the median
of 50 later calls, then the flat/pervar ratios of each pair.
"""

from __future__ import annotations

import argparse
import statistics

from trace_once import trial  # this directory is on sys.path when the script runs

from effscale.grid.workers import malloc_environment

CHILD = """
import json, sys, time
import numpy as np, tensorflow as tf
from effscale.grid.config import GridConfig
from effscale.grid.proxy import build_proxy_model
from effscale.grid.search import Candidate, TrialSpec
from effscale.net.optimizers import flat_state_adam, shared_scalars_adam
mode = sys.argv[1]
spec = TrialSpec(Candidate(*(float(v) for v in sys.argv[3].split(","))), "grid", 0, 0, 1)
variables = build_proxy_model(spec, GridConfig(dataset="x"), (32, 32, 3), 10).trainable_variables
rng = np.random.default_rng(0)
grads = [tf.constant(rng.standard_normal(v.shape).astype("float32") * 1e-3) for v in variables]
opt = (shared_scalars_adam if mode == "pervar" else flat_state_adam)(1e-3)
opt.build(variables)


@tf.function
def step(gs):
    opt.apply(gs, variables)


began = time.perf_counter()
step(grads)
first = time.perf_counter() - began
later = []
for _ in range(50):
    began = time.perf_counter()
    step(grads)
    later.append(time.perf_counter() - began)
print("RESULT", json.dumps({"variables": len(variables), "first_s": first, "step_ms": 1000 * float(np.median(later))}))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--row", default="1.2,1.1,1.15", help="alpha,beta,gamma")
    parser.add_argument("--pairs", type=int, default=2)
    args = parser.parse_args()
    ratios: dict[str, list[float]] = {"first_s": [], "step_ms": []}
    for pair in range(args.pairs):
        runs = {}
        for mode in ("pervar", "flat"):
            runs[mode] = r = trial(mode, "unused", args.row, child=CHILD, env=malloc_environment())
            print(f"  pair {pair + 1}, {mode:6s}: {r['variables']} variables, first call {r['first_s']:.2f} s, "
                  f"later calls {r['step_ms']:.2f} ms")
        for key in ratios:
            ratios[key].append(runs["flat"][key] / runs["pervar"][key])
    for key, label in (("first_s", "first call"), ("step_ms", "later call")):
        values = ratios[key]
        print(f"{label} flat/pervar: median {statistics.median(values):.2f}x "
              f"(pairs {', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
