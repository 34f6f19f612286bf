"""The settings of one ``effscale grid`` run, as a frozen dataclass with its defaults.

Defaults live here, not where they are read (big_vision's lesson): the CLI's options take
their defaults from ``GridConfig()``. Everything in ``GridConfig`` is written to the run's
manifest and compared on ``--resume``; how the trials are executed (local or Ray, CPUs
per trial) is not part of it, so a search started locally can be finished on a cluster.

Why these defaults (docs/grid.md has the measurements): the whole default search must
finish in about 30 minutes on a 2-core CPU. B0 at 224 px trains at a few images per
second there, so the proxy base is B0 at *half width, full depth, 48 px* (CIFAR's 32 px
images are upsampled inside the model), trained on a fixed seeded subset of 4,000
images for 2 then 6 epochs (successive halving, eta 3, 2 rungs) and scored on 1,000
held-out images. Two epochs before the only cut, not one: after one epoch every deeper row
trailed and was cut (the short-training bias Bello et al. 2021 describe), and the budget
has room. The last rung runs 3 seeds per finalist so the paired intervals of
``grid.stats`` see the spread between seeds; earlier rungs run one (``early_seeds``). ``--preset imagenette``
is the same search on 160 px photographs at a 64 px base, where gamma adds real detail;
``--preset gpu`` is the full B0 at 64 px on 20,000 images.

No Keras here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from effscale.errors import ConfigError
from effscale.net.scaling import DEFAULT_BUDGET

SCHEDULES = ("halving", "full")
# Beyond these a setting is almost surely a typo, and rung/epoch arithmetic
# (epochs * eta ** (rungs - 1)) must stay small before it is ever computed.
LIMITS = {"resolution": 1024, "epochs": 1000, "eta": 10, "rungs": 8, "seeds": 50, "early_seeds": 50,
          "batch_size": 8192, "bn_recalibration_batches": 10_000, "limit_train": 10_000_000,
          "limit_val": 10_000_000}
MAX_TRIAL_EPOCHS = 1000
MAX_BASE_MULT = 8.0
MAX_AXIS_POINTS = 1000
MAX_CONFIRM_PHI = 4.0


@dataclass(frozen=True)
class GridConfig:
    # --- the candidate grid -----------------------------------------------------------------
    budget: float = DEFAULT_BUDGET  # alpha * beta^2 * gamma^2 should be close to this
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
    epochs: int = 2  # epochs of the first rung (halving) / of every trial (full: epochs*eta^(rungs-1))
    schedule: str = "halving"
    eta: int = 3  # keep the best 1/eta at each rung, train them eta times longer
    rungs: int = 2
    seeds: int = 3  # seeds per finalist at the last rung
    early_seeds: int = 1  # seeds per row at the earlier rungs (they only decide who goes on)
    batch_size: int = 64
    learning_rate: float = 2e-3
    bn_momentum: float = 0.9  # Keras default 0.99 needs hundreds of steps to settle
    bn_recalibration_batches: int = 8  # recompute BN statistics before evaluation (0: off)
    # --- the scale-up check: retrain the chosen, paper and single-axis rows at this phi -----
    confirm_phi: float | None = None

    # ---------------------------------------------------------------------------------------
    def validate(self) -> GridConfig:
        finite = {"budget": self.budget, "step": self.step, "tolerance": self.tolerance,
                  "learning-rate": self.learning_rate, "bn-momentum": self.bn_momentum,
                  "base-width": self.base_width, "base-depth": self.base_depth}
        for name, value in finite.items():
            if not math.isfinite(value):
                raise ConfigError(f"--{name} must be a finite number, got {value:g}")
        if self.budget <= 1.0:
            raise ConfigError(f"--budget must be > 1 (the FLOPs multiplier per step of phi), got {self.budget:g}")
        if self.step <= 0:
            raise ConfigError(f"--step must be > 0, got {self.step:g}")
        if self.tolerance < 0:
            raise ConfigError(f"--tolerance must be >= 0, got {self.tolerance:g}")
        for name in ("alpha_range", "beta_range", "gamma_range"):
            lo, hi = getattr(self, name)
            flag = "--" + name.replace("_range", "")
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 1.0 or hi < lo:
                raise ConfigError(f"{flag} range must satisfy 1 <= MIN <= MAX, got {lo:g}..{hi:g}")
            if (hi - lo) / self.step >= MAX_AXIS_POINTS:
                raise ConfigError(f"{flag} {lo:g}..{hi:g} with --step {self.step:g} makes over "
                                  f"{MAX_AXIS_POINTS} values on one axis; use a larger --step or a narrower range")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            flag = "--" + name.replace("_", "-")
            low = 0 if name == "bn_recalibration_batches" else (2 if name == "eta" else 1)
            if not low <= value <= limit:
                raise ConfigError(f"{flag} must be between {low} and {limit:,}, got {value}")
        if self.early_seeds > self.seeds:
            raise ConfigError(f"--early-seeds ({self.early_seeds}) cannot exceed --seeds ({self.seeds})")
        if self.max_epochs > MAX_TRIAL_EPOCHS:
            raise ConfigError(f"the last rung would train {self.max_epochs:,} epochs (--epochs x --eta^(--rungs - 1)); "
                              f"keep it <= {MAX_TRIAL_EPOCHS}")
        for name, value in (("base-width", self.base_width), ("base-depth", self.base_depth)):
            if not 0 < value <= MAX_BASE_MULT:
                raise ConfigError(f"--{name} must be in (0, {MAX_BASE_MULT:g}], got {value:g}")
        if not 0 <= self.bn_momentum < 1:
            raise ConfigError(f"--bn-momentum must be in [0, 1), got {self.bn_momentum:g}")
        if not 0 < self.learning_rate <= 10:
            raise ConfigError(f"--learning-rate must be in (0, 10], got {self.learning_rate:g}")
        if self.confirm_phi is not None and not (
                math.isfinite(self.confirm_phi) and 1 < self.confirm_phi <= MAX_CONFIRM_PHI):
            raise ConfigError(f"--confirm-phi must be a number > 1 and <= {MAX_CONFIRM_PHI:g} "
                              f"(2 checks the phi=1 choice one step up), got {self.confirm_phi:g}")
        return self

    @property
    def max_epochs(self) -> int:
        """Epochs of the last rung; every trial of the full schedule gets this many."""
        return self.epochs * self.eta ** (self.rungs - 1)

    def rung_seeds(self, rung: int) -> int:
        """The last rung runs ``seeds`` per finalist, earlier rungs ``early_seeds``."""
        return self.seeds if rung >= self.n_rungs - 1 else self.early_seeds

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
    # A minute or two, for trying the command out: 6 rows, 10 trials (2 seeds at the last rung), 256 images.
    "smoke": {"step": 0.25, "tolerance": 0.2, "limit_train": 256, "limit_val": 128, "epochs": 1, "rungs": 2,
              "resolution": 32, "base_width": 0.25, "base_depth": 0.25, "batch_size": 64,
              "bn_recalibration_batches": 2, "seeds": 2},
    # Imagenette-160 (real 160 px photographs): a 64 px base, so gamma up to 1.5 (96 px) and
    # phi=2 resolution-only (128 px) still read real detail from the stored 160 px images.
    "imagenette": {"resolution": 64, "limit_train": 9469, "limit_val": 500},
    # A GPU: the real B0, larger images and data, three seeds for honest error bars.
    "gpu": {"base_width": 1.0, "base_depth": 1.0, "resolution": 64, "limit_train": 20000,
            "limit_val": 5000, "epochs": 2, "rungs": 3, "seeds": 3, "batch_size": 128, "bn_recalibration_batches": 16},
}


def preset(name: str) -> GridConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return GridConfig(**PRESETS[name])
