"""The phi=1 search space and what to train next, worked out from the trial log alone.

* ``candidate_grid`` lists every (alpha, beta, gamma) on a grid with
  ``|alpha * beta^2 * gamma^2 - budget| <= tolerance`` (the paper's constraint, budget 2).
* ``reference_rows`` adds the paper's point (1.2, 1.1, 1.15) and the single-axis baselines
  (depth only, width only, resolution only) that reach the same budget.
* ``next_candidates(space, trials)`` says which trials are still to run, like Optuna's
  ``GridSampler``: there is no scheduler state besides ``trials.jsonl``, so resuming costs
  nothing and cannot disagree with the log. Successive halving promotes, rung by rung,
  the best ``1/eta`` of the entries (mean validation accuracy over seeds) to a budget
  ``eta`` times larger.

The cost of a candidate is *measured* on the rounded network (``effscale.net.cost``), not the
formula: rounding filters to multiples of 8, repeats up and pixels to integers moves the
real multiplier away from ``alpha * beta^2 * gamma^2``.

No Keras here.
"""

from __future__ import annotations

import enum
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property

from effscale.net.arch import NetworkSpec
from effscale.net.cost import network_cost
from effscale.errors import ConfigError
from effscale.grid.config import GridConfig
from effscale.errors import SanityLimitError
from effscale.net.scaling import ScalingCoefficients, Variant, check_sanity, scale_network

PAPER_POINT = (1.2, 1.1, 1.15)
MAX_CANDIDATES = 2000
ROLES = ("grid", "paper", "depth-only", "width-only", "resolution-only")


def _fmt_coeff(value: float) -> str:
    text = f"{value:.4f}".rstrip("0")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(2, '0')}"


class TrialStatus(str, enum.Enum):
    """A trial's state in the log; defined here because the schedule is what reads it."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"

    def is_finished(self) -> bool:
        return self is not TrialStatus.RUNNING


@dataclass(frozen=True, order=True)
class Candidate(ScalingCoefficients):
    """One point (alpha, beta, gamma) of the phi=1 search: the coefficients plus a readable id."""

    @property
    def id(self) -> str:
        """Readable and stable: ``a1.20-b1.10-g1.15`` (more digits only when needed)."""
        return f"a{_fmt_coeff(self.alpha)}-b{_fmt_coeff(self.beta)}-g{_fmt_coeff(self.gamma)}"

    def to_dict(self) -> dict:
        return {"id": self.id, "alpha": self.alpha, "beta": self.beta, "gamma": self.gamma}

    @classmethod
    def from_dict(cls, data: Mapping) -> Candidate:
        return cls(float(data["alpha"]), float(data["beta"]), float(data["gamma"]))

    @classmethod
    def from_id(cls, text: str) -> Candidate | None:
        """The candidate ``id`` names (``a1.20-b1.10-g1.15``), or None for any other text."""
        parts = str(text).split("-")
        if len(parts) != 3 or [part[:1] for part in parts] != ["a", "b", "g"]:
            return None
        numbers = [part[1:] for part in parts]
        if not all(number.replace(".", "", 1).isdigit() for number in numbers):  # as `id` writes them
            return None
        return cls(*(float(number) for number in numbers))


@dataclass(frozen=True)
class Entry:
    """A row of the search: a candidate and why it is there."""

    candidate: Candidate
    role: str = "grid"  # one of ROLES
    in_grid: bool = True  # also satisfies the grid constraint

    @property
    def id(self) -> str:
        return self.candidate.id


def _axis(bounds: tuple[float, float], step: float) -> list[float]:
    lo, hi = bounds
    count = int(math.floor((hi - lo) / step + 1e-9)) + 1
    return [round(lo + i * step, 6) for i in range(count)]


def candidate_grid(config: GridConfig) -> list[Candidate]:
    """Every grid point within ``tolerance`` of the budget, sorted by (alpha, beta, gamma)."""
    config.validate()  # bounds each axis before any list is built
    alphas, betas, gammas = (_axis(getattr(config, f"{a}_range"), config.step) for a in ("alpha", "beta", "gamma"))
    if len(alphas) * len(betas) * len(gammas) > 10_000_000:
        raise ConfigError(f"--step {config.step:g} makes a grid of over 10 million points; use a larger --step")
    kept, nearest = [], None
    for a in alphas:
        for b in betas:
            for g in gammas:
                gap = abs(a * b * b * g * g - config.budget)
                if gap <= config.tolerance + 1e-9:
                    kept.append(Candidate(a, b, g))
                elif nearest is None or gap < nearest[0]:
                    nearest = (gap, Candidate(a, b, g))
    if not kept:
        hint = f"; the nearest point {nearest[1].id} is off by {nearest[0]:.3g}" if nearest else ""
        raise ConfigError(
            f"no (alpha, beta, gamma) on the grid (--step {config.step:g}) satisfies "
            f"|alpha*beta^2*gamma^2 - {config.budget:g}| <= {config.tolerance:g}{hint}; "
            "raise --tolerance, refine --step or widen the ranges"
        )
    if len(kept) > MAX_CANDIDATES:
        raise ConfigError(
            f"{len(kept)} candidates is more than {MAX_CANDIDATES}; use a larger --step or a smaller --tolerance"
        )
    return kept


def reference_rows(budget: float) -> list[Entry]:
    """The paper's point and the three single-axis baselines that reach ``budget``."""
    root = math.sqrt(budget)
    return [
        Entry(Candidate(*PAPER_POINT), "paper", False),
        Entry(Candidate(budget, 1.0, 1.0), "depth-only", False),
        Entry(Candidate(1.0, root, 1.0), "width-only", False),
        Entry(Candidate(1.0, 1.0, root), "resolution-only", False),
    ]


