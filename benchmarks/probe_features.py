"""Square-root against raw features for the linear probe, paired on one run's cached features.

    python benchmarks/probe_features.py RUN_DIR

RUN_DIR is a finished ``effscale transfer --strategy linear-probe`` run: its
``checkpoints/state.json`` names the cached activations (train and validation, every view),
its ``manifest.json`` the dataset, from which the labels are loaded again. Both probes are
fitted exactly as ``effscale transfer`` fits them (``fit_probe``: the L2 sweep on the same
held-out 10% of the training images, then the refit), one on the raw pooled features and
one on their signed square root (``probe_features`` "raw" and "sqrt"). Printed: each
probe's held-out sweep and validation top-1, and the paired difference with a bootstrap 95%
interval over the validation images (``effscale.export.verify.paired_difference_ci``, as
``effscale export --verify`` reports it), since both are scored on the same images. Pure numpy/scipy after the labels are loaded; no Keras model is built.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_probe_run(run_dir: Path):
    """A finished probe run's config, cached (train, val) activations (memory-mapped) and
    its dataset, loaded again for the labels."""
    from effscale.data.datasets import load_dataset

    config = json.loads((run_dir / "manifest.json").read_text())["config"]
    extra = json.loads((run_dir / "checkpoints" / "state.json").read_text())["extra"]
    train = np.load(Path(extra["activations_train"]) / "activations.npy", mmap_mode="r")
    val = np.load(Path(extra["activations_val"]) / "activations.npy", mmap_mode="r")
    data = load_dataset(config["dataset"], data_dir=config["data_dir"], cache_dir=config["cache_dir"],
                        limit_train=config["limit_train"], limit_val=config["limit_val"], seed=config["seed"])
    return config, train, val, data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args()

    from effscale.export.verify import paired_difference_ci
    from effscale.transfer.probe import fit_probe, signed_sqrt

    config, train, val, data = load_probe_run(args.run_dir)
    classes = data.num_classes
    right = {}
    for name, transform in (("raw", lambda x: x), ("sqrt", signed_sqrt)):
        probe = fit_probe(transform(np.asarray(train, np.float32)), data.y_train, classes, seed=config["seed"])
        right[name] = probe.predict_proba(transform(np.asarray(val, np.float32))).argmax(axis=1) == data.y_val
        sweep = ", ".join(f"{l2:g}: {100 * acc:.2f}" for l2, acc in probe.holdout.items())
        print(f"{name}: validation top-1 {100 * right[name].mean():.2f}%, L2 {probe.l2:g} "
              f"(held-out top-1 by L2: {sweep})", flush=True)
    mean = right["sqrt"].mean() - right["raw"].mean()
    low, high = paired_difference_ci(right["sqrt"], right["raw"])
    print(f"sqrt - raw: {100 * mean:+.2f} points, paired bootstrap 95% CI [{100 * low:+.2f}, {100 * high:+.2f}] "
          f"over {len(data.y_val):,} images; only sqrt right {int((right['sqrt'] & ~right['raw']).sum())}, "
          f"only raw right {int((right['raw'] & ~right['sqrt']).sum())}")


if __name__ == "__main__":
    main()
