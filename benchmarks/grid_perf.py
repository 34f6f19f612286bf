"""Performance of ``effscale grid``, all from ONE run of this script. Prints ratios.

    nice -n 10 python benchmarks/grid_perf.py --dataset ../shared/data/cifar10-jpeg.tar.gz
    python benchmarks/grid_perf.py --dataset ../shared/data/cifar10-jpeg.tar.gz --trials default  # ~30 min

``--trials reduced`` (the default) trains toy trials: 1,000 images at 32 px, a second or two
of training against a graph trace of several seconds, so both schedules are mostly tracing.
``--trials default`` runs the same 6 rows with the proxy task and schedule of ``effscale grid``'s
defaults (4,000 images at 48 px, base width 0.5, 2 then 6 epochs, 3 seeds at the last rung): the
trials a user's search runs, at a third of the default grid's rows.

In one process, one after the other, under the same machine load:

1. **seed repeats**: three seeds of the paper's point, in this process: the first pays the
   graph trace, the repeats reuse the compiled model. Prints repeat first step / first
   seed's first step (target <= 0.10).
2. **halving** then **full schedule** on the same reduced grid (``BENCH``: 6 rows, 3 rungs,
   eta 3, 2 seeds at the last rung), each a whole ``effscale.grid.run`` with the default
   local executor (two worker processes on a 2-core machine). Prints halving wall time /
   full wall time (target <= 0.6), the training images of each, both choices and tie sets
   (target: same choice, or overlapping tie sets).
3. **non-training share** over each search: every phase except the training steps after
   the first (target <= 0.15), and the phases' shares.
4. **peak RSS** of this process plus its worker processes, sampled every 0.2 s (target
   <= 4 GB), and the peak of each worker process, which must not grow with trials.

``--fake`` runs the same bookkeeping with the fake trainer (seconds, no Keras).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from effscale.grid.config import GridConfig
from effscale.grid.search import PAPER_POINT, Candidate, TrialSpec
from effscale.grid.trials import TIMING_PHASES, FakeTrainer, TrialStore, timing_summary
from effscale.runs import RunDir

# 6 rows (2 grid points + the 4 reference rows); halving trains 6x1 + 2x(3-1) epochs, then
# the finalist's seed 0 continues for 6 more and seed 1 trains all 9: 25 epochs, against
# 6 rows x 2 seeds x 9 epochs = 108 for the full schedule.
BENCH = dict(step=0.25, tolerance=0.2, rungs=3, eta=3, epochs=1, seeds=2, early_seeds=1, limit_train=1000,
             limit_val=500, base_width=0.25, base_depth=0.5, resolution=32, batch_size=64,
             bn_recalibration_batches=4)
# The default search's trials (GridConfig's defaults) on the same 6 rows.
DEFAULT_TRIALS = dict(step=0.25, tolerance=0.2)


class TreeRSS:
    """Peak resident memory of this process and its descendants, from /proc.

    ``peak_total`` sums each process's RSS, so pages that several processes share (the
    TensorFlow libraries every worker maps: about 0.46 GB each) count once per process.
    ``peak_pss`` sums their proportional set sizes instead, where a page shared by n
    processes counts 1/n in each: what the tree occupies in physical memory.
    """

    def __init__(self, every: float = 0.2, series=None, series_every: float = 10.0):
        self.every = every
        self.peak_total = 0
        self.peak_pss = 0
        # optional: a line "seconds summed_rss_mb summed_pss_mb processes" every series_every s
        self.series, self.series_every = series, series_every
        self._started = self._next_line = 0.0  # set when sampling starts
        self.peak_by_pid: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _tree() -> dict[int, int]:
        parents, rss = {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                parents[int(entry)] = int(fields[1])
                rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, ValueError, IndexError):
                continue
        mine, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            pid = frontier.pop()
            children = [p for p, parent in parents.items() if parent == pid and p not in mine]
            mine.update(children)
            frontier.extend(children)
        return {p: rss.get(p, 0) for p in mine}

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def _loop(self) -> None:
        self._started = self._next_line = time.perf_counter()
        while not self._stop.is_set():
            tree = self._tree()
            rss, pss = sum(tree.values()), sum(self._pss(pid) for pid in tree)
            self.peak_total = max(self.peak_total, rss)
            self.peak_pss = max(self.peak_pss, pss)
            now = time.perf_counter()
            if self.series is not None and now >= self._next_line:
                self.series.write(f"{now - self._started:.0f} {rss / 2**20:.0f} {pss / 2**20:.0f} {len(tree)}\n")
                self.series.flush()
                self._next_line = now + self.series_every
            for pid, value in tree.items():
                self.peak_by_pid[pid] = max(self.peak_by_pid.get(pid, 0), value)
            time.sleep(self.every)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def seed_repeats(config: GridConfig, dataset) -> float:
    from effscale.grid.proxy import ProxyTrainer

    trainer = ProxyTrainer(config, dataset)
    firsts = []
    for seed in range(3):
        result = trainer(TrialSpec(Candidate(*PAPER_POINT), "paper", seed, 0, 1))
        firsts.append(result["timing"]["first_step"])
        print(f"  seed {seed}: first step {firsts[-1]:.2f}s, build {result['timing']['build']:.2f}s, "
              f"compile {result['timing']['compile']:.2f}s, model reused: {result['metrics']['model_reused']}")
    ratio = max(firsts[1:]) / firsts[0]
    print(f"seed repeats: repeat first step / first seed's = {ratio:.3f} (worst repeat; target <= 0.10)")
    return ratio


def search(config: GridConfig, root: Path, trainer) -> tuple[object, float]:
    import effscale.grid

    began = time.perf_counter()
    result = effscale.grid.run(config, root / config.schedule, run_trial=trainer)
    return result, time.perf_counter() - began


def describe_timing(name: str, run_dir: Path) -> float | None:
    trials = TrialStore(RunDir(run_dir)).latest()
    summary = timing_summary(trials)
    if summary is None:
        print(f"{name}: no trial recorded its timing")
        return None
    shares = ", ".join(f"{p} {summary['phases'][p] / summary['seconds']:.1%}" for p in TIMING_PHASES)
    print(f"{name}: non-training share {summary['non_training_share']:.1%} of {summary['seconds']:.0f}s trial time "
          f"over {summary['trials']} trials (target <= 15%): {shares}")
    reused = [r["metrics"]["timing"]["first_step"] for r in trials.values()
              if r["status"] == "COMPLETE" and r["metrics"].get("model_reused")]
    traced = [r["metrics"]["timing"]["first_step"] for r in trials.values()
              if r["status"] == "COMPLETE" and r["metrics"].get("model_reused") is False]
    if reused and traced:
        print(f"  {len(reused)} trials reused a compiled model: median first step {statistics.median(reused):.2f}s "
              f"vs {statistics.median(traced):.2f}s for the {len(traced)} that traced "
              f"({statistics.median(reused) / statistics.median(traced):.3f}x)")
    return summary["non_training_share"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--trials", choices=("reduced", "default"), default="reduced",
                        help="toy trials (minutes) or the default search's proxy task (about 30 min)")
    parser.add_argument("--limit-train", type=int, help="training images (default: the --trials setting's)")
    parser.add_argument("--fake", action="store_true", help="the fake trainer: checks the bookkeeping in seconds")
    parser.add_argument("--keep", type=Path, help="keep the two run dirs here")
    args = parser.parse_args()
    settings = BENCH if args.trials == "reduced" else DEFAULT_TRIALS
    if args.limit_train is not None:
        settings = settings | {"limit_train": args.limit_train}
    base = GridConfig(dataset=args.dataset, **settings)
    print(f"machine: {os.cpu_count()} cores, shared with other jobs; load average {os.getloadavg()[0]:.1f}")
    print(f"grid: {base.to_dict()}")
    dataset = None
    if not args.fake:
        from effscale.data.datasets import load_dataset

        dataset = load_dataset(base.dataset, limit_train=base.limit_train, limit_val=base.limit_val,
                               seed=base.data_seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="grid-perf-"))
    with TreeRSS() as rss:
        repeat = None if args.fake else seed_repeats(base, dataset)
        results = {}
        for schedule in ("halving", "full"):
            config = base.replace(schedule=schedule)
            if args.fake:
                trainer = FakeTrainer(sleep=0.05, last_rung=config.n_rungs - 1)
            else:
                from effscale.grid.proxy import ProxyTrainer

                trainer = ProxyTrainer(config, dataset)
            results[schedule] = search(config, root, trainer)
            result, seconds = results[schedule]
            print(f"{schedule}: {seconds:.0f}s, {result.ran} trials, {result.summary['images_seen']:,} images "
                  f"trained; chose {result.verdict.get('chosen')}; tie set {result.verdict.get('tie_set')}")
    (h, h_sec), (f, f_sec) = results["halving"], results["full"]
    overlap = set(h.verdict.get("tie_set") or []) & set(f.verdict.get("tie_set") or [])
    print(f"halving / full wall time = {h_sec / f_sec:.2f} (target <= 0.6); training images "
          f"{h.summary['images_seen'] / f.summary['images_seen']:.2f}")
    print(f"choice: halving {h.verdict.get('chosen')}, full {f.verdict.get('chosen')}: "
          + ("same" if h.verdict.get("chosen") == f.verdict.get("chosen") else "different")
          + f"; tie sets overlap in {sorted(overlap) or 'nothing'}")
    print(f"full-schedule sentence: {f.verdict.get('sentence')}")
    print(f"halving sentence: {h.verdict.get('sentence')}")
    shares = [describe_timing(s, results[s][0].run_dir) for s in ("halving", "full")]
    workers = sorted(v for pid, v in rss.peak_by_pid.items() if pid != os.getpid())
    print(f"peak RSS: {rss.peak_total / 2**30:.2f} GB for this process and its workers together (target <= 4 GB); "
          f"summed PSS {rss.peak_pss / 2**30:.2f} GB (shared library pages once); "
          f"this process {rss.peak_by_pid.get(os.getpid(), 0) / 2**30:.2f} GB; "
          f"{len(workers)} worker processes, peaks {', '.join(f'{w / 2**30:.2f}' for w in workers)} GB")
    print(f"run dirs: {root}")
    ok = h_sec / f_sec <= 0.6 and all(s is not None and s <= 0.15 for s in shares) and (repeat is None or repeat <= 0.1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