def build_entries(config: GridConfig) -> list[Entry]:
    """Grid candidates plus reference rows; a reference on the grid keeps its role once."""
    grid = candidate_grid(config)
    on_grid = {c.id: c for c in grid}
    refs = {}
    for ref in reference_rows(config.budget):
        refs[ref.id] = replace(ref, candidate=on_grid.get(ref.id, ref.candidate), in_grid=ref.id in on_grid)
    entries = [refs.pop(c.id, Entry(c)) for c in grid]
    return entries + list(refs.values())


# --- the proxy network of a candidate ---------------------------------------------------------
def proxy_variant(config: GridConfig, candidate: Candidate | None = None, name: str | None = None,
                  phi: float = 1.0) -> Variant:
    """The proxy base (``base_width``/``base_depth`` of B0 at ``resolution``) scaled by a candidate.

    ``phi`` is 1 for the search itself; ``--confirm-phi`` builds the same rows one step up
    (width beta^phi, depth alpha^phi, resolution gamma^phi of the same proxy base).
    Resolution is rounded to whole pixels: at a 32 px proxy, B0's multiple-of-8 rule would
    map gamma = 1.05 ... 1.2 onto the same 40 px and hide the resolution axis.
    """
    c = candidate or Candidate(1.0, 1.0, 1.0)
    return Variant(
        name=name or (c.id if candidate else "proxy-base"),
        phi=phi if candidate else 0.0,
        width_mult=config.base_width * c.beta**phi,
        depth_mult=config.base_depth * c.alpha**phi,
        resolution=max(8, int(round(config.resolution * c.gamma**phi))),
        dropout_rate=config.dropout,
        source="grid-proxy",
    )


def check_proxy_sizes(config: GridConfig, entries: Iterable[Entry], phi: float = 1.0) -> None:
    """Refuse a row whose proxy network is beyond the sanity limits once scaled (a typo, not a search)."""
    for entry in entries:
        try:
            check_sanity(proxy_variant(config, entry.candidate, phi=phi))
        except SanityLimitError as exc:
            raise ConfigError(f"{exc.args[0].split(' (see')[0]} at phi={phi:g}; lower --resolution, "
                              "--base-width/--base-depth or the --alpha/--beta/--gamma ranges") from None


def proxy_network(config: GridConfig, candidate: Candidate | None = None) -> NetworkSpec:
    network = scale_network(proxy_variant(config, candidate))
    return replace(network, drop_connect_rate=config.drop_connect)


@dataclass(frozen=True)
class CandidateCost:
    params: int
    macs: int
    params_ratio: float
    macs_ratio: float  # measured on the rounded network; compare with flops_factor
    resolution: int
    blocks: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def candidate_cost(config: GridConfig, candidate: Candidate, num_classes: int = 100) -> CandidateCost:
    base = network_cost(proxy_network(config), num_classes=num_classes)
    network = proxy_network(config, candidate)
    cost = network_cost(network, num_classes=num_classes)
    return CandidateCost(cost.params, cost.macs, cost.params / base.params, cost.macs / base.macs,
                         network.resolution, network.total_blocks)


# --- trials to run ------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialSpec:
    """One unit of work: an entry trained with one seed at one rung's budget."""

    candidate: Candidate
    role: str
    seed: int
    rung: int
    epochs: int

    @property
    def trial_id(self) -> str:
        return trial_id(self.candidate.id, self.seed, self.rung)

    def to_dict(self) -> dict:
        return {"trial_id": self.trial_id, "candidate": self.candidate.to_dict(), "role": self.role,
                "seed": self.seed, "rung": self.rung, "epochs": self.epochs}

    @classmethod
    def from_dict(cls, data: Mapping) -> TrialSpec:
        return cls(Candidate.from_dict(data["candidate"]), data["role"], int(data["seed"]),
                   int(data["rung"]), int(data["epochs"]))


def trial_id(candidate_id: str, seed: int, rung: int) -> str:
    return f"{candidate_id}-s{seed}-r{rung}"


