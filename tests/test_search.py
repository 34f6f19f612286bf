"""The phi=1 candidate grid, reference rows, measured cost and next_candidates (halving from the log)."""

from __future__ import annotations

import itertools
import math

import pytest

from effscale.errors import ConfigError
from effscale.grid.config import GridConfig, preset
from effscale.grid.search import (
    Candidate,
    SearchSpace,
    candidate_cost,
    TrialSpec,
    candidate_grid,
    longest_first,
    next_candidates,
    proxy_network,
    reference_rows,
)

# Expected values, worked out by hand (not by the code under test).
PAPER_FACTOR = 1.2 * 1.1**2 * 1.15**2  # 1.920...
IDS = [((1.2, 1.1, 1.15), "a1.20-b1.10-g1.15"), ((2.0, 1.0, 1.0), "a2.00-b1.00-g1.00"),
       ((1.0, math.sqrt(2), 1.0), "a1.00-b1.4142-g1.00"), ((1.25, 1.05, 1.0), "a1.25-b1.05-g1.00")]


@pytest.mark.parametrize("coeffs, expected", IDS)
def test_candidate_id_is_readable(coeffs, expected):
    assert Candidate(*coeffs).id == expected


def _brute_force(step_hundredths: int, tol: float, budget: float, hi=(200, 150, 150)) -> set[str]:
    """Integer hundredths, so no float stepping: every grid point within tol of budget."""
    axes = [range(100, h + 1, step_hundredths) for h in hi]
    keep = set()
    for a, b, g in itertools.product(*axes):
        if abs((a / 100) * (b / 100) ** 2 * (g / 100) ** 2 - budget) <= tol + 1e-9:
            keep.add(f"a{a / 100:.2f}-b{b / 100:.2f}-g{g / 100:.2f}")
    return keep


@pytest.mark.parametrize("step, tol, budget", [(0.1, 0.08, 2.0), (0.05, 0.03, 2.0), (0.05, 0.1, 1.5)])
def test_grid_matches_brute_force(step, tol, budget):
    config = GridConfig(step=step, tolerance=tol, budget=budget)
    got = {c.id for c in candidate_grid(config)}
    assert got == _brute_force(round(step * 100), tol, budget)
    assert all(abs(c.flops_factor - budget) <= tol + 1e-9 for c in candidate_grid(config))


def test_paper_point_is_on_the_fine_grid():
    ids = {c.id for c in candidate_grid(GridConfig(step=0.05, tolerance=0.1))}
    assert "a1.20-b1.10-g1.15" in ids  # |1.920 - 2| = 0.080 <= 0.1
    assert "a1.20-b1.10-g1.15" not in {c.id for c in candidate_grid(GridConfig(step=0.05, tolerance=0.05))}
    assert abs(PAPER_FACTOR - 1.92027) < 1e-4


def test_reference_rows_reach_the_budget():
    rows = {r.role: r.candidate for r in reference_rows(3.0)}
    assert set(rows) == {"paper", "depth-only", "width-only", "resolution-only"}
    assert (rows["paper"].alpha, rows["paper"].beta, rows["paper"].gamma) == (1.2, 1.1, 1.15)
    for role in ("depth-only", "width-only", "resolution-only"):
        assert rows[role].flops_factor == pytest.approx(3.0)
    assert (rows["depth-only"].beta, rows["depth-only"].gamma) == (1.0, 1.0)
    assert (rows["width-only"].alpha, rows["width-only"].gamma) == (1.0, 1.0)


def test_entries_always_hold_reference_rows_once():
    space = SearchSpace.from_config(GridConfig())  # step 0.1: (2, 1, 1) is a grid point
    roles = [e.role for e in space.entries]
    assert roles.count("paper") == roles.count("depth-only") == 1
    depth = next(e for e in space.entries if e.role == "depth-only")
    assert depth.in_grid and depth.id == "a2.00-b1.00-g1.00"
    assert len({e.id for e in space.entries}) == len(space.entries)


@pytest.mark.parametrize("changes, message", [
    ({"budget": 1.0}, "--budget must be > 1"),
    ({"budget": 0.5}, "--budget must be > 1"),
    ({"step": 0.0}, "--step must be > 0"),
    ({"step": -0.1}, "--step must be > 0"),
    ({"tolerance": 0.001, "alpha_range": (1.0, 1.5)}, "no (alpha, beta, gamma) on the grid"),
    ({"alpha_range": (0.5, 2.0)}, "--alpha range"),
])
def test_bad_settings_say_what_to_do(changes, message):
    if "tolerance" in changes:  # really no point that close to 2 with alpha <= 1.5
        assert _brute_force(10, 0.001, 2.0, hi=(150, 150, 150)) == set()
    with pytest.raises(ConfigError) as info:
        candidate_grid(GridConfig(**changes))
    assert message in str(info.value)


