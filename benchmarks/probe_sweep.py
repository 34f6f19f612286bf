"""Where the probe's L2 sweep stops its fits: tight against early, on one run's cached features.

    python benchmarks/probe_sweep.py RUN_DIR                 # tight sweep vs probe.SWEEP_FTOL
    python benchmarks/probe_sweep.py RUN_DIR --ftol 1e-5 1e-6

RUN_DIR is a finished ``effscale transfer --strategy linear-probe`` run (its cached
activations must still be on disk). The probe is fitted as ``effscale transfer`` fits it
(``fit_probe``, the run's feature transform and seed), first with the sweep's fits run as
tight as the refit's (scipy's default ``ftol``), then with each ``--ftol``. Printed per
setting: the fit's wall time and its ratio to the tight one, the L2 chosen, every
held-out score with its L-BFGS steps, and the validation top-1 with the paired difference
from the tight fit (bootstrap 95% interval over the validation images). One process, one
setting after another: run it on an idle machine. Pure numpy/scipy after the labels load.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe_features import load_probe_run  # noqa: E402


def main() -> None:
    from effscale.transfer.probe import SWEEP_FTOL

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--ftol", type=float, nargs="+", default=[SWEEP_FTOL],
                        help=f"the early stops to compare with the tight sweep [default: {SWEEP_FTOL:g}]")
    args = parser.parse_args()

    from effscale.export.verify import paired_difference_ci
    from effscale.transfer.probe import fit_probe, signed_sqrt

    config, train, val, data = load_probe_run(args.run_dir)
    transform = signed_sqrt if config.get("probe_features", "sqrt") == "sqrt" else (lambda x: x)
    train = transform(np.asarray(train, np.float32))
    val = transform(np.asarray(val, np.float32))
    right, tight_s = {}, None
    for ftol in [None, *args.ftol]:
        lines: list[str] = []
        start = time.perf_counter()
        probe = fit_probe(train, data.y_train, data.num_classes, seed=config["seed"], sweep_ftol=ftol,
                          log=lines.append)
        seconds = time.perf_counter() - start
        tight_s = tight_s or seconds
        right[ftol] = probe.predict_proba(val).argmax(axis=1) == data.y_val
        label = "tight" if ftol is None else f"ftol {ftol:g}"
        steps = [line.split("(")[1].split(" ")[0] for line in lines]
        sweep = ", ".join(f"{l2:g}: {100 * acc:.2f}% ({n})" for (l2, acc), n in zip(probe.holdout.items(), steps))
        line = (f"{label}: fit {seconds:.1f} s ({seconds / tight_s:.2f}x the tight one), L2 {probe.l2:g}, "
                f"refit {probe.iterations} steps, validation top-1 {100 * right[ftol].mean():.2f}%")
        if ftol is not None:
            low, high = paired_difference_ci(right[ftol], right[None])
            line += (f", {100 * (right[ftol].mean() - right[None].mean()):+.2f} points from tight "
                     f"[{100 * low:+.2f}, {100 * high:+.2f}]")
        print(f"{line}\n  held-out top-1 by L2 (L-BFGS steps): {sweep}", flush=True)


if __name__ == "__main__":
    main()
