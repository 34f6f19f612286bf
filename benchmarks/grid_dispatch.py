"""Replays a finished grid run's measured trial times in other dispatch orders. Prints makespans.

    python benchmarks/grid_dispatch.py RUN_DIR [--workers 2]

For each rung of the search (and the scale-up check under RUN_DIR/confirm, if there is one)
it prints how busy the workers really were (the trials' seconds over workers x the rung's
span, from trials.jsonl's timestamps), then the span that greedy dispatch to ``--workers``
workers gives with the measured trial times in three orders: as the run's log has them, by
descending multiply-adds (``search.longest_first``, what ``run_search`` does for the search's
rungs), and by descending activations (Dollar et al.), beside the bound (all seconds /
workers). A candidate's trials stay together, as the worker pool keeps them; the check
keeps its seed-by-seed blocks. It also prints how well each cost ranks the trial times
(Pearson correlation). Pure Python and numpy: no training, seconds to run.
"""

from __future__ import annotations

import argparse
import datetime as dt
from collections import OrderedDict
from pathlib import Path

import numpy as np

from effscale.grid.run import stored_config
from effscale.grid.search import Candidate, proxy_network
from effscale.grid.stats import load_labels
from effscale.grid.trials import TrialStatus, TrialStore
from effscale.net.cost import network_activations
from effscale.runs import RunDir


def _complete(run: RunDir) -> list[dict]:
    return [r for r in TrialStore(run).latest().values() if r["status"] == TrialStatus.COMPLETE]


def _span(records: list[dict]) -> float:
    stamp = lambda text: dt.datetime.fromisoformat(text).timestamp()  # noqa: E731
    return max(stamp(r["finished_at"]) for r in records) - min(stamp(r["started_at"]) for r in records)


def _greedy(seconds: list[float], workers: int) -> float:
    """Each job to the worker that frees first, in the order given; the last finish."""
    free = [0.0] * workers
    for s in seconds:
        free[free.index(min(free))] += s
    return max(free)


def replay(name: str, records: list[dict], cost: dict, workers: int, seed_blocks: bool) -> None:
    groups: OrderedDict[tuple, list[dict]] = OrderedDict()  # a candidate's trials, or one seed's
    for r in sorted(records, key=lambda r: r["started_at"]):
        key = (r["seed"], r["candidate"]["id"]) if seed_blocks else (0, r["candidate"]["id"])
        groups.setdefault(key, []).append(r)
    total = sum(r["seconds"] for r in records)

    def span(order_key) -> float:
        keys = list(groups)
        if order_key is not None:
            keys.sort(key=lambda k: (k[0], -cost[k[1]][order_key]))
        return _greedy([sum(r["seconds"] for r in groups[k]) for k in keys], workers)

    seconds = np.array([r["seconds"] for r in records])
    corr = {key: float(np.corrcoef([cost[r["candidate"]["id"]][key] for r in records], seconds)[0, 1])
            if len(records) > 2 else float("nan") for key in ("macs", "acts")}
    print(f"{name}: {len(records)} trials, {total:.0f} s; measured span {_span(records):.0f} s, workers busy "
          f"{total / workers / _span(records):.1%}")
    print(f"  replayed on {workers} workers: log order {span(None):.0f} s, by MACs {span('macs'):.0f} s, "
          f"by activations {span('acts'):.0f} s, bound {total / workers:.0f} s")
    print(f"  correlation with trial seconds: MACs {corr['macs']:.2f}, activations {corr['acts']:.2f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    config = stored_config(args.run_dir)
    run, check = RunDir(args.run_dir), RunDir(args.run_dir / "confirm")
    batches = [(f"rung {rung}", [r for r in _complete(run) if r["rung"] == rung], False)
               for rung in range(config.n_rungs)]
    if check.path.joinpath("trials.jsonl").is_file():
        batches.append(("scale-up check", _complete(check), True))
    labels = load_labels(run)
    num_classes = int(labels.max()) + 1 if labels is not None else 100
    cost = {}
    for _, records, _ in batches:
        for r in records:
            cid = r["candidate"]["id"]
            if cid not in cost:  # the MACs the search dispatched by: those its trial records carry
                network = proxy_network(config, Candidate.from_dict(r["candidate"]))
                cost[cid] = {"macs": r["cost"]["macs"], "acts": network_activations(network, num_classes).acts}
    for name, records, seed_blocks in batches:
        if records:
            replay(name, records, cost, args.workers, seed_blocks)


if __name__ == "__main__":
    main()