def test_measured_cost_differs_from_formula_but_is_exact():
    config = GridConfig()
    base = candidate_cost(config, Candidate(1.0, 1.0, 1.0), 10)
    assert (base.macs_ratio, base.params_ratio) == (1.0, 1.0)
    # depth-only x2: the repeats of B0 (1,2,2,3,3,4,1) all double exactly -> 32 blocks
    depth = candidate_cost(config, Candidate(2.0, 1.0, 1.0), 10)
    assert depth.blocks == 32 and base.blocks == 16
    # resolution only: same params, 48 px -> round(48 * 1.15) = 55 px
    res = candidate_cost(config, Candidate(1.0, 1.0, 1.15), 10)
    assert res.params == base.params and res.resolution == 55 and res.macs > base.macs


def test_proxy_network_scales_the_proxy_base():
    config = GridConfig(base_width=0.5, base_depth=1.0, resolution=48)
    base = proxy_network(config)
    assert base.stem_filters == 16 and base.head_filters == 640  # 32 and 1280 halved
    scaled = proxy_network(config, Candidate(1.2, 1.1, 1.15))
    assert scaled.resolution == 55 and scaled.total_blocks > base.total_blocks


def _complete(spec, acc):
    return {"trial_id": spec.trial_id, "candidate": spec.candidate.to_dict(), "role": spec.role,
            "seed": spec.seed, "rung": spec.rung, "epochs": spec.epochs, "status": "COMPLETE",
            "metrics": {"val_accuracy": acc}}


def test_next_candidates_halving_from_the_log_only():
    config = GridConfig(seeds=2, early_seeds=2, eta=3, rungs=3, epochs=1)
    space = SearchSpace.from_config(config)
    n = len(space.entries)
    first = next_candidates(space, {})
    assert len(first) == 2 * n and {s.rung for s in first} == {0} and {s.epochs for s in first} == {1}
    # finish rung 0 with a known score: accuracy grows with the index of the entry
    order = {e.id: i for i, e in enumerate(space.entries)}
    log = {s.trial_id: _complete(s, 0.1 + 0.01 * order[s.candidate.id]) for s in first}
    second = next_candidates(space, log)
    keep = math.ceil(n / 3)
    assert len(second) == 2 * keep and {s.epochs for s in second} == {3}
    assert {s.candidate.id for s in second} == {e.id for e in space.entries[-keep:]}
    # a RUNNING trial (crash) is run again; a FAILED one is not, unless retried
    log |= {s.trial_id: _complete(s, 0.5) for s in second}
    third = next_candidates(space, log)
    assert len(third) == 2 * math.ceil(n / 9) and {s.epochs for s in third} == {9}
    crashed, failed = third[0], third[1]
    log[crashed.trial_id] = dict(_complete(crashed, 0), status="RUNNING")
    log[failed.trial_id] = dict(_complete(failed, 0), status="FAILED")
    remaining = next_candidates(space, log)
    assert crashed in remaining and failed not in remaining
    assert failed in next_candidates(space, log, retry={failed.trial_id})
    log |= {s.trial_id: _complete(s, 0.6) for s in third}
    assert next_candidates(space, log) == []


def test_full_schedule_trains_everyone_the_longest():
    config = GridConfig(schedule="full", eta=3, rungs=3, epochs=1, seeds=1)
    space = SearchSpace.from_config(config)
    specs = next_candidates(space, {})
    assert len(specs) == len(space.entries) and {s.epochs for s in specs} == {9}
    assert next_candidates(space, {s.trial_id: _complete(s, 0.3) for s in specs}) == []
    assert space.planned_trials() == len(space.entries)


def test_halving_plans_under_half_the_images_of_full():
    # the default: 18 rows x 2 epochs, then 6 finalists x 3 seeds x 6 epochs = 144 row-epochs
    # against 18 x 3 x 6 = 324 (before a promoted seed continues instead of starting again)
    halving = SearchSpace.from_config(GridConfig())
    n, cfg = len(halving.entries), halving.config
    images = sum(halving.survivors(n, r) * len(halving.seeds(r)) * cfg.rung_epochs(r)
                 for r in range(cfg.rungs)) * cfg.limit_train
    assert images <= 0.45 * halving.images_full_schedule()


def test_smoke_preset_is_small():
    space = SearchSpace.from_config(preset("smoke"))
    assert 4 <= len(space.entries) <= 10 and space.planned_trials() <= 12


