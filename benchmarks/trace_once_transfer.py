"""Transfer's side of benchmarks/trace_once.py: traces of the training step, and the epoch's time.

    python benchmarks/trace_once_transfer.py

Runs ``effscale transfer --preset smoke --epochs 1 --warmup-epochs 0`` twice in fresh
processes: ``before`` with ``create_training_variables`` switched off in transfer's
``compile_model`` (Keras builds the optimizer inside the first traced step), and ``now``.
Counts the calls to ``train_step`` (one per trace) and prints the epoch's training time from
the run's log, with the ratio now/before.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys
from effscale.backend import set_defaults; set_defaults()
from keras.src.backend.tensorflow.trainer import TensorFlowTrainer
traces = []
train_step = TensorFlowTrainer.train_step
def counted(self, data):
    traces.append(1)
    return train_step(self, data)
TensorFlowTrainer.train_step = counted
if sys.argv[1] == "before":
    import effscale.transfer.strategies as strategies
    strategies.create_training_variables = lambda model: None
from effscale.cli import cli
try:
    cli.main(["transfer", "--preset", "smoke", "--epochs", "1", "--warmup-epochs", "0", "--no-progress",
              "--run-dir", sys.argv[2] + "/run", "--cache-dir", sys.argv[2] + "/cache"], prog_name="effscale")
except SystemExit:
    pass
print("TRACES", len(traces))
"""


def run(mode: str) -> tuple[int, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, mode, tmp], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
        log = (Path(tmp) / "run" / "effscale.log").read_text()
    traces = int(re.search(r"TRACES (\d+)", out).group(1))
    return traces, float(re.search(r"'train_time_s': ([0-9.]+)", log).group(1))


def main() -> int:
    results = {mode: run(mode) for mode in ("before", "now")}
    for mode, (traces, seconds) in results.items():
        print(f"  {mode:6s}: train_step traced {traces}x, epoch trained in {seconds:.1f} s")
    print(f"epoch now/before: {results['now'][1] / results['before'][1]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
