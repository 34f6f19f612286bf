"""The settings of one ``effscale grid`` run, as a frozen dataclass with its defaults.

Defaults live here, not where they are read (big_vision's lesson). Everything in
``GridConfig`` is written to the run's manifest and compared on ``--resume``; how the
trials are executed (local or Ray, CPUs per trial) is not part of it, so a search started
locally can be finished on a cluster.

Why these defaults (docs/grid.md has the measurements): the whole default search must
finish in about 30 minutes on a 2-core CPU. B0 at 224 px trains at a few images per
second there, so the proxy is a *half-width, half-depth B0 at 32 px* ("proxy base"),
trained on 5,000 images for 1/3/9 epochs (successive halving) and scored on 1,000
held-out images. On a GPU use ``--preset gpu`` (the full B0 at 64 px, 20,000 images,
3 seeds).

No Keras here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from effscale.errors import ConfigError

SCHEDULES = ("halving", "full")


@dataclass(frozen=True)
class GridConfig:
    # --- the candidate grid -----------------------------------------------------------------
    budget: float = 2.0  # alpha * beta^2 * gamma^2 should be close to this
    tolerance: float = 0.08  # keep |alpha*beta^2*gamma^2 - budget| <= tolerance
    step: float = 0.1
    alpha_range: tuple[float, float] = (1.0, 2.0)
    beta_range: tuple[float, float] = (1.0, 1.5)
    gamma_range: tuple[float, float] = (1.0, 1.5)
    # --- the proxy network: B0 scaled by these before the candidate's coefficients ------
    base_width: float = 0.5
    base_depth: float = 1.0
    resolution: int = 48  # proxy base resolution, which gamma scales
    dropout: float = 0.2
    drop_connect: float = 0.0  # stochastic depth only helps long training
    # --- the proxy task -------------------------------------------------------------------
    dataset: str = "cifar100"
    data_dir: str | None = None
    limit_train: int = 4000
    limit_val: int = 1000
    data_seed: int = 0  # the same subset for every trial
    # --- training -------------------------------------------------------------------------
    epochs: int = 1  # epochs of the first rung (halving) / of every trial (full: epochs*eta^(rungs-1))
    schedule: str = "halving"
    eta: int = 3  # keep the best 1/eta at each rung, train them eta times longer
    rungs: int = 3
    seeds: int = 1
    batch_size: int = 64
    learning_rate: float = 2e-3
    bn_momentum: float = 0.9  # Keras default 0.99 needs hundreds of steps to settle
    bn_recalibration_batches: int = 8  # recompute BN statistics before evaluation (0: off)

    # ---------------------------------------------------------------------------------------
    def validate(self) -> GridConfig:
        if not math.isfinite(self.budget) or self.budget <= 1.0:
            raise ConfigError(f"--budget must be > 1 (the FLOPs multiplier per step of phi), got {self.budget:g}")
        if not math.isfinite(self.step) or self.step <= 0:
            raise ConfigError(f"--step must be > 0, got {self.step:g}")
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ConfigError(f"--tolerance must be >= 0, got {self.tolerance:g}")
        for name in ("alpha_range", "beta_range", "gamma_range"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 1.0 or hi < lo:
                flag = "--" + name.replace("_range", "")
                raise ConfigError(f"{flag} range must satisfy 1 <= MIN <= MAX, got {lo:g}..{hi:g}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        positive = {"resolution": self.resolution, "epochs": self.epochs, "seeds": self.seeds,
                    "batch_size": self.batch_size, "rungs": self.rungs,
                    "limit_train": self.limit_train, "limit_val": self.limit_val}
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.eta < 2:
            raise ConfigError(f"--eta must be >= 2, got {self.eta}")
        if self.base_width <= 0 or self.base_depth <= 0:
            raise ConfigError("--base-width and --base-depth must be > 0")
        if not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"--bn-momentum must be in [0, 1), got {self.bn_momentum:g}")
        if self.learning_rate <= 0:
            raise ConfigError(f"--learning-rate must be > 0, got {self.learning_rate:g}")
        return self

    @property
    def max_epochs(self) -> int:
        """Epochs of the last rung; every trial of the full schedule gets this many."""
        return self.epochs * self.eta ** (self.rungs - 1)

    def rung_epochs(self, rung: int) -> int:
        if self.schedule == "full":
            return self.max_epochs
        return self.epochs * self.eta**rung

    @property
    def n_rungs(self) -> int:
        return 1 if self.schedule == "full" else self.rungs

    def to_dict(self) -> dict:
        data = asdict(self)
        for name in ("alpha_range", "beta_range", "gamma_range"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> GridConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown grid settings: {', '.join(unknown)}")
        kwargs = dict(data)
        for name in ("alpha_range", "beta_range", "gamma_range"):
            if name in kwargs:
                kwargs[name] = tuple(float(v) for v in kwargs[name])
        return cls(**kwargs)

    def replace(self, **changes) -> GridConfig:
        return replace(self, **changes)


# One switch per situation (big_vision's ``runlocal``). ``cpu`` is the default.
PRESETS: dict[str, dict] = {
    "cpu": {},
    # A minute or two, for trying the command out: 6 rows, 8 trials, 256 images.
    "smoke": {"step": 0.25, "tolerance": 0.2, "limit_train": 256, "limit_val": 128, "rungs": 2,
              "resolution": 32, "base_width": 0.25, "base_depth": 0.25, "batch_size": 64,
              "bn_recalibration_batches": 2},
    # A GPU: the real B0, larger images and data, three seeds for honest error bars.
    "gpu": {"base_width": 1.0, "base_depth": 1.0, "resolution": 64, "limit_train": 20000,
            "limit_val": 5000, "epochs": 2, "seeds": 3, "batch_size": 128, "bn_recalibration_batches": 16},
}


def preset(name: str) -> GridConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GridConfig(**PRESETS[name])
