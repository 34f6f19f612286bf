"""Wall time and peak resident memory of a command and all its descendants.

    python benchmarks/tree_rss.py python -m effscale grid --budget 2 --dataset ../shared/data/cifar10-jpeg.tar.gz
    EFFSCALE_RSS_SERIES=rss.txt python benchmarks/tree_rss.py ...   # also a line every 10 s

Samples /proc every 0.5 s (``grid_perf.TreeRSS``) and prints one line at the end: the exit
status, the wall time, the peak of the summed RSS, the peak of the summed PSS (shared
library pages counted once, not once per process) and the four largest per-process peaks.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grid_perf import TreeRSS  # noqa: E402


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    start = time.perf_counter()
    path = os.environ.get("EFFSCALE_RSS_SERIES")
    with (open(path, "w", encoding="utf-8") if path else contextlib.nullcontext()) as series, \
            TreeRSS(every=0.5, series=series) as rss:
        code = subprocess.call(sys.argv[1:])
    largest = sorted(rss.peak_by_pid.values(), reverse=True)[:4]
    print(f"MEASURE rc={code} wall={time.perf_counter() - start:.1f}s peak_tree={rss.peak_total / 1e9:.2f}GB "
          f"peak_pss={rss.peak_pss / 1e9:.2f}GB "
          f"largest={[round(v / 1e9, 2) for v in largest]} procs={len(rss.peak_by_pid)}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