def test_seeds_run_at_the_last_rung_only_unless_asked():
    space = SearchSpace.from_config(GridConfig(seeds=3, eta=3, rungs=3, epochs=1))
    n = len(space.entries)  # 18 rows: 18, then 6, then 2 finalists
    first = next_candidates(space, {})
    assert len(first) == n and {s.seed for s in first} == {0}
    log = {s.trial_id: _complete(s, 0.3) for s in first}
    second = next_candidates(space, log)
    assert len(second) == 6 and {s.seed for s in second} == {0}
    log |= {s.trial_id: _complete(s, 0.4) for s in second}
    third = next_candidates(space, log)
    assert len(third) == 2 * 3 and {s.seed for s in third} == {0, 1, 2} and {s.epochs for s in third} == {9}
    assert space.planned_trials() == 18 + 6 + 6
    asked = SearchSpace.from_config(GridConfig(seeds=3, early_seeds=2))
    assert asked.planned_trials() == 2 * 18 + 2 * 6 + 3 * 2


def test_full_schedule_runs_every_seed():
    space = SearchSpace.from_config(GridConfig(schedule="full", seeds=3))
    assert len(next_candidates(space, {})) == 3 * len(space.entries)


def test_candidate_is_the_scaling_coefficients_type():
    from effscale.net.scaling import ScalingCoefficients

    point = Candidate(1.2, 1.1, 1.15)
    assert isinstance(point, ScalingCoefficients)
    assert point.flops_factor == pytest.approx(PAPER_FACTOR)


def test_a_candidate_id_reads_back_as_the_same_candidate():
    space = SearchSpace.from_config(GridConfig())
    for entry in space.entries:  # grid points and reference rows (a1.00-b1.4142-g1.00)
        read = Candidate.from_id(entry.candidate.id)
        assert read.id == entry.candidate.id
        # an id keeps 4 decimals: sqrt(2) comes back as 1.4142
        for axis in ("alpha", "beta", "gamma"):
            assert getattr(read, axis) == pytest.approx(getattr(entry.candidate, axis), abs=5e-5)
    for text in ("a1.00-b1.10-g1.30-s0-r1", "b1.00-a1.10-g1.30", "anan-b1.00-g1.00", "a1e3-b1-g1", "", "chosen"):
        assert Candidate.from_id(text) is None


def _specs(names_seeds, rung=0):
    return [TrialSpec(Candidate.from_id(name), "grid", seed, rung, 2) for name, seed in names_seeds]


# Multiply-adds chosen by hand, not computed: what a cost model might say of three rows.
MACS = {"a1.00-b1.00-g1.40": 30.0, "a1.00-b1.40-g1.00": 10.0, "a2.00-b1.00-g1.00": 20.0}


def test_longest_first_dispatches_the_costliest_candidate_first_and_keeps_its_seeds_together():
    given = _specs([(name, seed) for name in MACS for seed in range(3)])
    order = [(s.candidate.id, s.seed) for s in longest_first(given, lambda s: MACS[s.candidate.id])]
    assert order == [("a1.00-b1.00-g1.40", 0), ("a1.00-b1.00-g1.40", 1), ("a1.00-b1.00-g1.40", 2),
                     ("a2.00-b1.00-g1.00", 0), ("a2.00-b1.00-g1.00", 1), ("a2.00-b1.00-g1.00", 2),
                     ("a1.00-b1.40-g1.00", 0), ("a1.00-b1.40-g1.00", 1), ("a1.00-b1.40-g1.00", 2)]
    assert sorted(map(id, given)) == sorted(map(id, longest_first(given, lambda s: MACS[s.candidate.id])))


def test_longest_first_shortens_the_default_search_last_rung_on_two_workers():
    """What it is for, on data from a real run (the default search on CIFAR-10, 2026-12-06,
    docs/grid.md "Dispatch order"): each finalist's measured multiply-adds and the seconds
    its three last-rung trials took, in the order the search gave them. Dispatched greedily
    to two workers, as the worker pool does."""
    measured = {  # candidate: (multiply-adds per image, seconds of its three trials)
        "a1.00-b1.4142-g1.00": (12602784, 329), "a1.00-b1.00-g1.4142": (15641744, 441),
        "a1.00-b1.00-g1.40": (15641744, 445), "a1.00-b1.20-g1.20": (13182528, 417),
        "a1.00-b1.40-g1.00": (12595536, 326), "a1.00-b1.30-g1.10": (14486576, 406)}
    given = _specs([(name, 0) for name in measured], rung=1)

    def makespan(specs):
        workers = [0, 0]
        for spec in specs:
            workers[workers.index(min(workers))] += measured[spec.candidate.id][1]
        return max(workers)

    assert makespan(given) == 1264
    assert makespan(longest_first(given, lambda s: measured[s.candidate.id][0])) == 1188  # all / 2 = 1182