@dataclass
class SearchSpace:
    """Entries, seeds and the rung schedule of one run (all derived from its GridConfig)."""

    config: GridConfig
    entries: list[Entry] = field(default_factory=list)
    # Trial order within a rung: a candidate's seeds together (its repeats reuse the traced
    # graph), or seed by seed across candidates (a stopped run has compared every row once).
    seed_major: bool = False

    @classmethod
    def from_config(cls, config: GridConfig) -> SearchSpace:
        entries = build_entries(config)
        check_proxy_sizes(config, entries)
        if config.confirm_phi is not None:
            check_proxy_sizes(config, entries, phi=config.confirm_phi)
        return cls(config, entries)

    @cached_property
    def by_id(self) -> dict[str, Entry]:
        return {e.id: e for e in self.entries}

    def seeds(self, rung: int) -> list[int]:
        """Seeds trained at ``rung``: ``--seeds`` at the last rung, ``--early-seeds`` before it."""
        return list(range(self.config.rung_seeds(rung)))

    def survivors(self, n_entries: int, rung: int) -> int:
        """How many entries a rung trains: ceil(n / eta^rung), at least one."""
        return max(1, math.ceil(n_entries / self.config.eta**rung))

    def planned_trials(self) -> int:
        n = len(self.entries)
        return sum(self.survivors(n, r) * len(self.seeds(r)) for r in range(self.config.n_rungs))

    def specs(self, entries: Iterable[Entry], rung: int) -> list[TrialSpec]:
        epochs = self.config.rung_epochs(rung)
        if self.seed_major:
            return [TrialSpec(e.candidate, e.role, s, rung, epochs) for s in self.seeds(rung) for e in entries]
        return [TrialSpec(e.candidate, e.role, s, rung, epochs) for e in entries for s in self.seeds(rung)]

    def images_full_schedule(self, images_per_epoch: int | None = None) -> int:
        """Training images the full schedule (every row, the last rung's seeds and epochs) would use."""
        per_epoch = images_per_epoch or self.config.limit_train
        return len(self.entries) * self.config.seeds * self.config.max_epochs * per_epoch


def rung_scores(trials: Mapping[str, Mapping], rung: int) -> dict[str, list[float]]:
    """Validation accuracies per candidate id at ``rung``, from COMPLETE trials."""
    scores: dict[str, list[float]] = defaultdict(list)
    for record in trials.values():
        if record.get("rung") == rung and record.get("status") == TrialStatus.COMPLETE:
            scores[record["candidate"]["id"]].append(float(record["metrics"]["val_accuracy"]))
    return scores


def _promote(space: SearchSpace, entries: list[Entry], trials: Mapping[str, Mapping], rung: int) -> list[Entry]:
    """The best ceil(n/eta) entries of ``rung`` by mean accuracy (ties: by id); failures drop out."""
    scores = rung_scores(trials, rung)
    scored = [e for e in entries if scores.get(e.id)]
    scored.sort(key=lambda e: (-sum(scores[e.id]) / len(scores[e.id]), e.id))
    keep = space.survivors(len(space.entries), rung + 1)
    return scored[:keep]


def rung_entries(space: SearchSpace, trials: Mapping[str, Mapping]) -> list[list[Entry]]:
    """Entries of every rung reached so far: rung r+1 exists once rung r is finished."""
    entries = list(space.entries)
    rungs = [entries]
    for rung in range(space.config.n_rungs - 1):
        specs = space.specs(entries, rung)
        if any(trials.get(s.trial_id, {}).get("status") not in (TrialStatus.COMPLETE, TrialStatus.FAILED)
               for s in specs):
            break
        entries = _promote(space, entries, trials, rung)
        if not entries:
            break
        rungs.append(entries)
    return rungs


def longest_first(specs: list[TrialSpec], macs_of: Callable[[TrialSpec], float]) -> list[TrialSpec]:
    """``specs`` in dispatch order, the costliest candidates first (longest processing time
    first): the cheap trials then fill the gaps at the end of a rung, instead of one long
    trial running alone while the other workers wait for the rung's cut. Every trial of a
    rung trains the same epochs, so its candidate's multiply-adds rank its time (measured
    on the default search: correlation 0.83 at rung 0; docs/grid.md, "Dispatch order").
    Stable, so a candidate's seeds stay together and in order."""
    return sorted(specs, key=lambda spec: -macs_of(spec))


def next_candidates(space: SearchSpace, trials: Mapping[str, Mapping], retry: Iterable[str] = ()) -> list[TrialSpec]:
    """The trials still to run at the current rung, computed from the trial log only.

    ``trials`` maps trial id -> latest record (``TrialStore.latest()``). COMPLETE trials are
    done; FAILED ones too, unless their id is in ``retry``; RUNNING ones (left by a crash)
    are run again. An empty list means the search is finished.
    """
    retry = set(retry)
    for rung, entries in enumerate(rung_entries(space, trials)):
        pending = []
        for spec in space.specs(entries, rung):
            status = trials.get(spec.trial_id, {}).get("status")
            if status == TrialStatus.COMPLETE or (status == TrialStatus.FAILED and spec.trial_id not in retry):
                continue
            pending.append(spec)
        if pending:
            return pending
    return []
