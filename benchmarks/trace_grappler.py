"""Is TensorFlow's graph optimiser (grappler) what makes a proxy trial's first step slow?
Prints the ratio of first-step times without / with grappler's meta-optimizer.

    python benchmarks/trace_grappler.py [--rounds 2]

Each measurement is a fresh process (the setting is global and fixed once TensorFlow runs):
B0 with a 10-class head at 48 px, Adam, batch 64; build + compile, then the first
``train_on_batch`` (the trace) and the median of 20 later steps.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time, statistics, numpy as np
from effscale.backend import set_defaults; set_defaults()
import tensorflow as tf
if sys.argv[1] == "off":
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
import keras
from effscale.net.keras_model import build_model
from effscale.net.scaling import published_variant, scale_network
model = build_model(scale_network(published_variant("b0")), num_classes=10, image_size=48)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).integers(0, 255, (64, 48, 48, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 10, 64)
t = time.perf_counter(); model.train_on_batch(x, y); first = time.perf_counter() - t
steps = []
for _ in range(20):
    t = time.perf_counter(); model.train_on_batch(x, y); steps.append(time.perf_counter() - t)
print(first, statistics.median(steps))
"""


def measure(mode: str) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), **__import__("os").environ}).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    ratios = []
    for r in range(args.rounds):  # alternate, so load drift hits both alike
        on, off = measure("on"), measure("off")
        ratios.append(off[0] / on[0])
        print(f"round {r + 1}: first step {on[0]:.1f}s with grappler, {off[0]:.1f}s without "
              f"(later steps {1000 * on[1]:.0f} / {1000 * off[1]:.0f} ms)")
    print(f"first step without / with grappler: median {statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}, {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
