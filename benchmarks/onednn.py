"""TensorFlow's oneDNN kernels on and off: B0 training throughput, as a ratio from ONE run.

    python benchmarks/onednn.py                 # 2 threads, 64 px, batch 64
    python benchmarks/onednn.py --threads 1     # as each of the grid's two local workers runs
    python benchmarks/onednn.py --threads 1 --network proxy --size 48   # the grid's proxy base

TensorFlow turns oneDNN on by default only on x86 CPUs with AVX512-VNNI/AMX-class
extensions, so on an AVX2-only CPU ``effscale`` asks for it (``TF_ENABLE_ONEDNN_OPTS=1``,
effscale/backend.py). This script trains B0 (random weights, random images) in two fresh
processes, ``TF_ENABLE_ONEDNN_OPTS=0`` then ``=1``, alternating ``--pairs`` times, and
prints each one's first-fit time (graph trace included) and training img/s after it, then
on/off ratios. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
from effscale.backend import set_defaults
set_defaults()
import numpy as np, keras
from tensorflow.python.util import _pywrap_util_port
from effscale.net.arch import BASELINE
from effscale.net.keras_model import build_model
size, batch, steps, epochs = (int(a) for a in sys.argv[1:5])
keras.utils.set_random_seed(0)
if sys.argv[5] == "proxy":  # the grid's default proxy base: half-width B0, as a worker trains it
    from effscale.grid.config import GridConfig
    from effscale.grid.search import proxy_network
    network = proxy_network(GridConfig(resolution=size))
else:
    network = BASELINE
model = build_model(network, num_classes=10, image_size=size)
model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
x = np.random.default_rng(0).uniform(0, 255, (batch * steps, size, size, 3)).astype("float32")
y = np.random.default_rng(1).integers(0, 10, batch * steps)
start = time.perf_counter()
model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0)  # the trace
first = time.perf_counter() - start
start = time.perf_counter()
model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
timed = time.perf_counter() - start
print(json.dumps({"onednn": _pywrap_util_port.IsMklEnabled(), "first_fit_s": first,
                  "img_per_s": batch * steps * epochs / timed}))
"""


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "amx_tile") if f in flags]
    return f"{model}; {' '.join(wanted)}"


def one(setting: str, args) -> dict:
    env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting, TF_NUM_INTRAOP_THREADS=str(args.threads),
               TF_NUM_INTEROP_THREADS="1", OMP_NUM_THREADS=str(args.threads))
    argv = [sys.executable, "-c", CHILD, str(args.size), str(args.batch), str(args.steps), str(args.epochs), args.network]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--network", choices=("b0", "proxy"), default="b0",
                        help="B0, or the grid's proxy base (half-width B0; --size is its resolution)")
    args = parser.parse_args()
    print(f"CPU: {cpu_flags()}; {'B0' if args.network == 'b0' else 'the grid proxy base'} at {args.size} px, batch {args.batch}, {args.threads} thread(s), "
          f"{args.steps} steps x {args.epochs} epochs after a 1-step trace")
    runs: dict[str, list[dict]] = {"0": [], "1": []}
    for _ in range(args.pairs):
        for setting in ("0", "1"):
            result = one(setting, args)
            runs[setting].append(result)
            print(f"  TF_ENABLE_ONEDNN_OPTS={setting} (oneDNN {'on' if result['onednn'] else 'off'}): "
                  f"first fit {result['first_fit_s']:.1f} s, {result['img_per_s']:.1f} img/s")
    speed = {s: statistics.median(r["img_per_s"] for r in rs) for s, rs in runs.items()}
    trace = {s: statistics.median(r["first_fit_s"] for r in rs) for s, rs in runs.items()}
    ratios = [on["img_per_s"] / off["img_per_s"] for off, on in zip(runs["0"], runs["1"])]
    print(f"throughput on/off: {speed['1'] / speed['0']:.2f}x (medians; per pair "
          f"{', '.join(f'{r:.2f}' for r in ratios)}); first fit on/off: {trace['1'] / trace['0']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
